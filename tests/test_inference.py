"""The runtime model stage (broker_plugin.models.inference.BundleStage) on the default bundle: the
too-few-points rule, catalogue matching and fusion, the is_candidate rule (with the candidate scorer,
and the fallback without it), one ONNX run per model per batch, the scorer's start-up checks, the
late-fusion fallback, and replay wiring."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from broker_plugin.alert import Alert, LightCurve
from broker_plugin.errors import BundleError, ConfigError
from broker_plugin.files.replay import replay
from broker_plugin.models.annotate import Annotator, load_model_stage
from broker_plugin.models.bundle import MANIFEST, ModelBundle, default_bundle_path
from broker_plugin.models.inference import (
    ATT_LC_INPUT,
    ATT_SPEC_INPUT,
    FLAG_NO_CANDIDATE_SCORER,
    FLAG_NO_KNOWN_SPECTRUM,
    FLAG_SPECTRUM_MATCHED,
    FLAG_TOO_FEW_POINTS,
    BundleStage,
    enough_points,
)
from broker_plugin.models.scoring import FLAG_BAL_PRIOR, FLAG_NO_BAL_PROB, FLAG_NO_CUTOUTS, combine
from broker_plugin.photometry.features import compute_features_batch

DEFAULT = default_bundle_path()
pytestmark = pytest.mark.skipif(not (DEFAULT / MANIFEST).is_file(),
                                reason="no default bundle in broker_plugin/bundle (run `make bundle`)")


def _curve(band: str, n: int, rng: np.random.Generator, base: float = 19.5) -> LightCurve:
    t = np.sort(58000.0 + rng.uniform(0, 400, n)) if n else np.empty(0)
    mag = base + 0.2 * np.sin(t / 50.0) + rng.normal(0, 0.03, n)
    err = np.full(n, 0.03)
    flux = 10 ** (-0.4 * (mag - 31.4))
    return LightCurve(band, t, mag, err, flux, flux * err * math.log(10) / 2.5, "dc")


def make_alert(i: int, ra: float, dec: float, n_g: int, n_r: int, seed: int = 0,
               cutouts: dict[str, bytes | None] | None = None) -> Alert:
    rng = np.random.default_rng(seed + i)
    curves = {b: _curve(b, k, rng, 19.5 if b == "g" else 19.2) for b, k in (("g", n_g), ("r", n_r)) if k}
    return Alert(survey="ztf", object_id=f"ZTF{i:08d}", source_id=str(1000 + i), ra=ra, dec=dec, mjd=58500.0,
                 band="g", schema_version="4.02", record={}, lightcurves=curves, cutouts=cutouts or {})


@pytest.fixture(scope="module")
def real_cutouts(ztf_alert_files: list[Path]) -> dict[str, bytes | None]:
    """The three stamps of a real ZTF alert, to give hand-made alerts usable cutouts."""
    from broker_plugin.decode import decode_alert

    return dict(decode_alert(ztf_alert_files[0].read_bytes()).cutouts)


def _without_scorer(dst: Path) -> Path:
    """A copy of the default bundle whose manifest lists no candidate scorer."""
    shutil.copytree(DEFAULT, dst, ignore=shutil.ignore_patterns("report"))
    m = yaml.safe_load((dst / MANIFEST).read_text())
    for role in ("cutout_encoder", "ranking_head"):
        m["models"].pop(role, None)
    (dst / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    return dst


@pytest.fixture(scope="module")
def bundle() -> ModelBundle:
    return ModelBundle.load()


@pytest.fixture(scope="module")
def stage(bundle: ModelBundle) -> BundleStage:
    return BundleStage(bundle)


def _features(alerts: list[Alert]) -> np.ndarray:
    return np.asarray(compute_features_batch([a.lightcurves for a in alerts])[0], dtype=np.float64)


def test_too_few_points_gives_null_and_a_flag(stage: BundleStage) -> None:
    counts = [(0, 0), (4, 4), (5, 0), (0, 5), (1, 30), (40, 40)]
    alerts = [make_alert(i, 10.0 + i, -5.0, g, r) for i, (g, r) in enumerate(counts)]
    pred = stage.predict(_features(alerts), alerts)
    expect = [False, False, True, True, True, True]
    assert enough_points([a.lightcurves for a in alerts], 5).tolist() == expect
    for i, ok in enumerate(expect):
        assert pred.flags is not None
        if ok:
            assert 0.0 <= pred.bal_lc_prob[i] <= 1.0 and FLAG_TOO_FEW_POINTS not in pred.flags[i]
        else:
            assert math.isnan(pred.bal_lc_prob[i]) and FLAG_TOO_FEW_POINTS in pred.flags[i]
        assert FLAG_NO_KNOWN_SPECTRUM in pred.flags[i] and math.isnan(pred.bal_fusion_prob[i])
        # no cutouts on these hand-made alerts: the scorer says so
        assert math.isnan(pred.candidate_score[i]) and FLAG_NO_CUTOUTS in pred.flags[i]
        # no cutouts -> null score whatever the BAL evidence; the prior is never applied to it
        assert FLAG_NO_BAL_PROB not in pred.flags[i] and not pred.is_candidate[i]


def test_catalogue_match_gives_the_fusion_probability(bundle: ModelBundle, stage: BundleStage) -> None:
    cat = bundle.catalogue
    assert cat is not None
    k = 17
    ra, dec = float(cat.ra[k]), float(cat.dec[k])
    off = 0.5 / 3600.0
    alerts = [
        make_alert(0, ra + off / math.cos(math.radians(dec)), dec, 30, 30),  # 0.5" away: matched
        make_alert(1, ra, dec + 3.0 / 3600.0, 30, 30),  # 3" away: not matched
        make_alert(2, ra, dec - off, 2, 0),  # matched, but too few points: fusion still computed
    ]
    X = _features(alerts)
    pred = stage.predict(X, alerts)
    assert pred.flags is not None
    assert FLAG_SPECTRUM_MATCHED in pred.flags[0] and FLAG_NO_KNOWN_SPECTRUM in pred.flags[1]
    assert FLAG_SPECTRUM_MATCHED in pred.flags[2] and FLAG_TOO_FEW_POINTS in pred.flags[2]
    assert math.isnan(pred.bal_fusion_prob[1])
    emb = np.repeat(cat.embedding[k:k + 1], 2, axis=0).astype(np.float32)
    direct = bundle.sessions["fusion_attention"].run(
        ["probability"], {ATT_LC_INPUT: X[[0, 2]].astype(np.float32), ATT_SPEC_INPUT: emb})[0].reshape(-1)
    np.testing.assert_allclose(pred.bal_fusion_prob[[0, 2]], direct, atol=1e-7)


def test_candidate_score_uses_fusion_where_known_and_follows_combine(
        bundle: ModelBundle, stage: BundleStage, real_cutouts: dict[str, bytes | None]) -> None:
    from broker_plugin.models.scoring import head_probability

    cat = bundle.catalogue
    assert cat is not None and stage.has_candidate_scorer
    alerts = [make_alert(0, float(cat.ra[5]), float(cat.dec[5]), 30, 30, cutouts=real_cutouts),  # matched
              make_alert(1, 200.0, 10.0, 30, 30, cutouts=real_cutouts),  # light curve only
              make_alert(2, 201.0, 10.0, 2, 1, cutouts=real_cutouts),  # no BAL probability
              make_alert(3, float(cat.ra[6]), float(cat.dec[6]), 30, 30)]  # matched, no cutouts
    X = _features(alerts)
    pred = stage.predict(X, alerts)
    head, ok, _ = head_probability(bundle.sessions["cutout_encoder"], bundle.sessions["ranking_head"], X, alerts)
    assert ok.tolist() == [True, True, True, False]
    score, cand, _ = combine(pred.bal_lc_prob, pred.bal_fusion_prob, head, stage.threshold, cutout_ok=ok,
                             bal_prior=stage.bal_prior)
    np.testing.assert_allclose(pred.candidate_score, score, equal_nan=True)
    np.testing.assert_array_equal(pred.is_candidate, cand)
    assert pred.candidate_score[0] == pytest.approx(head[0] * pred.bal_fusion_prob[0])  # fusion preferred
    assert pred.candidate_score[1] == pytest.approx(head[1] * pred.bal_lc_prob[1])
    assert pred.flags is not None
    # no BAL probability: the training prior stands in, flagged, and never makes a candidate
    assert pred.candidate_score[2] == pytest.approx(head[2] * stage.bal_prior)
    assert FLAG_BAL_PRIOR in pred.flags[2] and not pred.is_candidate[2]
    assert math.isnan(pred.candidate_score[3]) and FLAG_NO_CUTOUTS in pred.flags[3]
    assert not any(FLAG_NO_CANDIDATE_SCORER in f for f in pred.flags)
    # threshold 0: every finite score backed by a measured BAL probability is a candidate
    assert BundleStage(bundle, candidate_threshold=0.0).predict(X, alerts).is_candidate.tolist() == \
        [True, True, False, False]


def test_without_the_scorer_is_candidate_follows_the_bal_probability(tmp_path: Path) -> None:
    bundle = ModelBundle.load(_without_scorer(tmp_path / "b"))
    stage = BundleStage(bundle)
    assert not stage.has_candidate_scorer
    cat = bundle.catalogue
    assert cat is not None
    alerts = [make_alert(0, float(cat.ra[17]), float(cat.dec[17]), 30, 30), make_alert(1, 3.0, 3.0, 30, 30),
              make_alert(2, 4.0, 4.0, 1, 0)]
    pred = stage.predict(_features(alerts), alerts)
    # is_candidate uses the fusion probability where known, the light-curve one otherwise
    decision = np.where(np.isfinite(pred.bal_fusion_prob), pred.bal_fusion_prob, pred.bal_lc_prob)
    np.testing.assert_array_equal(pred.is_candidate, np.isfinite(decision) & (decision >= stage.threshold))
    assert np.isnan(pred.candidate_score).all()
    assert pred.flags is not None and all(FLAG_NO_CANDIDATE_SCORER in f for f in pred.flags)
    scores, cand, flags = stage._candidate_scores(_features(alerts[:1]), alerts[:1], np.array([0.7]),
                                                  np.array([np.nan]))
    assert math.isnan(scores[0]) and flags == [[FLAG_NO_CANDIDATE_SCORER]] and cand.tolist() == [True]


def test_threshold_defaults_to_the_manifest_and_can_be_overridden(tmp_path: Path) -> None:
    bundle = ModelBundle.load(_without_scorer(tmp_path / "b"))
    alerts = [make_alert(i, 50.0 + i, 10.0, 30, 30) for i in range(8)] + [make_alert(9, 1.0, 1.0, 1, 1)]
    X = _features(alerts)
    assert BundleStage(bundle).threshold == bundle.manifest["bundle"]["candidate_threshold"]
    everything = BundleStage(bundle, candidate_threshold=0.0).predict(X, alerts)
    assert everything.is_candidate.tolist() == [True] * 8 + [False]  # no probability: never a candidate
    nothing = BundleStage(bundle, candidate_threshold=1.0).predict(X, alerts)
    assert not nothing.is_candidate.any()
    with pytest.raises(BundleError, match="not in \\[0, 1\\]"):
        BundleStage(bundle, candidate_threshold=1.5)


class _Counting:
    """Wraps an onnxruntime session and counts run() calls and rows."""

    def __init__(self, sess: Any) -> None:
        self.sess, self.calls, self.rows = sess, 0, 0

    def run(self, names: Any, feeds: dict[str, np.ndarray]) -> Any:
        self.calls += 1
        self.rows += next(iter(feeds.values())).shape[0]
        return self.sess.run(names, feeds)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sess, name)


def test_one_onnx_run_per_model_per_batch_and_batch_invariance(tmp_path: Path) -> None:
    bundle = ModelBundle.load()
    cat = bundle.catalogue
    assert cat is not None
    alerts = []
    for i in range(40):
        if i % 3 == 0:  # every third alert sits on a catalogue object
            alerts.append(make_alert(i, float(cat.ra[i]), float(cat.dec[i]), 10 + i, 12 + i))
        else:
            alerts.append(make_alert(i, 100.0 + i, 20.0, 3 if i % 5 == 0 else 25, 25 if i % 7 else 0))
    X = _features(alerts)
    ref = BundleStage(bundle).predict(X, alerts)
    counters = {role: _Counting(s) for role, s in bundle.sessions.items()}
    bundle.sessions.update(counters)
    stage = BundleStage(bundle)
    pred = stage.predict(X, alerts)
    assert counters["bal_lc"].calls == 1 and counters["fusion_attention"].calls == 1
    assert counters["cutout_encoder"].calls == 1 and counters["ranking_head"].calls == 1
    assert counters["cutout_encoder"].rows == counters["ranking_head"].rows == 40
    assert counters["fusion_attention"].rows == 14
    assert counters["bal_lc"].rows == int(np.isfinite(pred.bal_lc_prob).sum())
    assert counters["spectral"].calls == 0 and counters["fusion_late"].calls == 0
    np.testing.assert_array_equal(pred.bal_lc_prob, ref.bal_lc_prob)
    # one alert at a time gives the same numbers as the batch
    for i in (0, 1, 5, 9):
        one = stage.predict(X[i:i + 1], alerts[i:i + 1])
        np.testing.assert_allclose(one.bal_lc_prob, pred.bal_lc_prob[i:i + 1], atol=1e-7)
        np.testing.assert_allclose(one.bal_fusion_prob, pred.bal_fusion_prob[i:i + 1], atol=1e-7)
        np.testing.assert_allclose(one.candidate_score, pred.candidate_score[i:i + 1], atol=1e-6)
        assert pred.flags is not None and one.flags == [pred.flags[i]]


def _tamper(tmp_path: Path, edit: Any) -> Path:
    """A copy of the default bundle with ``edit(manifest_dict, bundle_dir)`` applied."""
    dst = tmp_path / "t"
    shutil.copytree(DEFAULT, dst, ignore=shutil.ignore_patterns("report"))
    m = yaml.safe_load((dst / MANIFEST).read_text())
    edit(m, dst)
    (dst / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    return dst


def test_a_retrained_encoder_without_its_head_is_refused(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    from onnx import numpy_helper

    from broker_plugin.models.bundle import sha256_file

    def swap_encoder(m: dict[str, Any], root: Path) -> None:
        # a valid encoder graph with other weights (as if retrained), the manifest's checksum updated
        # so that only the head's encoder_sha256 can notice
        path = root / m["models"]["cutout_encoder"]["file"]
        model = onnx.load(str(path))
        init = model.graph.initializer[0]
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * 1.01, init.name))
        onnx.save(model, str(path))
        m["models"]["cutout_encoder"]["sha256"] = sha256_file(path)

    bundle = ModelBundle.load(_tamper(tmp_path, swap_encoder))  # checksums agree with the files
    with pytest.raises(BundleError, match="trained on another cutout encoder") as err:
        BundleStage(bundle)
    assert "\n" not in str(err.value)


def test_wrong_meta_names_are_refused(tmp_path: Path) -> None:
    def shuffle_meta(m: dict[str, Any], _root: Path) -> None:
        names = m["models"]["ranking_head"]["meta_names"]
        names[0], names[1] = names[1], names[0]

    with pytest.raises(BundleError, match="meta_names") as err:
        BundleStage(ModelBundle.load(_tamper(tmp_path, shuffle_meta)))
    assert "\n" not in str(err.value)


def test_an_encoder_without_a_head_is_refused(tmp_path: Path) -> None:
    def drop_head(m: dict[str, Any], _root: Path) -> None:
        del m["models"]["ranking_head"]

    with pytest.raises(BundleError, match="'cutout_encoder' without 'ranking_head'"):
        BundleStage(ModelBundle.load(_tamper(tmp_path, drop_head)))


def test_load_model_stage_refuses_a_tampered_scorer_with_exit_2(tmp_path: Path) -> None:
    from broker_plugin.cli import main

    def wrong_hash(m: dict[str, Any], _root: Path) -> None:
        m["models"]["ranking_head"]["encoder_sha256"] = "0" * 64

    bad = _tamper(tmp_path, wrong_hash)
    assert main(["replay", str(tmp_path / "nothing.avro"), "--output", str(tmp_path / "o.jsonl"),
                 "--models", str(bad)]) == 2


def test_late_fusion_is_the_fallback_without_the_attention_model(tmp_path: Path) -> None:
    from training.fusion import LateFusion

    dst = tmp_path / "b"
    shutil.copytree(DEFAULT, dst, ignore=shutil.ignore_patterns("report"))
    m = yaml.safe_load((dst / MANIFEST).read_text())
    del m["models"]["fusion_attention"]
    (dst / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))
    bundle = ModelBundle.load(dst)
    stage = BundleStage(bundle)
    assert stage.fusion_role == "fusion_late"
    cat = bundle.catalogue
    assert cat is not None and cat.spec_prob is not None
    alerts = [make_alert(0, float(cat.ra[3]), float(cat.dec[3]), 30, 30),
              make_alert(1, float(cat.ra[4]), float(cat.dec[4]), 1, 0)]
    pred = stage.predict(_features(alerts), alerts)
    w = m["models"]["fusion_late"]["weights"]
    late = LateFusion(w["w_lc"], w["w_spec"], w["bias"])
    want = late.predict(pred.bal_lc_prob, cat.spec_prob[[3, 4]])
    np.testing.assert_allclose(pred.bal_fusion_prob, want, atol=1e-4)  # manifest weights are rounded
    assert math.isnan(pred.bal_lc_prob[1]) and np.isfinite(pred.bal_fusion_prob[1])


def test_embedding_size_mismatch_is_refused(bundle: ModelBundle) -> None:
    b = ModelBundle.load()
    assert b.catalogue is not None
    b.catalogue.embedding = b.catalogue.embedding[:, :3]
    with pytest.raises(BundleError, match="catalogue embedding has 3 dimensions"):
        BundleStage(b)


def test_load_model_stage_uses_the_default_bundle_when_no_path_is_given(tmp_path: Path) -> None:
    stage = load_model_stage(None)
    assert isinstance(stage, BundleStage) and stage.bundle.path == DEFAULT
    assert Annotator(stage).model_version == stage.version == stage.bundle.model_version
    with pytest.raises(ConfigError, match="not found"):
        load_model_stage(tmp_path / "nope")
    assert load_model_stage(None, candidate_threshold=0.9).threshold == 0.9  # type: ignore[union-attr]


def test_replay_fills_bal_lc_prob_for_real_ztf_alerts(ztf_alert_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "x.jsonl"
    result = replay([ztf_alert_dir], out, progress=False)
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == result.annotated == 128 and result.rejected == 0
    version = ModelBundle.load().model_version
    n_lc = 0
    for r in records:
        assert r["model_version"] == version
        points = max(r["n_points"].get("g", 0), r["n_points"].get("r", 0))
        if points >= 5:
            assert r["bal_lc_prob"] is not None and 0.0 <= r["bal_lc_prob"] <= 1.0, r
            assert FLAG_TOO_FEW_POINTS not in r["flags"]
            n_lc += 1
        else:
            assert r["bal_lc_prob"] is None and FLAG_TOO_FEW_POINTS in r["flags"], r
        assert r["bal_fusion_prob"] is None and FLAG_NO_KNOWN_SPECTRUM in r["flags"]  # synthetic catalogue
        # every real ZTF alert has its stamps: a score exactly where there is a BAL probability
        assert r["candidate_score"] is not None, r  # every real ZTF alert carries its three stamps
        if r["bal_lc_prob"] is None:
            assert FLAG_BAL_PRIOR in r["flags"] and not r["is_candidate"], r
        assert isinstance(r["is_candidate"], bool)
    assert n_lc > 0
    assert result.candidates == sum(r["is_candidate"] for r in records)
