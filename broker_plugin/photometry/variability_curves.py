"""One-light-curve helpers around :mod:`broker_plugin.photometry.variability`, and a DRW simulator.

Why a module of its own: the runtime only calls the batch function
:func:`~broker_plugin.photometry.variability.variability_features_many`; these wrappers (one fit,
one structure function, for tests, diagnostics and plots) and :func:`simulate_drw` (tests and
training's synthetic light curves) run the same arithmetic but are not on the hot path, so they
are kept apart from the estimator.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from broker_plugin.photometry.variability import _binned_moments, variability_features_many


class DRWFit(NamedTuple):
    """Result of :func:`fit_drw` for one light curve (NaN where undefined; see ``status``)."""

    tau: float
    sf_inf: float
    status: int


class StructureFunction(NamedTuple):
    """Binned, noise-subtracted structure function of one light curve (diagnostics, plots)."""

    lag: np.ndarray  # geometric-mean lag of the pairs in the bin, days
    sf: np.ndarray  # sqrt(<dm^2> - <e_i^2 + e_j^2>), NaN where not positive
    n_pairs: np.ndarray  # pairs in the bin


def _clean_single(t: np.ndarray, m: np.ndarray, e: np.ndarray | None) -> tuple[np.ndarray, ...]:
    """Minimal cleaning for the single-curve helpers: finite, sorted, unique times, positive errors."""
    t = np.asarray(t, dtype=np.float64).ravel()
    m = np.asarray(m, dtype=np.float64).ravel()
    e = np.zeros_like(m) if e is None else np.asarray(e, dtype=np.float64).ravel()
    e = np.where(np.isfinite(e) & (e > 0), e, 0.0)
    ok = np.isfinite(t) & np.isfinite(m)
    t, m, e = t[ok], m[ok], e[ok]
    t, first = np.unique(t, return_index=True)
    return t, m[first], e[first]


def fit_drw(t: np.ndarray, m: np.ndarray, e: np.ndarray | None = None) -> DRWFit:
    """DRW ``tau`` (days) and ``SF_inf`` (mag) of one light curve; NaN with a status bit if undefined.

    Convenience wrapper around :func:`variability_features_many` (the same numbers as the features).
    """
    with np.errstate(all="ignore"):
        vals, st = variability_features_many([_clean_single(t, m, e)])
    return DRWFit(float(vals[0, 0]), float(vals[0, 1]), int(st[0]))


def sf_power_law(t: np.ndarray, m: np.ndarray, e: np.ndarray | None = None) -> tuple[float, float]:
    """``(A, gamma)`` of ``SF(dt) = A (dt / 1 yr)^gamma`` for one light curve (NaN if undefined)."""
    with np.errstate(all="ignore"):
        vals, _ = variability_features_many([_clean_single(t, m, e)])
    return float(vals[0, 2]), float(vals[0, 3])


def structure_function(t: np.ndarray, m: np.ndarray, e: np.ndarray | None = None) -> StructureFunction:
    """The binned, noise-subtracted structure function the fits use (only populated bins)."""
    with np.errstate(all="ignore"):
        curve = _clean_single(t, m, e)
        if len(curve[0]) < 2:
            z = np.empty(0)
            return StructureFunction(z, z, np.empty(0, dtype=np.int64))
        cnt, _, s_dm2, s_noise, s_lg = (a[0] for a in _binned_moments([curve]))
        keep = cnt > 0
        c = cnt[keep]
        y = (s_dm2[keep] - s_noise[keep]) / c
        sf = np.where(y > 0, np.sqrt(np.where(y > 0, y, 0.0)), np.nan)
        return StructureFunction(10.0 ** (s_lg[keep] / c), sf, c.astype(np.int64))


def simulate_drw(
    t: np.ndarray,
    tau: float,
    sf_inf: float,
    mean_mag: float = 19.0,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Noise-free DRW magnitudes at times ``t`` (sorted, days), by the exact Ornstein-Uhlenbeck update.

    ``x_i = mu + a (x_{i-1} - mu) + N(0, (SF_inf^2 / 2)(1 - a^2))`` with ``a = exp(-dt / tau)``; the
    first point is drawn from the stationary distribution ``N(mu, SF_inf^2 / 2)``.  Used by the tests
    and by training's synthetic light curves, so both rest on the same definition of the process.
    """
    rng = np.random.default_rng() if rng is None else rng
    t = np.asarray(t, dtype=np.float64)
    n = t.shape[0]
    x = np.empty(n)
    if n == 0:
        return x
    var = 0.5 * sf_inf * sf_inf
    a = np.exp(-np.diff(t) / tau)
    kicks = rng.standard_normal(n) * np.sqrt(var * np.concatenate([[1.0], 1.0 - a * a]))
    x[0] = kicks[0]
    for k in range(1, n):
        x[k] = a[k - 1] * x[k - 1] + kicks[k]
    return mean_mag + x
