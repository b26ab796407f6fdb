"""The plumbing shared by the reader and skipper generators of :mod:`broker_plugin.decode.fastread`.

Why a module of its own: compiling a reader has three concerns, and this is the one both code
generators stand on: the run-time helpers the generated code calls (``_Bad``, the varint tail and
end matcher), the size limits, and :class:`_GenBase` (named-type registry, temporaries, constants,
the varint and length-prefixed emitters). The skipper generator is in
:mod:`~broker_plugin.decode.fastread_skip`, the reader generator and the public API in
:mod:`~broker_plugin.decode.fastread`. Only compile time is split: the generated code is the same.
"""

from __future__ import annotations

import re
import struct
from typing import Any

#: Node budget of a writer schema, nodes counted as :meth:`_GenBase.collect` counts them (every type:
#: primitive, reference, union, array, map, record; fields count through their types). One bound for
#: the compiler and for :func:`broker_plugin.decode.schemas.check_bounded`, which refuses (reason
#: ``bad_schema``) any schema above it, so no reader ever sees one. The largest real schema is Rubin
#: alert_packet 4.0/5.0 with 2,225 nodes (3.0: 1,727; 6.0-11.1: 675-848; Fink-rewritten Rubin: 1,393;
#: ZTF 1.8-4.02, rewritten included: 359-526): 4,500 is 2x that; 20,000 cost seconds to compile.
MAX_NODES = 4_500
_MAX_DEPTH = 64
#: Deepest nesting of types accepted (references followed), in :meth:`_GenBase.collect`'s steps.
MAX_SCHEMA_DEPTH = 4 * _MAX_DEPTH


class _Unsupported(Exception):
    """Compile-time: this schema is read by fastavro instead."""


class _Bad(Exception):
    """Run-time: the bytes are not what this reader handles; fastavro decides."""


#: Shortest run of nullable float/double fields read with one unpack (shorter runs gain nothing).
_MIN_RUN = 3


def _tagged_number(t: Any) -> tuple[str, int, int] | None:
    """(struct code, tag byte when present, tag byte when null) of a two-branch union of null and a
    plain float or double; None for anything else (logical types and named references included)."""
    if not isinstance(t, list) or len(t) != 2 or "null" not in t:
        return None
    other = t[1] if t[0] == "null" else t[0]
    code = {"float": "f", "double": "d"}.get(other) if isinstance(other, str) else None
    if code is None:
        return None
    present = 2 * t.index(other)
    return code, present, 2 * t.index("null")


def _varint_tail(b: bytes, p: int, first: int) -> tuple[int, int]:
    """The rest of a varint whose first byte ``first`` had its continuation bit set; at most 64 bits."""
    acc = first & 0x7F
    shift = 7
    while True:
        c = b[p]
        p += 1
        acc |= (c & 0x7F) << shift
        if not c & 0x80:
            if acc >> 64:
                raise _Bad("varint longer than 64 bits")
            return acc, p
        shift += 7
        if shift > 63:
            raise _Bad("varint longer than 10 bytes")


#: A varint of at most 10 bytes (9 with the continuation bit, then one without). Skipping one with
#: a single C-level match is ~3x cheaper than decoding it. A 10-byte varint beyond 64 bits is
#: skipped here although the decoding path leaves it to fastavro: fastavro reads it (it wraps), so
#: accepting it is what the full read ends up doing too. No match (past 10 bytes, or the end of the
#: buffer) makes ``.end()`` raise AttributeError, which sends the message to fastavro.
_VARINT_END = re.compile(rb"[\x80-\xff]{0,9}[\x00-\x7f]", re.DOTALL).match


class _GenBase:
    """Emits one function per record type, the other types inline (state and the common emitters)."""

    def __init__(self) -> None:
        self.ns: dict[str, Any] = {
            "_Bad": _Bad, "_tail": _varint_tail, "_vend": _VARINT_END,
            "_uf": struct.Struct("<f").unpack_from, "_ud": struct.Struct("<d").unpack_from,
        }
        self.named: dict[str, Any] = {}
        self.functions: list[list[str]] = []
        self.record_fn: dict[Any, str] = {}
        self.nodes = 0
        self._tmp = 0

    # -- helpers -------------------------------------------------------------------------------
    def tmp(self, stem: str = "v") -> str:
        self._tmp += 1
        return f"{stem}{self._tmp}"

    def const(self, value: Any, stem: str) -> str:
        name = f"_{stem}{len(self.ns)}"
        self.ns[name] = value
        return name

    def collect(self, t: Any, namespace: str = "", depth: int = 0) -> None:
        """Register every named type (records, enums, fixed) by full and short name."""
        self.nodes += 1
        if self.nodes > MAX_NODES:
            raise _Unsupported(f"schema has more than {MAX_NODES} nodes")
        if depth > MAX_SCHEMA_DEPTH:
            raise _Unsupported(f"schema nests types more than {MAX_SCHEMA_DEPTH} levels deep")
        if isinstance(t, list):
            for x in t:
                self.collect(x, namespace, depth + 1)
            return
        if not isinstance(t, dict):
            return
        kind = t.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            name = str(t.get("name", ""))
            ns = t.get("namespace", namespace) or ""
            full = name if "." in name or not ns else f"{ns}.{name}"
            self.named.setdefault(full, t)
            self.named.setdefault(name.rsplit(".", 1)[-1], t)
            inner_ns = full.rsplit(".", 1)[0] if "." in full else ns
            for f in t.get("fields", ()) if kind != "enum" and kind != "fixed" else ():
                if isinstance(f, dict):
                    self.collect(f.get("type"), inner_ns, depth + 1)
            return
        if kind == "array":
            self.collect(t.get("items"), namespace, depth + 1)
        elif kind == "map":
            self.collect(t.get("values"), namespace, depth + 1)
        elif isinstance(kind, (dict, list)):
            self.collect(kind, namespace, depth + 1)

    def resolve(self, name: str) -> Any:
        t = self.named.get(name)
        if t is None:
            t = self.named.get(name.rsplit(".", 1)[-1])
        if t is None:
            raise _Unsupported(f"unknown named type {name!r}")
        return t

    # -- code ----------------------------------------------------------------------------------
    @staticmethod
    def long(out: str, ind: str) -> list[str]:
        """Zig-zag varint into ``out`` (one byte inline, longer ones through _tail)."""
        return [f"{ind}{out} = b[p]", f"{ind}p += 1",
                f"{ind}if {out} & 0x80:", f"{ind}    {out}, p = _tail(b, p, {out})",
                f"{ind}{out} = ({out} >> 1) ^ -({out} & 1)"]

    def sized(self, out: str, ind: str, decode: bool) -> list[str]:
        n = self.tmp("n")
        lines = self.long(n, ind)
        lines += [f"{ind}if {n} < 0 or p + {n} > len(b):", f"{ind}    raise _Bad('bad length')",
                  f"{ind}{out} = b[p:p + {n}]{'.decode()' if decode else ''}", f"{ind}p += {n}"]
        return lines


def schema_size_problem(schema: Any) -> str | None:
    """Why ``schema`` is over the node or depth budget (what :meth:`_GenBase.collect` refuses), or None.

    The very walk the compiler does, so that the check and the compiler count alike. Malformed
    schemas may raise the ordinary exceptions (TypeError, ...) a schema parse maps to ``bad_schema``.
    """
    try:
        _GenBase().collect(schema)
    except _Unsupported as exc:
        return str(exc)
    return None
