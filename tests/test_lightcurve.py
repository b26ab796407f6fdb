"""Light-curve building: conversions checked against hand-worked real alerts, the cleaning rules on
small synthetic records, and invariants over every real alert."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_plugin.decode import decode_alert
from broker_plugin.photometry.lightcurve import (
    DC_MAX_DISTNR,
    NJY_ZEROPOINT,
    mag_to_njy,
    rubin_lightcurves,
    ztf_lightcurves,
)

JD0 = 2400000.5


# ------------------------------------------------------------------------- hand-worked real alerts


def test_ztf_dc_magnitude_by_hand(ztf_alert_dir: Path) -> None:
    """ZTF19abtktkd, candid 2475433850315015013 (schema 4.01), the triggering g-band detection.

    From the file: magpsf = 19.524078369140625, sigmapsf = 0.16890162229537964, isdiffpos = 't',
    distnr = 1.1576" (<= 1.5", on a reference source), magnr = 16.340999603271484,
    sigmagnr = 0.01600000075995922, jd = 2460229.9338542.

    By hand, with r = f_diff / f_ref = 10^(-0.4 (magpsf - magnr)):
      magpsf - magnr = 3.1830787658691406  ->  r = 10^(-1.2732315063476562) = 0.05330506701152904
      mag_dc = magnr - 2.5 log10(1 + r) = 16.340999603271484 - 2.5 * 0.0225541734 = 16.28461417
      sigma_dc = sqrt(sigmagnr^2 + (r sigmapsf)^2) / (1 + r)
               = sqrt(0.000256000024 + 0.0090033123^2) / 1.05330506701 = 0.0183591845 / 1.05330506701
               = 0.01743007
      flux = 10^(-0.4 (16.28461417 - 31.4)) = 10^6.046154332 = 1.11212687e6 nJy
    """
    alert = decode_alert((ztf_alert_dir / "kowalski_20231012_2475433850315015013.avro").read_bytes())
    lc = alert.lightcurves["g"]
    assert lc.kind == "dc" and "dc_magnitudes" in alert.flags
    i = int(np.argmin(np.abs(lc.mjd - (2460229.9338542 - JD0))))
    assert lc.mjd[i] == pytest.approx(60229.4338542, abs=1e-7)
    assert lc.mag[i] == pytest.approx(16.28461417, abs=1e-6)
    assert lc.mag_err[i] == pytest.approx(0.01743007, abs=1e-6)
    assert lc.flux[i] == pytest.approx(1.11212687e6, rel=1e-6)
    assert lc.flux_err[i] == pytest.approx(lc.flux[i] * 0.01743007 / (2.5 / math.log(10)), rel=1e-5)


def test_ztf_forced_photometry_by_hand(ztf_alert_dir: Path) -> None:
    """Same alert, r band: no r-band detection, seven procstatus '0' fp_hists rows, all on the
    reference source (distnr 1.04-1.15"), so the band is DC from forced photometry alone.

    Row jd = 2460213.9793171: forcediffimflux = 909.7581176757812 DN, forcediffimfluxunc =
    33.0965690612793 DN, magzpsci = 26.055099487304688, magnr = 15.411999702453613.
      DN -> nJy: 10^(0.4 (31.4 - 26.055099487304688)) = 10^2.1379602050781 = 137.391607567
      difference flux = 909.7581176757812 * 137.391607567 = 124993.130 nJy
      reference flux  = 10^(-0.4 (15.411999702453613 - 31.4)) = 10^6.395200119 = 2484277.575 nJy
      total flux      = 2609270.705 nJy  ->  mag = 31.4 - 2.5 log10(2609270.705) = 15.35870215
    """
    alert = decode_alert((ztf_alert_dir / "kowalski_20231012_2475433850315015013.avro").read_bytes())
    lc = alert.lightcurves["r"]
    assert lc.kind == "dc" and len(lc) == 7 and "fp_hists_used" in alert.flags
    i = int(np.argmin(np.abs(lc.mjd - (2460213.9793171 - JD0))))
    assert lc.flux[i] == pytest.approx(2609270.705, abs=1e-3)
    assert lc.mag[i] == pytest.approx(15.35870215, abs=1e-6)


def test_rubin_psf_flux_to_ab_mag_by_hand(lsst_alert_files: list[Path]) -> None:
    """BOOM wire-format v7.1 alert, diaSourceId 25409136044802067 (g band, MJD 57454.32928).

    psfFlux = 2000.9814453125 nJy, psfFluxErr = 72.05541229248047 nJy:
      log10(2000.9814453125) = log10(2) + 3 + log10(1.00049072265625)
                             = 0.30102999566 + 3 + 0.00021306587 = 3.30124306153
      mag = 31.4 - 2.5 * 3.30124306153 = 23.14689235
      mag_err = 2.5/ln10 * 72.05541229 / 2000.98144531 = 1.08573620 * 0.03601003521 = 0.03909740
    """
    path = next(p for p in lsst_alert_files if "schemaid701" in p.name)
    alert = decode_alert(path.read_bytes())
    lc = alert.lightcurves["g"]
    assert lc.kind == "diff"
    i = int(np.argmin(np.abs(lc.mjd - 57454.32928159722)))
    assert lc.flux[i] == 2000.9814453125
    assert lc.mag[i] == pytest.approx(23.14689235, abs=1e-6)
    assert lc.mag_err[i] == pytest.approx(0.03909740, abs=1e-6)
    # the forced source at the same epoch (psfFlux 1074.79) lost to the detection
    assert 1074.794189453125 not in lc.flux.tolist()


def test_mag_to_njy_zero_point() -> None:
    assert mag_to_njy(NJY_ZEROPOINT) == pytest.approx(1.0)
    assert mag_to_njy(23.9) == pytest.approx(1000.0)  # 1 uJy = 23.9 AB


# --------------------------------------------------------------------------- synthetic ZTF records


def _det(jd: float, fid: int = 1, magpsf: float = 19.0, sigmapsf: float = 0.1, isdiffpos: str = "t",
         distnr: float | None = 5.0, magnr: float | None = 21.0, sigmagnr: float | None = 0.05,
         nbad: int = 0) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "magpsf": magpsf, "sigmapsf": sigmapsf, "isdiffpos": isdiffpos,
            "distnr": distnr, "magnr": magnr, "sigmagnr": sigmagnr, "nbad": nbad, "diffmaglim": 20.5}


def _lim(jd: float, fid: int = 1, lim: float = 20.3) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "magpsf": None, "sigmapsf": None, "diffmaglim": lim}


def _fp(jd: float, fid: int = 1, dn: float = 500.0, unc: float = 50.0, status: str = "0",
        magnr: float = -99999.0, distnr: float = -99999.0, sigmagnr: float = -99999.0) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "forcediffimflux": dn, "forcediffimfluxunc": unc, "magzpsci": 26.0,
            "procstatus": status, "magnr": magnr, "distnr": distnr, "sigmagnr": sigmagnr}


def _ztf(cand: dict, prv: list[dict] | None = None, fp: list[dict] | None = None) -> dict[str, Any]:
    return {"objectId": "ZTF00test", "candid": 1, "candidate": cand, "prv_candidates": prv, "fp_hists": fp}


def test_diff_band_negative_detection_keeps_signed_flux() -> None:
    lcs, _, flags = ztf_lightcurves(_ztf(_det(2459000.5, isdiffpos="f"), [_det(2458999.5)]))
    lc = lcs["g"]
    assert lc.kind == "diff" and "difference_magnitudes" in flags
    np.testing.assert_allclose(lc.flux, [mag_to_njy(19.0), -mag_to_njy(19.0)])
    assert lc.mag[0] == pytest.approx(19.0) and math.isnan(lc.mag[1]) and math.isnan(lc.mag_err[1])
    assert lc.flux_err[1] > 0


def test_dc_band_drops_nonpositive_total_flux() -> None:
    on_ref = {"distnr": 0.3, "magnr": 19.0, "sigmagnr": 0.02}
    # a negative difference brighter than the reference itself is unphysical: dropped and flagged
    rec = _ztf(_det(2459000.5, magpsf=18.5, isdiffpos="f", **on_ref), [_det(2458999.5, magpsf=20.0, **on_ref)])
    lcs, _, flags = ztf_lightcurves(rec)
    assert lcs["g"].kind == "dc" and len(lcs["g"]) == 1 and "dc_nonpositive_dropped" in flags
    f = 10 ** (-0.4 * 19.0) + 10 ** (-0.4 * 20.0)
    assert lcs["g"].mag[0] == pytest.approx(-2.5 * math.log10(f))


def test_dc_decided_per_band_and_reference_borrowed() -> None:
    on_ref = {"distnr": 0.4, "magnr": 18.0, "sigmagnr": 0.02}
    prv = [_det(2458990.5, **on_ref), _det(2458991.5, distnr=2.0),  # g: 2 of 3 on the reference
           _det(2458992.5, fid=2, distnr=3.0), _det(2458993.5, fid=2, distnr=4.0)]  # r: none
    lcs, _, flags = ztf_lightcurves(_ztf(_det(2459000.5, **on_ref), prv))
    assert (lcs["g"].kind, lcs["r"].kind) == ("dc", "diff")
    assert {"dc_magnitudes", "difference_magnitudes", "dc_ref_borrowed"} <= set(flags)
    # the off-reference g point borrowed magnr = 18.0: same total as the other two (same magpsf)
    np.testing.assert_allclose(lcs["g"].flux, lcs["g"].flux[0])
    assert DC_MAX_DISTNR == 1.5


def test_upper_limits_kept_apart_sorted_and_bad_points_dropped() -> None:
    prv = [_lim(2458995.5, lim=20.1), _lim(2458990.5, lim=20.2), _lim(2458992.5, fid=2, lim=19.9),
           _det(2458993.5, sigmapsf=0.0), _det(2458994.5, nbad=2), _det(2458996.5, magpsf=float("nan")),
           _det(2458997.5)]
    lcs, uls, flags = ztf_lightcurves(_ztf(_det(2459000.5), prv))
    np.testing.assert_allclose(lcs["g"].mjd, [2458997.5 - JD0, 2459000.5 - JD0])
    np.testing.assert_allclose(uls["g"].mjd, [2458990.5 - JD0, 2458995.5 - JD0])
    np.testing.assert_allclose(uls["g"].limit_mag, [20.2, 20.1])
    assert uls["r"].limit_mag.tolist() == [19.9]
    assert "r" not in lcs and "no_history" not in flags


def test_duplicate_epochs_keep_the_alert_detection() -> None:
    cand = _det(2459000.5, magpsf=18.0)
    prv = [_det(2459000.5 + 5e-7, magpsf=19.5), _det(2458999.5)]
    lcs, _, _ = ztf_lightcurves(_ztf(cand, prv))
    assert len(lcs["g"]) == 2
    assert lcs["g"].mag[-1] == pytest.approx(18.0)
    assert np.all(np.diff(lcs["g"].mjd) > 0)


def test_forced_photometry_rules() -> None:
    fp = [_fp(2458990.5, dn=500.0),  # S/N 10: kept in a diff band
          _fp(2458991.5, dn=60.0),  # S/N 1.2: not a detection, dropped in a diff band
          _fp(2458992.5, dn=900.0, status="61"),  # failed processing: never used
          _fp(2459000.5, dn=800.0),  # same epoch as the alert's own detection: the detection wins
          _fp(2458993.5, dn=-99999.0, unc=-99999.0)]  # "no measurement"
    lcs, _, flags = ztf_lightcurves(_ztf(_det(2459000.5, magpsf=18.0), [], fp))
    lc = lcs["g"]
    assert lc.kind == "diff" and "fp_hists_used" in flags
    np.testing.assert_allclose(lc.mjd, [2458990.5 - JD0, 2459000.5 - JD0])
    assert lc.flux[0] == pytest.approx(500.0 * 10 ** (0.4 * (NJY_ZEROPOINT - 26.0)))
    assert lc.mag[1] == pytest.approx(18.0)
    # on the reference source every good row counts (the quiet epochs too), reference added
    ref = {"magnr": 17.0, "distnr": 0.2, "sigmagnr": 0.01}
    lcs, _, _ = ztf_lightcurves(_ztf(_det(2459000.5, magpsf=18.0, **ref), [], [_fp(2458991.5, dn=60.0, **ref)]))
    assert lcs["g"].kind == "dc" and len(lcs["g"]) == 2
    assert lcs["g"].flux[0] == pytest.approx(mag_to_njy(17.0) + 60.0 * 10 ** (0.4 * (NJY_ZEROPOINT - 26.0)))


def test_no_history_flag() -> None:
    _, uls, flags = ztf_lightcurves(_ztf(_det(2459000.5), None))
    assert "no_history" in flags and uls == {}


# -------------------------------------------------------------------------- synthetic Rubin records


def test_rubin_old_field_names_and_negative_flux() -> None:
    """v3/v4 spell midPointTai, filterName, psFlux; a negative difference flux keeps NaN magnitude."""
    src = {"diaSourceId": 1, "midPointTai": 59000.0, "filterName": "g", "psFlux": -300.0, "psFluxErr": 30.0}
    prv = [{"diaSourceId": 2, "midPointTai": 58990.0, "filterName": "g", "psFlux": 400.0, "psFluxErr": 40.0},
           {"diaSourceId": 3, "midPointTai": 58991.0, "filterName": "u", "psFlux": 50.0, "psFluxErr": 5.0}]
    lcs, uls, _ = rubin_lightcurves({"diaSource": src, "prvDiaSources": prv})
    assert set(lcs) == {"g", "u"} and uls == {}
    g = lcs["g"]
    np.testing.assert_allclose(g.mjd, [58990.0, 59000.0])
    np.testing.assert_allclose(g.flux, [400.0, -300.0])
    assert g.mag[0] == pytest.approx(NJY_ZEROPOINT - 2.5 * math.log10(400.0)) and math.isnan(g.mag[1])


def test_rubin_science_flux_makes_dc_band() -> None:
    def row(t: float, psf: float, sci: float | None) -> dict[str, Any]:
        return {"midpointMjdTai": t, "band": "r", "psfFlux": psf, "psfFluxErr": 10.0,
                "scienceFlux": sci, "scienceFluxErr": None if sci is None else 20.0}

    rec = {"diaSource": row(60000.0, -100.0, 5000.0), "prvDiaSources": [row(59990.0, 200.0, 5300.0)],
           "prvDiaForcedSources": [row(59995.0, 50.0, None)]}
    lcs, _, flags = rubin_lightcurves(rec)
    assert lcs["r"].kind == "dc" and "dc_points_missing" in flags
    np.testing.assert_allclose(lcs["r"].flux, [5300.0, 5000.0])
    # mostly without scienceFlux (older schemas): difference fluxes
    rec["prvDiaSources"] = [row(59990.0, 200.0, None)]
    lcs, _, flags = rubin_lightcurves(rec)
    assert lcs["r"].kind == "diff" and "difference_magnitudes" in flags
    np.testing.assert_allclose(lcs["r"].flux, [200.0, 50.0, -100.0])


# ------------------------------------------------------------------------------ real-data invariants


def _check_invariants(lc: Any) -> None:
    n = len(lc)
    assert n >= 1
    for arr in (lc.mjd, lc.mag, lc.mag_err, lc.flux, lc.flux_err):
        assert arr.shape == (n,) and arr.dtype == np.float64
    assert np.all(np.diff(lc.mjd) > 1e-6)
    assert np.all(np.isfinite(lc.flux)) and np.all(lc.flux_err > 0) and np.all(np.isfinite(lc.flux_err))
    pos = lc.flux > 0
    np.testing.assert_allclose(lc.mag[pos], NJY_ZEROPOINT - 2.5 * np.log10(lc.flux[pos]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(lc.mag_err[pos], 2.5 / np.log(10) * lc.flux_err[pos] / lc.flux[pos], rtol=1e-9)
    assert np.all(np.isnan(lc.mag[~pos])) and np.all(np.isnan(lc.mag_err[~pos]))
    assert lc.kind in ("dc", "diff")
    if lc.kind == "dc":
        assert np.all(pos)


def test_invariants_on_every_real_alert(ztf_alert_files: list[Path], lsst_alert_files: list[Path]) -> None:
    n_dc = n_diff = 0
    for path in [*ztf_alert_files, *lsst_alert_files]:
        alert = decode_alert(path.read_bytes())
        for band, lc in alert.lightcurves.items():
            assert lc.band == band
            _check_invariants(lc)
            n_dc += lc.kind == "dc"
            n_diff += lc.kind == "diff"
        for band, ul in alert.upper_limits.items():
            assert ul.band == band and ul.mjd.shape == ul.limit_mag.shape
            assert np.all(np.diff(ul.mjd) > 0) and np.all(np.isfinite(ul.limit_mag))
    assert n_dc > 20 and n_diff > 20  # both kinds occur in the real sample


def test_upper_limits_match_null_magpsf_entries(ztf_alert_dir: Path) -> None:
    alert = decode_alert((ztf_alert_dir / "kowalski_20231012_2475433850315015013.avro").read_bytes())
    nulls = [p for p in alert.record["prv_candidates"] if p["magpsf"] is None]
    assert sum(len(u.mjd) for u in alert.upper_limits.values()) == len({(p["jd"], p["fid"]) for p in nulls})
