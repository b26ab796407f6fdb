"""ZTF alert record (schemas 1.8-4.x, native or Spark-rewritten) -> :class:`~broker_plugin.alert.Alert`."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from broker_plugin.alert import ZTF_FID_BANDS, Alert
from broker_plugin.errors import DecodeError
from broker_plugin.photometry.lightcurve import ZTF_DETECTION_FIELDS, ZTF_FORCED_FIELDS, ztf_lightcurves

_JD_TO_MJD = 2400000.5

#: Scalar context the ranking head reads from a ZTF alert (``candidate`` fields, NaN when absent).
#: ZTF writes -999 / -99999 for "no value" in several of them (sgscore1/distpsnr1 without a PS1
#: match, neargaia without a Gaia match); those sentinels become NaN too. ``isdiffpos`` is +1/-1.
ZTF_META_FIELDS: tuple[str, ...] = (
    "sgscore1",  # PS1 star/galaxy score of the nearest PS1 source (1 = star); quasars look point-like
    "distpsnr1",  # arcsec to that PS1 source
    "distnr",  # arcsec to the nearest reference-image source
    "magnr",  # its reference magnitude
    "drb",  # deep real/bogus score (schema >= 3.3), NaN before
    "rb",  # classic real/bogus score
    "classtar",  # SExtractor star/galaxy score
    "ndethist",  # detections of this position so far (survey history, not the alert's 30 days)
    "ncovhist",  # times the position was covered
    "isdiffpos",  # +1 brighter than the reference, -1 fainter
    "neargaia",  # arcsec to the nearest Gaia source
    "maggaia",  # its G magnitude
)


#: The fields :func:`ztf_alert` (with the light-curve code) reads: the decoder's projection for ZTF
#: records (:data:`broker_plugin.decode.decoder.DECODE_FIELDS`). Keep in step with the code below.
ZTF_DECODE_FIELDS: dict[str, Any] = {
    "objectId": None,
    "candid": None,
    "schemavsn": None,
    "candidate": dict.fromkeys(("candid", "ra", "dec", "jd", "fid", *ZTF_DETECTION_FIELDS, *ZTF_META_FIELDS)),
    "prv_candidates": dict.fromkeys(ZTF_DETECTION_FIELDS),
    "fp_hists": dict.fromkeys(ZTF_FORCED_FIELDS),
    "cutoutScience": None,
    "cutoutTemplate": None,
    "cutoutDifference": None,
}


def _num(v: Any) -> float:
    """A float from a record value; NaN for None, non-numbers and ZTF's -999/-99999 sentinels."""
    if v is None or isinstance(v, (str, bytes)):
        return math.nan
    try:
        f = float(v)
    except (TypeError, ValueError):
        return math.nan
    return math.nan if f in (-999.0, -99999.0) else f


def ztf_meta(cand: Mapping[str, Any]) -> dict[str, float]:
    """:data:`ZTF_META_FIELDS` of a candidate."""
    meta = {k: _num(cand.get(k)) for k in ZTF_META_FIELDS if k != "isdiffpos"}
    d = cand.get("isdiffpos")
    meta["isdiffpos"] = math.nan if d is None else (1.0 if d in ("t", "1", True, 1, "T", "true") else -1.0)
    return meta


def _cutout(v: Any) -> bytes | None:
    """ZTF cutouts are ``{"fileName", "stampData"}`` records (gzipped FITS); keep the bytes."""
    if isinstance(v, Mapping):
        v = v.get("stampData")
    return v if isinstance(v, (bytes, bytearray)) else None


def _required_float(cand: Mapping[str, Any], key: str) -> float:
    v = cand.get(key)
    if v is None:
        raise DecodeError(f"ZTF alert has no candidate.{key}", reason="missing_field")
    try:
        f = float(v)
    except (TypeError, ValueError) as exc:
        raise DecodeError(f"ZTF candidate.{key} is not a number: {v!r}"[:200], reason="bad_value") from exc
    if not math.isfinite(f):
        raise DecodeError(f"ZTF candidate.{key} is not finite", reason="bad_value")
    return f


def ztf_alert(record: dict[str, Any], *, schema_version: str | None, raw: bytes, lightcurves: bool = True) -> Alert:
    """Build the normalised Alert of a ZTF record; DecodeError when identity or position is unusable.

    ``lightcurves=False`` leaves the light curves, upper limits and their flags to the caller, which
    builds them for a whole batch at once (:meth:`broker_plugin.decode.Decoder.decode_batch`).
    """
    cand = record.get("candidate")
    if not isinstance(cand, Mapping):
        raise DecodeError("ZTF alert has no candidate record", reason="missing_field")
    object_id = record.get("objectId")
    if not isinstance(object_id, str) or not object_id:
        raise DecodeError("ZTF alert has no objectId", reason="missing_field")
    candid = record.get("candid", cand.get("candid"))
    if candid is None:
        candid = cand.get("candid")
    if candid is None:
        raise DecodeError("ZTF alert has no candid", reason="missing_field")
    ra = _required_float(cand, "ra")
    dec = _required_float(cand, "dec")
    jd = _required_float(cand, "jd")
    if not (0.0 <= ra <= 360.0 and -90.0 <= dec <= 90.0):
        raise DecodeError(f"ZTF position out of range: ra={ra}, dec={dec}", reason="bad_value")
    fid = cand.get("fid")
    band = ZTF_FID_BANDS.get(fid) if isinstance(fid, int) else None
    if band is None:
        raise DecodeError(f"ZTF candidate.fid {fid!r} is not a known filter", reason="bad_value")
    version = record.get("schemavsn")
    if not isinstance(version, str) or not version:
        version = schema_version or "unknown"
    lcs, uls, flags = ztf_lightcurves(record) if lightcurves else ({}, {}, [])
    return Alert(
        survey="ztf",
        object_id=object_id,
        source_id=str(candid),
        ra=ra,
        dec=dec,
        mjd=jd - _JD_TO_MJD,
        band=band,
        schema_version=version,
        record=record,
        raw=raw,
        lightcurves=lcs,
        upper_limits=uls,
        cutouts={
            "science": _cutout(record.get("cutoutScience")),
            "template": _cutout(record.get("cutoutTemplate")),
            "difference": _cutout(record.get("cutoutDifference")),
        },
        meta=ztf_meta(cand),
        flags=flags,
    )
