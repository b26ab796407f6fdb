"""Writer schemas, each parsed once: embedded container schemas, Rubin's shipped schemas, a registry.

Parsing a writer schema costs far more than decoding one alert, so every schema is parsed once per
process and cached:

* container (ZTF-style) schemas by the raw bytes of the container's metadata map, which embeds the
  schema JSON and the codec (a bounded least-recently-used cache, so a stream of ever-different
  headers cannot grow it, nor evict the stream's own schema);
* Rubin schemas by Confluent schema id (``major*100 + minor``), loaded lazily from the schema folder
  that the ``lsst-alert-packet`` package ships (``schema/<M>/<m>/lsst.vM_m.alert.avsc``; fastavro's
  ``load_schema`` resolves the named sub-schemas beside it). The package is located without being
  imported: importing it pulls in lsst.resources, which costs a quarter of a second;
* anything else by id from an optional Confluent-compatible schema registry
  (``GET {url}/schemas/ids/{id}`` -> ``{"schema": "..."}``), with failures remembered for a while so
  that a dead registry does not stall every message.

Every schema, from whichever source, passes :func:`check_bounded` before any reader sees bytes
written with it: a hostile one (recursive, naming undefined types, over the node budget) could
otherwise crash the process inside fastavro's C reader, or cost seconds to compile.
"""

from __future__ import annotations

import importlib.util
import json
import re
import threading
import time
import urllib.error
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastavro import parse_schema
from fastavro.schema import SchemaParseException, UnknownType, load_schema

from broker_plugin.errors import DecodeError
from broker_plugin.redact import redact_url

from .avro import parse_metadata
from .fastread import CompiledReader
from .fastread_gen import MAX_SCHEMA_DEPTH, schema_size_problem

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
_NAMED_KINDS = ("record", "error", "enum", "fixed")


def _full_name(name: str, namespace: str) -> str:
    """A named type's full name, resolved as fastavro resolves it (``schema_name``, references)."""
    return name if "." in name or not namespace else f"{namespace}.{name}"


def check_structure(definition: Any) -> None:
    """Refuse writer schemas no reader may be handed: over the node budget, recursive, naming
    undefined types, or nesting (references followed) deeper than :data:`MAX_SCHEMA_DEPTH`.

    fastavro's C reader follows a recursive schema (a named type that contains itself, directly or
    through other named types) as deep as the data says and overflows the C stack: the process dies
    with SIGSEGV, with nothing committed or dead-lettered. Real alert schemas are never recursive.
    The budget (:data:`~broker_plugin.decode.fastread_gen.MAX_NODES`) is the compiler's, counted by
    the same walk. Works on the JSON definition and on fastavro's parsed form alike.
    """
    problem = schema_size_problem(definition)
    if problem:
        raise DecodeError(f"writer schema refused: {problem}", reason="bad_schema")
    # per named type (None: the top level): the (depth, full name) of every named type it defines or
    # references, and the deepest nesting of its own body
    inner: dict[str | None, list[tuple[int, str]]] = {None: []}
    own_depth: dict[str | None, int] = {None: 0}
    refs: list[str] = []

    def walk(t: Any, ns: str, owner: str | None, depth: int) -> None:
        own_depth[owner] = max(own_depth[owner], depth)
        if isinstance(t, list):
            for branch in t:
                walk(branch, ns, owner, depth + 1)
        elif isinstance(t, str):
            if t not in _PRIMITIVE_MIN_BYTES:
                refs.append(_full_name(t, ns))
                inner[owner].append((depth, refs[-1]))
        elif isinstance(t, dict) and t.get("type") in _NAMED_KINDS:
            full = _full_name(str(t.get("name", "")), str(t.get("namespace", ns) or ""))
            inner[owner].append((depth, full))
            inner.setdefault(full, [])
            own_depth.setdefault(full, 0)
            if t["type"] in ("record", "error") and isinstance(t.get("fields"), list):
                inner_ns = full.rsplit(".", 1)[0] if "." in full else ""
                for f in t["fields"]:
                    walk(f.get("type") if isinstance(f, dict) else None, inner_ns, full, 1)
        elif isinstance(t, dict):  # array, map, {"type": "long", "logicalType": ...}, {"type": "<name>"}
            kind = t.get("type")
            walk(t.get("items") if kind == "array" else t.get("values") if kind == "map" else kind,
                 ns, owner, depth + 1)

    walk(definition, "", None, 0)
    undefined = next((r for r in refs if r not in inner), None)
    if undefined is not None:
        raise DecodeError(f"writer schema refers to the undefined type {undefined!r}", reason="bad_schema")
    _check_acyclic(inner, own_depth)


def _check_acyclic(inner: dict[str | None, list[tuple[int, str]]], own_depth: dict[str | None, int]) -> None:
    """Refuse a cycle among the named types, and a nesting deeper than :data:`MAX_SCHEMA_DEPTH`.

    Kahn's algorithm, iterative (a chain of references may be longer than Python may recurse): a
    type is resolved once every type inside it is; what is never resolved lies on or above a cycle.
    """
    pending = {n: {c for _, c in kids} for n, kids in inner.items()}
    owners: dict[str, list[str | None]] = {}
    for n, kids in pending.items():
        for c in kids:
            owners.setdefault(c, []).append(n)
    depth_of: dict[str | None, int] = {}
    ready = [n for n, kids in pending.items() if not kids]
    while ready:
        n = ready.pop()
        depth_of[n] = max([own_depth[n]] + [d + depth_of[c] for d, c in inner[n]])
        for o in owners.get(n, ()) if n is not None else ():
            pending[o].discard(n)
            if not pending[o]:
                ready.append(o)
    if None not in depth_of:  # follow unresolved types from the top until one repeats: a cycle
        path: list[str | None] = [None]
        while path.count(path[-1]) < 2:
            path.append(min(pending[path[-1]]))
        cycle = [str(x) for x in path[path.index(path[-1]):]]
        raise DecodeError(f"writer schema is recursive: named type {cycle[0]!r} contains itself "
                          f"({' -> '.join(cycle)})", reason="bad_schema")
    if depth_of[None] > MAX_SCHEMA_DEPTH:
        raise DecodeError(f"writer schema nests types {depth_of[None]} levels deep (limit {MAX_SCHEMA_DEPTH})",
                          reason="bad_schema")


def check_bounded(definition: Any) -> None:
    """Refuse writer schemas whose data could make the reader loop without consuming bytes, and
    (:func:`check_structure`, first) those a reader could not survive or that are over the budget.

    fastavro accepts a record without ``fields`` (a one-bit corruption of the embedded schema,
    ``"fields"`` -> ``"fielhs"``, produces one) and encodes it in zero bytes; an array of such items
    with a corrupt block count then grows a list until memory runs out. Every array item must take
    at least one byte, so that the data length bounds the work. Real alert schemas always do.
    """
    check_structure(definition)
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


#: Parsed container schemas by metadata bytes, least recently used first.
_embedded: OrderedDict[bytes, WriterSchema | DecodeError] = OrderedDict()
_embedded_stats = {"hits": 0, "misses": 0}
_lock = threading.Lock()


def embedded_cache_info() -> dict[str, int]:
    """Hits, misses (= schema parses), current size and bound of the embedded-schema cache."""
    with _lock:
        return {**_embedded_stats, "size": len(_embedded), "max": MAX_CACHED_SCHEMAS}


def _lru_hit(cache: dict[bytes, Any], key: bytes) -> Any:
    """The cached entry, now the most recently used; None on a miss (call with the lock held).

    A plain dict (tests swap one in) keeps insertion order too: re-inserting moves the key last."""
    hit = cache.get(key)
    if hit is not None:
        if isinstance(cache, OrderedDict):
            cache.move_to_end(key)
        else:
            cache[key] = cache.pop(key)
    return hit


def embedded_schema(meta_key: bytes) -> WriterSchema:
    """The parsed schema of a container header (cached by its metadata bytes, least recently used
    evicted)."""
    with _lock:
        hit = _lru_hit(_embedded, meta_key)
        _embedded_stats["hits" if hit is not None else "misses"] += 1
    if isinstance(hit, DecodeError):  # a header refused before: refused again without the parse
        raise DecodeError(str(hit), reason=hit.reason)
    if hit is not None:
        return hit
    try:
        ws = _embedded_miss(meta_key)
    except DecodeError as exc:
        if exc.reason == "bad_schema":  # a hostile stream repeating one header costs one check
            _remember(meta_key, exc)
        raise
    _remember(meta_key, ws)
    return ws


def _remember(meta_key: bytes, value: WriterSchema | DecodeError) -> None:
    with _lock:
        _embedded[meta_key] = value
        while len(_embedded) > MAX_CACHED_SCHEMAS:
            if isinstance(_embedded, OrderedDict):
                _embedded.popitem(last=False)
            else:
                del _embedded[next(iter(_embedded))]


def _embedded_miss(meta_key: bytes) -> WriterSchema:
    """Parse and check the schema of a header the cache does not hold."""
    try:
        meta = parse_metadata(meta_key)
    except DecodeError as exc:  # read_container_header walked it already; this cannot really fail
        raise DecodeError(f"container metadata unreadable: {exc}", reason="corrupt_avro") from exc
    raw = meta.get("avro.schema")
    if raw is None:
        raise DecodeError("container header has no avro.schema entry", reason="bad_schema")
    codec = meta.get("avro.codec", b"null").decode("ascii", "replace") or "null"
    definition, parsed = _parse(raw, "embedded writer schema")
    return WriterSchema(parsed, codec, str(definition.get("name", "")) if isinstance(definition, dict) else "",
                        _version_of(definition))


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
                check_bounded(parsed)  # shipped files are trusted, but no reader sees an unchecked schema
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
            # the message becomes the DLQ header bal_error_message: never the URL's credentials
            msg = (f"schema id {sid} is not shipped by lsst-alert-packet and the registry at {redact_url(endpoint)} "
                   f"failed: {exc}")
            if len(self._failed) >= MAX_CACHED_SCHEMAS:  # corrupt ids must not grow the cache
                self._failed.clear()
            self._failed[sid] = (time.monotonic(), msg[:400])
            raise DecodeError(msg[:400], reason="unknown_schema_id") from exc
        definition, parsed = _parse(schema_json, f"registry schema id {sid}")
        ws = WriterSchema(parsed, "null", str(definition.get("name", "")) if isinstance(definition, dict) else "",
                          _version_of(definition))
        self._cache[sid] = ws
        return ws
