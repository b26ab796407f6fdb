"""Bad input: every kind of damage maps onto its own DecodeError reason, and no mutation of a real
packet ever escapes as anything but an Alert or a DecodeError (hypothesis)."""

from __future__ import annotations

import copy
import io
import json
import random
import struct
from collections.abc import Callable
from pathlib import Path

import cramjam
import fastavro
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker_plugin.alert import Alert
from broker_plugin.decode import Decoder, decode_alert
from broker_plugin.errors import DECODE_REASONS, DecodeError

ZTF_FILE = "ztfavro_472263571115115000_v3.3.avro"
WIRE_FILE = "boom_wire_schemaid701_25409136044802067.avro"


def _container(records: list[dict], schema: dict, codec: str = "null") -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, codec=codec)
    return buf.getvalue()


@pytest.fixture(scope="module")
def ztf(shared_data: Path) -> tuple[bytes, dict, dict]:
    """(raw bytes, record, writer schema) of a real ZTF alert."""
    path = shared_data / "ztf" / "alerts" / ZTF_FILE
    with path.open("rb") as fh:
        reader = fastavro.reader(fh)
        record = next(iter(reader))
        schema = reader.writer_schema
    return path.read_bytes(), record, schema


@pytest.fixture(scope="module")
def wire(shared_data: Path) -> bytes:
    return (shared_data / "lsst" / "alerts" / WIRE_FILE).read_bytes()


def _flip(data: bytes, index: int, mask: int = 0x01) -> bytes:
    b = bytearray(data)
    b[index] ^= mask
    return bytes(b)


def _without_field(z: tuple[bytes, dict, dict], name: str) -> bytes:
    """The alert re-written with a schema that lacks top-level field ``name``."""
    _, record, schema = z
    s, r = copy.deepcopy(schema), dict(record)
    s["fields"] = [f for f in s["fields"] if f["name"] != name]
    r.pop(name, None)
    return _container([r], s)


def _candidate_field(z: tuple[bytes, dict, dict], name: str, value: object, nullable: bool) -> bytes:
    """The alert re-written with candidate.<name> = value (the field made nullable if asked)."""
    _, record, schema = z
    s, r = copy.deepcopy(schema), copy.deepcopy(record)
    cand = next(f for f in s["fields"] if f["name"] == "candidate")["type"]
    if nullable:
        for f in cand["fields"]:
            if f["name"] == name:
                f["type"] = ["null", f["type"]]
    r["candidate"][name] = value
    return _container([r], s)


def _recut_deflate(data: bytes) -> bytes:
    """Drop the last 100 bytes of the (single) deflate block and fix the block size, keeping the framing."""
    sync = data[-16:]
    start = data.index(sync) + 16  # first block: count, size varints, body, sync
    count_byte = data[start:start + 1]
    size, pos = _read_varint(data, start + 1)
    body = data[pos:pos + size][:-100]
    return data[:start] + count_byte + _zigzag(len(body)) + body + sync


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = acc = 0
    while True:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7


def _zigzag(n: int) -> bytes:
    n = (n << 1) ^ (n >> 63)
    out = bytearray()
    while n & ~0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def _zstd_container(schema: dict, record: dict) -> bytes:
    """A one-record object container with a zstandard block, framed by hand."""
    body = io.BytesIO()
    fastavro.schemaless_writer(body, fastavro.parse_schema(schema), record)
    block = bytes(cramjam.zstd.compress(body.getvalue()))
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"zstandard"}
    head = b"Obj\x01" + _zigzag(len(meta))
    for k, v in meta.items():
        head += _zigzag(len(k)) + k + _zigzag(len(v)) + v
    sync = bytes(range(16))
    return head + _zigzag(0) + sync + _zigzag(1) + _zigzag(len(block)) + block + sync


# Each case: (name, builder(ztf, wire) -> bytes, expected reason). One per reason and a few more.
Case = tuple[str, Callable[[tuple[bytes, dict, dict], bytes], bytes], str]
CASES: list[Case] = [
    ("empty", lambda z, w: b"", "empty"),
    ("truncated_container", lambda z, w: z[0][: len(z[0]) // 2], "truncated"),
    ("truncated_container_header", lambda z, w: z[0][:200], "truncated"),
    ("truncated_wire_body", lambda z, w: w[:-50], "truncated"),
    ("truncated_wire_header", lambda z, w: w[:3], "truncated"),
    ("wrong_magic", lambda z, w: b"Obj\x02" + z[0][4:], "bad_magic"),
    ("random_bytes", lambda z, w: b"\x7f" + random.Random(1).randbytes(5000), "bad_magic"),
    ("unknown_schema_id", lambda z, w: b"\x00" + struct.pack(">I", 9999) + w[5:], "unknown_schema_id"),
    # one bit of the embedded schema: "record" -> "secord" is valid JSON but names no Avro type
    ("bit_flip_in_schema", lambda z, w: _flip(z[0], z[0].index(b'"record"') + 1), "bad_schema"),
    # "fields" -> "fieles" in prv_candidate: fastavro would read an empty record, and an array of
    # zero-byte items with a corrupt count would grow until memory runs out; refused up front
    ("record_without_fields", lambda z, w: _flip(z[0], z[0].index(b'"fields"', z[0].index(b'"prv_candidate"')) + 5),
     "bad_schema"),
    ("schema_not_json", lambda z, w: _flip(z[0], z[0].index(b'{"type"'), 0x40), "bad_schema"),
    # flipping one bit of the final sync marker: the block is no longer framed by the file's sync
    ("bit_flip_in_sync_marker", lambda z, w: _flip(z[0], len(z[0]) - 3), "corrupt_avro"),
    ("wire_trailing_bytes", lambda z, w: w + b"\x00\x00\x00", "corrupt_avro"),
    ("not_an_alert", lambda z, w: _container(
        [{"a": 1}], {"type": "record", "name": "x", "fields": [{"name": "a", "type": "int"}]}), "unknown_alert_type"),
    ("ztf_without_candidate", lambda z, w: _without_field(z, "candidate"), "missing_field"),
    ("ztf_without_object_id", lambda z, w: _without_field(z, "objectId"), "missing_field"),
    ("ztf_candidate_ra_null", lambda z, w: _candidate_field(z, "ra", None, nullable=True), "missing_field"),
    ("ztf_ra_out_of_range", lambda z, w: _candidate_field(z, "ra", 512.0, nullable=False), "bad_value"),
    ("ztf_jd_nan", lambda z, w: _candidate_field(z, "jd", float("nan"), nullable=False), "bad_value"),
    ("ztf_unknown_filter", lambda z, w: _candidate_field(z, "fid", 9, nullable=False), "bad_value"),
    ("two_alerts_in_one_container", lambda z, w: _container([z[1], z[1]], z[2]), "multiple_records"),
    # snappy blocks carry a CRC32 of the uncompressed bytes, so damage inside is always caught
    ("snappy_block_damaged", lambda z, w: _flip(_container([z[1]], z[2], "snappy"), -5000, 0x10), "corrupt_avro"),
    # raw deflate has no checksum, but a stream cut short is caught
    ("deflate_block_cut", lambda z, w: _recut_deflate(_container([z[1]], z[2], "deflate")), "corrupt_avro"),
]


@pytest.mark.parametrize(("name", "build", "reason"), CASES, ids=[c[0] for c in CASES])
def test_bad_input_has_its_reason(ztf: tuple[bytes, dict, dict], wire: bytes, name: str,
                                  build: Callable, reason: str) -> None:
    data = build(ztf, wire)
    with pytest.raises(DecodeError) as exc:
        decode_alert(data)
    assert exc.value.reason == reason, f"{name}: {exc.value}"
    assert reason in DECODE_REASONS
    assert str(exc.value)  # a human message, not just the reason


def test_too_large(ztf: tuple[bytes, dict, dict]) -> None:
    with pytest.raises(DecodeError) as exc:
        Decoder(max_message_bytes=10_000).decode(ztf[0])
    assert exc.value.reason == "too_large"

@pytest.mark.parametrize("codec", ["deflate", "snappy", "bzip2", "xz", "zstandard"])
def test_compression_bomb_is_refused(codec: str) -> None:
    """A small block that would inflate past the bound is refused without inflating it all."""
    schema = {"type": "record", "name": "bomb", "fields": [{"name": "a", "type": "bytes"}]}
    if codec == "zstandard":  # fastavro cannot write zstandard here: frame the block by hand
        bomb = _zstd_container(schema, {"a": bytes(5_000_000)})
    else:
        bomb = _container([{"a": bytes(5_000_000)}], schema, codec)
    assert len(bomb) < 300_000
    with pytest.raises(DecodeError) as exc:
        Decoder(max_message_bytes=1_000_000).decode(bomb)
    assert exc.value.reason == "too_large"


def test_every_reason_is_demonstrated() -> None:
    """The vocabulary is exercised in full, so each reason really distinguishes a cause."""
    assert {c[2] for c in CASES} | {"too_large"} == set(DECODE_REASONS)


def test_decode_error_is_not_raised_for_wrong_argument_type() -> None:
    """A caller bug (str instead of bytes) is a TypeError, not a reject to dead-letter."""
    with pytest.raises(TypeError):
        decode_alert("not bytes")  # type: ignore[arg-type]


# ----------------------------------------------------------------------------------- hypothesis

_SEEDS = [
    "ztf/alerts/" + ZTF_FILE,
    "ztf/alerts/kowalski_20231012_2475433850315015013.avro",  # 4.01 with fp_hists
    "ztf/alerts_rewritten/alerce_0000105115040913831.avro",  # snappy
    "lsst/alerts/" + WIRE_FILE,
    "lsst/alerts/boom_wire_schemaid900_7912941781254298.avro",
    "lsst/alerts/alert_packet_v11_0_fakeAlert.avro",
]


@pytest.fixture(scope="module")
def seeds(shared_data: Path) -> list[bytes]:
    return [(shared_data / s).read_bytes() for s in _SEEDS]


_mutation = st.one_of(
    st.tuples(st.just("flip"), st.floats(0, 1, exclude_max=True), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.floats(0, 1, exclude_max=True), st.just(0)),
    st.tuples(st.just("insert"), st.floats(0, 1), st.binary(min_size=1, max_size=16)),
    st.tuples(st.just("delete"), st.floats(0, 1, exclude_max=True), st.integers(1, 64)),
    # aim at the first bytes, where the framing and the lengths live
    st.tuples(st.just("flip_head"), st.integers(0, 400), st.integers(1, 255)),
)


def _mutate(data: bytes, ops: list[tuple]) -> bytes:
    b = bytearray(data)
    for kind, where, arg in ops:
        if not b:
            break
        i = min(int(where * len(b)), len(b) - 1) if isinstance(where, float) else min(where, len(b) - 1)
        if kind in ("flip", "flip_head"):
            b[i] ^= arg
        elif kind == "truncate":
            del b[i:]
        elif kind == "insert":
            b[i:i] = arg
        elif kind == "delete":
            del b[i:i + arg]
    return bytes(b)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.integers(0, len(_SEEDS) - 1), ops=st.lists(_mutation, min_size=1, max_size=4))
def test_mutated_packets_give_alert_or_decode_error(seeds: list[bytes], which: int, ops: list[tuple]) -> None:
    data = _mutate(seeds[which], ops)
    try:
        out = decode_alert(data)
    except DecodeError as exc:
        assert exc.reason in DECODE_REASONS
    else:
        assert isinstance(out, Alert)


def test_array_of_zero_byte_items_is_refused() -> None:
    """A schema whose array items take no bytes would let a corrupt count loop without end."""
    schema = {"type": "record", "name": "x", "fields": [{"name": "a", "type": {"type": "array", "items": "null"}}]}
    with pytest.raises(DecodeError) as exc:
        decode_alert(_container([{"a": [None, None]}], schema))
    assert exc.value.reason == "bad_schema"
