"""BAL labels from a separate CSV (e.g. a visually inspected list in the style of Naddaf+2023).

Kept apart from the catalogue so a hand-made list can override the catalogue's own BI_CIV labels
(:func:`training.dr16q.load_dr16q` ``labels_csv=``).
"""

from __future__ import annotations

import csv
import io
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .sdss_names import first_column, normalise_name


class CatalogueRows(Protocol):
    """What :meth:`LabelTable.labels_for` reads of a catalogue (:class:`training.dr16q.QuasarCatalogue`);
    a protocol, so this module need not import the catalogue reader that imports it."""

    name: np.ndarray
    plate: np.ndarray
    mjd: np.ndarray
    fiberid: np.ndarray

    def __len__(self) -> int: ...

#: Accepted (case-insensitive) column names of a label CSV.
LABEL_NAME_COLS = ("SDSS_NAME", "NAME", "SDSS", "OBJECT", "OBJNAME", "DESIGNATION", "SDSSJ")
LABEL_PLATE_COLS = ("PLATE",)
LABEL_MJD_COLS = ("MJD",)
LABEL_FIBER_COLS = ("FIBERID", "FIBER", "FIBER_ID")
LABEL_FLAG_COLS = ("BAL", "BAL_FLAG", "IS_BAL", "BAL_VI", "BAL_FLAG_VI", "VI_BAL", "BALFLAG", "LABEL",
                   "BI_CIV", "BI", "BAL_PROB")
_TRUE = {"1", "T", "TRUE", "Y", "YES", "BAL", "HIBAL", "LOBAL", "FELOBAL"}
_FALSE = {"0", "F", "FALSE", "N", "NO", "NONBAL", "NON-BAL", "NON_BAL", "NOTBAL", "QSO"}


@dataclass
class LabelTable:
    """BAL labels keyed by normalised SDSS name and/or by (plate, mjd, fiberid)."""

    by_name: dict[str, int]
    by_spec: dict[tuple[int, int, int], int]
    label_column: str

    def labels_for(self, cat: CatalogueRows) -> np.ndarray:
        """Label per catalogue row: by (plate, mjd, fiberid) first, then by name; -1 when unmatched."""
        out = np.full(len(cat), -1, dtype=np.int8)
        for i in range(len(cat)):
            key = (int(cat.plate[i]), int(cat.mjd[i]), int(cat.fiberid[i]))
            lab = self.by_spec.get(key) if key[0] >= 0 else None
            if lab is None:
                lab = self.by_name.get(str(cat.name[i]))
            if lab is not None:
                out[i] = lab
        return out


def _parse_label(value: str, column: str) -> int:
    """1/0/-1 from one CSV cell: yes/no words, or a number (>0 BAL for BI, >=0.5 otherwise)."""
    s = value.strip().upper()
    if s in _TRUE:
        return 1
    if s in _FALSE:
        return 0
    try:
        v = float(s)
    except ValueError:
        return -1
    if not math.isfinite(v) or v < 0:
        return -1
    if column.upper().startswith(("BI", "AI")):
        return int(v > 0)
    return int(v >= 0.5)


def read_label_csv(path: str | Path, *, label_column: str | None = None) -> LabelTable:
    """Read a BAL label list (CSV, TSV or ``;``/``|``-separated; ``#`` comment lines skipped).

    Expected columns (names case-insensitive):

    * identification: an SDSS name (``SDSS_NAME``/``NAME``/``OBJECT``/``DESIGNATION``...; ``SDSS J``
      prefixes are ignored) and/or ``PLATE``, ``MJD`` and ``FIBERID`` (or ``FIBER``);
    * the label: ``label_column`` if given, else the first of ``BAL, BAL_FLAG, IS_BAL, BAL_VI,
      BAL_FLAG_VI, VI_BAL, BALFLAG, LABEL, BI_CIV, BI, BAL_PROB``. Cells may be 1/0, true/false,
      yes/no, BAL/nonBAL (and HiBAL/LoBAL/FeLoBAL), a balnicity index (``BI*``: > 0 is BAL) or a
      probability (>= 0.5 is BAL); empty, negative or unparsable cells are unknown.

    A key listed twice with different labels becomes unknown (-1).
    """
    text = Path(path).read_text(encoding="utf-8-sig")
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    if not lines:
        raise ValueError(f"{path}: empty label file")
    try:
        dialect: Any = csv.Sniffer().sniff("\n".join(lines[:20]), delimiters=",\t;|")
    except csv.Error:
        dialect = csv.excel
    reader = csv.DictReader(io.StringIO("\n".join(lines)), dialect=dialect)
    header = {h.strip().upper(): h for h in (reader.fieldnames or [])}
    name_col = first_column(LABEL_NAME_COLS, header)
    plate_col, mjd_col = first_column(LABEL_PLATE_COLS, header), first_column(LABEL_MJD_COLS, header)
    fiber_col = first_column(LABEL_FIBER_COLS, header)
    has_spec = plate_col is not None and mjd_col is not None and fiber_col is not None
    if name_col is None and not has_spec:
        raise ValueError(f"{path}: needs a name column ({', '.join(LABEL_NAME_COLS)}) or PLATE, MJD, FIBERID")
    lab_col = first_column((label_column,), header) if label_column else first_column(LABEL_FLAG_COLS, header)
    if lab_col is None:
        raise ValueError(f"{path}: no label column (tried {label_column or ', '.join(LABEL_FLAG_COLS)})")

    by_name: dict[str, int] = {}
    by_spec: dict[tuple[int, int, int], int] = {}

    def put(d: dict[Any, int], key: Any, lab: int) -> None:
        if key in d and d[key] != lab:
            d[key] = -1
        else:
            d.setdefault(key, lab)

    for row in reader:
        lab = _parse_label(row.get(lab_col) or "", lab_col)
        if lab < 0:
            continue
        if has_spec:
            try:
                key = (int(float(row[plate_col])), int(float(row[mjd_col])), int(float(row[fiber_col])))
            except (TypeError, ValueError):
                key = None
            if key is not None:
                put(by_spec, key, lab)
        if name_col is not None and (row.get(name_col) or "").strip():
            put(by_name, normalise_name(row[name_col]), lab)
    by_name = {k: v for k, v in by_name.items() if v >= 0}
    by_spec = {k: v for k, v in by_spec.items() if v >= 0}
    return LabelTable(by_name=by_name, by_spec=by_spec, label_column=lab_col.strip())
