"""The feature vector: names, robustness, determinism, batch == per-alert, known values, pinned values."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scipy.stats import chi2

from broker_plugin.alert import FEATURE_BANDS, LightCurve
from broker_plugin.photometry.features import (
    BAND_FEATURES,
    COLOR_FEATURES,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FLAG_DESCRIPTIONS,
    MIN_POINTS_LC,
    FeatureVector,
    compute_features,
    compute_features_batch,
    features_to_dict,
)
from broker_plugin.photometry.variability_curves import simulate_drw

F = len(FEATURE_NAMES)
IDX = {name: k for k, name in enumerate(FEATURE_NAMES)}


def make_lc(band: str, t, m, e=None, kind: str = "dc") -> LightCurve:
    t = np.asarray(t, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    e = np.full(m.shape, 0.03) if e is None else np.asarray(e, dtype=np.float64)
    with np.errstate(all="ignore"):  # absurd test magnitudes overflow the (unused) fluxes
        flux = 10 ** (-0.4 * (m - 31.4))
        flux_err = flux * e / 1.0857
    return LightCurve(band, t, m, e, flux, flux_err, kind)


def drw_lc(rng: np.random.Generator, band: str, n: int, span: float = 600.0, mean: float = 19.0) -> LightCurve:
    t = np.sort(rng.uniform(58000.0, 58000.0 + span, n))
    m = simulate_drw(t, 150.0, 0.3, mean, rng) + rng.normal(0.0, 0.03, n)
    return make_lc(band, t, m)


def g_values(values: np.ndarray) -> np.ndarray:
    return np.array([values[IDX[f"g_{name}"]] for name in BAND_FEATURES])


def flag_pattern_ok(flag: str) -> bool:
    for pattern in FLAG_DESCRIPTIONS:
        regex = "^" + re.escape(pattern).replace(re.escape("{b}"), "(" + "|".join(FEATURE_BANDS) + ")") + "$"
        if re.match(regex, flag):
            return True
    return False


# --- names and version ----------------------------------------------------------------------------


def test_names_unique_ordered_and_described() -> None:
    assert len(set(FEATURE_NAMES)) == F
    assert set(FEATURE_DESCRIPTIONS) == set(FEATURE_NAMES)
    assert FEATURE_NAMES[: len(BAND_FEATURES)] == tuple(f"g_{n}" for n in BAND_FEATURES)
    assert FEATURE_NAMES[-len(COLOR_FEATURES) :] == COLOR_FEATURES
    for required in ("g_amplitude", "g_drw_tau", "g_drw_sf_inf", "g_sf_amp", "g_sf_slope", "g_r_mean_color"):
        assert required in FEATURE_NAMES
    assert re.fullmatch(r"\d+\.\d+", FEATURE_VERSION)
    assert all(re.fullmatch(r"[a-z0-9_]+", n) for n in FEATURE_NAMES)


def test_values_match_names() -> None:
    fv = compute_features({"g": drw_lc(np.random.default_rng(0), "g", 30)})
    assert isinstance(fv, FeatureVector)
    assert fv.values.shape == (F,) and fv.values.dtype == np.float64
    assert list(features_to_dict(fv.values)) == list(FEATURE_NAMES)


# --- normal input -----------------------------------------------------------------------------------


def test_drw_light_curves_give_finite_features() -> None:
    rng = np.random.default_rng(1)
    fv = compute_features({"g": drw_lc(rng, "g", 80), "r": drw_lc(rng, "r", 70, mean=18.6)})
    bad = [n for n, v in zip(FEATURE_NAMES, fv.values, strict=True) if not np.isfinite(v)]
    assert not bad
    assert not [f for f in fv.flags if f.startswith("g_") and "at_bound" not in f]


def test_other_bands_are_ignored() -> None:
    rng = np.random.default_rng(2)
    g = drw_lc(rng, "g", 30)
    a = compute_features({"g": g})
    b = compute_features({"g": g, "i": drw_lc(rng, "i", 30)})
    np.testing.assert_array_equal(a.values, b.values)
    assert a.flags == b.flags


# --- short, empty, missing ------------------------------------------------------------------------


def test_missing_band() -> None:
    fv = compute_features({"g": drw_lc(np.random.default_rng(3), "g", 40)})
    r = np.array([fv.values[IDX[f"r_{n}"]] for n in BAND_FEATURES])
    assert np.all(np.isnan(r))
    assert "r_missing" in fv.flags
    assert np.isfinite(fv.values[IDX["g_amplitude"]])
    assert np.isnan(fv.values[IDX["g_r_mean_color"]])


def test_empty_mapping_and_empty_light_curves() -> None:
    for lcs in ({}, {"g": LightCurve.empty("g"), "r": LightCurve.empty("r")}):
        fv = compute_features(lcs)
        assert fv.values.shape == (F,) and np.all(np.isnan(fv.values))
        assert "g_missing" in fv.flags and "r_missing" in fv.flags


@pytest.mark.parametrize("n", [1, 2, 4])
def test_too_few_points(n: int) -> None:
    t = 59000.0 + np.arange(n) * 3.0
    fv = compute_features({"g": make_lc("g", t, 19.0 + 0.1 * np.arange(n)), "r": make_lc("r", t, np.full(n, 18.5))})
    v = fv.values
    assert np.isfinite(v[IDX["g_mean_mag"]])
    assert np.isnan(v[IDX["g_amplitude"]]) and np.isnan(v[IDX["g_drw_tau"]])
    assert np.isfinite(v[IDX["g_time_span"]]) == (n >= 2)
    assert np.isfinite(v[IDX["g_r_mean_color"]])
    assert {"g_too_few_points", "g_too_short_for_drw", "r_too_few_points"} <= set(fv.flags)


def test_minimum_points_for_light_curve_statistics() -> None:
    t = 59000.0 + np.arange(MIN_POINTS_LC) * 2.0
    m = np.array([19.0, 19.3, 18.8, 19.1, 19.4])
    fv = compute_features({"g": make_lc("g", t, m)})
    lc_stats = [n for n in BAND_FEATURES if not n.startswith(("drw_", "sf_"))]
    assert all(np.isfinite(fv.values[IDX[f"g_{n}"]]) for n in lc_stats)
    assert np.isnan(fv.values[IDX["g_drw_tau"]]) and "g_too_short_for_drw" in fv.flags


# --- awkward values ---------------------------------------------------------------------------------


def _finite_or_nan(values: np.ndarray) -> bool:
    return bool(np.all(np.isfinite(values) | np.isnan(values)))


def test_all_equal_magnitudes() -> None:
    t = 59000.0 + np.arange(20) * 2.0
    fv = compute_features({"g": make_lc("g", t, np.full(20, 18.0))})
    v = fv.values
    assert v[IDX["g_amplitude"]] == 0.0 and v[IDX["g_std"]] == 0.0
    assert v[IDX["g_drw_sf_inf"]] == 0.0 and np.isnan(v[IDX["g_drw_tau"]])
    assert "g_drw_no_variability" in fv.flags
    assert _finite_or_nan(v)


@pytest.mark.parametrize(
    ("errors", "flag"),
    [
        (np.zeros(12), "g_no_errors"),
        (np.full(12, np.nan), "g_no_errors"),
        (np.r_[np.zeros(6), np.full(6, 0.05)], "g_errors_imputed"),
    ],
)
def test_bad_errors(errors: np.ndarray, flag: str) -> None:
    t = 59000.0 + np.arange(12) * 3.0
    m = 19.0 + 0.2 * np.sin(np.arange(12))
    fv = compute_features({"g": make_lc("g", t, m, errors)})
    assert flag in fv.flags
    assert np.isfinite(fv.values[IDX["g_amplitude"]]) and np.isfinite(fv.values[IDX["g_mean_mag"]])
    assert np.isnan(fv.values[IDX["g_reduced_chi2"]]) == (flag == "g_no_errors")
    assert _finite_or_nan(fv.values)


def test_nan_and_absurd_points_are_skipped() -> None:
    t = 59000.0 + np.arange(10) * 3.0
    m = 19.0 + 0.1 * np.arange(10)
    bad = m.copy()
    bad[[2, 5]] = [np.nan, 1e30]
    fv = compute_features({"g": make_lc("g", t, bad)})
    keep = np.ones(10, bool)
    keep[[2, 5]] = False
    ref = compute_features({"g": make_lc("g", t[keep], m[keep])})
    np.testing.assert_array_equal(fv.values, ref.values)
    assert "g_points_dropped" in fv.flags


def test_unsorted_and_duplicate_times() -> None:
    t = np.array([5.0, 1.0, 3.0, 3.0, 2.0, 4.0, 9.0, 7.0]) + 59000.0
    m = np.array([19.5, 19.1, 19.3, 25.0, 19.2, 19.4, 19.9, 19.7])
    fv = compute_features({"g": make_lc("g", t, m)})
    assert {"g_unsorted", "g_duplicate_times"} <= set(fv.flags)
    order = np.argsort(t, kind="stable")
    first = np.r_[True, np.diff(t[order]) != 0]
    ref = compute_features({"g": make_lc("g", t[order][first], m[order][first])})
    np.testing.assert_array_equal(fv.values, ref.values)
    assert fv.values[IDX["g_amplitude"]] == pytest.approx(0.4)  # the duplicate 25.0 was dropped


def test_huge_values_do_not_overflow_into_inf() -> None:
    t = np.array([0.0, 1e-9, 1.0, 2.0, 9.0e6, 9.5e6]) + 1.0
    m = np.array([99.0, -99.0, 99.0, -99.0, 99.0, -99.0])
    fv = compute_features({"g": make_lc("g", t, m, np.full(6, 1e300))})
    assert _finite_or_nan(fv.values)


def test_unequal_array_lengths_are_truncated_and_flagged() -> None:
    lc = make_lc("g", np.arange(10.0), np.full(10, 19.0))
    lc.mag_err = np.full(7, 0.05)
    fv = compute_features({"g": lc})
    assert "g_bad_input" in fv.flags and fv.values.shape == (F,)


def test_kind_flags_and_colour_mismatch() -> None:
    rng = np.random.default_rng(4)
    g = drw_lc(rng, "g", 20)
    r = drw_lc(rng, "r", 20)
    r.kind = "diff"
    fv = compute_features({"g": g, "r": r})
    assert "r_mags_diff" in fv.flags and "color_kind_mismatch" in fv.flags
    assert np.isnan(fv.values[IDX["g_r_mean_color"]]) and np.isnan(fv.values[IDX["g_r_max_color"]])


floats = st.floats(allow_nan=True, allow_infinity=True, width=64)
special = st.sampled_from([0.0, -0.0, np.nan, np.inf, -np.inf, 1e308, -1e308, 5e-324, 18.0, 59000.0])


@st.composite
def light_curve_maps(draw: st.DrawFn) -> dict[str, LightCurve]:
    out = {}
    for band in ("g", "r", "i"):
        if draw(st.booleans()):
            n = draw(st.integers(0, 40))
            elems = st.one_of(floats, special)
            t = draw(st.lists(st.one_of(elems, st.sampled_from([1.0, 2.0, 3.0])), min_size=n, max_size=n))
            m = draw(st.lists(st.one_of(elems, st.floats(15, 22)), min_size=n, max_size=n))
            e = draw(st.lists(st.one_of(elems, st.floats(0, 0.3)), min_size=n, max_size=n))
            kind = draw(st.sampled_from(["dc", "diff", "mixed"]))
            out[band] = make_lc(band, t, m, e, kind)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(light_curve_maps())
def test_random_input_never_raises(lcs: dict[str, LightCurve]) -> None:
    fv = compute_features(lcs)
    assert fv.values.shape == (F,) and fv.values.dtype == np.float64
    assert _finite_or_nan(fv.values)
    assert all(flag_pattern_ok(f) for f in fv.flags), fv.flags
    json.dumps(features_to_dict(fv.values), allow_nan=False)
    again = compute_features(lcs)
    np.testing.assert_array_equal(fv.values, again.values)


# --- determinism and batch ------------------------------------------------------------------------


def _mixed_alerts(seed: int, count: int) -> list[dict[str, LightCurve]]:
    rng = np.random.default_rng(seed)
    alerts: list[dict[str, LightCurve]] = []
    for k in range(count):
        lcs = {}
        for band in ("g", "r"):
            kind = k % 7
            if kind == 0 and band == "r":
                continue  # missing band
            n = {1: 3, 2: 6, 3: 300}.get(kind, int(rng.integers(8, 70)))
            lcs[band] = drw_lc(rng, band, n, span=float(rng.uniform(20, 1500)))
        alerts.append(lcs)
    return alerts


def test_same_input_same_output() -> None:
    alerts = _mixed_alerts(5, 10)
    first = [compute_features(a) for a in alerts]
    second = [compute_features(a) for a in alerts]
    for a, b in zip(first, second, strict=True):
        np.testing.assert_array_equal(a.values, b.values)
        assert a.flags == b.flags


@pytest.mark.parametrize("n_jobs", [1, -1])
def test_batch_equals_row_by_row(n_jobs: int) -> None:
    """Bit-identical, so a feature is the same number in training (batch) and serving (per alert)."""
    alerts = _mixed_alerts(6, 70)  # >= 64 curves: n_jobs=-1 takes light-curve's parallel path
    values, flags = compute_features_batch(alerts, n_jobs=n_jobs)
    assert values.shape == (len(alerts), F)
    for k, alert in enumerate(alerts):
        fv = compute_features(alert)
        np.testing.assert_array_equal(values[k], fv.values)
        assert flags[k] == fv.flags
    empty_values, empty_flags = compute_features_batch([])
    assert empty_values.shape == (0, F) and empty_flags == []


# --- known values -------------------------------------------------------------------------------------


def test_known_values_by_hand() -> None:
    t = 59000.0 + np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])
    g = 19.0 + 0.01 * np.array([0.0, 1.0, 2.0, 3.0, 4.0, 5.0])  # a straight line, 0.01 mag/day
    fv = compute_features({"g": make_lc("g", t, g, np.full(6, 0.02)), "r": make_lc("r", t, np.full(6, 18.5))})
    v = fv.values
    assert v[IDX["g_amplitude"]] == pytest.approx((g.max() - g.min()) / 2)
    assert v[IDX["g_mean_mag"]] == pytest.approx(g.mean())
    assert v[IDX["g_std"]] == pytest.approx(np.std(g, ddof=1))
    assert v[IDX["g_linear_trend"]] == pytest.approx(0.01)
    assert v[IDX["g_time_span"]] == pytest.approx(5.0)
    chi2_value = np.sum(((g - g.mean()) / 0.02) ** 2)
    assert v[IDX["g_reduced_chi2"]] == pytest.approx(chi2_value / 5)
    assert v[IDX["g_pvar"]] == pytest.approx(chi2.cdf(chi2_value, 5))
    assert v[IDX["r_pvar"]] == 0.0  # constant: no evidence of variability
    assert v[IDX["g_r_mean_color"]] == pytest.approx(g.mean() - 18.5)
    assert v[IDX["g_r_max_color"]] == pytest.approx(19.0 - 18.5)


def test_mean_colour_of_constant_light_curves() -> None:
    t = 59000.0 + np.arange(8.0)
    fv = compute_features({"g": make_lc("g", t, np.full(8, 19.25)), "r": make_lc("r", t[:3], np.full(3, 18.5))})
    assert fv.values[IDX["g_r_mean_color"]] == pytest.approx(0.75)
    assert fv.values[IDX["g_r_max_color"]] == pytest.approx(0.75)


def test_features_to_dict() -> None:
    values = np.arange(F, dtype=np.float64)
    values[3] = np.nan
    values[4] = np.inf
    d = features_to_dict(values)
    assert list(d) == list(FEATURE_NAMES)
    assert d[FEATURE_NAMES[3]] is None and d[FEATURE_NAMES[4]] is None
    assert d[FEATURE_NAMES[0]] == 0.0 and isinstance(d[FEATURE_NAMES[5]], float)
    with pytest.raises(ValueError):
        features_to_dict(values[:-1])


def _golden_alert() -> dict[str, LightCurve]:
    rng = np.random.default_rng(20240601)
    out = {}
    for band, mean, n in (("g", 19.3, 45), ("r", 18.9, 38)):
        t = np.sort(rng.uniform(58000.0, 58900.0, n))
        m = simulate_drw(t, 200.0, 0.3, mean, rng)
        e = np.full(n, 0.03)
        m = m + rng.normal(0.0, 0.03, n)
        out[band] = make_lc(band, t, m, e)
    return out


# Reference output of FEATURE_VERSION 1.0.  If this test fails, a change altered feature values:
# bump FEATURE_VERSION (see the rule in broker_plugin/photometry/features.py) and update these numbers.
GOLDEN_VERSION = "1.0"
GOLDEN = [
    19.299215948171923, 0.5073134012282541, 0.263391606399432, 0.08401710126743112, 0.694455264062988,
    1.5293293849118643, 1.4967759523298398, 0.17777777777777778, 0.00018384574670454704, 77.08348702408144,
    1.0, 11.998641779819433, 0.7635986938372816, 0.00015575763955205437, 873.370752269162, 92.87707937202336,
    0.3805442567171817, 0.31109733585742977, 0.2179465230865916, 19.03403544473621, 0.36065439266515575,
    0.24118761557333485, 0.24126393484184838, 0.6101028028898696, 0.04654351191599408, -1.5937510477789318,
    0.5, 0.000158079863388248, 64.63496211772305, 1.0, 41.539118824109934, 0.9192789197907266,
    -0.0009036642692738504, 887.114428394445, 10000.0, 1.894196649398746, 0.3615514875932985,
    0.5200046089939295, 0.26518050343571176, 0.31086421547670184,
]  # fmt: skip


def test_pinned_reference_values() -> None:
    assert FEATURE_VERSION == GOLDEN_VERSION, "feature version changed: regenerate GOLDEN"
    fv = compute_features(_golden_alert())
    np.testing.assert_allclose(fv.values, GOLDEN, rtol=1e-9, atol=0)
    assert fv.flags == ["r_drw_tau_at_bound"]
