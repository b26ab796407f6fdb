"""A compiled schemaless Avro reader: each writer schema becomes straight-line Python, once.

Why: decoding is the largest cost of an alert. ``fastavro.schemaless_reader`` reads through a file
object, one ``read`` call and one generic dispatch per value: about 0.75 us for each ``["null",
"float"]`` field of a record, and a ZTF alert has ~1,500 of them (candidate, 30 days of
prv_candidates and fp_hists), so fastavro alone took ~550 us of the ~1 ms an alert cost. Generated
code for one known schema does the same work with a few bytecodes per field: read the union byte,
``struct.unpack_from`` the float at an offset, bind a local; the record is built with one dict
display at the end. About 3-4x faster on alert schemas.

Exactness is the contract: for every input the compiled reader either returns exactly what fastavro
returns (same dict keys in the same order, same Python types and values, logical types converted
by fastavro's own ``LOGICAL_READERS``), or raises. On *any* exception the caller
(:func:`broker_plugin.decode.avro.read_records`) re-reads the body with fastavro, which then
decides: the record, or the DecodeError the decoder always gave for those bytes. So everything
fastavro accepts in a way this reader does not bother to reproduce -- a union index that is
negative (fastavro's list indexing wraps it), a boolean byte other than 0/1, a varint longer than
64 bits -- is handed to fastavro rather than imitated. Nothing here is on an error path.

Security: generated code never contains text from the schema except through ``repr`` (field names
become string literals of the dict display); named-type names, enum symbols and logical-type
functions go into the namespace by reference. Schemas larger than :data:`MAX_NODES` (about twice
the largest real alert schema), deeper than ``MAX_SCHEMA_DEPTH``, recursive or referring to
undefined names are refused before any reader sees them (reason ``bad_schema``,
:func:`broker_plugin.decode.schemas.check_structure`): a hostile embedded schema can neither make
compilation expensive nor reach fastavro's C reader, which a recursive schema crashes.

Written from the Avro 1.11 specification ("Binary Encoding"); no other project's code is used.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Mapping
from typing import Any

from fastavro.read import LOGICAL_READERS

from broker_plugin.decode.fastread_gen import _MAX_DEPTH, _MIN_RUN, MAX_NODES, _tagged_number, _Unsupported
from broker_plugin.decode.fastread_skip import _SkipGen

__all__ = ["MAX_NODES", "CompiledReader", "Reader", "Spec", "compile_reader"]

#: A compiled reader: (buffer, start position) -> (datum, end position).
Reader = Callable[[bytes, int], "tuple[Any, int]"]
#: A projection: field name -> None (the whole value) or a nested projection (for a field holding a
#: record, a union with a record, or an array or map of records). Applies to every record type at
#: that place; names absent from the writer schema are simply absent from the datum.
Spec = Mapping[str, "Spec | None"]


class _Gen(_SkipGen):
    """Emits one function per record type, the other types inline: the reader half of the generator.

    The plumbing is :class:`~broker_plugin.decode.fastread_gen._GenBase`, skipping is
    :class:`~broker_plugin.decode.fastread_skip._SkipGen`.
    """

    def read(self, t: Any, out: str, ind: str, depth: int, spec: Spec | None = None) -> list[str]:
        """Lines reading one value of type ``t`` into local ``out``; ``spec`` projects the records in it."""
        if depth > _MAX_DEPTH:
            raise _Unsupported("schema nested too deeply")
        if isinstance(t, str):
            return self.read_named(t, out, ind, depth, spec)
        if isinstance(t, list):
            return self.union(t, out, ind, depth, spec)
        if not isinstance(t, dict):
            raise _Unsupported(f"schema node {t!r}")
        kind = t.get("type")
        if kind in ("record", "error"):
            fn = self.record(t, depth + 1, spec)
            return [f"{ind}{out}, p = {fn}(b, p)"]
        if kind == "enum":
            symbols = tuple(str(s) for s in t.get("symbols", ()))
            sym = self.const(symbols, "sym")
            lines = self.long(out, ind)
            return [*lines, f"{ind}if {out} < 0:", f"{ind}    raise _Bad('enum')", f"{ind}{out} = {sym}[{out}]"]
        if kind == "fixed":
            size = t.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _Unsupported("fixed without a size")
            lines = [f"{ind}if p + {size} > len(b):", f"{ind}    raise _Bad('fixed')",
                     f"{ind}{out} = b[p:p + {size}]", f"{ind}p += {size}"]
        elif kind == "array":
            lines = self.repeated(t.get("items"), out, ind, depth, is_map=False, spec=spec)
        elif kind == "map":
            lines = self.repeated(t.get("values"), out, ind, depth, is_map=True, spec=spec)
        elif isinstance(kind, (str, list, dict)):  # a primitive or named type, or a nested definition
            lines = self.read(kind, out, ind, depth + 1, spec)
        else:
            raise _Unsupported(f"schema node {t!r}")
        return self.logical(t, kind, out, ind, lines)

    def read_named(self, t: str, out: str, ind: str, depth: int, spec: Spec | None) -> list[str]:
        """:meth:`read` of a type given by name: a primitive inline, else the named type it refers to."""
        if t == "null":
            return [f"{ind}{out} = None"]
        if t == "boolean":
            return [f"{ind}{out} = b[p]", f"{ind}p += 1", f"{ind}if {out} > 1:", f"{ind}    raise _Bad('bool')",
                    f"{ind}{out} = {out} == 1"]
        if t in ("int", "long"):
            return self.long(out, ind)
        if t == "float":
            return [f"{ind}{out} = _uf(b, p)[0]", f"{ind}p += 4"]
        if t == "double":
            return [f"{ind}{out} = _ud(b, p)[0]", f"{ind}p += 8"]
        if t == "string":
            return self.sized(out, ind, True)
        if t == "bytes":
            return self.sized(out, ind, False)
        return self.read(self.resolve(t), out, ind, depth + 1, spec)

    def logical(self, t: dict[str, Any], kind: Any, out: str, ind: str, lines: list[str]) -> list[str]:
        """``lines`` plus the conversion of ``out`` by its logical type, when ``t`` declares a known one:
        fastavro applies a logical reader to any node that declares a known logical type."""
        lt = t.get("logicalType")
        if lt and isinstance(kind, str):
            fn = LOGICAL_READERS.get(f"{kind}-{lt}")
            if fn is not None:
                f = self.const(fn, "lt")
                s = self.const(t, "ls")
                lines.append(f"{ind}{out} = {f}({out}, {s}, {s})")
        return lines

    def union(self, branches: list[Any], out: str, ind: str, depth: int, spec: Spec | None = None) -> list[str]:
        if not branches:
            raise _Unsupported("empty union")
        x = self.tmp("u")
        lines = [f"{ind}{x} = b[p]", f"{ind}p += 1"]
        for i, branch in enumerate(branches):
            if 2 * i > 0x7F:  # index needs a two-byte varint: leave such unions to fastavro
                raise _Unsupported("union too wide")
            lines.append(f"{ind}{'if' if i == 0 else 'elif'} {x} == {2 * i}:")
            lines += self.read(branch, out, ind + "    ", depth + 1, spec)
        lines += [f"{ind}else:", f"{ind}    raise _Bad('union index')"]
        return lines

    def repeated(self, item: Any, out: str, ind: str, depth: int, *, is_map: bool,
                 spec: Spec | None = None) -> list[str]:
        n, i, v, k = self.tmp("c"), self.tmp("i"), self.tmp("e"), self.tmp("k")
        lines = [f"{ind}{out} = {{}}" if is_map else f"{ind}{out} = []", f"{ind}while True:"]
        ind2, ind3 = ind + "    ", ind + "        "
        lines += self.long(n, ind2)
        lines += [f"{ind2}if {n} == 0:", f"{ind2}    break", f"{ind2}if {n} < 0:", f"{ind2}    {n} = -{n}"]
        lines += self.long(self.tmp("s"), ind2 + "    ")  # block byte size, unused
        lines += [f"{ind2}for {i} in range({n}):"]
        if is_map:
            lines += self.sized(k, ind3, True)
        lines += self.read(item, v, ind3, depth + 1, spec)
        lines.append(f"{ind3}{out}[{k}] = {v}" if is_map else f"{ind3}{out}.append({v})")
        return lines

    def run(self, fields: list[dict[str, Any]], locals_: list[str], ind: str) -> list[str]:
        """A run of ``["null", "float"|"double"]`` fields (any branch order), read three ways: all
        present (one ``struct.unpack_from`` of tags and values, the tags checked at once), all null (one
        bytes comparison), else field by field. Values are exactly those of single unpacks."""
        specs = [_tagged_number(f.get("type")) for f in fields]
        fmt = "<" + "".join("B" + s[0] for s in specs if s is not None)
        size = struct.calcsize(fmt)
        unpack = self.const(struct.Struct(fmt).unpack_from, "run")
        present = self.const(tuple(s[1] for s in specs if s is not None), "tags")
        nulls = self.const(bytes(s[2] for s in specs if s is not None), "nulls")
        t = self.tmp("t")
        k = len(fields)
        lines = [f"{ind}{t} = {unpack}(b, p) if p + {size} <= len(b) else None",
                 f"{ind}if {t} is not None and {t}[::2] == {present}:",
                 f"{ind}    {', '.join(locals_)}, = {t}[1::2]",
                 f"{ind}    p += {size}",
                 f"{ind}elif b[p:p + {k}] == {nulls}:",
                 f"{ind}    {' = '.join(locals_)} = None",
                 f"{ind}    p += {k}",
                 f"{ind}else:"]
        for f, local in zip(fields, locals_, strict=True):
            lines += self.read(f.get("type"), local, ind + "    ", 1)
        return lines

    def record(self, t: dict[str, Any], depth: int, spec: Spec | None = None) -> str:
        """The function reading record ``t``: every field, or with ``spec`` only the fields it names
        (nested specs project deeper), the others skipped."""
        key = (id(t), id(spec) if spec is not None else None)
        if key in self.record_fn:
            return self.record_fn[key]
        fn = f"_r{len(self.record_fn)}"
        self.record_fn[key] = fn
        fields = t.get("fields")
        if not isinstance(fields, list):
            raise _Unsupported("record without fields")
        saved = self._tmp
        self._tmp = 0
        body: list[str] = []
        names: list[tuple[str, str]] = []
        for f in fields:
            if not isinstance(f, dict) or "name" not in f:
                raise _Unsupported("malformed field")
        def wanted(f: dict[str, Any]) -> bool:
            return spec is None or str(f["name"]) in spec

        i = 0
        while i < len(fields):
            j = i
            while j < len(fields) and _tagged_number(fields[j].get("type")) is not None:
                j += 1
            if j - i >= _MIN_RUN:
                run = fields[i:j]
                if any(wanted(f) for f in run):
                    locals_ = [self.tmp("f") for _ in run]
                    body += self.run(run, locals_, "    ")
                    names += [(str(f["name"]), v) for f, v in zip(run, locals_, strict=True) if wanted(f)]
                else:
                    body += self.skip_run(run, "    ")
                i = j
                continue
            f = fields[i]
            if wanted(f):
                local = self.tmp("f")
                sub = spec.get(str(f["name"])) if spec is not None else None
                body += self.read(f.get("type"), local, "    ", depth + 1, sub)
                names.append((str(f["name"]), local))
            else:
                body += self.skip(f.get("type"), "    ", depth + 1)
            i += 1
        display = ", ".join(f"{name!r}: {local}" for name, local in names)
        self.functions.append([f"def {fn}(b, p):", *body, f"    return {{{display}}}, p"])
        self._tmp = saved
        return fn


def compile_reader(parsed_schema: Any, spec: Spec | None = None) -> Reader | None:
    """The compiled reader of a (fastavro-parsed or plain JSON) writer schema; None if unsupported.

    The reader is ``read(body, pos) -> (datum, new_pos)`` and raises on anything unusual (see the
    module docstring: the caller then asks fastavro). With ``spec`` (see :data:`Spec`) records hold
    only the fields it names; every other field is skipped but still checked, so the projected read
    accepts and rejects exactly the bytes the full read does.
    """
    gen = _Gen()
    try:
        gen.collect(parsed_schema)
        lines = gen.read(parsed_schema, "v", "    ", 0, spec)
    except Exception:  # _Unsupported, or a schema shape not foreseen here: fastavro reads it
        return None
    src = "\n\n".join("\n".join(f) for f in gen.functions)
    src += "\n\ndef _read(b, p):\n" + "\n".join(lines) + "\n    return v, p\n"
    ns = dict(gen.ns)
    try:
        exec(compile(src, "<bal-broker avro reader>", "exec"), ns)  # generated from the schema, see docstring
    except Exception:  # SyntaxError, RecursionError, MemoryError...: fastavro reads it
        return None
    reader: Reader = ns["_read"]
    return reader


class CompiledReader:
    """The compiled readers of one writer schema (full, and per projection), each built on its *second* use.

    Why not at once: compiling costs ~20-50 ms for an alert schema, which a stream repays after a few
    dozen alerts; a schema seen only once (a corrupt or one-off container) never pays it. Not
    thread-safe by design: two threads compiling at once both succeed and one result is kept.
    """

    __slots__ = ("_readers", "_schema", "_uses")

    def __init__(self, schema: Any) -> None:
        self._schema = schema
        self._uses: dict[int, int] = {}
        self._readers: dict[int, Reader | None] = {}

    def get(self, spec: Spec | None = None) -> Reader | None:
        """The reader (projected by ``spec``, a long-lived object), or None while it is on its first
        use or cannot be compiled."""
        key = id(spec) if spec is not None else 0
        if key in self._readers:
            return self._readers[key]
        uses = self._uses.get(key, 0) + 1
        self._uses[key] = uses
        if uses >= 2:
            self._readers[key] = compile_reader(self._schema, spec)
            return self._readers[key]
        return None

    def peek(self, spec: Spec | None = None) -> Reader | None:
        """The reader if it is already built (does not count as a use)."""
        return self._readers.get(id(spec) if spec is not None else 0)
