"""Candidate scorer: the combination rule and head inputs (broker_plugin/models/scoring.py), and a tiny
training run of the encoder + ranking head (training/scorer.py) whose ONNX files must score every
real ZTF and Rubin alert. One tiny training run (~10-20 s) is shared by the whole module."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")

from broker_plugin.alert import Alert  # noqa: E402
from broker_plugin.decode import META_FIELDS, decode_alert  # noqa: E402
from broker_plugin.models.bundle import _session, _spec, _verify, sha256_file  # noqa: E402
from broker_plugin.models.scoring import (  # noqa: E402
    FLAG_NO_BAL_PROB,
    FLAG_NO_CUTOUTS,
    FLAG_NO_HEAD,
    HEAD_INPUTS,
    HEAD_META_NAMES,
    HEAD_OUTPUT,
    assemble_head_inputs,
    combine,
    cutouts_usable,
    embed_cutouts,
    head_probability,
    meta_matrix,
    run_head,
)
from broker_plugin.photometry.cutouts import CHANNELS, SIZE, cutout_batch  # noqa: E402
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION, compute_features_batch  # noqa: E402
from training.contrastive import onnx_parity  # noqa: E402
from training.scorer import (  # noqa: E402
    ENCODER_FILE,
    HEAD_FILE,
    TINY,
    ScorerArtifacts,
    head_onnx_parity,
    head_predict,
    rendered_stamps,
    simbad_check,
    train_candidate_scorer,
)

NAN = math.nan


def _alert(survey: str = "ztf", meta: dict[str, Any] | None = None) -> Alert:
    return Alert(survey, "obj", "src", 10.0, 20.0, 60000.0, "g", "4.02", {}, meta=meta or {})  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# combine(): the documented rule
# ---------------------------------------------------------------------------------------------


def test_combine_prefers_fusion_and_multiplies_by_the_head() -> None:
    score, cand, flags = combine(np.array([0.9, 0.9]), np.array([0.2, NAN]), np.array([0.5, 0.5]), 0.3)
    assert score[0] == pytest.approx(0.5 * 0.2)  # fusion known: the light curve is not used
    assert score[1] == pytest.approx(0.5 * 0.9)  # no spectrum: the light-curve probability
    assert cand.tolist() == [False, True]
    assert flags == [[], []]


def test_combine_without_any_bal_probability_is_null_and_flagged() -> None:
    score, cand, flags = combine(np.array([NAN]), np.array([NAN]), np.array([0.99]), 0.0)
    assert math.isnan(score[0]) and not cand[0]  # null is never a candidate, even at threshold 0
    assert flags == [[FLAG_NO_BAL_PROB]]


def test_combine_threshold_is_inclusive_and_validated() -> None:
    _, cand, _ = combine(np.array([0.5, 0.5]), np.array([NAN, NAN]), np.array([1.0, 0.999]), 0.5)
    assert cand.tolist() == [True, False]
    for bad in (-0.1, 1.5, NAN):
        with pytest.raises(ValueError):
            combine(np.array([0.5]), np.array([NAN]), np.array([0.5]), bad)


def test_combine_missing_cutouts_and_missing_head_give_null_with_a_reason() -> None:
    lc = np.array([0.9, 0.9, 0.9, NAN])
    fus = np.full(4, NAN)
    head = np.array([0.8, 0.8, NAN, 0.8])
    ok = np.array([True, False, True, False])
    score, cand, flags = combine(lc, fus, head, 0.5, cutout_ok=ok)
    assert score[0] == pytest.approx(0.72) and cand[0]
    assert math.isnan(score[1]) and not cand[1] and flags[1] == [FLAG_NO_CUTOUTS]
    assert math.isnan(score[2]) and flags[2] == [FLAG_NO_HEAD]
    assert math.isnan(score[3]) and flags[3] == [FLAG_NO_CUTOUTS, FLAG_NO_BAL_PROB]


def test_combine_clips_and_nulls_bad_probabilities_and_checks_lengths() -> None:
    score, _, flags = combine(np.array([1.2, np.inf]), np.array([NAN, NAN]), np.array([1.0, 1.0]), 0.5)
    assert score[0] == 1.0
    assert math.isnan(score[1]) and flags[1] == [FLAG_NO_BAL_PROB]
    with pytest.raises(ValueError):
        combine(np.array([0.5, 0.5]), np.array([NAN]), np.array([0.5, 0.5, 0.5]), 0.5)
    empty = combine(np.zeros(0), np.zeros(0), np.zeros(0), 0.5)
    assert empty[0].shape == (0,) and empty[1].shape == (0,) and empty[2] == []


# ---------------------------------------------------------------------------------------------
# assemble_head_inputs(): shapes, order, NaN
# ---------------------------------------------------------------------------------------------


def test_head_meta_columns_are_pinned() -> None:
    # The order is part of the exported model's contract: a change needs a retrained head.
    assert HEAD_META_NAMES == (
        "sgscore1", "distpsnr1", "distnr", "magnr", "drb", "rb", "classtar", "ndethist", "ncovhist",
        "isdiffpos", "neargaia", "maggaia", "extendedness", "reliability", "snr", "nDiaSources", "survey_lsst",
    )
    assert HEAD_META_NAMES[:-1] == META_FIELDS
    assert HEAD_INPUTS == ("embedding", "lc_features", "meta")


def test_assemble_head_inputs_shapes_order_and_nan() -> None:
    alerts = [
        _alert("ztf", {"sgscore1": 0.9, "distnr": 0.2, "drb": np.inf}),
        _alert("lsst", {"extendedness": 0.1, "snr": "not a number", "nDiaSources": 3}),
    ]
    emb = np.arange(2 * 8, dtype=np.float32).reshape(2, 8)
    feat = np.full((2, len(FEATURE_NAMES)), NAN)
    feat[0, 0] = 19.5
    feat[1, 3] = 1e300  # overflows float32: becomes NaN, not inf
    feed = assemble_head_inputs(emb, feat, alerts)
    assert list(feed) == list(HEAD_INPUTS)
    assert feed["embedding"].shape == (2, 8) and feed["lc_features"].shape == (2, len(FEATURE_NAMES))
    assert feed["meta"].shape == (2, len(HEAD_META_NAMES))
    assert all(v.dtype == np.float32 for v in feed.values())
    assert np.array_equal(feed["embedding"], emb)
    assert feed["lc_features"][0, 0] == np.float32(19.5) and np.isnan(feed["lc_features"][1, 3])
    col = {name: j for j, name in enumerate(HEAD_META_NAMES)}
    m = feed["meta"]
    assert m[0, col["sgscore1"]] == np.float32(0.9) and m[0, col["distnr"]] == np.float32(0.2)
    assert np.isnan(m[0, col["drb"]]) and np.isnan(m[0, col["extendedness"]])
    assert m[1, col["extendedness"]] == np.float32(0.1) and m[1, col["nDiaSources"]] == 3.0
    assert np.isnan(m[1, col["snr"]]) and np.isnan(m[1, col["sgscore1"]])
    assert m[:, col["survey_lsst"]].tolist() == [0.0, 1.0]
    assert np.array_equal(meta_matrix(alerts), m, equal_nan=True)


def test_assemble_head_inputs_refuses_misaligned_arrays() -> None:
    alerts = [_alert(), _alert()]
    good = np.zeros((2, len(FEATURE_NAMES)))
    with pytest.raises(ValueError):
        assemble_head_inputs(np.zeros((3, 8)), good, alerts)
    with pytest.raises(ValueError):
        assemble_head_inputs(np.zeros((2, 8)), good[:, :-1], alerts)
    with pytest.raises(ValueError):
        assemble_head_inputs(np.zeros(8), good, alerts)


def test_cutouts_usable() -> None:
    flags = [
        [],
        ["cutout_missing_science"],
        ["cutout_missing_science", "cutout_bad_template", "cutout_missing_difference"],
        ["cutout_flat"],
        ["cutout_nan_science"],
    ]
    assert cutouts_usable(flags).tolist() == [True, True, False, False, True]


# ---------------------------------------------------------------------------------------------
# A tiny training run, shared by the tests below
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scorer(tmp_path_factory: pytest.TempPathFactory) -> ScorerArtifacts:
    return train_candidate_scorer(tmp_path_factory.mktemp("scorer"), seed=1, **TINY)


@pytest.fixture(scope="module")
def sessions(scorer: ScorerArtifacts) -> tuple[Any, Any]:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    enc = ort.InferenceSession(str(scorer.encoder_path), opts, providers=["CPUExecutionProvider"])
    head = ort.InferenceSession(str(scorer.head_path), opts, providers=["CPUExecutionProvider"])
    return enc, head


def _random_feed(rng: np.random.Generator, n: int, emb_dim: int) -> dict[str, np.ndarray]:
    """Head inputs with the nasty values real alerts can carry: NaN, inf, huge magnitudes."""
    feed = {
        "embedding": rng.normal(0, 3, (n, emb_dim)).astype(np.float32),
        "lc_features": rng.normal(0, 10, (n, len(FEATURE_NAMES))).astype(np.float32),
        "meta": rng.normal(0, 10, (n, len(HEAD_META_NAMES))).astype(np.float32),
    }
    for k in ("lc_features", "meta"):
        a = feed[k]
        a[rng.random(a.shape) < 0.3] = np.nan
        a[rng.random(a.shape) < 0.02] = np.inf
        a[rng.random(a.shape) < 0.02] = 3e38
    return feed


def test_head_onnx_parity(scorer: ScorerArtifacts) -> None:
    assert scorer.metrics["ranking_head"]["onnx_max_abs_diff"] <= 1e-5
    emb_dim = scorer.manifest_entries["ranking_head"]["embedding_dim"]
    feed = _random_feed(np.random.default_rng(0), 300, emb_dim)
    assert head_onnx_parity(scorer.head, scorer.head_path, feed) <= 1e-5
    p = head_predict(scorer.head, feed)
    assert np.all(np.isfinite(p)) and np.all((p >= 0) & (p <= 1))


def test_encoder_onnx_parity(scorer: ScorerArtifacts) -> None:
    assert scorer.metrics["cutout_encoder"]["onnx_max_abs_diff"] <= 1e-4
    x, _ = rendered_stamps(64, np.random.default_rng(5))
    assert onnx_parity(scorer.encoder, scorer.encoder_path, x) <= 1e-4


def test_manifest_entries_are_what_the_bundle_loader_accepts(scorer: ScorerArtifacts) -> None:
    root = scorer.out_dir
    for role, entry in scorer.manifest_entries.items():
        assert entry["file"] in (ENCODER_FILE, HEAD_FILE)
        assert entry["sha256"] == sha256_file(root / entry["file"])
        spec = _spec(root, role, entry)
        _verify(root, spec)  # checksum, feature names and version
        sess = _session(root / spec.file, spec, 1)  # declared input names = the graph's
        assert [o.name for o in sess.get_outputs()] == [o["name"] for o in entry["outputs"]]
        assert entry["training_data"] and entry["metrics"] and entry["version"] and entry["created"]
    head = scorer.manifest_entries["ranking_head"]
    assert head["feature_names"] == list(FEATURE_NAMES) and head["feature_version"] == FEATURE_VERSION
    assert head["meta_names"] == list(HEAD_META_NAMES)
    assert [i["name"] for i in head["inputs"]] == list(HEAD_INPUTS)
    assert head["outputs"] == [{"name": HEAD_OUTPUT, "shape": ["batch", 1], "dtype": "float32"}]
    assert head["encoder_sha256"] == scorer.manifest_entries["cutout_encoder"]["sha256"]
    assert head["training_data"]["positive_classes"] == ["qso_bal", "qso_nonbal"]
    enc = scorer.manifest_entries["cutout_encoder"]
    assert enc["inputs"][0]["shape"] == ["batch", CHANNELS, SIZE, SIZE]
    assert "feature_names" not in enc  # the encoder does not read the feature vector


def test_metrics_and_picture_are_reported(scorer: ScorerArtifacts) -> None:
    hm, em = scorer.metrics["ranking_head"], scorer.metrics["cutout_encoder"]
    for k in ("test_precision", "test_recall", "test_f1", "test_roc_auc"):
        assert 0.0 <= hm[k] <= 1.0
    for k in ("knn_trained_acc", "knn_random_acc", "knn_raw_pixels_acc", "knn_trained_acc_3kinds"):
        assert 0.0 <= em[k] <= 1.0
    assert scorer.figure_path is not None and scorer.figure_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert scorer.timings["total_s"] > 0


# ---------------------------------------------------------------------------------------------
# The exported files on real alerts: decode_alert -> cutout_batch -> encoder -> head
# ---------------------------------------------------------------------------------------------


def _decode_all(files: list[Path]) -> list[Alert]:
    return [decode_alert(f.read_bytes()) for f in files]


@pytest.mark.parametrize("survey", ["ztf", "lsst"])
def test_every_real_alert_gets_a_finite_head_probability(
    survey: str, sessions: tuple[Any, Any], ztf_alert_files: list[Path], lsst_alert_files: list[Path]
) -> None:
    files = ztf_alert_files if survey == "ztf" else lsst_alert_files
    assert files, f"no real {survey} alerts found"
    alerts = _decode_all(files)
    features, _ = compute_features_batch([a.lightcurves for a in alerts])
    enc, head = sessions
    prob, ok, cflags = head_probability(enc, head, features, alerts)
    assert prob.shape == (len(alerts),) and np.all(np.isfinite(prob)) and np.all((prob >= 0) & (prob <= 1))
    score, cand, flags = combine(np.full(len(alerts), 0.6), np.full(len(alerts), NAN), prob, 0.5, cutout_ok=ok)
    assert np.all(np.isfinite(score[ok]))
    assert np.all(np.isnan(score[~ok])) and all(FLAG_NO_CUTOUTS in flags[i] for i in np.flatnonzero(~ok))
    assert not cand[~ok].any()
    if survey == "ztf":
        assert ok.all(), "every real ZTF alert carries its three stamps"
    else:
        assert ok.any(), "some real Rubin sample alerts carry cutouts"
        missing = [i for i, f in enumerate(cflags) if "cutout_missing_science" in f]
        assert not ok[missing].any()
    # The convenience path equals the explicit one.
    tensors, _ = cutout_batch([a.cutouts for a in alerts])
    explicit = run_head(head, assemble_head_inputs(embed_cutouts(enc, tensors), features, alerts))
    assert np.array_equal(explicit, prob)


def test_corrupt_or_missing_cutouts_give_null_score_and_flag(
    sessions: tuple[Any, Any], ztf_alert_files: list[Path]
) -> None:
    base = decode_alert(ztf_alert_files[0].read_bytes())
    variants = []
    for cut in (
        dict(base.cutouts),  # intact
        {"science": b"\x1f\x8bnot gzip at all", "template": b"SIMPLE  = garbage", "difference": b""},
        {"science": None, "template": None, "difference": None},
        {},
        {**base.cutouts, "template": b"\x00" * 100},  # one stamp corrupt: still scored
    ):
        a = decode_alert(ztf_alert_files[0].read_bytes())
        a.cutouts = cut
        variants.append(a)
    features, _ = compute_features_batch([a.lightcurves for a in variants])
    enc, head = sessions
    prob, ok, cflags = head_probability(enc, head, features, variants)
    assert ok.tolist() == [True, False, False, False, True]
    assert np.all(np.isfinite(prob))
    score, cand, flags = combine(np.full(5, 0.9), np.full(5, NAN), prob, 0.0, cutout_ok=ok)
    assert np.isfinite(score[[0, 4]]).all() and cand[[0, 4]].all()
    for i in (1, 2, 3):
        assert math.isnan(score[i]) and not cand[i] and flags[i] == [FLAG_NO_CUTOUTS]
    assert "cutout_bad_template" in cflags[4]


def test_simbad_check_scores_real_labelled_alerts(scorer: ScorerArtifacts, shared_data: Path) -> None:
    files = sorted((shared_data / "ztf" / "alerts_parquet").glob("*.parquet"))
    if not files:
        pytest.skip("no Fink Parquet alerts in the shared data")
    out = simbad_check(scorer.encoder_path, scorer.head_path, files)
    assert out["n"] > 100 and 0 < out["n_positive"] < out["n"]
    assert 0.0 <= out["roc_auc"] <= 1.0


def test_head_ignores_history_counts_the_simulation_cannot_reproduce(scorer: ScorerArtifacts) -> None:
    entry = scorer.manifest_entries["ranking_head"]
    assert entry["meta_ignored"] == ["ndethist", "ncovhist"]
    feed = _random_feed(np.random.default_rng(2), 50, entry["embedding_dim"])
    other = {k: v.copy() for k, v in feed.items()}
    for name in entry["meta_ignored"]:
        other["meta"][:, HEAD_META_NAMES.index(name)] = np.random.default_rng(3).uniform(0, 3000, 50)
    assert np.array_equal(head_predict(scorer.head, feed), head_predict(scorer.head, other))


def test_combine_uses_the_prior_only_to_rank_never_to_select() -> None:
    nan = float("nan")
    lc = np.array([0.9, nan, nan])
    fus = np.array([nan, nan, nan])
    head = np.array([0.8, 0.99, 0.99])
    ok = np.array([True, True, False])
    score, cand, flags = combine(lc, fus, head, 0.05, cutout_ok=ok, bal_prior=0.13)
    assert score[0] == pytest.approx(0.72) and cand[0]
    assert score[1] == pytest.approx(0.99 * 0.13) and not cand[1]  # above threshold, but only a prior
    assert "bal_prior_used" in flags[1] and "no_bal_probability" not in flags[1]
    assert np.isnan(score[2]) and not cand[2] and "no_cutouts" in flags[2]
    with pytest.raises(ValueError):
        combine(lc, fus, head, 0.5, bal_prior=1.5)
