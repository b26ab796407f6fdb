"""``replay`` end to end on the real ZTF alerts: order, formats, tarballs, rejects, internal errors."""

from __future__ import annotations

import json
import math
import random
import shutil
import tarfile
from pathlib import Path
from typing import Any

import fastavro
import pyarrow.parquet as pq
import pytest

from broker_plugin import decode as decode_mod
from broker_plugin.errors import BundleError, ConfigError
from broker_plugin.files.output import RECORD_FIELDS, rejects_path
from broker_plugin.files.replay import ReplayResult, replay
from broker_plugin.models.annotate import load_model_stage
from broker_plugin.photometry import features as features_mod


@pytest.fixture(scope="module")
def dir_replay(ztf_alert_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, ReplayResult]:
    """The 128 real ZTF alerts replayed once to JSONL; several tests compare against it."""
    out = tmp_path_factory.mktemp("replay") / "night.jsonl"
    return out, replay([ztf_alert_dir], out, progress=False)


def _lines(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").splitlines()


def _rejects(out: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in _lines(rejects_path(out))]


def _read_any(path: Path) -> list[dict[str, Any]]:
    if path.suffix == ".avro":
        with open(path, "rb") as fh:
            return list(fastavro.reader(fh))
    if path.suffix == ".parquet":
        rows = pq.read_table(path).to_pylist()
        for r in rows:
            r["n_points"] = dict(r["n_points"])
            r["history"] = {k: v if k == "span_days" else dict(v) for k, v in r["history"].items()}
        return rows
    return [json.loads(line) for line in _lines(path)]


def test_directory_replay_writes_one_record_per_alert_in_order(
    dir_replay: tuple[Path, ReplayResult], ztf_alert_files: list[Path]
) -> None:
    out, result = dir_replay
    assert len(ztf_alert_files) == 128
    records = [json.loads(line) for line in _lines(out)]
    assert len(records) == result.read == result.annotated == 128
    assert result.rejected == 0 and result.internal_errors == 0
    assert rejects_path(out).exists() and rejects_path(out).read_text() == ""
    expected_ids = [decode_mod.decode_alert(f.read_bytes()).source_id for f in ztf_alert_files]
    assert [r["source_id"] for r in records] == expected_ids
    stage = load_model_stage(None)  # without --models: the default bundle shipped in the package
    model_version = stage.version if stage is not None else "none"
    for r in records:
        assert tuple(r) == RECORD_FIELDS
        assert r["survey"] == "ztf" and isinstance(r["object_id"], str) and isinstance(r["source_id"], str)
        assert all(isinstance(r[k], float) for k in ("ra", "dec", "mjd"))
        assert all(isinstance(v, int) for v in r["n_points"].values())
        hist = r["history"]
        assert list(hist) == ["packet", "store", "data_release", "other_survey", "span_days"]
        assert all(isinstance(c, int) and c >= 0 for o in list(hist)[:4] for c in hist[o].values())
        assert sum(hist["packet"].values()) > 0
        assert isinstance(hist["span_days"], float) and math.isfinite(hist["span_days"]) and hist["span_days"] >= 0
        assert tuple(r["features"]) == tuple(features_mod.FEATURE_NAMES)
        assert all(v is None or (isinstance(v, float) and math.isfinite(v)) for v in r["features"].values())
        # the bundle's rules are tested in test_inference.py
        assert r["bal_lc_prob"] is None or 0.0 <= r["bal_lc_prob"] <= 1.0
        assert isinstance(r["is_candidate"], bool)
        assert r["model_version"] == model_version and ("no_model_bundle" in r["flags"]) == (stage is None)
    assert result.alerts_per_s > 0 and {"read", "decode", "annotate", "write"} <= set(result.timings)
    assert f"128 alerts read, 128 annotated, 0 rejected, {result.candidates} candidates" in result.summary_line()


def test_tarball_replays_to_the_same_records_as_the_directory(
    dir_replay: tuple[Path, ReplayResult], ztf_alert_files: list[Path], tmp_path: Path
) -> None:
    tb = tmp_path / "ztf_public_20210101.tar.gz"
    with tarfile.open(tb, "w:gz") as tar:
        for f in ztf_alert_files:  # a nightly tarball holds <candid>.avro members at the top level
            tar.add(f, arcname=f.name)
    out = tmp_path / "from_tar.jsonl"
    result = replay([tb], out, progress=False)
    assert result.annotated == 128 and result.rejected == 0
    assert _lines(out) == _lines(dir_replay[0])


def test_batch_size_does_not_change_the_output(dir_replay: tuple[Path, ReplayResult], ztf_alert_dir: Path,
                                               tmp_path: Path) -> None:
    out = tmp_path / "b7.jsonl"
    replay([ztf_alert_dir], out, batch_size=7, progress=False)
    assert _lines(out) == _lines(dir_replay[0])


@pytest.mark.parametrize("ext", [".avro", ".parquet"])
def test_avro_and_parquet_hold_the_same_records_as_jsonl(
    dir_replay: tuple[Path, ReplayResult], ztf_alert_dir: Path, tmp_path: Path, ext: str
) -> None:
    out = tmp_path / f"night{ext}"
    replay([ztf_alert_dir], out, progress=False)
    got = _read_any(out)
    want = _read_any(dir_replay[0])
    assert got == want
    assert all(isinstance(r["source_id"], str) and isinstance(r["object_id"], str) for r in got)
    assert any(v is None for r in got for v in r["features"].values()), "expected some null features"
    assert rejects_path(out).read_text() == ""


def _corrupt_cases(good: bytes, wire: bytes) -> dict[str, tuple[bytes, str]]:
    """name -> (bytes, expected reason). Each is a distinct way real archives break."""
    flipped_sync = bytearray(good)
    flipped_sync[-3] ^= 0x10  # inside the trailing sync marker of the one data block
    flipped_schema = bytearray(good)
    flipped_schema[200] ^= 0x10  # inside the embedded JSON writer schema
    rnd = random.Random(20240101)
    noise = bytes([0xA5]) + bytes(rnd.randrange(256) for _ in range(999))
    return {
        "c1_truncated": (good[: len(good) // 2], "truncated"),
        "c2_flipped_sync": (bytes(flipped_sync), "corrupt_avro"),
        "c3_flipped_schema": (bytes(flipped_schema), "bad_schema"),
        "c4_random": (noise, "bad_magic"),
        "c5_wrong_magic": (b"Obj\x02" + good[4:], "bad_magic"),
        "c6_unknown_schema_id": (b"\x00\x00\x00\x27\x0f" + wire[5:], "unknown_schema_id"),
        "c7_empty": (b"", "empty"),
    }


def test_corrupt_inputs_go_to_rejects_and_every_good_alert_is_written_in_order(
    ztf_alert_files: list[Path], lsst_alert_files: list[Path], tmp_path: Path
) -> None:
    wire = next(f for f in lsst_alert_files if f.name.startswith("boom_wire")).read_bytes()
    good_files = ztf_alert_files[:5]
    cases = _corrupt_cases(good_files[0].read_bytes(), wire)
    d = tmp_path / "mixed"
    d.mkdir()
    # Interleave by name: good_0, c1, good_1, c2, ...
    names: list[str] = []
    for i, f in enumerate(good_files):
        shutil.copy(f, d / f"{i}a_good.avro")
        names.append(f"{i}a_good.avro")
    for i, (name, (data, _)) in enumerate(cases.items()):
        (d / f"{i % 5}b_{name}.avro").write_bytes(data)
    out = tmp_path / "mixed.jsonl"
    result = replay([d], out, batch_size=4, progress=False)

    records = [json.loads(line) for line in _lines(out)]
    assert [r["source_id"] for r in records] == [decode_mod.decode_alert(f.read_bytes()).source_id
                                                 for f in good_files]
    rejects = _rejects(out)
    got = {Path(r["origin"]).name.split("_", 1)[1].removesuffix(".avro"): r for r in rejects}
    assert {k: r["reason"] for k, r in got.items()} == {k: reason for k, (_, reason) in cases.items()}
    assert len({r["reason"] for r in rejects}) == 6
    assert [r["origin"] for r in rejects] == sorted(r["origin"] for r in rejects)  # input order
    for name, (data, _) in cases.items():
        r = got[name]
        assert r["stage"] == "decode" and r["size"] == len(data) and r["message"]
        assert r["head_hex"] == data[:16].hex() and len(r["sha256"]) == 64
    assert (result.read, result.annotated, result.rejected, result.internal_errors) == (12, 5, 7, 0)
    assert "7 rejected" in result.summary_line() and "bad_magic=2" in result.summary_line()


def test_internal_errors_are_rejected_and_the_rest_is_written(
    ztf_alert_files: list[Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A bug hit by one alert (decoder or feature code raising) must not lose the other alerts."""
    files = ztf_alert_files[:6]
    decoder = decode_mod.default_decoder()
    real_batch = features_mod.compute_features_batch
    real_decode_batch = decoder.decode_batch

    def decode_batch(payloads: list[bytes]) -> list[Any]:
        out = real_decode_batch(payloads)
        for i, data in enumerate(payloads):
            if data == files[1].read_bytes():
                out[i] = RuntimeError("decoder bug")
            elif data == files[3].read_bytes():
                lcs = out[i].lightcurves
                out[i].lightcurves = {**lcs, "poison": lcs[next(iter(lcs))]}
            elif data == files[4].read_bytes():
                out[i].ra = float("nan")
        return out

    def batch(lcs: list[dict[str, Any]]) -> Any:
        if any("poison" in lc for lc in lcs):
            raise ZeroDivisionError("feature bug")
        return real_batch(lcs)

    monkeypatch.setattr(decoder, "decode_batch", decode_batch)
    monkeypatch.setattr("broker_plugin.models.annotate.compute_features_batch", batch)
    out = tmp_path / "o.jsonl"
    result = replay(files, out, progress=False)
    assert len(_lines(out)) == 3 and result.annotated == 3
    rejects = _rejects(out)
    assert [(Path(r["origin"]).name, r["stage"], r["reason"]) for r in rejects] == [
        (files[1].name, "decode", "internal_error"),
        (files[4].name, "decode", "bad_value"),
        (files[3].name, "annotate", "internal_error"),
    ]
    assert "RuntimeError: decoder bug" in rejects[0]["message"]
    assert result.internal_errors == 2 and result.rejected == 3


def test_models_dir_that_is_not_a_bundle_is_refused(ztf_alert_files: list[Path], tmp_path: Path) -> None:
    out = tmp_path / "o.jsonl"
    with pytest.raises(BundleError, match=r"manifest\.yaml not found"):
        replay(ztf_alert_files[:1], out, models=tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        replay(ztf_alert_files[:1], out, models=tmp_path / "nope")
    assert list(tmp_path.iterdir()) == []  # validation happens before any file is created


def test_progress_bar_only_when_asked_or_on_a_terminal(
    ztf_alert_files: list[Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    replay(ztf_alert_files[:3], tmp_path / "a.jsonl")  # stderr is not a terminal under pytest
    assert capsys.readouterr().err == ""
    replay(ztf_alert_files[:3], tmp_path / "b.jsonl", progress=True)
    assert "alerts" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux) to fill a disk")
def test_replay_onto_a_full_disk_is_one_line_and_leaves_nothing(ztf_alert_dir: Path, tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """ENOSPC while writing: exit 1, one line naming the cause, no traceback, no partial output."""
    from broker_plugin.cli import main

    out = tmp_path / "night.jsonl"
    (tmp_path / "night.jsonl.partial").symlink_to("/dev/full")  # every write: No space left on device
    assert main(["replay", str(ztf_alert_dir), "--output", str(out)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "No space left on device" in err and "Traceback" not in err
    assert not out.exists() and not (tmp_path / "night.jsonl.partial").exists()
