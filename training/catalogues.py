"""Loaders for the real training inputs, in their real formats (SCIENCE.md, "Real catalogues").

* SDSS DR16Q (Lyke+2020) quasar catalogue, FITS binary table in HDU 1: :func:`load_dr16q` ->
  :class:`QuasarCatalogue`. Also reads the smaller DR16Q-like tables used by picca's tests (SDSS
  ``THING_ID, RA, DEC, PLATE, MJD, FIBERID, Z, BI_CIV``; DESI ``TARGETID, TARGET_RA, TARGET_DEC, Z``
  + BAL columns): every column except a position and a redshift is optional.
* BAL labels from a separate CSV (e.g. a visually inspected list in the style of Naddaf+2023):
  :func:`read_label_csv`, merged by :func:`load_dr16q` (``labels_csv=``).
* SDSS spec-lite spectra ``spec-PLATE-MJD-FIBER.fits``: :func:`load_spec_lite`, :func:`spec_lite_path`.
* ZTF light curves from IRSA (CSV from the light-curve API, IPAC tables, or Parquet - flat with the
  API's columns, or the data-release layout with one row per object and list columns):
  :func:`load_ztf_lightcurves` -> ``{source_key: {band: LightCurve}}``; :func:`match_lightcurves`
  cross-matches sources to the catalogue by position.

Labels: 1 = BAL, 0 = non-BAL, -1 = unknown. DR16Q writes -1 (and some tables NaN) in its BAL
columns where no measurement was made; those rows must stay unknown rather than become non-BALs,
or the 10-20% minority class (SCIENCE.md) would be diluted with unmeasured BALs.
"""

from __future__ import annotations

import csv
import io
import itertools
import math
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.alert import LightCurve
from broker_plugin.photometry.lightcurve import DUPLICATE_TOL_DAYS, MAG_PER_RELFLUX, NJY_ZEROPOINT

from .spectra import Spectrum

# =============================================================================== DR16Q catalogue

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


def sdss_name(ra: float, dec: float) -> str:
    """SDSS designation ``hhmmss.ss+ddmmss.s`` of a J2000 position (truncated, not rounded, as SDSS does)."""
    cs = math.floor((ra % 360.0) / 15.0 * 3600.0 * 100.0 + 1e-6)  # centiseconds of time
    hh, rem = divmod(cs, 360000)
    mm, rem = divmod(rem, 6000)
    sign = "-" if dec < 0 else "+"
    ds = math.floor(abs(dec) * 3600.0 * 10.0 + 1e-6)  # deciseconds of arc
    dd, drem = divmod(ds, 36000)
    dm, drem = divmod(drem, 600)
    return f"{hh:02d}{mm:02d}{rem // 100:02d}.{rem % 100:02d}{sign}{dd:02d}{dm:02d}{drem // 10:02d}.{drem % 10:d}"


def normalise_name(name: Any) -> str:
    """Canonical form of an SDSS designation for matching: no 'SDSS', no 'J', no spaces, upper case."""
    s = name.decode() if isinstance(name, bytes) else str(name)
    s = s.strip().upper().replace(" ", "")
    if s.startswith("SDSS"):
        s = s[4:]
    return s.removeprefix("J")


def _first(names: Iterable[str], available: Mapping[str, str]) -> str | None:
    """The actual column name of the first alias present (case-insensitive)."""
    for n in names:
        if n.upper() in available:
            return available[n.upper()]
    return None


def _label_from_values(values: np.ndarray, threshold: float, strictly_greater: bool) -> np.ndarray:
    """1/0/-1 from a numeric column: NaN or negative -> -1 (DR16Q's 'not measured'), else the threshold."""
    v = np.asarray(values, dtype=np.float64)
    lab = np.full(v.shape, -1, dtype=np.int8)
    with np.errstate(invalid="ignore"):
        known = np.isfinite(v) & (v >= 0)
        pos = (v > threshold) if strictly_greater else (v >= threshold)
    lab[known] = np.where(pos[known], 1, 0)
    return lab


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
        data = table.data
        cols = {c.upper(): c for c in table.columns.names}
        n = len(data)

        def col(aliases: Iterable[str] | str, dtype: Any, fill: Any) -> np.ndarray:
            name = _first((aliases,) if isinstance(aliases, str) else aliases, cols)
            if name is None:
                return np.full(n, fill, dtype=dtype)
            return np.asarray(data[name]).astype(dtype)

        def multi(name: str, width: int = 5) -> np.ndarray:
            actual = _first((name,), cols)
            if actual is None:
                return np.full((n, width), np.nan)
            arr = np.asarray(data[actual], dtype=np.float64).reshape(n, -1)
            out = np.full((n, width), np.nan)
            out[:, : min(width, arr.shape[1])] = arr[:, :width]
            out[out < 0] = np.nan  # DR16Q pads unused trough slots with -1
            return out

        ra_name, dec_name, z_name = _first(_RA_COLS, cols), _first(_DEC_COLS, cols), _first(_Z_COLS, cols)
        if ra_name is None or dec_name is None or z_name is None:
            raise ValueError(f"{path}: needs RA, DEC and Z columns (found {sorted(cols.values())})")
        ra = np.asarray(data[ra_name], dtype=np.float64)
        dec = np.asarray(data[dec_name], dtype=np.float64)
        z = np.asarray(data[z_name], dtype=np.float64)
        if "SDSS_NAME" in cols:
            name = np.array([normalise_name(s) for s in data[cols["SDSS_NAME"]]], dtype=str)
        else:
            name = np.array([sdss_name(r, d) for r, d in zip(ra, dec, strict=True)], dtype=str)
        cat = QuasarCatalogue(
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
        if labels_csv is None:
            if label_column is not None:
                actual = _first((label_column,), cols)
                if actual is None:
                    raise ValueError(f"{path}: label column {label_column!r} not found")
                values = np.asarray(data[actual]).astype(np.float64)
                is_index = actual.upper().startswith(("BI_", "AI_"))
                thr = label_threshold if label_threshold is not None else (0.0 if is_index else 0.5)
                cat.label = _label_from_values(values, thr, strictly_greater=is_index or label_threshold is not None)
                cat.label_source = actual
            else:
                cat.label = _label_from_values(cat.bi_civ, 0.0, strictly_greater=True)
                cat.label_source = "BI_CIV"

    with np.errstate(invalid="ignore"):
        keep = np.isfinite(cat.z)
        if z_min is not None:
            keep &= cat.z >= z_min
        if z_max is not None:
            keep &= cat.z <= z_max
    cat = cat.subset(keep)
    cat.meta["z_range"] = (z_min, z_max)
    if labels_csv is not None:
        labels = read_label_csv(labels_csv)
        cat.label = labels.labels_for(cat)
        cat.label_source = f"csv:{Path(labels_csv).name}:{labels.label_column}"
    return cat


# ================================================================================= label CSV

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

    def labels_for(self, cat: QuasarCatalogue) -> np.ndarray:
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
    name_col = _first(LABEL_NAME_COLS, header)
    plate_col, mjd_col = _first(LABEL_PLATE_COLS, header), _first(LABEL_MJD_COLS, header)
    fiber_col = _first(LABEL_FIBER_COLS, header)
    has_spec = plate_col is not None and mjd_col is not None and fiber_col is not None
    if name_col is None and not has_spec:
        raise ValueError(f"{path}: needs a name column ({', '.join(LABEL_NAME_COLS)}) or PLATE, MJD, FIBERID")
    lab_col = _first((label_column,), header) if label_column else _first(LABEL_FLAG_COLS, header)
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


# ============================================================================ spec-lite spectra


def spec_lite_name(plate: int, mjd: int, fiber: int) -> str:
    """``spec-PPPP-MMMMM-FFFF.fits``, the SDSS spec-lite file name."""
    return f"spec-{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}.fits"


def spec_lite_path(directory: str | Path, plate: int, mjd: int, fiber: int) -> Path:
    """Path of a spec-lite file under ``directory``, flat (``dir/spec-...``) or nested by plate
    (``dir/PPPP/spec-...`` as on the SDSS SAS, or ``dir/P/spec-...``); ``.gz`` accepted.

    Returns the first that exists, else the flat path (so the caller's "missing" message names it).
    """
    d = Path(directory)
    name = spec_lite_name(plate, mjd, fiber)
    for sub in ("", f"{int(plate):04d}", str(int(plate))):
        for suffix in ("", ".gz"):
            p = (d / sub / name) if sub else (d / name)
            p = p.with_name(p.name + suffix)
            if p.is_file():
                return p
    return d / name


def load_spec_lite(path: str | Path) -> Spectrum:
    """Read an SDSS spec-lite file: the ``COADD`` table (HDU 1) -> :class:`~training.spectra.Spectrum`.

    ``flux`` in 1e-17 erg/s/cm2/A, ``loglam`` log10(A, vacuum, observed), ``ivar``; ``ivar`` is set to
    0 where ``and_mask != 0`` (SCIENCE.md) and where flux or ivar is not finite. A missing
    ``and_mask`` column means no mask. ``meta`` gets PLATEID/MJD/FIBERID from the primary header and
    Z from the ``SPALL``/``SPZBEST`` HDU when present.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        try:
            coadd = hdul["COADD"]
        except KeyError:
            coadd = hdul[1]
        data = coadd.data
        cols = {c.lower(): c for c in coadd.columns.names}
        for need in ("loglam", "flux", "ivar"):
            if need not in cols:
                raise ValueError(f"{path}: COADD table has no '{need}' column")
        loglam = np.asarray(data[cols["loglam"]], dtype=np.float64)
        flux = np.asarray(data[cols["flux"]], dtype=np.float64)
        ivar = np.asarray(data[cols["ivar"]], dtype=np.float64)
        and_mask = (np.asarray(data[cols["and_mask"]]).astype(np.int64) if "and_mask" in cols
                    else np.zeros(loglam.size, dtype=np.int64))
        meta: dict[str, Any] = {"path": str(path)}
        hdr = hdul[0].header
        for key, out in (("PLATEID", "plate"), ("PLATE", "plate"), ("MJD", "mjd"), ("FIBERID", "fiberid")):
            if key in hdr and out not in meta:
                meta[out] = int(hdr[key])
        for ext in ("SPALL", "SPZBEST"):
            if ext in hdul and "Z" in (hdul[ext].columns.names or []):
                meta["z_pipe"] = float(hdul[ext].data["Z"][0])
                break
    with np.errstate(invalid="ignore"):
        bad = (and_mask != 0) | ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
    ivar = np.where(bad, 0.0, ivar)
    return Spectrum(loglam=loglam, flux=flux, ivar=ivar, and_mask=and_mask, meta=meta)


# ============================================================================== ZTF light curves

#: ZTF filter names in the IRSA tables (filtercode), filter ids (filterid/fid) -> band.
ZTF_FILTERCODES = {"zg": "g", "zr": "r", "zi": "i", "g": "g", "r": "r", "i": "i"}
ZTF_FILTERIDS = {1: "g", 2: "r", 3: "i"}
#: Columns that, when present, name the source each row belongs to (else oids are grouped by position).
SOURCE_KEY_COLS = ("source_id", "source", "target", "target_name", "name", "sdss_name", "cntr_u", "cntr_01")
#: oids closer than this (arcsec) are the same source when grouping by position.
OID_GROUP_RADIUS_ARCSEC = 1.5
#: Magnitudes outside this range are not photometry (placeholders such as -99).
_MAG_RANGE = (5.0, 35.0)
_JD_TO_MJD = 2400000.5


class LightCurveSet(dict):
    """``{source_key: {band: LightCurve}}`` plus ``positions: {source_key: (ra, dec)}`` (degrees) and
    ``oids: {source_key: [oid, ...]}`` (the IRSA object ids merged into each source)."""

    def __init__(self) -> None:
        super().__init__()
        self.positions: dict[Hashable, tuple[float, float]] = {}
        self.oids: dict[Hashable, list[int]] = {}


def _lc_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise FileNotFoundError(f"no light-curve file or directory at {path}")
    pats = ("*.csv", "*.csv.gz", "*.tbl", "*.parquet", "*.pq", "*.parq")
    files = sorted({p for pat in pats for p in path.rglob(pat) if p.is_file()})
    if not files:
        raise FileNotFoundError(f"{path}: no .csv, .tbl or .parquet light-curve files")
    return files


def _read_table(path: Path) -> Any:
    """A pyarrow Table from one CSV / IPAC / Parquet file, column names lower-cased."""
    import pyarrow as pa

    name = path.name.lower()
    if name.endswith((".parquet", ".pq", ".parq")):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
    elif name.endswith(".tbl"):
        from astropy.table import Table

        t = Table.read(path, format="ascii.ipac")
        table = pa.table({c: np.asarray(t[c]) for c in t.colnames})
    else:
        import pyarrow.csv as pcsv

        table = pcsv.read_csv(path, parse_options=pcsv.ParseOptions(), read_options=pcsv.ReadOptions())
    return table.rename_columns([c.strip().lower() for c in table.column_names])


def _read_parquet_dir(base: Path, files: list[Path]) -> Any:
    """Parquet files under a directory as one table (hive partition columns such as ``Npix=..``
    included)."""
    import pyarrow.dataset as ds

    dataset = ds.dataset([str(f) for f in files], format="parquet", partitioning="hive", partition_base_dir=str(base))
    table = dataset.to_table()
    return table.rename_columns([c.strip().lower() for c in table.column_names])


def _np(table: Any, name: str, dtype: Any = np.float64) -> np.ndarray:
    col = table.column(name)
    if dtype is str:
        return np.asarray(col.cast("string").to_pylist(), dtype=object)
    return np.asarray(col.to_numpy(zero_copy_only=False), dtype=dtype)


def _long_columns(table: Any) -> dict[str, np.ndarray]:
    """One row per epoch: oid, t (MJD), mag, magerr, catflags, band, ra, dec and optional src.

    Accepts the IRSA API layout (``oid, mjd|hjd, mag, magerr, catflags, filtercode, ra, dec``) and
    the data-release Parquet layout (``objectid, filterid, objra, objdec`` per object with list
    columns ``hmjd, mag, magerr, catflags``), which is exploded here.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    names = set(table.column_names)
    time_col = next((c for c in ("mjd", "hmjd", "hjd", "jd") if c in names), None)
    if time_col is None or "mag" not in names or "magerr" not in names:
        raise ValueError(f"light-curve table needs mjd/hmjd/hjd, mag, magerr columns; has {sorted(names)}")
    if pa.types.is_list(table.schema.field(time_col).type) or pa.types.is_large_list(table.schema.field(time_col).type):
        parent = pc.list_parent_indices(table.column(time_col)).to_numpy()
        exploded: dict[str, Any] = {}
        for name in table.column_names:
            col = table.column(name)
            if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
                exploded[name] = pc.list_flatten(col)
            else:
                exploded[name] = pc.take(col, pa.array(parent))
        table = pa.table(exploded)
        names = set(table.column_names)

    n = table.num_rows
    t = _np(table, time_col)
    if time_col in ("hjd", "jd") and np.nanmedian(t) > _JD_TO_MJD:
        t = t - _JD_TO_MJD
    oid_col = next((c for c in ("oid", "objectid", "objid") if c in names), None)
    oid = _np(table, oid_col, np.int64) if oid_col else np.full(n, -1, dtype=np.int64)
    if "filtercode" in names:
        band = np.array([ZTF_FILTERCODES.get(str(b).strip().lower(), "") for b in _np(table, "filtercode", str)],
                        dtype=object)
    elif "filterid" in names or "fid" in names:
        fid = _np(table, "filterid" if "filterid" in names else "fid", np.int64)
        band = np.array([ZTF_FILTERIDS.get(int(f), "") for f in fid], dtype=object)
    elif "band" in names:
        band = np.array([ZTF_FILTERCODES.get(str(b).strip().lower(), "") for b in _np(table, "band", str)],
                        dtype=object)
    else:
        raise ValueError("light-curve table needs a filtercode, filterid/fid or band column")
    ra_col = next((c for c in ("ra", "objra") if c in names), None)
    dec_col = next((c for c in ("dec", "objdec") if c in names), None)
    if ra_col is None or dec_col is None:
        raise ValueError("light-curve table needs ra/dec (or objra/objdec) columns")
    out = {
        "oid": oid, "t": t, "mag": _np(table, "mag"), "magerr": _np(table, "magerr"),
        "catflags": _np(table, "catflags") if "catflags" in names else np.zeros(n),
        "band": band, "ra": _np(table, ra_col), "dec": _np(table, dec_col),
    }
    src_col = next((c for c in SOURCE_KEY_COLS if c in names), None)
    if src_col is not None:
        out["src"] = np.array([str(s).strip() for s in _np(table, src_col, str)], dtype=object)
    return out


def _mean_positions(group: np.ndarray, ra: np.ndarray, dec: np.ndarray, n_groups: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean position of each group of rows on the sphere (unit-vector mean: safe across RA = 0/360)."""
    r, d = np.radians(ra), np.radians(dec)
    x = np.bincount(group, weights=np.cos(d) * np.cos(r), minlength=n_groups)
    y = np.bincount(group, weights=np.cos(d) * np.sin(r), minlength=n_groups)
    z = np.bincount(group, weights=np.sin(d), minlength=n_groups)
    norm = np.sqrt(x * x + y * y + z * z)
    norm[norm == 0] = 1.0
    return np.degrees(np.arctan2(y, x)) % 360.0, np.degrees(np.arcsin(np.clip(z / norm, -1.0, 1.0)))


def _group_oids_by_position(oids: np.ndarray, ra: np.ndarray, dec: np.ndarray, radius_arcsec: float) -> np.ndarray:
    """Connected components of oids within ``radius_arcsec`` of each other: a group id per oid."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    parent = np.arange(oids.size)

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = int(parent[i])
        return i

    if oids.size > 1:
        c = SkyCoord(ra * u.deg, dec * u.deg)
        i1, i2, _, _ = c.search_around_sky(c, radius_arcsec * u.arcsec)
        for a, b in zip(i1, i2, strict=True):
            ra_, rb_ = find(int(a)), find(int(b))
            if ra_ != rb_:
                parent[max(ra_, rb_)] = min(ra_, rb_)
    return np.array([find(i) for i in range(oids.size)])


def load_ztf_lightcurves(
    path: str | Path,
    *,
    group_radius_arcsec: float = OID_GROUP_RADIUS_ARCSEC,
    bands: Iterable[str] = ("g", "r", "i"),
) -> LightCurveSet:
    """ZTF light curves from IRSA files -> ``{source_key: {band: LightCurve}}`` (a :class:`LightCurveSet`).

    ``path``: one ``.csv``/``.tbl``/``.parquet`` file, or a directory of them (Parquet may be hive
    partitioned). Cleaning, per SCIENCE.md: rows with ``catflags != 0``, non-finite or implausible
    ``mag``/``magerr`` (or ``magerr <= 0``) or time are dropped. IRSA returns several oids per position
    (one per field, CCD quadrant and filter); they are merged per source and band, sorted by time, and
    points closer than ``DUPLICATE_TOL_DAYS`` (the runtime's rule; a repeated exposure) keep the one with
    the smallest error. Time is ``mjd`` when present (else ``hmjd``, else ``hjd``/``jd`` - 2400000.5).

    Sources: a ``source_id``/``source``/``target``/``name``/``cntr_u`` column names them when present;
    otherwise oids whose mean positions lie within ``group_radius_arcsec`` are one source, keyed by the
    smallest oid (as a string). ``LightCurve.kind`` is ``"dc"``: IRSA magnitudes are PSF-fit
    magnitudes of the whole source. Flux in nJy: ``10^(-0.4 (mag - 31.4))``, error
    ``flux * magerr * ln10 / 2.5``. Calibration offsets between fields (~0.01-0.05 mag) are not removed.
    """
    p = Path(path)
    files = _lc_files(p)
    parts: list[dict[str, np.ndarray]] = []
    parquet = [f for f in files if f.suffix.lower() in (".parquet", ".pq", ".parq")]
    if p.is_dir() and parquet:
        parts.append(_long_columns(_read_parquet_dir(p, parquet)))
        files = [f for f in files if f not in parquet]
    parts.extend(_long_columns(_read_table(f)) for f in files)
    keys = set.intersection(*(set(d) for d in parts)) if parts else set()
    cols = {k: np.concatenate([d[k] for d in parts]) for k in keys}
    out = LightCurveSet()
    if not cols or cols["t"].size == 0:
        return out

    wanted = set(bands)
    with np.errstate(invalid="ignore"):
        ok = (
            np.isfinite(cols["t"]) & np.isfinite(cols["mag"]) & np.isfinite(cols["magerr"]) & (cols["magerr"] > 0)
            & (cols["mag"] > _MAG_RANGE[0]) & (cols["mag"] < _MAG_RANGE[1]) & (cols["catflags"] == 0)
            & np.isfinite(cols["ra"]) & np.isfinite(cols["dec"])
            & np.isin(cols["band"].astype(str), sorted(wanted))
        )
    # positions and source groups use every row (flagged epochs still locate the object)
    oid = cols["oid"]
    if "src" in cols:
        src_all = cols["src"]
    else:
        uoids, inv = np.unique(oid, return_inverse=True)
        ora, odec = _mean_positions(inv, cols["ra"], cols["dec"], uoids.size)
        group = _group_oids_by_position(uoids, ora, odec, group_radius_arcsec)
        _, gidx = np.unique(group, return_inverse=True)
        min_oid = np.full(gidx.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
        np.minimum.at(min_oid, gidx, uoids)
        src_all = min_oid[gidx].astype(str)[inv]
    skeys, sinv = np.unique(src_all.astype(str), return_inverse=True)
    sra, sdec = _mean_positions(sinv, cols["ra"], cols["dec"], skeys.size)
    pairs = np.unique(np.stack([sinv, oid]), axis=1)
    for j, key in enumerate(skeys.tolist()):
        out.positions[key] = (float(sra[j]), float(sdec[j]))
        out.oids[key] = sorted(int(o) for o in pairs[1][pairs[0] == j])

    bands_u, binv = np.unique(cols["band"].astype(str), return_inverse=True)
    nb = bands_u.size
    ginv = (sinv * nb + binv)[ok]  # one integer per (source, band)
    t, mag, err = cols["t"][ok], cols["mag"][ok], cols["magerr"][ok]
    order = np.lexsort((err, t, ginv))  # by group, then time, then error (best first)
    g_s, t_s = ginv[order], t[order]
    new_group = np.r_[True, g_s[1:] != g_s[:-1]]
    new_epoch = new_group | np.r_[True, np.diff(t_s) > DUPLICATE_TOL_DAYS]
    # within an epoch (a run of near-equal times) keep the smallest error
    epoch_id = np.cumsum(new_epoch) - 1
    e_order = np.lexsort((err[order], epoch_id))
    first = np.r_[True, epoch_id[e_order][1:] != epoch_id[e_order][:-1]]
    keep_idx = order[e_order[first]]
    keep_idx = keep_idx[np.lexsort((t[keep_idx], ginv[keep_idx]))]
    g_k = ginv[keep_idx]
    bounds = np.flatnonzero(np.r_[True, g_k[1:] != g_k[:-1], True])
    for a, b in itertools.pairwise(bounds):
        idx = keep_idx[a:b]
        s_key, b_name = str(skeys[g_k[a] // nb]), str(bands_u[g_k[a] % nb])
        m, e = mag[idx], err[idx]
        flux = 10.0 ** (-0.4 * (m - NJY_ZEROPOINT))
        lc = LightCurve(band=b_name, mjd=t[idx].astype(np.float64), mag=m.astype(np.float64),
                        mag_err=e.astype(np.float64), flux=flux, flux_err=flux * e / MAG_PER_RELFLUX, kind="dc")
        out.setdefault(s_key, {})[b_name] = lc
    for key in list(out.positions):
        out.setdefault(key, {})
    return out


def match_lightcurves(
    catalogue: QuasarCatalogue,
    lc_positions: Mapping[Hashable, tuple[float, float]] | LightCurveSet,
    radius_arcsec: float = 1.5,
) -> dict[Hashable, int]:
    """Cross-match light-curve sources to catalogue rows by position: ``{source_key: catalogue_row}``.

    Each source goes to its nearest catalogue quasar if within ``radius_arcsec``; when several sources
    land on one quasar, only the nearest keeps it (one-to-one). ZTF astrometry is good to ~0.1-0.3",
    and 1.5" is the distance within which the runtime treats a detection as sitting on a
    reference source (``DC_MAX_DISTNR``).
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    positions = lc_positions.positions if isinstance(lc_positions, LightCurveSet) else lc_positions
    keys = list(positions)
    if not keys or len(catalogue) == 0:
        return {}
    ra = np.array([positions[k][0] for k in keys], dtype=np.float64)
    dec = np.array([positions[k][1] for k in keys], dtype=np.float64)
    src = SkyCoord(ra * u.deg, dec * u.deg)
    cat = SkyCoord(catalogue.ra * u.deg, catalogue.dec * u.deg)
    if len(catalogue) == 1:
        sep = src.separation(cat[0]).arcsec
        idx = np.zeros(len(keys), dtype=np.int64)
    else:
        idx, sep2d, _ = src.match_to_catalog_sky(cat)
        sep = sep2d.arcsec
    best: dict[int, tuple[float, Hashable]] = {}
    for k, i, s in zip(keys, idx, sep, strict=True):
        if s <= radius_arcsec and (int(i) not in best or s < best[int(i)][0]):
            best[int(i)] = (float(s), k)
    return {k: i for i, (_, k) in sorted(best.items(), key=lambda kv: str(kv[1][1]))}
