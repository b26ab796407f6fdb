"""Synthetic light curves: exact DRW statistics, cadences, the Ivezic error model, detections."""

from __future__ import annotations

import math

import numpy as np
import pytest

from training.synthetic.lightcurves import (
    RUBIN_M5,
    ZTF_M5,
    ZTF_SIGMA_SYS,
    correlated_drw,
    drw_loop,
    drw_magnitudes,
    drw_unit,
    mag_error,
    observe_difference,
    observe_direct,
    rubin_cadence,
    simulate_survey,
    ztf_cadence,
)
from training.synthetic.population import draw_object


def test_closed_form_drw_equals_the_recursion() -> None:
    t = np.sort(np.random.default_rng(0).uniform(0, 5000, 800))
    for tau in (3.0, 50.0, 2000.0):  # includes gaps of >200 tau (the chunking path)
        a = drw_unit(t, tau, np.random.default_rng(1))
        b = drw_loop(t, tau, np.random.default_rng(1))
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-9)


def test_drw_variance_is_sf_squared_over_two() -> None:
    """A long dense series: sample variance ~ SF_inf^2 / 2 (SCIENCE.md covariance at zero lag)."""
    sf, tau = 0.3, 40.0
    t = np.arange(0.0, 120_000.0, 2.0)  # 3,000 tau: ~1,500 independent stretches -> ~4% scatter
    m = drw_magnitudes(t, tau, sf, 19.0, np.random.default_rng(2))
    assert m.var() == pytest.approx(sf**2 / 2, rel=0.12)
    assert m.mean() == pytest.approx(19.0, abs=0.03)


@pytest.mark.parametrize("dt", [1.0, 10.0, 40.0])
def test_drw_autocorrelation_is_exp_minus_dt_over_tau(dt: float) -> None:
    tau = 40.0
    t = np.arange(0.0, 60_000.0, dt)
    y = drw_unit(t, tau, np.random.default_rng(3))
    r = np.corrcoef(y[:-1], y[1:])[0, 1]
    assert r == pytest.approx(math.exp(-dt / tau), abs=0.03)


def test_drw_uneven_sampling_lag_correlation() -> None:
    """Pairs at a fixed lag inside an uneven series still correlate as exp(-lag/tau)."""
    rng = np.random.default_rng(4)
    base = np.sort(rng.uniform(0, 200_000, 20_000))
    t = np.sort(np.concatenate([base, base + 25.0]))
    y = drw_unit(t, 50.0, rng)
    lookup = dict(zip(t.tolist(), y.tolist(), strict=True))
    a = np.array([lookup[x] for x in base])
    b = np.array([lookup[x + 25.0] for x in base])
    assert np.corrcoef(a, b)[0, 1] == pytest.approx(math.exp(-25.0 / 50.0), abs=0.03)


def test_multiband_drw_keeps_each_band_and_the_correlation() -> None:
    t = np.arange(0.0, 80_000.0, 3.0)
    out = correlated_drw({"g": t, "r": t}, 30.0, {"g": 0.3, "r": 0.2}, {"g": 20.0, "r": 19.7}, 0.9,
                         np.random.default_rng(5))
    assert out["g"].var() == pytest.approx(0.3**2 / 2, rel=0.12)
    assert out["r"].var() == pytest.approx(0.2**2 / 2, rel=0.12)
    assert np.corrcoef(out["g"], out["r"])[0, 1] == pytest.approx(0.9, abs=0.03)


def test_error_model_monotonic_and_sys_floor() -> None:
    m = np.linspace(12.0, 23.0, 200)
    sig = mag_error(m, 20.8, ZTF_SIGMA_SYS)
    assert np.all(np.diff(sig) > 0)
    assert sig[0] == pytest.approx(ZTF_SIGMA_SYS, abs=2e-4)  # 8.8 mag brighter than m5
    assert float(mag_error(20.8, 20.8, 0.0)) == pytest.approx(0.2, abs=1e-9)  # sqrt(0.04) at m5


def test_direct_photometry_detections_follow_m5() -> None:
    rng = np.random.default_rng(6)
    m5 = np.full(4000, 20.8)
    obs, err, det = observe_direct(np.full(4000, 16.0), m5, rng)
    assert det.all()
    assert np.median(err) == pytest.approx(float(mag_error(16.0, 20.8)), rel=0.05)
    assert np.std(obs - 16.0) == pytest.approx(float(mag_error(16.0, 20.8)), rel=0.1)
    _, _, det_faint = observe_direct(np.full(4000, 22.5), m5, rng)
    assert det_faint.mean() < 0.01
    _, _, det_none = observe_direct(np.full(10, np.inf), m5[:10], rng)
    assert not det_none.any()


def test_difference_photometry_detects_at_five_sigma() -> None:
    rng = np.random.default_rng(7)
    true = 19.0 + 0.3 * rng.standard_normal(3000)
    ref = float(10 ** (-0.4 * (19.0 - 31.4)))
    p = observe_difference(true, ref, np.full(3000, 20.8), rng)
    np.testing.assert_array_equal(p.detected, np.abs(p.diff_flux) >= 5 * p.flux_err)
    assert 0.05 < p.detected.mean() < 0.95
    # template + difference = the observed total flux, whatever the sign
    np.testing.assert_allclose(p.total_flux, ref + p.diff_flux)


def test_ztf_cadence_has_seasons_and_two_to_three_night_revisits() -> None:
    cad = ztf_cadence(np.random.default_rng(8), 150.0, 60000.0, 61095.0)
    for b in ("g", "r"):
        t = cad.mjd[b]
        assert np.all(np.diff(t) > 0)
        nights = np.unique(np.floor(t))
        gaps = np.diff(nights)
        assert 1.8 < np.median(gaps) <= 4.0
        assert gaps.max() > 90  # a seasonal gap per year
        per_year = nights.size / 3.0
        assert 50 < per_year < 130
        assert np.all(np.abs(cad.m5[b] - ZTF_M5[b]) < 1.6)


def test_rubin_cadence_is_sparse_per_band_and_covers_ugrizy() -> None:
    cad = rubin_cadence(np.random.default_rng(9), 40.0, 61000.0, 62095.0)
    counts = {b: cad.mjd[b].size for b in cad.mjd}
    assert set(counts) == set(RUBIN_M5)
    assert all(c > 0 for c in counts.values())
    assert counts["r"] > counts["u"]
    assert 40 < sum(counts.values()) / 3.0 < 160  # visits per year per field


def test_simulate_survey_is_deterministic_and_shapes_agree() -> None:
    def run() -> dict[str, np.ndarray]:
        rng = np.random.default_rng(10)
        obj = draw_object(rng, 0, "qso")
        data = simulate_survey(obj, "ztf", 61000.0, rng, baseline_days=300.0)
        return {b: p.diff_flux for b, p in data.phot.items()}

    a, b = run(), run()
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
