"""Output message encoding: input alert bytes + ``bal`` field, readable by plain fastavro.

No Kafka here: the encoder is a pure function of (input bytes, decoded alert, annotation). The
schema-registry variant is tested against a tiny fake registry HTTP server (the REST calls are the
only thing it does).
"""

from __future__ import annotations

import io
import json
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import pytest

from broker_plugin.decode import decode_alert, decode_container_records
from broker_plugin.decode.avro import container_blocks, read_container_header
from broker_plugin.models.annotate import Annotator
from broker_plugin.stream import bal_encoding
from broker_plugin.stream.avro_container import container_header, container_message, encode_long
from broker_plugin.stream.bal_encoding import encode_bal, parsed_bal_schema
from broker_plugin.stream.kafka_output import BAL_FIELD, CUTOUT_FIELDS, OutputEncoder, OutputError, output_schema
from broker_plugin.stream.schema_registry import RegistryError
from tests.service_helpers import alert_corpus, same


@pytest.fixture(scope="module")
def alerts(shared_data: Path) -> list[tuple[str, bytes, Any, dict[str, Any]]]:
    """(name, bytes, Alert, bal record) for every real ZTF/Rubin alert and some synthetic ones."""
    corpus = alert_corpus(shared_data, synthetic=6)
    decoded = [(n, d, decode_alert(d)) for n, d in corpus]
    records = Annotator().annotate_batch([a for _, _, a in decoded])
    return [(n, d, a, r) for (n, d, a), r in zip(decoded, records, strict=True)]


def _read(value: bytes) -> tuple[dict[str, Any], dict[str, Any], Any]:
    reader = fastavro.reader(io.BytesIO(value))
    records = list(reader)
    assert len(records) == 1
    rec = records[0]
    return rec, rec.pop(BAL_FIELD), reader.writer_schema


@pytest.mark.parametrize("n", [0, 1, -1, 63, -64, 64, 300, -301, 2**31, -(2**31), 2**63 - 1, -(2**63)])
def test_encode_long_matches_fastavro(n: int) -> None:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, "long", n)
    assert encode_long(n) == buf.getvalue()


def test_container_framing_is_readable_by_fastavro() -> None:
    schema = {"type": "record", "name": "t", "fields": [{"name": "x", "type": "long"}, {"name": "s", "type": "string"}]}
    body = io.BytesIO()
    fastavro.schemaless_writer(body, schema, {"x": -5, "s": "é" * 100})
    sync = b"0123456789abcdef"
    data = container_message(container_header(json.dumps(schema), sync), sync, body.getvalue())
    assert list(fastavro.reader(io.BytesIO(data))) == [{"x": -5, "s": "é" * 100}]


def test_every_alert_is_its_input_plus_bal(alerts: list[tuple[str, bytes, Any, dict[str, Any]]]) -> None:
    enc = OutputEncoder()
    surveys = set()
    for name, data, alert, bal in alerts:
        value = enc.encode(data, alert, bal)
        rec, got_bal, schema = _read(value)
        (original,) = decode_container_records(data)
        assert same(rec, original), name
        assert got_bal == bal, name
        assert schema["fields"][-1]["name"] == BAL_FIELD
        assert schema["fields"][-1]["type"][0] == "null"
        assert [f["name"] for f in schema["fields"][:-1]] == list(original)
        surveys.add(bal["survey"])
        # the fast path: the output body is the input body, then union branch 1, then the bal record
        out_header = read_container_header(value)
        ((count, body),) = container_blocks(value, out_header)
        assert count == 1
        if data[:1] == b"\x00":
            assert body == data[5:] + b"\x02" + encode_bal(bal)
        else:
            ((_, in_body),) = container_blocks(data, read_container_header(data))
            assert body == in_body + b"\x02" + encode_bal(bal)
    assert surveys == {"ztf", "lsst"}


def _fastavro_bal(record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, parsed_bal_schema(), record)
    return buf.getvalue()


def test_fast_bal_encoding_gives_fastavros_bytes(alerts: list[tuple[str, bytes, Any, dict[str, Any]]]) -> None:
    """The hand-written encoder against fastavro, byte for byte, on real annotations and on records
    whose ``history`` has points of every origin (the real ones have only packet points)."""
    assert bal_encoding._fast_layout_ok(), "_FAST_LAYOUT no longer matches schemas/bal_annotation.avsc"
    base = alerts[0][3]
    rich = [
        base | {"history": {"packet": {"g": 3, "r": 5}, "store": {"g": 120, "r": 99, "i": 1},
                            "data_release": {"u": 2**20, "g": 1500, "r": 1400, "z": 64},
                            "other_survey": {"y": 300, "g": 0}, "span_days": 3652.625}},
        base | {"history": {"packet": {}, "store": {}, "data_release": {"r": 2}, "other_survey": {},
                            "span_days": 0.0}},
        base | {"history": {"packet": {"é": 1}, "store": {}, "data_release": {}, "other_survey": {"g": 70},
                            "span_days": 1e-9}},
    ]
    records = [r for *_, r in alerts] + rich
    for r in records:
        fast = bal_encoding._encode_bal_fast(r)
        assert fast is not None, r["source_id"]
        assert fast == _fastavro_bal(r) == encode_bal(r), r["source_id"]
        assert fastavro.schemaless_reader(io.BytesIO(fast), parsed_bal_schema()) == r
    assert any(r["history"]["packet"] for *_, r in alerts)
    # another type in history: the fast path declines, fastavro (which converts) encodes it
    odd = base | {"history": rich[0]["history"] | {"span_days": 2}}
    assert bal_encoding._encode_bal_fast(odd) is None
    assert encode_bal(odd) == _fastavro_bal(odd)
    missing = {k: v for k, v in base.items() if k != "history"}
    assert bal_encoding._encode_bal_fast(missing) is None


def test_output_schema_is_derived_once_per_input_schema(alerts: list[tuple[str, bytes, Any, dict[str, Any]]]) -> None:
    enc = OutputEncoder()
    first = {}
    for _, data, alert, bal in alerts:
        enc.encode(data, alert, bal)
        schema = enc.schema_for(data)
        key = read_container_header(data).meta_key if data[:4] == b"Obj\x01" else data[:5]
        assert first.setdefault(key, schema) is schema
    assert len(enc._cache) == len(first) < len(alerts)


_DIGEST = """
import hashlib, sys
from broker_plugin.models.annotate import Annotator
from broker_plugin.decode import decode_alert
from broker_plugin.stream.kafka_output import OutputEncoder
data = open(sys.argv[1], "rb").read()
alert = decode_alert(data)
print(hashlib.sha256(OutputEncoder().encode(data, alert, Annotator().annotate_batch([alert])[0])).hexdigest())
"""


def test_outputs_are_deterministic_bytes(shared_data: Path) -> None:
    """Same input, same annotation -> same bytes in any process, whatever the hash seed (fastavro's
    parsed Rubin schemas order their keys by it; the output schema text must not)."""
    import os
    import subprocess
    import sys

    wire = next((shared_data / "lsst" / "alerts").glob("boom_wire_*.avro"))
    digests = set()
    for seed in ("1", "2"):
        res = subprocess.run([sys.executable, "-c", _DIGEST, str(wire)], capture_output=True, text=True, timeout=60,
                             env={**os.environ, "PYTHONHASHSEED": seed}, check=True)
        digests.add(res.stdout.strip())
    assert len(digests) == 1


def test_drop_cutouts_reencodes_with_null_cutouts(alerts: list[tuple[str, bytes, Any, dict[str, Any]]]) -> None:
    enc = OutputEncoder(drop_cutouts=True)
    for name, data, alert, bal in alerts[::7]:
        value = enc.encode(data, alert, bal)
        rec, got_bal, schema = _read(value)
        (original,) = decode_container_records(data)
        present = [f for f in CUTOUT_FIELDS if f in original]
        assert present, name
        for f in present:
            assert rec[f] is None
            field = next(x for x in schema["fields"] if x["name"] == f)
            assert isinstance(field["type"], list) and "null" in field["type"]
            original[f] = None
        assert same(rec, original), name
        assert got_bal == bal
        assert len(value) < len(data) + 60_000


def test_compressed_input_containers_pass_through(ztf_rewritten_files: list[Path]) -> None:
    """Spark-rewritten archives use the snappy codec: the body is decompressed, the output is null-codec."""
    enc = OutputEncoder()
    files = ztf_rewritten_files[:3]
    if not files:
        pytest.skip("no rewritten ZTF files in the shared data")
    for path in files:
        data = path.read_bytes()
        alert = decode_alert(data)
        (bal,) = Annotator().annotate_batch([alert])
        rec, got_bal, _ = _read(enc.encode(data, alert, bal))
        (original,) = decode_container_records(data)
        assert same(rec, original) and got_bal == bal


def test_an_annotated_alert_fed_back_in_is_refused(alerts: list[tuple[str, bytes, Any, dict[str, Any]]]) -> None:
    _, data, alert, bal = alerts[0]
    enc = OutputEncoder()
    value = enc.encode(data, alert, bal)
    again = decode_alert(value)  # still a valid ZTF alert for the decoder
    with pytest.raises(OutputError) as err:
        enc.encode(value, again, bal)
    assert err.value.reason == "bal_field_exists"


def test_non_record_schema_is_refused() -> None:
    with pytest.raises(OutputError) as err:
        output_schema(["null", "string"])
    assert err.value.reason == "unsupported_schema"


# ------------------------------------------------------------------------------ schema registry


class _FakeRegistry(BaseHTTPRequestHandler):
    """POST /subjects/<s>/versions -> {"id": n} (same schema, same id); 409 for subject 'refuse-value'."""

    schemas: ClassVar[dict[str, int]] = {}
    posts: ClassVar[list[tuple[str, str]]] = []

    def do_POST(self) -> None:
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        subject = self.path.split("/")[2]
        self.posts.append((subject, body["schema"]))
        if subject == "refuse-value":
            self._answer(409, {"error_code": 409, "message": "Schema being registered is incompatible"})
            return
        sid = self.schemas.setdefault(body["schema"], 1000 + len(self.schemas))
        self._answer(200, {"id": sid})

    def _answer(self, code: int, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def registry() -> Iterator[str]:
    _FakeRegistry.schemas = {}
    _FakeRegistry.posts = []
    server = HTTPServer(("127.0.0.1", 0), _FakeRegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_wire_format_with_schema_registry(alerts: list[tuple[str, bytes, Any, dict[str, Any]]], registry: str) -> None:
    enc = OutputEncoder(registry_url=registry, subject="bal-annotated-value")
    distinct = set()
    for name, data, alert, bal in alerts:
        value = enc.encode(data, alert, bal)
        assert value[0] == 0
        (sid,) = struct.unpack(">I", value[1:5])
        schema_json = next(s for s, i in _FakeRegistry.schemas.items() if i == sid)
        distinct.add(schema_json)
        parsed = fastavro.parse_schema(json.loads(schema_json), named_schemas={})
        buf = io.BytesIO(value[5:])
        rec = fastavro.schemaless_reader(buf, parsed, None)
        assert buf.tell() == len(value) - 5
        got_bal = rec.pop(BAL_FIELD)
        (original,) = decode_container_records(data)
        assert same(rec, original), name
        assert got_bal == bal
    assert len(_FakeRegistry.posts) == len(distinct)  # registered once per input schema
    assert {s for s, _ in _FakeRegistry.posts} == {"bal-annotated-value"}


def test_registry_refusal_and_absence_are_registry_errors(alerts: list[tuple[str, bytes, Any, dict[str, Any]]],
                                                           registry: str) -> None:
    _, data, alert, bal = alerts[0]
    with pytest.raises(RegistryError, match="compatibility"):
        OutputEncoder(registry_url=registry, subject="refuse-value").encode(data, alert, bal)
    from broker_plugin.broker.embedded import find_free_port

    dead = f"http://127.0.0.1:{find_free_port()}"
    with pytest.raises(RegistryError, match="unreachable"):
        OutputEncoder(registry_url=dead, subject="x-value", registry_timeout_s=1).encode(data, alert, bal)
