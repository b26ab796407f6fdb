"""Per-band cleaning of a light curve before feature extraction: the "usable points" rule.

Why a module of its own: what counts as a usable point (finite, not absurd, sorted, one per epoch,
errors imputed or clipped) and the flags saying what was done are one concern, independent of the
statistics computed afterwards in :mod:`broker_plugin.photometry.features` (which re-exports the
constants and whose docstring states the rules). It runs per band per alert, called directly from
the feature loop, so no extra call layer is added.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from broker_plugin.alert import FEATURE_BANDS, LightCurve

#: Error clipping, mag: keeps weights 1/err^2 finite and stops absurd errors from dominating.
ERR_FLOOR: float = 1e-3
ERR_MAX: float = 10.0
#: Points with |mag| or |mjd| at or above these are skipped as corrupt.
MAG_ABS_MAX: float = 100.0
MJD_ABS_MAX: float = 1e7

# Flag strings built once (the hot path only picks them).
_FLAG = {
    (band, key): f"{band}_{key}"
    for band in FEATURE_BANDS
    for key in (
        "missing",
        "too_few_points",
        "too_short_for_drw",
        "drw_fit_failed",
        "drw_no_variability",
        "drw_tau_at_bound",
        "sf_fit_failed",
        "points_dropped",
        "unsorted",
        "duplicate_times",
        "errors_imputed",
        "no_errors",
        "bad_input",
        "mags_diff",
        "mags_mixed",
        "nonfinite_features",
    )
}


class _Band(NamedTuple):
    t: np.ndarray
    m: np.ndarray
    e: np.ndarray
    mag_min: float
    errors_ok: bool
    kind: str


def _as_array(x: Any) -> np.ndarray:
    return np.ascontiguousarray(x, dtype=np.float64).reshape(-1)


def _clean_band(curve: LightCurve | None, band: str, flags: list[str]) -> _Band | None:
    """Usable points of one band (see the module docstring), or None when there are none.

    A fast path of a few whole-array reductions handles clean input (the normal case) without
    building masks; anything odd falls through to the careful path.
    """
    if curve is None:
        flags.append(_FLAG[band, "missing"])
        return None
    try:
        t = _as_array(curve.mjd)
        m = _as_array(curve.mag)
        e = _as_array(curve.mag_err)
        kind = str(getattr(curve, "kind", "diff"))
    except (TypeError, ValueError, AttributeError):
        flags.append(_FLAG[band, "bad_input"])
        flags.append(_FLAG[band, "missing"])
        return None
    n = t.shape[0]
    if m.shape[0] != n or e.shape[0] != n:
        flags.append(_FLAG[band, "bad_input"])
        n = min(n, m.shape[0], e.shape[0])
        t, m, e = t[:n], m[:n], e[:n]
    if kind != "dc":
        key = "mags_mixed" if kind == "mixed" else "mags_diff"
        flags.append(_FLAG[band, key])
    if n == 0:
        flags.append(_FLAG[band, "missing"])
        return None

    mag_min = m.min()
    mag_max = m.max()
    ok = mag_min > -MAG_ABS_MAX and mag_max < MAG_ABS_MAX and -MJD_ABS_MAX < t[0] < MJD_ABS_MAX
    if ok and n > 1:
        ok = bool((t[1:] > t[:-1]).all()) and -MJD_ABS_MAX < t[-1] < MJD_ABS_MAX
    if not ok:  # careful path: drop bad points, sort, de-duplicate
        good = np.isfinite(t) & np.isfinite(m) & (np.abs(t) < MJD_ABS_MAX) & (np.abs(m) < MAG_ABS_MAX)
        if not good.all():
            flags.append(_FLAG[band, "points_dropped"])
            t, m, e = t[good], m[good], e[good]
        if t.shape[0] > 1 and not (t[1:] > t[:-1]).all():
            if not (t[1:] >= t[:-1]).all():
                flags.append(_FLAG[band, "unsorted"])
                order = np.argsort(t, kind="stable")
                t, m, e = t[order], m[order], e[order]
            first = np.empty(t.shape[0], dtype=bool)
            first[0] = True
            np.not_equal(t[1:], t[:-1], out=first[1:])
            if not first.all():
                flags.append(_FLAG[band, "duplicate_times"])
                t, m, e = t[first], m[first], e[first]
        n = t.shape[0]
        if n == 0:
            flags.append(_FLAG[band, "missing"])
            return None
        mag_min = m.min()

    errors_ok = True
    e_min = e.min()
    e_max = e.max()
    if not (e_min > 0.0 and e_max < np.inf):  # NaN fails both comparisons
        valid = np.isfinite(e) & (e > 0.0)
        if valid.any():
            flags.append(_FLAG[band, "errors_imputed"])
            e = np.where(valid, e, np.median(e[valid]))
        else:
            flags.append(_FLAG[band, "no_errors"])
            errors_ok = False
            e = np.full(n, ERR_FLOOR)
        e_min = e.min()
        e_max = e.max()
    if e_min < ERR_FLOOR or e_max > ERR_MAX:
        e = np.clip(e, ERR_FLOOR, ERR_MAX)
    return _Band(t, m, e, float(mag_min), errors_ok, kind)
