"""Drawing synthetic objects: quasars (BAL and non-BAL) and the contaminants an alert stream holds.

Everything the light-curve, spectrum and packet code needs about one object is drawn here, once,
into a :class:`SimObject`; the other modules only *observe* it. All randomness comes from the
``numpy.random.Generator`` passed in, so a seed fixes the population.

Quasar variability parameters (SCIENCE.md, "Quasar variability")
    Pairs (tau, SF_inf) are drawn *jointly*, as whole rows of the MacLeod+2010 Stripe 82 DRW fits
    (``training/data/s82_drw_params.csv``, built from ``../shared/data/quasars/macleod2010_s82drw_{g,r}.csv``
    by :func:`build_drw_table`), so the tau-SF_inf, colour-amplitude and redshift correlations of real
    quasars are kept. A row carries the g and r fits *of the same quasar* (the two tables share their
    row order, SDR5ID and position), its redshift, its mean magnitudes and its SDSS colours.

    How the table columns are read (checked against the fitted relations quoted in SCIENCE.md; see
    ``training/data/README.md`` for the regression): ``log10_tau_days`` is the best-fit DRW time scale
    in **observed-frame** days, ``log10_sigma`` the Kelly+2009 amplitude sigma-hat in mag / yr^(1/2),
    also observed frame, so ``SF_inf = sigma_hat * sqrt(tau_obs / 365 d)``, which is frame
    independent, and ``tau_rest = tau_obs / (1 + z)``. With that reading a joint g+r fit of
    log SF_inf against log(lambda_RF/4000 A), M_i, log M_BH and log(1+z) gives A = -0.55 and
    E = +0.04 (MacLeod+2010: A = -0.51, E ~ 0); reading tau as rest frame instead gives rest-frame
    time scales of ~500 d (SCIENCE.md: typical ~250 d) and an SF_inf trend with redshift the paper
    does not find. Rows failing MacLeod's own quality cuts in g or r (fewer than 10 epochs,
    DRW not preferred over white noise by Delta lnL > 2, tau unconstrained (Delta lnL vs tau=inf
    < 0.05), tau at the grid edge), and the ~25 absurd fits that survive them (SF_inf > 1.5 mag or
    tau_rest outside 1-10^4 d), are dropped: 6,501 of 9,258 quasars remain.

    The simulated quasar keeps the row's redshift when it is inside the requested range (default
    1.67 <= z <= 3.6, the C IV window of the reference study), so tau_obs = tau_rest (1 + z) is the
    row's own observed time scale. g and r share one time scale (the geometric mean of the two fits:
    one physical process, two noisy estimates) and their own SF_inf; other Rubin bands scale SF_inf
    with rest wavelength as lambda^-0.479 (MacLeod+2010 coefficient B).

BAL vs non-BAL light curves (SCIENCE.md: "no distinctive variability of their own ... BALs are redder
on average ... do not assume [a light-curve signal]")
    The *only* differences are the fields of :class:`BalLightCurveEffect`, explicit and tunable. The
    default is SMC-like dust at the quasar with E(B-V) drawn from an exponential of mean 0.023, the
    HiBAL-vs-non-BAL value of Reichard+2003; at z ~ 2 that reddens g-r by ~0.07 mag (ZTF bands) and
    dims g by ~0.3 mag. Variability amplitude and time scale are unchanged (``sf_scale = tau_scale = 1``).
    :meth:`BalLightCurveEffect.none` switches every difference off, for null tests.

Contaminants (for the candidate scorer and the demo)
    ``star`` (periodic low-amplitude pulsators/eclipsers, or constant), ``sn`` (a rise-and-decline
    transient on an extended host), ``blazar`` (a high-amplitude, short-time-scale DRW, point-like or
    nuclear in a host) and ``bogus`` (a subtraction artefact). Each object carries a morphology hint
    for the stamps (``point``, ``extended``, ``nuclear``, ``artifact``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np

from broker_plugin.alert import LSST_BANDS

#: Class labels, in the order used for integer codes.
CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal", "star", "sn", "blazar", "bogus")
QSO_CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal")
#: Stamp morphology hints understood by ``training.synthetic.stamps.render_triplet``.
MORPHOLOGIES: tuple[str, ...] = ("point", "extended", "nuclear", "artifact")

Survey = Literal["ztf", "lsst"]
SURVEY_BANDS: dict[str, tuple[str, ...]] = {"ztf": ("g", "r"), "lsst": LSST_BANDS}

#: Effective wavelengths (Angstrom) of the survey filters. ZTF: Bellm+2019 (g 4746, r 6366);
#: Rubin: LSST filter throughputs (u 3671, g 4827, r 6223, i 7546, z 8691, y 9712).
EFF_WAVELENGTH: dict[str, dict[str, float]] = {
    "ztf": {"g": 4746.0, "r": 6366.0},
    "lsst": {"u": 3671.0, "g": 4827.0, "r": 6223.0, "i": 7546.0, "z": 8691.0, "y": 9712.0},
}

#: DR16Q automated BAL flags: 99,856 of 750,414 quasars, about 13% (SCIENCE.md). The reference
#: study's visually inspected DR7 sample is much poorer in BALs (1,419 of 42,505, 3.3%).
DEFAULT_BAL_FRACTION: float = 0.13
#: Redshift range with C IV in the SDSS window (SCIENCE.md; the reference study's cut).
CIV_Z_RANGE: tuple[float, float] = (1.67, 3.6)
#: MacLeod+2010 wavelength exponent of SF_inf (coefficient B).
SF_WAVELENGTH_SLOPE: float = -0.479
#: SMC bar extinction curve, power-law approximation A_lambda / E(B-V) = R_V (lambda / 5500 A)^-1.2
#: with R_V = 2.74 (Gordon+2003); within ~10% of the tabulated curve from 1250 to 9000 A.
SMC_RV: float = 2.74
SMC_SLOPE: float = -1.2

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DRW_TABLE_PATH = DATA_DIR / "s82_drw_params.csv"

# Colours used when the SDSS catalogue has no magnitude (22 of 9,258 rows): typical 1.7<z<3.6 quasar.
_DEFAULT_COLOURS = {"u_g": 0.25, "r_i": 0.12, "i_z": 0.05}
# z - y for quasars at 1.7 < z < 3.6 is small; used to extend SDSS ugriz to Rubin's y.
_Z_MINUS_Y = 0.05


# ------------------------------------------------------------------------------------------------
# The BAL light-curve effect
# ------------------------------------------------------------------------------------------------


def smc_extinction(wave_rest: np.ndarray | float, ebv: float) -> np.ndarray | float:
    """A_lambda (mag) of SMC-like dust with colour excess ``ebv`` at rest wavelength(s) in Angstrom.

    SMC-like dust is what reddened BAL composites need (Reichard+2003); the power law stands in for
    the tabulated curve (see :data:`SMC_RV`), adequate for a 0.02-0.1 mag effect.
    """
    return ebv * SMC_RV * (np.asarray(wave_rest, dtype=np.float64) / 5500.0) ** SMC_SLOPE


@dataclass(frozen=True, slots=True)
class BalLightCurveEffect:
    """Every way a BAL quasar's light curve differs from a non-BAL one in the simulation. Nothing else does.

    Defaults reflect SCIENCE.md: BALs are redder on average (Reichard+2003, Gibson+2009) and have
    no distinctive variability (so ``sf_scale = tau_scale = 1``).

    ``ebv_mean``
        Mean E(B-V) of SMC-like dust at the quasar redshift, added to BALs only (the Stripe 82
        colours of non-BALs already carry the ordinary quasar dust). 0.023 is Reichard+2003's
        HiBAL-vs-non-BAL value; their LoBALs need 0.077. The reddening in observed g-r depends on
        redshift, ~0.07 mag at z = 2 (see :meth:`expected_color_shift`), inside the 0.05-0.1 mag
        range usually quoted; it also dims the quasar (~0.3 mag in g at z = 2), applied too.
    ``ebv_distribution``
        ``"exponential"`` (default: most BALs are barely reddened, a tail is dusty) or ``"fixed"``.
    ``color_shift_gr``
        An extra, purely empirical g-r shift (mag) on top of the dust, applied as a linear tilt in
        wavelength that is zero at r (+shift at g). Default 0: the dust already gives the colour.
    ``sf_scale``, ``tau_scale``
        Multipliers of the DRW SF_inf and tau for BALs. Default 1: no distinctive variability.
    """

    ebv_mean: float = 0.023
    ebv_distribution: Literal["exponential", "fixed"] = "exponential"
    color_shift_gr: float = 0.0
    sf_scale: float = 1.0
    tau_scale: float = 1.0

    @classmethod
    def none(cls) -> BalLightCurveEffect:
        """No difference at all between BAL and non-BAL light curves (for null tests)."""
        return cls(ebv_mean=0.0, ebv_distribution="fixed", color_shift_gr=0.0, sf_scale=1.0, tau_scale=1.0)

    def draw_ebv(self, rng: np.random.Generator) -> float:
        """E(B-V) of one BAL quasar."""
        if self.ebv_mean <= 0:
            return 0.0
        if self.ebv_distribution == "fixed":
            return float(self.ebv_mean)
        return float(rng.exponential(self.ebv_mean))

    def magnitude_offsets(self, z: float, ebv: float, survey: Survey) -> dict[str, float]:
        """Per-band magnitude change of a BAL (dust extinction at rest wavelength + colour tilt)."""
        waves = EFF_WAVELENGTH[survey]
        lam_g, lam_r = EFF_WAVELENGTH["lsst"]["g"], EFF_WAVELENGTH["lsst"]["r"]
        out = {}
        for band, lam in waves.items():
            a = float(smc_extinction(lam / (1.0 + z), ebv)) if ebv > 0 else 0.0
            tilt = self.color_shift_gr * (lam_r - lam) / (lam_r - lam_g)
            out[band] = a + tilt
        return out

    def expected_color_shift(self, z: float = 2.0, survey: Survey = "ztf") -> float:
        """Mean reddening E(g-r) of BALs at redshift ``z`` implied by these settings (for reports)."""
        off = self.magnitude_offsets(z, self.ebv_mean, survey)
        return off["g"] - off["r"]


# ------------------------------------------------------------------------------------------------
# The Stripe 82 DRW table
# ------------------------------------------------------------------------------------------------

#: Columns of ``s82_drw_params.csv``, in file order.
DRW_COLUMNS: tuple[str, ...] = (
    "z", "M_i", "mu_g", "mu_r", "u_g", "r_i", "i_z",
    "log_tau_rest_g", "log_sf_inf_g", "log_tau_rest_r", "log_sf_inf_r",
)


@dataclass(frozen=True)
class DrwTable:
    """The compact Stripe 82 DRW parameter table, one array per column (see :data:`DRW_COLUMNS`)."""

    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.columns["z"].shape[0])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def rows_in_z(self, z_range: tuple[float, float]) -> np.ndarray:
        z = self.columns["z"]
        return np.flatnonzero((z >= z_range[0]) & (z <= z_range[1]))


def _read_float_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(line for line in fh if not line.startswith("#"))]
    header, body = rows[0], rows[1:]
    arr = np.array([[float(v) if v != "" else math.nan for v in r] for r in body], dtype=np.float64)
    return {name: arr[:, i].copy() for i, name in enumerate(header)}


@lru_cache(maxsize=4)
def load_drw_table(path: str | None = None) -> DrwTable:
    """Load (once) the compact S82 DRW table shipped in ``training/data``."""
    p = Path(path) if path else DRW_TABLE_PATH
    if not p.is_file():
        raise FileNotFoundError(f"DRW parameter table not found at {p}; rebuild it with build_drw_table()")
    cols = _read_float_csv(p)
    missing = [c for c in DRW_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"{p} lacks columns {missing}")
    return DrwTable({k: cols[k] for k in DRW_COLUMNS})


def build_drw_table(shared_quasars: str | Path, out: str | Path = DRW_TABLE_PATH) -> int:
    """Rebuild ``s82_drw_params.csv`` from the MacLeod+2010 tables in ``../shared/data/quasars``.

    Keeps the rows passing MacLeod's quality cuts in both g and r, converts tau to the rest frame
    and sigma-hat to SF_inf (see the module docstring), and adds SDSS colours from
    ``macleod2010_s82_quasars_DB_QSO_S82.csv`` (same row order). Returns the number of rows written.
    """
    src = Path(shared_quasars)
    g = _read_float_csv(src / "macleod2010_s82drw_g.csv")
    r = _read_float_csv(src / "macleod2010_s82drw_r.csv")
    db = _read_float_csv(src / "macleod2010_s82_quasars_DB_QSO_S82.csv")
    if not (np.array_equal(g["ra"], r["ra"]) and np.allclose(db["ra"], g["ra"], atol=1e-6)):
        raise ValueError("the g, r and DB_QSO_S82 tables are not in the same row order")

    def good(d: dict[str, np.ndarray]) -> np.ndarray:
        return (
            (d["npts"] >= 10) & (d["Plike"] - d["Pnoise"] > 2.0) & (d["Plike"] - d["Pinf"] > 0.05)
            & (d["edge_flag"] == 0) & (d["log10_tau_days"] > -5) & (d["log10_sigma"] > -5)
        )

    z = g["redshift"]
    log1pz = np.log10(1.0 + z)

    def sf(d: dict[str, np.ndarray]) -> np.ndarray:
        return d["log10_sigma"] + 0.5 * (d["log10_tau_days"] - np.log10(365.0))

    def sane(d: dict[str, np.ndarray]) -> np.ndarray:
        # ~25 fits pass the cuts with absurd values (SF_inf up to 30 mag, tau up to 1e7 d); keep
        # 0.01 <= SF_inf <= 1.5 mag and 1 <= tau_rest <= 1e4 d (S82 spans ~3,000 observed days).
        log_tau_rest = d["log10_tau_days"] - log1pz
        return (sf(d) >= -2.0) & (sf(d) <= np.log10(1.5)) & (log_tau_rest >= 0.0) & (log_tau_rest <= 4.0)

    keep = good(g) & good(r) & sane(g) & sane(r)

    def colour(a: str, b: str) -> np.ndarray:
        ok = (db[a] > 0) & (db[b] > 0)
        return np.where(ok, db[a] - db[b], math.nan)

    cols = {
        "z": z, "M_i": g["M_i"], "mu_g": g["mu"], "mu_r": r["mu"],
        "u_g": colour("u", "g"), "r_i": colour("r", "i"), "i_z": colour("i", "z"),
        "log_tau_rest_g": g["log10_tau_days"] - log1pz, "log_sf_inf_g": sf(g),
        "log_tau_rest_r": r["log10_tau_days"] - log1pz, "log_sf_inf_r": sf(r),
    }
    fmt = {"z": "{:.4f}", "M_i": "{:.2f}", "u_g": "{:.2f}", "r_i": "{:.2f}", "i_z": "{:.2f}"}
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    with out_p.open("w", newline="") as fh:
        fh.write(f"# MacLeod+2010 Stripe 82 DRW fits (g, r) of {int(keep.sum()):,} quasars passing the quality cuts "
                 "in both bands.\n")
        fh.write("# Source: jiwoncpark/magnificat (MIT) s82drw_{g,r}.dat + DB_QSO_S82.dat; "
                 "see training/data/README.md.\n")
        fh.write("# tau in rest-frame days (log10), SF_inf in mag (log10); mu = DRW mean mag; "
                 "colours SDSS, empty = missing.\n")
        fh.write(",".join(DRW_COLUMNS) + "\n")
        for i in np.flatnonzero(keep):
            vals = []
            for c in DRW_COLUMNS:
                v = cols[c][i]
                vals.append("" if not np.isfinite(v) else fmt.get(c, "{:.3f}").format(v))
            fh.write(",".join(vals) + "\n")
    load_drw_table.cache_clear()
    return int(keep.sum())


# ------------------------------------------------------------------------------------------------
# Objects
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SimObject:
    """One simulated astrophysical object, survey independent.

    ``mean_mag`` holds the time-averaged apparent magnitude in every band of both surveys (keys
    ``"ztf:g"``, ``"lsst:u"``, ...; see :meth:`mag`). ``variability`` selects the light-curve model
    in :mod:`training.synthetic.lightcurves` and ``params`` its parameters. ``truth`` gathers what a
    report or a test may want to know (never read by the plugin).
    """

    index: int
    label: str
    ra: float
    dec: float
    z: float
    mean_mag: dict[str, float]
    variability: str
    params: dict[str, Any]
    morphology: str = "point"
    host_mag: float | None = None
    host_offset_arcsec: float = 0.0
    is_bal: bool = False
    ebv: float = 0.0
    truth: dict[str, Any] = field(default_factory=dict)

    @property
    def is_quasar(self) -> bool:
        return self.label in QSO_CLASSES

    def mag(self, survey: str, band: str) -> float:
        return self.mean_mag[f"{survey}:{band}"]

    def bands(self, survey: str) -> tuple[str, ...]:
        return SURVEY_BANDS[survey]


def _sky_position(rng: np.random.Generator, survey: str, ra_center: float | None,
                  ra_halfwidth: float) -> tuple[float, float]:
    """Uniform on the sphere within the survey's declination range (and an RA window if given)."""
    dec_lo, dec_hi = (-30.0, 90.0) if survey == "ztf" else (-70.0, 10.0)
    s = rng.uniform(math.sin(math.radians(dec_lo)), math.sin(math.radians(dec_hi)))
    dec = math.degrees(math.asin(s))
    if ra_center is None:
        ra = rng.uniform(0.0, 360.0)
    else:
        ra = (ra_center + rng.uniform(-ra_halfwidth, ra_halfwidth)) % 360.0
    return float(ra), float(dec)


def _mags_from_anchor(anchor: dict[str, float]) -> dict[str, float]:
    """Fill both surveys' bands from SDSS-like ugrizy magnitudes (filters treated as equivalent)."""
    out = {}
    for survey, bands in SURVEY_BANDS.items():
        for b in bands:
            out[f"{survey}:{b}"] = float(anchor[b])
    return out


@lru_cache(maxsize=32)
def _rows_in_z_cached(tab_id: int, z_lo: float, z_hi: float) -> np.ndarray:
    return _TABLES[tab_id].rows_in_z((z_lo, z_hi))


_TABLES: dict[int, DrwTable] = {}


def _rows_in_z(tab: DrwTable, z_range: tuple[float, float]) -> np.ndarray:
    _TABLES.setdefault(id(tab), tab)
    return _rows_in_z_cached(id(tab), float(z_range[0]), float(z_range[1]))


_ROW_CACHE: dict[tuple[int, int], tuple[float, float, dict[str, float], dict[str, float]]] = {}


def _row_quantities(tab: DrwTable, i: int) -> tuple[float, float, dict[str, float], dict[str, float]]:
    """(z, tau_rest, mean magnitudes, SF_inf) of table row ``i`` in every band of both surveys (cached)."""
    key = (id(tab), i)
    hit = _ROW_CACHE.get(key)
    if hit is not None:
        return hit
    z = float(tab["z"][i])
    tau_rest = float(10.0 ** (0.5 * (tab["log_tau_rest_g"][i] + tab["log_tau_rest_r"][i])))
    sf_g, sf_r = float(10.0 ** tab["log_sf_inf_g"][i]), float(10.0 ** tab["log_sf_inf_r"][i])

    def colour(name: str) -> float:
        v = tab[name][i]
        return float(v) if np.isfinite(v) else _DEFAULT_COLOURS[name]

    g, r = float(tab["mu_g"][i]), float(tab["mu_r"][i])
    anchor = {"g": g, "r": r, "u": g + colour("u_g")}
    anchor["i"] = r - colour("r_i")
    anchor["z"] = anchor["i"] - colour("i_z")
    anchor["y"] = anchor["z"] - _Z_MINUS_Y
    # SF_inf per band: measured in g and r; elsewhere scaled from the nearer of the two with MacLeod's B.
    sf: dict[str, float] = {}
    for s, waves in EFF_WAVELENGTH.items():
        for b, lam in waves.items():
            if b == "g":
                sf[f"{s}:{b}"] = sf_g
            elif b == "r":
                sf[f"{s}:{b}"] = sf_r
            else:
                ref_sf, ref_lam = (sf_g, waves["g"]) if lam < waves["g"] else (sf_r, waves["r"])
                sf[f"{s}:{b}"] = float(ref_sf * (lam / ref_lam) ** SF_WAVELENGTH_SLOPE)
    out = (z, tau_rest, _mags_from_anchor(anchor), sf)
    _ROW_CACHE[key] = out
    return out


def draw_quasar(
    rng: np.random.Generator,
    index: int,
    *,
    is_bal: bool,
    effect: BalLightCurveEffect | None = None,
    z_range: tuple[float, float] = CIV_Z_RANGE,
    band_correlation: float = 0.95,
    mag_shift: float = 0.0,
    ra_center: float | None = None,
    ra_halfwidth: float = 180.0,
    survey: str = "ztf",
    table: DrwTable | None = None,
) -> SimObject:
    """A quasar whose variability and colours are one real Stripe 82 quasar's (see the module docstring).

    ``band_correlation`` is the correlation between the unit DRW processes of two bands (each band is
    sqrt(rho) x common + sqrt(1 - rho) x own, both with the same tau, so every band stays an exact DRW
    with its own SF_inf). ``mag_shift`` moves the whole quasar fainter/brighter (e.g. to mimic a
    different survey depth); 0 keeps the S82 magnitudes.
    """
    effect = effect or BalLightCurveEffect()
    tab = table or load_drw_table()
    rows = _rows_in_z(tab, z_range)
    if rows.size == 0:
        raise ValueError(f"no Stripe 82 quasar with {z_range[0]} <= z <= {z_range[1]}")
    i = int(rows[rng.integers(rows.size)])
    z, tau_rest, base_mag, base_sf = _row_quantities(tab, i)
    mean_mag = {k: v + mag_shift for k, v in base_mag.items()}
    sf = dict(base_sf)

    ebv = 0.0
    if is_bal:
        ebv = effect.draw_ebv(rng)
        for s in SURVEY_BANDS:
            for b, dm in effect.magnitude_offsets(z, ebv, s).items():  # type: ignore[arg-type]
                mean_mag[f"{s}:{b}"] += dm
        sf = {k: v * effect.sf_scale for k, v in sf.items()}
        tau_rest *= effect.tau_scale

    ra, dec = _sky_position(rng, survey, ra_center, ra_halfwidth)
    label = "qso_bal" if is_bal else "qso_nonbal"
    params = {
        "tau_rest": float(tau_rest),
        "tau_obs": float(tau_rest * (1.0 + z)),
        "sf_inf": sf,
        "rho": float(band_correlation),
        "s82_row": i,
    }
    truth = {"M_i": float(tab["M_i"][i]), "s82_row": i, "ebv": ebv}
    return SimObject(index, label, ra, dec, z, mean_mag, "drw", params, "point", None, 0.0, is_bal, ebv, truth)


def draw_star(rng: np.random.Generator, index: int, *, survey: str = "ztf", constant_fraction: float = 0.2,
              ra_center: float | None = None, ra_halfwidth: float = 180.0) -> SimObject:
    """A Galactic star: constant, or periodic with a low amplitude (pulsator / eclipsing-like).

    Periods are log-uniform 0.05-100 d and semi-amplitudes 0.03-0.5 mag (log-uniform), with a
    second harmonic to make eclipsing-like and RR Lyrae-like asymmetric shapes; colours of
    main-sequence stars (g-r 0.2-1.4).
    """
    ra, dec = _sky_position(rng, survey, ra_center, ra_halfwidth)
    r = float(rng.uniform(14.5, 20.5))
    gr = float(rng.uniform(0.2, 1.4))
    anchor = {"r": r, "g": r + gr, "u": r + gr + 1.2 * gr + 0.6, "i": r - 0.4 * gr, "z": r - 0.6 * gr}
    anchor["y"] = anchor["z"] - 0.1 * gr
    constant = rng.random() < constant_fraction
    params: dict[str, Any] = {}
    if constant:
        variability = "constant"
    else:
        variability = "periodic"
        params = {
            "period": float(10 ** rng.uniform(math.log10(0.05), 2.0)),
            "amp": float(10 ** rng.uniform(math.log10(0.03), math.log10(0.5))),
            "harmonic": float(rng.uniform(0.0, 0.5)),
            "phase": float(rng.uniform(0, 1)),
            # Bluer bands vary more for pulsators; 1.0-1.4x the r amplitude at g.
            "chromatic": float(rng.uniform(1.0, 1.4)),
        }
    return SimObject(index, "star", ra, dec, math.nan, _mags_from_anchor(anchor), variability, params, "point",
                     truth={"subtype": variability})


def draw_sn(rng: np.random.Generator, index: int, *, survey: str = "ztf", ra_center: float | None = None,
            ra_halfwidth: float = 180.0) -> SimObject:
    """A supernova-like transient on an extended host (Bazin-like rise and decline in flux).

    Peak magnitude 17.5-21 (ZTF) or 18-23.5 (Rubin), rise time 2-8 d, decline 15-60 d (slower in
    redder bands), reddening after peak; host 16.5-21.5 mag at 0.3-4" from the transient.
    """
    ra, dec = _sky_position(rng, survey, ra_center, ra_halfwidth)
    peak = float(rng.uniform(17.5, 21.0) if survey == "ztf" else rng.uniform(18.0, 23.5))
    z = float(rng.uniform(0.01, 0.15) if survey == "ztf" else rng.uniform(0.05, 0.6))
    host = float(rng.uniform(16.5, 21.5) if survey == "ztf" else rng.uniform(18.0, 23.0))
    params = {
        "peak_mag": peak,
        "t0": math.nan,  # set by the caller relative to the observing window
        "t_rise": float(rng.uniform(2.0, 8.0)),
        "t_fall": float(rng.uniform(15.0, 60.0)),
        "gr_peak": float(rng.uniform(-0.2, 0.2)),
        "gr_slope": float(rng.uniform(0.01, 0.03)),  # mag/day of reddening after peak
    }
    # Mean magnitudes of an SN are not meaningful; store the peak so that consumers have a scale.
    anchor = {b: peak for b in LSST_BANDS}
    return SimObject(index, "sn", ra, dec, z, _mags_from_anchor(anchor), "sn", params, "extended",
                     host_mag=host, host_offset_arcsec=float(rng.uniform(0.3, 4.0)))


def draw_blazar(rng: np.random.Generator, index: int, *, survey: str = "ztf", ra_center: float | None = None,
                ra_halfwidth: float = 180.0) -> SimObject:
    """A blazar: a DRW with a large amplitude (SF_inf log-normal around 0.7 mag) and tau_rest ~10-300 d.

    Blazar optical variability is well described by a DRW with much larger amplitudes than ordinary
    quasars (Ruan+2012); a third are BL Lacs seen as a nucleus in a host galaxy.
    """
    ra, dec = _sky_position(rng, survey, ra_center, ra_halfwidth)
    z = float(rng.uniform(0.1, 2.0))
    r = float(rng.uniform(15.5, 20.0))
    gr = float(rng.uniform(0.2, 0.7))
    anchor = {"r": r, "g": r + gr, "u": r + 2 * gr, "i": r - 0.6 * gr, "z": r - 1.0 * gr}
    anchor["y"] = anchor["z"] - 0.3 * gr
    sf0 = float(np.exp(rng.normal(math.log(0.7), 0.35)))
    sf = {f"{s}:{b}": sf0 * (lam / 6200.0) ** SF_WAVELENGTH_SLOPE
          for s, w in EFF_WAVELENGTH.items() for b, lam in w.items()}
    tau_rest = float(10 ** rng.uniform(1.0, 2.5))
    nuclear = rng.random() < 1 / 3
    params = {"tau_rest": tau_rest, "tau_obs": tau_rest * (1 + z), "sf_inf": sf, "rho": 0.9}
    return SimObject(index, "blazar", ra, dec, z, _mags_from_anchor(anchor), "drw", params,
                     "nuclear" if nuclear else "point",
                     host_mag=float(r + rng.uniform(0.5, 2.5)) if nuclear else None)


def draw_bogus(rng: np.random.Generator, index: int, *, survey: str = "ztf", ra_center: float | None = None,
               ra_halfwidth: float = 180.0) -> SimObject:
    """A subtraction artefact: one spurious detection near the limit, nothing before or after."""
    ra, dec = _sky_position(rng, survey, ra_center, ra_halfwidth)
    m = float(rng.uniform(18.5, 20.5) if survey == "ztf" else rng.uniform(21.0, 24.0))
    return SimObject(index, "bogus", ra, dec, math.nan, _mags_from_anchor({b: m for b in LSST_BANDS}), "bogus",
                     {"sign": 1.0 if rng.random() < 0.6 else -1.0}, "artifact")


#: Default class mix of a synthetic alert stream: chosen for demos and benchmarks (enough quasars to
#: see candidates), *not* the real ZTF/Rubin mix, which is dominated by variable stars and bogus.
DEFAULT_STREAM_MIX: dict[str, float] = {"qso": 0.5, "star": 0.2, "sn": 0.15, "blazar": 0.05, "bogus": 0.1}


def draw_object(
    rng: np.random.Generator,
    index: int,
    kind: str,
    *,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    effect: BalLightCurveEffect | None = None,
    survey: str = "ztf",
    z_range: tuple[float, float] = CIV_Z_RANGE,
    ra_center: float | None = None,
    ra_halfwidth: float = 180.0,
    star_constant_fraction: float = 0.2,
) -> SimObject:
    """One object of ``kind`` (``qso``, ``qso_bal``, ``qso_nonbal``, ``star``, ``sn``, ``blazar``, ``bogus``).

    ``qso`` decides BAL vs non-BAL with probability ``bal_fraction``.
    """
    pos = {"ra_center": ra_center, "ra_halfwidth": ra_halfwidth, "survey": survey}
    if kind in ("qso", "qso_bal", "qso_nonbal"):
        is_bal = (rng.random() < bal_fraction) if kind == "qso" else kind == "qso_bal"
        return draw_quasar(rng, index, is_bal=is_bal, effect=effect, z_range=z_range, **pos)
    if kind == "star":
        return draw_star(rng, index, constant_fraction=star_constant_fraction, **pos)
    if kind == "sn":
        return draw_sn(rng, index, **pos)
    if kind == "blazar":
        return draw_blazar(rng, index, **pos)
    if kind == "bogus":
        return draw_bogus(rng, index, **pos)
    raise ValueError(f"unknown object kind {kind!r}")


def normalise_mix(mix: Mapping[str, float]) -> tuple[list[str], np.ndarray]:
    """Kinds and probabilities of a class mix (weights need not sum to one)."""
    kinds = [k for k, w in mix.items() if w > 0]
    w = np.array([mix[k] for k in kinds], dtype=np.float64)
    if not kinds or not np.all(np.isfinite(w)):
        raise ValueError(f"bad class mix {dict(mix)}")
    return kinds, w / w.sum()


def with_index(obj: SimObject, index: int) -> SimObject:
    """A copy of ``obj`` with another index (used when an object is re-drawn)."""
    return replace(obj, index=index)
