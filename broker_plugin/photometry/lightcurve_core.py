"""Shared building blocks of the ZTF and Rubin light-curve builders (:mod:`broker_plugin.photometry.lightcurve`).

Why a module of its own: the two survey builders (:mod:`~broker_plugin.photometry.lightcurve_ztf`,
:mod:`~broker_plugin.photometry.lightcurve_rubin`) differ in how they read rows, but must group,
sort, de-duplicate and assemble points identically, with the same constants; keeping those here
gives one implementation and lets each builder module stay about one survey's rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import LightCurve, UpperLimits

#: AB magnitude of 1 nJy: mag = 31.4 - 2.5 log10(flux / nJy).
NJY_ZEROPOINT = 31.4
#: 2.5 / ln(10): converts a relative flux error to a magnitude error.
MAG_PER_RELFLUX = 2.5 / math.log(10.0)
#: Two points of one band closer than this (days) are the same epoch; about 0.09 s.
DUPLICATE_TOL_DAYS = 1e-6
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


def flux_to_mag(flux: np.ndarray, err: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Magnitude and its error of nJy fluxes by the common rule: NaN where ``flux <= 0``.

    The one place the rule is written: the light-curve builders and the history merge
    (:mod:`broker_plugin.history.merge`) both call it, so a point has the same magnitude whichever
    path built its light curve.
    """
    pos = flux > 0
    safe = np.where(pos, flux, 1.0)
    mag = np.where(pos, NJY_ZEROPOINT - 2.5 * np.log10(safe), np.nan)
    mag_err = np.where(pos, MAG_PER_RELFLUX * err / safe, np.nan)
    return mag, mag_err


def sorted_unique_epochs(group: np.ndarray, mjd: np.ndarray, prio: np.ndarray,
                         err: np.ndarray | None = None) -> np.ndarray:
    """Public name of the epoch de-duplication rule (see :func:`_sorted_unique_epochs`): the history
    merge applies it to stored and packet points together, as the builders do within a packet."""
    return _sorted_unique_epochs(group, mjd, prio, err)


def _sorted_unique_epochs(group: np.ndarray, mjd: np.ndarray, prio: np.ndarray,
                          err: np.ndarray | None = None) -> np.ndarray:
    """Indices ordering points by (group, time) with one point per group and epoch (lowest prio wins).

    Points of one group (alert and band) closer than DUPLICATE_TOL_DAYS form one epoch; within it
    the point with the lowest priority value is kept (the alert's detection, then history, then
    forced photometry), among equals the one with the smaller ``err`` (the same exposure measured
    twice: keep the better measurement), then the earlier row. Epochs never span groups, so an
    alert's points come out the same whatever else is in the batch.
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
    order2 = np.lexsort((prio[order], epoch)) if err is None else np.lexsort((err[order], prio[order], epoch))
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
    idx = _sorted_unique_epochs(group, mjd, prio, err)
    group, mjd, flux, err = group[idx], mjd[idx], flux[idx], err[idx]
    mag, mag_err = flux_to_mag(flux, err)
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
