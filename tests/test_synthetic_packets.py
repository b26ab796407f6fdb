"""Synthetic alert packets: real ZTF containers and Rubin wire-format messages, decodable and exact."""

from __future__ import annotations

import gzip
import io
import json
import re
import struct
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from training.synthetic import packets as P
from training.synthetic.avrofast import compile_encoder, encode_long


@pytest.fixture(scope="module")
def night() -> list[tuple[bytes, dict[str, Any]]]:
    return P.generate_night(60, seed=21)


def _fits_image(data: bytes) -> np.ndarray:
    from astropy.io import fits

    with fits.open(io.BytesIO(data)) as hdul:
        return np.asarray(hdul[0].data)


def test_night_mixes_surveys_and_classes(night: list[tuple[bytes, dict[str, Any]]]) -> None:
    surveys = {t["survey"] for _, t in night}
    labels = {t["label"] for _, t in night}
    assert surveys == {"ztf", "lsst"}
    assert {"qso_nonbal", "star", "sn"} <= labels
    mjds = [t["mjd"] for _, t in night]
    assert mjds == sorted(mjds)
    assert all(P.DEFAULT_NIGHT_MJD <= m < P.DEFAULT_NIGHT_MJD + 1 for m in mjds)


def test_ztf_packets_are_valid_containers_with_stamps(night: list[tuple[bytes, dict[str, Any]]]) -> None:
    candids = set()
    for packet, truth in night:
        if truth["survey"] != "ztf":
            continue
        reader = fastavro.reader(io.BytesIO(packet))  # the embedded schema alone must suffice
        assert reader.writer_schema["name"] == "ztf.alert"
        records = list(reader)
        assert len(records) == 1
        rec = records[0]
        assert rec["schemavsn"] == "4.02" and rec["publisher"] == P.SYNTHETIC_PUBLISHER
        assert re.fullmatch(r"ZTF\d{2}[a-z]{7}", rec["objectId"])
        cand = rec["candidate"]
        assert cand["programpi"] == "synthetic" and cand["candid"] == rec["candid"]
        assert cand["candid"] not in candids
        candids.add(cand["candid"])
        assert cand["jd"] - 2400000.5 == pytest.approx(truth["mjd"], abs=1e-6)
        assert cand["magpsf"] < cand["diffmaglim"] + 0.3
        for prv in rec["prv_candidates"] or []:
            assert 0 < cand["jd"] - prv["jd"] <= 30.0 + 1e-6
            assert (prv["magpsf"] is None) == (prv["candid"] is None)
        for key in ("cutoutScience", "cutoutTemplate", "cutoutDifference"):
            stamp = rec[key]["stampData"]
            assert stamp[:2] == b"\x1f\x8b"
            img = _fits_image(gzip.decompress(stamp))
            assert img.shape == (63, 63)


def test_rubin_packets_are_wire_format(night: list[tuple[bytes, dict[str, Any]]]) -> None:
    schema = P.rubin_schema("11.0")
    n = 0
    for packet, truth in night:
        if truth["survey"] != "lsst":
            continue
        n += 1
        assert packet[0] == 0
        assert struct.unpack(">I", packet[1:5])[0] == 1100
        rec = fastavro.schemaless_reader(io.BytesIO(packet[5:]), schema)
        src = rec["diaSource"]
        assert rec["diaSourceId"] == src["diaSourceId"] >= P.RUBIN_SOURCE_ID_BASE
        assert str(rec["diaObject"]["diaObjectId"]) == truth["object_id"]
        assert src["midpointMjdTai"] == pytest.approx(truth["mjd"])
        for s in [src, *(rec["prvDiaSources"] or []), *(rec["prvDiaForcedSources"] or [])]:
            assert s["scienceFlux"] == pytest.approx(
                (s.get("templateFlux") if s.get("templateFlux") is not None else s["scienceFlux"] - s["psfFlux"])
                + s["psfFlux"], rel=1e-5)
        for s in rec["prvDiaSources"] or []:
            assert s["midpointMjdTai"] < src["midpointMjdTai"]
        assert _fits_image(rec["cutoutDifference"]).ndim == 2
    assert n > 0


def test_same_seed_same_bytes() -> None:
    a = P.generate_night(12, seed=5)
    b = P.generate_night(12, seed=5)
    assert [p for p, _ in a] == [p for p, _ in b]
    c = P.generate_night(12, seed=6)
    assert [p for p, _ in a] != [p for p, _ in c]
    # alert i does not depend on how many alerts are generated
    d = P.generate_night(6, seed=5, sort_by_time=False)
    e = P.generate_night(12, seed=5, sort_by_time=False)
    assert [p for p, _ in d] == [p for p, _ in e[:6]]


def test_compiled_encoder_matches_fastavro(night: list[tuple[bytes, dict[str, Any]]]) -> None:
    ztf_parsed, lsst_parsed = P.ztf_schema(), P.rubin_schema()
    for packet, truth in night[:30]:
        if truth["survey"] == "ztf":
            rec = next(fastavro.reader(io.BytesIO(packet)))
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, ztf_parsed, rec)
            assert P.ztf_encoder()(rec) == buf.getvalue()
        else:
            rec = fastavro.schemaless_reader(io.BytesIO(packet[5:]), lsst_parsed)
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, lsst_parsed, rec)
            assert P.rubin_encoder()(rec) == buf.getvalue() == packet[5:]


def test_avrofast_primitives_and_errors() -> None:
    for n in (0, 1, -1, 63, 64, -65, 2**31, -(2**63), 2**63 - 1):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, {"type": "long"}, n)
        assert encode_long(n) == buf.getvalue()
    schema = {"type": "record", "name": "t", "fields": [
        {"name": "a", "type": ["null", "string"], "default": None},
        {"name": "b", "type": {"type": "array", "items": "double"}},
        {"name": "c", "type": "boolean"}, {"name": "d", "type": "bytes"}, {"name": "e", "type": "float"}]}
    rec = {"b": [1.5, -2.0], "c": True, "d": b"xy", "e": 0.1}
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(schema), rec)
    assert compile_encoder(schema)(rec) == buf.getvalue()
    with pytest.raises(ValueError):
        compile_encoder({"type": "record", "name": "u", "fields": [{"name": "x", "type": ["int", "string"]}]})


def test_packets_decode_through_the_plugin_with_exact_dc_magnitudes(night: list[tuple[bytes, dict[str, Any]]]) -> None:
    decode = pytest.importorskip("broker_plugin.decode")
    n_points = 0
    for packet, truth in night:
        alert = decode.decode_alert(packet)
        assert alert.survey == truth["survey"]
        assert alert.object_id == truth["object_id"]
        assert alert.source_id == truth["source_id"]
        assert alert.mjd == pytest.approx(truth["mjd"], abs=1e-6)
        ep = truth["epochs"]
        for band, lc in alert.lightcurves.items():
            if lc.kind != "dc":
                continue
            for mjd, mag, flux in zip(lc.mjd, lc.mag, lc.flux, strict=True):
                k = int(np.argmin(np.abs(ep["mjd"] - mjd)))
                assert abs(ep["mjd"][k] - mjd) < 1e-5 and ep["band"][k] == band
                assert flux == pytest.approx(ep["dc_flux"][k], rel=1e-4, abs=1e-3)
                if np.isfinite(ep["dc_mag"][k]):
                    assert mag == pytest.approx(ep["dc_mag"][k], abs=1e-3)
                    n_points += 1
        if truth["label"].startswith("qso"):
            assert alert.lightcurves[truth["band"]].kind == "dc"
    assert n_points > 200


def test_write_night(tmp_path: Path) -> None:
    paths = P.write_night(tmp_path, 8, seed=3)
    assert len(paths) == 8 and all(p.suffix == ".avro" and p.stat().st_size > 1000 for p in paths)
    rows = [json.loads(line) for line in (tmp_path / "truth.jsonl").read_text().splitlines()]
    assert [r["file"] for r in rows] == [p.name for p in paths]
    assert all("epochs" not in r for r in rows)
    for p in paths:
        if p.name.startswith("ztf_"):
            assert p.read_bytes()[:4] == b"Obj\x01"
        else:
            assert p.read_bytes()[0] == 0


def test_write_night_data_release_archive(tmp_path: Path) -> None:
    """The archive: one source per chosen object at its exact position, multi-year, ending before the alert,
    from the same night (the other alerts are unchanged by it)."""
    from broker_plugin.files.dr_lightcurves import load_ztf_lightcurves
    from broker_plugin.history.sky import separation_arcsec
    from training.synthetic.dr_archive import DR_LAG_DAYS

    dr_path = tmp_path / "dr.csv"
    paths = P.write_night(tmp_path / "night", 40, seed=5, survey_mix={"ztf": 1.0}, stamps=False,
                          dr_fraction=0.6, dr_path=dr_path)
    plain = P.write_night(tmp_path / "plain", 40, seed=5, survey_mix={"ztf": 1.0}, stamps=False)
    rows = [json.loads(line) for line in (tmp_path / "night" / "truth.jsonl").read_text().splitlines()]
    chosen = [r for r in rows if r["data_release"]]
    assert 5 <= len(chosen) < len(rows)
    assert all(r["label"] in ("qso_bal", "qso_nonbal", "star", "blazar") for r in chosen)
    for p, q, r in zip(paths, plain, rows, strict=True):  # the alerts without an archive entry are unchanged
        assert (p.read_bytes() == q.read_bytes()) or r["data_release"]
    lcset = load_ztf_lightcurves(dr_path)
    assert len(lcset) == len(chosen)
    for r in chosen:
        key = min(lcset.positions, key=lambda k: separation_arcsec(r["ra"], r["dec"], *lcset.positions[k]))
        assert separation_arcsec(r["ra"], r["dec"], *lcset.positions[key]) < 1e-3
        lcs = lcset[key]
        assert set(lcs) <= {"g", "r"} and all(lc.kind == "dc" for lc in lcs.values())
        t_min = min(float(lc.mjd.min()) for lc in lcs.values() if len(lc))
        t_max = max(float(lc.mjd.max()) for lc in lcs.values() if len(lc))
        assert t_max <= r["mjd"] - DR_LAG_DAYS + 1e-6
        assert r["mjd"] - t_min > 2.5 * 365.25  # multi-year: the packet alone covers 90 days
        assert sum(len(lc) for lc in lcs.values()) > 100
        assert len(lcset.oids[key]) == len(lcs)  # one oid per band
    assert not (tmp_path / "plain" / "ztf_dr_lightcurves.csv").exists()
