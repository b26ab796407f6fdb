"""Synthetic population: the S82 DRW table, quasar draws, the explicit BAL light-curve effect."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.dataset import generate_training_set
from training.synthetic.population import (
    CLASSES,
    DRW_COLUMNS,
    DRW_TABLE_PATH,
    BalLightCurveEffect,
    draw_object,
    draw_quasar,
    load_drw_table,
)


def test_drw_table_is_compact_and_physical() -> None:
    assert DRW_TABLE_PATH.stat().st_size < 500_000
    tab = load_drw_table()
    assert len(tab) == 6501
    assert set(DRW_COLUMNS) <= set(tab.columns)
    # SCIENCE.md: typical rest-frame tau ~ 250 d, SF_inf ~ 0.2-0.3 mag in g.
    assert 100 < 10 ** np.median(tab["log_tau_rest_g"]) < 400
    assert 0.15 < 10 ** np.median(tab["log_sf_inf_g"]) < 0.3
    assert tab.rows_in_z((1.67, 3.6)).size > 2000


def test_quasar_parameters_come_from_one_table_row() -> None:
    tab = load_drw_table()
    rng = np.random.default_rng(0)
    for i in range(50):
        q = draw_quasar(rng, i, is_bal=False)
        row = q.params["s82_row"]
        assert 1.67 <= q.z <= 3.6
        assert q.z == tab["z"][row]
        assert q.params["tau_obs"] == pytest.approx(q.params["tau_rest"] * (1 + q.z))
        assert q.params["sf_inf"]["ztf:g"] == pytest.approx(10 ** tab["log_sf_inf_g"][row])
        assert q.params["sf_inf"]["ztf:r"] == pytest.approx(10 ** tab["log_sf_inf_r"][row])
        assert q.mag("ztf", "g") == pytest.approx(tab["mu_g"][row])
        assert q.label == "qso_nonbal" and q.ebv == 0.0 and q.morphology == "point"


def test_default_bal_effect_is_a_modest_reddening_only() -> None:
    eff = BalLightCurveEffect()
    assert eff.sf_scale == 1.0 and eff.tau_scale == 1.0
    assert 0.05 <= eff.expected_color_shift(2.0, "ztf") <= 0.1
    assert BalLightCurveEffect.none().expected_color_shift(2.0) == 0.0


def test_bal_quasars_are_redder_and_nothing_else_changes() -> None:
    """Same S82 rows drawn as BAL and as non-BAL: only the dust offsets differ."""
    for eff in (BalLightCurveEffect(), BalLightCurveEffect.none()):
        diffs = []
        for seed in range(60):
            bal = draw_quasar(np.random.default_rng(seed), 0, is_bal=True, effect=eff)
            non = draw_quasar(np.random.default_rng(seed), 0, is_bal=False, effect=eff)
            assert bal.params["s82_row"] == non.params["s82_row"]
            assert bal.params["tau_rest"] == pytest.approx(non.params["tau_rest"])
            assert bal.params["sf_inf"] == pytest.approx(non.params["sf_inf"])
            diffs.append((bal.mag("ztf", "g") - bal.mag("ztf", "r")) - (non.mag("ztf", "g") - non.mag("ztf", "r")))
        if eff.ebv_mean > 0:
            assert np.all(np.array(diffs) >= 0)
            assert 0.03 < np.mean(diffs) < 0.15
        else:
            assert np.allclose(diffs, 0.0)


def test_tunable_effect_scales_variability() -> None:
    eff = BalLightCurveEffect(ebv_mean=0.0, sf_scale=2.0, tau_scale=0.5)
    bal = draw_quasar(np.random.default_rng(1), 0, is_bal=True, effect=eff)
    non = draw_quasar(np.random.default_rng(1), 0, is_bal=False, effect=eff)
    assert bal.params["sf_inf"]["ztf:g"] == pytest.approx(2 * non.params["sf_inf"]["ztf:g"])
    assert bal.params["tau_rest"] == pytest.approx(0.5 * non.params["tau_rest"])


def test_every_class_can_be_drawn_with_a_morphology() -> None:
    rng = np.random.default_rng(2)
    seen = set()
    for kind in ("qso", "qso_bal", "qso_nonbal", "star", "sn", "blazar", "bogus"):
        o = draw_object(rng, 0, kind)
        assert o.label in CLASSES
        assert o.morphology in ("point", "extended", "nuclear", "artifact")
        seen.add(o.label)
    assert {"qso_bal", "qso_nonbal", "star", "sn", "blazar", "bogus"} <= seen
    with pytest.raises(ValueError):
        draw_object(rng, 0, "galaxy")


def test_bal_fraction_is_respected() -> None:
    rng = np.random.default_rng(3)
    labels = [draw_object(rng, i, "qso", bal_fraction=0.13).label for i in range(3000)]
    assert np.mean([lab == "qso_bal" for lab in labels]) == pytest.approx(0.13, abs=0.02)


def test_training_set_uses_plugin_lightcurves_and_spectral_labels() -> None:
    from broker_plugin.alert import LightCurve

    ts = generate_training_set(40, seed=4, bal_fraction=0.5, baseline_days=600.0)
    assert len(ts) == 40
    assert set(np.unique(ts.labels)) <= {0, 1}
    for lc, spec, lab, cls in zip(ts.lightcurves, ts.spectra, ts.labels, ts.classes, strict=True):
        assert set(lc) == {"g", "r"}
        assert all(isinstance(v, LightCurve) and v.kind == "dc" for v in lc.values())
        for v in lc.values():
            assert np.all(np.diff(v.mjd) > 0) and np.all(v.mag_err > 0)
        assert spec is not None
        assert (spec.bi_civ > 0) == bool(lab) == (cls == "qso_bal")
    again = generate_training_set(40, seed=4, bal_fraction=0.5, baseline_days=600.0)
    np.testing.assert_array_equal(ts.labels, again.labels)
    np.testing.assert_array_equal(ts.lightcurves[7]["g"].mag, again.lightcurves[7]["g"].mag)
    np.testing.assert_array_equal(ts.spectra[3].flux, again.spectra[3].flux)
    sub = ts.subset([0, 5])
    assert len(sub) == 2 and sub.truth[1] is ts.truth[5]


def test_training_set_with_contaminants_and_rubin() -> None:
    ts = generate_training_set(30, seed=5, survey="lsst", class_mix={"qso": 0.5, "star": 0.3, "sn": 0.2},
                               baseline_days=730.0)
    assert set(ts.classes) <= {"qso_bal", "qso_nonbal", "star", "sn"}
    for cls, spec, lc in zip(ts.classes, ts.spectra, ts.lightcurves, strict=True):
        assert (spec is not None) == cls.startswith("qso")
        assert set(lc) == {"u", "g", "r", "i", "z", "y"}
