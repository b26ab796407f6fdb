"""The benchmark's input: realistic ZTF- and Rubin-sized alert messages, real and synthetic.

Why both kinds. The real public alerts in ``../shared/data`` (128 ZTF packets of schemas 1.8-4.02,
18 Rubin packets, containers and Confluent wire format) have the shapes of the live streams, but
there are only ~150 of them, and an alert broker's caches would make replaying the same 150 bytes
unrealistically cheap downstream (the output is keyed by object id, the DLQ never fires...). So each
real alert is *replicated with fresh ids*: decoded with fastavro, its candid/objectId (ZTF) or
diaSourceId/diaObjectId (Rubin) rewritten, and re-encoded with the very same writer schema (so the
schema caches still hit, as they do on a live stream where every alert shares one schema). The
synthetic alerts of :func:`training.synthetic.iter_night` add objects with realistic light-curve
histories (forced photometry included) and gzipped-FITS cutouts, in any number.

When ``../shared/data`` is absent (a user's checkout) only synthetic alerts are used, and the
results say so.
"""

from __future__ import annotations

import io
import json
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import fastavro

from broker_plugin.decode import decode_alert
from broker_plugin.decode.avro import CONTAINER_MAGIC, parse_metadata, read_container_header
from broker_plugin.decode.schemas import packaged_lsst_schema
from broker_plugin.stream.avro_container import container_message, encode_metadata

REPO_ROOT = Path(__file__).resolve().parent.parent
#: The shared folder of real public alerts (override with BAL_SHARED_DATA, as the tests do).
SHARED_DATA = Path(os.environ.get("BAL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
_WIRE = struct.Struct(">BI")
#: Fresh ids start here, far from real ZTF candids (~1e18) and below the synthetic Rubin ids (9e18).
_ID_BASE = 3_000_000_000_000_000_000


@dataclass(slots=True)
class Packet:
    """One message value and what it is."""

    survey: str  #: "ztf" or "lsst"
    source: str  #: "real" (replicated public alert) or "synthetic"
    data: bytes
    key: str  #: the object id (the Kafka key the publisher would use)


@dataclass
class Corpus:
    """Packets per (survey, source), plus a description for the report."""

    packets: dict[tuple[str, str], list[Packet]] = field(default_factory=dict)
    real_files: dict[str, int] = field(default_factory=dict)
    real_available: bool = False

    def group(self, survey: str, source: str | None = None) -> list[Packet]:
        """Packets of one survey, one source or both (interleaved, deterministic order)."""
        if source is not None:
            return list(self.packets.get((survey, source), []))
        real = self.packets.get((survey, "real"), [])
        syn = self.packets.get((survey, "synthetic"), [])
        return interleave(real, syn)

    def describe(self) -> dict[str, Any]:
        """Counts and mean sizes, for the report."""
        out: dict[str, Any] = {"real_data": relative_path(SHARED_DATA) if self.real_available else None,
                               "real_files": dict(self.real_files), "groups": {}}
        for (survey, source), pk in sorted(self.packets.items()):
            if pk:
                out["groups"][f"{survey}/{source}"] = {
                    "alerts": len(pk), "mean_bytes": round(sum(len(p.data) for p in pk) / len(pk))}
        return out


def interleave(a: Sequence[Packet], b: Sequence[Packet]) -> list[Packet]:
    """Merge two lists proportionally (a stream mixes old-schema real-like and synthetic alerts)."""
    if not a or not b:
        return list(a) + list(b)
    out: list[Packet] = []
    ia = ib = 0
    while ia < len(a) or ib < len(b):
        if ib >= len(b) or (ia < len(a) and ia * len(b) <= ib * len(a)):
            out.append(a[ia])
            ia += 1
        else:
            out.append(b[ib])
            ib += 1
    return out


# ---------------------------------------------------------------------------------- real alerts


@dataclass(slots=True)
class _Template:
    """A real alert, decoded once, ready to be re-encoded with new ids."""

    survey: str
    record: dict[str, Any]
    parsed_schema: Any
    frame: tuple[str, bytes, bytes]  # ("container", header, sync) or ("wire", 5-byte prefix, b"")


def _load_template(data: bytes) -> _Template:
    alert = decode_alert(data)  # proves the packet decodes, and tells the survey
    if data.startswith(CONTAINER_MAGIC):
        header = read_container_header(data)
        meta = parse_metadata(header.meta_key)
        records = list(fastavro.reader(io.BytesIO(data)))
        schema_json = meta["avro.schema"]
        parsed = fastavro.parse_schema(json.loads(schema_json))
        new_header = CONTAINER_MAGIC + encode_metadata({"avro.schema": schema_json, "avro.codec": b"null"}) \
            + header.sync
        return _Template(alert.survey, records[0], parsed, ("container", new_header, header.sync))
    _, sid = _WIRE.unpack_from(data)
    ws = packaged_lsst_schema(sid)
    if ws is None:
        raise ValueError(f"wire-format schema id {sid} not shipped")
    record = fastavro.schemaless_reader(io.BytesIO(data[_WIRE.size:]), ws.parsed, None)
    return _Template(alert.survey, record, ws.parsed, ("wire", data[:_WIRE.size], b""))


def _ztf_object_id(n: int) -> str:
    """A ZTF-shaped object id ('ZTF' + 2-digit year + 7 letters), unique per ``n``."""
    letters = []
    for _ in range(7):
        n, r = divmod(n, 26)
        letters.append(chr(ord("a") + r))
    return "ZTF24" + "".join(reversed(letters))


def _with_fresh_ids(t: _Template, serial: int) -> tuple[dict[str, Any], str]:
    """A shallow-copied record whose identifying ids are new; returns (record, object id)."""
    rec = dict(t.record)
    new_id = _ID_BASE + serial
    if t.survey == "ztf":
        obj = _ztf_object_id(serial)
        rec["objectId"] = obj
        if "candid" in rec:
            rec["candid"] = new_id
        cand = rec.get("candidate")
        if isinstance(cand, dict):
            rec["candidate"] = {**cand, "candid": new_id}
        return rec, obj
    obj_id = new_id + 1_000_000_000_000
    src = rec.get("diaSource")
    if isinstance(src, dict):
        src = {**src, "diaSourceId": new_id}
        if src.get("diaObjectId"):
            src["diaObjectId"] = obj_id
        rec["diaSource"] = src
    dia = rec.get("diaObject")
    if isinstance(dia, dict) and dia.get("diaObjectId"):
        rec["diaObject"] = {**dia, "diaObjectId": obj_id}
    return rec, str(obj_id)


def _encode(t: _Template, record: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, t.parsed_schema, record)
    body = buf.getvalue()
    kind, prefix, sync = t.frame
    if kind == "container":
        return container_message(prefix, sync, body)
    return prefix + body


def real_templates(root: Path = SHARED_DATA) -> dict[str, list[_Template]]:
    """Every real alert under ``root`` ({survey: templates}); empty when the folder is absent."""
    out: dict[str, list[_Template]] = {"ztf": [], "lsst": []}
    for sub in ("ztf", "lsst"):
        for path in sorted((root / sub / "alerts").glob("*.avro")):
            try:
                t = _load_template(path.read_bytes())
            except Exception:  # a packet the plugin rejects is not a throughput input
                continue
            out[t.survey].append(t)
    return out


def replicate(templates: Sequence[_Template], n: int, start_serial: int = 0) -> list[Packet]:
    """``n`` packets cycling through ``templates``, each with fresh ids."""
    out = []
    for i in range(n):
        t = templates[i % len(templates)]
        rec, obj = _with_fresh_ids(t, start_serial + i)
        out.append(Packet(t.survey, "real", _encode(t, rec), obj))
    return out


# ---------------------------------------------------------------------------------- synthetic


def synthetic(n: int, survey: str, seed: int) -> list[Packet]:
    """``n`` synthetic alerts of one survey from :func:`training.synthetic.iter_night` (with cutouts)."""
    if n <= 0:
        return []
    from training.synthetic import iter_night

    out = []
    for data, truth in iter_night(n, survey_mix={survey: 1.0}, seed=seed):
        out.append(Packet(survey, "synthetic", data, str(truth.get("object_id", ""))))
    return out


def build(n_ztf: int, n_lsst: int, *, real_share: float = 0.5, seed: int = 2026,
          use_real: bool = True) -> Corpus:
    """A corpus of ``n_ztf`` ZTF and ``n_lsst`` Rubin alerts, ``real_share`` of each replicated from the
    real public alerts (all synthetic when those are absent or ``use_real`` is false)."""
    corpus = Corpus()
    templates = real_templates() if use_real and SHARED_DATA.is_dir() else {"ztf": [], "lsst": []}
    corpus.real_available = bool(templates["ztf"] or templates["lsst"])
    corpus.real_files = {k: len(v) for k, v in templates.items()}
    serial = 0
    for survey, n, sseed in (("ztf", n_ztf, seed), ("lsst", n_lsst, seed + 1)):
        n_real = round(n * real_share) if templates[survey] else 0
        corpus.packets[(survey, "real")] = replicate(templates[survey], n_real, serial) if n_real else []
        serial += n_real
        corpus.packets[(survey, "synthetic")] = synthetic(n - n_real, survey, sseed)
    return corpus


def relative_path(path: Path) -> str:
    """A path as the report shows it: relative to the repository, so results name no machine's folders."""
    root = Path(__file__).resolve().parent.parent
    try:
        return os.path.relpath(Path(path).resolve(), root)
    except ValueError:
        return Path(path).name
