"""A data-release history gives an alert the years its variability features need, and training sees
the same numbers: the serving path (store + pipeline) and the training path
(:func:`training.lc_history.history_lightcurves`) give identical features from the same points."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from broker_plugin.alert import Alert, LightCurve
from broker_plugin.decode import default_decoder
from broker_plugin.files.dr_lightcurves import LightCurveSet
from broker_plugin.history import HistoryStage, open_store
from broker_plugin.history.dr_import import import_lightcurves
from broker_plugin.models.annotate import Annotator
from broker_plugin.photometry.features import FEATURE_NAMES, compute_features_batch
from broker_plugin.pipeline import process_batch
from training.lc_history import history_lightcurves

#: A real alert whose packet alone is too short for the DRW fit in both bands (DC magnitudes).
SOURCE_ID = "697252840815010000"


@pytest.fixture(scope="module")
def alert_bytes(ztf_alert_files: list[Path]) -> bytes:
    for p in ztf_alert_files:
        data = p.read_bytes()
        a = default_decoder().decode_batch([data])[0]
        if isinstance(a, Alert) and a.source_id == SOURCE_ID:
            return data
    raise AssertionError(f"alert {SOURCE_ID} not in the shared sample")


def _drw_lightcurve(band: str, mean_mag: float, t_end: float, seed: int) -> LightCurve:
    """Three years of a damped random walk (tau 200 d, SF_inf 0.25 mag) at a ZTF-like 3-day cadence,
    ending 30 days before the alert, as a data release would."""
    rng = np.random.default_rng(seed)
    t = np.sort(t_end - 30.0 - rng.uniform(0.0, 3 * 365.25, 360))
    tau, sigma = 200.0, 0.25 / math.sqrt(2.0)
    x = np.empty(t.size)
    x[0] = rng.normal(0.0, sigma)
    for i in range(1, t.size):
        a = math.exp(-(t[i] - t[i - 1]) / tau)
        x[i] = a * x[i - 1] + rng.normal(0.0, sigma * math.sqrt(1 - a * a))
    err = np.full(t.size, 0.02)
    mag = mean_mag + x + rng.normal(0.0, 0.02, t.size)
    flux = 10.0 ** (-0.4 * (mag - 31.4))
    return LightCurve(band, t, mag, err, flux, flux * err / (2.5 / math.log(10.0)), "dc")


@pytest.fixture(scope="module")
def archive(alert_bytes: bytes) -> tuple[Alert, LightCurveSet]:
    alert = default_decoder().decode_batch([alert_bytes])[0]
    assert isinstance(alert, Alert)
    lcset = LightCurveSet()
    lcset["dr-source-1"] = {b: _drw_lightcurve(b, float(np.median(alert.lightcurves[b].mag)), alert.mjd, i)
                            for i, b in enumerate(("g", "r"))}
    lcset.positions["dr-source-1"] = (alert.ra + 0.3 / 3600.0, alert.dec)  # 0.3 arcsec away: the same object
    return alert, lcset


def test_imported_years_make_the_drw_fit_possible(archive: tuple[Alert, LightCurveSet], alert_bytes: bytes) -> None:
    _, lcset = archive
    alone = process_batch(Annotator(None), [alert_bytes]).records[0]
    assert {"g_too_short_for_drw", "r_too_short_for_drw"} <= set(alone["flags"])
    assert alone["features"]["g_drw_tau"] is None
    store = open_store(None)
    counts = import_lightcurves(store, lcset)
    assert counts.associated == 0 and counts.points == 720
    rec = process_batch(Annotator(None), [alert_bytes], history=HistoryStage(store)).records[0]
    for b in ("g", "r"):
        assert f"{b}_too_short_for_drw" not in rec["flags"]
        assert rec["features"][f"{b}_drw_tau"] is not None and math.isfinite(rec["features"][f"{b}_drw_tau"])
    assert rec["history"]["data_release"] == {"g": 360, "r": 360}
    assert rec["history"]["packet"] == alone["n_points"]
    assert rec["history"]["span_days"] > 2 * 365.0


def test_training_and_serving_features_are_the_same_numbers(archive: tuple[Alert, LightCurveSet],
                                                            alert_bytes: bytes, tmp_path: Path) -> None:
    alert, lcset = archive
    store = open_store(str(tmp_path / "h.sqlite"))
    import_lightcurves(store, lcset)
    served = process_batch(Annotator(None), [alert_bytes], history=HistoryStage(store)).records[0]["features"]
    merged = history_lightcurves(alert, lcset["dr-source-1"])
    values, _ = compute_features_batch([merged])
    trained = dict(zip(FEATURE_NAMES, np.asarray(values)[0].tolist(), strict=True))
    for name in FEATURE_NAMES:
        want = trained[name]
        if math.isnan(want):
            assert served[name] is None, name
        else:
            assert served[name] == want, name  # bit for bit, not approximately
    assert alert.n_points() == {"g": 7, "r": 4}  # training's copy left the decoded alert alone
