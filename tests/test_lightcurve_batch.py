"""The batch light-curve functions give, record for record, bit for bit what the one-alert functions give.

Why: the service decodes a batch of alerts and builds all their light curves in one vectorised call
(:func:`~broker_plugin.photometry.lightcurve.ztf_lightcurves_batch`,
:func:`~broker_plugin.photometry.lightcurve.rubin_lightcurves_batch`),
while training, replay of single alerts and the other tests build them one alert at a time. A
feature must be the same number on both paths, so every array must be equal to the last bit (NaNs
in the same places, same dtype), with the same bands in the same order, the same kinds, the same
upper limits and the same flags in the same order -- and one alert's contents (another schema
version, a non-numeric value, a duplicate epoch, a borrowed reference) must not change another's.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
import pytest

from broker_plugin.alert import LightCurve, UpperLimits
from broker_plugin.decode import decode_alert, decode_container_records, detect_survey
from broker_plugin.photometry.lightcurve import (
    LightCurveResult,
    rubin_lightcurves,
    rubin_lightcurves_batch,
    ztf_lightcurves,
    ztf_lightcurves_batch,
)

JD = 2459000.5
NAN = float("nan")
_LC_ARRAYS = ("mjd", "mag", "mag_err", "flux", "flux_err")


# ------------------------------------------------------------------------------------ comparison


def _same_array(got: np.ndarray, want: np.ndarray) -> bool:
    """Equal to the last bit: dtype, shape and bytes (stricter than array_equal(equal_nan=True):
    -0.0 vs 0.0 and NaN payloads count too)."""
    return got.dtype == want.dtype and got.shape == want.shape and got.tobytes() == want.tobytes()


def _assert_same_result(got: LightCurveResult, want: LightCurveResult, what: str) -> None:
    """One alert's (light curves, upper limits, flags) from the batch equal the one-alert call's."""
    lcs, uls, flags = got
    w_lcs, w_uls, w_flags = want
    assert flags == w_flags, f"{what}: flags {flags} != {w_flags}"
    assert list(lcs) == list(w_lcs), f"{what}: bands {list(lcs)} != {list(w_lcs)}"
    for band, lc in lcs.items():
        w = w_lcs[band]
        assert isinstance(lc, LightCurve) and (lc.band, lc.kind) == (w.band, w.kind), f"{what} {band}"
        for name in _LC_ARRAYS:
            assert _same_array(getattr(lc, name), getattr(w, name)), f"{what}: {band}.{name} differs"
    assert list(uls) == list(w_uls), f"{what}: upper-limit bands {list(uls)} != {list(w_uls)}"
    for band, ul in uls.items():
        w_ul = w_uls[band]
        assert isinstance(ul, UpperLimits) and ul.band == w_ul.band, f"{what} limits {band}"
        assert _same_array(ul.mjd, w_ul.mjd) and _same_array(ul.limit_mag, w_ul.limit_mag), f"{what} limits {band}"


Batch = Callable[[Sequence[Mapping[str, Any]]], list[LightCurveResult]]
One = Callable[[Mapping[str, Any]], LightCurveResult]


def _assert_batch_matches(records: Sequence[Mapping[str, Any]], batch: Batch, one: One,
                          sizes: Sequence[int] = (1, 7, 500)) -> list[LightCurveResult]:
    """Batches of each size in ``sizes`` and the whole list at once give the one-alert results."""
    want = [one(r) for r in records]
    for size in [*sizes, len(records)]:
        got: list[LightCurveResult] = []
        for i in range(0, len(records), size):
            got += batch(records[i:i + size])
        assert len(got) == len(want)
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _assert_same_result(g, w, f"record {i} (batch size {size})")
    return want


# ------------------------------------------------------------------------------------- real alerts


@pytest.fixture(scope="module")
def real_records(shared_data: Path) -> dict[str, list[Mapping[str, Any]]]:
    """Every real alert record of ../shared/data: the packets as sent and the Spark/Fink rewrites."""
    out: dict[str, list[Mapping[str, Any]]] = {"ztf": [], "lsst": []}
    for survey in ("ztf", "lsst"):
        for path in sorted((shared_data / survey / "alerts").glob("*.avro")):
            record = decode_alert(path.read_bytes()).record  # the mapping as is (a LazyRecord)
            out[survey].append(record)
        for path in sorted((shared_data / survey / "alerts_rewritten").glob("*.avro")):
            out[survey] += [r for r in decode_container_records(path.read_bytes()) if detect_survey(r) == survey]
    return out


def test_batch_matches_one_alert_on_real_ztf_alerts(real_records: dict[str, list[Mapping[str, Any]]]) -> None:
    records = real_records["ztf"]
    assert len(records) >= 100
    want = _assert_batch_matches(records, ztf_lightcurves_batch, ztf_lightcurves)
    assert sum("fp_hists_used" in f for _, _, f in want) >= 5  # forced photometry is exercised


def test_batch_matches_one_alert_on_real_rubin_alerts(real_records: dict[str, list[Mapping[str, Any]]]) -> None:
    records = real_records["lsst"]
    assert len(records) >= 18
    _assert_batch_matches(records, rubin_lightcurves_batch, rubin_lightcurves)


# -------------------------------------------------------------------------------- synthetic alerts


def _synthetic_records(survey: str, n: int, seed: int) -> list[Mapping[str, Any]]:
    iter_night = pytest.importorskip("training.synthetic").iter_night
    return [decode_alert(data).record for data, _ in iter_night(n, survey_mix={survey: 1.0}, seed=seed, stamps=False)]


def test_batch_matches_one_alert_on_synthetic_ztf_alerts() -> None:
    records = _synthetic_records("ztf", 1500, seed=11)
    want = _assert_batch_matches(records, ztf_lightcurves_batch, ztf_lightcurves, sizes=(7, 500))
    flags = [f for _, _, fl in want for f in fl]
    assert flags.count("fp_hists_used") > 1000 and "dc_magnitudes" in flags and "difference_magnitudes" in flags


def test_batch_matches_one_alert_on_synthetic_rubin_alerts() -> None:
    records = _synthetic_records("lsst", 1500, seed=12)
    want = _assert_batch_matches(records, rubin_lightcurves_batch, rubin_lightcurves, sizes=(7, 500))
    assert sum(bool(r.get("prvDiaForcedSources")) for r in records) > 1000
    assert sum("dc_magnitudes" in fl for _, _, fl in want) > 1000


# ------------------------------------------------------------------------------ hand-made records
# (the same small constructors as tests/test_lightcurve.py)

ON_REF = {"distnr": 0.4, "magnr": 18.0, "sigmagnr": 0.02}


def _det(jd: float, fid: Any = 1, magpsf: Any = 19.0, sigmapsf: Any = 0.1, isdiffpos: Any = "t",
         distnr: Any = 5.0, magnr: Any = 21.0, sigmagnr: Any = 0.05, nbad: Any = 0) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "magpsf": magpsf, "sigmapsf": sigmapsf, "isdiffpos": isdiffpos,
            "distnr": distnr, "magnr": magnr, "sigmagnr": sigmagnr, "nbad": nbad, "diffmaglim": 20.5}


def _lim(jd: float, fid: Any = 1, lim: Any = 20.3) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "magpsf": None, "sigmapsf": None, "diffmaglim": lim}


def _fp(jd: float, fid: Any = 1, dn: Any = 500.0, unc: Any = 50.0, status: Any = "0", magnr: Any = -99999.0,
        distnr: Any = -99999.0, sigmagnr: Any = -99999.0) -> dict[str, Any]:
    return {"jd": jd, "fid": fid, "forcediffimflux": dn, "forcediffimfluxunc": unc, "magzpsci": 26.0,
            "procstatus": status, "magnr": magnr, "distnr": distnr, "sigmagnr": sigmagnr}


def _ztf(cand: dict[str, Any] | None, prv: list[Any] | None = None, fp: list[Any] | None = None) -> dict[str, Any]:
    return {"objectId": "ZTF00test", "candid": 1, "candidate": cand, "prv_candidates": prv, "fp_hists": fp}


def _ztf_edge_records() -> list[Mapping[str, Any]]:
    """ZTF records that each take a rare path; meant to share one batch."""
    on_r = {"distnr": 0.3, "magnr": 17.0, "sigmagnr": 0.03}
    faint_ref = {"distnr": 0.3, "magnr": 19.0, "sigmagnr": 0.02}
    return [
        _ztf(_det(JD), None, None),  # no history at all
        _ztf(_det(JD), [], []),  # empty history lists
        {"objectId": "ZTF00nocand", "prv_candidates": [_det(JD - 1), _lim(JD - 2)]},  # no candidate
        _ztf(None, None, [_fp(JD - 1)]),  # candidate None, forced photometry only
        # None values, and rows missing fields (older schemas / projections)
        _ztf({**_det(JD), "distnr": None, "magnr": None, "sigmagnr": None, "nbad": None},
             [{**_det(JD - 1), "sigmapsf": None}, {"jd": None, "fid": None, "magpsf": 19.0},
              {"jd": JD - 1.5, "fid": 1, "magpsf": 19.2, "sigmapsf": 0.1}],
             [_fp(JD - 3, dn=None), {**_fp(JD - 4), "magzpsci": None}, _fp(JD - 5, status=None),
              {"jd": JD - 6, "fid": 1, "procstatus": "0"}]),
        # duplicate epochs (< 1e-6 d apart) with priorities out of order: alert, history, forced
        _ztf(_det(JD, magpsf=18.0),
             [_det(JD + 5e-7, magpsf=19.5), _det(JD - 4e-7, magpsf=19.7), _det(JD - 1),
              _det(JD - 1 + 2e-7, magpsf=20.0)],
             [_fp(JD + 3e-7, dn=800.0), _fp(JD - 1 - 2e-7, dn=900.0), _fp(JD - 2, dn=700.0),
              _fp(JD - 2 + 1e-7, dn=650.0), _fp(JD - 2 - 1e-7, dn=640.0)]),
        # unknown filters in detections, limits and forced photometry
        _ztf(_det(JD, fid=4), [_det(JD - 1, fid=0), _lim(JD - 2, fid=7), _det(JD - 3, fid=2), _lim(JD - 4, fid=3)],
             [_fp(JD - 5, fid=5, dn=900.0), _fp(JD - 6, fid=3, dn=900.0)]),
        # DC bands with points lacking their own reference: borrowed in g (detection and forced) and r
        _ztf(_det(JD, **ON_REF),
             [_det(JD - 1, **ON_REF), _det(JD - 1.5, distnr=0.2, magnr=18.3, sigmagnr=0.04), _det(JD - 2, distnr=2.0),
              _det(JD - 3, fid=2, **on_r), _det(JD - 4, fid=2, distnr=0.5, magnr=17.2, sigmagnr=0.01),
              _det(JD - 5, fid=2, magnr=None), _det(JD - 5.5, fid=2, distnr=0.6, magnr=17.1, sigmagnr=0.02)],
             [_fp(JD - 6, dn=60.0), _fp(JD - 7, fid=2, dn=-40.0, **on_r), _fp(JD - 8, fid=2, dn=30.0)]),
        # exactly half on the reference: DC, borrowed (from another reference than the alert above's)
        _ztf(_det(JD, distnr=0.4, magnr=16.5, sigmagnr=0.03), [_det(JD - 1, distnr=3.0)]),
        # non-positive total flux in a DC band (detection and forced photometry)
        _ztf(_det(JD, magpsf=18.5, isdiffpos="f", **faint_ref), [_det(JD - 1, magpsf=20.0, **faint_ref)],
             [_fp(JD - 2, dn=-5000.0, **faint_ref), _fp(JD - 3, dn=100.0, **faint_ref)]),
        # forced photometry in a diff band: weak rows dropped, strong negative kept, odd procstatus
        _ztf(_det(JD, magpsf=18.0), [],
             [_fp(JD - 1, dn=60.0), _fp(JD - 2, dn=-600.0), _fp(JD - 3, dn=500.0, status=" 0 "),
              _fp(JD - 4, status=0), _fp(JD - 5, dn=-99999.0, unc=-99999.0), _fp(JD - 6, status="56"),
              _fp(JD - 7, dn=-150.0, unc=50.0)]),
        # isdiffpos spellings
        _ztf(_det(JD, isdiffpos="1"), [_det(JD - 1, isdiffpos="0"), _det(JD - 2, isdiffpos=True),
                                       _det(JD - 3, isdiffpos=False), _det(JD - 4, isdiffpos=None),
                                       _det(JD - 5, isdiffpos="T"), _det(JD - 6, isdiffpos="f")]),
        # upper limits: duplicates, non-positive / NaN limits, NaN time, two bands
        _ztf(_det(JD), [_lim(JD - 1), _lim(JD - 1 + 3e-7, lim=20.9), _lim(JD - 1 - 3e-7, lim=20.8),
                        _lim(JD - 2, lim=0.0), _lim(JD - 3, lim=NAN), _lim(JD - 4, fid=2), _lim(NAN),
                        _lim(JD - 5, fid=2, lim=None)]),
        # every detection unusable
        _ztf(_det(JD, nbad=3), [_det(JD - 1, magpsf=99.0), _det(JD - 2, sigmapsf=0.0), _det(JD - 3, magpsf=NAN),
                                _det(NAN), _det(JD - 4, magpsf=-5.0)]),
        # numbers as strings (a record not from a typed schema); "n/a" makes the batch conversion
        # fall back to per-alert conversion, which must leave every other alert as it was
        _ztf({**_det(JD), "magpsf": "18.7"}, [{**_det(JD - 1), "distnr": "n/a"}, _lim(JD - 2, lim="20.1")],
             [{**_fp(JD - 3), "magzpsci": "bad"}, _fp(JD - 4, dn="700.5")]),
        # a read-only mapping (like the decoder's LazyRecord) with mapping rows
        MappingProxyType(_ztf(MappingProxyType(_det(JD, fid=2, **on_r)),
                              [MappingProxyType(_det(JD - 1, fid=2)), MappingProxyType(_lim(JD - 2, fid=2))],
                              [MappingProxyType(_fp(JD - 3, fid=2, **on_r))])),
        # sentinel reference values and extreme magnitudes (overflow to inf, masked)
        _ztf(_det(JD, distnr=-999.0, magnr=-999.0, sigmagnr=-999.0),
             [_det(JD - 1, magpsf=-1e300), _det(JD - 2, magpsf=1e300), _det(JD - 3, magnr=-1e300, distnr=0.1)],
             [_fp(JD - 4, dn=1e300), {**_fp(JD - 5), "magzpsci": -1e300}]),
    ]


def _rubin_row(t: Any, band: Any = "g", psf: Any = 500.0, err: Any = 50.0, sci: Any = None, sci_err: Any = None,
               *, old: bool = False) -> dict[str, Any]:
    if old:  # schemas 3.x/4.x
        return {"midPointTai": t, "filterName": band, "psFlux": psf, "psFluxErr": err}
    return {"midpointMjdTai": t, "band": band, "psfFlux": psf, "psfFluxErr": err, "scienceFlux": sci,
            "scienceFluxErr": sci_err}


def _rubin(src: Any, prv: list[Any] | None = None, forced: list[Any] | None = None) -> dict[str, Any]:
    return {"diaSource": src, "prvDiaSources": prv, "prvDiaForcedSources": forced}


def _rubin_edge_records() -> list[Mapping[str, Any]]:
    """Rubin records of several schema versions and rare paths; meant to share one batch."""
    t = 60000.0
    sci = {"sci": 5000.0, "sci_err": 20.0}
    return [
        _rubin(_rubin_row(t), [_rubin_row(t - 1, "r", 300.0)], [_rubin_row(t - 2, psf=-50.0)]),  # current spelling
        _rubin(_rubin_row(t, old=True), [_rubin_row(t - 1, "u", 50.0, 5.0, old=True),  # v3/v4 spelling
                                         _rubin_row(t - 2, psf=-300.0, old=True)]),
        _rubin(None, None, None),  # no rows at all
        {"diaObject": {"diaObjectId": 7}},  # no source fields at all
        {"prvDiaForcedSources": [_rubin_row(t - 1), _rubin_row(t - 2, "i", 80.0)]},  # forced photometry only
        _rubin("not a record", [_rubin_row(t - 1, old=True)]),  # diaSource not a mapping: history only
        _rubin(_rubin_row(t), [], []),  # empty history lists
        # DC band: most points carry a science flux; the one without is dropped
        _rubin(_rubin_row(t, "r", -100.0, **sci), [_rubin_row(t - 1, "r", 200.0, sci=5300.0, sci_err=25.0)],
               [_rubin_row(t - 2, "r", 50.0)]),
        _rubin(_rubin_row(t, "z", 10.0, **sci), [_rubin_row(t - 1, "z", 20.0)]),  # exactly half: DC
        _rubin(_rubin_row(t, "z", 10.0, sci=NAN, sci_err=20.0), [_rubin_row(t - 1, "z", 20.0, sci=10.0, sci_err=-1.0)]),
        # unknown, missing and non-string bands
        _rubin(_rubin_row(t, "w"), [_rubin_row(t - 1, None), _rubin_row(t - 2, 3), _rubin_row(t - 3, b"g"),
                                    _rubin_row(t - 4, "y")]),
        # duplicate epochs with priorities out of order (forced before history before the source)
        _rubin(_rubin_row(t, psf=1000.0), [_rubin_row(t + 5e-7, psf=900.0), _rubin_row(t - 1, psf=800.0)],
               [_rubin_row(t - 3e-7, psf=700.0), _rubin_row(t - 1 - 2e-7, psf=600.0), _rubin_row(t - 2, psf=500.0),
                _rubin_row(t - 2 + 1e-7, psf=400.0)]),
        # NaN / None times and fluxes, non-positive errors
        _rubin(_rubin_row(NAN), [_rubin_row(None), _rubin_row(t - 1, psf=None), _rubin_row(t - 2, err=0.0),
                                 _rubin_row(t - 3, err=-5.0), _rubin_row(t - 4, psf=NAN), _rubin_row(t - 5)]),
        # spellings mixed within one alert: the first row's spelling is read from every row
        _rubin(_rubin_row(t), [_rubin_row(t - 1, old=True), _rubin_row(t - 2)]),
        _rubin(_rubin_row(t, old=True), [_rubin_row(t - 1), _rubin_row(t - 2, "r", old=True)]),
        # a non-numeric value: the batch conversion falls back to per-alert conversion
        _rubin(_rubin_row(t, psf="abc"), [_rubin_row(t - 1, psf="123.5")]),
        MappingProxyType(_rubin(MappingProxyType(_rubin_row(t, "i", 40.0)),
                                [MappingProxyType(_rubin_row(t - 1, "i"))])),
    ]


def test_ztf_edge_cases_in_one_batch() -> None:
    records = _ztf_edge_records()
    want = _assert_batch_matches(records, ztf_lightcurves_batch, ztf_lightcurves, sizes=(1, 2, 5))
    flags = {f for _, _, fl in want for f in fl}
    # the rare paths really were taken
    assert {"no_history", "dc_magnitudes", "difference_magnitudes", "fp_hists_used", "dc_ref_borrowed",
            "dc_nonpositive_dropped"} <= flags
    dup = want[5][0]["g"]
    assert np.all(np.diff(dup.mjd) > 1e-6) and dup.mag[-1] == pytest.approx(18.0)  # the alert's own won
    assert want[12][1]["g"].limit_mag.tolist() == [20.8]  # three limits of one epoch became the earliest


def test_rubin_edge_cases_in_one_batch() -> None:
    records = _rubin_edge_records()
    want = _assert_batch_matches(records, rubin_lightcurves_batch, rubin_lightcurves, sizes=(1, 2, 5))
    assert {"no_history", "dc_magnitudes", "difference_magnitudes", "dc_points_missing"} <= {
        f for _, _, fl in want for f in fl}
    assert set(want[1][0]) == {"u", "g"}  # the old spelling was read
    assert want[2] == ({}, {}, ["no_history"])


def test_edge_cases_mixed_into_real_like_batches() -> None:
    """Edge records shuffled among ordinary synthetic ones: each alert's result is independent of its
    neighbours and of its position in the batch."""
    rng = random.Random(5)
    for survey, edge, batch, one in (("ztf", _ztf_edge_records(), ztf_lightcurves_batch, ztf_lightcurves),
                                     ("lsst", _rubin_edge_records(), rubin_lightcurves_batch, rubin_lightcurves)):
        records = [*_synthetic_records(survey, 60, seed=21), *edge]
        rng.shuffle(records)
        want = _assert_batch_matches(records, batch, one, sizes=(3, 16))
        for g, w in zip(batch(records[::-1]), want[::-1], strict=True):
            _assert_same_result(g, w, f"{survey} reversed batch")


# ---------------------------------------------------------------------------------- contract


def test_empty_batch() -> None:
    assert ztf_lightcurves_batch([]) == [] and rubin_lightcurves_batch([]) == []


def test_record_that_breaks_the_one_alert_function_breaks_the_batch() -> None:
    """A record the one-alert function cannot read has no result to be identical to: the batch
    function raises too (documented), and the caller redoes the batch alert by alert."""
    bad_ztf = _ztf(_det(JD), [None])
    with pytest.raises(AttributeError):
        ztf_lightcurves(bad_ztf)
    with pytest.raises(AttributeError):
        ztf_lightcurves_batch([_ztf(_det(JD)), bad_ztf])
    bad_rubin = _rubin(_rubin_row(60000.0), [None])
    with pytest.raises(AttributeError):
        rubin_lightcurves(bad_rubin)
    with pytest.raises(AttributeError):
        rubin_lightcurves_batch([_rubin(_rubin_row(60000.0)), bad_rubin])


def _root(a: np.ndarray) -> np.ndarray:
    """The array that owns ``a``'s memory."""
    while isinstance(a.base, np.ndarray):
        a = a.base
    return a


def test_alerts_of_a_batch_share_no_memory() -> None:
    """Each alert's arrays are its own, as from a one-alert call: keeping one alert does not keep the
    whole batch's arrays alive, and writing into one alert's arrays cannot change another's."""
    results = ztf_lightcurves_batch(_ztf_edge_records())
    owners: dict[int, int] = {}  # id of an owning array -> the alert whose arrays it holds
    for i, (lcs, uls, _) in enumerate(results):
        arrays = [getattr(lc, name) for lc in lcs.values() for name in _LC_ARRAYS]
        arrays += [a for ul in uls.values() for a in (ul.mjd, ul.limit_mag)]
        for a in arrays:
            assert a.flags.c_contiguous
            assert owners.setdefault(id(_root(a)), i) == i, f"alert {i} shares memory with alert {owners[id(_root(a))]}"
    assert len(set(owners.values())) > 10
