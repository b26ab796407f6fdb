"""Damped-random-walk (DRW) and structure-function (SF) features: what ``light-curve`` lacks.

Quasar optical variability is well described by a damped random walk (Ornstein-Uhlenbeck process;
Kelly+2009, MacLeod+2010) whose covariance is ``(SF_inf^2 / 2) exp(-|dt| / tau)``.  Its structure
function, the rms magnitude difference of pairs of points a lag ``dt`` apart, is therefore::

    SF(dt)^2 = <(m_j - m_i)^2> - <e_i^2 + e_j^2> = SF_inf^2 (1 - exp(-dt / tau))

where the photometric noise of the pair (``e_i^2 + e_j^2``) is subtracted because it adds to the
observed squared difference.  Brokers also quote an empirical power law ``SF(dt) = A (dt / 1 yr)^gamma``
(Schmidt+2010; ALeRCE's SF_ML_amplitude / SF_ML_gamma).

Why this estimator (and not a Gaussian-process likelihood): the whole feature step must cost well
under 200 microseconds per alert.  A likelihood fit needs a sequential Kalman recursion or an O(n^3)
solve per trial ``tau``; the structure function needs only one vectorised pass over the point pairs,
after which every trial ``tau`` is evaluated on ~24 lag bins.  The recipe, all in numpy and
vectorised across many light curves at once (so that the batch API used by training and the
per-alert API used by the service run the very same arithmetic; the one-curve helpers
:func:`~broker_plugin.photometry.variability_curves.fit_drw` and friends, and the DRW simulator,
are in :mod:`broker_plugin.photometry.variability_curves`):

1. All pairs ``i < j`` of a light curve (a fixed subset of :data:`MAX_PAIRS` pairs, all close
   neighbours plus seeded random distant pairs, when a light curve has more than
   :data:`MAX_POINTS_ALL_PAIRS` points, which bounds the cost).
2. Pairs are binned in log lag (:data:`LAG_BIN_DEX` wide bins from :data:`LOG10_LAG_MIN`); per bin the
   mean squared difference ``D``, the mean pair noise ``N`` and the geometric-mean lag ``L``.
3. DRW: for every ``tau`` of a fixed log grid over ``[TAU_MIN_DAYS, TAU_MAX_DAYS]`` (33 values,
   0.125 dex apart) the best ``SF_inf^2`` is closed-form weighted least squares of ``D - N`` on
   ``1 - exp(-L_c / tau)`` (``L_c`` the bin centre, so that this basis is precomputed once).  The
   weights are ``n_eff / Var`` with ``Var ~ model^2`` (squared differences of Gaussian variables have
   a relative variance of ~2) and ``n_eff = min(pairs in bin, points)``, because pairs that share
   points are not independent (for a pair subset, the bin's full pair count is estimated from the
   subset, so that the weighting does not change at the threshold).  Pass 1 uses the observed ``D``
   as the model, pass 2 the pass-1 fit.  The optimum over the grid is refined by a parabola in
   ``log tau``, ``SF_inf^2`` interpolated linearly between grid points; an optimum at either end of
   the grid is reported as that bound and flagged.
4. SF power law: weighted least squares of ``log SF`` on ``log L`` over the bins whose
   noise-subtracted ``SF^2`` is positive, weighted by ``n_eff (SF^2 / D)^2`` (the inverse variance of
   ``ln SF``), which automatically discounts the bins dominated by noise; ``A`` is the fit's value at
   :data:`SF_REF_LAG_DAYS` (extrapolated when the light curve is shorter).

Accuracy on simulated DRWs (500 points over 2000 d, 0.02 mag errors; see tests/test_variability.py):
``tau`` = 30-100 d recovered with ~0.1-0.2 dex scatter and SF_inf within ~10-25%; for ``tau`` = 300 d
(baseline ~7 tau) the median is ~0.15 dex low and one realisation in ~8 lands far off.

Known limits (documented so that nobody over-reads the numbers): a DRW ``tau`` is only measurable
when the baseline is several times ``tau`` (Kozlowski 2017); for short alert histories the fit
returns ``tau`` of the order of the baseline or at a bound (flagged).  All times are observed-frame
days; magnitudes and SF are in mag.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import lru_cache
from typing import NamedTuple

import numpy as np

#: Range of the DRW time scale, days (observed frame): the fit's grid, so fitted values lie within it.
TAU_MIN_DAYS: float = 1.0
TAU_MAX_DAYS: float = 1.0e4
#: Trial time scales: log-spaced, 0.125 dex apart; the minimum is refined between grid points.
TAU_GRID_LOG10: np.ndarray = np.linspace(np.log10(TAU_MIN_DAYS), np.log10(TAU_MAX_DAYS), 33)
_TAU_GRID: np.ndarray = 10.0**TAU_GRID_LOG10
_TAU_STEP_LOG10: float = float(TAU_GRID_LOG10[1] - TAU_GRID_LOG10[0])

#: Lag binning of pairs: bins LAG_BIN_DEX wide starting at 10**LOG10_LAG_MIN days.  Shorter lags fall
#: in the first bin, longer ones in the last (24 bins of 0.25 dex: 0.01 d to 10,000 d).
LOG10_LAG_MIN: float = -2.0
LAG_BIN_DEX: float = 0.25
N_LAG_BINS: int = 24

#: Reference lag of the SF amplitude (``sf_amp`` is SF at 1 yr, Schmidt+2010 convention), days.
SF_REF_LAG_DAYS: float = 365.25

#: Minimum usable points and time span for the DRW and SF features; fewer give NaN (status TOO_SHORT).
MIN_POINTS: int = 8
MIN_SPAN_DAYS: float = 10.0
#: Minimum populated lag bins for the DRW fit and bins with SF above noise for the power law.
MIN_BINS: int = 3

#: Above this many points a fixed subset of MAX_PAIRS pairs is used (cost bound; see _pair_index).
MAX_POINTS_ALL_PAIRS: int = 90
MAX_PAIRS: int = 4_000
#: Pairs processed in one vectorised chunk: keeps the per-pair arrays (~256 KB) in the CPU cache.
_CHUNK_PAIRS: int = 32_768

# Status bits returned per light curve (features.py turns them into flags).
STATUS_OK: int = 0
STATUS_TOO_SHORT: int = 1  # fewer than MIN_POINTS points or span < MIN_SPAN_DAYS: all four NaN
STATUS_DRW_FAILED: int = 2  # fewer than MIN_BINS populated lag bins: tau and SF_inf NaN
STATUS_NO_VARIABILITY: int = 4  # no variance above the noise: SF_inf = 0, tau NaN
STATUS_TAU_AT_BOUND: int = 8  # best tau at TAU_MIN_DAYS or TAU_MAX_DAYS: unconstrained
STATUS_SF_FAILED: int = 16  # fewer than MIN_BINS bins with SF above noise: sf_amp, sf_slope NaN

# Precomputed DRW basis 1 - exp(-L / tau) at the bin centres (bins x taus), and helpers.
_LAG_CENTRES: np.ndarray = 10.0 ** (LOG10_LAG_MIN + (np.arange(N_LAG_BINS) + 0.5) * LAG_BIN_DEX)
_BASIS: np.ndarray = -np.expm1(-_LAG_CENTRES[:, None] / _TAU_GRID[None, :])
_BASIS_T: np.ndarray = np.ascontiguousarray(_BASIS.T)
#: [basis | basis^2], (bins, 2 taus): one matmul gives both weighted sums of the closed-form fit.
_BASIS_BOTH: np.ndarray = np.ascontiguousarray(np.concatenate((_BASIS, _BASIS * _BASIS), axis=1))
_N_TAU: int = _TAU_GRID.shape[0]
_TINY: float = 1e-30
_TAU_LOG10_LIST: list[float] = TAU_GRID_LOG10.tolist()
_LOG10_REF: float = float(np.log10(SF_REF_LAG_DAYS))

#: Column order of the arrays returned by :func:`variability_features_many`.
VARIABILITY_COLUMNS: tuple[str, ...] = ("drw_tau", "drw_sf_inf", "sf_amp", "sf_slope")


class _Pairs(NamedTuple):
    i: np.ndarray  # first point of each pair
    j: np.ndarray  # second point, j > i
    weight: np.ndarray | None  # per-pair weight (inverse sampling fraction); None: all pairs, weight 1


@lru_cache(maxsize=1024)
def _pair_index(n: int) -> _Pairs:
    """The pairs used for an n-point light curve.

    All pairs up to MAX_POINTS_ALL_PAIRS points.  Above, about MAX_PAIRS pairs, stratified so that short
    lags keep their pairs (uniformly drawn pairs would be almost all long lags, starving the short-lag
    bins that fix the noise level, tau and the SF slope): every pair of neighbours up to k0 apart,
    about half the budget, plus at least half the budget of pairs further apart drawn with a
    generator seeded by n.  So the subset, and every feature, is a deterministic function of the input.

    The drawn pairs carry the weight (all pairs further apart than k0 / pairs drawn), which turns the
    subset's counts back into estimates of the full pair counts, so that the fits' weights, and hence
    the features' meaning, do not change at the threshold.  Cached: alert lengths recur.
    """
    if n <= MAX_POINTS_ALL_PAIRS:
        i, j = np.triu_indices(n, 1)
        weight = None
    else:
        k0 = max(1, (MAX_PAIRS // 2) // n)
        near_i = np.concatenate([np.arange(n - k) for k in range(1, k0 + 1)])
        near_j = near_i + np.repeat(np.arange(1, k0 + 1), [n - k for k in range(1, k0 + 1)])
        n_near = near_i.shape[0]
        need = max(MAX_PAIRS - n_near, MAX_PAIRS // 2)
        rng = np.random.default_rng(n)
        far_i = np.empty(0, dtype=np.int64)
        far_j = np.empty(0, dtype=np.int64)
        while far_i.shape[0] < need:
            a = rng.integers(0, n, 2 * need)
            b = rng.integers(0, n, 2 * need)
            keep = np.abs(a - b) > k0
            far_i = np.concatenate((far_i, np.minimum(a, b)[keep]))
            far_j = np.concatenate((far_j, np.maximum(a, b)[keep]))
        i = np.concatenate((near_i, far_i[:need]))
        j = np.concatenate((near_j, far_j[:need]))
        weight = np.ones(i.shape[0])
        weight[n_near:] = (n * (n - 1) // 2 - n_near) / need
        weight.flags.writeable = False
    i = np.ascontiguousarray(i, dtype=np.intp)
    j = np.ascontiguousarray(j, dtype=np.intp)
    i.flags.writeable = False
    j.flags.writeable = False
    return _Pairs(i, j, weight)


def _n_pairs(n: int) -> int:
    return n * (n - 1) // 2 if n <= MAX_POINTS_ALL_PAIRS else _pair_index(n).i.shape[0]


def _binned_moments(
    curves: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per light curve and lag bin: pair count, estimated full pair count, sums of dm^2, pair noise
    and log10 lag.

    Returns five (len(curves), N_LAG_BINS) arrays.  np.bincount adds each bin's pairs in input order,
    so a curve's sums do not depend on the other curves.
    """
    g = len(curves)
    i_parts = []
    j_parts = []
    counts = []
    weights = []
    off = 0
    for t, _m, _e in curves:
        i, j, weight = _pair_index(t.shape[0])
        weights.append(weight)
        if off:
            i = i + off
            j = j + off
        i_parts.append(i)
        j_parts.append(j)
        counts.append(i.shape[0])
        off += t.shape[0]
    if g == 1:
        t, m, e = curves[0]
        i, j = i_parts[0], j_parts[0]
        group: np.ndarray | int = 0
    else:
        t = np.concatenate([c[0] for c in curves])
        m = np.concatenate([c[1] for c in curves])
        e = np.concatenate([c[2] for c in curves])
        i = np.concatenate(i_parts)
        j = np.concatenate(j_parts)
        group = np.repeat(np.arange(0, g * N_LAG_BINS, N_LAG_BINS, dtype=np.intp), counts)
    lg = np.log10(t[j] - t[i])  # times strictly increase: lags > 0
    dm = m[j] - m[i]
    e2 = e * e
    noise = e2[i] + e2[j]
    x = (lg - LOG10_LAG_MIN) * (1.0 / LAG_BIN_DEX)
    np.clip(x, 0.0, N_LAG_BINS - 1.0, out=x)
    key = x.astype(np.intp)
    key += group
    size = g * N_LAG_BINS
    shape = (g, N_LAG_BINS)
    cnt = np.bincount(key, minlength=size).reshape(shape)
    if any(w is not None for w in weights):  # some curve uses a pair subset: estimate full counts
        full = np.concatenate([np.ones(nc) if w is None else w for w, nc in zip(weights, counts, strict=True)])
        cnt_full = np.bincount(key, weights=full, minlength=size).reshape(shape)
    else:
        cnt_full = cnt
    return (
        cnt,
        cnt_full,
        np.bincount(key, weights=dm * dm, minlength=size).reshape(shape),
        np.bincount(key, weights=noise, minlength=size).reshape(shape),
        np.bincount(key, weights=lg, minlength=size).reshape(shape),
    )


def _drw_grid(y1: np.ndarray, d: np.ndarray, noise: np.ndarray,
              neff: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The DRW grid search of :func:`_fit_binned`, for all curves x bins x taus at once.

    ``y1`` stacks the noise-subtracted SF^2 (row 0) on ones (row 1). Closed-form SF_inf^2 per trial
    tau, pass 1 weighted by the data, pass 2 by the pass-1 fit; ``q = s_gy^2 / s_gg`` is what the
    optimum removes from the weighted residual sum, so the best tau maximises it. Returns ``q``,
    the SF_inf^2 per tau and the index of the best tau per curve. Split out so the vectorised part
    reads apart from the per-curve tail; it is called once per chunk of curves, not per curve.
    """
    cols = np.arange(d.shape[0])
    w = neff / np.maximum(d * d, _TINY)
    for first_pass in (True, False):
        s = np.matmul(w[:, None, :] * y1, _BASIS_BOTH)  # (G, 2, 2K)
        s_gy = s[:, 0, :_N_TAU]  # sum of w y g per tau
        s2 = np.maximum(s_gy / s[:, 1, _N_TAU:], 0.0)  # ... / sum of w g^2
        q = s2 * s_gy
        best = np.argmax(q, 1)
        if first_pass:
            model = s2[cols, best][:, None] * _BASIS_T[best] + noise
            w = neff / np.maximum(model * model, _TINY)
    return q, s2, best


def _power_law_sums(y: np.ndarray, d: np.ndarray, neff: np.ndarray, cnt: np.ndarray, s_lg: np.ndarray,
                    inv: np.ndarray) -> list[list[float]]:
    """Per curve, the seven sums of the SF power-law fit (log10 SF^2 on log10 lag, weights 1 / var(ln SF)).

    ``[s0, sx, sy, sxx, sxy, n_bins, n_pos]`` as Python floats, each summed over bins with
    ``np.add.accumulate`` (a fixed, sequential order, see :func:`_fit_binned`). Called once per
    chunk of curves.
    """
    g = y.shape[0]
    pos = y > 0
    r = y / np.maximum(d, _TINY)
    sums = np.empty((7, g, N_LAG_BINS))
    ws = np.multiply(neff * r * r, pos, out=sums[0])
    lx = np.multiply(s_lg, inv, out=sums[6])  # mean log10 lag (sums[6] reused below)
    ly = np.log10(y, out=np.zeros_like(y), where=pos)
    wx = np.multiply(ws, lx, out=sums[1])
    np.multiply(ws, ly, out=sums[2])
    np.multiply(wx, lx, out=sums[3])
    np.multiply(wx, ly, out=sums[4])
    sums[5] = cnt > 0
    sums[6] = pos
    return np.add.accumulate(sums, 2)[:, :, -1].T.tolist()


def _fit_binned(
    cnt: np.ndarray,
    cnt_full: np.ndarray,
    s_dm2: np.ndarray,
    s_noise: np.ndarray,
    s_lg: np.ndarray,
    npts: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """DRW and power-law fits on binned moments (curves x bins); returns ((G, 4) values, (G,) status).

    The per-alert cost is numpy call overhead, not arithmetic, so the work is split in two: the
    curves x bins x taus arithmetic is vectorised across all curves; the per-curve tail (pick and
    refine the optimum, the power law from five sums, the status) is plain Python floats, which is
    cheaper than a dozen numpy calls on two-element arrays and costs a few microseconds per curve
    in a batch.  Every sum over bins has a fixed order whatever the number of curves in the call:
    a stacked matmul runs the same (2 x bins) @ (bins x taus) product for each curve, and the other
    sums use ``np.add.accumulate`` (sequential by definition), never ``np.sum``, whose pairwise/SIMD
    blocking depends on the array's shape.  So a curve's features are bit-identical in a batch of
    one or of thousands.
    """
    g = cnt.shape[0]
    inv = 1.0 / np.maximum(cnt, 1)
    d = s_dm2 * inv  # mean squared difference: signal + noise
    noise = s_noise * inv
    neff = np.minimum(cnt_full, npts[:, None])  # pairs sharing points are not independent
    y1 = np.empty((g, 2, N_LAG_BINS))
    y1[:, 1] = 1.0
    y = np.subtract(d, noise, out=y1[:, 0])  # noise-subtracted SF^2 (a view into y1)
    # --- DRW: closed-form SF_inf^2 per trial tau, pass 1 weighted by the data, pass 2 by the fit ---
    # q = s_gy^2 / s_gg is what the optimum removes from the weighted residual sum: maximise it.
    q, s2, best = _drw_grid(y1, d, noise, neff)
    # --- SF power law sums: log10 SF^2 on log10 lag, weights 1 / var(ln SF) ------------------------
    tot = _power_law_sums(y, d, neff, cnt, s_lg, inv)  # (G, 7) Python floats
    qs = q.tolist()
    s2s = s2.tolist()
    vals = []
    status = []
    for k, kb in enumerate(best.tolist()):
        s0, sx, sy, sxx, sxy, n_bins, n_pos = tot[k]
        st = 0
        tau = sf_inf = math.nan
        if n_bins < MIN_BINS:
            st |= STATUS_DRW_FAILED
        else:
            kk = min(max(kb, 1), _N_TAU - 2)
            q0, q1, q2 = qs[k][kk - 1 : kk + 2]
            v0, v1, v2 = s2s[k][kk - 1 : kk + 2]
            curv = q0 + q2 - 2.0 * q1
            # interior optimum: vertex of the parabola, in grid steps; else the bound of the grid
            interior = kb == kk and curv < 0.0
            shift = min(max(0.5 * (q0 - q2) / curv, -1.0), 1.0) if interior else float(kb - kk)
            sf2 = v1 + shift * (v2 - v1) if shift >= 0.0 else v1 - shift * (v0 - v1)
            if sf2 > 0.0:
                tau = 10.0 ** (_TAU_LOG10_LIST[kk] + shift * _TAU_STEP_LOG10)
                sf_inf = math.sqrt(sf2)
                if kb == 0 or kb == _N_TAU - 1:
                    st |= STATUS_TAU_AT_BOUND
            else:
                sf_inf = 0.0
                st |= STATUS_NO_VARIABILITY
        den = s0 * sxx - sx * sx
        if n_pos >= MIN_BINS and den > 0.0:
            slope = (s0 * sxy - sx * sy) / den  # d log10 SF^2 / d log10 lag = 2 gamma
            gamma = 0.5 * slope
            log10_amp = 0.5 * (sy - slope * sx) / s0 + gamma * _LOG10_REF  # SF at the reference lag
        else:
            st |= STATUS_SF_FAILED
            gamma = log10_amp = math.nan
        vals.append((tau, sf_inf, log10_amp, gamma))
        status.append(st)
    out = np.array(vals, dtype=np.float64).reshape(g, 4)
    out[:, 2] = 10.0 ** out[:, 2]  # numpy: overflow gives inf (nulled by the caller), never raises
    return out, np.array(status, dtype=np.int64)


def variability_features_many(
    curves: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> tuple[np.ndarray, np.ndarray]:
    """DRW and SF features of many light curves, vectorised.

    ``curves`` holds (mjd, mag, mag_err) triples of cleaned light curves: finite float64 arrays,
    strictly increasing times, positive errors (features.py guarantees this).  Returns a
    (len(curves), 4) float64 array with columns :data:`VARIABILITY_COLUMNS` (``drw_tau`` days,
    ``drw_sf_inf`` mag, ``sf_amp`` mag at 1 yr, ``sf_slope``), NaN where undefined, and an int64 array
    of status bits (``STATUS_*``).  Never raises on such input.  A curve's result does not depend on
    the other curves passed with it.
    """
    n = len(curves)
    out = np.full((n, 4), np.nan)
    status = np.full(n, STATUS_TOO_SHORT, dtype=np.int64)
    eligible = []
    for k, (t, _m, _e) in enumerate(curves):
        if len(t) >= MIN_POINTS and t[-1] - t[0] >= MIN_SPAN_DAYS:
            eligible.append(k)
    start = 0
    while start < len(eligible):
        stop = start
        pairs = 0
        while stop < len(eligible) and (stop == start or pairs < _CHUNK_PAIRS):
            pairs += _n_pairs(len(curves[eligible[stop]][0]))
            stop += 1
        idx = eligible[start:stop]
        chunk = [curves[k] for k in idx]
        npts = np.array([len(c[0]) for c in chunk], dtype=np.float64)
        vals, st = _fit_binned(*_binned_moments(chunk), npts)
        out[idx] = vals
        status[idx] = st
        start = stop
    return out, status
