"""The decoder: bytes -> format -> writer schema -> record -> survey -> :class:`Alert`.

Formats are told apart by their first bytes, per message: an Avro object container starts with
``b"Obj\\x01"`` (ZTF, archives, Spark/Fink rewrites); a Confluent wire-format message with 0x00 and a
4-byte big-endian schema id (Rubin's Kafka stream, id = major*100 + minor). The survey is then told
from the record's fields, never from the schema name (rewritten files call every record
``topLevelRecord``).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from broker_plugin.alert import Alert
from broker_plugin.errors import DecodeError
from broker_plugin.photometry.lightcurve import (
    rubin_lightcurves,
    rubin_lightcurves_batch,
    ztf_lightcurves,
    ztf_lightcurves_batch,
)

from .avro import (
    CONTAINER_MAGIC,
    WIRE_MAGIC,
    container_block_spans,
    container_blocks,
    decompress,
    read_container_header,
    read_records,
)
from .rubin import LSST_META_FIELDS, RUBIN_DECODE_FIELDS, rubin_alert
from .schemas import RegistryClient, WriterSchema, embedded_schema, packaged_lsst_schema
from .ztf import ZTF_DECODE_FIELDS, ZTF_META_FIELDS, ztf_alert

#: Every key of :attr:`Alert.meta`, in a fixed order, for both surveys (the other survey's fields are
#: NaN), so that a ranking head can build one fixed-length vector from any alert.
META_FIELDS: tuple[str, ...] = ZTF_META_FIELDS + LSST_META_FIELDS

#: Largest message (and largest decompressed container block) accepted. Real alerts are 10 kB - 1 MB;
#: the bound keeps a corrupt length field or a compression bomb from exhausting memory.
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

#: What :meth:`Decoder.decode` materialises up front: the fields the Alert is built from (both surveys'
#: projections merged; each applies only where its field names occur). Everything else of the record
#: is skipped -- though still checked, so the same bytes are accepted and rejected -- and decoded
#: only if someone reads ``Alert.record`` (:class:`LazyRecord`). A ZTF alert carries ~1,400 values
#: of which ~300 are used: the projected read is ~3x faster than fastavro and holds ~5x less memory.
DECODE_FIELDS: dict[str, Any] = {**ZTF_DECODE_FIELDS, **RUBIN_DECODE_FIELDS}

_ZTF_KEYS = frozenset(("objectId", "candid", "candidate"))
_LSST_KEYS = frozenset(("diaSource", "prvDiaSources", "diaObject", "prvDiaForcedSources"))
_NAN_META = dict.fromkeys(META_FIELDS, math.nan)
_WIRE_HEADER = struct.Struct(">BI")


def detect_survey(record: Any) -> str:
    """'ztf' or 'lsst' from a record's top-level fields; DecodeError(unknown_alert_type) otherwise."""
    if not isinstance(record, dict):
        raise DecodeError(f"decoded datum is a {type(record).__name__}, not an alert record",
                          reason="unknown_alert_type")
    is_ztf = not _ZTF_KEYS.isdisjoint(record)
    is_lsst = not _LSST_KEYS.isdisjoint(record)
    if is_ztf and not is_lsst:
        return "ztf"
    if is_lsst and not is_ztf:
        return "lsst"
    raise DecodeError("record is neither a ZTF alert (objectId/candid/candidate) nor a Rubin alert "
                      "(diaSource/prvDiaSources/diaObject)", reason="unknown_alert_type")


def alert_from_record(record: Any, *, schema_version: str | None = None, raw: bytes = b"",
                      lightcurves: bool = True) -> Alert:
    """The Alert of an already-decoded record (e.g. a row of a Parquet alert archive).

    The same normalisation as :meth:`Decoder.decode`, so that training on archived records and
    streaming share one path. ``record`` is kept by reference, not copied. ``lightcurves=False``
    leaves the light curves to the caller (the batch path, :meth:`Decoder.decode_batch`).
    """
    survey = detect_survey(record)
    build = ztf_alert if survey == "ztf" else rubin_alert
    alert = build(record, schema_version=schema_version, raw=raw, lightcurves=lightcurves)
    alert.meta = {**_NAN_META, **alert.meta}
    return alert


_BATCH_LIGHTCURVES = {"ztf": ztf_lightcurves_batch, "lsst": rubin_lightcurves_batch}
_ONE_LIGHTCURVE = {"ztf": ztf_lightcurves, "lsst": rubin_lightcurves}


def _attach_lightcurves(survey: str, items: Sequence[tuple[int, Any]], out: list[Alert | Exception]) -> None:
    """Give the alerts ``out[i]`` of ``items`` (index, projected record) their light curves, in one call.

    The light-curve flags go after the flags the survey builder set, where the one-alert path puts them.
    """
    try:
        results = _BATCH_LIGHTCURVES[survey]([rec for _, rec in items])
    except Exception:  # redo alert by alert: only the alert that breaks the code loses its record
        results = []
        for _i, rec in items:
            try:
                results.append(_ONE_LIGHTCURVE[survey](rec))
            except Exception as exc:
                results.append(exc)
    for (i, _rec), res in zip(items, results, strict=True):
        if isinstance(res, Exception):
            out[i] = res
            continue
        alert = out[i]
        assert isinstance(alert, Alert)
        alert.lightcurves, alert.upper_limits, lc_flags = res
        alert.flags.extend(lc_flags)


class LazyRecord(Mapping[str, Any]):
    """``Alert.record`` when the alert was decoded with a projection: the full decoded record, read on
    first access (with the same reader, so it is exactly what an eager decode would have given).

    A read-only mapping: compares equal to the plain dict, and ``dict(...)``, ``{**...}``, ``.get``
    work as on one. Pickling and copying give the plain dict. The message bytes were already
    accepted when the alert was built (a projected read checks what it skips), so the first access
    cannot fail on the data.
    """

    __slots__ = ("_buf", "_end", "_record", "_start", "_what", "_ws")

    def __init__(self, buf: bytes, start: int, end: int, ws: WriterSchema, what: str) -> None:
        self._buf, self._start, self._end, self._ws, self._what = buf, start, end, ws, what
        self._record: dict[str, Any] | None = None

    def materialise(self) -> dict[str, Any]:
        """The full record (decoded now if it was not yet)."""
        if self._record is None:
            self._record = read_records(self._buf, self._ws.parsed, what=self._what, fast=self._ws.fast,
                                        start=self._start, end=self._end)[0]
            self._buf = b""
        return self._record

    def __getitem__(self, key: str) -> Any:
        return self.materialise()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.materialise())

    def __len__(self) -> int:
        return len(self.materialise())

    def __repr__(self) -> str:
        return repr(self.materialise())

    def __reduce__(self) -> tuple[Any, ...]:
        return (dict, (self.materialise(),))


class Decoder:
    """Decodes alert messages; holds the optional schema-registry fallback and the size bound.

    Parsed schemas are cached process-wide (they are keyed by content, so sharing is safe); only the
    registry client, whose answers depend on its URL, belongs to the instance.
    """

    def __init__(self, registry_url: str | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
                 registry_timeout_s: float = 5.0) -> None:
        self.registry = RegistryClient(registry_url, registry_timeout_s) if registry_url else None
        self.max_message_bytes = max_message_bytes

    @property
    def registry_url(self) -> str | None:
        return self.registry.url if self.registry else None

    def decode(self, data: bytes) -> Alert:
        """One message (container with one alert, or wire format) -> Alert, or DecodeError.

        Only :data:`DECODE_FIELDS` are decoded to build the Alert; ``Alert.record`` is a
        :class:`LazyRecord` that decodes the whole record if it is ever read (the service and replay
        never do: the output passes the input bytes through).
        """
        return self._decode(data, lightcurves=True)[0]

    def decode_batch(self, payloads: Sequence[bytes]) -> list[Alert | Exception]:
        """Many messages -> for each, its Alert or the exception :meth:`decode` would have raised.

        The same Alerts as calling :meth:`decode` on each message (``tests/test_decode_batch.py``
        pins it), built faster: the light curves of all alerts of a survey are built in one vectorised
        call (:func:`broker_plugin.photometry.lightcurve.ztf_lightcurves_batch`), because per alert they are tens
        of points and numpy's per-call overhead, not arithmetic, was their cost. If that call raises
        (a record no alert-at-a-time call would survive either), each alert of the batch is redone
        alone, so the exception belongs to that alert only.
        """
        out: list[Alert | Exception] = []
        pending: dict[str, list[tuple[int, Any]]] = {"ztf": [], "lsst": []}
        for i, data in enumerate(payloads):
            try:
                alert, projected = self._decode(data, lightcurves=False)
            except Exception as exc:  # DecodeError, or a bug: the caller tells them apart
                out.append(exc)
                continue
            out.append(alert)
            pending[alert.survey].append((i, projected))
        for survey, items in pending.items():
            if items:
                _attach_lightcurves(survey, items, out)
        return out

    def _decode(self, data: bytes, *, lightcurves: bool) -> tuple[Alert, Any]:
        """The Alert of one message and the projected record it was built from."""
        self._check_size(data)
        if not isinstance(data, bytes):
            data = bytes(data)
        if data.startswith(CONTAINER_MAGIC):
            header = read_container_header(data)
            ws = embedded_schema(header.meta_key)
            spans = [b for b in container_block_spans(data, header) if b[0]]
            if len(spans) != 1 or spans[0][0] != 1:
                self._container(data, single=True)  # raises the usual error (multiple_records, ...)
                raise DecodeError("container does not hold exactly one alert", reason="multiple_records")
            _, start, end = spans[0]
            buf = data
            if ws.codec != "null":
                buf = decompress(ws.codec, data[start:end], self.max_message_bytes)
                start, end = 0, len(buf)
            if end - start < 1:  # every alert record takes at least one byte
                raise DecodeError(f"container block claims 1 records in {end - start} bytes", reason="corrupt_avro")
            what, version = "container block", ws.version
        else:
            ws, sid = self._wire(data)
            buf, start, end = data, _WIRE_HEADER.size, len(data)
            what, version = f"wire-format message (schema id {sid})", ws.version or "{}.{}".format(*divmod(sid, 100))
        (projected,) = read_records(buf, ws.parsed, what=what, fast=ws.fast, start=start, end=end,
                                    spec=DECODE_FIELDS)
        alert = alert_from_record(projected, schema_version=version, raw=data, lightcurves=lightcurves)
        if ws.fast.peek(DECODE_FIELDS) is not None:  # else fastavro gave the full record: keep it
            alert.record = LazyRecord(buf, start, end, ws, what)
        return alert, projected

    def records(self, data: bytes) -> list[Any]:
        """Every record of a container (any number) or the one record of a wire-format message."""
        return self._records(data, single=False)[0]

    # ------------------------------------------------------------------------------ internals

    def _check_size(self, data: bytes) -> None:
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise TypeError(f"decode_alert expects bytes, got {type(data).__name__}")
        if len(data) == 0:
            raise DecodeError("empty message", reason="empty")
        if len(data) > self.max_message_bytes:
            raise DecodeError(f"message of {len(data)} bytes exceeds the {self.max_message_bytes}-byte limit",
                              reason="too_large")

    def _records(self, data: bytes, *, single: bool) -> tuple[list[Any], str | None]:
        self._check_size(data)
        if not isinstance(data, bytes):
            data = bytes(data)
        if data.startswith(CONTAINER_MAGIC):
            return self._container(data, single=single)
        ws, sid = self._wire(data)
        recs = read_records(data, ws.parsed, what=f"wire-format message (schema id {sid})", fast=ws.fast,
                            start=_WIRE_HEADER.size)
        return recs, ws.version or "{}.{}".format(*divmod(sid, 100))

    def _wire(self, data: bytes) -> tuple[WriterSchema, int]:
        """The writer schema and id of a wire-format message (DecodeError for anything else)."""
        if data[0] == WIRE_MAGIC:
            if len(data) < _WIRE_HEADER.size:
                raise DecodeError("wire-format message shorter than its 5-byte header", reason="truncated")
            _, sid = _WIRE_HEADER.unpack_from(data)
            return self._wire_schema(sid), sid
        if len(data) < len(CONTAINER_MAGIC) and CONTAINER_MAGIC.startswith(data):
            raise DecodeError("message ends inside the container magic", reason="truncated")
        raise DecodeError(f"unknown message format (first bytes {data[:4]!r}): neither an Avro container "
                          "nor a Confluent wire-format message", reason="bad_magic")

    def _wire_schema(self, sid: int) -> WriterSchema:
        ws = packaged_lsst_schema(sid)
        if ws is not None:
            return ws
        if self.registry is not None:
            return self.registry.get(sid)
        raise DecodeError(f"schema id {sid} is not shipped by lsst-alert-packet and no schema registry is "
                          "configured (decode.configure(registry_url=...))", reason="unknown_schema_id")

    def _container(self, data: bytes, *, single: bool) -> tuple[list[Any], str | None]:
        header = read_container_header(data)
        ws = embedded_schema(header.meta_key)
        blocks = container_blocks(data, header)
        total = sum(c for c, _ in blocks)
        if single and total != 1:
            raise DecodeError(f"container holds {total} records where one alert is expected",
                              reason="multiple_records")
        records: list[Any] = []
        for count, body in blocks:
            if count == 0:
                continue
            body = decompress(ws.codec, body, self.max_message_bytes)
            if count > len(body):  # every alert record takes at least one byte per record
                raise DecodeError(f"container block claims {count} records in {len(body)} bytes",
                                  reason="corrupt_avro")
            records.extend(read_records(body, ws.parsed, count, what="container block", fast=ws.fast))
        return records, ws.version

