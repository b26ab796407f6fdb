"""ZTF decoding on the real public alerts in ../shared/data/ztf (schemas 1.8 to 4.02)."""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

import cramjam
import fastavro
import numpy as np
import pytest

from broker_plugin.alert import Alert
from broker_plugin.decode import META_FIELDS, Decoder, alert_from_record, decode_alert, decode_container_records
from broker_plugin.errors import DecodeError

EXPECTED_VERSIONS = {"1.8", "2.0", "3.1", "3.2", "3.3", "3.5", "4.01", "4.02"}


def _container(records: list[dict], schema: dict, codec: str = "null") -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, codec=codec)
    return buf.getvalue()


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _hand_container(schema: dict, records: list[dict], codec: str, compress) -> bytes:
    """An object container written by hand (for codecs fastavro cannot write here, e.g. zstandard)."""
    body = io.BytesIO()
    parsed = fastavro.parse_schema(schema)
    for r in records:
        fastavro.schemaless_writer(body, parsed, r)
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": codec.encode()}
    head = b"Obj\x01" + _zigzag(len(meta))
    for k, v in meta.items():
        head += _zigzag(len(k)) + k + _zigzag(len(v)) + v
    sync = bytes(range(16))
    block = compress(body.getvalue())
    return head + _zigzag(0) + sync + _zigzag(len(records)) + _zigzag(len(block)) + block + sync


def _reference(path: Path) -> tuple[dict, dict]:
    """The record and writer schema as plain fastavro reads them (the independent reference)."""
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        records = list(reader)
        return records[0], reader.writer_schema


def test_all_128_ztf_alerts_decode(ztf_alert_files: list[Path]) -> None:
    assert len(ztf_alert_files) == 128
    versions: set[str] = set()
    n_fp = 0
    for path in ztf_alert_files:
        data = path.read_bytes()
        alert = decode_alert(data)
        ref, _ = _reference(path)
        cand = ref["candidate"]
        assert isinstance(alert, Alert)
        assert alert.survey == "ztf"
        assert alert.object_id == ref["objectId"]
        assert alert.source_id == str(ref["candid"])
        assert alert.ra == cand["ra"] and alert.dec == cand["dec"]
        assert alert.mjd == pytest.approx(cand["jd"] - 2400000.5, abs=1e-9)
        assert alert.band == {1: "g", 2: "r", 3: "i"}[cand["fid"]]
        assert alert.raw is data or alert.raw == data
        assert alert.record["candid"] == ref["candid"]
        assert tuple(alert.meta) == META_FIELDS
        assert set(alert.cutouts) == {"science", "template", "difference"}
        for stamp in alert.cutouts.values():
            assert stamp is None or stamp[:2] == b"\x1f\x8b"  # gzipped FITS stamps
        assert alert.meta["isdiffpos"] in (1.0, -1.0)
        assert alert.lightcurves, f"{path.name}: no light curve"
        assert alert.band in alert.lightcurves or "dc_nonpositive_dropped" in alert.flags
        versions.add(alert.schema_version)
        n_fp += "fp_hists_used" in alert.flags
    assert versions == EXPECTED_VERSIONS
    assert n_fp > 0  # the 4.x alerts with forced photometry use it


def test_schema_version_prefers_record_then_writer_schema(ztf_alert_dir: Path) -> None:
    # finksim files: the embedded schema says 3.1 but the record's schemavsn is 3.2; 1.8 has no schemavsn.
    finksim = next(ztf_alert_dir.glob("finksim_*.avro"))
    assert decode_alert(finksim.read_bytes()).schema_version == "3.2"
    old = ztf_alert_dir / "ztfavro_396522680015040000_v1.8.avro"
    assert decode_alert(old.read_bytes()).schema_version == "1.8"


def test_ztf21abiuvdk_each_alert_has_g_or_r_light_curve(ztf_alert_dir: Path) -> None:
    files = sorted(ztf_alert_dir.glob("pgb_ZTF21abiuvdk.*"))
    assert len(files) == 34
    alerts = [decode_alert(p.read_bytes()) for p in files]
    for alert in alerts:
        assert alert.object_id == "ZTF21abiuvdk"
        assert {"g", "r"} & set(alert.lightcurves)
        for lc in alert.lightcurves.values():
            assert len(lc) >= 1
            assert np.all(np.diff(lc.mjd) > 1e-6)  # sorted, one point per epoch
    # the trigger epoch is in its band's light curve
    for alert in alerts:
        lc = alert.lightcurves.get(alert.band)
        if lc is not None:
            assert np.min(np.abs(lc.mjd - alert.mjd)) < 1e-6
    # the light curve accumulates: the longest one has more epochs than the shortest
    sizes = [sum(len(lc) for lc in a.lightcurves.values()) for a in alerts]
    assert max(sizes) > min(sizes)


def test_same_alert_in_two_schema_versions_gives_the_same_alert(ztf_alert_dir: Path) -> None:
    a31 = decode_alert((ztf_alert_dir / "ztfavro_472263571115115000_v3.1.avro").read_bytes())
    a33 = decode_alert((ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro").read_bytes())
    assert (a31.schema_version, a33.schema_version) == ("3.1", "3.3")
    assert (a31.object_id, a31.source_id, a31.ra, a31.dec, a31.mjd) == (
        a33.object_id, a33.source_id, a33.ra, a33.dec, a33.mjd)
    assert set(a31.lightcurves) == set(a33.lightcurves)
    for band, lc in a31.lightcurves.items():
        np.testing.assert_array_equal(lc.mjd, a33.lightcurves[band].mjd)
        np.testing.assert_allclose(lc.flux, a33.lightcurves[band].flux)


def test_spark_rewritten_snappy_ztf_files_decode(ztf_rewritten_files: list[Path]) -> None:
    assert len(ztf_rewritten_files) == 6
    for path in ztf_rewritten_files:
        ref, schema = _reference(path)
        assert schema["name"] == "topLevelRecord"
        alert = decode_alert(path.read_bytes())
        assert alert.survey == "ztf"
        assert alert.object_id == ref["objectId"]
        assert alert.source_id == str(ref["candidate"]["candid"])  # no top-level candid in rewrites
        assert alert.schema_version == ref["schemavsn"]
        assert alert.lightcurves


@pytest.mark.parametrize("codec", ["null", "deflate", "snappy", "bzip2", "xz"])
def test_container_codecs(ztf_alert_dir: Path, codec: str) -> None:
    path = ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro"
    ref, schema = _reference(path)
    alert = decode_alert(_container([ref], schema, codec))
    assert alert.source_id == str(ref["candid"])
    assert alert.record == ref


def test_zstandard_container(ztf_alert_dir: Path) -> None:
    ref, schema = _reference(ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro")
    data = _hand_container(schema, [ref], "zstandard", lambda b: bytes(cramjam.zstd.compress(b)))
    assert decode_alert(data).record == ref
    # the hand-made writer is right: the same bytes with codec null decode too
    assert decode_alert(_hand_container(schema, [ref], "null", lambda b: b)).record == ref


def test_schema_parsed_once_per_header(ztf_alert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The embedded schema is parsed on the first message with that header only (hot-path cost)."""
    from broker_plugin.decode import schemas

    calls = []
    real = schemas.parse_schema
    monkeypatch.setattr(schemas, "parse_schema", lambda s: calls.append(1) or real(s))
    monkeypatch.setattr(schemas, "_embedded", {})
    files = sorted(ztf_alert_dir.glob("pgb_ZTF21abiuvdk.*"))[:10]
    for p in files:
        decode_alert(p.read_bytes())
    assert len(calls) == 1


def test_multi_record_container(ztf_alert_dir: Path) -> None:
    path = ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro"
    ref, schema = _reference(path)
    data = _container([ref, ref, ref], schema, "deflate")
    assert len(decode_container_records(data)) == 3
    with pytest.raises(DecodeError) as exc:
        decode_alert(data)
    assert exc.value.reason == "multiple_records"


def test_alert_from_record_matches_decode(ztf_alert_dir: Path) -> None:
    """A record that arrives already decoded (e.g. a Parquet row) takes the same path."""
    path = ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro"
    ref, _ = _reference(path)
    a = alert_from_record(ref)
    b = decode_alert(path.read_bytes())
    assert (a.object_id, a.source_id, a.mjd, a.schema_version) == (b.object_id, b.source_id, b.mjd, b.schema_version)
    assert a.meta.keys() == b.meta.keys()
    assert all(a.meta[k] == b.meta[k] or (math.isnan(a.meta[k]) and math.isnan(b.meta[k])) for k in a.meta)


def test_meta_sentinels_become_nan(ztf_alert_dir: Path) -> None:
    path = ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro"
    ref, _ = _reference(path)
    ref["candidate"]["sgscore1"] = -999.0
    ref["candidate"]["drb"] = None
    alert = alert_from_record(ref)
    assert math.isnan(alert.meta["sgscore1"]) and math.isnan(alert.meta["drb"])
    assert math.isnan(alert.meta["reliability"])  # the Rubin fields exist, NaN, for one fixed vector


def test_decoder_instances_are_independent(ztf_alert_dir: Path) -> None:
    data = (ztf_alert_dir / "ztfavro_472263571115115000_v3.3.avro").read_bytes()
    small = Decoder(max_message_bytes=1000)
    with pytest.raises(DecodeError) as exc:
        small.decode(data)
    assert exc.value.reason == "too_large"
    assert decode_alert(data).object_id == "ZTF17aaajnnn"
