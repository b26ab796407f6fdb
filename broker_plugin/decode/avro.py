"""Avro framing: object-container header and blocks, codecs, and a guarded schemaless read.

fastavro.reader would re-parse the embedded writer schema (20+ kB of JSON for ZTF) for every
one-alert file, which costs more than decoding the alert itself. So the container header is read
here, the parsed schema is cached by the header's metadata bytes (see :mod:`.schemas`), and the
single data block is decoded with ``fastavro.schemaless_reader``.

Every failure is turned into a :class:`~broker_plugin.errors.DecodeError` with a reason from
:data:`~broker_plugin.errors.DECODE_REASONS`. fastavro signals bad input with a zoo of built-in
exceptions (EOFError, ValueError, UnicodeDecodeError, IndexError, OverflowError, MemoryError, ...),
so the Avro read itself is wrapped narrowly and those are mapped; nothing else is caught.
"""

from __future__ import annotations

import bz2
import io
import lzma
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import cramjam
from fastavro import schemaless_reader

from broker_plugin.errors import DecodeError

CONTAINER_MAGIC = b"Obj\x01"
WIRE_MAGIC = 0
_SYNC_SIZE = 16

#: Exceptions fastavro raises on malformed bytes (besides EOFError, which means "truncated").
_AVRO_DATA_ERRORS: tuple[type[BaseException], ...] = (
    ValueError,  # includes UnicodeDecodeError and fastavro's own value errors
    IndexError,  # union/enum index out of range
    KeyError,
    TypeError,
    OverflowError,
    MemoryError,
    struct.error,
    RecursionError,
)


def read_long(buf: bytes, pos: int) -> tuple[int, int]:
    """Decode one zig-zag varint Avro long at ``pos``; return (value, new position)."""
    shift = 0
    acc = 0
    n = len(buf)
    while True:
        if pos >= n:
            raise DecodeError("container header ends inside a number", reason="truncated")
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return (acc >> 1) ^ -(acc & 1), pos
        shift += 7
        if shift > 63:
            raise DecodeError("container header holds an over-long varint", reason="corrupt_avro")


@dataclass(frozen=True, slots=True)
class ContainerHeader:
    """The parts of an Avro object-container header the decoder needs."""

    meta_key: bytes  # the raw metadata map bytes: the cache key for the parsed schema
    end: int  # offset of the first data block
    sync: bytes


#: Recently seen header prefixes (magic + metadata map) -> (metadata bytes, end of the map), most
#: recent first. See :func:`read_container_header`.
_RECENT_HEADERS: list[tuple[bytes, bytes, int]] = []
_MAX_RECENT_HEADERS = 8


def read_container_header(data: bytes) -> ContainerHeader:
    """Walk the header's metadata map (without decoding it) and locate the first block.

    A stream's alerts share one header up to the per-file sync marker (ZTF: ~27 kB of schema JSON),
    so the walk, the 27 kB ``meta_key`` copy and, downstream, its hashing as a cache key (a new bytes
    object has no cached hash) would be repeated for every message. Recently seen prefixes are
    therefore kept: a message that *starts with* one of them has, byte for byte, the same metadata
    map, hence the same parse; it gets the very same ``meta_key`` object (hash already computed) and
    only its own sync marker is read.
    """
    recent = _RECENT_HEADERS
    for i, (prefix, meta_key, meta_end) in enumerate(recent):
        if data.startswith(prefix):
            if meta_end + _SYNC_SIZE > len(data):
                break  # let the full walk report it
            if i:
                recent.insert(0, recent.pop(i))
            return ContainerHeader(meta_key, meta_end + _SYNC_SIZE, data[meta_end:meta_end + _SYNC_SIZE])
    header = _walk_container_header(data)
    meta_end = header.end - _SYNC_SIZE
    recent.insert(0, (data[:meta_end], header.meta_key, meta_end))
    del recent[_MAX_RECENT_HEADERS:]
    return header


def _walk_container_header(data: bytes) -> ContainerHeader:
    pos = len(CONTAINER_MAGIC)
    n = len(data)
    while True:
        count, pos = read_long(data, pos)
        if count == 0:
            break
        if count < 0:  # a negative count is followed by the block's byte size
            count = -count
            _, pos = read_long(data, pos)
        for _ in range(2 * count):  # key string, value bytes
            size, pos = read_long(data, pos)
            if size < 0:
                raise DecodeError("container header holds a negative length", reason="corrupt_avro")
            pos += size
            if pos > n:
                raise DecodeError("container header ends early", reason="truncated")
    meta_end = pos
    if pos + _SYNC_SIZE > n:
        raise DecodeError("container header ends before its sync marker", reason="truncated")
    return ContainerHeader(data[len(CONTAINER_MAGIC):meta_end], pos + _SYNC_SIZE, data[pos:pos + _SYNC_SIZE])


def parse_metadata(meta_key: bytes) -> dict[str, bytes]:
    """Decode the metadata map (only on a schema-cache miss)."""
    out: dict[str, bytes] = {}
    pos = 0
    while True:
        count, pos = read_long(meta_key, pos)
        if count == 0:
            return out
        if count < 0:
            count = -count
            _, pos = read_long(meta_key, pos)
        for _ in range(count):
            klen, pos = read_long(meta_key, pos)
            key = meta_key[pos:pos + klen]
            pos += klen
            vlen, pos = read_long(meta_key, pos)
            out[key.decode("utf-8", "replace")] = meta_key[pos:pos + vlen]
            pos += vlen


def container_blocks(data: bytes, header: ContainerHeader) -> list[tuple[int, bytes]]:
    """(record count, raw block body) of every data block, checking the sync markers."""
    return [(count, data[start:end]) for count, start, end in container_block_spans(data, header)]


def container_block_spans(data: bytes, header: ContainerHeader) -> list[tuple[int, int, int]]:
    """(record count, start, end) of every data block's body in ``data``, checking the sync markers
    (the same walk as :func:`container_blocks`, without copying the bodies)."""
    blocks: list[tuple[int, int, int]] = []
    pos = header.end
    n = len(data)
    while pos < n:
        count, pos = read_long(data, pos)
        size, pos = read_long(data, pos)
        if count < 0 or size < 0:
            raise DecodeError("container block has a negative count or size", reason="corrupt_avro")
        end = pos + size
        if end + _SYNC_SIZE > n:
            raise DecodeError(f"container block of {size} bytes runs past the end of the data", reason="truncated")
        if data[end:end + _SYNC_SIZE] != header.sync:
            raise DecodeError("container block is not followed by the file's sync marker", reason="corrupt_avro")
        blocks.append((count, pos, end))
        pos = end + _SYNC_SIZE
    return blocks


def decompress(codec: str, body: bytes, max_size: int) -> bytes:
    """Undo a block codec, refusing to inflate past ``max_size`` bytes (a corrupt length or a bomb)."""
    if codec == "null":
        return body
    try:
        if codec == "deflate":
            d = zlib.decompressobj(-15)
            out = d.decompress(body, max_size)
            if not d.eof and (d.unconsumed_tail or len(out) >= max_size):
                raise DecodeError(f"deflate block inflates past {max_size} bytes", reason="too_large")
            # Raw deflate has no checksum, but at least the stream must be complete. Bytes after its end
            # are tolerated: fastavro writes zlib.compress(...)[2:-1], leaving 3 bytes of the Adler-32.
            if not d.eof:
                raise DecodeError("deflate block ends inside its deflate stream", reason="corrupt_avro")
            return out
        if codec == "snappy":
            # Avro snappy = raw snappy + 4-byte big-endian CRC32 of the uncompressed data.
            if len(body) < 4:
                raise DecodeError("snappy block shorter than its checksum", reason="truncated")
            raw = body[:-4]
            size, _ = read_long_unsigned(raw, 0)
            if size > max_size:
                raise DecodeError(f"snappy block claims {size} bytes (limit {max_size})", reason="too_large")
            out = bytes(cramjam.snappy.decompress_raw(raw))
            if zlib.crc32(out) != struct.unpack(">I", body[-4:])[0]:
                raise DecodeError("snappy block fails its CRC32 check", reason="corrupt_avro")
            return out
        if codec == "zstandard":
            out = _zstd_bounded(body, max_size)
        elif codec in ("bzip2", "xz"):
            dec = bz2.BZ2Decompressor() if codec == "bzip2" else lzma.LZMADecompressor()
            out = dec.decompress(body, max_size + 1)
            if len(out) > max_size:
                raise DecodeError(f"{codec} block inflates past {max_size} bytes", reason="too_large")
            if not dec.eof:
                raise DecodeError(f"{codec} block ends inside its stream", reason="corrupt_avro")
        else:
            raise DecodeError(f"unsupported Avro codec {codec!r}", reason="corrupt_avro")
    except DecodeError:
        raise
    except (zlib.error, cramjam.DecompressionError, OSError, lzma.LZMAError, ValueError, EOFError) as exc:
        raise DecodeError(f"{codec} block cannot be decompressed: {exc}", reason="corrupt_avro") from exc
    if len(out) > max_size:
        raise DecodeError(f"{codec} block inflates past {max_size} bytes", reason="too_large")
    return out


def _zstd_bounded(body: bytes, max_size: int) -> bytes:
    """zstd into a bounded buffer, grown 4x at a time up to ``max_size``.

    Plain ``decompress`` trusts the frame header's content size, which a corrupt header can make
    huge; cramjam reports a too-small output buffer as "failed to write whole buffer".
    """
    size = min(max_size, max(1 << 16, 16 * len(body)))
    while True:
        buf = bytearray(size)
        try:
            n = cramjam.zstd.decompress_into(body, buf)
        except cramjam.DecompressionError as exc:
            if "whole buffer" not in str(exc):
                raise
            if size >= max_size:
                raise DecodeError(f"zstandard block inflates past {max_size} bytes", reason="too_large") from exc
            size = min(max_size, size * 4)
            continue
        return bytes(buf[:n])


def read_long_unsigned(buf: bytes, pos: int) -> tuple[int, int]:
    """A plain (not zig-zag) varint, as in the snappy preamble."""
    shift = acc = 0
    while pos < len(buf) and shift <= 63:
        b = buf[pos]
        pos += 1
        acc |= (b & 0x7F) << shift
        if not b & 0x80:
            return acc, pos
        shift += 7
    raise DecodeError("snappy block has a corrupt length preamble", reason="corrupt_avro")


def read_records(body: bytes, schema: Any, count: int = 1, *, what: str, fast: Any = None,
                 start: int = 0, end: int | None = None, spec: Any = None) -> list[Any]:
    """Decode ``count`` schemaless Avro data that must fill ``body[start:end]`` exactly.

    Trailing bytes mean the writer schema and the data disagree (or the data was damaged), so they
    are an error rather than something to ignore.

    ``fast`` is the schema's :class:`~broker_plugin.decode.fastread.CompiledReader`: its reader is
    tried first and returns exactly what fastavro would (with ``spec``, only the fields the spec
    names); if it raises, or stops anywhere but at ``end``, fastavro reads the bytes again and
    decides (the full record, or the DecodeError those bytes always gave), so every error keeps its
    reason. A caller passing ``spec`` must therefore accept full records too.
    """
    if end is None:
        end = len(body)
    reader = fast.get(spec) if fast is not None else None
    if reader is not None:
        try:
            pos = start
            out = []
            for _ in range(count):
                datum, pos = reader(body, pos)
                out.append(datum)
            if pos == end:
                return out
        except Exception:  # anything unusual: fastavro below is the reference
            pass
    if start or end != len(body):
        body = body[start:end]
    fo = io.BytesIO(body)
    try:
        out = [schemaless_reader(fo, schema, None) for _ in range(count)]
    except EOFError as exc:
        raise DecodeError(f"{what}: the bytes end before the record does", reason="truncated") from exc
    except _AVRO_DATA_ERRORS as exc:
        raise DecodeError(f"{what}: not valid Avro for its schema ({type(exc).__name__}: {exc})"[:300],
                          reason="corrupt_avro") from exc
    if fo.tell() != len(body):
        raise DecodeError(f"{what}: {len(body) - fo.tell()} bytes left after the record", reason="corrupt_avro")
    return out
