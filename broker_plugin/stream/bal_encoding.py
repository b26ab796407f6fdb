"""Encoding the ``bal`` annotation record (schemas/bal_annotation.avsc) as schemaless Avro.

Why a fast path: it runs once per output message, and records of the usual shape can be written
straight from the layout below in a third of fastavro's time (the same bytes, tested); anything
else -- another type in a field, a schema file that no longer has this layout -- goes through
fastavro, which validates and converts.
"""

from __future__ import annotations

import copy
import io
import struct
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import fastavro

from broker_plugin.models.record_schema import annotation_schema
from broker_plugin.stream.avro_container import encode_long

Append = Callable[[bytes], None]


def annotation_schema_copy() -> dict[str, Any]:
    """A fresh copy of the shipped annotation schema: callers embed it in schemas they build."""
    return copy.deepcopy(annotation_schema())


_parsed_bal: Any = None


def parsed_bal_schema() -> Any:
    """The ``bal`` record schema, parsed once per process."""
    global _parsed_bal
    if _parsed_bal is None:
        _parsed_bal = fastavro.parse_schema(annotation_schema_copy(), named_schemas={})
    return _parsed_bal


def encode_bal(record: Mapping[str, Any]) -> bytes:
    """The schemaless Avro encoding of one ``bal`` record (an :class:`~broker_plugin.models.annotate.Annotator` record).

    Records of the usual shape take :func:`_encode_bal_fast` (the same bytes as fastavro, tested, in
    a third of the time: it is once per output message); anything else -- another type in a field, a
    schema that no longer has the layout the fast path was written for -- goes through fastavro.
    """
    if _fast_layout_ok():
        fast = _encode_bal_fast(record)
        if fast is not None:
            return fast
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_bal_schema(), record)
    return buf.getvalue()


#: The field layout :func:`_encode_bal_fast` writes, in schema order (checked against the schema file).
_FAST_LAYOUT: tuple[tuple[str, Any], ...] = (
    ("survey", "string"), ("object_id", "string"), ("source_id", "string"),
    ("ra", "double"), ("dec", "double"), ("mjd", "double"),
    ("n_points", {"type": "map", "values": "int"}),
    ("features", {"type": "map", "values": ["null", "double"]}),
    ("bal_lc_prob", ["null", "double"]), ("bal_fusion_prob", ["null", "double"]),
    ("candidate_score", ["null", "double"]), ("is_candidate", "boolean"),
    ("history", {"type": "record", "name": "history", "namespace": "bal_broker", "fields": [
        {"name": "packet", "type": {"type": "map", "values": "int"}},
        {"name": "store", "type": {"type": "map", "values": "int"}},
        {"name": "data_release", "type": {"type": "map", "values": "int"}},
        {"name": "other_survey", "type": {"type": "map", "values": "int"}},
        {"name": "span_days", "type": "double"},
    ]}),
    ("flags", {"type": "array", "items": "string"}), ("model_version", "string"),
)
_fast_ok: bool | None = None
_pack_double = struct.Struct("<d").pack
#: Encoded (length + UTF-8) strings that recur in every record: feature names, bands, flags, versions.
_STR_CACHE: dict[str, bytes] = {}
_STR_CACHE_MAX = 4096


def _fast_layout_ok() -> bool:
    global _fast_ok
    if _fast_ok is None:
        fields = annotation_schema_copy().get("fields", [])
        have = tuple((f.get("name"), f.get("type")) for f in fields)
        _fast_ok = have == _FAST_LAYOUT
    return _fast_ok


def _str(s: Any) -> bytes | None:
    """Avro string encoding of ``s`` (None unless it is exactly a str), cached for recurring values."""
    hit = _STR_CACHE.get(s) if type(s) is str else None
    if hit is not None:
        return hit
    if type(s) is not str:
        return None
    e = s.encode("utf-8")
    out = encode_long(len(e)) + e
    if len(_STR_CACHE) < _STR_CACHE_MAX and len(e) <= 64:
        _STR_CACHE[s] = out
    return out


def _put_strings(ap: Append, r: Mapping[str, Any], keys: Iterable[str]) -> bool:
    for k in keys:
        e = _str(r[k])
        if e is None:
            return False
        ap(e)
    return True


def _put_doubles(ap: Append, r: Mapping[str, Any], keys: Iterable[str]) -> bool:
    for k in keys:
        v = r[k]
        if type(v) is not float:
            return False
        ap(_pack_double(v))
    return True


def _put_optional_double(ap: Append, v: Any) -> bool:
    """``["null", "double"]``: branch 0 for None, branch 1 and the double for a float."""
    if v is None:
        ap(b"\x00")
    elif type(v) is float:
        ap(b"\x02" + _pack_double(v))
    else:
        return False
    return True


def _put_optional_doubles(ap: Append, r: Mapping[str, Any], keys: Iterable[str]) -> bool:
    return all(_put_optional_double(ap, r[k]) for k in keys)


def _put_int_map(ap: Append, m: Any) -> bool:
    """``{"type": "map", "values": "int"}``: one block, then the empty block."""
    if type(m) is not dict:
        return False
    if m:
        ap(encode_long(len(m)))
        for key, v in m.items():
            e = _str(key)
            if e is None or type(v) is not int:
                return False
            ap(e)
            ap(encode_long(v))
    ap(b"\x00")
    return True


def _put_optional_double_map(ap: Append, m: Any) -> bool:
    """``{"type": "map", "values": ["null", "double"]}``: one block, then the empty block."""
    if type(m) is not dict:
        return False
    if m:
        ap(encode_long(len(m)))
        for key, v in m.items():
            e = _str(key)
            if e is None:
                return False
            ap(e)
            if v is None:  # _put_optional_double, inlined: this loop runs once per feature
                ap(b"\x00")
            elif type(v) is float:
                ap(b"\x02" + _pack_double(v))
            else:
                return False
    ap(b"\x00")
    return True


def _put_history(ap: Append, h: Any) -> bool:
    """The ``history`` record: its four ``{"type": "map", "values": "int"}`` fields, then ``span_days``."""
    if type(h) is not dict:
        return False
    return (_put_int_map(ap, h["packet"]) and _put_int_map(ap, h["store"])
            and _put_int_map(ap, h["data_release"]) and _put_int_map(ap, h["other_survey"])
            and _put_doubles(ap, h, ("span_days",)))


def _put_bool(ap: Append, v: Any) -> bool:
    if type(v) is not bool:
        return False
    ap(b"\x01" if v else b"\x00")
    return True


def _put_string_array(ap: Append, items: Any) -> bool:
    """``{"type": "array", "items": "string"}``: one block, then the empty block."""
    if type(items) is not list:
        return False
    if items:
        ap(encode_long(len(items)))
        for f in items:
            e = _str(f)
            if e is None:
                return False
            ap(e)
    ap(b"\x00")
    return True


def _encode_bal_fast(r: Mapping[str, Any]) -> bytes | None:
    """Straight-line encoding of the layout above; None as soon as a value is not of the exact type
    the layout expects (then fastavro, which validates and converts, encodes the record)."""
    parts: list[bytes] = []
    ap = parts.append
    try:
        ok = (_put_strings(ap, r, ("survey", "object_id", "source_id"))
              and _put_doubles(ap, r, ("ra", "dec", "mjd"))
              and _put_int_map(ap, r["n_points"])
              and _put_optional_double_map(ap, r["features"])
              and _put_optional_doubles(ap, r, ("bal_lc_prob", "bal_fusion_prob", "candidate_score"))
              and _put_bool(ap, r["is_candidate"])
              and _put_history(ap, r["history"])
              and _put_string_array(ap, r["flags"])
              and _put_strings(ap, r, ("model_version",)))
    except (KeyError, TypeError):
        return None
    return b"".join(parts) if ok else None
