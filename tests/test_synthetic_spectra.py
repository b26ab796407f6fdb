"""Synthetic spectra and the balnicity index (Weymann+1991)."""

from __future__ import annotations

import numpy as np
import pytest

from training.synthetic.spectra import (
    BRIGHTSKY,
    DLOGLAM,
    FULLREJECT,
    LAM_CIV,
    NODATA,
    Trough,
    balnicity_index,
    balnicity_index_wave,
    generate_spectrum,
    outflow_velocity,
    velocity_from_rest,
)

vgrid = np.arange(0.0, 30000.0, 1.0)


def _box(lo: float, hi: float, flux: float) -> np.ndarray:
    f = np.ones_like(vgrid)
    f[(vgrid >= lo) & (vgrid < hi)] = flux
    return f


def test_hand_made_trough_gives_hand_computed_bi() -> None:
    """A 4,000 km/s box at f = 0.5: deficit 1 - 0.5/0.9 = 0.4444 over (4000 - 2000) km/s (Weymann:
    the first 2,000 km/s from the high-velocity end do not count) = 888.9 km/s; 1777.8 over the
    whole run."""
    f = _box(8000.0, 12000.0, 0.5)
    assert balnicity_index(vgrid, f) == pytest.approx((1 - 0.5 / 0.9) * 2000.0, rel=2e-3)
    assert balnicity_index(vgrid, f, convention="full_run") == pytest.approx((1 - 0.5 / 0.9) * 4000.0, rel=2e-3)


def test_no_trough_and_narrow_trough_give_zero() -> None:
    assert balnicity_index(vgrid, np.ones_like(vgrid)) == 0.0
    narrow = _box(10000.0, 11000.0, 0.2)  # deep but only 1,000 km/s wide
    assert balnicity_index(vgrid, narrow) == 0.0
    assert balnicity_index(vgrid, narrow, convention="full_run") == 0.0
    shallow = _box(5000.0, 15000.0, 0.92)  # wide but never 10% below the continuum
    assert balnicity_index(vgrid, shallow) == 0.0


def test_bi_integrates_only_from_3000_to_25000_kms() -> None:
    f = _box(1000.0, 5000.0, 0.45)  # 2,000 km/s of it inside the window: C never switches on
    assert balnicity_index(vgrid, f) == 0.0
    assert balnicity_index(vgrid, f, convention="full_run") == pytest.approx(0.5 * 2000.0, rel=3e-3)
    g = _box(20000.0, 28000.0, 0.45)  # inside from 20,000 to 25,000: 5,000 km/s run
    assert balnicity_index(vgrid, g) == pytest.approx(0.5 * 3000.0, rel=3e-3)


def test_two_troughs_add() -> None:
    f = _box(5000.0, 8000.0, 0.5) * _box(15000.0, 19000.0, 0.3)
    expect = (1 - 0.5 / 0.9) * 1000.0 + (1 - 0.3 / 0.9) * 2000.0
    assert balnicity_index(vgrid, f) == pytest.approx(expect, rel=3e-3)


def test_wavelength_and_velocity_forms_agree() -> None:
    wave = np.linspace(1350.0, 1560.0, 20000)
    v = velocity_from_rest(wave)
    f = np.where((v > 9000) & (v < 14000), 0.4, 1.0)
    assert balnicity_index_wave(wave, f) == pytest.approx(balnicity_index(v, f), rel=1e-9)
    assert balnicity_index(v, f) == pytest.approx((1 - 0.4 / 0.9) * 3000.0, rel=1e-2)


def test_outflow_velocity_formula() -> None:
    z = 2.0
    assert float(outflow_velocity(LAM_CIV * (1 + z), z)) == pytest.approx(0.0, abs=1e-9)
    r = 1.01  # R = 1549.06 (1+z) / lambda
    expect = 299792.458 * (r**2 - 1) / (r**2 + 1)
    assert float(outflow_velocity(LAM_CIV * (1 + z) / r, z)) == pytest.approx(expect, rel=1e-12)


def test_trough_profile_depth() -> None:
    t = Trough(10000.0, 4000.0, 0.6)
    assert float(t.profile(np.array([10000.0]))[0]) == pytest.approx(1.0, abs=1e-6)
    assert float(t.profile(np.array([20000.0]))[0]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("is_bal", [True, False])
def test_generated_spectra_are_sdss_like_and_labelled_by_bi(is_bal: bool) -> None:
    rng = np.random.default_rng(11)
    for _ in range(25):
        z = float(rng.uniform(1.67, 3.6))
        s = generate_spectrum(z, is_bal, rng, r_mag=19.5)
        assert s.is_bal == is_bal
        assert (s.bi_civ > 0) == is_bal
        assert np.allclose(np.diff(s.loglam.astype(np.float64)), DLOGLAM, atol=1e-6)
        wave = s.wave
        assert wave[0] >= 3599.9 and wave[-1] <= 10400.1
        rest = s.wave_rest
        assert rest[0] >= 1199.9 and rest[-1] <= 2000.1
        masked = s.and_mask != 0
        assert np.all(s.ivar[masked] == 0)
        assert np.all(s.ivar[~masked] > 0)
        assert set(np.unique(s.and_mask)) <= {0, FULLREJECT, BRIGHTSKY, NODATA, FULLREJECT | BRIGHTSKY,
                                               FULLREJECT | NODATA, BRIGHTSKY | NODATA,
                                               FULLREJECT | BRIGHTSKY | NODATA}
        assert s.flux.dtype == np.float32 and s.ivar.dtype == np.float32 and s.and_mask.dtype == np.int32
        assert 2.0 <= s.truth["snr"] <= 10.0
        # 1e-17 erg/s/cm2/A units: an r = 19.5 quasar has a continuum of a few units.
        assert 0.5 < float(np.median(s.unabsorbed)) < 100.0


def test_bal_transmission_reaches_the_drawn_depth() -> None:
    rng = np.random.default_rng(12)
    troughs = [Trough(12000.0, 5000.0, 0.7)]
    s = generate_spectrum(2.5, True, rng, troughs=troughs)
    v = outflow_velocity(s.wave, 2.5)
    inside = np.abs(v - 12000.0) < 1000.0
    ratio = s.model[inside] / s.unabsorbed[inside]
    assert np.allclose(ratio, 0.3, atol=1e-3)
    # 3000 km/s of full depth after the first 2000, plus the soft (250 km/s tanh) edges' share.
    assert 2000.0 < s.bi_civ < 2250.0


def test_spectra_are_deterministic() -> None:
    a = generate_spectrum(2.2, True, np.random.default_rng(13))
    b = generate_spectrum(2.2, True, np.random.default_rng(13))
    np.testing.assert_array_equal(a.flux, b.flux)
    np.testing.assert_array_equal(a.and_mask, b.and_mask)
    assert a.truth["troughs"] == b.truth["troughs"]


def test_spec_lite_round_trip(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from training.synthetic.spectra import write_spec_lite

    catalogues = pytest.importorskip("training.catalogues")
    s = generate_spectrum(2.3, True, np.random.default_rng(14))
    path = tmp_path / catalogues.spec_lite_name(4000, 55500, 123)
    write_spec_lite(path, s, plate=4000, mjd=55500, fiber=123)
    back = catalogues.load_spec_lite(path)
    np.testing.assert_array_equal(back.flux.astype(np.float32), s.flux)
    np.testing.assert_array_equal(back.and_mask, s.and_mask)
    assert np.all(back.ivar[s.and_mask != 0] == 0)
    assert back.meta["plate"] == 4000 and back.meta["z_pipe"] == pytest.approx(2.3, rel=1e-6)
