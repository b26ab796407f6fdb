"""Output messages of the service: the input alert, byte for byte, plus a ``bal`` field, as self-describing Avro.

Why this shape: downstream consumers of a broker want the whole alert (light curve, cutouts, context)
and our annotation in one message, readable with nothing but an Avro library, like the survey's own
stream. So an output message is an Avro object container (schema embedded, codec null, one record),
exactly like a ZTF alert file, whose schema is the *input writer schema with one field appended*::

    {"name": "bal", "type": ["null", <schemas/bal_annotation.avsc>], "default": null}

Fast path. Avro encodes a record as its fields one after the other, with nothing around them, so
the body of the output record is the body of the input record followed by the encoding of the new
field (union branch 1 = ``0x02``, then the ``bal`` record). Nothing of the alert is decoded again or
re-encoded: per message the work is walking the input container header, encoding the small ``bal``
record with fastavro, and concatenating. The output schema, its container header and sync marker
are derived once per distinct input schema (cache keyed by the input container's metadata bytes, or
by the Confluent schema id of a Rubin wire-format message).

``drop_cutouts``. Removing the three cutouts means the input bytes can no longer pass through; the
decoded record is re-encoded with the cutout fields set to null (slower, still fine). The fields
are *kept* in the schema and made nullable (``["null", T]``) instead of being dropped, so that a
consumer reading with the survey's own schema as reader schema still resolves every field: in ZTF
and Rubin schemas the cutouts are already ``["null", ...]`` unions, so the schema usually does not
change at all.

Schema registry. With ``kafka.schema_registry_url`` the output is the Confluent wire format instead
(``0x00``, 4-byte schema id, the same record body): the output schema is registered once per input
schema under the subject ``<output_topic>-value`` (``POST /subjects/<subject>/versions``), ids
cached. Failures there are not the message's fault: :class:`RegistryError` stops the service
rather than dead-lettering every alert.

Where the pieces are: :mod:`~broker_plugin.stream.avro_container` (Avro primitives, the one-record
container), :mod:`~broker_plugin.stream.bal_encoding` (the ``bal`` record, fast path included) and
:mod:`~broker_plugin.stream.schema_registry` (registration); this module derives output schemas and
builds output values.

Deterministic bytes: the output schema is written as compact JSON with sorted keys and the sync
marker is derived from it (MD5), so the same input and annotation give the same output bytes in
every process (replays and scale-out are comparable byte for byte).
"""

from __future__ import annotations

import hashlib
import io
import json
import struct
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import fastavro

from broker_plugin.alert import Alert
from broker_plugin.decode.avro import (
    CONTAINER_MAGIC,
    WIRE_MAGIC,
    container_block_spans,
    decompress,
    parse_metadata,
    read_container_header,
)
from broker_plugin.errors import BalBrokerError
from broker_plugin.stream.avro_container import (
    container_header,
    container_message,
    encode_bytes,
    encode_long,
    encode_metadata,
)
from broker_plugin.stream.bal_encoding import annotation_schema_copy, encode_bal, parsed_bal_schema
from broker_plugin.stream.schema_registry import RegistryError, SchemaRegistryWriter

#: Names that lived here before the encoder was split, still importable from here.
__all__ = [
    "BAL_FIELD", "CUTOUTS_DROPPED_FLAG", "CUTOUT_FIELDS", "OutputEncoder", "OutputError", "OutputSchema",
    "RegistryError", "SchemaRegistryWriter", "container_header", "container_message", "encode_bal", "encode_bytes",
    "encode_long", "encode_metadata", "output_schema", "parsed_bal_schema", "strip_parsed",
]

#: ``bal`` flag of an output sent without its cutouts because it was over ``kafka.output_max_bytes``
#: (or the broker refused its size).
CUTOUTS_DROPPED_FLAG = "cutouts_dropped_size"
#: Name of the field appended to the alert record.
BAL_FIELD = "bal"
#: Top-level fields holding image cutouts, in ZTF and Rubin schemas alike.
CUTOUT_FIELDS: tuple[str, ...] = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
#: Union branch index 1 (the ``bal`` record of ``["null", bal]``), zig-zag encoded.
_BAL_BRANCH = b"\x02"
#: Bound on the number of cached output schemas (real streams have a handful of input schemas).
MAX_CACHED_SCHEMAS = 64
#: Largest input body accepted when a block codec must be undone (mirrors the decoder's bound).
MAX_BODY_BYTES = 64 * 1024 * 1024
_WIRE_HEADER = struct.Struct(">BI")
_BAL_DOC = "BAL-quasar annotation added by bal-broker (schemas/bal_annotation.avsc); null never written."


class OutputError(BalBrokerError):
    """This message cannot be encoded as an output (its schema is not a record, it already has a
    ``bal`` field, ...): the message goes to the dead-letter topic."""

    reason = "encode_error"



def strip_parsed(schema: Any) -> Any:
    """A fastavro *parsed* schema back to plain Avro JSON (drops fastavro's ``__...`` bookkeeping).

    Rubin schemas come parsed from lsst-alert-packet's files (named sub-schemas already inlined at
    their first use, later uses by full name), which is valid Avro once the private keys are gone.
    """
    if isinstance(schema, dict):
        return {k: strip_parsed(v) for k, v in schema.items() if not str(k).startswith("__")}
    if isinstance(schema, list):
        return [strip_parsed(v) for v in schema]
    return schema


def output_schema(input_schema: Any, *, drop_cutouts: bool = False) -> dict[str, Any]:
    """The output schema: ``input_schema`` (a record) with the nullable ``bal`` field appended last.

    With ``drop_cutouts`` the cutout fields become nullable (usually they already are). Raises
    :class:`OutputError` for a non-record schema or one that already has a ``bal`` field (a stream
    of our own outputs fed back in: appending a second one would be invalid Avro).
    """
    if not isinstance(input_schema, dict) or input_schema.get("type") not in ("record", "error"):
        raise OutputError("the input writer schema is not a record: cannot append the bal field",
                          reason="unsupported_schema")
    fields = [dict(f) for f in input_schema.get("fields", [])]
    if any(f.get("name") == BAL_FIELD for f in fields):
        raise OutputError(f"the input record already has a '{BAL_FIELD}' field (an annotated alert fed back in?)",
                          reason="bal_field_exists")
    if drop_cutouts:
        for f in fields:
            if f.get("name") in CUTOUT_FIELDS:
                t = f.get("type")
                branches = list(t) if isinstance(t, list) else [t]
                if "null" not in branches:
                    f["type"] = ["null", *branches]
                    f["default"] = None
    fields.append({"name": BAL_FIELD, "type": ["null", annotation_schema_copy()], "default": None, "doc": _BAL_DOC})
    out = dict(input_schema)
    out["fields"] = fields
    return out


@dataclass(frozen=True)
class OutputSchema:
    """Everything derived once per distinct input schema."""

    schema_json: str  #: the output schema, compact JSON
    prefix: bytes  #: container header (magic, metadata, sync) or wire-format prefix (0x00 + id)
    sync: bytes | None  #: container sync marker; None in wire-format mode
    parsed: Any  #: parsed output schema, for the re-encode (drop_cutouts) path
    cutouts: tuple[str, ...]  #: cutout fields present in the schema


# ------------------------------------------------------------------------------ the encoder


class OutputEncoder:
    """Builds output message values from (input bytes, decoded alert, ``bal`` record).

    One per service process. ``registry_url`` switches to the Confluent wire format, registering
    under ``subject``. Thread-safe for the cache (the service uses one thread anyway). ``max_bytes``
    (``kafka.output_max_bytes``): an output over it is encoded again without its cutouts, flagged
    :data:`CUTOUTS_DROPPED_FLAG`; if still over, :class:`OutputError` ``output_too_large``.
    """

    def __init__(self, *, drop_cutouts: bool = False, registry_url: str | None = None,
                 subject: str | None = None, registry_timeout_s: float = 5.0, max_bytes: int | None = None) -> None:
        if registry_url and not subject:
            raise ValueError("a schema registry needs the subject to register under")
        self.drop_cutouts = drop_cutouts
        self.max_bytes = max_bytes
        self._registry_args = (registry_url, subject, registry_timeout_s)
        self._small: OutputEncoder | None = None
        self.registry = SchemaRegistryWriter(registry_url, registry_timeout_s) if registry_url else None
        self.subject = subject
        self._cache: dict[tuple[str, Any], OutputSchema] = {}
        self._lock = threading.Lock()

    @property
    def wire_format(self) -> bool:
        return self.registry is not None

    def encode(self, raw: bytes, alert: Alert, bal: Mapping[str, Any]) -> bytes:
        """The output value for the alert decoded from ``raw`` and its annotation ``bal``, within
        ``max_bytes`` (without cutouts if need be; see the class)."""
        value = self._encode(raw, alert.record, bal)
        if self.max_bytes is None or len(value) <= self.max_bytes:
            return value
        if self.drop_cutouts:  # nothing left to drop
            return self._checked(value, len(value))
        return self._checked(self.encode_without_cutouts(raw, alert.record, bal), len(value))

    def encode_without_cutouts(self, raw: bytes, record: Mapping[str, Any], bal: Mapping[str, Any]) -> bytes:
        """The output value with the cutouts set to null and ``bal`` flagged :data:`CUTOUTS_DROPPED_FLAG`."""
        if self._small is None:
            url, subject, timeout = self._registry_args
            self._small = OutputEncoder(drop_cutouts=True, registry_url=url, subject=subject,
                                        registry_timeout_s=timeout)
        flagged = dict(bal)
        flags = list(flagged.get("flags") or [])
        if CUTOUTS_DROPPED_FLAG not in flags:
            flags.append(CUTOUTS_DROPPED_FLAG)
        flagged["flags"] = flags
        return self._small._encode(raw, record, flagged)

    def shrink(self, raw: bytes, value: bytes) -> bytes:
        """``value``, an output already built for the input ``raw``, again without its cutouts (the
        broker refused its size). Reads the record back from ``value``; raises :class:`OutputError`
        when even that is over ``max_bytes``."""
        out = self.schema_for(raw)
        if out.sync is not None:
            (record,) = list(fastavro.reader(io.BytesIO(value)))
        else:
            parsed = fastavro.parse_schema(json.loads(out.schema_json), named_schemas={})
            record = fastavro.schemaless_reader(io.BytesIO(value[_WIRE_HEADER.size:]), parsed, None)
        assert isinstance(record, dict)
        bal = record.pop(BAL_FIELD)
        return self._checked(self.encode_without_cutouts(raw, record, bal), len(value))

    def _checked(self, value: bytes, full: int) -> bytes:
        if self.max_bytes is not None and len(value) > self.max_bytes:
            raise OutputError(f"the output is {full} bytes, still {len(value)} without cutouts: over "
                              f"kafka.output_max_bytes ({self.max_bytes})", reason="output_too_large")
        return value

    def _encode(self, raw: bytes, alert_record: Mapping[str, Any], bal: Mapping[str, Any]) -> bytes:
        key, body, load = self._split(raw)
        out = self._cache.get(key)
        if out is None:
            out = self._derive(key, load)
        if self.drop_cutouts:
            record = dict(alert_record)
            for name in out.cutouts:
                record[name] = None
            record[BAL_FIELD] = dict(bal)
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, out.parsed, record)
            parts: tuple[Any, ...] = (buf.getvalue(),)
        else:
            parts = (body, _BAL_BRANCH, encode_bal(bal))
        # One join of the pieces (the input body is a view into ``raw``): the alert is copied once.
        if out.sync is None:
            return b"".join((out.prefix, *parts))
        size = sum(len(x) for x in parts)
        return b"".join((out.prefix, b"\x02", encode_long(size), *parts, out.sync))

    def schema_for(self, raw: bytes) -> OutputSchema:
        """The output schema derived for the input message ``raw`` (cached)."""
        key, _, load = self._split(raw)
        return self._cache.get(key) or self._derive(key, load)

    # -- internals -------------------------------------------------------------------------------

    def _split(self, raw: bytes) -> tuple[tuple[str, Any], bytes | memoryview, Any]:
        """(cache key, input record body, loader of the input schema JSON dict) of a message.

        The body is a memoryview into ``raw`` when no codec must be undone (no copy until the one
        join that builds the output)."""
        if raw[:4] == CONTAINER_MAGIC:
            header = read_container_header(raw)
            blocks = [b for b in container_block_spans(raw, header) if b[0]]
            if len(blocks) != 1 or blocks[0][0] != 1:
                raise OutputError("the input container does not hold exactly one record", reason="multiple_records")
            _, start, end = blocks[0]
            meta_key = header.meta_key
            codec = self._container_codec(meta_key)
            body: bytes | memoryview = memoryview(raw)[start:end]
            if codec != "null":
                body = decompress(codec, raw[start:end], MAX_BODY_BYTES)

            def load() -> Any:
                raw_schema = parse_metadata(meta_key).get("avro.schema")
                if raw_schema is None:
                    raise OutputError("input container has no avro.schema", reason="bad_schema")
                return json.loads(raw_schema)

            return ("c", meta_key), body, load
        if raw[:1] == bytes([WIRE_MAGIC]) and len(raw) >= _WIRE_HEADER.size:
            _, sid = _WIRE_HEADER.unpack_from(raw)

            def load_wire() -> Any:
                return strip_parsed(_wire_writer_schema(sid))

            return ("w", sid), memoryview(raw)[_WIRE_HEADER.size:], load_wire
        raise OutputError("input is neither an Avro container nor a wire-format message", reason="bad_magic")

    @staticmethod
    def _container_codec(meta_key: bytes) -> str:
        from broker_plugin.decode.schemas import embedded_schema

        return embedded_schema(meta_key).codec

    def _derive(self, key: tuple[str, Any], load: Any) -> OutputSchema:
        schema = output_schema(load(), drop_cutouts=self.drop_cutouts)
        # Sorted keys: the text (and so the sync marker and any registry id) must not depend on how the
        # input schema was loaded; fastavro's parsed Rubin schemas order keys by hash seed.
        schema_json = json.dumps(schema, separators=(",", ":"), sort_keys=True)
        parsed = fastavro.parse_schema(schema, named_schemas={}) if self.drop_cutouts else None
        cutouts = tuple(f["name"] for f in schema["fields"] if f.get("name") in CUTOUT_FIELDS)
        if self.registry is not None:
            assert self.subject is not None
            sid = self.registry.register(self.subject, schema_json)
            out = OutputSchema(schema_json, _WIRE_HEADER.pack(WIRE_MAGIC, sid), None, parsed, cutouts)
        else:
            sync = hashlib.md5(schema_json.encode("utf-8"), usedforsecurity=False).digest()
            out = OutputSchema(schema_json, container_header(schema_json, sync), sync, parsed, cutouts)
        with self._lock:
            if len(self._cache) >= MAX_CACHED_SCHEMAS:
                self._cache.clear()
            self._cache[key] = out
        return out


def _wire_writer_schema(sid: int) -> Any:
    """The writer schema of a wire-format input: shipped Rubin schema, else the decoder's registry."""
    from broker_plugin.decode import default_decoder
    from broker_plugin.decode.schemas import packaged_lsst_schema

    ws = packaged_lsst_schema(sid)
    if ws is None:
        registry = default_decoder().registry
        if registry is None:
            raise OutputError(f"schema id {sid} unknown", reason="unknown_schema_id")
        ws = registry.get(sid)
    return ws.parsed
