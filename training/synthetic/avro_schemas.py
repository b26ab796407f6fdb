"""Avro schemas, compiled encoders and record templates of the ZTF and Rubin alert packets.

ZTF: schema 4.02 from ``broker_plugin/schemas/ztf/4.02`` (copied from the official repository); the
sub-schemas (cutout, candidate, prv_candidate, fp_hist) are inlined into alert.avsc where first
named, so the embedded schema is self-contained like ZTF's (the files are not named after their
types, so no loader can resolve them by name). Rubin: the schema shipped in ``lsst-alert-packet``
(a hard dependency; default 11.0). Records are encoded with :mod:`training.synthetic.avrofast`
(byte-identical to fastavro, 4x faster); everything here is cached per schema version because the
packet writers call it once per alert.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Callable, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import load_schema

from .avrofast import compile_encoder, encode_long

ZTF_SCHEMA_VERSION = "4.02"
RUBIN_SCHEMA_VERSION = "11.0"
ZTF_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "broker_plugin" / "schemas" / "ztf"
SYNTHETIC_PUBLISHER = "bal-broker synthetic"
SYNTHETIC_PI = "synthetic"

#: Values every synthetic ZTF row of a kind shares, merged into the schema templates once.
_ZTF_CONST = {
    "programpi": SYNTHETIC_PI, "programid": 1, "rbversion": "t17_f5_c3", "magzpsciunc": 4e-6,
    "magzpscirms": 0.03, "clrcounc": 1.5e-5,
}
_ZTF_DET_CONST = {"nbad": 0, "ssdistnr": -999.0, "ssmagnr": -999.0, "ssnamenr": "null"}
_ZTF_FP_CONST = {"programid": 1, "magzpsciunc": 4e-6, "magzpscirms": 0.03, "clrcounc": 1.5e-5, "exptime": 30.0,
                 "procstatus": "0"}


# ------------------------------------------------------------------------------------------------
# ZTF
# ------------------------------------------------------------------------------------------------


def _inline_named(schema: Any, named: dict[str, Any], seen: set[str]) -> Any:
    """Replace references to ``named`` types by their definitions at first use (Avro allows a name
    only after its definition), so that the schema is self-contained, as ZTF's embedded schemas are."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            seen.add(schema)
            return _inline_named(named[schema], named, seen)
        return schema
    if isinstance(schema, list):
        return [_inline_named(s, named, seen) for s in schema]
    if isinstance(schema, dict):
        out = dict(schema)
        if "fields" in out:
            out["fields"] = [{**f, "type": _inline_named(f["type"], named, seen)} for f in out["fields"]]
        if "items" in out:
            out["items"] = _inline_named(out["items"], named, seen)
        return out
    return schema


@lru_cache(maxsize=8)
def ztf_schema_json(version: str = ZTF_SCHEMA_VERSION) -> str:
    """The self-contained ZTF alert schema (JSON) from ``broker_plugin/schemas/ztf/<version>``.

    The sub-schemas (cutout, candidate, prv_candidate, fp_hist) are inlined where alert.avsc first
    names them, because their files are not named after their types (SOURCES.md).
    """
    d = ZTF_SCHEMA_DIR / version
    if not (d / "alert.avsc").is_file():
        raise FileNotFoundError(f"ZTF schema {version} not found under {d}")
    named: dict[str, Any] = {}
    for name in ("cutout", "candidate", "prv_candidate", "fp_hist"):
        sub = json.loads((d / f"{name}.avsc").read_text())
        named[f"{sub['namespace']}.{sub['name']}"] = sub
    alert = json.loads((d / "alert.avsc").read_text())
    return json.dumps(_inline_named(alert, named, set()))


@lru_cache(maxsize=8)
def ztf_schema(version: str = ZTF_SCHEMA_VERSION) -> dict[str, Any]:
    """Parsed, self-contained ZTF alert schema (see :func:`ztf_schema_json`)."""
    return fastavro.parse_schema(json.loads(ztf_schema_json(version)))


@lru_cache(maxsize=8)
def _container_header(schema_json: str) -> bytes:
    """Object-container header up to (not including) the sync marker: magic + metadata map."""
    meta = {"avro.codec": b"null", "avro.schema": schema_json.encode()}
    parts = [b"Obj\x01", encode_long(len(meta))]
    for k, v in meta.items():
        parts += [encode_long(len(k)), k.encode(), encode_long(len(v)), v]
    parts.append(encode_long(0))
    return b"".join(parts)


@lru_cache(maxsize=8)
def ztf_encoder(version: str = ZTF_SCHEMA_VERSION) -> Callable[[dict[str, Any]], bytes]:
    """Compiled binary encoder of the ZTF alert record (see :mod:`training.synthetic.avrofast`)."""
    return compile_encoder(json.loads(ztf_schema_json(version)))



def avro_container(schema_json: str, data: bytes, sync: bytes) -> bytes:
    """A one-record, codec-null Avro Object Container File around the encoded record ``data``.

    The same bytes ``fastavro.writer`` writes, but framed by hand so that the header (with the 30 kB
    schema JSON) is built once per process; the sync marker comes from the caller's generator, so
    the bytes are deterministic.
    """
    return b"".join([_container_header(schema_json), sync, encode_long(1), encode_long(len(data)), data, sync])



@lru_cache(maxsize=8)
def _ztf_templates(version: str) -> dict[str, dict[str, Any]]:
    """Row templates with the constant fields merged in once (``prv_detection``: a detected prv row)."""
    schema = ztf_schema(version)
    out = {n: _template(_record_fields(schema, n)) for n in ("candidate", "prv_candidate", "fp_hist")}
    out["candidate"].update(_ZTF_CONST)
    out["candidate"].update(_ZTF_DET_CONST)
    out["prv_detection"] = {**out["prv_candidate"], **_ZTF_CONST, **_ZTF_DET_CONST}
    out["prv_candidate"].update(_ZTF_CONST)
    out["fp_hist"].update(_ZTF_FP_CONST)
    return out



# ------------------------------------------------------------------------------------------------
# Rubin
# ------------------------------------------------------------------------------------------------


@lru_cache(maxsize=8)
def rubin_encoder(version: str = RUBIN_SCHEMA_VERSION) -> Callable[[dict[str, Any]], bytes]:
    """Compiled binary encoder of the Rubin alert record."""
    return compile_encoder(rubin_schema(version))



def _lsst_schema_dir(version: str) -> Path:
    """The folder of ``version`` in lsst-alert-packet (a hard dependency), found without importing it."""
    spec = importlib.util.find_spec("lsst.alert.packet")
    assert spec is not None and spec.submodule_search_locations is not None
    major, minor = version.split(".")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "schema" / major / minor
        if d.is_dir():
            return d
    raise FileNotFoundError(f"lsst-alert-packet ships no schema {version}")


@lru_cache(maxsize=8)
def rubin_schema(version: str = RUBIN_SCHEMA_VERSION) -> dict[str, Any]:
    """Parsed Rubin alert schema shipped with lsst-alert-packet (``load_schema`` resolves the parts)."""
    major, minor = version.split(".")
    return load_schema(str(_lsst_schema_dir(version) / f"lsst.v{major}_{minor}.alert.avsc"))


def rubin_schema_id(version: str = RUBIN_SCHEMA_VERSION) -> int:
    """Confluent schema id ``major*100 + minor`` (lsst.alert.packet ``Schema.get_schema_id``)."""
    major, minor = version.split(".")
    return int(major) * 100 + int(minor)



@lru_cache(maxsize=8)
def _rubin_templates(version: str) -> dict[str, dict[str, Any]]:
    """diaSource / diaForcedSource / diaObject records filled from the schema and its sample alert."""
    schema = rubin_schema(version)
    sample = json.loads((_lsst_schema_dir(version) / "sample_data" / "alert.json").read_text())
    return {
        "diaSource": _template(_record_fields(schema, "diaSource"), sample.get("diaSource")),
        "diaForcedSource": _template(_record_fields(schema, "diaForcedSource")),
        "diaObject": _template(_record_fields(schema, "diaObject"), sample.get("diaObject")),
    }



# ------------------------------------------------------------------------------------------------
# Templates
# ------------------------------------------------------------------------------------------------


def _record_fields(schema: Any, name: str) -> list[dict[str, Any]]:
    """Fields of the named record type anywhere inside a parsed schema."""
    stack = [schema]
    while stack:
        s = stack.pop()
        if isinstance(s, dict):
            if s.get("type") == "record" and (s.get("name") == name or str(s.get("name", "")).endswith("." + name)):
                return list(s["fields"])
            stack.extend(s.values())
        elif isinstance(s, list):
            stack.extend(s)
    raise KeyError(f"record {name} not in schema")


def _template(fields: list[dict[str, Any]], sample: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A record with every field: the sample's value, else the schema default, else a typed zero."""
    out: dict[str, Any] = {}
    zero = {"int": 0, "long": 0, "float": 0.0, "double": 0.0, "string": "", "boolean": False, "bytes": b""}
    for f in fields:
        name = f["name"]
        if sample is not None and name in sample:
            out[name] = sample[name]
        elif "default" in f:
            out[name] = f["default"]
        else:
            t = f["type"]
            out[name] = zero.get(t) if isinstance(t, str) else None
    return out


