"""Avro binary primitives and the one-record object container the service's outputs are.

Why hand-written rather than fastavro: an output is the input record body followed by a few bytes,
so the service builds containers from pieces (header, block count and size, body, sync marker)
without decoding anything; these are the few encodings that takes (see
:mod:`broker_plugin.stream.kafka_output`).
"""

from __future__ import annotations

from collections.abc import Mapping

from broker_plugin.decode.avro import CONTAINER_MAGIC


def encode_long(n: int) -> bytes:
    """Avro ``long``: zig-zag, then base-128 varint, least significant group first."""
    z = (n << 1) ^ (n >> 63)
    out = bytearray()
    while z & ~0x7F:
        out.append((z & 0x7F) | 0x80)
        z >>= 7
    out.append(z)
    return bytes(out)


def encode_bytes(data: bytes) -> bytes:
    """Avro ``bytes``/``string``: length, then the bytes."""
    return encode_long(len(data)) + data


def encode_metadata(meta: Mapping[str, bytes]) -> bytes:
    """A container header's metadata map (one block, then the empty block that ends the map)."""
    parts = [encode_long(len(meta))]
    for key, value in meta.items():
        parts.append(encode_bytes(key.encode("utf-8")))
        parts.append(encode_bytes(value))
    parts.append(b"\x00")
    return b"".join(parts)


def container_header(schema_json: str, sync: bytes) -> bytes:
    """Magic, metadata (``avro.schema``, ``avro.codec = null``) and the sync marker."""
    if len(sync) != 16:
        raise ValueError("an Avro sync marker is 16 bytes")
    meta = {"avro.schema": schema_json.encode("utf-8"), "avro.codec": b"null"}
    return CONTAINER_MAGIC + encode_metadata(meta) + sync


def container_message(header: bytes, sync: bytes, body: bytes) -> bytes:
    """A complete one-record container: header, one block (count 1, size, body), sync."""
    return b"".join((header, b"\x02", encode_long(len(body)), body, sync))

