"""Output writers: the three formats hold the same records, with explicit types and real nulls."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import fastavro
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from broker_plugin.alert import HISTORY_ORIGINS
from broker_plugin.errors import ConfigError
from broker_plugin.files.output import (
    RECORD_FIELDS,
    annotation_schema,
    check_output_path,
    open_rejects,
    open_writer,
    parquet_schema,
    rejects_path,
)

REPO = Path(__file__).resolve().parent.parent
NAMES = ("amp_g", "amp_r", "slope_g")
BIG_ID = "2476154525115015014"  # > 2**53: a float would silently change it


def _record(i: int, **over: Any) -> dict[str, Any]:
    rec: dict[str, Any] = {
        "survey": "ztf",
        "object_id": f"ZTF18aaaaaa{i:02d}",
        "source_id": str(int(BIG_ID) + i),
        "ra": 10.0 + i,
        "dec": -5.5,
        "mjd": 60000.25,
        "n_points": {"g": 3 + i, "r": 0},
        "features": {"amp_g": 0.5 * i, "amp_r": None, "slope_g": -1e-3},
        "bal_lc_prob": None,
        "bal_fusion_prob": None,
        "candidate_score": None,
        "is_candidate": False,
        "history": {"packet": {"g": 3 + i, "r": 0}, "store": {}, "data_release": {}, "other_survey": {},
                    "span_days": 0.0 if i == 0 else 1.5 * i},
        "flags": ["no_model_bundle"] if i % 2 else [],
        "model_version": "none",
    }
    rec.update(over)
    return rec


def _read_back(path: Path) -> list[dict[str, Any]]:
    """Records from any of the three formats, normalised to the JSONL shape."""
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".avro":
        with open(path, "rb") as fh:
            return list(fastavro.reader(fh))
    rows = pq.read_table(path).to_pylist()
    for r in rows:
        r["n_points"] = dict(r["n_points"])
        r["history"] = {k: v if k == "span_days" else dict(v) for k, v in r["history"].items()}
    return rows


def test_schema_copies_are_identical_and_match_the_record_contract() -> None:
    top = (REPO / "schemas" / "bal_annotation.avsc").read_bytes()
    pkg = (REPO / "broker_plugin" / "schemas" / "bal_annotation.avsc").read_bytes()
    assert top == pkg, "schemas/bal_annotation.avsc must be an exact copy of the packaged schema"
    schema = annotation_schema()
    assert schema["name"] == "bal"
    assert tuple(f["name"] for f in schema["fields"]) == RECORD_FIELDS
    fastavro.parse_schema(schema)
    assert tuple(parquet_schema(NAMES).names) == RECORD_FIELDS


@pytest.mark.parametrize("ext", [".jsonl", ".avro", ".parquet"])
def test_formats_round_trip_the_same_records(tmp_path: Path, ext: str) -> None:
    records = [_record(i) for i in range(5)] + [_record(5, bal_lc_prob=0.75, candidate_score=1.0, is_candidate=True)]
    path = tmp_path / f"out{ext}"
    with open_writer(path, feature_names=NAMES, metadata={"bal_broker.feature_version": "9.9"}) as w:
        w.write(records[:2])
        w.write([])
        w.write(records[2:])
    assert w.records_written == len(records)
    back = _read_back(path)
    assert back == records
    assert all(isinstance(r["source_id"], str) and isinstance(r["object_id"], str) for r in back)
    assert back[0]["source_id"] == BIG_ID
    assert back[0]["features"]["amp_r"] is None
    assert not (tmp_path / f"out{ext}.partial").exists()


def test_avro_and_parquet_types_are_explicit(tmp_path: Path) -> None:
    with open_writer(tmp_path / "o.avro", feature_names=NAMES, metadata={"bal_broker.feature_version": "9.9"}) as w:
        w.write([_record(1)])
    with open(tmp_path / "o.avro", "rb") as fh:
        reader = fastavro.reader(fh)
        assert reader.metadata["bal_broker.feature_version"] == "9.9"
        assert reader.writer_schema["name"] == "bal_broker.bal"
    with open_writer(tmp_path / "o.parquet", feature_names=NAMES, metadata={"bal_broker.feature_version": "9.9"}) as w:
        w.write([_record(1)])
    schema = pq.read_schema(tmp_path / "o.parquet")
    assert str(schema.field("source_id").type) == "string"
    np_type = schema.field("n_points").type
    assert pa.types.is_map(np_type) and np_type.key_type == pa.string() and np_type.item_type == pa.int32()
    assert [f.name for f in schema.field("features").type] == list(NAMES)
    hist = schema.field("history")
    assert not hist.nullable and [f.name for f in hist.type] == [*HISTORY_ORIGINS, "span_days"]
    for origin in HISTORY_ORIGINS:
        t = hist.type.field(origin).type
        assert pa.types.is_map(t) and t.key_type == pa.string() and t.item_type == pa.int32()
    assert hist.type.field("span_days").type == pa.float64()
    assert schema.metadata[b"bal_broker.feature_version"] == b"9.9"


def _rich_history(i: int) -> dict[str, Any]:
    """A history with points of every origin, bands of both surveys and an empty map among them."""
    return {
        "packet": {"g": 1 + i, "r": 2},
        "store": {"g": 10 * i, "r": 7, "i": 0},
        "data_release": {"u": 2**20, "g": 300 + i, "r": 250, "z": 1} if i % 2 else {},
        "other_survey": {"y": 4} if i == 3 else {},
        "span_days": 3650.123456789 + i,
    }


def test_history_round_trips_identically_through_every_format(tmp_path: Path) -> None:
    records = [_record(i, history=_rich_history(i)) for i in range(4)]
    backs = {}
    for ext in (".jsonl", ".avro", ".parquet"):
        path = tmp_path / f"h{ext}"
        with open_writer(path, feature_names=NAMES) as w:
            w.write(records)
        backs[ext] = _read_back(path)
        assert [r["history"] for r in backs[ext]] == [r["history"] for r in records], ext
        for r in backs[ext]:
            assert list(r["history"]) == [*HISTORY_ORIGINS, "span_days"], ext
            assert all(isinstance(c, int) for o in HISTORY_ORIGINS for c in r["history"][o].values()), ext
            assert isinstance(r["history"]["span_days"], float), ext
            assert tuple(r) == RECORD_FIELDS, ext
    # band order inside each map survives too, not only the mapping
    for ext, back in backs.items():
        assert [[list(r["history"][o]) for o in HISTORY_ORIGINS] for r in back] == \
            [[list(r["history"][o]) for o in HISTORY_ORIGINS] for r in records], ext


def test_avro_readers_of_older_files_get_the_history_default(tmp_path: Path) -> None:
    """A file written with the schema before ``history`` reads, with today's schema, as empty maps and 0.0."""
    old_schema = annotation_schema() | {"fields": [f for f in annotation_schema()["fields"] if f["name"] != "history"]}
    old = {k: v for k, v in _record(1).items() if k != "history"}
    path = tmp_path / "old.avro"
    with open(path, "wb") as fh:
        fastavro.writer(fh, fastavro.parse_schema(old_schema), [old])
    with open(path, "rb") as fh:
        (back,) = list(fastavro.reader(fh, reader_schema=fastavro.parse_schema(annotation_schema())))
    assert back["history"] == {"packet": {}, "store": {}, "data_release": {}, "other_survey": {}, "span_days": 0.0}
    assert {k: v for k, v in back.items() if k != "history"} == old


@pytest.mark.parametrize("ext", [".jsonl", ".avro", ".parquet"])
def test_non_finite_history_span_is_refused(tmp_path: Path, ext: str) -> None:
    bad = _record(0, history=_rich_history(0) | {"span_days": float("inf")})
    path = tmp_path / f"span{ext}"
    with pytest.raises(ValueError), open_writer(path, feature_names=NAMES) as w:
        w.write([bad])
    assert not path.exists() and not (tmp_path / f"span{ext}.partial").exists()


def test_empty_output_still_has_a_schema(tmp_path: Path) -> None:
    for ext in (".avro", ".parquet", ".jsonl"):
        with open_writer(tmp_path / f"e{ext}", feature_names=NAMES):
            pass
        assert _read_back(tmp_path / f"e{ext}") == []
    assert tuple(pq.read_schema(tmp_path / "e.parquet").names) == RECORD_FIELDS


def test_parquet_writes_bounded_row_groups(tmp_path: Path) -> None:
    from broker_plugin.files.output import ParquetWriter

    with ParquetWriter(tmp_path / "g.parquet", NAMES, row_group_size=10) as w:
        for start in range(0, 25, 4):
            w.write([_record(i) for i in range(start, min(start + 4, 25))])
            assert len(w._buffer) < 10
    meta = pq.ParquetFile(tmp_path / "g.parquet").metadata
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [10, 10, 5]


@pytest.mark.parametrize("ext", [".jsonl", ".avro", ".parquet"])
def test_nan_is_refused_not_written(tmp_path: Path, ext: str) -> None:
    bad = _record(0, features={"amp_g": float("nan"), "amp_r": None, "slope_g": 1.0})
    path = tmp_path / f"nan{ext}"
    with pytest.raises(ValueError), open_writer(path, feature_names=NAMES) as w:
        w.write([bad])
    assert not path.exists() and not (tmp_path / f"nan{ext}.partial").exists()


def test_unknown_extension_and_bad_directory_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.jsonl"):
        open_writer(tmp_path / "out.csv", feature_names=NAMES)
    with pytest.raises(ConfigError, match="does not exist"):
        check_output_path(tmp_path / "missing" / "out.jsonl")
    (tmp_path / "d.jsonl").mkdir()
    with pytest.raises(ConfigError, match="is a directory"):
        check_output_path(tmp_path / "d.jsonl")
    assert check_output_path("out.JSONL") == Path("out.JSONL")


def test_rejects_file_lines(tmp_path: Path) -> None:
    out = tmp_path / "night.avro"
    assert rejects_path(out) == tmp_path / "night.avro.rejects.jsonl"
    with open_rejects(out) as rj:
        rj.reject("a.tar.gz:x.avro", "truncated", "ends early", b"Obj\x01" + bytes(40), "decode")
    (line,) = rejects_path(out).read_text().splitlines()
    rec = json.loads(line)
    assert rec["origin"] == "a.tar.gz:x.avro" and rec["reason"] == "truncated" and rec["stage"] == "decode"
    assert rec["size"] == 44 and rec["head_hex"].startswith("4f626a01") and len(rec["sha256"]) == 64
