"""The skipper generator of :mod:`broker_plugin.decode.fastread`: code that moves past unprojected values.

Why a module of its own: a projected read must skip every field it does not keep while rejecting
exactly the bytes a full read rejects, which is a compiler of its own (union and enum indices,
lengths, UTF-8, logical types, runs of nullable numbers); :class:`_SkipGen` holds it, on the shared
plumbing of :mod:`~broker_plugin.decode.fastread_gen`, and the reader generator
(:class:`broker_plugin.decode.fastread._Gen`) extends it.
"""

from __future__ import annotations

import struct
from typing import Any

from fastavro.read import LOGICAL_READERS

from broker_plugin.decode.fastread_gen import _MAX_DEPTH, _MIN_RUN, _GenBase, _tagged_number, _Unsupported


class _SkipGen(_GenBase):
    """The skipping (projection) half of the generator; :meth:`read` and :meth:`record` come from the subclass."""

    def read(self, t: Any, out: str, ind: str, depth: int, spec: Any = None) -> list[str]:
        raise NotImplementedError  # pragma: no cover - provided by broker_plugin.decode.fastread._Gen

    # -- skipping (projection) -----------------------------------------------------------------
    def skip(self, t: Any, ind: str, depth: int) -> list[str]:
        """Lines moving ``p`` past one value of type ``t`` while checking it as strictly as reading
        would (union and enum indices, lengths, UTF-8, logical types), so that a projected read
        rejects exactly the bytes a full read rejects."""
        if depth > _MAX_DEPTH:
            raise _Unsupported("schema nested too deeply")
        if isinstance(t, str):
            return self.skip_named(t, ind, depth)
        if isinstance(t, list):
            return self.skip_union(t, ind, depth)
        if not isinstance(t, dict):
            raise _Unsupported(f"schema node {t!r}")
        kind = t.get("type")
        lt = t.get("logicalType")
        if lt and isinstance(kind, str) and LOGICAL_READERS.get(f"{kind}-{lt}") is not None:
            return self.read(t, self.tmp("x"), ind, depth)  # converted (and discarded): it may raise
        if kind in ("record", "error"):
            return [f"{ind}p = {self.record_skipper(t, depth + 1)}(b, p)"]
        if kind == "enum":
            n = self.tmp("x")
            count = len(t.get("symbols", ()))
            return [*self.long(n, ind), f"{ind}if {n} < 0 or {n} >= {count}:", f"{ind}    raise _Bad('enum')"]
        if kind == "fixed":
            size = t.get("size")
            if not isinstance(size, int) or isinstance(size, bool) or size < 0:
                raise _Unsupported("fixed without a size")
            return [f"{ind}p += {size}"]
        if kind in ("array", "map"):
            return self.skip_repeated(t, kind, ind, depth)
        if isinstance(kind, (str, list, dict)):
            return self.skip(kind, ind, depth + 1)
        raise _Unsupported(f"schema node {t!r}")

    def skip_named(self, t: str, ind: str, depth: int) -> list[str]:
        """:meth:`skip` of a type given by name: a primitive inline, else the named type it refers to."""
        if t == "null":
            return []
        if t == "boolean":
            return [f"{ind}if b[p] > 1:", f"{ind}    raise _Bad('bool')", f"{ind}p += 1"]
        if t in ("int", "long"):
            return [f"{ind}p = p + 1 if b[p] < 0x80 else _vend(b, p).end()"]
        if t == "float":
            return [f"{ind}p += 4"]
        if t == "double":
            return [f"{ind}p += 8"]
        if t in ("string", "bytes"):
            n = self.tmp("n")
            lines = self.long(n, ind)
            lines += [f"{ind}if {n} < 0 or p + {n} > len(b):", f"{ind}    raise _Bad('bad length')"]
            if t == "string":
                lines.append(f"{ind}b[p:p + {n}].decode()")
            return [*lines, f"{ind}p += {n}"]
        return self.skip(self.resolve(t), ind, depth + 1)

    def skip_union(self, t: list[Any], ind: str, depth: int) -> list[str]:
        """:meth:`skip` of a union: the branch index is checked, then that branch is skipped."""
        if not t:
            raise _Unsupported("empty union")
        x = self.tmp("u")
        lines = [f"{ind}{x} = b[p]", f"{ind}p += 1"]
        for i, branch in enumerate(t):
            if 2 * i > 0x7F:
                raise _Unsupported("union too wide")
            body = self.skip(branch, ind + "    ", depth + 1) or [f"{ind}    pass"]
            lines += [f"{ind}{'if' if i == 0 else 'elif'} {x} == {2 * i}:", *body]
        return [*lines, f"{ind}else:", f"{ind}    raise _Bad('union index')"]

    def skip_repeated(self, t: dict[str, Any], kind: str, ind: str, depth: int) -> list[str]:
        """:meth:`skip` of an array or map: every block, every item (and map key) checked and skipped."""
        n, i = self.tmp("c"), self.tmp("i")
        ind2, ind3 = ind + "    ", ind + "        "
        lines = [f"{ind}while True:", *self.long(n, ind2),
                 f"{ind2}if {n} == 0:", f"{ind2}    break", f"{ind2}if {n} < 0:", f"{ind2}    {n} = -{n}",
                 *self.long(self.tmp("s"), ind2 + "    "), f"{ind2}for {i} in range({n}):"]
        if kind == "map":
            lines += self.skip("string", ind3, depth + 1)
        body = self.skip(t.get("items" if kind == "array" else "values"), ind3, depth + 1)
        return lines + (body or [f"{ind3}pass"])

    def record_skipper(self, t: dict[str, Any], depth: int) -> str:
        key = ("skip", id(t))
        if key in self.record_fn:
            return self.record_fn[key]
        fn = f"_s{len(self.record_fn)}"
        self.record_fn[key] = fn
        fields = t.get("fields")
        if not isinstance(fields, list):
            raise _Unsupported("record without fields")
        saved = self._tmp
        self._tmp = 0
        body: list[str] = []
        i = 0
        while i < len(fields):
            j = i
            while j < len(fields) and _tagged_number(fields[j].get("type")) is not None:
                j += 1
            if j - i >= _MIN_RUN:
                body += self.skip_run(fields[i:j], "    ")
                i = j
                continue
            body += self.skip(fields[i].get("type"), "    ", depth + 1)
            i += 1
        self.functions.append([f"def {fn}(b, p):", *body, "    return p"])
        self._tmp = saved
        return fn

    def skip_run(self, fields: list[dict[str, Any]], ind: str) -> list[str]:
        """Skip a run of nullable float/double fields: all present (the tags read in one unpack that
        skips the values), all null (one comparison), else field by field."""
        specs = [_tagged_number(f.get("type")) for f in fields]
        fmt = "<" + "".join("B" + "x" * (4 if s[0] == "f" else 8) for s in specs if s is not None)
        size = struct.calcsize(fmt)
        unpack = self.const(struct.Struct(fmt).unpack_from, "srun")
        present = self.const(tuple(s[1] for s in specs if s is not None), "tags")
        nulls = self.const(bytes(s[2] for s in specs if s is not None), "nulls")
        k = len(fields)
        lines = [f"{ind}if p + {size} <= len(b) and {unpack}(b, p) == {present}:", f"{ind}    p += {size}",
                 f"{ind}elif b[p:p + {k}] == {nulls}:", f"{ind}    p += {k}", f"{ind}else:"]
        for f in fields:
            lines += self.skip(f.get("type"), ind + "    ", 1) or [f"{ind}    pass"]
        return lines
