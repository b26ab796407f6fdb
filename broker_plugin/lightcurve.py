"""Per-band light curves from a decoded alert record (ZTF or Rubin), built with numpy.

This is the only place where survey photometry is turned into the :class:`~broker_plugin.alert.LightCurve`
that the feature code sees, so streaming, replay and training all share one set of choices. They are:

Common to both surveys
    * time is MJD; flux is in nJy (AB zero point 31.4: ``mag = 31.4 - 2.5 log10(flux_nJy)``);
    * **flux is signed and mag always agrees with it**: ``mag = 31.4 - 2.5 log10(flux)`` where
      ``flux > 0`` and NaN otherwise, ``mag_err = 2.5/ln10 * flux_err/flux`` (NaN where ``flux <= 0``).
      A point is kept when its time, flux and flux error are finite and the error is positive, so
      arrays stay aligned and a difference-flux light curve keeps its negative epochs;
    * points closer in time than :data:`DUPLICATE_TOL_DAYS` are one epoch: the alert's own
      detection wins over history, detections win over forced photometry;
    * arrays are sorted by time.

ZTF (``kind`` ``"dc"`` or ``"diff"`` per band)
    * detections: ``candidate`` plus ``prv_candidates`` entries with a magpsf; entries without one
      are non-detections and go to :class:`~broker_plugin.alert.UpperLimits` (``diffmaglim``);
    * a detection is dropped when ``sigmapsf`` is not positive, magpsf is implausible, or
      ``nbad > 0`` (bad pixels inside the 5x5 stamp core bias the PSF fit; this costs ~0.2% of the
      detections in the shared sample);
    * a band is **DC** (apparent magnitude of the whole source) when at least half of its points
      (detections and usable forced-photometry rows, which carry their own distnr/magnr) sit on a
      reference-image source (``distnr <= 1.5"`` with a valid ``magnr``/``sigmagnr``):
      ``f = 10^(-0.4 magnr) + s 10^(-0.4 magpsf)`` with ``s = +1`` for ``isdiffpos`` in
      ('t', '1', True) else -1, ``mag = -2.5 log10 f``, ``sigma = sqrt((10^(-0.4 magnr) sigmagnr)^2 +
      (10^(-0.4 magpsf) sigmapsf)^2) / f`` (first-order propagation: dF = 0.4 ln10 F dm for each
      term, and dm = dF / (0.4 ln10 F) for the sum, so the 0.4 ln10 factors cancel).
      Points in a DC band without their own valid reference use the band's median reference
      (flag ``dc_ref_borrowed``); points with ``f <= 0`` are dropped (flag ``dc_nonpositive_dropped``);
    * otherwise the band is **diff**: flux ``= s 10^(-0.4 (magpsf - 31.4))`` (negative for
      ``isdiffpos`` false, with mag NaN per the common rule);
    * forced photometry (schema 4.x ``fp_hists``): rows with ``procstatus == '0'`` and a finite
      flux, positive uncertainty and valid zero point; ``forcediffimflux`` [DN] is converted with
      ``magzpsci`` (flux_nJy = DN * 10^(0.4 (31.4 - magzpsci))). In a DC band every such row is used
      with the reference added (its own reference if valid, else the band's); low-S/N epochs are
      exactly the "quiet" epochs a variability measure needs, and dropping them would bias it. In a
      diff band only |S/N| >= :data:`FP_MIN_SNR` rows are used, as non-detections of a difference
      flux carry no magnitude. Flag ``fp_hists_used`` when any row was kept.

Rubin (``kind`` ``"dc"`` or ``"diff"`` per band)
    * points: ``diaSource`` + ``prvDiaSources`` (detections) + ``prvDiaForcedSources`` (forced
      photometry at the object's position, which carries the quiet epochs);
    * ``psfFlux`` is the difference-image flux; ``scienceFlux`` (forced PSF flux on the science
      image, v5 and v8+) is the total flux of the source and is the analogue of the ZTF DC
      magnitude. A band is **DC** when at least half of its points carry a finite ``scienceFlux``
      with positive error; its points without one are dropped (flag ``dc_points_missing``).
      Otherwise the band uses ``psfFlux`` (``diff``);
    * field names of every schema version 3.0-11.x are handled (``midPointTai``/``midpointMjdTai``,
      ``filterName``/``band``, ``psFlux``/``psfFlux``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from .alert import LSST_BANDS, ZTF_FID_BANDS, LightCurve, UpperLimits

#: AB magnitude of 1 nJy: mag = 31.4 - 2.5 log10(flux / nJy).
NJY_ZEROPOINT = 31.4
#: 2.5 / ln(10): converts a relative flux error to a magnitude error.
MAG_PER_RELFLUX = 2.5 / math.log(10.0)
#: Two points of one band closer than this (days) are the same epoch; about 0.09 s.
DUPLICATE_TOL_DAYS = 1e-6
#: distnr (arcsec) within which a ZTF detection sits on a reference-image source (ALeRCE/Fink use ~1.4-1.5).
DC_MAX_DISTNR = 1.5
#: |S/N| a ZTF forced-photometry row needs to be used in a difference-magnitude band.
FP_MIN_SNR = 3.0
#: ZTF magnitudes outside this range are corrupt values, not photometry.
_ZTF_MAG_RANGE = (5.0, 35.0)
_JD_TO_MJD = 2400000.5
_DC_FRACTION = 0.5

#: Priorities when de-duplicating epochs: lower wins.
_PRIO_ALERT, _PRIO_HISTORY, _PRIO_FORCED = 0, 1, 2


# --------------------------------------------------------------------------------------- helpers
#
# Alerts carry tens of points, so numpy's per-call overhead, not arithmetic, is the cost. Every
# band is therefore processed at once: per-point band indices, one sort by (band, time, priority),
# one de-duplication pass, and the bands cut out of the sorted arrays as slices.


def _num(v: Any) -> float:
    """float(v), NaN for None or anything that is not a number."""
    try:
        return float(v) if v is not None else math.nan
    except (TypeError, ValueError):
        return math.nan


def _table(rows: Sequence[Mapping[str, Any]], keys: tuple[str, ...]) -> np.ndarray:
    """Numeric columns of a list of dicts as a (len(keys), len(rows)) float64 array; None/absent -> NaN.

    One numpy conversion for all columns is several times cheaper than one per column. A
    non-numeric value (only possible for records that did not come through a typed Avro schema)
    falls back to a per-value conversion.
    """
    vals = [tuple(map(r.get, keys)) for r in rows]
    try:
        arr = np.array(vals, dtype=np.float64)
    except (TypeError, ValueError):
        arr = np.array([[_num(v) for v in row] for row in vals], dtype=np.float64)
    return arr.reshape(len(rows), len(keys)).T


def mag_to_njy(mag: np.ndarray | float) -> np.ndarray | float:
    """nJy flux of an AB magnitude (the inverse of the common rule); sentinel mags overflow to inf quietly."""
    with np.errstate(over="ignore"):
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - NJY_ZEROPOINT))


def _sorted_unique_epochs(band: np.ndarray, mjd: np.ndarray, prio: np.ndarray) -> np.ndarray:
    """Indices ordering points by (band, time) with one point per band and epoch (lowest prio wins).

    Points of one band closer than DUPLICATE_TOL_DAYS form one epoch; within it the point with
    the lowest priority value is kept (the alert's detection, then history, then forced photometry).
    """
    n = mjd.size
    if n < 2:
        return np.arange(n)
    order = np.lexsort((prio, mjd, band))
    b, t = band[order], mjd[order]
    new_epoch = np.empty(n, dtype=bool)
    new_epoch[0] = True
    np.greater(np.diff(t), DUPLICATE_TOL_DAYS, out=new_epoch[1:])
    new_epoch[1:] |= b[1:] != b[:-1]
    if new_epoch.all():  # the common case: no repeated epoch
        return order
    # an epoch may span points whose times differ by < tol with priorities out of order: re-sort
    epoch = np.cumsum(new_epoch)
    order2 = np.lexsort((prio[order], epoch))
    e2 = epoch[order2]
    first = np.empty(n, dtype=bool)
    first[0] = True
    np.not_equal(e2[1:], e2[:-1], out=first[1:])
    return order[order2[first]]


def _assemble(names: tuple[str, ...], kinds: Sequence[str], band: np.ndarray, mjd: np.ndarray, flux: np.ndarray,
              err: np.ndarray, prio: np.ndarray) -> dict[str, LightCurve]:
    """Final cleaning shared by both surveys, then one LightCurve per band (views of shared arrays).

    ``band`` holds indices into ``names`` (-1 = not a light-curve point); ``kinds[i]`` is band i's kind.
    """
    ok = (band >= 0) & np.isfinite(mjd) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if not ok.all():
        band, mjd, flux, err, prio = band[ok], mjd[ok], flux[ok], err[ok], prio[ok]
    idx = _sorted_unique_epochs(band, mjd, prio)
    band, mjd, flux, err = band[idx], mjd[idx], flux[idx], err[idx]
    pos = flux > 0
    safe = np.where(pos, flux, 1.0)
    mag = np.where(pos, NJY_ZEROPOINT - 2.5 * np.log10(safe), np.nan)
    mag_err = np.where(pos, MAG_PER_RELFLUX * err / safe, np.nan)
    out: dict[str, LightCurve] = {}
    if band.size == 0:
        return out
    cuts = np.flatnonzero(band[1:] != band[:-1]) + 1
    starts = [0, *cuts.tolist()]
    ends = [*cuts.tolist(), band.size]
    for s, e in zip(starts, ends, strict=True):
        i = int(band[s])
        sl = slice(s, e)
        out[names[i]] = LightCurve(names[i], mjd[sl], mag[sl], mag_err[sl], flux[sl], err[sl], kinds[i])
    return out


def _borrow_reference(band: np.ndarray, has_ref: np.ndarray, use: np.ndarray, ref: np.ndarray,
                      ref_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give points in ``use`` without their own reference their band's median reference (rare path)."""
    ref, ref_err = ref.copy(), ref_err.copy()
    for i in np.unique(band[use]).tolist():
        own = (band == i) & has_ref
        need = use & (band == i)
        ref[need] = float(np.median(ref[own]))
        ref_err[need] = float(np.median(ref_err[own]))
    return ref, ref_err


# ------------------------------------------------------------------------------------------- ZTF

_DET_KEYS = ("jd", "fid", "magpsf", "sigmapsf", "distnr", "magnr", "sigmagnr", "nbad")
_FP_KEYS = ("jd", "fid", "forcediffimflux", "forcediffimfluxunc", "magzpsci", "distnr", "magnr", "sigmagnr")

#: Every field this module reads from a ZTF ``candidate`` / ``prv_candidates`` row and from an
#: ``fp_hists`` row. The decoder decodes only these (and skips the rest, see
#: :mod:`broker_plugin.decode.fastread`), so a field read here must be listed here;
#: ``tests/test_fastread.py`` checks the projected and the full decode give identical alerts.
ZTF_DETECTION_FIELDS: tuple[str, ...] = (*_DET_KEYS, "isdiffpos", "diffmaglim")
ZTF_FORCED_FIELDS: tuple[str, ...] = (*_FP_KEYS, "procstatus")
#: isdiffpos values meaning "brighter than the reference" (ZTF writes 't'/'f'; older packets '1'/'0').
_POSITIVE = frozenset(("t", "T", "1", "true", True))
_ZTF_NAMES: tuple[str, ...] = tuple(ZTF_FID_BANDS[f] for f in sorted(ZTF_FID_BANDS))
_ZTF_FIDS = np.array(sorted(ZTF_FID_BANDS), dtype=np.float64)


def _fid_index(fid: np.ndarray) -> np.ndarray:
    """Index into _ZTF_NAMES of each fid; -1 for an unknown filter."""
    idx = np.searchsorted(_ZTF_FIDS, fid)
    idx = np.minimum(idx, _ZTF_FIDS.size - 1)
    return np.where(_ZTF_FIDS[idx] == fid, idx, -1)


def ztf_lightcurves(record: Mapping[str, Any]) -> tuple[dict[str, LightCurve], dict[str, UpperLimits], list[str]]:
    """Light curves, upper limits and quality flags of a ZTF alert record (any schema 1.8-4.x)."""
    with np.errstate(all="ignore"):  # NaN/sentinel comparisons and overflows are masked explicitly
        return _ztf_lightcurves(record)


def _ztf_lightcurves(record: Mapping[str, Any]) -> tuple[dict[str, LightCurve], dict[str, UpperLimits], list[str]]:
    flags: list[str] = []
    cand = record.get("candidate") or {}
    prv = record.get("prv_candidates") or []
    fp_all = record.get("fp_hists") or []
    det_rows: list[Mapping[str, Any]] = [cand]
    lim_rows: list[Mapping[str, Any]] = []
    for p in prv:
        (lim_rows if p.get("magpsf") is None else det_rows).append(p)
    fp_rows = [p for p in fp_all if str(p.get("procstatus")).strip() == "0"]
    if not prv and not fp_all:
        flags.append("no_history")
    lo, hi = _ZTF_MAG_RANGE

    # --- detections: signed difference flux and reference flux, nJy
    jd, fid, magpsf, sigmapsf, distnr, magnr, sigmagnr, nbad = _table(det_rows, _DET_KEYS)
    sign = np.where([r.get("isdiffpos") in _POSITIVE for r in det_rows], 1.0, -1.0)
    diff = sign * 10.0 ** (-0.4 * (magpsf - NJY_ZEROPOINT))
    diff_err = np.abs(diff) * sigmapsf / MAG_PER_RELFLUX
    use = np.isfinite(sigmapsf) & (sigmapsf > 0) & (magpsf > lo) & (magpsf < hi) & ~(nbad > 0)
    prio = np.full(jd.size, _PRIO_HISTORY, dtype=np.int8)
    prio[0] = _PRIO_ALERT
    is_fp = np.zeros(jd.size, dtype=bool)

    # --- forced photometry: difference flux [DN] -> nJy with the science zero point
    if fp_rows:
        fjd, ffid, dn, dn_err, zp, fdistnr, fmagnr, fsigmagnr = _table(fp_rows, _FP_KEYS)
        scale = 10.0 ** (0.4 * (NJY_ZEROPOINT - zp))
        fuse = (zp > 0) & (dn > -9999.0) & (dn_err > 0)  # -99999 is ZTF's "no measurement"
        jd = np.concatenate((jd, fjd))
        fid = np.concatenate((fid, ffid))
        diff = np.concatenate((diff, dn * scale))
        diff_err = np.concatenate((diff_err, dn_err * scale))
        distnr = np.concatenate((distnr, fdistnr))
        magnr = np.concatenate((magnr, fmagnr))
        sigmagnr = np.concatenate((sigmagnr, fsigmagnr))
        use = np.concatenate((use, fuse))
        prio = np.concatenate((prio, np.full(fjd.size, _PRIO_FORCED, dtype=np.int8)))
        is_fp = np.concatenate((is_fp, np.ones(fjd.size, dtype=bool)))

    band = _fid_index(fid)
    use &= (band >= 0) & np.isfinite(jd) & np.isfinite(diff) & np.isfinite(diff_err)
    has_ref = ((distnr >= 0) & (distnr <= DC_MAX_DISTNR) & (magnr > lo) & (magnr < hi)
               & (sigmagnr > 0) & np.isfinite(sigmagnr))
    ref = 10.0 ** (-0.4 * (magnr - NJY_ZEROPOINT))
    ref_err = ref * sigmagnr / MAG_PER_RELFLUX

    # --- per band: DC when at least half of its usable points sit on a reference source
    nb = len(_ZTF_NAMES)
    n_all = np.bincount(band[use], minlength=nb)
    n_ref = np.bincount(band[use & has_ref], minlength=nb)
    dc_band = (n_ref > 0) & (n_ref >= _DC_FRACTION * n_all)
    dc = dc_band[band] & use  # band -1 indexes the last entry, harmless: masked by use
    borrow = dc & ~has_ref
    if borrow.any():
        flags_borrowed = True
        ref, ref_err = _borrow_reference(band, has_ref & use, borrow, ref, ref_err)
    else:
        flags_borrowed = False
    flux = np.where(dc, ref + diff, diff)
    err = np.where(dc, np.hypot(ref_err, diff_err), diff_err)
    # diff bands: a forced-photometry row must be a detection of the difference flux
    weak_fp = is_fp & ~dc & (np.abs(diff) < FP_MIN_SNR * diff_err)
    nonpos = dc & ~(flux > 0)
    keep = use & ~weak_fp & ~nonpos
    lcs = _assemble(_ZTF_NAMES, ["dc" if d else "diff" for d in dc_band.tolist()], np.where(keep, band, -1),
                    jd - _JD_TO_MJD, flux, err, prio)

    present = n_all > 0
    for flag, on in (("dc_magnitudes", bool((present & dc_band).any())),
                     ("difference_magnitudes", bool((present & ~dc_band).any())),
                     ("fp_hists_used", bool((keep & is_fp).any())),
                     ("dc_ref_borrowed", flags_borrowed),
                     ("dc_nonpositive_dropped", bool((nonpos & use).any()))):
        if on:
            flags.append(flag)
    return lcs, _ztf_upper_limits(lim_rows), flags


def _ztf_upper_limits(rows: Sequence[Mapping[str, Any]]) -> dict[str, UpperLimits]:
    """Non-detections per band: time and diffmaglim, finite, sorted, one per epoch."""
    if not rows:
        return {}
    jd, fid, lim = _table(rows, ("jd", "fid", "diffmaglim"))
    band = _fid_index(fid)
    ok = (band >= 0) & np.isfinite(jd) & np.isfinite(lim) & (lim > 0)
    band, mjd, lim = band[ok], jd[ok] - _JD_TO_MJD, lim[ok]
    idx = _sorted_unique_epochs(band, mjd, np.zeros(band.size, dtype=np.int8))
    band, mjd, lim = band[idx], mjd[idx], lim[idx]
    out: dict[str, UpperLimits] = {}
    for i in np.unique(band).tolist():
        sel = band == i
        out[_ZTF_NAMES[i]] = UpperLimits(_ZTF_NAMES[i], mjd[sel], lim[sel])
    return out


# ----------------------------------------------------------------------------------------- Rubin

_LSST_INDEX = {b: i for i, b in enumerate(LSST_BANDS)}
#: Every field this module reads from a Rubin diaSource-like row, in all schema spellings (see
#: ZTF_DETECTION_FIELDS for why they are listed).
RUBIN_SOURCE_FIELDS: tuple[str, ...] = ("midpointMjdTai", "midPointTai", "psfFlux", "psFlux", "psfFluxErr",
                                        "psFluxErr", "scienceFlux", "scienceFluxErr", "band", "filterName")


def _first_key(row: Mapping[str, Any], *names: str) -> str:
    """The first of several version-dependent field names present in a Rubin record."""
    for n in names:
        if n in row:
            return n
    return names[0]


def _rubin_columns(rows: Sequence[Mapping[str, Any]]) -> tuple[np.ndarray, ...]:
    """time, band index, psf flux/err and science flux/err of a list of diaSource-like rows."""
    r0 = rows[0]
    keys = (_first_key(r0, "midpointMjdTai", "midPointTai"), _first_key(r0, "psfFlux", "psFlux"),
            _first_key(r0, "psfFluxErr", "psFluxErr"), "scienceFlux", "scienceFluxErr")
    k_b = _first_key(r0, "band", "filterName")
    t, f, fe, sf, sfe = _table(rows, keys)
    band = np.array([_LSST_INDEX.get(r.get(k_b), -1) if isinstance(r.get(k_b), str) else -1 for r in rows],
                    dtype=np.intp)
    return t, band, f, fe, sf, sfe


def rubin_lightcurves(record: Mapping[str, Any]) -> tuple[dict[str, LightCurve], dict[str, UpperLimits], list[str]]:
    """Light curves and quality flags of a Rubin alert record (any lsst.alert.packet schema 3.0-11.x).

    Rubin alerts carry no upper limits in the ZTF sense (forced photometry replaces them), so the
    second element is always empty.
    """
    with np.errstate(all="ignore"):
        return _rubin_lightcurves(record)


def _rubin_lightcurves(record: Mapping[str, Any]) -> tuple[dict[str, LightCurve], dict[str, UpperLimits], list[str]]:
    flags: list[str] = []
    src = record.get("diaSource")
    prv = record.get("prvDiaSources") or []
    forced = record.get("prvDiaForcedSources") or []
    if not prv and not forced:
        flags.append("no_history")
    head = [src] if isinstance(src, Mapping) else []
    rows = [*head, *prv, *forced]
    if not rows:
        return {}, {}, flags
    # one table for every row: the spelling of the field names is the same within one schema version
    t, band, f, fe, sf, sfe = _rubin_columns(rows)
    prio = np.repeat(np.array([_PRIO_ALERT, _PRIO_HISTORY, _PRIO_FORCED], dtype=np.int8),
                     [len(head), len(prv), len(forced)])
    nb = len(LSST_BANDS)
    use = (band >= 0) & np.isfinite(t)
    has_sci = np.isfinite(sf) & np.isfinite(sfe) & (sfe > 0)
    n_all = np.bincount(band[use], minlength=nb)
    n_sci = np.bincount(band[use & has_sci], minlength=nb)
    dc_band = (n_sci > 0) & (n_sci >= _DC_FRACTION * n_all)
    dc = dc_band[band] & use
    missing = dc & ~has_sci
    lcs = _assemble(LSST_BANDS, ["dc" if d else "diff" for d in dc_band.tolist()],
                    np.where(use & ~missing, band, -1), t, np.where(dc, sf, f), np.where(dc, sfe, fe), prio)
    present = n_all > 0
    for flag, on in (("dc_magnitudes", bool((present & dc_band).any())),
                     ("difference_magnitudes", bool((present & ~dc_band).any())),
                     ("dc_points_missing", bool(missing.any()))):
        if on:
            flags.append(flag)
    return lcs, {}, flags
