"""Rubin alert record (lsst.alert.packet schemas 3.0-11.x, native or Fink-rewritten) -> Alert.

Field names moved between schema versions (``midPointTai`` -> ``midpointMjdTai``, ``decl`` ->
``dec``, ``filterName`` -> ``band``); every spelling lsst-alert-packet has shipped is accepted.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any

from broker_plugin.alert import LSST_BANDS, Alert
from broker_plugin.errors import DecodeError
from broker_plugin.photometry.lightcurve import RUBIN_SOURCE_FIELDS, rubin_lightcurves

#: Scalar context the ranking head reads from a Rubin alert (NaN when absent in a schema version).
LSST_META_FIELDS: tuple[str, ...] = (
    "extendedness",  # diaSource: 0 point-like .. 1 extended (v3+)
    "reliability",  # diaSource real/bogus score (v5+; "spuriousness" before, not comparable, not used)
    "snr",  # diaSource S/N of the difference detection
    "nDiaSources",  # diaObject: detections of the object so far (v8+)
)

#: The per-object aggregates of a Rubin ``diaObject`` kept as ``Alert.aggregates`` (and in the history
#: store): per band, the statistics Rubin computes over the object's whole history (twelve months of
#: detections and forced photometry, more than the packet's sources), and the object's time span.
#: Names as in lsst.alert.packet 7.0-11.x; a field absent from a version is simply not there.
RUBIN_AGGREGATE_STATS: tuple[str, ...] = ("psfFluxMean", "psfFluxMeanErr", "psfFluxSigma", "psfFluxChi2",
                                          "psfFluxNdata", "fpFluxMean", "fpFluxMeanErr", "fpFluxSigma",
                                          "scienceFluxMean", "scienceFluxMeanErr", "psfFluxMin", "psfFluxMax")
RUBIN_AGGREGATE_FIELDS: tuple[str, ...] = (
    *(f"{b}_{stat}" for b in LSST_BANDS for stat in RUBIN_AGGREGATE_STATS),
    "firstDiaSourceMjdTai", "lastDiaSourceMjdTai", "nDiaSources")

_LSST_SCHEMA_FIELD = re.compile(r"v?(\d+)[._](\d+)")

#: The fields :func:`rubin_alert` (with the light-curve code) reads: the decoder's projection for
#: Rubin records (:data:`broker_plugin.decode.decoder.DECODE_FIELDS`). Keep in step with the code below.
RUBIN_DECODE_FIELDS: dict[str, Any] = {
    "diaSourceId": None,
    "lsst_schema_version": None,
    "diaSource": dict.fromkeys(("diaSourceId", "diaObjectId", "ssObjectId", "ra", "dec", "decl", "extendedness",
                                "reliability", "snr", *RUBIN_SOURCE_FIELDS)),
    "prvDiaSources": dict.fromkeys(RUBIN_SOURCE_FIELDS),
    "prvDiaForcedSources": dict.fromkeys(RUBIN_SOURCE_FIELDS),
    "diaObject": dict.fromkeys(("diaObjectId", *RUBIN_AGGREGATE_FIELDS)),
    "cutoutScience": None,
    "cutoutTemplate": None,
    "cutoutDifference": None,
}


def _num(v: Any) -> float:
    if v is None or isinstance(v, (str, bytes, bool)):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _id(v: Any) -> int | None:
    """A usable Rubin id: an int other than 0 (0 means "not associated" in Fink-rewritten files)."""
    return v if isinstance(v, int) and not isinstance(v, bool) and v != 0 else None


def _required_float(src: Mapping[str, Any], *keys: str) -> float:
    for k in keys:
        if k in src:
            v = src[k]
            break
    else:
        v = None
    if v is None:
        raise DecodeError(f"Rubin diaSource has no {keys[0]}", reason="missing_field")
    f = _num(v)
    if not math.isfinite(f):
        raise DecodeError(f"Rubin diaSource.{keys[0]} is not a finite number: {v!r}"[:200], reason="bad_value")
    return f


def rubin_alert(record: dict[str, Any], *, schema_version: str | None, raw: bytes, lightcurves: bool = True) -> Alert:
    """Build the normalised Alert of a Rubin record; DecodeError when identity or position is unusable.

    ``lightcurves=False``: as for :func:`broker_plugin.decode.ztf.ztf_alert` (the batch path adds them).

    object_id is the diaObjectId (from diaSource, else from diaObject); an alert of a solar-system
    object with no diaObject uses its ssObjectId and is flagged ``ss_object``.
    """
    src = record.get("diaSource")
    if not isinstance(src, Mapping):
        raise DecodeError("Rubin alert has no diaSource record", reason="missing_field")
    flags: list[str] = []
    source_id = _id(src.get("diaSourceId")) or _id(record.get("diaSourceId"))
    if source_id is None:
        raise DecodeError("Rubin alert has no diaSourceId", reason="missing_field")
    obj = record.get("diaObject")
    object_id = _id(src.get("diaObjectId"))
    if object_id is None and isinstance(obj, Mapping):
        object_id = _id(obj.get("diaObjectId"))
    if object_id is None:
        object_id = _id(src.get("ssObjectId"))
        if object_id is None:
            raise DecodeError("Rubin alert has neither a diaObjectId nor an ssObjectId", reason="missing_field")
        flags.append("ss_object")
    ra = _required_float(src, "ra")
    dec = _required_float(src, "dec", "decl")
    mjd = _required_float(src, "midpointMjdTai", "midPointTai")
    if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        raise DecodeError(f"Rubin position out of range: ra={ra}, dec={dec}", reason="bad_value")
    band = src.get("band", src.get("filterName"))
    if not isinstance(band, str) or not band:
        raise DecodeError("Rubin diaSource has no band", reason="missing_field")
    if band not in LSST_BANDS:
        flags.append("unknown_band")
    if schema_version is None:
        m = _LSST_SCHEMA_FIELD.search(str(record.get("lsst_schema_version", "")))
        schema_version = f"{int(m.group(1))}.{int(m.group(2))}" if m else "unknown"
    lcs, uls, lc_flags = rubin_lightcurves(record) if lightcurves else ({}, {}, [])
    meta = {
        "extendedness": _num(src.get("extendedness")),
        "reliability": _num(src.get("reliability")),
        "snr": _num(src.get("snr")),
        "nDiaSources": _num(obj.get("nDiaSources")) if isinstance(obj, Mapping) else math.nan,
    }
    return Alert(
        survey="lsst",
        object_id=str(object_id),
        source_id=str(source_id),
        ra=ra,
        dec=dec,
        mjd=mjd,
        band=band,
        schema_version=schema_version,
        record=record,
        raw=raw,
        lightcurves=lcs,
        upper_limits=uls,
        cutouts={
            "science": _bytes(record.get("cutoutScience")),
            "template": _bytes(record.get("cutoutTemplate")),
            "difference": _bytes(record.get("cutoutDifference")),
        },
        meta=meta,
        flags=flags + lc_flags,
        aggregates=_aggregates(obj),
    )


def _aggregates(obj: Any) -> dict[str, float]:
    """The finite numeric :data:`RUBIN_AGGREGATE_FIELDS` of a diaObject (empty without one)."""
    if not isinstance(obj, Mapping):
        return {}
    out = {}
    for name in RUBIN_AGGREGATE_FIELDS:
        v = _num(obj.get(name))
        if math.isfinite(v):
            out[name] = v
    return out


def _bytes(v: Any) -> bytes | None:
    return bytes(v) if isinstance(v, (bytes, bytearray)) else None
