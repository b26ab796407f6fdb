"""Writer schemas, each parsed once: embedded container schemas, Rubin's shipped schemas, a registry.

Parsing a writer schema costs far more than decoding one alert, so every schema is parsed once per
process and cached:

* container (ZTF-style) schemas by the raw bytes of the container's metadata map, which embeds the
  schema JSON and the codec (a bounded cache, so a stream of ever-different headers cannot grow it);
* Rubin schemas by Confluent schema id (``major*100 + minor``), loaded lazily from the schema folder
  that the ``lsst-alert-packet`` package ships (``schema/<M>/<m>/lsst.vM_m.alert.avsc``; fastavro's
  ``load_schema`` resolves the named sub-schemas beside it). The package is located without being
  imported: importing it pulls in lsst.resources, which costs a quarter of a second;
* anything else by id from an optional Confluent-compatible schema registry
  (``GET {url}/schemas/ids/{id}`` -> ``{"schema": "..."}``), with failures remembered for a while so
  that a dead registry does not stall every message.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, UnknownType, load_schema

from broker_plugin.errors import DecodeError

from .avro import parse_metadata
from .fastread import CompiledReader

#: Bound on the embedded-schema cache; real streams use a handful of schemas.
MAX_CACHED_SCHEMAS = 64
#: Seconds a failed registry lookup is remembered before it is tried again.
REGISTRY_RETRY_AFTER_S = 60.0

_SCHEMA_PARSE_ERRORS: tuple[type[BaseException], ...] = (
    SchemaParseException, UnknownType, ValueError, TypeError, KeyError, AttributeError, RecursionError)
_LSST_NAME = re.compile(r"lsst\.v(\d+)_(\d+)")


@dataclass(frozen=True, slots=True)
class WriterSchema:
    """A parsed writer schema and what is known about it before decoding a record."""

    parsed: Any
    codec: str = "null"
    name: str = ""
    version: str | None = None  # "4.02", "11.0"; None when the schema does not say
    #: The schema compiled to Python (:mod:`.fastread`), built on its second use; fastavro is the fallback.
    fast: CompiledReader = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fast", CompiledReader(self.parsed))


def _version_of(schema: Any) -> str | None:
    """The schema version a writer schema declares: ZTF's "version" property or Rubin's name."""
    if not isinstance(schema, dict):
        return None
    v = schema.get("version")
    if isinstance(v, (str, int, float)) and str(v):
        return str(v)
    m = _LSST_NAME.search(str(schema.get("name", "")) + " " + str(schema.get("namespace", "")))
    return f"{int(m.group(1))}.{int(m.group(2))}" if m else None


_PRIMITIVE_MIN_BYTES = {"null": 0, "boolean": 1, "int": 1, "long": 1, "float": 4, "double": 8, "bytes": 1, "string": 1}


def check_bounded(definition: Any) -> None:
    """Refuse writer schemas whose data could make the reader loop without consuming bytes.

    fastavro accepts a record without ``fields`` (a one-bit corruption of the embedded schema,
    ``"fields"`` -> ``"fielhs"``, produces one) and encodes it in zero bytes; an array of such items
    with a corrupt block count then grows a list until memory runs out. Every array item must take
    at least one byte, so that the data length bounds the work. Real alert schemas always do.
    """
    named: dict[str, Any] = {}

    def min_bytes(t: Any, depth: int = 0) -> int:
        if depth > 64:  # recursive or absurdly deep: assume non-empty, fastavro judges the rest
            return 1
        if isinstance(t, str):
            if t in _PRIMITIVE_MIN_BYTES:
                return _PRIMITIVE_MIN_BYTES[t]
            ref = named.get(t, named.get(t.rsplit(".", 1)[-1]))
            return 1 if ref is None else min_bytes(ref, depth + 1)
        if isinstance(t, list):  # a union writes its branch index first
            for branch in t:
                min_bytes(branch, depth + 1)  # walk for the checks and the named types inside
            return 1
        if not isinstance(t, dict):
            return 1
        kind = t.get("type")
        if kind in ("record", "error"):
            fields = t.get("fields")
            if not isinstance(fields, list):
                raise DecodeError(f"record {t.get('name')!r} has no fields list", reason="bad_schema")
            name = str(t.get("name", ""))
            ns = t.get("namespace")
            for key in (name, name.rsplit(".", 1)[-1], f"{ns}.{name}" if ns else name):
                named.setdefault(key, "long")  # while recursing into itself, assume non-empty
            size = sum(min_bytes(f.get("type") if isinstance(f, dict) else None, depth + 1) for f in fields)
            for key in (name, name.rsplit(".", 1)[-1], f"{ns}.{name}" if ns else name):
                named[key] = "long" if size else "null"  # only the size matters from here on
            return size
        if kind == "array":
            if min_bytes(t.get("items"), depth + 1) == 0:
                raise DecodeError("schema has an array of zero-byte items: its length cannot be bounded",
                                  reason="bad_schema")
            return 1
        if kind == "map":
            min_bytes(t.get("values"), depth + 1)
            return 1
        if kind == "fixed":
            size = t.get("size")
            return size if isinstance(size, int) and size >= 0 else 1
        if kind == "enum":
            return 1
        return min_bytes(kind, depth + 1)  # {"type": "string", "logicalType": ...} and the like

    min_bytes(definition)


def _parse(schema_json: bytes | str, what: str) -> Any:
    try:
        definition = json.loads(schema_json)
        check_bounded(definition)
        return definition, parse_schema(definition)
    except _SCHEMA_PARSE_ERRORS as exc:
        raise DecodeError(f"{what} cannot be parsed: {type(exc).__name__}: {exc}"[:300], reason="bad_schema") from exc


_embedded: dict[bytes, WriterSchema] = {}
_lock = threading.Lock()


def embedded_schema(meta_key: bytes) -> WriterSchema:
    """The parsed schema of a container header (cached by its metadata bytes)."""
    hit = _embedded.get(meta_key)
    if hit is not None:
        return hit
    try:
        meta = parse_metadata(meta_key)
    except DecodeError as exc:  # read_container_header walked it already; this cannot really fail
        raise DecodeError(f"container metadata unreadable: {exc}", reason="corrupt_avro") from exc
    raw = meta.get("avro.schema")
    if raw is None:
        raise DecodeError("container header has no avro.schema entry", reason="bad_schema")
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    definition, parsed = _parse(raw, "embedded writer schema")
    ws = WriterSchema(parsed, codec, str(definition.get("name", "")) if isinstance(definition, dict) else "",
                      _version_of(definition))
    with _lock:
        if len(_embedded) >= MAX_CACHED_SCHEMAS:
            _embedded.clear()
        _embedded[meta_key] = ws
    return ws


# ------------------------------------------------------------------------------ Rubin, packaged


def lsst_schema_root() -> Path | None:
    """lsst-alert-packet's schema folder, found without importing the package; None if absent."""
    try:
        spec = importlib.util.find_spec("lsst.alert.packet")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        root = Path(loc) / "schema"
        if root.is_dir():
            return root
    return None


def schema_id(major: int, minor: int) -> int:
    """Confluent schema id of an alert_packet version (lsst.alert.packet ``Schema.get_schema_id``)."""
    return major * 100 + minor


def packaged_lsst_versions() -> list[tuple[int, int]]:
    """Every (major, minor) version whose alert schema lsst-alert-packet ships, oldest first."""
    root = lsst_schema_root()
    if root is None:
        return []
    out = []
    for d in root.glob("[0-9]*/[0-9]*"):
        if d.name.isdigit() and d.parent.name.isdigit():
            major, minor = int(d.parent.name), int(d.name)
            if (d / f"lsst.v{major}_{minor}.alert.avsc").is_file():
                out.append((major, minor))
    return sorted(out)


_packaged: dict[int, WriterSchema | None] = {}


def packaged_lsst_schema(sid: int) -> WriterSchema | None:
    """The shipped Rubin alert schema with Confluent id ``sid``, parsed once; None if not shipped."""
    if sid in _packaged:
        return _packaged[sid]
    ws: WriterSchema | None = None
    root = lsst_schema_root()
    major, minor = divmod(sid, 100)
    if root is not None and sid >= 0:
        path = root / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
        if path.is_file():
            try:
                parsed = load_schema(str(path))
            except _SCHEMA_PARSE_ERRORS as exc:
                raise DecodeError(f"shipped schema {path.name} cannot be parsed: {exc}", reason="bad_schema") from exc
            ws = WriterSchema(parsed, "null", f"lsst.v{major}_{minor}.alert", f"{major}.{minor}")
    if ws is not None or len(_packaged) < MAX_CACHED_SCHEMAS:  # corrupt ids must not grow the cache
        with _lock:
            _packaged[sid] = ws
    return ws


# -------------------------------------------------------------------------------------- registry


class RegistryClient:
    """Minimal Confluent schema-registry reader (``GET /schemas/ids/{id}``), cached, stdlib only."""

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.timeout_s = timeout_s
        self._cache: dict[int, WriterSchema] = {}
        self._failed: dict[int, tuple[float, str]] = {}

    def get(self, sid: int) -> WriterSchema:
        """The schema with id ``sid``; DecodeError(reason="unknown_schema_id") when unavailable."""
        hit = self._cache.get(sid)
        if hit is not None:
            return hit
        failed = self._failed.get(sid)
        if failed is not None and time.monotonic() - failed[0] < REGISTRY_RETRY_AFTER_S:
            raise DecodeError(failed[1], reason="unknown_schema_id")
        endpoint = f"{self.url}/schemas/ids/{sid}"
        try:
            with urllib.request.urlopen(endpoint, timeout=self.timeout_s) as resp:  # the operator sets the URL
                body = json.loads(resp.read())
            schema_json = body["schema"]
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            msg = f"schema id {sid} is not shipped by lsst-alert-packet and the registry at {endpoint} failed: {exc}"
            if len(self._failed) >= MAX_CACHED_SCHEMAS:  # corrupt ids must not grow the cache
                self._failed.clear()
            self._failed[sid] = (time.monotonic(), msg[:400])
            raise DecodeError(msg[:400], reason="unknown_schema_id") from exc
        definition, parsed = _parse(schema_json, f"registry schema id {sid}")
        ws = WriterSchema(parsed, "null", str(definition.get("name", "")) if isinstance(definition, dict) else "",
                          _version_of(definition))
        self._cache[sid] = ws
        return ws
