"""Drawing synthetic objects: quasars (BAL and non-BAL) and the contaminants an alert stream holds.

Everything the light-curve, spectrum and packet code needs about one object is drawn here, once,
into a :class:`SimObject`; the other modules only *observe* it. All randomness comes from the
``numpy.random.Generator`` passed in, so a seed fixes the population.

Quasar variability parameters
    Whole rows of the MacLeod+2010 Stripe 82 DRW fits, drawn jointly so the tau-SF_inf,
    colour-amplitude and redshift correlations of real quasars are kept; :mod:`.drw_table` holds the
    table, how its columns are read and the quality cuts. The simulated quasar keeps the row's
    redshift when it is inside the requested range (default 1.67 <= z <= 3.6, the C IV window of the
    reference study). g and r share one time scale (the geometric mean of the two fits: one physical
    process, two noisy estimates) and their own SF_inf; other Rubin bands scale SF_inf with rest
    wavelength as lambda^-0.479 (MacLeod+2010 coefficient B).

BAL vs non-BAL light curves
    The *only* differences are the fields of :class:`BalLightCurveEffect` (:mod:`.bal_effect`),
    explicit and tunable; :meth:`BalLightCurveEffect.none` switches every difference off.

Contaminants (for the candidate scorer and the demo)
    ``star`` (periodic low-amplitude pulsators/eclipsers, or constant), ``sn`` (a rise-and-decline
    transient on an extended host), ``blazar`` (a high-amplitude, short-time-scale DRW, point-like or
    nuclear in a host) and ``bogus`` (a subtraction artefact). Each object carries a morphology hint
    for the stamps (``point``, ``extended``, ``nuclear``, ``artifact``).

The filter constants, the BAL effect and the DRW table live in their own modules and are
re-exported here, where callers have always imported them from.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from typing import Any

import numpy as np

from broker_plugin.alert import LSST_BANDS

from .bal_effect import SMC_RV, SMC_SLOPE, BalLightCurveEffect, smc_extinction
from .drw_table import DATA_DIR, DRW_COLUMNS, DRW_TABLE_PATH, DrwTable, build_drw_table, load_drw_table
from .filters import EFF_WAVELENGTH, MORPHOLOGIES, SURVEY_BANDS, Survey

__all__ = [
    "CIV_Z_RANGE", "CLASSES", "DATA_DIR", "DEFAULT_BAL_FRACTION", "DEFAULT_STREAM_MIX", "DRW_COLUMNS",
    "DRW_TABLE_PATH", "EFF_WAVELENGTH", "MORPHOLOGIES", "QSO_CLASSES", "SF_WAVELENGTH_SLOPE", "SMC_RV",
    "SMC_SLOPE", "SURVEY_BANDS", "BalLightCurveEffect", "DrwTable", "SimObject", "Survey", "build_drw_table",
    "draw_blazar", "draw_bogus", "draw_object", "draw_quasar", "draw_sn", "draw_star", "load_drw_table",
    "normalise_mix", "smc_extinction", "with_index",
]

#: Class labels, in the order used for integer codes.
CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal", "star", "sn", "blazar", "bogus")
QSO_CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal")
#: DR16Q automated BAL flags: 99,856 of 750,414 quasars, about 13% (SCIENCE.md). The reference
#: study's visually inspected DR7 sample is much poorer in BALs (1,419 of 42,505, 3.3%).
DEFAULT_BAL_FRACTION: float = 0.13
#: Redshift range with C IV in the SDSS window (SCIENCE.md; the reference study's cut).
CIV_Z_RANGE: tuple[float, float] = (1.67, 3.6)
#: MacLeod+2010 wavelength exponent of SF_inf (coefficient B).
SF_WAVELENGTH_SLOPE: float = -0.479

# Colours used when the SDSS catalogue has no magnitude (22 of 9,258 rows): typical 1.7<z<3.6 quasar.
_DEFAULT_COLOURS = {"u_g": 0.25, "r_i": 0.12, "i_z": 0.05}
# z - y for quasars at 1.7 < z < 3.6 is small; used to extend SDSS ugriz to Rubin's y.
_Z_MINUS_Y = 0.05


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
