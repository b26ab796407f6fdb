"""The model bundle: the default one shipped in the package, and refusal -- one line, exit 2 -- of a
bundle that was altered or trained against another feature list. Works on copies of the default
bundle, so it needs no training (and no training extra)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from broker_plugin.cli import main
from broker_plugin.errors import BundleError
from broker_plugin.models.bundle import MANIFEST, ModelBundle, default_bundle_path, sha256_file
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION

DEFAULT = default_bundle_path()
pytestmark = pytest.mark.skipif(not (DEFAULT / MANIFEST).is_file(),
                                reason="no default bundle in broker_plugin/bundle (run `make bundle`)")


@pytest.fixture
def bundle_copy(tmp_path: Path) -> Path:
    dst = tmp_path / "bundle"
    shutil.copytree(DEFAULT, dst, ignore=shutil.ignore_patterns("report"))
    return dst


@pytest.fixture(scope="module")
def alert_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A few synthetic ZTF alerts (no shared data needed to exercise the CLI path)."""
    from training.synthetic import write_night

    d = tmp_path_factory.mktemp("alerts")
    write_night(d, 6, survey_mix={"ztf": 1.0}, seed=4, stamps=False)
    return d


def _manifest(path: Path) -> dict[str, Any]:
    return yaml.safe_load((path / MANIFEST).read_text())


def _write_manifest(path: Path, m: dict[str, Any]) -> None:
    (path / MANIFEST).write_text(yaml.safe_dump(m, sort_keys=False))


def _refused(path: Path, match: str) -> str:
    with pytest.raises(BundleError, match=match) as exc:
        ModelBundle.load(path)
    msg = str(exc.value)
    assert "\n" not in msg
    return msg


def _cli_refuses(bundle: Path, alerts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], match: str) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["replay", str(alerts), "--output", str(out), "--models", str(bundle)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("bal-broker: error: model bundle") and match in err[0], err
    assert not out.exists(), "a refused bundle must not leave an output file behind"


# ------------------------------------------------------------------------------ the default bundle


def test_default_bundle_is_verified_small_and_says_it_is_synthetic() -> None:
    bundle = ModelBundle.load()
    assert bundle.path == DEFAULT
    assert set(bundle.sessions) >= {"bal_lc", "spectral", "fusion_late", "fusion_attention"}
    m = bundle.manifest
    assert m["bundle"]["trained_on"] == "synthetic" and 0 <= m["bundle"]["candidate_threshold"] <= 1
    assert "--synthetic" in m["bundle"]["training_command"] and "--seed" in m["bundle"]["training_command"]
    for role in ("bal_lc", "fusion_attention"):
        assert tuple(m["models"][role]["feature_names"]) == FEATURE_NAMES
        assert m["models"][role]["feature_version"] == FEATURE_VERSION
    assert {"cutout_encoder", "ranking_head"} <= set(bundle.sessions)  # the candidate scorer ships too
    for role, entry in m["models"].items():
        assert sha256_file(DEFAULT / entry["file"]) == entry["sha256"]
        metrics = entry["metrics"]
        # the scorer's parity key (training/scorer.py); the conv encoder's float32 sums allow 1e-4
        parity = metrics["onnx_parity_max_abs"] if "onnx_parity_max_abs" in metrics else metrics["onnx_max_abs_diff"]
        assert parity <= (1e-4 if role == "cutout_encoder" else 1e-5), role
        assert entry["training_data"]["kind"] == "synthetic"
    size = sum(p.stat().st_size for p in DEFAULT.rglob("*") if p.is_file())
    assert size < 5_000_000, f"default bundle is {size / 1e6:.1f} MB"
    readme = (DEFAULT / "README.md").read_text()
    assert "Synthetic data only" in readme and "Not good for" in readme
    assert bundle.catalogue is not None and len(bundle.catalogue) == m["catalogue"]["n_objects"]


def test_default_bundle_metrics_show_the_expected_ordering() -> None:
    """On its synthetic test split: spectrum-only beats light-curve-only; attention fusion is at least
    as good as the best single modality on BAL F1 (SCIENCE.md: the spectrum is the reliable modality)."""
    models = _manifest(DEFAULT)["models"]

    def f1(role: str) -> float:
        return float(models[role]["metrics"]["test_common"]["bal"]["f1"])

    assert f1("spectral") > f1("bal_lc") + 0.2
    assert f1("fusion_attention") >= max(f1("spectral"), f1("bal_lc"))
    w = models["fusion_late"]["weights"]
    assert w["w_spec"] > w["w_lc"]


# ------------------------------------------------------------------------------------- refusals


def test_tampered_onnx_is_refused_by_load_and_by_replay(
    bundle_copy: Path, alert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = bundle_copy / "bal_lc.onnx"
    data = bytearray(f.read_bytes())
    data[len(data) // 2] ^= 0xFF  # flip one byte
    f.write_bytes(bytes(data))
    _refused(bundle_copy, "checksum mismatch for bal_lc.onnx")
    _cli_refuses(bundle_copy, alert_dir, tmp_path, capsys, "checksum mismatch for bal_lc.onnx")


def test_feature_list_different_from_the_plugins_is_refused(
    bundle_copy: Path, alert_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    m = _manifest(bundle_copy)
    names = list(m["models"]["bal_lc"]["feature_names"])
    names[3], names[4] = names[4], names[3]
    m["models"]["bal_lc"]["feature_names"] = names
    _write_manifest(bundle_copy, m)
    msg = _refused(bundle_copy, "feature names differ")
    assert f"position 3: bundle has '{names[3]}', plugin has '{FEATURE_NAMES[3]}'" in msg
    _cli_refuses(bundle_copy, alert_dir, tmp_path, capsys, "feature names differ")


def test_missing_feature_and_other_feature_version_are_refused(bundle_copy: Path) -> None:
    m = _manifest(bundle_copy)
    m["models"]["fusion_attention"]["feature_names"] = list(FEATURE_NAMES[:-1])
    _write_manifest(bundle_copy, m)
    _refused(bundle_copy, f"bundle has {len(FEATURE_NAMES) - 1} features, plugin has {len(FEATURE_NAMES)}")
    m["models"]["fusion_attention"]["feature_names"] = list(FEATURE_NAMES)
    m["models"]["bal_lc"]["feature_version"] = "0.9"
    _write_manifest(bundle_copy, m)
    _refused(bundle_copy, "trained with feature version 0.9")


@pytest.mark.parametrize(
    ("damage", "match"),
    [
        ("no_manifest", "manifest.yaml not found"),
        ("bad_yaml", "not valid YAML"),
        ("no_bal_lc", "required model 'bal_lc' missing"),
        ("missing_file", "file fusion_late.onnx for model 'fusion_late' not found"),
        ("catalogue", "checksum mismatch for catalogue.npz"),
        ("garbage_onnx", "cannot be loaded by onnxruntime"),
        ("renamed_input", "inputs \\['features'\\] differ from the manifest's \\['flux_in'\\]"),
        ("unknown_role", "unknown model role 'magic'"),
    ],
)
def test_damaged_bundles_are_refused_with_one_line(bundle_copy: Path, damage: str, match: str) -> None:
    m = _manifest(bundle_copy)
    if damage == "no_manifest":
        (bundle_copy / MANIFEST).unlink()
    elif damage == "bad_yaml":
        (bundle_copy / MANIFEST).write_text("bundle: [unclosed\n")
    elif damage == "no_bal_lc":
        del m["models"]["bal_lc"]
        _write_manifest(bundle_copy, m)
    elif damage == "missing_file":
        (bundle_copy / "fusion_late.onnx").unlink()
    elif damage == "catalogue":
        with np.load(bundle_copy / "catalogue.npz") as d:
            arrays = {k: d[k] for k in d.files}
        arrays["spec_prob"] = arrays["spec_prob"][::-1].copy()
        np.savez_compressed(bundle_copy / "catalogue.npz", **arrays)
    elif damage == "garbage_onnx":
        (bundle_copy / "fusion_late.onnx").write_bytes(b"not an onnx model")
        m["models"]["fusion_late"]["sha256"] = sha256_file(bundle_copy / "fusion_late.onnx")
        _write_manifest(bundle_copy, m)
    elif damage == "renamed_input":
        m["models"]["bal_lc"]["inputs"][0]["name"] = "flux_in"
        _write_manifest(bundle_copy, m)
    elif damage == "unknown_role":
        m["models"]["magic"] = dict(m["models"]["fusion_late"])
        _write_manifest(bundle_copy, m)
    _refused(bundle_copy, match)


def test_an_untouched_copy_loads(bundle_copy: Path) -> None:
    bundle = ModelBundle.load(bundle_copy, threads=1)
    assert bundle.model_version == ModelBundle.load().model_version
