"""SDSS DR16Q (Lyke+2020) quasar catalogue reader: FITS binary table -> :class:`QuasarCatalogue`.

Also reads the smaller DR16Q-like tables used by picca's tests (SDSS ``THING_ID, RA, DEC, PLATE, MJD,
FIBERID, Z, BI_CIV``; DESI ``TARGETID, TARGET_RA, TARGET_DEC, Z`` + BAL columns): every column except a
position and a redshift is optional. Labels: 1 = BAL, 0 = non-BAL, -1 = unknown; DR16Q's -1/NaN
"not measured" values stay unknown so unmeasured BALs do not dilute the minority class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from .label_csv import read_label_csv
from .sdss_names import first_column, normalise_name, sdss_name

#: Default redshift cut: the C IV BAL region is in the SDSS range (SCIENCE.md).
DR16Q_Z_RANGE: tuple[float, float] = (1.67, 3.6)

#: Column aliases, first found wins (DR16Q names first; then picca/DESI test-catalogue names).
_RA_COLS = ("RA", "TARGET_RA", "RA_OBJ")
_DEC_COLS = ("DEC", "TARGET_DEC", "DEC_OBJ")
_Z_COLS = ("Z", "Z_QSO", "ZBEST")
_FIBER_COLS = ("FIBERID", "FIBER")
_ID_COLS = ("THING_ID", "TARGETID", "OBJID")


@dataclass
class QuasarCatalogue:
    """A quasar catalogue as aligned numpy arrays (one entry per quasar).

    Missing optional columns are filled with NaN (floats) or -1 (integers). ``label``: 1 BAL, 0
    non-BAL, -1 unknown; ``label_source`` says where labels came from. ``vmin_civ_2000`` and
    ``vmax_civ_2000`` are (n, 5) (DR16Q's up to five BI troughs; NaN where absent).
    """

    name: np.ndarray  # str, SDSS "hhmmss.ss+ddmmss.s" (generated from RA/Dec when absent)
    ra: np.ndarray
    dec: np.ndarray
    plate: np.ndarray
    mjd: np.ndarray
    fiberid: np.ndarray
    z: np.ndarray
    z_pipe: np.ndarray
    z_vi: np.ndarray
    bal_prob: np.ndarray
    bi_civ: np.ndarray
    err_bi_civ: np.ndarray
    ai_civ: np.ndarray
    nciv_2000: np.ndarray
    vmin_civ_2000: np.ndarray
    vmax_civ_2000: np.ndarray
    object_id: np.ndarray  # THING_ID / TARGETID (-1 when absent)
    label: np.ndarray  # int8
    label_source: str = "BI_CIV"
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.ra.shape[0])

    def subset(self, rows: np.ndarray) -> QuasarCatalogue:
        """The rows selected by a boolean mask or an index array, as a new catalogue."""
        kw = {f.name: getattr(self, f.name) for f in fields(self)}
        for f in fields(self):
            v = kw[f.name]
            if isinstance(v, np.ndarray):
                kw[f.name] = v[rows]
        kw["meta"] = dict(self.meta)
        return QuasarCatalogue(**kw)

    def labelled(self) -> QuasarCatalogue:
        """Only the rows with a known label (0 or 1)."""
        return self.subset(self.label >= 0)

    @property
    def n_bal(self) -> int:
        return int((self.label == 1).sum())

    @property
    def n_nonbal(self) -> int:
        return int((self.label == 0).sum())

    def spec_ids(self) -> list[tuple[int, int, int]]:
        """(plate, mjd, fiberid) per row, the key of a spec-lite file."""
        return [(int(p), int(m), int(f)) for p, m, f in zip(self.plate, self.mjd, self.fiberid, strict=True)]


def _label_from_values(values: np.ndarray, threshold: float, strictly_greater: bool) -> np.ndarray:
    """1/0/-1 from a numeric column: NaN or negative -> -1 (DR16Q's 'not measured'), else the threshold."""
    v = np.asarray(values, dtype=np.float64)
    lab = np.full(v.shape, -1, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(v) & (v >= 0)
        pos = (v > threshold) if strictly_greater else (v >= threshold)
    lab[known] = np.where(pos[known], 1, 0)
    return lab



def _table_reader(data: Any, cols: Mapping[str, str], n: int) -> tuple[Callable[..., np.ndarray],
                                                                        Callable[[str], np.ndarray]]:
    """Column readers over one FITS table: ``col`` (first alias present, else ``fill``) and
    ``multi`` (DR16Q's (n, 5) trough columns, unused -1 slots as NaN)."""

    def col(aliases: Iterable[str] | str, dtype: Any, fill: Any) -> np.ndarray:
        name = first_column((aliases,) if isinstance(aliases, str) else aliases, cols)
        if name is None:
            return np.full(n, fill, dtype=dtype)
        return np.asarray(data[name]).astype(dtype)

    def multi(name: str, width: int = 5) -> np.ndarray:
        actual = first_column((name,), cols)
        if actual is None:
            return np.full((n, width), np.nan)
        arr = np.asarray(data[actual], dtype=np.float64).reshape(n, -1)
        out = np.full((n, width), np.nan)
        out[:, : min(width, arr.shape[1])] = arr[:, :width]
        out[out < 0] = np.nan  # DR16Q pads unused trough slots with -1
        return out

    return col, multi


def _catalogue_from_table(path: str | Path, data: Any, cols: Mapping[str, str]) -> QuasarCatalogue:
    """Every row of the table as a :class:`QuasarCatalogue` with all labels unknown (-1)."""
    n = len(data)
    col, multi = _table_reader(data, cols, n)
    ra_name, dec_name = first_column(_RA_COLS, cols), first_column(_DEC_COLS, cols)
    z_name = first_column(_Z_COLS, cols)
    if ra_name is None or dec_name is None or z_name is None:
        raise ValueError(f"{path}: needs RA, DEC and Z columns (found {sorted(cols.values())})")
    ra = np.asarray(data[ra_name], dtype=np.float64)
    dec = np.asarray(data[dec_name], dtype=np.float64)
    z = np.asarray(data[z_name], dtype=np.float64)
    if "SDSS_NAME" in cols:
        name = np.array([normalise_name(s) for s in data[cols["SDSS_NAME"]]], dtype=str)
    else:
        name = np.array([sdss_name(r, d) for r, d in zip(ra, dec, strict=True)], dtype=str)
    return QuasarCatalogue(
        name=name, ra=ra, dec=dec,
        plate=col("PLATE", np.int64, -1), mjd=col("MJD", np.int64, -1), fiberid=col(_FIBER_COLS, np.int64, -1),
        z=z, z_pipe=col("Z_PIPE", np.float64, np.nan), z_vi=col("Z_VI", np.float64, np.nan),
        bal_prob=col("BAL_PROB", np.float64, np.nan), bi_civ=col("BI_CIV", np.float64, np.nan),
        err_bi_civ=col("ERR_BI_CIV", np.float64, np.nan), ai_civ=col("AI_CIV", np.float64, np.nan),
        nciv_2000=col("NCIV_2000", np.int64, -1),
        vmin_civ_2000=multi("VMIN_CIV_2000"), vmax_civ_2000=multi("VMAX_CIV_2000"),
        object_id=col(_ID_COLS, np.int64, -1),
        label=np.full(n, -1, dtype=np.int8),
        meta={"path": str(path), "n_rows_file": n, "columns": sorted(cols.values())},
    )


def _label_from_table(cat: QuasarCatalogue, path: str | Path, data: Any, cols: Mapping[str, str],
                      label_column: str | None, label_threshold: float | None) -> None:
    """Set ``cat.label``/``label_source`` from a table column (``label_column``) or, by default, BI_CIV."""
    if label_column is None:
        cat.label = _label_from_values(cat.bi_civ, 0.0, strictly_greater=True)
        cat.label_source = "BI_CIV"
        return
    actual = first_column((label_column,), cols)
    if actual is None:
        raise ValueError(f"{path}: label column {label_column!r} not found")
    values = np.asarray(data[actual]).astype(np.float64)
    is_index = actual.upper().startswith(("BI_", "AI_"))
    thr = label_threshold if label_threshold is not None else (0.0 if is_index else 0.5)
    cat.label = _label_from_values(values, thr, strictly_greater=is_index or label_threshold is not None)
    cat.label_source = actual


def _redshift_cut(cat: QuasarCatalogue, z_min: float | None, z_max: float | None) -> QuasarCatalogue:
    """Rows with a finite Z inside ``[z_min, z_max]`` (either bound may be None)."""
    with np.errstate(invalid="ignore"):
        keep = np.isfinite(cat.z)
        if z_min is not None:
            keep &= cat.z >= z_min
        if z_max is not None:
            keep &= cat.z <= z_max
    cat = cat.subset(keep)
    cat.meta["z_range"] = (z_min, z_max)
    return cat


def load_dr16q(
    path: str | Path,
    *,
    z_min: float | None = DR16Q_Z_RANGE[0],
    z_max: float | None = DR16Q_Z_RANGE[1],
    label_column: str | None = None,
    labels_csv: str | Path | None = None,
    label_threshold: float | None = None,
    hdu: int | str = 1,
) -> QuasarCatalogue:
    """Read the DR16Q catalogue (or a DR16Q-like FITS table) and attach BAL labels.

    Rows outside ``z_min <= Z <= z_max`` (either bound may be None) or with no finite Z are dropped.
    Labels, in order of precedence:

    * ``labels_csv``: a separate label list (:func:`read_label_csv`); matched rows take its label,
      unmatched rows are -1. Use it for visually inspected labels; it overrides the catalogue.
    * ``label_column``: a column of the FITS table. NaN or negative -> -1. Otherwise BAL when the
      value is > ``label_threshold`` if one is given; by default > 0 for ``BI_*``/``AI_*`` columns
      (balnicity/absorption index) and >= 0.5 for any other (0/1 flags, booleans, ``BAL_PROB``).
    * default: ``BI_CIV > 0`` is BAL, ``BI_CIV == 0`` non-BAL, NaN/-1/missing unknown
      (Weymann+1991's definition, the one DR16Q's BI_CIV implements).

    Only ``RA``/``DEC`` (or ``TARGET_RA``/``TARGET_DEC``) and ``Z`` are required. The file is memory
    mapped and only the needed columns are read, so the full 750k-row DR16Q is fine.
    """
    from astropy.io import fits

    with fits.open(path, memmap=True) as hdul:
        table = hdul[hdu]
        if not isinstance(table, fits.BinTableHDU):
            raise ValueError(f"{path}: HDU {hdu} is not a binary table")
        cols = {c.upper(): c for c in table.columns.names}
        cat = _catalogue_from_table(path, table.data, cols)
        if labels_csv is None:
            _label_from_table(cat, path, table.data, cols, label_column, label_threshold)

    cat = _redshift_cut(cat, z_min, z_max)
    if labels_csv is not None:
        labels = read_label_csv(labels_csv)
        cat.label = labels.labels_for(cat)
        cat.label_source = f"csv:{Path(labels_csv).name}:{labels.label_column}"
    return cat
