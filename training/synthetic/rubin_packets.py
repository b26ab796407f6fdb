"""Rubin alert packets (:func:`write_rubin_packet`) in Confluent wire format: ``0x00``, the schema
id ``major*100 + minor`` as a big-endian uint32, then the schemaless Avro record.

Record templates are the schema's own defaults plus the required values of the package's sample
``alert.json``; the physics then overwrites them: ``psfFlux`` is the difference flux (nJy),
``templateFlux`` the template's flux of the source and ``scienceFlux = templateFlux + psfFlux`` the
total flux, so the total-flux light curve is exactly the simulated one. ``prvDiaSources`` are the
detections of the previous 365 days, ``prvDiaForcedSources`` every visit from 30 days before the
first detection on. Cutouts are plain (not gzipped) FITS, as Rubin sends them.

Synthetic markers: every id (diaObjectId, diaSourceId, diaForcedSourceId) is at least 9.0e18, far
above real Rubin ids; ``observation_reason = "synthetic"``.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import numpy as np

from .avro_schemas import RUBIN_SCHEMA_VERSION, _rubin_templates, rubin_encoder, rubin_schema_id
from .packet_common import AlertContext, _base_truth, _date_str, _epoch_truth, _f32, stamp_cutouts

#: Synthetic Rubin ids start here (real ids are ~3e17 in 2026); int64 max is 9.22e18.
RUBIN_OBJECT_ID_BASE = 9_000_000_000_000_000_000
RUBIN_SOURCE_ID_BASE = 9_100_000_000_000_000_000
RUBIN_FORCED_ID_BASE = 9_200_000_000_000_000_000
#: History carried by a packet: prvDiaSources of the previous 365 days.
RUBIN_WINDOW_DAYS = 365.0


def _rubin_visit(mjd: float) -> int:
    """Visit id like Rubin's ``YYYYMMDDNNNNN`` (day_obs, then a sequence number ~ seconds / 40)."""
    seq = int((mjd % 1.0) * 86400.0 / 40.0)
    return int(_date_str(math.floor(mjd - 0.5))) * 100_000 + seq


def _rubin_source(ctx: AlertContext, band: str, j: int, rng: np.random.Generator,
                  tpl: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    obj = ctx.obj
    mjd = float(p.mjd[j])
    d, sig = float(p.diff_flux[j]), float(p.flux_err[j])
    snr = abs(d) / sig
    pos_err = min(0.7 / 2.3548 / max(snr, 1.0), 0.5) / 3600.0
    cosd = max(math.cos(math.radians(obj.dec)), 1e-3)
    point = obj.morphology in ("point", "nuclear")
    real = obj.label != "bogus"
    row = dict(tpl)
    row.update({
        "diaSourceId": RUBIN_SOURCE_ID_BASE + ctx.serial * 10_000 + _epoch_number(ctx, band, j),
        "visit": _rubin_visit(mjd), "detector": int(rng.integers(0, 189)),
        "diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "ssObjectId": None, "parentDiaSourceId": None,
        "midpointMjdTai": mjd, "ra": obj.ra + rng.normal(0, pos_err) / cosd, "raErr": _f32(pos_err),
        "dec": obj.dec + rng.normal(0, pos_err), "decErr": _f32(pos_err), "ra_dec_Cov": _f32(0.0),
        "x": _f32(float(rng.uniform(20, 4050))), "xErr": _f32(0.05), "y": _f32(float(rng.uniform(20, 4050))),
        "yErr": _f32(0.05), "centroid_flag": False,
        "apFlux": _f32(d + float(rng.normal(0, 1.2 * sig))), "apFluxErr": _f32(1.2 * sig), "apFlux_flag": False,
        "apFlux_flag_apertureTruncated": False, "isNegative": d < 0, "snr": _f32(snr),
        "psfFlux": _f32(d), "psfFluxErr": _f32(sig), "psfLnL": _f32(float(-rng.uniform(50, 500))),
        "psfChi2": _f32(float(rng.uniform(0.5, 2.0) if real else rng.uniform(3, 40)) * 400),
        "psfNdata": 400, "psfFlux_flag": False, "psfFlux_flag_edge": False, "psfFlux_flag_noGoodPixels": False,
        "trailNdata": 0, "dipoleNdata": 0,
        "scienceFlux": _f32(p.ref_flux + d), "scienceFluxErr": _f32(sig),
        "templateFlux": _f32(p.ref_flux), "templateFluxErr": _f32(0.3 * sig),
        "forced_PsfFlux_flag": False, "forced_PsfFlux_flag_edge": False, "forced_PsfFlux_flag_noGoodPixels": False,
        "extendedness": _f32(float(rng.uniform(0.0, 0.2)) if point else float(rng.uniform(0.6, 1.0))),
        "reliability": _f32(float(rng.beta(20, 1.5)) if real else float(rng.beta(1.5, 6))),
        "band": band, "isDipole": False, "dipoleFitAttempted": True,
        "timeProcessedMjdTai": mjd + 0.002, "bboxSize": int(rng.integers(17, 61)),
        "shape_flag": False, "pixelFlags": False, "pixelFlags_bad": False, "pixelFlags_cr": False,
        "pixelFlags_edge": False, "pixelFlags_saturated": False, "pixelFlags_suspect": False,
        "pixelFlags_streak": False, "pixelFlags_interpolated": False,
    })
    return row


def _epoch_number(ctx: AlertContext, band: str, j: int) -> int:
    """A per-object epoch number, unique across bands (for ids)."""
    offset = 0
    for b in sorted(ctx.data.phot):
        if b == band:
            return (offset + j) % 10_000
        offset += ctx.data.phot[b].mjd.size
    return j % 10_000


def _rubin_forced(ctx: AlertContext, band: str, j: int, rng: np.random.Generator,
                  tpl: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    mjd = float(p.mjd[j])
    d, sig = float(p.diff_flux[j]), float(p.flux_err[j])
    row = dict(tpl)
    row.update({
        "diaForcedSourceId": RUBIN_FORCED_ID_BASE + ctx.serial * 10_000 + _epoch_number(ctx, band, j),
        "diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "ra": ctx.obj.ra, "dec": ctx.obj.dec,
        "visit": _rubin_visit(mjd), "detector": int(rng.integers(0, 189)),
        "psfFlux": _f32(d), "psfFluxErr": _f32(sig), "midpointMjdTai": mjd,
        "scienceFlux": _f32(p.ref_flux + d), "scienceFluxErr": _f32(sig), "band": band,
        "timeProcessedMjdTai": mjd + 0.002,
    })
    return row


def _rubin_object(ctx: AlertContext, sources: list[dict[str, Any]], forced: list[dict[str, Any]],
                  tpl: dict[str, Any]) -> dict[str, Any]:
    obj = ctx.obj
    row = dict(tpl)
    row.update({"diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "validityStartMjdTai": ctx.mjd,
                "ra": obj.ra, "dec": obj.dec, "raErr": _f32(2e-5), "decErr": _f32(2e-5), "ra_dec_Cov": _f32(0.0)})
    for b in ("u", "g", "r", "i", "z", "y"):
        fl = np.array([s["psfFlux"] for s in sources if s["band"] == b], dtype=np.float64)
        er = np.array([s["psfFluxErr"] for s in sources if s["band"] == b], dtype=np.float64)
        sc = np.array([s["scienceFlux"] for s in sources if s["band"] == b], dtype=np.float64)
        ff = np.array([s["psfFlux"] for s in forced if s["band"] == b], dtype=np.float64)
        fe = np.array([s["psfFluxErr"] for s in forced if s["band"] == b], dtype=np.float64)
        row[f"{b}_psfFluxNdata"] = int(fl.size)
        if fl.size:
            row.update({
                f"{b}_psfFluxMean": _f32(fl.mean()), f"{b}_psfFluxMeanErr": _f32(math.sqrt((er**2).sum()) / fl.size),
                f"{b}_psfFluxSigma": _f32(fl.std()) if fl.size > 1 else None,
                f"{b}_psfFluxMin": _f32(fl.min()), f"{b}_psfFluxMax": _f32(fl.max()),
                f"{b}_psfFluxErrMean": _f32(er.mean()),
                f"{b}_scienceFluxMean": _f32(sc.mean()),
                f"{b}_scienceFluxMeanErr": _f32(er.mean() / math.sqrt(sc.size)),
            })
        if ff.size:
            row.update({f"{b}_fpFluxMean": _f32(ff.mean()),
                        f"{b}_fpFluxMeanErr": _f32(math.sqrt((fe**2).sum()) / ff.size)})
    times = [s["midpointMjdTai"] for s in sources]
    row.update({"firstDiaSourceMjdTai": min(times), "lastDiaSourceMjdTai": max(times), "nDiaSources": len(sources)})
    return row


def write_rubin_packet(ctx: AlertContext, rng: np.random.Generator, *, schema_version: str = RUBIN_SCHEMA_VERSION,
                       stamps: bool = True, window_days: float = RUBIN_WINDOW_DAYS) -> tuple[bytes, dict[str, Any]]:
    """One Rubin alert in Confluent wire format for the detection ``ctx.index`` of ``ctx.band``, and its truth."""
    tpls = _rubin_templates(schema_version)
    data = ctx.data
    t_alert = ctx.mjd
    src = _rubin_source(ctx, ctx.band, ctx.index, rng, tpls["diaSource"])
    prv: list[dict[str, Any]] = []
    first_det = t_alert
    for b, p in data.phot.items():
        for j in np.flatnonzero(p.detected & (p.mjd < t_alert)):
            first_det = min(first_det, float(p.mjd[j]))
            if p.mjd[j] >= t_alert - window_days:
                prv.append(_rubin_source(ctx, b, int(j), rng, tpls["diaSource"]))
    forced: list[dict[str, Any]] = []
    f0 = max(first_det - 30.0, t_alert - window_days)
    for b, p in data.phot.items():
        for j in np.flatnonzero((p.mjd >= f0) & (p.mjd < t_alert)):
            forced.append(_rubin_forced(ctx, b, int(j), rng, tpls["diaForcedSource"]))
    prv.sort(key=lambda r: r["midpointMjdTai"])
    forced.sort(key=lambda r: r["midpointMjdTai"])
    dia_object = _rubin_object(ctx, [*prv, src], forced, tpls["diaObject"])
    record: dict[str, Any] = {
        "diaSourceId": src["diaSourceId"], "observation_reason": "synthetic", "target_name": None,
        "diaSource": src, "prvDiaSources": prv or None, "prvDiaForcedSources": forced or None,
        "diaObject": dia_object, "ssSource": None, "mpc_orbits": None,
        "cutoutDifference": None, "cutoutScience": None, "cutoutTemplate": None,
    }
    if stamps:
        enc = stamp_cutouts(ctx, rng, size=31, compress=False)
        record.update({"cutoutDifference": enc["difference"], "cutoutScience": enc["science"],
                       "cutoutTemplate": enc["template"]})
    packet = b"\x00" + struct.pack(">I", rubin_schema_id(schema_version)) + rubin_encoder(schema_version)(record)
    truth = _base_truth(ctx, "lsst")
    truth.update({"object_id": str(RUBIN_OBJECT_ID_BASE + ctx.serial), "source_id": str(src["diaSourceId"]),
                  "n_prv": len(prv), "n_forced": len(forced),
                  "epochs": _epoch_truth(ctx, t_alert - window_days, t_alert)})
    return packet, truth


