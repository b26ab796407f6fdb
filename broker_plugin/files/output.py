"""File writers for annotated records (JSONL, Avro, Parquet) and for the rejects list.

Why three formats, chosen by the output file's extension: JSONL is what people ``grep`` and what
the DESIGN.md record contract is written in; Avro is what the Kafka side and the survey ecosystem
speak (same schema as the ``bal`` record of the output topic); Parquet is what astronomers load
into pandas/Spark for a whole night. All three hold exactly the same records:

* ids are strings everywhere, so 64-bit ZTF candids / Rubin diaSourceIds never go through a float;
* a NaN feature is ``null`` (JSON has no NaN; Avro/Parquet get a real null, not a NaN sentinel);
* types are explicit (``schemas/bal_annotation.avsc``; :func:`parquet_schema`), never inferred from
  the first batch, so an all-null column in one night cannot change a file's schema.

Writers stream: JSONL and Avro write each batch as it comes, Parquet buffers at most one row group
(:data:`PARQUET_ROW_GROUP` records) so memory stays bounded on a full night.

Files appear atomically: each writer writes ``FILE.partial`` and renames it over ``FILE`` only on
:meth:`close` after success; on an exception (``abort``) the partial file is removed. So an
existing output file is always complete, and an interrupted replay never leaves a half file that a
downstream job could mistake for a night's results.

Rejects (``FILE.rejects.jsonl``, see :func:`rejects_path`) are *always* created, empty when nothing
was rejected, so operators and scripts can rely on the file existing after every successful run.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import IO, Any, Protocol

from broker_plugin.alert import HISTORY_ORIGINS
from broker_plugin.errors import ConfigError
from broker_plugin.models.record_schema import annotation_schema

#: Output file extensions and what they mean, for error messages and ``--help``.
OUTPUT_FORMATS: dict[str, str] = {".jsonl": "JSON Lines", ".avro": "Avro container", ".parquet": "Parquet"}

#: Records per Parquet row group: large enough for good compression and fast scans, small enough
#: (~10 MB with the feature struct) that buffering one group costs little memory.
PARQUET_ROW_GROUP = 10_000

#: Avro container sync interval in bytes (fastavro's default is 16 kB; larger blocks compress better).
AVRO_SYNC_INTERVAL = 256 * 1024

REJECTS_SUFFIX = ".rejects.jsonl"
PARTIAL_SUFFIX = ".partial"

#: The fields of an output record, in contract order (DESIGN.md, "JSONL output record").
RECORD_FIELDS: tuple[str, ...] = (
    "survey", "object_id", "source_id", "ra", "dec", "mjd", "n_points", "features",
    "bal_lc_prob", "bal_fusion_prob", "candidate_score", "is_candidate", "history", "flags", "model_version",
)

#: Bytes of the rejected message copied, hex-encoded, into the rejects line (enough to see the
#: magic bytes / schema id without bloating the file).
REJECT_HEAD_BYTES = 16


# --------------------------------------------------------------------------------------- schemas


@lru_cache(maxsize=1)
def _parsed_annotation_schema() -> Any:
    import fastavro

    return fastavro.parse_schema(annotation_schema())


def parquet_schema(feature_names: Sequence[str], metadata: Mapping[str, str] | None = None) -> Any:
    """The explicit Arrow schema of the Parquet output.

    ``features`` is a struct with one float64 child per feature, in the versioned feature order:
    columnar readers then get one typed column per feature (``features.amplitude_g``) instead of a
    map that must be exploded. ``n_points`` is a map because bands differ between surveys, and so
    are the per-origin counts of the ``history`` struct (its ``span_days`` is a plain float64).
    """
    import pyarrow as pa

    history = pa.struct(
        [pa.field(o, pa.map_(pa.string(), pa.int32()), nullable=False) for o in HISTORY_ORIGINS]
        + [pa.field("span_days", pa.float64(), nullable=False)]
    )

    return pa.schema(
        [
            pa.field("survey", pa.string(), nullable=False),
            pa.field("object_id", pa.string(), nullable=False),
            pa.field("source_id", pa.string(), nullable=False),
            pa.field("ra", pa.float64(), nullable=False),
            pa.field("dec", pa.float64(), nullable=False),
            pa.field("mjd", pa.float64(), nullable=False),
            pa.field("n_points", pa.map_(pa.string(), pa.int32()), nullable=False),
            pa.field("features", pa.struct([pa.field(n, pa.float64()) for n in feature_names]), nullable=False),
            pa.field("bal_lc_prob", pa.float64()),
            pa.field("bal_fusion_prob", pa.float64()),
            pa.field("candidate_score", pa.float64()),
            pa.field("is_candidate", pa.bool_(), nullable=False),
            pa.field("history", history, nullable=False),
            pa.field("flags", pa.list_(pa.string()), nullable=False),
            pa.field("model_version", pa.string(), nullable=False),
        ],
        metadata={k.encode(): v.encode() for k, v in (metadata or {}).items()},
    )


# --------------------------------------------------------------------------------------- writers


class RecordWriter(Protocol):
    """What the pipeline needs from an output: write batches, then close (commit) or abort."""

    path: Path
    records_written: int

    def write(self, records: Sequence[Mapping[str, Any]]) -> None: ...

    def close(self) -> None: ...

    def abort(self) -> None: ...


class _AtomicFile:
    """A binary file written as ``path.partial`` and renamed to ``path`` on successful close."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self.records_written = 0
        self._fh: IO[bytes] | None = open(self.partial, "wb")  # noqa: SIM115 - closed in close/abort

    @property
    def fh(self) -> IO[bytes]:
        if self._fh is None:
            raise ValueError(f"writer for {self.path} is closed")
        return self._fh

    def _commit(self) -> None:
        if self._fh is None:
            return
        self._fh.close()
        self._fh = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        """Drop the partial output; safe to call more than once and after close."""
        if self._fh is not None:
            self._fh.close()
            self._fh = None
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> _AtomicFile:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def close(self) -> None:
        self._commit()


class JsonlWriter(_AtomicFile):
    """One compact JSON object per line; NaN/inf are refused (``allow_nan=False``), never written."""

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        if not records:
            return
        lines = [json.dumps(r, allow_nan=False, separators=(",", ":")) for r in records]
        self.fh.write(("\n".join(lines) + "\n").encode("utf-8"))
        self.records_written += len(records)


class AvroWriter(_AtomicFile):
    """Avro object container with the ``bal`` schema, deflate-compressed, written block by block."""

    def __init__(self, path: Path, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(path)
        from fastavro.write import Writer

        try:
            self._writer = Writer(
                self.fh,
                _parsed_annotation_schema(),
                codec="deflate",
                sync_interval=AVRO_SYNC_INTERVAL,
                metadata=dict(metadata or {}),
            )
        except BaseException:
            self.abort()
            raise

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self._writer.write(_check_finite(r))
        self.records_written += len(records)

    def close(self) -> None:
        if self._fh is not None:
            self._writer.flush()
        self._commit()


class ParquetWriter:
    """Parquet with the explicit schema of :func:`parquet_schema`, one row group per
    :data:`PARQUET_ROW_GROUP` records, streamed through :class:`pyarrow.parquet.ParquetWriter`."""

    def __init__(
        self,
        path: Path,
        feature_names: Sequence[str],
        metadata: Mapping[str, str] | None = None,
        row_group_size: int = PARQUET_ROW_GROUP,
    ) -> None:
        import pyarrow.parquet as pq

        self.path = path
        self.partial = path.with_name(path.name + PARTIAL_SUFFIX)
        self.records_written = 0
        self.feature_names = tuple(feature_names)
        self.schema = parquet_schema(self.feature_names, metadata)
        self.row_group_size = row_group_size
        self._buffer: list[Mapping[str, Any]] = []
        self._writer: Any = pq.ParquetWriter(self.partial, self.schema, compression="snappy")

    def write(self, records: Sequence[Mapping[str, Any]]) -> None:
        for r in records:
            self._buffer.append(_check_finite(r))
            if len(self._buffer) >= self.row_group_size:
                self._flush()
        self.records_written += len(records)

    def _flush(self) -> None:
        import pyarrow as pa

        if not self._buffer:
            return
        names = self.feature_names
        rows = []
        for r in self._buffer:
            feats = r["features"]
            if len(feats) != len(names) or any(n not in feats for n in names):
                unknown = sorted(set(feats) ^ set(names))
                raise ValueError(f"record features differ from the output's feature list: {unknown[:5]}")
            rows.append({**r, "n_points": list(r["n_points"].items()), "history": _history_row(r["history"])})
        table = pa.Table.from_pylist(rows, schema=self.schema)
        self._writer.write_table(table, row_group_size=self.row_group_size)
        self._buffer.clear()

    def close(self) -> None:
        if self._writer is None:
            return
        self._flush()
        self._writer.close()
        self._writer = None
        os.replace(self.partial, self.path)

    def abort(self) -> None:
        if self._writer is None:
            return
        try:
            self._writer.close()
        finally:
            self._writer = None
            self._buffer.clear()
            self.partial.unlink(missing_ok=True)

    def __enter__(self) -> ParquetWriter:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()


def _history_row(history: Mapping[str, Any]) -> dict[str, Any]:
    """``history`` as Arrow takes it: each band map as a list of (band, count) pairs, like ``n_points``."""
    row: dict[str, Any] = {o: list(history[o].items()) for o in HISTORY_ORIGINS}
    row["span_days"] = history["span_days"]
    return row


def _check_finite(record: Mapping[str, Any]) -> Mapping[str, Any]:
    """Refuse NaN/inf in the float fields, as JSON's allow_nan=False does, so the three formats
    agree: a NaN must have become null upstream (it is a bug in the annotator otherwise)."""
    for key in ("ra", "dec", "mjd", "bal_lc_prob", "bal_fusion_prob", "candidate_score"):
        v = record[key]
        if v is not None and not math.isfinite(v):
            raise ValueError(f"non-finite {key}={v!r} in output record {record.get('source_id')}")
    for k, v in record["features"].items():
        if v is not None and not math.isfinite(v):
            raise ValueError(f"non-finite feature {k}={v!r} in output record {record.get('source_id')}")
    span = record["history"]["span_days"]
    if not math.isfinite(span):
        raise ValueError(f"non-finite history.span_days={span!r} in output record {record.get('source_id')}")
    return record


def output_format(path: str | Path) -> str:
    """The format extension of ``path`` (``.jsonl``, ``.avro``, ``.parquet``) or ConfigError."""
    suffix = Path(path).suffix.lower()
    if suffix not in OUTPUT_FORMATS:
        known = ", ".join(OUTPUT_FORMATS)
        raise ConfigError(f"cannot tell the output format of {path}: its name must end with {known}")
    return suffix


def check_output_path(path: str | Path) -> Path:
    """Validate the output path before any work starts: known extension, existing directory."""
    p = Path(path)
    output_format(p)
    if p.is_dir():
        raise ConfigError(f"output {path} is a directory; name a file ending .jsonl, .avro or .parquet")
    parent = p.parent if str(p.parent) else Path(".")
    if not parent.is_dir():
        raise ConfigError(f"output directory does not exist: {parent}")
    if not os.access(parent, os.W_OK):
        raise ConfigError(f"output directory is not writable: {parent}")
    return p


def open_writer(
    path: str | Path,
    *,
    feature_names: Sequence[str],
    metadata: Mapping[str, str] | None = None,
) -> RecordWriter:
    """A writer for ``path`` chosen by its extension (ConfigError for an unknown one).

    ``metadata`` (plugin version, feature version, model version...) goes into the Avro header and
    the Parquet schema metadata, so a file says how it was made; JSONL has no place for it.
    """
    p = Path(path)
    fmt = output_format(p)
    try:
        if fmt == ".jsonl":
            return JsonlWriter(p)
        if fmt == ".avro":
            return AvroWriter(p, metadata)
        return ParquetWriter(p, feature_names, metadata)
    except OSError as exc:
        raise ConfigError(f"cannot write output {p}: {exc.strerror or exc}") from None


# --------------------------------------------------------------------------------------- rejects


def rejects_path(output: str | Path) -> Path:
    """``FILE.rejects.jsonl`` for output ``FILE`` (the full name is kept: ``night.avro.rejects.jsonl``)."""
    p = Path(output)
    return p.with_name(p.name + REJECTS_SUFFIX)


def reject_record(origin: str, reason: str, message: str, data: bytes, stage: str) -> dict[str, Any]:
    """One rejects line: where, why, and enough of the bytes to find and identify the message.

    ``sha256`` identifies the exact payload (to find it again in an archive or a topic);
    ``head_hex`` shows the first bytes, which usually tell the story (``4f626a01`` is an Avro
    container, ``00`` + 4 bytes a Confluent wire-format schema id).
    """
    return {
        "origin": origin,
        "stage": stage,
        "reason": reason,
        "message": message,
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "head_hex": data[:REJECT_HEAD_BYTES].hex(),
    }


class RejectsWriter(JsonlWriter):
    """``FILE.rejects.jsonl``: one JSON line per input that produced no output record.

    Fields: ``origin`` (file, or ``tarball:member``), ``stage`` (``read``, ``decode`` or
    ``annotate``), ``reason`` (a short code such as DecodeError.reason), ``message``, ``size`` (bytes),
    ``sha256`` and ``head_hex`` of the payload.
    """

    def reject(self, origin: str, reason: str, message: str, data: bytes, stage: str) -> None:
        self.write([reject_record(origin, reason, message, data, stage)])


def open_rejects(output: str | Path) -> RejectsWriter:
    p = rejects_path(output)
    try:
        return RejectsWriter(p)
    except OSError as exc:
        raise ConfigError(f"cannot write rejects file {p}: {exc.strerror or exc}") from None
