"""Hostile writer schemas: recursive, naming undefined types, over the node budget or too deep.

fastavro's C reader follows a recursive schema as deep as the data says and overflows the C stack
(SIGSEGV: the service crash-loops, ``replay`` exits 139). Such schemas are refused with reason
``bad_schema`` before any reader sees the bytes, on every path: embedded container schemas, the
packaged Rubin schemas and the registry. Also here: the embedded-schema cache is least-recently-used.
"""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import threading
from collections import OrderedDict
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any, ClassVar

import fastavro
import pytest

from broker_plugin.decode import Decoder, default_decoder
from broker_plugin.decode import schemas as schemas_mod
from broker_plugin.decode.avro import parse_metadata, read_container_header
from broker_plugin.decode.fastread import compile_reader
from broker_plugin.decode.fastread_gen import MAX_NODES, _GenBase
from broker_plugin.decode.schemas import (
    check_bounded,
    embedded_cache_info,
    packaged_lsst_schema,
    packaged_lsst_versions,
    schema_id,
)
from broker_plugin.errors import DECODE_REASONS, DecodeError
from broker_plugin.stream.avro_container import encode_long

REPO = Path(__file__).resolve().parent.parent
ZTF_FILE = "ztfavro_472263571115115000_v3.3.avro"
#: Nesting that overflows fastavro's C reader on a recursive schema (it crashed at 10,000 levels).
DEEP = 50_000
#: A recursive ZTF-like schema: an alert that may contain an alert.
RECURSIVE = {"type": "record", "name": "alert", "namespace": "ztf",
             "fields": [{"name": "self", "type": ["null", "alert"]}, {"name": "objectId", "type": "string"}]}


def _hand_container(schema: Any, body: bytes) -> bytes:
    """An object container of one record whose body is given as bytes (fastavro could not write it:
    its own writer overflows on the nesting)."""
    meta = {b"avro.schema": json.dumps(schema).encode(), b"avro.codec": b"null"}
    head = b"Obj\x01" + encode_long(len(meta))
    for k, v in meta.items():
        head += encode_long(len(k)) + k + encode_long(len(v)) + v
    sync = bytes(range(16))
    return head + encode_long(0) + sync + encode_long(1) + encode_long(len(body)) + body + sync


def _deep_recursive_container() -> bytes:
    """RECURSIVE with DEEP nested alerts: ``self`` takes branch 1 DEEP times, then null; then the
    objectIds, innermost first."""
    return _hand_container(RECURSIVE, b"\x02" * DEEP + b"\x00" + b"\x02x" * (DEEP + 1))


def _real_ztf(ztf_alert_dir: Path) -> tuple[dict[str, Any], dict[str, Any]]:
    with (ztf_alert_dir / ZTF_FILE).open("rb") as fh:
        reader = fastavro.reader(fh)
        (record,) = list(reader)
        return record, json.loads(reader.metadata["avro.schema"])


def _write(schema: Any, records: list[dict[str, Any]], **kw: Any) -> bytes:
    buf = io.BytesIO()
    fastavro.writer(buf, fastavro.parse_schema(schema), records, **kw)
    return buf.getvalue()


def _recursive_real_alert(ztf_alert_dir: Path) -> bytes:
    """A real ZTF alert, written by fastavro with its real schema plus ``self: ["null", "alert"]``."""
    record, schema = _real_ztf(ztf_alert_dir)
    assert schema["name"] == "alert" and schema["namespace"] == "ztf"
    schema["fields"].append({"name": "self", "type": ["null", "alert"], "default": None})
    return _write(schema, [{**record, "self": None}])


def _rejected(data: bytes, decoder: Decoder | None = None) -> DecodeError:
    (res,) = (decoder or default_decoder()).decode_batch([data])
    assert isinstance(res, DecodeError), res
    assert res.reason == "bad_schema" and "\n" not in str(res)
    return res


def test_bad_schema_is_a_decode_reason() -> None:
    assert "bad_schema" in DECODE_REASONS


def test_real_alert_with_a_recursive_schema_is_rejected(ztf_alert_dir: Path) -> None:
    err = _rejected(_recursive_real_alert(ztf_alert_dir))
    assert "recursive" in str(err) and "'ztf.alert'" in str(err)


def test_deeply_nested_recursive_container_is_rejected_in_a_process_that_survives(tmp_path: Path) -> None:
    path = tmp_path / "hostile.avro"
    path.write_bytes(_deep_recursive_container())
    code = ("import sys\nfrom broker_plugin.decode import default_decoder\n"
            "(r,) = default_decoder().decode_batch([open(sys.argv[1], 'rb').read()])\n"
            "print(type(r).__name__, getattr(r, 'reason', ''))\n")
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.split() == ["DecodeError", "bad_schema"]


def test_replay_rejects_the_recursive_container_and_writes_the_real_alert(ztf_alert_dir: Path,
                                                                          tmp_path: Path) -> None:
    d = tmp_path / "night"
    d.mkdir()
    (d / "0_hostile.avro").write_bytes(_deep_recursive_container())
    (d / "1_real.avro").write_bytes((ztf_alert_dir / ZTF_FILE).read_bytes())
    out = tmp_path / "out.jsonl"
    proc = subprocess.run([sys.executable, "-m", "broker_plugin", "replay", str(d), "--output", str(out)],
                          capture_output=True, text=True, timeout=300, cwd=tmp_path,
                          env={**os.environ, "PYTHONPATH": str(REPO)}, check=False)
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-2000:])
    assert proc.stdout.startswith("replay: 2 alerts read, 1 annotated, 1 rejected"), proc.stdout
    assert len(out.read_text().splitlines()) == 1
    rejects = [json.loads(line) for line in Path(f"{out}.rejects.jsonl").read_text().splitlines()]
    assert [(Path(r["origin"]).name, r["stage"], r["reason"]) for r in rejects] == [
        ("0_hostile.avro", "decode", "bad_schema")]
    assert "recursive" in rejects[0]["message"]


def test_recursion_through_other_named_types_is_rejected() -> None:
    schema = {"type": "record", "name": "alert", "fields": [
        {"name": "candidate", "type": {"type": "record", "name": "candidate", "fields": [
            {"name": "history", "type": {"type": "array", "items": {"type": "record", "name": "entry", "fields": [
                {"name": "back", "type": ["null", "alert"]}]}}}]}},
        {"name": "objectId", "type": "string"}]}
    err = _rejected(_hand_container(schema, b"\x00\x02x"))  # an empty history, objectId "x"
    assert "alert -> candidate -> entry -> alert" in str(err)
    with pytest.raises(DecodeError, match="recursive"):
        check_bounded(fastavro.parse_schema(schema))  # the parsed form is checked alike


def test_reference_to_an_undefined_type_is_rejected() -> None:
    schema = {"type": "record", "name": "alert", "namespace": "ztf",
              "fields": [{"name": "objectId", "type": "string"}, {"name": "x", "type": "nosuch"}]}
    err = _rejected(_hand_container(schema, b"\x02x\x00"))
    assert "undefined type 'ztf.nosuch'" in str(err)


def test_schema_over_the_node_budget_is_rejected_before_anything_compiles() -> None:
    schema = {"type": "record", "name": "alert", "namespace": "ztf",
              "fields": [{"name": f"f{i}", "type": "int"} for i in range(5_000)]}
    err = _rejected(_hand_container(schema, b"\x00" * 5_000))
    assert f"more than {MAX_NODES} nodes" in str(err)
    assert compile_reader(schema) is None  # the compiler's budget is the same one


def test_a_long_chain_of_references_is_rejected_as_too_deep() -> None:
    """No recursion and under the node budget, but nesting 2,000 records deep once references are
    followed: refused before a reader recurses that deep."""
    chain: list[Any] = [{"type": "record", "name": "T1", "fields": [{"name": "x", "type": "int"}]}]
    for i in range(2, 2_001):
        chain.append({"type": "record", "name": f"T{i}", "fields": [{"name": "x", "type": f"T{i - 1}"}]})
    assert len(json.dumps(chain)) < 200_000
    with pytest.raises(DecodeError, match="levels deep") as exc:
        check_bounded(chain)
    assert exc.value.reason == "bad_schema"


def _nodes(schema: Any) -> int:
    gen = _GenBase()
    gen.collect(schema)
    return gen.nodes


def test_every_real_schema_passes_with_headroom(shared_data: Path) -> None:
    """No real schema is refused, and the budget is at least twice the largest (Rubin 4.0: 2,225 nodes)."""
    counts = {}
    for path in sorted(shared_data.glob("**/*.avro")):
        data = path.read_bytes()
        if data.startswith(b"Obj\x01"):
            schema = json.loads(parse_metadata(read_container_header(data).meta_key)["avro.schema"])
            check_bounded(schema)
            counts[path.name] = _nodes(schema)
    for major, minor in packaged_lsst_versions():
        ws = packaged_lsst_schema(schema_id(major, minor))
        assert ws is not None
        check_bounded(ws.parsed)
        counts[f"rubin {major}.{minor}"] = _nodes(ws.parsed)
    assert len(counts) > 150 and max(counts.values()) >= 2_000
    assert 2 * max(counts.values()) <= MAX_NODES


def test_hostile_packaged_schema_is_rejected(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "99" / "0"
    folder.mkdir(parents=True)
    (folder / "lsst.v99_0.alert.avsc").write_text(json.dumps({**RECURSIVE, "name": "lsst.v99_0.alert",
                                                              "fields": [{"name": "self",
                                                                          "type": ["null", "lsst.v99_0.alert"]}]}))
    monkeypatch.setattr(schemas_mod, "lsst_schema_root", lambda: tmp_path)
    monkeypatch.setattr(schemas_mod, "_packaged", {})
    err = _rejected(b"\x00" + struct.pack(">I", 9900) + b"\x00")
    assert "'lsst.v99_0.alert'" in str(err)


class _Registry(BaseHTTPRequestHandler):
    schemas: ClassVar[dict[int, str]] = {}

    def do_GET(self) -> None:  # the name http.server dispatches GET requests to
        sid = int(self.path.rsplit("/", 1)[-1])
        body = json.dumps({"schema": self.schemas[sid]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def registry() -> Iterator[str]:
    _Registry.schemas = {4343: json.dumps(RECURSIVE)}
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_hostile_registry_schema_is_rejected(registry: str) -> None:
    err = _rejected(b"\x00" + struct.pack(">I", 4343) + b"\x00\x02x", Decoder(registry_url=registry))
    assert "recursive" in str(err)


# ------------------------------------------------------------------------- least-recently-used cache


def _headers(ztf_alert_dir: Path, n: int) -> list[bytes]:
    """The real alert in ``n`` containers that differ only in their metadata (so in their schema key)."""
    record, schema = _real_ztf(ztf_alert_dir)
    return [_write(schema, [record], metadata={"bal.test": str(i)}) for i in range(n)]


def test_embedded_cache_keeps_the_recently_used_schemas(ztf_alert_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    limit = 4
    monkeypatch.setattr(schemas_mod, "MAX_CACHED_SCHEMAS", limit)
    monkeypatch.setattr(schemas_mod, "_embedded", OrderedDict())
    parses: list[int] = []
    real = schemas_mod.parse_schema
    monkeypatch.setattr(schemas_mod, "parse_schema", lambda s: parses.append(1) or real(s))
    hot, *others = _headers(ztf_alert_dir, 2 * limit)
    dec = default_decoder()
    before = embedded_cache_info()
    stream = [m for other in others for m in (hot, other)] * 2  # hot, o1, hot, o2, ... twice over
    assert all(not isinstance(r, Exception) for r in dec.decode_batch(stream))
    # the hot schema is parsed once; the others (more than the cache holds) once per appearance
    assert len(parses) == 1 + 2 * len(others)
    info = embedded_cache_info()
    assert info["misses"] - before["misses"] == len(parses)
    assert info["hits"] - before["hits"] == len(stream) - len(parses)
    assert info["size"] == limit and info["max"] == limit
    # the most recently used are the ones kept
    parses.clear()
    assert all(not isinstance(r, Exception) for r in dec.decode_batch([hot, *others[-(limit - 1):]]))
    assert parses == []


def test_a_refused_header_is_refused_again_without_a_second_parse(ztf_alert_dir: Path) -> None:
    """A hostile stream that repeats one header costs one check, not one parse per message."""
    data = _recursive_real_alert(ztf_alert_dir)
    before = schemas_mod.embedded_cache_info()["misses"]
    results = default_decoder().decode_batch([data] * 5)
    assert all(isinstance(r, DecodeError) and r.reason == "bad_schema" for r in results)
    assert schemas_mod.embedded_cache_info()["misses"] - before <= 1
