"""Rubin decoding: the shared sample files, and a wire-format round trip for every schema version that
lsst-alert-packet ships (3.0 ... 11.x), plus the optional schema-registry fallback."""

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
from fastavro.schema import load_schema, to_parsing_canonical_form

from broker_plugin.decode import META_FIELDS, Decoder, decode_alert, decode_container_records
from broker_plugin.decode.schemas import lsst_schema_root, packaged_lsst_versions, schema_id
from broker_plugin.errors import DecodeError

pytestmark = pytest.mark.skipif(lsst_schema_root() is None, reason="lsst-alert-packet is not installed")


def _schema_path(major: int, minor: int) -> Path:
    root = lsst_schema_root()
    assert root is not None
    return root / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"


def _wire(record: dict[str, Any], major: int, minor: int, sid: int | None = None) -> bytes:
    """A Confluent wire-format message: 0x00, big-endian schema id, schemaless Avro body."""
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, load_schema(str(_schema_path(major, minor))), record)
    return struct.pack(">BI", 0, schema_id(major, minor) if sid is None else sid) + buf.getvalue()


def _expected(record: dict[str, Any]) -> tuple[str, str, float, float, float]:
    """(object id, source id, ra, dec, mjd) read straight from a record, spelling by version."""
    src = record["diaSource"]
    obj = src.get("diaObjectId") or (record.get("diaObject") or {}).get("diaObjectId")
    dec = src["dec"] if "dec" in src else src["decl"]
    mjd = src["midpointMjdTai"] if "midpointMjdTai" in src else src["midPointTai"]
    return str(obj), str(src["diaSourceId"]), src["ra"], dec, mjd


def _check(alert: Any, record: dict[str, Any], version: str) -> None:
    obj, sid, ra, dec, mjd = _expected(record)
    assert alert.survey == "lsst"
    assert (alert.object_id, alert.source_id) == (obj, sid)
    assert alert.ra == pytest.approx(ra, abs=1e-12) and alert.dec == pytest.approx(dec, abs=1e-12)
    assert alert.mjd == pytest.approx(mjd, abs=1e-9)
    assert alert.schema_version == version
    assert tuple(alert.meta) == META_FIELDS
    assert set(alert.cutouts) == {"science", "template", "difference"}


def test_packaged_versions_cover_3_to_11() -> None:
    versions = packaged_lsst_versions()
    assert (3, 0) in versions and (11, 0) in versions and (7, 1) in versions and (9, 0) in versions
    assert len(versions) >= 14


def test_every_shared_rubin_file_decodes(lsst_alert_files: list[Path]) -> None:
    assert len(lsst_alert_files) == 10
    for path in lsst_alert_files:
        data = path.read_bytes()
        alert = decode_alert(data)
        if data[:4] == b"Obj\x01":
            with path.open("rb") as fh:
                reader = fastavro.reader(fh)
                ref = next(iter(reader))
            version = path.name.split("_v")[1].split("_fake")[0].replace("_", ".")
        else:
            sid = struct.unpack(">I", data[1:5])[0]
            major, minor = divmod(sid, 100)
            ref = fastavro.schemaless_reader(io.BytesIO(data[5:]), load_schema(str(_schema_path(major, minor))))
            version = f"{major}.{minor}"
        _check(alert, ref, version)
        assert alert.lightcurves, path.name
        assert alert.band in alert.lightcurves


def test_boom_wire_format_messages(shared_data: Path) -> None:
    """Values from SOURCES.md: the two real-layout wire-format messages (ids 701 and 900)."""
    d = shared_data / "lsst" / "alerts"
    a701 = decode_alert((d / "boom_wire_schemaid701_25409136044802067.avro").read_bytes())
    assert (a701.schema_version, a701.object_id, a701.source_id, a701.band) == (
        "7.1", "25401295582003262", "25409136044802067", "g")
    assert a701.mjd == pytest.approx(57454.3293, abs=1e-4)
    assert all(isinstance(a701.cutouts[k], bytes) for k in ("science", "template", "difference"))
    assert a701.meta["reliability"] == pytest.approx(0.8078683, abs=1e-6)
    # detections + forced photometry, one point per epoch, the detection preferred
    assert len(a701.lightcurves["g"]) == 3
    a900 = decode_alert((d / "boom_wire_schemaid900_7912941781254298.avro").read_bytes())
    assert (a900.schema_version, a900.object_id, a900.source_id, a900.band) == (
        "9.0", "7912941781254298", "7912941781254298", "r")
    assert a900.mjd == pytest.approx(60961.2331, abs=1e-4)
    assert a900.meta["nDiaSources"] == 1.0
    # v9 carries scienceFlux: the apparent-flux ("dc") light curve, positive although psfFlux < 0
    assert a900.lightcurves["r"].kind == "dc"
    assert a900.lightcurves["r"].flux[0] == pytest.approx(a900.record["diaSource"]["scienceFlux"])


def test_fake_alert_object_id_comes_from_dia_object(shared_data: Path) -> None:
    """The samples leave diaSource.diaObjectId null; the id is taken from diaObject."""
    alert = decode_alert((shared_data / "lsst" / "alerts" / "alert_packet_v11_0_fakeAlert.avro").read_bytes())
    assert alert.record["diaSource"]["diaObjectId"] is None
    assert alert.object_id == "281323062375219201"


def _versions() -> list[tuple[int, int]]:
    return packaged_lsst_versions()


@pytest.mark.parametrize(("major", "minor"), _versions(), ids=[f"v{a}.{b}" for a, b in _versions()])
def test_wire_round_trip_of_every_packaged_version(major: int, minor: int) -> None:
    """Serialise the version's sample alert into wire format with its schema and decode it back."""
    sample_dir = _schema_path(major, minor).parent / "sample_data"
    records: list[dict[str, Any]] = []
    if (sample_dir / "alert.json").is_file():
        records.append(json.loads((sample_dir / "alert.json").read_text()))
    if (sample_dir / "fakeAlert.avro").is_file():
        with (sample_dir / "fakeAlert.avro").open("rb") as fh:
            records.extend(fastavro.reader(fh))
    assert records, f"no sample data for v{major}.{minor}"
    for record in records:
        data = _wire(record, major, minor)
        assert data[0] == 0 and struct.unpack(">I", data[1:5])[0] == major * 100 + minor
        alert = decode_alert(data)
        _check(alert, record, f"{major}.{minor}")
        assert alert.raw == data
        assert alert.lightcurves  # every sample has at least its own detection
        # the container form of the same record decodes to the same alert
        parsed = load_schema(str(_schema_path(major, minor)))
        buf = io.BytesIO()
        fastavro.writer(buf, parsed, [record])
        again = decode_alert(buf.getvalue())
        assert (again.object_id, again.source_id, again.mjd, again.schema_version) == (
            alert.object_id, alert.source_id, alert.mjd, alert.schema_version)


def test_fink_rewritten_rubin_files(lsst_rewritten_files: list[Path]) -> None:
    """All 12 Fink/Spark rewrites decode: survey from fields, version from lsst_schema_version when given."""
    assert len(lsst_rewritten_files) == 12
    for path in lsst_rewritten_files:
        alert = decode_alert(path.read_bytes())
        assert alert.survey == "lsst"
        assert alert.source_id == str(alert.record["diaSource"]["diaSourceId"])
        assert alert.schema_version == ("9.0" if "_v9_0_" in path.name else "unknown")  # v7.4 rewrites say nothing
        assert alert.lightcurves
    # one v9.0 rewrite has diaObjectId 0 and no diaObject: a solar-system source, keyed by ssObjectId
    ss = next(decode_alert(p.read_bytes()) for p in lsst_rewritten_files if "169298432757858307" in p.name)
    assert "ss_object" in ss.flags
    assert ss.object_id == str(ss.record["diaSource"]["ssObjectId"])


def test_decode_container_records_on_wire_message(shared_data: Path) -> None:
    data = (shared_data / "lsst" / "alerts" / "boom_wire_schemaid900_7912941781254298.avro").read_bytes()
    (rec,) = decode_container_records(data)
    assert rec["diaSourceId"] == 7912941781254298


# ------------------------------------------------------------------------------------ registry


class _Registry(BaseHTTPRequestHandler):
    schemas: ClassVar[dict[int, str]] = {}
    hits: ClassVar[list[str]] = []

    def do_GET(self) -> None:  # the name http.server dispatches GET requests to
        type(self).hits.append(self.path)
        sid = int(self.path.rsplit("/", 1)[-1]) if self.path.startswith("/schemas/ids/") else -1
        if sid in self.schemas:
            body = json.dumps({"schema": self.schemas[sid]}).encode()
            self.send_response(200)
        else:
            body = b'{"error_code": 40403, "message": "Schema not found"}'
            self.send_response(404)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture()
def registry() -> Iterator[str]:
    _Registry.schemas = {4242: to_parsing_canonical_form(load_schema(str(_schema_path(9, 0))))}
    _Registry.hits = []
    server = HTTPServer(("127.0.0.1", 0), _Registry)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()


def test_registry_fallback_for_unshipped_id(registry: str, shared_data: Path) -> None:
    data = (shared_data / "lsst" / "alerts" / "boom_wire_schemaid900_7912941781254298.avro").read_bytes()
    relabelled = b"\x00" + struct.pack(">I", 4242) + data[5:]  # same body, an id the package does not ship
    with pytest.raises(DecodeError) as exc:
        decode_alert(relabelled)  # no registry configured by default
    assert exc.value.reason == "unknown_schema_id" and "registry" in str(exc.value)
    dec = Decoder(registry_url=registry)
    a = dec.decode(relabelled)
    b = dec.decode(relabelled)
    assert a.source_id == b.source_id == "7912941781254298"
    assert a.schema_version == "9.0"
    assert _Registry.hits == ["/schemas/ids/4242"]  # fetched once, then cached
    # shipped ids never touch the registry
    dec.decode(data)
    assert _Registry.hits == ["/schemas/ids/4242"]


def test_registry_failure_is_unknown_schema_id(registry: str) -> None:
    dec = Decoder(registry_url=registry)
    msg = b"\x00" + struct.pack(">I", 9999) + b"\x02"
    for _ in range(2):  # the second failure is answered from the negative cache
        with pytest.raises(DecodeError) as exc:
            dec.decode(msg)
        assert exc.value.reason == "unknown_schema_id"
        assert "9999" in str(exc.value) and registry in str(exc.value)
    assert _Registry.hits == ["/schemas/ids/9999"]
    dead = Decoder(registry_url="http://127.0.0.1:9", registry_timeout_s=0.5)
    with pytest.raises(DecodeError) as exc:
        dead.decode(msg)
    assert exc.value.reason == "unknown_schema_id"
