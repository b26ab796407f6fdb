"""The candidate score on every real alert of ../shared/data, through ``replay`` and the default
bundle: a finite, embedding-based ``candidate_score`` wherever the alert has usable cutouts and a
BAL probability; null with a flag that says why everywhere else (missing cutouts: the Rubin
samples; corrupt cutouts: a real ZTF record re-encoded with garbage stamps; too few points)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from broker_plugin.files.replay import replay
from broker_plugin.models.bundle import MANIFEST, ModelBundle, default_bundle_path
from broker_plugin.models.inference import FLAG_NO_CANDIDATE_SCORER, FLAG_TOO_FEW_POINTS
from broker_plugin.models.scoring import FLAG_BAL_PRIOR, FLAG_NO_CUTOUTS

DEFAULT = default_bundle_path()
pytestmark = pytest.mark.skipif(not (DEFAULT / MANIFEST).is_file(),
                                reason="no default bundle in broker_plugin/bundle (run `make bundle`)")


def _replay(inputs: list[Path], out: Path) -> list[dict[str, Any]]:
    result = replay(inputs, out, progress=False)
    assert result.rejected == 0 and result.internal_errors == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(records) == result.annotated
    return records


def _points(r: dict[str, Any]) -> int:
    return max(r["n_points"].get("g", 0), r["n_points"].get("r", 0))


def _check_record(r: dict[str, Any], rules: tuple[int, float], has_cutouts: bool) -> None:
    """The rules of broker_plugin.models.scoring / inference on one output record."""
    min_points, threshold = rules
    if _points(r) >= min_points:
        assert r["bal_lc_prob"] is not None and 0.0 <= r["bal_lc_prob"] <= 1.0, r
    else:
        assert r["bal_lc_prob"] is None and FLAG_TOO_FEW_POINTS in r["flags"], r
    has_bal = r["bal_lc_prob"] is not None or r["bal_fusion_prob"] is not None
    assert FLAG_NO_CANDIDATE_SCORER not in r["flags"]
    if has_cutouts:
        s = r["candidate_score"]
        assert s is not None and math.isfinite(s) and 0.0 <= s <= 1.0, r
        if has_bal:
            assert s <= max(p for p in (r["bal_lc_prob"], r["bal_fusion_prob"]) if p is not None) + 1e-12
            assert r["is_candidate"] == (s >= threshold)
        else:  # scored with the training prior, flagged, never a candidate
            assert FLAG_BAL_PRIOR in r["flags"] and not r["is_candidate"], r
    else:
        assert r["candidate_score"] is None and not r["is_candidate"], r
        assert FLAG_NO_CUTOUTS in r["flags"], r


@pytest.fixture(scope="module")
def rules() -> tuple[int, float]:
    """(min_points, candidate_threshold) of the default bundle."""
    m = ModelBundle.load().manifest
    return int(m["models"]["bal_lc"].get("min_points", 5)), float(m["bundle"]["candidate_threshold"])


def test_default_bundle_carries_the_candidate_scorer() -> None:
    bundle = ModelBundle.load()
    assert bundle.has("cutout_encoder") and bundle.has("ranking_head")
    td = bundle.manifest["models"]["bal_lc"]["training_data"]
    assert td["lc_history"]["mode"] in ("dr", "alert", "mixed")


def test_every_real_ztf_alert_gets_an_embedding_based_score(ztf_alert_dir: Path, tmp_path: Path,
                                                            rules: tuple[int, float]) -> None:
    records = _replay([ztf_alert_dir], tmp_path / "ztf.jsonl")
    assert len(records) == 128
    for r in records:
        _check_record(r, rules, has_cutouts=True)  # every real ZTF alert carries its three stamps
    assert all(r["candidate_score"] is not None for r in records)
    # the score depends on the alert (the embedding and the head), not only on the BAL probability
    ratios = {round(r["candidate_score"] / r["bal_lc_prob"], 6) for r in records if (r["bal_lc_prob"] or 0) > 0}
    assert len(ratios) > 1


def test_rubin_alerts_without_cutouts_get_null_and_a_flag(lsst_alert_files: list[Path], tmp_path: Path,
                                                          rules: tuple[int, float]) -> None:
    from broker_plugin.decode import decode_alert
    from broker_plugin.models.scoring import cutouts_usable
    from broker_plugin.photometry.cutouts import cutout_batch

    assert lsst_alert_files
    records = _replay(lsst_alert_files, tmp_path / "lsst.jsonl")
    assert len(records) == len(lsst_alert_files)
    _, cflags = cutout_batch([decode_alert(p.read_bytes()).cutouts for p in lsst_alert_files])
    usable = cutouts_usable(cflags)
    assert (~usable).sum() >= 1, "the Rubin samples include alerts without cutouts"
    for r, ok in zip(records, usable.tolist(), strict=True):
        _check_record(r, rules, has_cutouts=ok)


def _ztf_with_garbage_stamps(path: Path) -> bytes:
    """The ZTF alert at ``path`` re-encoded with its own schema, every stampData replaced by garbage."""
    with open(path, "rb") as fh:
        reader = fastavro.reader(fh)
        schema = reader.writer_schema
        records = list(reader)
    rng = np.random.default_rng(0)
    for rec in records:
        for kind in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            rec[kind] = {**rec[kind], "stampData": b"\x1f\x8b garbage " + rng.bytes(64)}
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records)
    return buf.getvalue()


def test_corrupt_cutouts_give_null_score_and_flag(ztf_alert_files: list[Path], tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    picked = ztf_alert_files[:6]
    for p in picked:
        (src / p.name).write_bytes(_ztf_with_garbage_stamps(p))
    records = _replay([src], tmp_path / "corrupt.jsonl")
    intact = _replay(picked, tmp_path / "intact.jsonl")
    assert len(records) == len(picked)
    for r, ok in zip(records, intact, strict=True):
        assert r["object_id"] == ok["object_id"]
        assert r["bal_lc_prob"] == ok["bal_lc_prob"]  # the light curve is untouched
        assert r["candidate_score"] is None and not r["is_candidate"]
        assert FLAG_NO_CUTOUTS in r["flags"]
        assert {"cutout_bad_science", "cutout_bad_template", "cutout_bad_difference"} <= set(r["flags"]), r["flags"]
    assert any(r["candidate_score"] is not None for r in intact)
