"""DRW and structure-function estimators, checked on simulated damped random walks.

Simulations use the exact Ornstein-Uhlenbeck update (SCIENCE.md) with fixed seeds, so every check is
deterministic; the tolerances are those a DRW fit can honestly promise (tau within a factor of 2-3,
SF_inf within 30%) for dense, long light curves, taken over several realisations where one
realisation's scatter (realisation noise of a red-noise process) would make a single check brittle.
"""

from __future__ import annotations

import numpy as np
import pytest

from broker_plugin.photometry.variability import (
    MAX_POINTS_ALL_PAIRS,
    STATUS_NO_VARIABILITY,
    STATUS_TAU_AT_BOUND,
    STATUS_TOO_SHORT,
    TAU_MAX_DAYS,
    TAU_MIN_DAYS,
    variability_features_many,
)
from broker_plugin.photometry.variability_curves import fit_drw, sf_power_law, simulate_drw, structure_function


def _drw_curve(
    rng: np.random.Generator, tau: float, sf_inf: float, n: int = 500, span: float = 2000.0, err: float = 0.02
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    t = np.sort(rng.uniform(0.0, span, n))
    m = simulate_drw(t, tau, sf_inf, 19.0, rng) + rng.normal(0.0, err, n)
    return t, m, np.full(n, err)


def test_simulate_drw_has_the_drw_covariance() -> None:
    """Stationary variance SF_inf^2/2 and lag correlation exp(-dt/tau), over many short draws."""
    rng = np.random.default_rng(1)
    tau, sf_inf, lag = 50.0, 0.3, 25.0
    pairs = np.array([simulate_drw(np.array([0.0, lag]), tau, sf_inf, 0.0, rng) for _ in range(20000)])
    var = pairs.var(axis=0)
    assert var == pytest.approx([sf_inf**2 / 2] * 2, rel=0.05)
    corr = np.corrcoef(pairs.T)[0, 1]
    assert corr == pytest.approx(np.exp(-lag / tau), abs=0.03)
    assert simulate_drw(np.empty(0), tau, sf_inf).shape == (0,)


@pytest.mark.parametrize(("tau", "sf_inf"), [(100.0, 0.25), (300.0, 0.2)])
def test_drw_recovery_dense_long(tau: float, sf_inf: float) -> None:
    """500 points over 2000 d: median tau within x2 and SF_inf within 30%; most taus within x3.

    Not every realisation: with a baseline of only ~7 tau (tau = 300 d) a DRW realisation can fail to
    decorrelate and any estimator then finds a long tau (Kozlowski 2017).
    """
    rng = np.random.default_rng(int(tau))
    fits = [fit_drw(*_drw_curve(rng, tau, sf_inf)) for _ in range(8)]
    taus = np.array([f.tau for f in fits])
    sfs = np.array([f.sf_inf for f in fits])
    assert np.all(np.isfinite(taus)) and np.all(np.isfinite(sfs))
    assert 0.5 < np.median(taus) / tau < 2.0
    assert np.median(sfs) / sf_inf == pytest.approx(1.0, abs=0.3)
    assert np.mean((taus / tau > 1 / 3) & (taus / tau < 3)) >= 0.75


def test_drw_recovery_short_tau_is_tight() -> None:
    rng = np.random.default_rng(10)
    fit = fit_drw(*_drw_curve(rng, 10.0, 0.3, n=400, span=1000.0))
    assert fit.tau == pytest.approx(10.0, rel=0.5)
    assert fit.sf_inf == pytest.approx(0.3, rel=0.2)
    assert fit.status == 0


def test_noise_is_subtracted() -> None:
    """Large photometric errors must not inflate SF_inf: noise enters the pair differences."""
    rng = np.random.default_rng(3)
    sfs = [fit_drw(*_drw_curve(rng, 50.0, 0.2, err=0.15)).sf_inf for _ in range(6)]
    assert np.median(sfs) == pytest.approx(0.2, rel=0.3)


def test_sf_power_law_of_a_long_tau_drw_has_slope_one_half() -> None:
    """For dt << tau, SF^2 = SF_inf^2 dt / tau, so gamma = 0.5 and A = SF(1 yr) = SF_inf sqrt(1-e^-1yr/tau)."""
    rng = np.random.default_rng(4)
    tau, sf_inf = 5000.0, 0.4
    amps, slopes = [], []
    for _ in range(6):
        a, g = sf_power_law(*_drw_curve(rng, tau, sf_inf, n=400, span=1500.0, err=0.01))
        amps.append(a)
        slopes.append(g)
    assert np.median(slopes) == pytest.approx(0.5, abs=0.12)
    expected = sf_inf * np.sqrt(1 - np.exp(-365.25 / tau))
    assert np.median(amps) == pytest.approx(expected, rel=0.3)


def test_white_noise_gives_flat_sf_and_short_tau() -> None:
    """Uncorrelated intrinsic scatter: SF flat (gamma ~ 0), tau below the shortest sampled lags."""
    rng = np.random.default_rng(5)
    t = np.sort(rng.uniform(0.0, 2000.0, 400))
    m = 19.0 + rng.normal(0.0, 0.2, t.size)
    e = np.full(t.size, 0.02)
    amp, slope = sf_power_law(t, m, e)
    assert abs(slope) < 0.1
    assert amp == pytest.approx(0.2 * np.sqrt(2), rel=0.2)  # SF of white noise: sqrt(2) sigma
    fit = fit_drw(t, m, e)
    assert fit.tau < 5.0
    assert fit.sf_inf == pytest.approx(0.2 * np.sqrt(2), rel=0.2)


def test_measurement_noise_only_gives_little_or_no_variability() -> None:
    rng = np.random.default_rng(6)
    t = np.sort(rng.uniform(0.0, 1000.0, 200))
    e = np.full(t.size, 0.05)
    m = 19.0 + rng.normal(0.0, 0.05, t.size)
    fit = fit_drw(t, m, e)
    assert (fit.status & STATUS_NO_VARIABILITY) or fit.sf_inf < 0.03


def test_constant_light_curve_has_no_variability() -> None:
    t = np.linspace(0.0, 300.0, 30)
    fit = fit_drw(t, np.full(30, 18.0), np.full(30, 0.02))
    assert fit.status & STATUS_NO_VARIABILITY
    assert fit.sf_inf == 0.0 and np.isnan(fit.tau)


@pytest.mark.parametrize(("n", "span"), [(0, 0.0), (1, 0.0), (7, 100.0), (20, 5.0)])
def test_too_short_gives_nan_and_status(n: int, span: float) -> None:
    t = np.linspace(0.0, span, n)
    vals, status = variability_features_many([(t, np.linspace(18, 19, n), np.full(n, 0.05))])
    assert np.all(np.isnan(vals)) and status[0] == STATUS_TOO_SHORT


def test_tau_stays_in_documented_range() -> None:
    """A time scale below the sampling ends at the lower bound (flagged); a random walk (tau much
    longer than the baseline) gives taus of the order of the baseline (single realisations of a random
    walk can turn back and look saturated), never beyond 1e4 d."""
    rng = np.random.default_rng(7)
    fast = fit_drw(*_drw_curve(rng, 0.05, 0.3, n=200, span=400.0))
    assert fast.tau == TAU_MIN_DAYS and fast.status & STATUS_TAU_AT_BOUND
    slow = np.array([fit_drw(*_drw_curve(rng, 1e6, 10.0, n=200, span=400.0)).tau for _ in range(5)])
    assert np.all(slow <= TAU_MAX_DAYS)
    assert np.median(slow) > 200.0


def test_results_do_not_depend_on_batch_company() -> None:
    """A curve's features are bit-identical alone, in a small batch or in a large one."""
    rng = np.random.default_rng(8)
    curves = [_drw_curve(rng, rng.uniform(20, 400), 0.25, n=int(rng.integers(8, 160))) for _ in range(40)]
    together, st_together = variability_features_many(curves)
    for k in (0, 7, 39):
        alone, st_alone = variability_features_many([curves[k]])
        np.testing.assert_array_equal(together[k], alone[0])
        assert st_together[k] == st_alone[0]
    pair, _ = variability_features_many([curves[3], curves[1]])
    np.testing.assert_array_equal(pair, together[[3, 1]])


def test_long_light_curves_use_a_deterministic_pair_subset() -> None:
    rng = np.random.default_rng(9)
    curve = _drw_curve(rng, 100.0, 0.25, n=3 * MAX_POINTS_ALL_PAIRS)
    a, _ = variability_features_many([curve])
    b, _ = variability_features_many([curve])
    np.testing.assert_array_equal(a, b)
    assert np.all(np.isfinite(a))


def test_structure_function_rises_for_a_drw() -> None:
    rng = np.random.default_rng(11)
    sf = structure_function(*_drw_curve(rng, 200.0, 0.3))
    assert sf.lag.shape == sf.sf.shape == sf.n_pairs.shape
    assert np.all(np.diff(sf.lag) > 0)
    short = sf.sf[(sf.lag > 1) & (sf.lag < 10)]
    long = sf.sf[sf.lag > 500]
    assert np.nanmean(short) < np.nanmean(long)
    assert structure_function(np.array([1.0]), np.array([18.0])).lag.shape == (0,)


def test_pair_subset_estimates_the_all_pairs_features(monkeypatch: pytest.MonkeyPatch) -> None:
    """Above MAX_POINTS_ALL_PAIRS the weighted pair subset keeps the features' meaning (no jump)."""
    import broker_plugin.photometry.variability as v

    rng = np.random.default_rng(12)
    curves = [_drw_curve(rng, 100.0, 0.25, n=400, span=1500.0) for _ in range(6)]
    subset, _ = variability_features_many(curves)
    monkeypatch.setattr(v, "MAX_POINTS_ALL_PAIRS", 10_000)
    v._pair_index.cache_clear()
    try:
        full, _ = variability_features_many(curves)
    finally:
        v._pair_index.cache_clear()
    ratio = np.median(subset / full, axis=0)
    assert ratio[0] == pytest.approx(1.0, abs=0.3)  # tau
    assert ratio[1] == pytest.approx(1.0, abs=0.1)  # SF_inf
    assert ratio[2] == pytest.approx(1.0, abs=0.1)  # SF amplitude
    assert np.median(np.abs(subset[:, 3] - full[:, 3])) < 0.05  # SF slope
