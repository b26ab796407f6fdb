"""ZTF light curves: detections, non-detections and forced photometry of a ZTF alert, in nJy.

The rules (DC vs difference magnitudes, forced-photometry use, upper limits) and why are in
:mod:`broker_plugin.photometry.lightcurve`, which re-exports this module's public names; this
module holds the ZTF builder only, on the shared steps of :mod:`~broker_plugin.photometry.lightcurve_core`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import ZTF_FID_BANDS, UpperLimits
from broker_plugin.photometry.lightcurve_core import (
    _DC_FRACTION,
    _PRIO_ALERT,
    _PRIO_FORCED,
    _PRIO_HISTORY,
    MAG_PER_RELFLUX,
    NJY_ZEROPOINT,
    LightCurveResult,
    _alert_index,
    _any_group,
    _any_row,
    _assemble,
    _batch_table,
    _borrow_reference,
    _flag_lists,
    _flag_sets,
    _group,
    _runs,
    _segments,
    _sorted_unique_epochs,
)

#: distnr (arcsec) within which a ZTF detection sits on a reference-image source (ALeRCE/Fink use ~1.4-1.5).
DC_MAX_DISTNR = 1.5
#: |S/N| a ZTF forced-photometry row needs to be used in a difference-magnitude band.
FP_MIN_SNR = 3.0
#: ZTF magnitudes outside this range are corrupt values, not photometry.
_ZTF_MAG_RANGE = (5.0, 35.0)
_JD_TO_MJD = 2400000.5

_DET_KEYS = ("jd", "fid", "magpsf", "sigmapsf", "distnr", "magnr", "sigmagnr", "nbad")
_FP_KEYS = ("jd", "fid", "forcediffimflux", "forcediffimfluxunc", "magzpsci", "distnr", "magnr", "sigmagnr")
_LIM_KEYS = ("jd", "fid", "diffmaglim")

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
_ZTF_FLAGS = _flag_sets(("no_history", "dc_magnitudes", "difference_magnitudes", "fp_hists_used",
                         "dc_ref_borrowed", "dc_nonpositive_dropped", "trigger_point_dropped"))


def _fid_index(fid: np.ndarray) -> np.ndarray:
    """Index into _ZTF_NAMES of each fid; -1 for an unknown filter."""
    idx = np.searchsorted(_ZTF_FIDS, fid)
    idx = np.minimum(idx, _ZTF_FIDS.size - 1)
    return np.where(_ZTF_FIDS[idx] == fid, idx, -1)


def ztf_lightcurves(record: Mapping[str, Any]) -> LightCurveResult:
    """Light curves, upper limits and quality flags of a ZTF alert record (any schema 1.8-4.x).

    The batch function on a one-record batch (one implementation of the rules; a single call costs
    about what a dedicated one-alert implementation did).
    """
    return ztf_lightcurves_batch((record,))[0]


def ztf_lightcurves_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    """:func:`ztf_lightcurves` of every record, computed for the whole batch at once.

    Bit-identical to ``[ztf_lightcurves(r) for r in records]``, and several times cheaper per alert
    for batches of hundreds (see the module docstring). Records of any schema version may be mixed.
    If a record would make :func:`ztf_lightcurves` raise, this may raise for the whole batch: redo
    it alert by alert to find the record.
    """
    with np.errstate(all="ignore"):  # NaN/sentinel comparisons and overflows are masked explicitly
        return _ztf_batch(records)


_Rows = list[Mapping[str, Any]]


def _ztf_rows(records: Sequence[Mapping[str, Any]]) -> tuple[_Rows, _Rows, _Rows, list[int], list[int], list[int],
                                                             list[bool]]:
    """Rows of every alert, alert after alert, and where each alert's rows end.

    Detections (the alert's own candidate first, then its detected ``prv_candidates``),
    non-detections (``prv_candidates`` without ``magpsf``) and usable forced photometry
    (``procstatus`` 0); ``*_ends[a]`` is the end of alert ``a``'s rows in each list, and
    ``no_history`` says which alerts came with neither history nor forced photometry. Split out of
    :func:`_ztf_batch` so the gathering (Python, per row) reads apart from the numpy arithmetic.
    """
    det_rows: _Rows = []
    lim_rows: _Rows = []
    fp_rows: _Rows = []
    det_ends: list[int] = []
    lim_ends: list[int] = []
    fp_ends: list[int] = []
    no_history: list[bool] = []
    for record in records:
        cand = record.get("candidate") or {}
        prv = record.get("prv_candidates") or []
        fp_all = record.get("fp_hists") or []
        det_rows.append(cand)
        for p in prv:
            (lim_rows if p.get("magpsf") is None else det_rows).append(p)
        if fp_all:
            fp_rows += [p for p in fp_all if str(p.get("procstatus")).strip() == "0"]
        no_history.append(not prv and not fp_all)
        det_ends.append(len(det_rows))
        lim_ends.append(len(lim_rows))
        fp_ends.append(len(fp_rows))
    return det_rows, lim_rows, fp_rows, det_ends, lim_ends, fp_ends, no_history


def _ztf_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    """The body of :func:`ztf_lightcurves_batch` (run under its ``np.errstate``)."""
    n = len(records)
    if n == 0:
        return []
    det_rows, lim_rows, fp_rows, det_ends, lim_ends, fp_ends, no_history = _ztf_rows(records)
    lo, hi = _ZTF_MAG_RANGE

    # --- detections: signed difference flux and reference flux, nJy
    vals = [tuple(map(r.get, _DET_KEYS)) for r in det_rows]
    jd, fid, magpsf, sigmapsf, distnr, magnr, sigmagnr, nbad = _batch_table(
        vals, len(_DET_KEYS), lambda: _segments(det_rows, det_ends, lambda _: _DET_KEYS))
    sign = np.where([r.get("isdiffpos") in _POSITIVE for r in det_rows], 1.0, -1.0)
    diff = sign * 10.0 ** (-0.4 * (magpsf - NJY_ZEROPOINT))
    diff_err = np.abs(diff) * sigmapsf / MAG_PER_RELFLUX
    use = np.isfinite(sigmapsf) & (sigmapsf > 0) & (magpsf > lo) & (magpsf < hi) & ~(nbad > 0)
    prio = np.full(jd.size, _PRIO_HISTORY, dtype=np.int8)
    prio[[0, *det_ends[:-1]]] = _PRIO_ALERT
    is_fp = np.zeros(jd.size, dtype=bool)

    # --- forced photometry: difference flux [DN] -> nJy with the science zero point
    if fp_rows:
        vals = [tuple(map(r.get, _FP_KEYS)) for r in fp_rows]
        fjd, ffid, dn, dn_err, zp, fdistnr, fmagnr, fsigmagnr = _batch_table(
            vals, len(_FP_KEYS), lambda: _segments(fp_rows, fp_ends, lambda _: _FP_KEYS))
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
    alert = _alert_index(det_ends, fp_ends) if fp_rows else _alert_index(det_ends)

    nb = len(_ZTF_NAMES)
    band = _fid_index(fid)
    group = _group(alert, band, n, nb)
    use &= (band >= 0) & np.isfinite(jd) & np.isfinite(diff) & np.isfinite(diff_err)
    has_ref = ((distnr >= 0) & (distnr <= DC_MAX_DISTNR) & (magnr > lo) & (magnr < hi)
               & (sigmagnr > 0) & np.isfinite(sigmagnr))
    ref = 10.0 ** (-0.4 * (magnr - NJY_ZEROPOINT))
    ref_err = ref * sigmagnr / MAG_PER_RELFLUX

    # --- per alert and band: DC when at least half of its usable points sit on a reference source
    n_all = np.bincount(group[use], minlength=n * nb)
    n_ref = np.bincount(group[use & has_ref], minlength=n * nb)
    dc_group = (n_ref > 0) & (n_ref >= _DC_FRACTION * n_all)
    dc = dc_group[group] & use  # group -1 indexes the last entry, harmless: masked by use
    borrow = dc & ~has_ref
    borrowed = bool(borrow.any())
    if borrowed:
        ref, ref_err = _borrow_reference(group, has_ref & use, borrow, ref, ref_err)
    flux = np.where(dc, ref + diff, diff)
    err = np.where(dc, np.hypot(ref_err, diff_err), diff_err)
    # diff bands: a forced-photometry row must be a detection of the difference flux
    weak_fp = is_fp & ~dc & (np.abs(diff) < FP_MIN_SNR * diff_err)
    nonpos = dc & ~(flux > 0)
    keep = use & ~weak_fp & ~nonpos
    lcs = _assemble(_ZTF_NAMES, n, np.where(keep, group, -1), jd - _JD_TO_MJD, flux, err, prio, dc_group)
    uls = _ztf_upper_limits(lim_rows, lim_ends, n)

    present = n_all > 0
    flags = _flag_lists(_ZTF_FLAGS, no_history, (
        _any_group(present & dc_group, n, nb),  # dc_magnitudes
        _any_group(present & ~dc_group, n, nb),  # difference_magnitudes
        _any_row(alert, keep & is_fp, n),  # fp_hists_used
        _any_row(alert, borrow, n) if borrowed else False,  # dc_ref_borrowed
        _any_row(alert, nonpos & use, n),  # dc_nonpositive_dropped
        _dropped_triggers(keep, det_ends)))  # trigger_point_dropped
    return list(zip(lcs, uls, flags, strict=True))


def _dropped_triggers(keep: np.ndarray, det_ends: list[int]) -> np.ndarray | np.bool_:
    """Per alert: whether its own detection (the ``candidate``, each alert's first detection row)
    is unusable (a non-finite, negative or implausible magnitude, no positive error, bad pixels),
    so the light curve lacks the very point that triggered the alert (flag ``trigger_point_dropped``)."""
    dropped = ~keep[[0, *det_ends[:-1]]]
    return dropped[0] if len(det_ends) == 1 else dropped


def _ztf_upper_limits(rows: Sequence[Mapping[str, Any]], ends: Sequence[int],
                      n_alerts: int) -> list[dict[str, UpperLimits]]:
    """Each alert's non-detections per band: time and diffmaglim, finite, sorted, one per epoch."""
    out: list[dict[str, UpperLimits]] = [{} for _ in range(n_alerts)]
    if not rows:
        return out
    vals = [tuple(map(r.get, _LIM_KEYS)) for r in rows]
    jd, fid, lim = _batch_table(vals, len(_LIM_KEYS), lambda: _segments(rows, ends, lambda _: _LIM_KEYS))
    nb = len(_ZTF_NAMES)
    band = _fid_index(fid)
    ok = (band >= 0) & np.isfinite(jd) & np.isfinite(lim) & (lim > 0)
    group, mjd, lim = _group(_alert_index(ends), band, n_alerts, nb)[ok], jd[ok] - _JD_TO_MJD, lim[ok]
    idx = _sorted_unique_epochs(group, mjd, np.zeros(group.size, dtype=np.int8))
    group, mjd, lim = group[idx], mjd[idx], lim[idx]
    for _, a, b, (m, li), r in _runs(group, nb, (mjd, lim), n_alerts > 1):
        out[a][_ZTF_NAMES[b]] = UpperLimits(_ZTF_NAMES[b], m[r], li[r])
    return out
