"""What the ZTF and Rubin packet writers share: the alert context, value conventions, the
per-epoch truth and the encoded cutout stamps of a detection."""

from __future__ import annotations

import datetime as _dt
import math
import zlib
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np

from .lightcurves import NJY_ZEROPOINT, SurveyData, mag_from_njy
from .population import SimObject


def _mag(flux: float) -> float:
    return float(NJY_ZEROPOINT - 2.5 * math.log10(flux)) if flux > 0 else math.nan


def _f32(x: float | None) -> float | None:
    """A float for an Avro float/double field, None for a missing or non-finite value."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(slots=True)
class AlertContext:
    """What the packet writers need besides the object: its survey data and the alert's epoch."""

    obj: SimObject
    data: SurveyData
    band: str
    index: int  # index of the alert epoch in data.phot[band]
    serial: int  # unique per object within a night (ids, candids)

    @property
    def mjd(self) -> float:
        return float(self.data.phot[self.band].mjd[self.index])


def _stamp_kind(obj: SimObject) -> str:
    return obj.morphology if obj.morphology in ("point", "extended", "nuclear", "artifact") else "point"



@lru_cache(maxsize=4096)
def _date_str(day: int) -> str:
    """YYYYMMDD of an integer MJD."""
    return f"{_dt.date(1858, 11, 17) + _dt.timedelta(days=day):%Y%m%d}"



def _epoch_truth(ctx: AlertContext, t0: float, t1: float) -> dict[str, np.ndarray]:
    """Per-epoch truth inside [t0, t1], time ordered: band, observed DC (total) magnitude and flux
    (NaN magnitude where the flux is not positive), true magnitude, detected, difference flux and
    its error (fluxes in nJy)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("mjd", "band", "dc_mag", "dc_flux", "true_mag", "detected",
                                                          "diff_flux", "flux_err")}
    for b, p in ctx.data.phot.items():
        sel = (p.mjd >= t0) & (p.mjd <= t1 + 1e-9)
        cols["mjd"].append(p.mjd[sel])
        cols["band"].append(np.full(int(sel.sum()), b, dtype=object))
        cols["dc_mag"].append(mag_from_njy(p.ref_flux + p.diff_flux[sel]))
        cols["dc_flux"].append(p.ref_flux + p.diff_flux[sel])
        cols["true_mag"].append(p.true_mag[sel])
        cols["detected"].append(p.detected[sel])
        cols["diff_flux"].append(p.diff_flux[sel])
        cols["flux_err"].append(p.flux_err[sel])
    out = {k: np.concatenate(v) if v else np.empty(0) for k, v in cols.items()}
    order = np.argsort(out["mjd"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _base_truth(ctx: AlertContext, survey: str) -> dict[str, Any]:
    o = ctx.obj
    p = ctx.data.phot[ctx.band]
    truth: dict[str, Any] = {
        "survey": survey, "label": o.label, "is_bal": o.is_bal, "z": o.z, "ra": o.ra, "dec": o.dec,
        "mjd": ctx.mjd, "band": ctx.band, "morphology": o.morphology, "variability": o.variability,
        "ebv": o.ebv, "mean_mag": {b: o.mag(survey, b) for b in o.bands(survey)},
        "ref_mag": {b: _mag(q.ref_flux) for b, q in ctx.data.phot.items()},
        "dc_mag": float(mag_from_njy(p.ref_flux + p.diff_flux[ctx.index])),
        "diff_snr": float(p.diff_flux[ctx.index] / p.flux_err[ctx.index]),
    }
    if o.variability == "drw":
        truth["tau_obs"] = o.params["tau_obs"]
        truth["tau_rest"] = o.params["tau_rest"]
        truth["sf_inf"] = {b: o.params["sf_inf"][f"{survey}:{b}"] for b in o.bands(survey)}
    truth.update({k: v for k, v in o.truth.items() if k not in truth})
    return truth



# ------------------------------------------------------------------------------------------------
# Stamps
# ------------------------------------------------------------------------------------------------


def render_cutouts(kind: str, mag: float, rng: np.random.Generator, *, size: int, ref_mag: float | None,
                   compress: bool) -> dict[str, bytes]:
    """Encoded science/template/difference stamps for one detection (gzipped with :func:`gzip_rle`
    if ``compress``, as ZTF ships them; plain FITS for Rubin).

    The renderer and the FITS writer are imported here, not at module level, so that importing
    :mod:`training.synthetic` (the demo, the data-set code) does not load the image code until a
    packet with stamps is written; both are part of every install.
    """
    from broker_plugin.photometry.cutouts import encode_stamp

    from .stamps import render_triplet

    mag = float(mag) if np.isfinite(mag) else 22.0
    ref = float(ref_mag) if ref_mag is not None and np.isfinite(ref_mag) else None
    imgs = render_triplet(kind, mag, rng, size=size, ref_mag=ref)
    out = {}
    for k in ("science", "template", "difference"):
        raw = encode_stamp(imgs[k], compress=False)
        out[k] = gzip_rle(raw) if compress else raw
    return out


def gzip_rle(raw: bytes) -> bytes:
    """gzip with zlib's Z_RLE strategy: an ordinary .gz stream, as small as level 6 on noisy float
    stamps (run-length matches are all that LZ77 finds in them) and ~3.5x faster; header mtime 0."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31, 8, zlib.Z_RLE)
    return c.compress(raw) + c.flush()




def stamp_cutouts(ctx: AlertContext, rng: np.random.Generator, *, size: int, compress: bool) -> dict[str, bytes]:
    """The encoded stamps of the alert epoch. The science stamp shows what the template does not
    already hold: for a host galaxy (extended / nuclear) only the nucleus or transient, for an
    artefact only the difference flux; otherwise the point source over its reference source."""
    obj, data = ctx.obj, ctx.data
    p = data.phot[ctx.band]
    total = p.ref_flux + float(p.diff_flux[ctx.index])
    if obj.morphology in ("extended", "nuclear"):
        host = data.host_flux.get(ctx.band, 0.0)
        mag = _mag(max(total - host, 1e-3))
        ref_mag = obj.host_mag
    elif obj.morphology == "artifact":
        mag, ref_mag = _mag(abs(float(p.diff_flux[ctx.index]))), None
    else:
        mag, ref_mag = _mag(max(total, 1e-3)), _mag(p.ref_flux)
    return render_cutouts(_stamp_kind(obj), mag, rng, size=size, ref_mag=ref_mag, compress=compress)
