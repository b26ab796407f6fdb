"""``bal-broker train`` end to end (synthetic and real formats, tiny sizes, the candidate scorer at its
TINY settings), the light-curve histories (``--lc-history``), and the ONNX parity of every exported
model (<= 1e-5 against its Python reference). Sizes are kept small so the module runs in about a
minute on two cores; the figures on a full-size run are in the default bundle's report."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

pytest.importorskip("sklearn")
pytest.importorskip("imblearn")
pytest.importorskip("skl2onnx")
pytest.importorskip("torch")

from broker_plugin.cli import main
from broker_plugin.models.bundle import ModelBundle
from broker_plugin.models.inference import BundleStage
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION, compute_features_batch
from training import export
from training.fusion import (
    AttentionConfig,
    LateFusion,
    fit_attention_fusion,
    fit_late_fusion,
)
from training.lc_classifier import (
    LCClassifierConfig,
    MedianImputer,
    balanced_downsample,
    fit_lc_classifier,
    threshold_probe_inputs,
)
from training.lc_history import HISTORY_MIXES, KINDS, kind_counts, truncate_lightcurves, window_copies
from training.synthetic import generate_training_set
from training.train import scorer_settings, synthetic_dataset

TINY = ["--n-estimators", "20", "--epochs", "15", "--cv-folds", "3", "--no-figures"]


@pytest.fixture(scope="module")
def tiny_set() -> Any:
    """A small synthetic set with a high BAL fraction, so every fold has BALs."""
    return generate_training_set(240, seed=11, bal_fraction=0.3)


@pytest.fixture(scope="module")
def tiny_features(tiny_set: Any) -> np.ndarray:
    return np.asarray(compute_features_batch(tiny_set.lightcurves)[0], dtype=np.float64)


@pytest.fixture(scope="module")
def synthetic_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("train") / "bundle"
    import io
    from contextlib import redirect_stderr

    err = io.StringIO()
    with redirect_stderr(err):
        assert main(["train", "--synthetic", "240", "--seed", "7", "--bal-fraction", "0.3", "--out", str(out),
                     *TINY]) == 0
    return out, err.getvalue()


# ------------------------------------------------------------------------------ end to end


def test_train_synthetic_writes_a_bundle_the_plugin_loads(synthetic_bundle: tuple[Path, str]) -> None:
    out, log = synthetic_bundle
    # progress as plain log lines when stderr is not a terminal
    assert "bal-broker train: [1/11] data: 240 synthetic objects" in log
    assert "[10/11] candidate scorer: cutout_encoder, ranking_head" in log
    assert "[11/11] bundle and report" in log
    assert "torchvision" not in log  # the exporter's irrelevant warnings are silenced
    for name in ("bal_lc.onnx", "spectral.onnx", "fusion_late.onnx", "fusion_attention.onnx", "catalogue.npz",
                 "cutout_encoder.onnx", "ranking_head.onnx", "manifest.yaml", "README.md", "report/report.md",
                 "report/metrics.json"):
        assert (out / name).is_file(), name
    assert not (out / "report" / "scorer_embedding.png").exists()  # --no-figures
    assert not list(out.parent.glob(".bundle.staging-*")), "staging directory left behind"

    bundle = ModelBundle.load(out)
    assert set(bundle.sessions) == {"bal_lc", "spectral", "fusion_late", "fusion_attention", "cutout_encoder",
                                    "ranking_head"}
    assert bundle.model_version == "bal-synthetic-0.1.0"
    stage = BundleStage(bundle)
    assert stage.fusion_role == "fusion_attention" and stage.min_points == 5 and stage.threshold == 0.5
    assert stage.has_candidate_scorer
    assert bundle.catalogue is not None and len(bundle.catalogue) == 240
    assert bundle.catalogue.embedding.shape[1] == bundle.manifest["catalogue"]["embedding_dim"]

    m = yaml.safe_load((out / "manifest.yaml").read_text())
    head = m["bundle"]
    assert head["trained_on"] == "synthetic" and head["candidate_threshold"] == 0.5
    assert head["training_command"].startswith("bal-broker train --synthetic 240 --seed 7")
    lc = m["models"]["bal_lc"]
    assert lc["feature_names"] == list(FEATURE_NAMES) and lc["feature_version"] == FEATURE_VERSION
    assert lc["inputs"] == [{"name": "features", "shape": [None, len(FEATURE_NAMES)], "dtype": "float32"}]
    assert {"name": "probabilities", "shape": [None, 2], "dtype": "float32"} in lc["outputs"]
    assert lc["min_points"] == 5
    td = lc["training_data"]
    assert td["kind"] == "synthetic" and td["seed"] == 7 and td["n_test"] == 60 and td["n_train"] == 180
    assert td["generator"]["bal_effect"]["ebv_mean"] > 0
    # --lc-history mixed (the default): recorded with its counts, each part's generator settings
    assert td["lc_history"]["mode"] == "mixed" and td["lc_history"]["counts"] == {"dr": 96, "ztf_alert": 96,
                                                                                   "lsst_alert": 48}
    assert td["lc_history"]["window_days"] == {"ztf_alert": 30.0, "lsst_alert": 365.0}
    parts = td["generator"]["parts"]
    assert parts["dr"]["photometry"] == "dr" and parts["ztf_alert"]["photometry"] == "packet"
    assert parts["lsst_alert"]["survey"] == "lsst" and parts["ztf_alert"]["ztf_no_forced_fraction"] == 0.5
    assert head["training_config"]["lc_history"] == "mixed"
    by_hist = lc["metrics"]["test_by_lc_history"]
    assert set(by_hist) == {"dr", "ztf_alert", "lsst_alert"} and all(v["in_training"] for v in by_hist.values())
    assert sum(v["n_objects"] for v in by_hist.values()) == 60
    assert "test_by_lc_history" in m["models"]["fusion_attention"]["metrics"]
    assert 0 < td["bal_fraction"] < 1 and td["n_bal"] + td["n_nonbal"] == td["n_fit"]
    att = m["models"]["fusion_attention"]
    assert [i["name"] for i in att["inputs"]] == ["lc_features", "spec_embedding"]
    assert att["feature_names"] == list(FEATURE_NAMES)
    assert "feature_names" not in m["models"]["fusion_late"] and "feature_names" not in m["models"]["spectral"]
    for role in ("bal_lc", "spectral", "fusion_late", "fusion_attention"):
        entry = m["models"][role]
        assert entry["metrics"]["onnx_parity_max_abs"] <= 1e-5, role
        assert entry["metrics"]["cv"]["folds"] == 3, role
        assert set(entry["metrics"]["test_common"]["bal"]) == {"precision", "recall", "f1"}

    # the candidate scorer, through the extra_models hook, at TINY settings (N <= 400)
    rh, ce = m["models"]["ranking_head"], m["models"]["cutout_encoder"]
    assert rh["encoder_sha256"] == ce["sha256"] and rh["meta_names"][-1] == "survey_lsst"
    assert rh["training_data"]["n_alerts"] == 160 and ce["config"]["epochs"] == 2
    assert rh["metrics"]["onnx_max_abs_diff"] <= 1e-5
    assert "combine" in head["decision_rule"]

    report = (out / "report" / "report.md").read_text()
    assert "Trained on synthetic data" in report and "82.35%" in report and "88.52%" in report
    assert "What this bundle is and is not good for" in report
    assert "## Light curve only, by light-curve history" in report and "ZTF alert (30-day history)" in report
    assert "## Candidate scorer" in report and "random encoder" in report
    assert "synthetic" in (out / "README.md").read_text().lower()


def test_train_can_replace_a_bundle_but_not_an_unrelated_directory(
    synthetic_bundle: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = tmp_path / "notes"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    assert main(["train", "--synthetic", "100", "--out", str(other), "-q", *TINY]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not empty" in err[0]
    assert (other / "keep.txt").read_text() == "mine"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        ([], "no training data"),
        (["--synthetic", "100", "--dr16q", "x.fits"], "either --synthetic"),
        (["--dr16q", "x.fits"], "all three"),
        (["--synthetic", "10"], "at least"),
        (["--dr16q", "nope.fits", "--spectra", ".", "--lightcurves", "."], "not found"),
    ],
)
def test_train_usage_errors_exit_2_with_one_line(
    argv: list[str], message: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["train", *argv, "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bal-broker: error: ") and message in err[0], err


def _write_real_inputs(root: Path, n: int = 110, seed: int = 21) -> dict[str, Any]:
    """DR16Q-like FITS + spec-lite files + an IRSA ZTF CSV, made from synthetic objects with known labels.

    Some objects have no spectrum file, some no light curve, one row is unlabelled (BI_CIV = -1) and
    one light-curve source matches no quasar: the real-data path must cope with all of them."""
    from astropy.io import fits

    from training.catalogues import spec_lite_name
    from training.synthetic.spectra import write_spec_lite

    ts = generate_training_set(n, seed=seed, bal_fraction=0.35)
    rng = np.random.default_rng(seed)
    ra = np.array([t["ra"] for t in ts.truth])
    dec = np.array([t["dec"] for t in ts.truth])
    plate = 5000 + np.arange(n) // 50
    mjd = np.full(n, 56000)
    fiber = 1 + np.arange(n) % 50
    bi = np.where(ts.labels == 1, 500.0 + 100 * rng.random(n), 0.0)
    bi[3] = -1.0  # not measured: must be dropped, not treated as non-BAL
    names = np.array([f"{i:06d}.00+000000.0" for i in range(n)])
    cols = [
        fits.Column("SDSS_NAME", "18A", array=names), fits.Column("RA", "D", array=ra),
        fits.Column("DEC", "D", array=dec), fits.Column("Z", "D", array=ts.z),
        fits.Column("PLATE", "J", array=plate.astype(np.int32)), fits.Column("MJD", "J", array=mjd.astype(np.int32)),
        fits.Column("FIBERID", "J", array=fiber.astype(np.int32)), fits.Column("BI_CIV", "D", array=bi),
    ]
    dr16q = root / "DR16Q_v4.fits"
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(cols, name="CATALOG")]).writeto(dr16q)

    spec_dir = root / "spectra"
    spec_dir.mkdir()
    no_spec = set(range(0, n, 9))
    for i in range(n):
        if i in no_spec or ts.spectra[i] is None:
            continue
        sub = spec_dir / f"{plate[i]:04d}"  # nested by plate, as on the SDSS SAS
        sub.mkdir(exist_ok=True)
        write_spec_lite(sub / spec_lite_name(plate[i], mjd[i], fiber[i]), ts.spectra[i], plate=int(plate[i]),
                        mjd=int(mjd[i]), fiber=int(fiber[i]), ra=float(ra[i]), dec=float(dec[i]))

    lc_dir = root / "lightcurves"
    lc_dir.mkdir()
    no_lc = set(range(4, n, 11)) | {i for i in range(n) if not any(len(v) for v in ts.lightcurves[i].values())}
    lines = ["oid,expid,hjd,mjd,mag,magerr,catflags,filtercode,ra,dec"]
    for i in range(n):
        if i in no_lc:
            continue
        for b, code in (("g", "zg"), ("r", "zr")):
            lc = ts.lightcurves[i].get(b)
            if lc is None:
                continue
            oid = 600000000000000 + 10 * i + (1 if b == "g" else 2)
            for t, m, e in zip(lc.mjd, lc.mag, lc.mag_err, strict=True):
                jitter = rng.normal(0, 0.1 / 3600, 2)
                lines.append(f"{oid},{int(t * 1000) % 10**8},{t + 2400000.5:.6f},{t:.6f},{m:.4f},{e:.4f},0,{code},"
                             f"{ra[i] + jitter[0]:.7f},{dec[i] + jitter[1]:.7f}")
    lines.append("699999999999999,1,2459000.5,59000.0,19.0,0.05,0,zg,200.0,-30.0")  # matches no quasar
    (lc_dir / "irsa_lightcurves.csv").write_text("\n".join(lines) + "\n")
    return {"dr16q": dr16q, "spectra": spec_dir, "lightcurves": lc_dir, "n": n, "no_spec": no_spec, "no_lc": no_lc}


def test_train_on_real_formats_end_to_end(tmp_path: Path) -> None:
    (tmp_path / "in").mkdir()
    inputs = _write_real_inputs(tmp_path / "in")
    out = tmp_path / "real_bundle"
    assert main(["train", "--dr16q", str(inputs["dr16q"]), "--spectra", str(inputs["spectra"]),
                 "--lightcurves", str(inputs["lightcurves"]), "--out", str(out), "--seed", "3", "-q",
                 "--lc-history", "alert", "--no-scorer", *TINY]) == 0
    bundle = ModelBundle.load(out)
    m = bundle.manifest
    assert m["bundle"]["trained_on"] == "real" and bundle.name == "bal-dr16q"
    # --no-scorer: no scorer models, the BAL-probability rule; the choice is in the recorded command
    assert "cutout_encoder" not in bundle.sessions and not BundleStage(bundle).has_candidate_scorer
    assert "combine" not in m["bundle"]["decision_rule"] and "--no-scorer" in m["bundle"]["training_command"]
    # --lc-history alert on real light curves: cut windows; the left-out data-release kind is evaluated on
    # the held-out objects' full light curves
    lh = m["models"]["bal_lc"]["training_data"]["lc_history"]
    assert lh["mode"] == "alert" and set(lh["counts"]) == {"ztf_alert", "lsst_alert"}
    assert lh["ztf_no_forced_fraction"] is None and "truncate" in lh["method"]
    by_hist = m["models"]["bal_lc"]["metrics"]["test_by_lc_history"]
    n_test = m["models"]["bal_lc"]["training_data"]["n_test"]
    assert by_hist["dr"]["in_training"] is False and by_hist["dr"]["n_objects"] == n_test
    src = m["models"]["bal_lc"]["training_data"]["sources"]
    assert src["label_source"] == "BI_CIV" and src["labelled"] == inputs["n"] - 1
    # every light-curve source of a labelled quasar is matched (row 3 is unlabelled; one source is a stranger)
    assert src["matched_lightcurves"] == inputs["n"] - len(inputs["no_lc"] | {3})
    assert src["lightcurve_sources"] == inputs["n"] - len(inputs["no_lc"]) + 1
    # the catalogue holds exactly the labelled objects with a usable spectrum, under their SDSS names
    n_spec = sum(1 for i in range(inputs["n"]) if i not in inputs["no_spec"] and i != 3)
    assert bundle.catalogue is not None and len(bundle.catalogue) == n_spec
    ids = set(bundle.catalogue.ids.tolist())
    assert "000000.00+000000.0" not in ids and "000003.00+000000.0" not in ids  # no file / unlabelled
    assert "000001.00+000000.0" in ids
    report = (out / "report" / "report.md").read_text()
    assert "Trained on synthetic data" not in report and "missing" in report  # spectra without files counted


# ------------------------------------------------------------------------------------ parity


def test_brf_onnx_parity_including_thresholds_and_missing_values(tiny_set: Any, tiny_features: np.ndarray) -> None:
    y = tiny_set.labels.astype(int)
    X = tiny_features.copy()
    X[::7, 15] = np.nan  # make sure the indicator columns exist and are exercised
    clf = fit_lc_classifier(X, y, LCClassifierConfig(n_estimators=25, max_depth=8), seed=1)
    imp = clf.pipeline.named_steps["impute"]
    assert 15 in imp.indicator_features_.tolist()
    model = clf.to_onnx()
    assert [o.name for o in model.graph.output] == ["label", "probabilities"]
    probe = threshold_probe_inputs(clf, seed=1)
    rows = np.vstack([X.astype(np.float32), probe, np.full((3, X.shape[1]), np.nan, dtype=np.float32)])
    got = export.run(model, {"features": rows}, "probabilities")
    assert got.shape == (rows.shape[0], 2)
    diff = export.check_parity("bal_lc", got[:, 1], clf.predict_proba(rows))
    assert diff <= 1e-5
    np.testing.assert_allclose(got.sum(axis=1), 1.0, atol=1e-6)


def test_median_imputer_keeps_the_column_count_and_matches_its_graph() -> None:
    X = np.array([[1.0, np.nan, 3.0], [np.nan, np.nan, 5.0], [2.0, np.nan, 4.0]], dtype=np.float32)
    imp = MedianImputer(add_indicator=True).fit(X)
    assert imp.statistics_.tolist() == [1.5, 0.0, 4.0]  # all-NaN column -> 0, not dropped
    assert imp.indicator_features_.tolist() == [0, 1]
    out = imp.transform(X)
    assert out.shape == (3, 5) and not np.isnan(out).any()
    assert out[:, 3:].tolist() == [[0, 1], [1, 1], [0, 1]]


def test_late_fusion_parity_and_weights() -> None:
    rng = np.random.default_rng(0)
    n = 2000
    y = (rng.random(n) < 0.2).astype(int)
    # a spectrum that separates the classes well, a light curve that barely does
    p_spec = 1 / (1 + np.exp(-(3.0 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    p_lc = 1 / (1 + np.exp(-(0.4 * (2 * y - 1) + rng.normal(0, 1.5, n))))
    late = fit_late_fusion(p_lc, p_spec, y)
    assert late.w_spec > late.w_lc > 0 and late.spectral_share > 0.6
    model = late.to_onnx()
    pl = np.concatenate([p_lc, [np.nan, 0.0, 1.0, 1e-9, 0.5]]).astype(np.float32)
    ps = np.concatenate([p_spec, [0.9, 0.0, 1.0, 1.0 - 1e-9, np.nan]]).astype(np.float32)
    got = export.run(model, {"p_lc": pl, "p_spec": ps}, "probability")
    assert got.shape == pl.shape and np.isfinite(got).all()
    assert export.check_parity("fusion_late", got, late.predict(pl, ps)) <= 1e-5
    # NaN p_lc means "no light-curve evidence": the spectrum alone decides
    alone = LateFusion(late.w_lc, late.w_spec, late.bias).predict(np.array([np.nan]), np.array([0.9]))
    assert alone[0] == pytest.approx(1 / (1 + math.exp(-(late.w_spec * math.log(9) + late.bias))), rel=1e-6)


def test_attention_fusion_parity_nan_handling_and_determinism(tiny_set: Any, tiny_features: np.ndarray) -> None:
    rng = np.random.default_rng(3)
    y = tiny_set.labels.astype(int)
    E = rng.normal(size=(y.size, 6)) + 1.5 * y[:, None] * np.array([1, -1, 0, 0, 0.5, 0])
    cfg = AttentionConfig(epochs=8, patience=8)
    a = fit_attention_fusion(tiny_features, E, y, cfg, seed=5)
    b = fit_attention_fusion(tiny_features, E, y, cfg, seed=5)
    np.testing.assert_array_equal(a.predict_proba(tiny_features, E), b.predict_proba(tiny_features, E))
    model = a.to_onnx()
    assert [i.name for i in model.graph.input] == ["lc_features", "spec_embedding"]
    assert [o.name for o in model.graph.output] == ["probability", "attention"]
    assert not any(t.data_location == 1 for t in model.graph.initializer)  # no external data
    X = np.vstack([tiny_features, np.full((5, tiny_features.shape[1]), np.nan)]).astype(np.float32)
    Ea = np.vstack([E, E[:5]]).astype(np.float32)
    out = export.run(model, {"lc_features": X, "spec_embedding": Ea})
    assert out["probability"].shape == (X.shape[0], 1) and out["attention"].shape == (X.shape[0], 2)
    assert np.isfinite(out["probability"]).all()
    assert export.check_parity("fusion_attention", out["probability"], a.predict_proba(X, Ea)) <= 1e-5
    assert export.check_parity("attention weights", out["attention"], a.attention(X, Ea)) <= 1e-5
    np.testing.assert_allclose(out["attention"].sum(axis=1), 1.0, atol=1e-6)


def test_balanced_downsample_matches_the_bal_distribution() -> None:
    rng = np.random.default_rng(1)
    n = 4000
    y = (rng.random(n) < 0.12).astype(int)
    z = np.where(y == 1, rng.normal(2.5, 0.2, n), rng.normal(2.0, 0.4, n))
    mag = rng.normal(19.5, 0.6, n)
    keep = balanced_downsample(np.column_stack([z, mag]), y, ratio=1.0, seed=0)
    assert set(np.flatnonzero(y == 1).tolist()) <= set(keep.tolist())  # every BAL kept
    kept_non = keep[y[keep] == 0]
    assert kept_non.size <= int(y.sum()) + 64
    # non-BALs now follow the BALs in z (the unbalanced set did not)
    assert abs(np.median(z[kept_non]) - np.median(z[y == 1])) < 0.1 < abs(np.median(z[y == 0]) - np.median(z[y == 1]))


# ------------------------------------------------------------------------------ light-curve histories


def test_kind_counts_follow_the_mixes() -> None:
    for mode, mix in HISTORY_MIXES.items():
        for n in (1, 7, 240, 6000):
            counts = kind_counts(n, mode)
            assert sum(counts.values()) == n and set(counts) == set(mix)
            for k, f in mix.items():
                assert abs(counts[k] - n * f) < 1
    with pytest.raises(ValueError):
        kind_counts(10, "weekly")


def test_truncate_lightcurves_keeps_an_alert_window(tiny_set: Any) -> None:
    lcs = tiny_set.lightcurves[0]
    rng = np.random.default_rng(0)
    for _ in range(20):
        cut = truncate_lightcurves(lcs, 30.0, rng)
        times = np.concatenate([lc.mjd for lc in cut.values()])
        assert times.size and times.max() - times.min() < 30.0
        end = times.max()
        for b, lc in cut.items():
            assert len(lc) and lc.kind == lcs[b].kind
            full = lcs[b]
            inside = (full.mjd > end - 30.0) & (full.mjd <= end)
            np.testing.assert_array_equal(lc.mjd, full.mjd[inside])
            np.testing.assert_array_equal(lc.mag, full.mag[inside])
    assert truncate_lightcurves({}, 30.0, rng) == {}
    a, b = window_copies(tiny_set.lightcurves[:5], "ztf_alert", 1), window_copies(tiny_set.lightcurves[:5],
                                                                                  "ztf_alert", 1)
    assert [{k: v.mjd.tolist() for k, v in x.items()} for x in a] == [{k: v.mjd.tolist() for k, v in x.items()}
                                                                      for x in b]


def test_synthetic_alert_histories_are_short_and_decoded_by_the_plugin() -> None:
    data = synthetic_dataset(60, 5, bal_fraction=0.3, lc_history="dr", n_eval=40)
    assert set(data.kinds().tolist()) == {"dr"} and set(data.lc_eval) == {"ztf_alert", "lsst_alert"}
    spans = {}
    for k, ev in data.lc_eval.items():
        assert ev.rows is None and len(ev.lightcurves) == 40 and ev.labels.shape == (40,)
        spans[k] = max((lc.mjd.max() - lc.mjd.min() for c in ev.lightcurves for lc in c.values() if len(lc)),
                       default=0.0)
    assert spans["ztf_alert"] <= 31.0 < spans["lsst_alert"] <= 366.0  # ZTF 30 days, Rubin 12 months
    assert {b for c in data.lc_eval["lsst_alert"].lightcurves for b in c} - {"u", "g", "r", "i", "z", "y"} == set()
    dr_span = max(lc.mjd.max() - lc.mjd.min() for c in data.lightcurves for lc in c.values() if len(lc))
    assert dr_span > 1000.0
    alert = synthetic_dataset(30, 5, lc_history="alert", n_eval=0)
    assert set(alert.kinds().tolist()) <= set(KINDS) - {"dr"} and alert.lc_eval == {}


def test_scorer_settings_scale_with_n() -> None:
    from training.scorer import TINY

    assert scorer_settings(240) == TINY
    small, full = scorer_settings(1000), scorer_settings(6000)
    assert full["n_alerts"] == 3000 and full["encoder_epochs"] == 10 and full["projection"] == "tsne"
    assert 400 <= small["n_alerts"] < full["n_alerts"] and small["encoder_epochs"] < full["encoder_epochs"]
    assert scorer_settings(100000) == full
