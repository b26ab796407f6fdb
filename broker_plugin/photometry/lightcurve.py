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

Batches
    An alert carries tens of points, so the cost of building its light curves one alert at a time
    is numpy's per-call overhead (~0.3 us a call, ~100 calls an alert), not arithmetic.
    :func:`ztf_lightcurves_batch` and :func:`rubin_lightcurves_batch` therefore build the light
    curves of a whole batch of alerts with one set of numpy calls over the rows of all of them: each
    row carries its alert's index, bands become groups ``alert * n_bands + band``, one sort orders
    every point by (alert, band, time, priority), and the per-band counts and per-alert flags are
    bincounts over those groups. Their results are **bit-identical** to calling
    :func:`ztf_lightcurves` / :func:`rubin_lightcurves` on each record (same keys in the same order,
    same kinds, same arrays, same flags in the same order; ``tests/test_lightcurve_batch.py``):
    every element goes through the same numpy expressions in the same order, and only the grouping
    is shared. The one-alert functions *are* the batch functions on a one-record batch, so there is
    one implementation of the rules. A record that makes the one-alert function raise may make the
    batch function raise for the whole batch; a caller then redoes the batch alert by alert
    (:meth:`broker_plugin.decode.Decoder.decode_batch`). Anything less (a non-numeric value, a
    missing field, another schema version) changes no other alert's result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import LSST_BANDS, ZTF_FID_BANDS, LightCurve, UpperLimits

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

#: What the light-curve functions give for one alert: light curves and upper limits by band name
#: (bands in survey order), and quality flags.
LightCurveResult = tuple[dict[str, LightCurve], dict[str, UpperLimits], list[str]]


# --------------------------------------------------------------------------------------- helpers
#
# Alerts carry tens of points, so numpy's per-call overhead, not arithmetic, is the cost. Every
# alert of a batch and every band is therefore processed at once: per-point group keys
# (alert * n_bands + band, -1 for a point that is not used), one sort by (group, time, priority),
# one de-duplication pass, and the (alert, band) light curves cut out of the sorted arrays.
#
# Bit-identity with a one-alert call rests on two things: every element goes through the same
# numpy expression (the same ufuncs, operands and evaluation order: numpy's SIMD power/log10 may
# differ from libm by an ulp, so no element is ever computed another way), and the rows of one
# alert keep their relative order in the batch arrays (detections, then forced photometry), so
# stable sorts and medians see the same sequences.


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


def _batch_table(vals: list[tuple[Any, ...]], n_keys: int,
                 per_alert: Callable[[], Iterable[np.ndarray]]) -> np.ndarray:
    """The rows ``vals`` of every alert of a batch as a (n_keys, len(vals)) float64 array.

    One conversion for the whole batch. If it fails (a non-numeric value somewhere), each alert's
    rows are converted on their own by ``per_alert`` (with :func:`_table`, exactly as a one-alert
    call does), so one malformed record cannot change how the other alerts' values are read.
    """
    try:
        arr = np.array(vals, dtype=np.float64)
    except (TypeError, ValueError):
        return np.concatenate([np.empty((n_keys, 0)), *per_alert()], axis=1)
    return arr.reshape(len(vals), n_keys).T


def _segments(rows: Sequence[Mapping[str, Any]], ends: Sequence[int],
              keys: Callable[[int], tuple[str, ...]]) -> Iterator[np.ndarray]:
    """:func:`_table` of each alert's rows (``rows[ends[a-1]:ends[a]]``, read with ``keys(a)``)."""
    start = 0
    for a, end in enumerate(ends):
        yield _table(rows[start:end], keys(a))
        start = end


def _alert_index(*ends: Sequence[int]) -> np.ndarray:
    """The alert of each row of one or more row lists laid end to end.

    ``ends[k][a]`` is the end of alert a's rows in list k (cumulative row counts).
    """
    if len(ends[0]) == 1:
        return np.zeros(sum(e[0] for e in ends), dtype=np.intp)
    parts = [np.repeat(np.arange(len(e)), np.subtract(e, [0, *e[:-1]])) for e in ends]
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _group(alert: np.ndarray, band: np.ndarray, n_alerts: int, n_bands: int) -> np.ndarray:
    """The group key ``alert * n_bands + band`` of each row; -1 where band is -1 (not a known band)."""
    if n_alerts == 1:
        return band
    return np.where(band >= 0, alert * n_bands + band, -1)


def mag_to_njy(mag: np.ndarray | float) -> np.ndarray | float:
    """nJy flux of an AB magnitude (the inverse of the common rule); sentinel mags overflow to inf quietly."""
    with np.errstate(over="ignore"):
        return 10.0 ** (-0.4 * (np.asarray(mag, dtype=np.float64) - NJY_ZEROPOINT))


def _sorted_unique_epochs(group: np.ndarray, mjd: np.ndarray, prio: np.ndarray) -> np.ndarray:
    """Indices ordering points by (group, time) with one point per group and epoch (lowest prio wins).

    Points of one group (alert and band) closer than DUPLICATE_TOL_DAYS form one epoch; within it
    the point with the lowest priority value is kept (the alert's detection, then history, then
    forced photometry), the earlier row among equals. Epochs never span groups, so an alert's
    points come out the same whatever else is in the batch.
    """
    n = mjd.size
    if n < 2:
        return np.arange(n)
    order = np.lexsort((prio, mjd, group))
    b, t = group[order], mjd[order]
    new_epoch = np.empty(n, dtype=bool)
    new_epoch[0] = True
    np.greater(t[1:] - t[:-1], DUPLICATE_TOL_DAYS, out=new_epoch[1:])
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


def _runs(group: np.ndarray, n_bands: int, cols: Sequence[np.ndarray],
          copy: bool) -> Iterator[tuple[int, int, int, Sequence[np.ndarray], slice]]:
    """(group, alert, band, columns, rows) for each run of equal keys in the sorted ``group``.

    The run's values are ``columns[k][rows]`` for each array ``cols[k]`` (all of len(group)).
    With ``copy``, each alert's columns are copied out of the batch arrays once and its bands are
    views of that copy, as a one-alert call's are views of its own arrays: a light curve a caller
    keeps holds its alert's points only, not the whole batch's, and no alert's arrays can be
    changed through another's.
    """
    n = group.size
    if n == 0:
        return
    new_run = np.empty(n, dtype=bool)
    new_run[0] = True
    np.not_equal(group[1:], group[:-1], out=new_run[1:])
    starts = new_run.nonzero()[0]
    first = group[starts]
    s_list = starts.tolist()
    ends = [*s_list[1:], n]
    if not copy:
        for g, s, e in zip(first.tolist(), s_list, ends, strict=True):
            yield g, *divmod(g, n_bands), cols, slice(s, e)
        return
    stacked = np.array(cols)
    alert_ends = group.searchsorted((first // n_bands + 1) * n_bands).tolist()
    cur, base, seg = -1, 0, cols
    for g, s, e, ae in zip(first.tolist(), s_list, ends, alert_ends, strict=True):
        a, b = divmod(g, n_bands)
        if a != cur:  # the first run of an alert starts its segment
            cur, base = a, s
            seg = tuple(stacked[:, s:ae].copy())
        yield g, a, b, seg, slice(s - base, e - base)


def _assemble(names: tuple[str, ...], n_alerts: int, group: np.ndarray, mjd: np.ndarray, flux: np.ndarray,
              err: np.ndarray, prio: np.ndarray, dc_group: np.ndarray) -> list[dict[str, LightCurve]]:
    """Final cleaning shared by both surveys, then one LightCurve per alert and band.

    ``group`` is ``alert * len(names) + band`` (-1 = not a light-curve point); ``dc_group[g]`` says
    whether group g's magnitudes are DC. Returns each alert's light curves, bands in ``names`` order.
    """
    ok = (group >= 0) & np.isfinite(mjd) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    if not ok.all():
        group, mjd, flux, err, prio = group[ok], mjd[ok], flux[ok], err[ok], prio[ok]
    idx = _sorted_unique_epochs(group, mjd, prio)
    group, mjd, flux, err = group[idx], mjd[idx], flux[idx], err[idx]
    pos = flux > 0
    safe = np.where(pos, flux, 1.0)
    mag = np.where(pos, NJY_ZEROPOINT - 2.5 * np.log10(safe), np.nan)
    mag_err = np.where(pos, MAG_PER_RELFLUX * err / safe, np.nan)
    out: list[dict[str, LightCurve]] = [{} for _ in range(n_alerts)]
    if group.size == 0:
        return out
    dc = dc_group.tolist()
    for g, a, b, (m, mg, me, f, fe), r in _runs(group, len(names), (mjd, mag, mag_err, flux, err), n_alerts > 1):
        out[a][names[b]] = LightCurve(names[b], m[r], mg[r], me[r], f[r], fe[r], "dc" if dc[g] else "diff")
    return out


def _any_row(alert: np.ndarray, mask: np.ndarray, n_alerts: int) -> np.ndarray | np.bool_:
    """Per alert: whether any of its rows is set in ``mask`` (a scalar for a one-alert batch)."""
    if n_alerts == 1:
        return mask.any()
    return np.bincount(alert[mask], minlength=n_alerts) > 0


def _any_group(mask: np.ndarray, n_alerts: int, n_bands: int) -> np.ndarray | np.bool_:
    """Per alert: whether any of its groups (bands) is set in ``mask`` (a scalar for a one-alert batch)."""
    if n_alerts == 1:
        return mask.any()
    return mask.reshape(n_alerts, n_bands).any(axis=1)


def _flag_lists(table: tuple[tuple[str, ...], ...], first: list[bool],
                bits: Sequence[np.ndarray | np.bool_ | bool]) -> list[list[str]]:
    """Each alert's flag list: flag 0 of ``table`` where ``first[a]``, flag i where ``bits[i-1][a]``.

    ``bits`` are per-alert arrays (scalars for a one-alert batch, where numpy's per-call cost
    is the whole cost); ``table`` is :func:`_flag_sets` of the flag names.
    """
    if len(first) == 1:
        return [list(table[first[0] + sum(2 << i for i, on in enumerate(bits) if on)])]
    code = np.array(first, dtype=np.intp)
    for i, on in enumerate(bits):
        code |= np.left_shift(on, i + 1, dtype=np.intp)
    return [list(table[c]) for c in code.tolist()]


def _flag_sets(names: tuple[str, ...]) -> tuple[tuple[str, ...], ...]:
    """The flag list of every bit pattern (bit i = ``names[i]``), in the order of ``names``."""
    return tuple(tuple(f for i, f in enumerate(names) if code >> i & 1) for code in range(1 << len(names)))


def _borrow_reference(group: np.ndarray, has_ref: np.ndarray, borrow: np.ndarray, ref: np.ndarray,
                      ref_err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Give points in ``borrow`` the median reference of their group's points in ``has_ref`` (rare path).

    Only the groups (alert, band) with such points are visited. Each group's rows are taken in row
    order, which within one alert is the order a one-alert call sees, so the medians are the same.
    """
    ref, ref_err = ref.copy(), ref_err.copy()
    wanted = np.zeros(group.max() + 2, dtype=bool)  # the last entry is for group -1: never wanted
    wanted[group[borrow]] = True
    rows = wanted[group].nonzero()[0]
    rows = rows[np.argsort(group[rows], kind="stable")]
    g = group[rows]
    cuts = (g[1:] != g[:-1]).nonzero()[0] + 1
    for part in np.split(rows, cuts):
        own, need = part[has_ref[part]], part[borrow[part]]
        ref[need] = float(np.median(ref[own]))
        ref_err[need] = float(np.median(ref_err[own]))
    return ref, ref_err


# ------------------------------------------------------------------------------------------- ZTF

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
                         "dc_ref_borrowed", "dc_nonpositive_dropped"))


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


def _ztf_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    n = len(records)
    if n == 0:
        return []
    # --- rows of every alert, alert after alert: detections (the alert's own first), non-detections
    # and usable forced photometry; *_ends[a] is the end of alert a's rows in each list
    det_rows: list[Mapping[str, Any]] = []
    lim_rows: list[Mapping[str, Any]] = []
    fp_rows: list[Mapping[str, Any]] = []
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
        _any_row(alert, nonpos & use, n)))  # dc_nonpositive_dropped
    return list(zip(lcs, uls, flags, strict=True))


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


# ----------------------------------------------------------------------------------------- Rubin

_LSST_INDEX = {b: i for i, b in enumerate(LSST_BANDS)}
#: Every field this module reads from a Rubin diaSource-like row, in all schema spellings (see
#: ZTF_DETECTION_FIELDS for why they are listed).
RUBIN_SOURCE_FIELDS: tuple[str, ...] = ("midpointMjdTai", "midPointTai", "psfFlux", "psFlux", "psfFluxErr",
                                        "psFluxErr", "scienceFlux", "scienceFluxErr", "band", "filterName")
_RUBIN_FLAGS = _flag_sets(("no_history", "dc_magnitudes", "difference_magnitudes", "dc_points_missing"))
_RUBIN_KEYS = ("midpointMjdTai", "psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr")
_RUBIN_PRIOS = np.array([_PRIO_ALERT, _PRIO_HISTORY, _PRIO_FORCED], dtype=np.int8)
_TRIPLES = np.tile(np.arange(3), 4096)  # 0, 1, 2, 0, 1, 2...: indexes _RUBIN_PRIOS per alert


def _first_key(row: Mapping[str, Any], *names: str) -> str:
    """The first of several version-dependent field names present in a Rubin record."""
    for n in names:
        if n in row:
            return n
    return names[0]


def _rubin_keys(r0: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The numeric fields (time, psf flux/err, science flux/err) and the band field of an alert's rows.

    Spelt as in the alert's first row: the spelling is the same within one schema version, so it is
    decided once per alert (and a batch may mix schema versions).
    """
    keys = (_first_key(r0, "midpointMjdTai", "midPointTai"), _first_key(r0, "psfFlux", "psFlux"),
            _first_key(r0, "psfFluxErr", "psFluxErr"), "scienceFlux", "scienceFluxErr")
    return keys, _first_key(r0, "band", "filterName")


def rubin_lightcurves(record: Mapping[str, Any]) -> LightCurveResult:
    """Light curves and quality flags of a Rubin alert record (any lsst.alert.packet schema 3.0-11.x).

    Rubin alerts carry no upper limits in the ZTF sense (forced photometry replaces them), so the
    second element is always empty. The batch function on a one-record batch.
    """
    return rubin_lightcurves_batch((record,))[0]


def rubin_lightcurves_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    """:func:`rubin_lightcurves` of every record, computed for the whole batch at once.

    Bit-identical to ``[rubin_lightcurves(r) for r in records]``; records of different schema
    versions (field spellings) may be mixed. If a record would make :func:`rubin_lightcurves`
    raise, this may raise for the whole batch: redo it alert by alert to find the record.
    """
    with np.errstate(all="ignore"):
        return _rubin_batch(records)


def _rubin_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    n = len(records)
    if n == 0:
        return []
    # --- rows of every alert, alert after alert: diaSource, prvDiaSources, prvDiaForcedSources
    rows: list[Mapping[str, Any]] = []
    vals: list[tuple[Any, ...]] = []
    bands: list[int] = []
    ends: list[int] = []
    alert_keys: list[tuple[str, ...]] = []
    counts: list[int] = []  # rows per (alert, priority)
    no_history: list[bool] = []
    for record in records:
        src = record.get("diaSource")
        prv = record.get("prvDiaSources") or []
        forced = record.get("prvDiaForcedSources") or []
        no_history.append(not prv and not forced)
        head = [src] if isinstance(src, Mapping) else []
        a_rows = [*head, *prv, *forced]
        keys = _RUBIN_KEYS  # (no rows: only the shape of an empty table matters)
        if a_rows:
            keys, k_b = _rubin_keys(a_rows[0])
            vals += [tuple(map(r.get, keys)) for r in a_rows]
            bands += [_LSST_INDEX.get(b, -1) if isinstance(b := r.get(k_b), str) else -1 for r in a_rows]
            rows += a_rows
        alert_keys.append(keys)
        counts += (len(head), len(prv), len(forced))
        ends.append(len(rows))

    t, f, fe, sf, sfe = _batch_table(vals, 5, lambda: _segments(rows, ends, alert_keys.__getitem__))
    band = np.array(bands, dtype=np.intp)
    prio = np.repeat(_RUBIN_PRIOS[_TRIPLES[:3 * n]] if n <= _TRIPLES.size // 3 else np.tile(_RUBIN_PRIOS, n), counts)
    alert = _alert_index(ends)
    nb = len(LSST_BANDS)
    group = _group(alert, band, n, nb)
    use = (band >= 0) & np.isfinite(t)
    has_sci = np.isfinite(sf) & np.isfinite(sfe) & (sfe > 0)
    n_all = np.bincount(group[use], minlength=n * nb)
    n_sci = np.bincount(group[use & has_sci], minlength=n * nb)
    dc_group = (n_sci > 0) & (n_sci >= _DC_FRACTION * n_all)
    dc = dc_group[group] & use
    missing = dc & ~has_sci
    lcs = _assemble(LSST_BANDS, n, np.where(use & ~missing, group, -1), t, np.where(dc, sf, f),
                    np.where(dc, sfe, fe), prio, dc_group)

    present = n_all > 0
    flags = _flag_lists(_RUBIN_FLAGS, no_history, (
        _any_group(present & dc_group, n, nb),  # dc_magnitudes
        _any_group(present & ~dc_group, n, nb),  # difference_magnitudes
        _any_row(alert, missing, n)))  # dc_points_missing
    return [(lc, {}, fl) for lc, fl in zip(lcs, flags, strict=True)]
