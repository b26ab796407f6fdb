"""The compiled Avro reader and the projected decode give exactly what fastavro gives.

Why these tests: ``broker_plugin.decode.fastread`` replaces fastavro on the hot path (3x faster), and
``Decoder.decode`` decodes only the fields the Alert is built from. Both are only acceptable if
nothing observable changes: the same records (keys, order, types, values), the same Alerts (light
curves bit for bit, meta, flags, cutouts), the same accept/reject decision and reason on damaged
bytes, and ``Alert.record`` still the whole record.
"""

from __future__ import annotations

import io
import math
import pickle
import random
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from broker_plugin.alert import Alert
from broker_plugin.decode import Decoder, alert_from_record
from broker_plugin.decode.avro import CONTAINER_MAGIC, container_blocks, decompress, read_container_header
from broker_plugin.decode.decoder import DECODE_FIELDS, LazyRecord
from broker_plugin.decode.fastread import CompiledReader, compile_reader
from broker_plugin.decode.schemas import embedded_schema, lsst_schema_root, packaged_lsst_schema, packaged_lsst_versions
from broker_plugin.errors import DecodeError


def _messages(shared: Path | None) -> list[bytes]:
    out: list[bytes] = []
    if shared is not None:
        for sub in ("ztf/alerts", "lsst/alerts", "ztf/alerts_rewritten", "lsst/alerts_rewritten"):
            out += [p.read_bytes() for p in sorted((shared / sub).glob("*.avro"))]
    try:
        from training.synthetic import packets
    except ImportError:
        return out
    out += [data for data, _truth in packets.generate_night(24, seed=5)]
    return out


@pytest.fixture(scope="module")
def messages(request: pytest.FixtureRequest) -> list[bytes]:
    from tests.conftest import SHARED_DATA

    msgs = _messages(SHARED_DATA if SHARED_DATA.is_dir() else None)
    if not msgs:
        pytest.skip("no alert messages available")
    return msgs


def _body_and_schema(data: bytes) -> tuple[list[tuple[int, bytes]], Any]:
    if data.startswith(CONTAINER_MAGIC):
        header = read_container_header(data)
        ws = embedded_schema(header.meta_key)
        return [(c, decompress(ws.codec, b, 1 << 26)) for c, b in container_blocks(data, header) if c], ws.parsed
    ws = packaged_lsst_schema(int.from_bytes(data[1:5], "big"))
    assert ws is not None
    return [(1, data[5:])], ws.parsed


def _fastavro(body: bytes, schema: Any, count: int) -> list[Any]:
    fo = io.BytesIO(body)
    return [fastavro.schemaless_reader(fo, schema, None) for _ in range(count)]


def _same(a: Any, b: Any) -> bool:
    """Equal values of equal types, NaN equal to NaN, dict keys in the same order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, float) and math.isnan(a):
        return math.isnan(b)
    return bool(a == b)


def test_compiled_reader_matches_fastavro(messages: list[bytes]) -> None:
    compiled: dict[int, Any] = {}
    n = 0
    for data in messages:
        blocks, schema = _body_and_schema(data)
        reader = compiled.setdefault(id(schema), compile_reader(schema))
        assert reader is not None
        for count, body in blocks:
            pos, got = 0, []
            for _ in range(count):
                datum, pos = reader(body, pos)
                got.append(datum)
            assert pos == len(body)
            assert _same(got, _fastavro(body, schema, count))
            n += count
    assert n >= len(messages)


def test_compiled_reader_on_every_shipped_rubin_schema() -> None:
    root = lsst_schema_root()
    if root is None:
        pytest.skip("lsst-alert-packet not installed")
    checked = 0
    for major, minor in packaged_lsst_versions():
        sample = root / str(major) / str(minor) / "sample_data" / "fakeAlert.avro"
        ws = packaged_lsst_schema(major * 100 + minor)
        if ws is None or not sample.is_file():
            continue
        reader = compile_reader(ws.parsed)
        assert reader is not None
        for rec in fastavro.reader(io.BytesIO(sample.read_bytes())):
            buf = io.BytesIO()
            fastavro.schemaless_writer(buf, ws.parsed, rec)
            body = buf.getvalue()
            datum, pos = reader(body, 0)
            assert pos == len(body)
            assert _same(datum, _fastavro(body, ws.parsed, 1)[0])  # logical types (timestamps) included
            checked += 1
    assert checked


def _alert_fields(a: Alert) -> dict[str, Any]:
    return {"survey": a.survey, "object_id": a.object_id, "source_id": a.source_id, "ra": a.ra, "dec": a.dec,
            "mjd": a.mjd, "band": a.band, "schema_version": a.schema_version, "flags": list(a.flags),
            "cutouts": dict(a.cutouts), "raw": a.raw}


def _assert_same_alert(a: Alert, b: Alert) -> None:
    assert _alert_fields(a) == _alert_fields(b)
    assert list(a.meta) == list(b.meta)
    for k in a.meta:
        assert a.meta[k] == b.meta[k] or (math.isnan(a.meta[k]) and math.isnan(b.meta[k])), k
    assert list(a.lightcurves) == list(b.lightcurves)
    for band, lc in a.lightcurves.items():
        other = b.lightcurves[band]
        assert lc.kind == other.kind
        for name in ("mjd", "mag", "mag_err", "flux", "flux_err"):
            np.testing.assert_array_equal(getattr(lc, name), getattr(other, name))
    assert list(a.upper_limits) == list(b.upper_limits)
    for band, ul in a.upper_limits.items():
        np.testing.assert_array_equal(ul.mjd, b.upper_limits[band].mjd)
        np.testing.assert_array_equal(ul.limit_mag, b.upper_limits[band].limit_mag)


def test_projected_decode_builds_the_same_alert_and_keeps_the_whole_record(messages: list[bytes]) -> None:
    decoder = Decoder()
    for data in messages:
        blocks, schema = _body_and_schema(data)
        if sum(c for c, _ in blocks) != 1:
            continue
        full = _fastavro(blocks[0][1], schema, 1)[0]
        for _ in range(2):  # first use: fastavro; second: the compiled projected reader
            alert = decoder.decode(data)
        assert isinstance(alert.record, LazyRecord)
        reference = alert_from_record(full, schema_version=alert.schema_version, raw=data)
        _assert_same_alert(alert, reference)
        assert _same(alert.record.materialise(), full)  # (== would fail on NaN: two NaN objects)
        assert list(alert.record) == list(full) and len(alert.record) == len(full)
        assert _same(pickle.loads(pickle.dumps(alert.record)), full)


def test_projection_names_only_fields_the_alert_needs() -> None:
    # the spec is what decode materialises: a typo here would silently null a feature input
    assert set(DECODE_FIELDS) >= {"objectId", "candid", "candidate", "prv_candidates", "fp_hists", "diaSource",
                                  "prvDiaSources", "prvDiaForcedSources", "diaObject", "cutoutScience"}
    assert {"magpsf", "sigmapsf", "isdiffpos", "magnr", "diffmaglim"} <= set(DECODE_FIELDS["prv_candidates"])


def _outcome(decoder: Decoder, data: bytes) -> Any:
    try:
        a = decoder.decode(data)
    except DecodeError as exc:
        return ("error", exc.reason)
    return ("alert", a)


def test_damaged_bytes_get_the_same_decision_with_and_without_the_compiled_readers(
        messages: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    rng = random.Random(11)
    sample = [m for m in messages if len(m) < 200_000][:40]
    fast = Decoder()
    cases: list[bytes] = []
    for data in sample:
        fast.decode(data)
        fast.decode(data)  # compile both readers of this schema
        for _ in range(8):
            buf = bytearray(data)
            kind = rng.random()
            if kind < 0.6:  # a flipped byte past the header
                i = rng.randrange(len(buf) // 3, len(buf))
                buf[i] ^= 1 << rng.randrange(8)
            elif kind < 0.8:  # truncated
                del buf[rng.randrange(len(buf) // 2, len(buf)):]
            else:  # a byte inserted
                buf.insert(rng.randrange(len(buf) // 3, len(buf)), rng.randrange(256))
            cases.append(bytes(buf))
    got = [_outcome(fast, c) for c in cases]
    monkeypatch.setattr(CompiledReader, "get", lambda self, spec=None: None)  # fastavro only: the reference
    ref = [_outcome(Decoder(), c) for c in cases]
    for g, r in zip(got, ref, strict=True):
        assert g[0] == r[0]
        if g[0] == "error":
            assert g[1] == r[1]
        else:
            _assert_same_alert(g[1], r[1])
            assert _same(dict(g[1].record), dict(r[1].record))
