"""Real-data loaders: DR16Q-like FITS, label CSVs, spec-lite FITS, IRSA ZTF light curves (CSV and
Parquet), and the positional cross-match. Every fixture is written here in the real format."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from astropy.io import fits

from training.catalogues import (
    LightCurveSet,
    QuasarCatalogue,
    load_dr16q,
    load_spec_lite,
    load_ztf_lightcurves,
    match_lightcurves,
    normalise_name,
    read_label_csv,
    sdss_name,
    spec_lite_name,
    spec_lite_path,
)

# ------------------------------------------------------------------------------ DR16Q fixtures

#: rows: name, ra, dec, plate, mjd, fiber, z, bal_prob, bi_civ
_ROWS = [
    ("000001.00+010000.0", 0.00417, 1.0, 4000, 55000, 10, 2.00, 0.98, 1250.0),  # BAL
    ("000002.00+010000.0", 0.00833, 1.0, 4000, 55000, 11, 2.50, 0.02, 0.0),  # non-BAL
    ("000003.00+010000.0", 0.01250, 1.0, 4000, 55000, 12, 3.00, -1.0, -1.0),  # not measured
    ("000004.00+010000.0", 0.01667, 1.0, 4000, 55000, 13, 1.80, np.nan, np.nan),  # not measured (NaN)
    ("000005.00+010000.0", 0.02083, 1.0, 4000, 55000, 14, 1.00, 0.0, 0.0),  # below z range
    ("000006.00+010000.0", 0.02500, 1.0, 4001, 55001, 15, 4.00, 0.9, 800.0),  # above z range
    ("000007.00+010000.0", 0.02917, 1.0, 4001, 55001, 16, 3.60, 0.7, 0.0),  # z at the upper edge
]


def _write_dr16q(path: Path, rows: list[tuple] = _ROWS, *, minimal: bool = False) -> Path:
    """A DR16Q-like catalogue: HDU 1 binary table with DR16Q's column names and FITS formats."""
    n = len(rows)
    c = list(zip(*rows, strict=True))
    vmin = np.full((n, 5), -1.0)
    vmax = np.full((n, 5), -1.0)
    vmin[0, :2] = [3500.0, 12000.0]
    vmax[0, :2] = [8000.0, 15000.0]
    cols = [
        fits.Column("RA", "D", array=np.array(c[1])),
        fits.Column("DEC", "D", array=np.array(c[2])),
        fits.Column("Z", "D", array=np.array(c[6])),
    ]
    if not minimal:
        cols = [
            fits.Column("SDSS_NAME", "18A", array=np.array(c[0])),
            *cols,
            fits.Column("THING_ID", "K", array=np.arange(n, dtype=np.int64) + 1000),
            fits.Column("PLATE", "J", array=np.array(c[3], dtype=np.int32)),
            fits.Column("MJD", "J", array=np.array(c[4], dtype=np.int32)),
            fits.Column("FIBERID", "J", array=np.array(c[5], dtype=np.int32)),
            fits.Column("Z_PIPE", "D", array=np.array(c[6]) + 0.01),
            fits.Column("Z_VI", "D", array=np.full(n, -1.0)),
            fits.Column("BAL_PROB", "E", array=np.array(c[7], dtype=np.float32)),
            fits.Column("BI_CIV", "D", array=np.array(c[8])),
            fits.Column("ERR_BI_CIV", "D", array=np.where(np.array(c[8]) > 0, 50.0, 0.0)),
            fits.Column("AI_CIV", "D", array=np.array(c[8]) * 1.5),
            fits.Column("NCIV_2000", "J", array=np.array([2] + [0] * (n - 1), dtype=np.int32)),
            fits.Column("VMIN_CIV_2000", "5D", array=vmin),
            fits.Column("VMAX_CIV_2000", "5D", array=vmax),
        ]
    hdu = fits.BinTableHDU.from_columns(cols, name="CATALOG")
    fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(path)
    return path


def test_dr16q_default_labels_and_redshift_cut(tmp_path: Path) -> None:
    cat = load_dr16q(_write_dr16q(tmp_path / "DR16Q_v4.fits"))
    assert isinstance(cat, QuasarCatalogue)
    # z 1.0 and 4.0 are cut, 3.6 (the edge) is kept
    assert list(cat.name) == ["000001.00+010000.0", "000002.00+010000.0", "000003.00+010000.0",
                              "000004.00+010000.0", "000007.00+010000.0"]
    # BI > 0 -> BAL, BI == 0 -> non-BAL, -1 and NaN -> unknown
    assert cat.label.tolist() == [1, 0, -1, -1, 0]
    assert cat.label.dtype == np.int8 and cat.label_source == "BI_CIV"
    assert (cat.n_bal, cat.n_nonbal) == (1, 2)
    assert cat.plate.tolist()[:2] == [4000, 4000] and cat.fiberid.tolist()[:2] == [10, 11]
    assert cat.spec_ids()[0] == (4000, 55000, 10)
    assert cat.object_id[0] == 1000
    assert cat.vmin_civ_2000.shape == (5, 5)
    assert cat.vmin_civ_2000[0, :2].tolist() == [3500.0, 12000.0] and np.isnan(cat.vmin_civ_2000[0, 2:]).all()
    assert cat.nciv_2000[0] == 2
    assert np.isnan(cat.bi_civ[3])
    lab = cat.labelled()
    assert len(lab) == 3 and set(lab.label.tolist()) == {0, 1}


def test_dr16q_label_column_and_z_bounds(tmp_path: Path) -> None:
    path = _write_dr16q(tmp_path / "dr16q.fits")
    cat = load_dr16q(path, label_column="bal_prob")  # case-insensitive; probability -> >= 0.5
    assert cat.label.tolist() == [1, 0, -1, -1, 1]
    assert cat.label_source == "BAL_PROB"
    cat = load_dr16q(path, label_column="AI_CIV", z_min=None, z_max=None)  # index -> > 0
    assert len(cat) == len(_ROWS)
    assert cat.label.tolist() == [1, 0, -1, -1, 0, 1, 0]
    with pytest.raises(ValueError, match="label column"):
        load_dr16q(path, label_column="NO_SUCH_COLUMN")


def test_dr16q_minimal_columns(tmp_path: Path) -> None:
    """Only RA, DEC, Z: names are generated, ids are -1, labels unknown."""
    cat = load_dr16q(_write_dr16q(tmp_path / "min.fits", minimal=True))
    assert len(cat) == 5
    assert (cat.label == -1).all() and (cat.plate == -1).all()
    assert cat.name[0] == sdss_name(_ROWS[0][1], _ROWS[0][2])
    assert np.isnan(cat.bi_civ).all()


def test_labels_csv_by_name_and_by_spectrum(tmp_path: Path) -> None:
    path = _write_dr16q(tmp_path / "dr16q.fits")
    csv_path = tmp_path / "naddaf_like.csv"
    csv_path.write_text(
        "# visually inspected BAL flags\n"
        "SDSS_NAME,BAL_FLAG_VI\n"
        "SDSS J000001.00+010000.0,0\n"  # overrides BI_CIV > 0
        "J000003.00+010000.0,yes\n"  # unknown in the catalogue, labelled here
        "000004.00+010000.0,1\n"
        "000004.00+010000.0,0\n"  # conflicting duplicate -> unknown
    )
    cat = load_dr16q(path, labels_csv=csv_path)
    assert cat.label.tolist() == [0, -1, 1, -1, -1]  # unmatched rows are unknown
    assert cat.label_source.startswith("csv:naddaf_like.csv")

    tsv = tmp_path / "by_spec.tsv"
    tsv.write_text("plate\tmjd\tfiber\tBI\n4000\t55000\t11\t900.5\n4001\t55001\t16\t0\n4000\t55000\t12\t-1\n")
    cat = load_dr16q(path, labels_csv=tsv)
    assert cat.label.tolist() == [-1, 1, -1, -1, 0]

    table = read_label_csv(tsv)
    assert table.by_spec == {(4000, 55000, 11): 1, (4001, 55001, 16): 0}
    bad = tmp_path / "bad.csv"
    bad.write_text("ra,dec,bal\n1,2,1\n")
    with pytest.raises(ValueError, match="name column"):
        read_label_csv(bad)


def test_names() -> None:
    assert normalise_name(b"SDSS J012345.67+012345.6 ") == "012345.67+012345.6"
    # 1h 23m 45.678s -> truncated to 45.67; -1d 02' 03.45" -> 03.4
    ra = (1 + 23 / 60 + 45.678 / 3600) * 15
    dec = -(1 + 2 / 60 + 3.45 / 3600)
    assert sdss_name(ra, dec) == "012345.67-010203.4"


def test_real_picca_sdss_catalogue(shared_data: Path) -> None:
    """The real DR16Q-format extract (picca test fixture, plate 3655): THING_ID, RA, DEC, PLATE, MJD,
    FIBERID, EXTINCTION, Z, BI_CIV; no SDSS_NAME."""
    path = shared_data / "quasars" / "picca_sdss_plate3655_qso_BI_CIV.fits"
    if not path.is_file():
        pytest.skip(f"{path} not present")
    full = load_dr16q(path, z_min=None, z_max=None)
    assert len(full) == 79 and full.n_bal == 2 and full.n_nonbal == 77
    assert (full.plate == 3655).all() and (full.mjd == 55240).all()
    cat = load_dr16q(path)
    assert len(cat) == 49 and ((cat.z >= 1.67) & (cat.z <= 3.6)).all()
    assert cat.n_bal + cat.n_nonbal == 49
    assert all(len(n) == 18 for n in cat.name)
    desi = shared_data / "quasars" / "picca_desi_baltestcat.fits"
    if desi.is_file():  # DESI layout: TARGETID, TARGET_RA/DEC, no plate
        d = load_dr16q(desi)
        assert d.label.tolist() == [0, 1] and (d.plate == -1).all() and d.object_id.tolist() == [10000, 10001]


# ---------------------------------------------------------------------------------- spec-lite


def _write_spec_lite(path: Path, plate: int = 4000, mjd: int = 55000, fiber: int = 10) -> Path:
    """A spec-lite file: primary header ids, HDU 1 COADD (float32 flux/loglam/ivar, int32 masks), SPALL."""
    n = 4000
    loglam = (3.5800 + 1e-4 * np.arange(n)).astype(np.float32)
    flux = np.full(n, 5.0, dtype=np.float32)
    ivar = np.full(n, 4.0, dtype=np.float32)
    and_mask = np.zeros(n, dtype=np.int32)
    and_mask[100:110] = 1 << 24  # e.g. BRIGHTSKY
    ivar[200] = 0.0
    flux[300] = np.nan
    prim = fits.PrimaryHDU()
    prim.header["PLATEID"] = plate
    prim.header["MJD"] = mjd
    prim.header["FIBERID"] = fiber
    coadd = fits.BinTableHDU.from_columns([
        fits.Column("flux", "E", array=flux),
        fits.Column("loglam", "E", array=loglam),
        fits.Column("ivar", "E", array=ivar),
        fits.Column("and_mask", "J", array=and_mask),
        fits.Column("or_mask", "J", array=and_mask),
        fits.Column("wdisp", "E", array=np.ones(n, dtype=np.float32)),
        fits.Column("sky", "E", array=np.zeros(n, dtype=np.float32)),
        fits.Column("model", "E", array=flux),
    ], name="COADD")
    spall = fits.BinTableHDU.from_columns([fits.Column("Z", "E", array=np.array([2.3], dtype=np.float32))],
                                          name="SPALL")
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.HDUList([prim, coadd, spall]).writeto(path)
    return path


def test_spec_lite_read_and_mask(tmp_path: Path) -> None:
    path = _write_spec_lite(tmp_path / spec_lite_name(4000, 55000, 10))
    assert path.name == "spec-4000-55000-0010.fits"
    spec = load_spec_lite(path)
    assert len(spec) == 4000 and spec.loglam.dtype == np.float64
    assert (spec.ivar[100:110] == 0).all()  # and_mask != 0 -> ivar 0
    assert spec.ivar[200] == 0 and spec.ivar[300] == 0  # ivar 0 / NaN flux
    assert (spec.ivar[:100] == 4.0).all()
    assert spec.meta["plate"] == 4000 and spec.meta["fiberid"] == 10
    assert math.isclose(spec.meta["z_pipe"], 2.3, rel_tol=1e-6)


def test_spec_lite_path_layouts(tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    nested = tmp_path / "nested"
    _write_spec_lite(flat / "spec-0266-51602-0001.fits", 266, 51602, 1)
    _write_spec_lite(nested / "3655" / "spec-3655-55240-0184.fits", 3655, 55240, 184)
    assert spec_lite_path(flat, 266, 51602, 1) == flat / "spec-0266-51602-0001.fits"
    assert spec_lite_path(nested, 3655, 55240, 184) == nested / "3655" / "spec-3655-55240-0184.fits"
    missing = spec_lite_path(nested, 1, 2, 3)
    assert missing == nested / "spec-0001-00002-0003.fits" and not missing.exists()


# ---------------------------------------------------------------------------- ZTF light curves

_POS_A = (150.000000, 2.000000)
_POS_B = (150.010000, 2.005000)  # ~40" away: a different source
_IRSA_COLS = ["oid", "expid", "hjd", "mjd", "mag", "magerr", "catflags", "filtercode", "ra", "dec", "chi", "sharp",
              "filefracday", "field", "ccdid", "qid", "limitmag", "magzp", "magzprms", "clrcoeff", "clrcounc",
              "exptime", "airmass", "programid"]


def _irsa_rows() -> list[dict]:
    """Two positions x (2 g oids from two fields + 1 r oid); flags, a NaN, a repeated exposure."""
    rows: list[dict] = []

    def add(oid: int, pos: tuple[float, float], fc: str, mjd: float, mag: float, err: float, flags: int = 0,
            expid: int | None = None, field: int = 700) -> None:
        rows.append({
            "oid": oid, "expid": expid if expid is not None else int(mjd * 1000) % 10**8,
            "hjd": mjd + 2400000.5 + 0.003, "mjd": mjd, "mag": mag, "magerr": err, "catflags": flags,
            "filtercode": fc, "ra": pos[0] + 1e-5 * (oid % 3), "dec": pos[1] - 1e-5 * (oid % 2),
            "chi": 1.0, "sharp": 0.0, "filefracday": 20190101000000, "field": field, "ccdid": 5, "qid": 2,
            "limitmag": 20.8, "magzp": 26.3, "magzprms": 0.03, "clrcoeff": 0.1, "clrcounc": 1e-5, "exptime": 30.0,
            "airmass": 1.2, "programid": 1,
        })

    # source A, g band, oid 1 (field 700) and oid 2 (field 1750)
    add(633101100000001, _POS_A, "zg", 58500.30, 19.00, 0.05)
    add(633101100000001, _POS_A, "zg", 58510.30, 19.10, 0.05, flags=32768)  # flagged -> dropped
    add(633101100000001, _POS_A, "zg", 58520.30, np.nan, 0.05)  # NaN -> dropped
    add(633101100000001, _POS_A, "zg", 58530.30, 19.20, 0.06, expid=555)
    add(1750101100000002, _POS_A, "zg", 58505.25, 19.05, 0.04, field=1750)
    add(1750101100000002, _POS_A, "zg", 58530.30, 19.25, 0.03, expid=555, field=1750)  # same exposure, better
    add(1750101100000002, _POS_A, "zg", 58490.25, 18.95, 0.04, field=1750)  # out of time order
    # source A, r band
    add(633101200000003, _POS_A, "zr", 58500.32, 18.60, 0.04)
    add(633101200000003, _POS_A, "zr", 58501.32, 18.62, -1.0)  # bad error -> dropped
    # source B, g band only, two oids
    add(633101100000010, _POS_B, "zg", 58500.30, 20.00, 0.10)
    add(1750101100000011, _POS_B, "zg", 58501.30, 20.10, 0.10, field=1750)
    return rows


def _check_lightcurves(lcs: LightCurveSet) -> None:
    assert set(lcs) == {"633101100000001", "633101100000010"}  # keyed by the smallest oid of each position
    a, b = lcs["633101100000001"], lcs["633101100000010"]
    assert set(a) == {"g", "r"} and set(b) == {"g"}
    g = a["g"]
    assert g.kind == "dc" and g.band == "g"
    # merged over two oids, flagged/NaN dropped, sorted, duplicate exposure -> smaller error kept
    assert g.mjd.tolist() == [58490.25, 58500.30, 58505.25, 58530.30]
    assert g.mag.tolist() == [18.95, 19.00, 19.05, 19.25]
    assert g.mag_err[-1] == 0.03
    np.testing.assert_allclose(g.flux, 10 ** (-0.4 * (g.mag - 31.4)), rtol=1e-12)
    np.testing.assert_allclose(g.flux_err, g.flux * g.mag_err * math.log(10) / 2.5, rtol=1e-12)
    assert len(a["r"]) == 1 and len(b["g"]) == 2
    assert lcs.oids["633101100000001"] == [633101100000001, 633101200000003, 1750101100000002]
    ra, dec = lcs.positions["633101100000001"]
    assert abs(ra - _POS_A[0]) < 1e-4 and abs(dec - _POS_A[1]) < 1e-4


def test_ztf_irsa_csv(tmp_path: Path) -> None:
    rows = _irsa_rows()
    path = tmp_path / "irsa_lc.csv"
    with path.open("w") as fh:
        fh.write(",".join(_IRSA_COLS) + "\n")
        for r in rows:
            fh.write(",".join("" if (isinstance(r[c], float) and np.isnan(r[c])) else str(r[c])
                              for c in _IRSA_COLS) + "\n")
    _check_lightcurves(load_ztf_lightcurves(path))


def _irsa_table(rows: list[dict]):
    import pyarrow as pa

    return pa.table({c: [r[c] for r in rows] for c in _IRSA_COLS})


def test_ztf_parquet_file_and_partitioned_dir(tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    table = _irsa_table(_irsa_rows())
    single = tmp_path / "lc.parquet"
    pq.write_table(table, single)
    _check_lightcurves(load_ztf_lightcurves(single))
    part = tmp_path / "partitioned"
    pq.write_to_dataset(table, part, partition_cols=["filtercode"])  # hive: filtercode=zg/...
    assert any(p.name.startswith("filtercode=") for p in part.iterdir())
    _check_lightcurves(load_ztf_lightcurves(part))


def test_ztf_parquet_release_layout_and_source_column(tmp_path: Path) -> None:
    """The data-release layout (one row per oid, list columns) and an explicit source-name column."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.table({
        "objectid": [1, 2, 3],
        "filterid": [1, 1, 2],
        "objra": [10.0, 10.0 + 0.3 / 3600, 10.0],
        "objdec": [-5.0, -5.0, -5.0],
        "nepochs": [3, 2, 1],
        "hmjd": [[59000.1, 59001.1, 59002.1], [58999.1, 59001.1], [59000.2]],
        "mag": [[18.0, 18.1, 18.2], [17.9, 18.3], [17.5]],
        "magerr": [[0.02, 0.02, 0.02], [0.03, 0.01], [0.02]],
        "catflags": [[0, 4, 0], [0, 0], [0]],
    })
    pq.write_table(table, tmp_path / "field000245_ccd01_q1.parquet")
    lcs = load_ztf_lightcurves(tmp_path)
    assert list(lcs) == ["1"]
    g = lcs["1"]["g"]
    assert g.mjd.tolist() == [58999.1, 59000.1, 59001.1, 59002.1]
    assert g.mag.tolist() == [17.9, 18.0, 18.3, 18.2]  # 59001.1: flagged in oid 1, oid 2's point kept
    assert lcs["1"]["r"].mag.tolist() == [17.5]

    csv = tmp_path / "named.csv"
    csv.write_text("source_id,oid,mjd,mag,magerr,catflags,filtercode,ra,dec\n"
                   "qso1,11,59000.0,19.0,0.1,0,zg,1.0,1.0\n"
                   "qso1,12,59001.0,19.1,0.1,0,zg,1.2,1.0\n"  # far apart, but named the same source
                   "qso2,13,59000.0,19.0,0.1,0,zr,2.0,1.0\n")
    lcs = load_ztf_lightcurves(csv)
    assert sorted(lcs) == ["qso1", "qso2"] and len(lcs["qso1"]["g"]) == 2


def test_match_lightcurves() -> None:
    def cat(ra: list[float], dec: list[float]) -> QuasarCatalogue:
        n = len(ra)
        f = np.full(n, np.nan)
        i = np.full(n, -1)
        return QuasarCatalogue(name=np.array([f"q{k}" for k in range(n)]), ra=np.array(ra), dec=np.array(dec),
                               plate=i, mjd=i, fiberid=i, z=np.full(n, 2.0), z_pipe=f, z_vi=f, bal_prob=f,
                               bi_civ=f, err_bi_civ=f, ai_civ=f, nciv_2000=i, vmin_civ_2000=np.full((n, 5), np.nan),
                               vmax_civ_2000=np.full((n, 5), np.nan), object_id=i, label=np.zeros(n, dtype=np.int8))

    c = cat([150.0, 150.1, 359.9999], [2.0, 2.0, 0.0])
    positions = {
        "near": (150.0 + 1.0 / 3600, 2.0),  # 1.0" from q0
        "nearer": (150.0, 2.0 + 0.3 / 3600),  # 0.3" from q0: wins q0
        "far": (150.1 + 5.0 / 3600, 2.0),  # 5" from q1: unmatched
        "wrap": (0.0 + 0.1 / 3600, 0.0),  # across RA = 0 from q2
    }
    m = match_lightcurves(c, positions, radius_arcsec=1.5)
    assert m == {"nearer": 0, "wrap": 2}
    lcs = LightCurveSet()
    lcs.positions["s"] = (150.1, 2.0)
    assert match_lightcurves(c, lcs) == {"s": 1}
    assert match_lightcurves(c.subset(np.array([1])), lcs) == {"s": 0}
    assert match_lightcurves(c, {}) == {}
