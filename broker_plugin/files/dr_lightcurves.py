"""ZTF data-release light curves from IRSA: CSV from the light-curve API, IPAC tables, or Parquet
(flat with the API's columns, or the data-release layout with one row per object and list columns).

:func:`load_ztf_lightcurves` -> ``{source_key: {band: LightCurve}}``; :func:`iter_ztf_lightcurve_files`
lists the files under several paths so a caller can read (and show progress) one file at a time.

Why this lives in the runtime (``broker_plugin.files``) and not in ``training``: ``bal-broker history
import`` loads data-release light curves as a runtime command, and training reads the same files to
build its light curves. One reader for both means the history a broker serves and the light curves a
model was trained on are cleaned and merged by the same code; the runtime never imports ``training``
(tests/test_architecture.py), so the reader must sit here and ``training.ztf_lightcurves`` re-exports
it. Cleaning and duplicate rules follow :mod:`broker_plugin.photometry.lightcurve` so training sees
what serving sees. Imports only :mod:`broker_plugin.alert` and :mod:`broker_plugin.photometry`.
"""

from __future__ import annotations

import itertools
from collections.abc import Hashable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.alert import LightCurve
from broker_plugin.photometry.lightcurve import DUPLICATE_TOL_DAYS, MAG_PER_RELFLUX, NJY_ZEROPOINT

__all__ = [
    "OID_GROUP_RADIUS_ARCSEC", "SOURCE_KEY_COLS", "ZTF_FILTERCODES", "ZTF_FILTERIDS",
    "LightCurveSet", "iter_ztf_lightcurve_files", "load_ztf_lightcurves",
]

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


def iter_ztf_lightcurve_files(paths: Sequence[Path]) -> list[Path]:
    """Every light-curve file named by ``paths`` (files, or directories searched recursively for
    ``.csv``/``.csv.gz``/``.tbl``/``.parquet``/``.pq``/``.parq``), deduplicated and sorted.

    For a caller that reads one file at a time (``bal-broker history import`` shows a progress bar
    per file): pass each to :func:`load_ztf_lightcurves`. A file reached twice (named directly and
    under a directory, or by two spellings of one path) is listed once, under its first spelling.
    Raises :class:`FileNotFoundError` for a path that does not exist or a directory with no such files.
    Per-file reading groups oids into sources within each file only; loading a directory at once
    groups across its files (and reads a hive-partitioned Parquet directory as one dataset).
    """
    if isinstance(paths, (str, Path)):  # one path, not a sequence of characters
        paths = [Path(paths)]
    seen: dict[Path, Path] = {}
    for p in paths:
        for f in _lc_files(Path(p)):
            seen.setdefault(f.resolve(), f)
    return sorted(seen.values())


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


def _read_columns(p: Path) -> dict[str, np.ndarray]:
    """Every file under ``p`` as one set of long columns (only the columns every file has)."""
    files = _lc_files(p)
    parts: list[dict[str, np.ndarray]] = []
    parquet = [f for f in files if f.suffix.lower() in (".parquet", ".pq", ".parq")]
    if p.is_dir() and parquet:
        parts.append(_long_columns(_read_parquet_dir(p, parquet)))
        files = [f for f in files if f not in parquet]
    parts.extend(_long_columns(_read_table(f)) for f in files)
    keys = set.intersection(*(set(d) for d in parts)) if parts else set()
    return {k: np.concatenate([d[k] for d in parts]) for k in keys}


def _clean_rows(cols: Mapping[str, np.ndarray], bands: Iterable[str]) -> np.ndarray:
    """Mask of the rows that are photometry (SCIENCE.md cleaning: finite, plausible, unflagged, wanted band)."""
    wanted = set(bands)
    with np.errstate(invalid="ignore"):
        return (
            np.isfinite(cols["t"]) & np.isfinite(cols["mag"]) & np.isfinite(cols["magerr"]) & (cols["magerr"] > 0)
            & (cols["mag"] > _MAG_RANGE[0]) & (cols["mag"] < _MAG_RANGE[1]) & (cols["catflags"] == 0)
            & np.isfinite(cols["ra"]) & np.isfinite(cols["dec"])
            & np.isin(cols["band"].astype(str), sorted(wanted))
        )


def _source_of_rows(cols: Mapping[str, np.ndarray], group_radius_arcsec: float) -> np.ndarray:
    """Source key per row: the ``src`` column when present, else the smallest oid of its position group."""
    if "src" in cols:
        return cols["src"]
    oid = cols["oid"]
    uoids, inv = np.unique(oid, return_inverse=True)
    ora, odec = _mean_positions(inv, cols["ra"], cols["dec"], uoids.size)
    group = _group_oids_by_position(uoids, ora, odec, group_radius_arcsec)
    _, gidx = np.unique(group, return_inverse=True)
    min_oid = np.full(gidx.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(min_oid, gidx, uoids)
    return min_oid[gidx].astype(str)[inv]


def _best_epoch_rows(ginv: np.ndarray, t: np.ndarray, err: np.ndarray) -> np.ndarray:
    """Indices of the kept points, sorted by (group, time): within a run of times closer than
    ``DUPLICATE_TOL_DAYS`` (a repeated exposure) only the smallest error survives."""
    order = np.lexsort((err, t, ginv))  # by group, then time, then error (best first)
    g_s, t_s = ginv[order], t[order]
    new_group = np.r_[True, g_s[1:] != g_s[:-1]]
    new_epoch = new_group | np.r_[True, np.diff(t_s) > DUPLICATE_TOL_DAYS]
    # within an epoch (a run of near-equal times) keep the smallest error
    epoch_id = np.cumsum(new_epoch) - 1
    e_order = np.lexsort((err[order], epoch_id))
    first = np.r_[True, epoch_id[e_order][1:] != epoch_id[e_order][:-1]]
    keep_idx = order[e_order[first]]
    return keep_idx[np.lexsort((t[keep_idx], ginv[keep_idx]))]


def load_ztf_lightcurves(
    path: str | Path,
    *,
    group_radius_arcsec: float = OID_GROUP_RADIUS_ARCSEC,
    bands: Iterable[str] = ("g", "r", "i"),
) -> LightCurveSet:
    """ZTF light curves from IRSA files -> ``{source_key: {band: LightCurve}}`` (a :class:`LightCurveSet`).

    ``path``: one ``.csv``/``.tbl``/``.parquet`` file, or a directory of them (Parquet may be hive
    partitioned); to read several paths a file at a time, list them with
    :func:`iter_ztf_lightcurve_files` and call this on each. Cleaning, per SCIENCE.md: rows with
    ``catflags != 0``, non-finite or implausible ``mag``/``magerr`` (or ``magerr <= 0``) or time are
    dropped. IRSA returns several oids per position
    (one per field, CCD quadrant and filter); they are merged per source and band, sorted by time, and
    points closer than ``DUPLICATE_TOL_DAYS`` (the runtime's rule; a repeated exposure) keep the one with
    the smallest error. Time is ``mjd`` when present (else ``hmjd``, else ``hjd``/``jd`` - 2400000.5).

    Sources: a ``source_id``/``source``/``target``/``name``/``cntr_u`` column names them when present;
    otherwise oids whose mean positions lie within ``group_radius_arcsec`` are one source, keyed by the
    smallest oid (as a string). ``LightCurve.kind`` is ``"dc"``: IRSA magnitudes are PSF-fit
    magnitudes of the whole source. Flux in nJy: ``10^(-0.4 (mag - 31.4))``, error
    ``flux * magerr * ln10 / 2.5``. Calibration offsets between fields (~0.01-0.05 mag) are not removed.
    """
    cols = _read_columns(Path(path))
    out = LightCurveSet()
    if not cols or cols["t"].size == 0:
        return out

    ok = _clean_rows(cols, bands)
    # positions and source groups use every row (flagged epochs still locate the object)
    oid = cols["oid"]
    src_all = _source_of_rows(cols, group_radius_arcsec)
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
    keep_idx = _best_epoch_rows(ginv, t, err)
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
