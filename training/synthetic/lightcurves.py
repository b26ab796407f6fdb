"""Light curves: true brightness (DRW and contaminant models), survey cadences and the error model.

Damped random walk (SCIENCE.md, "Quasar variability")
    The Ornstein-Uhlenbeck process is simulated with its *exact* update on uneven times,
    ``x_i = mu + a (x_{i-1} - mu) + N(0, (SF_inf^2 / 2)(1 - a^2))``, ``a = exp(-dt / tau_obs)``, started
    from the stationary distribution; there is no time step to choose and no discretisation error.
    :func:`drw_unit` evaluates the recursion in closed form with cumulative sums (identical to the
    loop up to rounding; the tests compare them).

Cadences
    ZTF (:func:`ztf_cadence`): a field is observable ~8 months a year (while the Sun is more than
    ~120 deg of right ascension away from it), visited every 1-4 nights (mean ~2.4, the public
    survey's 2-3 night cadence) in g and in r on the same night with probability 0.85 each, a night
    lost to weather with probability 0.25; the 5-sigma depth of each epoch is the nominal m5
    (g 20.8, r 20.6) minus a moon-phase penalty, with 0.25 mag seeing/transparency scatter.
    Rubin (:func:`rubin_cadence`): ~6.5-month seasons, ~45 visit nights per season in pairs of
    visits ~33 min apart, bands drawn with the LSST WFD visit shares (u 7%, g 9%, r 22%, i 22%,
    z 20%, y 20%), nominal single-visit m5 u 23.9, g 25.0, r 24.7, i 24.0, z 23.3, y 22.1.

Error model (Ivezic+2019 form, SCIENCE.md)
    ``sigma^2 = sigma_sys^2 + (0.04 - gamma) x + gamma x^2``, ``x = 10^(0.4 (m - m5))``, gamma = 0.039;
    sigma_sys = 0.015 for ZTF, 0.005 for Rubin (LSST's calibration requirement). Two ways of
    observing, both from the same model:

    * science-image (data-release) photometry, :func:`observe_direct`: Gaussian noise of the Ivezic
      sigma (added in flux, i.e. ``m_obs ~ m + N(0, sigma(m))`` for bright sources), fainter than m5
      -> a non-detection. This is what the reference study's IRSA light curves are.
    * difference-image photometry, :func:`observe_difference`, what alerts carry: the difference
      flux ``f(t) - f_ref`` gets the noise of the *total* flux (source + sky, the Ivezic sigma at the
      total magnitude, in flux units), and an epoch is a detection when ``|diff| >= 5 sigma_f``,
      i.e. when the difference magnitude is brighter than the 5-sigma limit (ZTF ``diffmaglim``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from broker_plugin.alert import LightCurve

from .population import EFF_WAVELENGTH, SimObject

#: AB magnitude of 1 nJy (mag = 31.4 - 2.5 log10 f_nJy), as in broker_plugin.photometry.lightcurve.
NJY_ZEROPOINT: float = 31.4
#: 2.5 / ln 10: relative flux error -> magnitude error.
MAG_PER_RELFLUX: float = 2.5 / math.log(10.0)
#: Ivezic+2019 gamma (sky-limited regime), SCIENCE.md.
GAMMA: float = 0.039
#: Detection threshold on |difference flux| / sigma, the ZTF/Rubin alert threshold.
DETECTION_SNR: float = 5.0

ZTF_M5: dict[str, float] = {"g": 20.8, "r": 20.6}
RUBIN_M5: dict[str, float] = {"u": 23.9, "g": 25.0, "r": 24.7, "i": 24.0, "z": 23.3, "y": 22.1}
ZTF_SIGMA_SYS: float = 0.015
RUBIN_SIGMA_SYS: float = 0.005

#: LSST WFD share of visits per band (10-year totals u 56, g 80, r 184, i 184, z 160, y 160 per field).
RUBIN_BAND_SHARE: dict[str, float] = {"u": 0.068, "g": 0.097, "r": 0.223, "i": 0.223, "z": 0.195, "y": 0.195}
#: Magnitudes of 5-sigma depth lost at full moon, per band (sky brightening is strongest in the blue).
MOON_PENALTY: dict[str, float] = {"u": 0.9, "g": 0.6, "r": 0.35, "i": 0.2, "z": 0.1, "y": 0.05}

#: ZTF survey start (2018-03-17) and Rubin LSST start (2025-10-25), MJD.
ZTF_START_MJD: float = 58194.0
RUBIN_START_MJD: float = 60973.0
#: UT fraction of the day at local midnight: Palomar (UTC-8) 0.333, Cerro Pachon (UTC-4) 0.167.
ZTF_MIDNIGHT: float = 0.333
RUBIN_MIDNIGHT: float = 0.167
_EQUINOX_MJD = 60389.1  # 2024-03-20: the Sun at RA 0
_NEW_MOON_MJD = 60320.5  # 2024-01-11
_SYNODIC = 29.530589


def njy(mag: np.ndarray | float) -> np.ndarray:
    """nJy flux of an AB magnitude."""
    return np.power(10.0, -0.4 * (np.asarray(mag, dtype=np.float64) - NJY_ZEROPOINT))


def mag_from_njy(flux: np.ndarray | float) -> np.ndarray:
    """AB magnitude of a positive nJy flux (NaN otherwise)."""
    f = np.asarray(flux, dtype=np.float64)
    pos = f > 0
    out = np.asarray(NJY_ZEROPOINT - 2.5 * np.log10(np.where(pos, f, 1.0)))
    if out.ndim == 0:
        return out if pos else np.asarray(np.nan)
    out[~pos] = np.nan
    return out


# ------------------------------------------------------------------------------------------------
# Error model
# ------------------------------------------------------------------------------------------------


def mag_error(mag: np.ndarray | float, m5: np.ndarray | float, sigma_sys: float = ZTF_SIGMA_SYS,
              gamma: float = GAMMA) -> np.ndarray:
    """Photometric error (mag) of a point source of magnitude ``mag`` in an image of depth ``m5``.

    Ivezic+2019 eq. 4-5: monotonic in ``mag``, -> ``sigma_sys`` for bright sources, ~0.2 mag at m5.
    """
    x = np.power(10.0, 0.4 * (np.asarray(mag, dtype=np.float64) - np.asarray(m5, dtype=np.float64)))
    return np.sqrt(sigma_sys**2 + (0.04 - gamma) * x + gamma * x * x)


def flux_error(mag: np.ndarray | float, m5: np.ndarray | float, sigma_sys: float = ZTF_SIGMA_SYS) -> np.ndarray:
    """nJy flux error of a source of total magnitude ``mag``: the Ivezic sigma in flux units."""
    return njy(mag) * mag_error(mag, m5, sigma_sys) / MAG_PER_RELFLUX


# ------------------------------------------------------------------------------------------------
# Damped random walk
# ------------------------------------------------------------------------------------------------


def drw_unit(t: np.ndarray, tau: float, rng: np.random.Generator, y0: float | None = None) -> np.ndarray:
    """Unit-variance Ornstein-Uhlenbeck process at sorted times ``t`` (days), exact update.

    ``y_i = a_i y_{i-1} + sqrt(1 - a_i^2) e_i`` with ``a_i = exp(-(t_i - t_{i-1}) / tau)``. Written as
    ``y_i = A_i (y_k + sum_{j=k+1..i} w_j / A_j)`` with ``A_i = exp(-(t_i - t_k) / tau)``, evaluated
    with cumulative sums in chunks spanning at most 200 tau (so that 1/A_j stays finite). ``y0``
    (default: a draw from the stationary N(0, 1)) is the value at ``t[0]``.
    """
    t = np.asarray(t, dtype=np.float64)
    n = t.shape[0]
    out = np.empty(n, dtype=np.float64)
    if n == 0:
        return out
    e = rng.standard_normal(n)
    out[0] = e[0] if y0 is None else y0
    if n == 1:
        return out
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")
    dt = np.diff(t)
    if np.any(dt < 0):
        raise ValueError("drw_unit needs sorted times")
    w = np.sqrt(-np.expm1(-2.0 * dt / tau)) * e[1:]  # sqrt(1 - a^2) without cancellation for small dt
    s = t / tau
    k = 0  # index of the chunk's anchor (its value is known)
    while k < n - 1:
        end = int(np.searchsorted(s, s[k] + 200.0, side="right"))
        end = max(min(end, n), k + 2)
        # (t_j - t_k)/tau >= 0; only a lone point after a >200 tau gap can exceed 200, and there
        # exp(-600) is already 0 to double precision, so clipping changes nothing.
        rel = np.minimum(s[k + 1 : end] - s[k], 600.0)
        inv_a = np.exp(rel)
        acc = np.cumsum(w[k:end - 1] * inv_a)
        out[k + 1 : end] = (out[k] + acc) / inv_a
        k = end - 1
    return out


def drw_loop(t: np.ndarray, tau: float, rng: np.random.Generator, y0: float | None = None) -> np.ndarray:
    """The same process with the plain recursion (reference implementation for tests)."""
    t = np.asarray(t, dtype=np.float64)
    e = rng.standard_normal(t.shape[0])
    out = np.empty_like(t)
    if t.size == 0:
        return out
    out[0] = e[0] if y0 is None else y0
    for i in range(1, t.size):
        a = math.exp(-(t[i] - t[i - 1]) / tau)
        out[i] = a * out[i - 1] + math.sqrt(1.0 - a * a) * e[i]
    return out


def drw_magnitudes(
    t: np.ndarray, tau_obs: float, sf_inf: float, mean_mag: float, rng: np.random.Generator
) -> np.ndarray:
    """One band's DRW light curve in magnitudes: variance SF_inf^2 / 2, covariance decaying as exp(-dt/tau)."""
    return mean_mag + (sf_inf / math.sqrt(2.0)) * drw_unit(t, tau_obs, rng)


#: Days between independent series in one drw_unit call: exp(-gap / tau) < 1e-17 for tau < 2.5e5 d.
_SERIES_GAP = 1.0e7


def correlated_drw(
    times: Mapping[str, np.ndarray],
    tau_obs: float,
    sf_inf: Mapping[str, float],
    mean_mag: Mapping[str, float],
    rho: float,
    rng: np.random.Generator,
) -> dict[str, np.ndarray]:
    """Multi-band DRW: ``y_b = sqrt(rho) common + sqrt(1 - rho) own_b``, all unit OU with one tau.

    The sum of independent OU processes with the same tau is an OU process, so each band is an
    exact DRW with its own SF_inf and mean; ``rho`` is the inter-band correlation at zero lag.
    """
    bands = [b for b in times if len(times[b])]
    out: dict[str, np.ndarray] = {b: np.empty(0) for b in times}
    if not bands:
        return out
    rho = min(max(rho, 0.0), 1.0)
    parts = [np.asarray(times[b], dtype=np.float64) for b in bands]
    sizes = [p.size for p in parts]
    all_t = np.concatenate(parts)
    # One call for every process: the common one at all epochs, then each band's own one, placed
    # _SERIES_GAP days apart. Across such a gap a = exp(-gap/tau) is 0 to double precision, so each
    # series starts from a fresh stationary draw: independent processes, exactly.
    n = all_t.size
    order = np.argsort(all_t, kind="stable")
    series = [all_t[order]]
    own_orders = []
    for k, p in enumerate(parts):
        o = np.argsort(p, kind="stable")
        own_orders.append(o)
        series.append(p[o] + _SERIES_GAP * (k + 1))
    y_all = drw_unit(np.concatenate(series), tau_obs, rng)
    common = np.empty(n)
    common[order] = y_all[:n]
    pos, own_pos = 0, n
    a, b_ = math.sqrt(rho), math.sqrt(1.0 - rho)
    for band, size, o in zip(bands, sizes, own_orders, strict=True):
        own = np.empty(size)
        own[o] = y_all[own_pos : own_pos + size]
        own_pos += size
        y = a * common[pos : pos + size] + b_ * own
        pos += size
        out[band] = mean_mag[band] + (sf_inf[band] / math.sqrt(2.0)) * y
    return out


# ------------------------------------------------------------------------------------------------
# Contaminant light curves (true magnitudes)
# ------------------------------------------------------------------------------------------------


def periodic_mag(t: np.ndarray, mean: float, amp: float, period: float, phase: float, harmonic: float) -> np.ndarray:
    """A pulsator/eclipser-like periodic light curve (fundamental + second harmonic), semi-amplitude ``amp``."""
    ph = 2 * np.pi * (np.asarray(t) / period + phase)
    shape = np.sin(ph) + harmonic * np.sin(2 * ph + 0.7)
    return mean + amp * shape / (1.0 + harmonic)


def sn_mag(t: np.ndarray, band: str, survey: str, p: Mapping[str, float]) -> np.ndarray:
    """Bazin-like supernova light curve in magnitudes (inf before the explosion / when negligible).

    Flux ``~ exp(-(t - t0)/t_fall) / (1 + exp(-(t - t0)/t_rise))``, normalised to ``peak_mag`` at
    maximum; redder bands decline more slowly, and colour reddens linearly after peak.
    """
    lam = EFF_WAVELENGTH[survey][band]
    t_fall = p["t_fall"] * (lam / 6200.0) ** 0.8
    dt = np.asarray(t, dtype=np.float64) - p["t0"]
    with np.errstate(over="ignore"):
        shape = np.exp(-dt / t_fall) / (1.0 + np.exp(-dt / p["t_rise"]))
    # Normalise to unit peak (numerically, on a grid) so that peak_mag is the peak in r.
    grid = np.linspace(-5 * p["t_rise"], 5 * p["t_rise"] + 30, 400)
    peak = np.max(np.exp(-grid / t_fall) / (1.0 + np.exp(-grid / p["t_rise"])))
    colour = (p["gr_peak"] + p["gr_slope"] * np.clip(dt, 0, None)) * (6200.0 - lam) / (6200.0 - 4800.0)
    with np.errstate(divide="ignore"):
        m = p["peak_mag"] - 2.5 * np.log10(np.maximum(shape / peak, 1e-30)) + colour
    return np.where(dt > -10 * p["t_rise"], m, np.inf)


def true_magnitudes(obj: SimObject, survey: str, times: Mapping[str, np.ndarray],
                    rng: np.random.Generator) -> dict[str, np.ndarray]:
    """The object's noiseless magnitude in each band at the given times (inf = no flux)."""
    key = {b: f"{survey}:{b}" for b in times}
    if obj.variability == "drw":
        p = obj.params
        return correlated_drw(times, p["tau_obs"], {b: p["sf_inf"][key[b]] for b in times},
                              {b: obj.mean_mag[key[b]] for b in times}, p["rho"], rng)
    if obj.variability == "periodic":
        p = obj.params
        out = {}
        for b, t in times.items():
            lam = EFF_WAVELENGTH[survey][b]
            amp = p["amp"] * (1.0 + (p["chromatic"] - 1.0) * (6200.0 - lam) / (6200.0 - 4800.0))
            out[b] = periodic_mag(t, obj.mean_mag[key[b]], max(amp, 0.0), p["period"], p["phase"], p["harmonic"])
        return out
    if obj.variability == "sn":
        return {b: sn_mag(t, b, survey, obj.params) for b, t in times.items()}
    # constant stars and bogus: flat
    return {b: np.full(np.asarray(t).shape, obj.mean_mag[key[b]]) for b, t in times.items()}


# ------------------------------------------------------------------------------------------------
# Cadences
# ------------------------------------------------------------------------------------------------


def sun_ra_deg(mjd: np.ndarray | float) -> np.ndarray:
    """Approximate right ascension of the Sun (deg): 0 at the March equinox, +0.9856 deg/day."""
    return (360.0 * (np.asarray(mjd, dtype=np.float64) - _EQUINOX_MJD) / 365.2422) % 360.0


def moon_brightness(mjd: np.ndarray | float) -> np.ndarray:
    """0 at new moon, 1 at full moon (illuminated fraction from the synodic phase)."""
    phase = ((np.asarray(mjd, dtype=np.float64) - _NEW_MOON_MJD) / _SYNODIC) % 1.0
    return 0.5 * (1.0 - np.cos(2 * np.pi * phase))


def observable(mjd: np.ndarray, ra: float, half_season_deg: float) -> np.ndarray:
    """Nights on which a field at ``ra`` is in its observing season (opposition +- half_season_deg)."""
    d = (ra - sun_ra_deg(mjd) - 180.0 + 180.0) % 360.0 - 180.0
    return np.abs(d) < half_season_deg


def opposition_ra(mjd: float) -> float:
    """RA (deg) on the meridian at local midnight on ``mjd``: the best-placed field that night."""
    return float((sun_ra_deg(mjd) + 180.0) % 360.0)


@dataclass(slots=True)
class Cadence:
    """Epochs of one object in one survey: per band, times (MJD) and 5-sigma depths."""

    survey: str
    mjd: dict[str, np.ndarray]
    m5: dict[str, np.ndarray]
    #: The forced epoch (band, mjd) if one was requested, e.g. the night of an alert.
    forced: tuple[str, float] | None = None
    extra: dict[str, np.ndarray] = field(default_factory=dict)

    def n_epochs(self) -> int:
        return int(sum(v.size for v in self.mjd.values()))


def _revisit_nights(rng: np.random.Generator, n0: int, n1: int, gaps: np.ndarray, gap_p: np.ndarray) -> np.ndarray:
    """Night numbers from n0 to n1 with revisit gaps drawn from ``gaps`` with probabilities ``gap_p``."""
    span = max(n1 - n0, 1)
    k = int(span / float(np.dot(gaps, gap_p)) * 1.3) + 8
    steps = gaps[np.searchsorted(np.cumsum(gap_p), rng.random(k) * gap_p.sum(), side="right").clip(0, gaps.size - 1)]
    nights = n0 + int(rng.integers(0, gaps.max())) + np.cumsum(steps) - steps[0]
    return nights[nights <= n1]


def ztf_cadence(
    rng: np.random.Generator,
    ra: float,
    t_start: float,
    t_end: float,
    *,
    force: tuple[str, float] | None = None,
    m5: Mapping[str, float] | None = None,
    weather_loss: float = 0.25,
    both_bands_p: float = 0.85,
    half_season_deg: float = 120.0,
) -> Cadence:
    """ZTF-like g/r epochs between ``t_start`` and ``t_end`` (MJD) for a field at ``ra``.

    ``force = (band, mjd)`` guarantees an epoch at exactly that time and band (the alert's epoch).
    """
    m5n = dict(ZTF_M5 if m5 is None else m5)
    n0, n1 = math.floor(t_start), math.floor(t_end)
    nights = _revisit_nights(rng, n0, n1, _ZTF_GAPS, _ZTF_GAP_P)
    u = rng.random((6, nights.size))
    ok = observable(nights + ZTF_MIDNIGHT, ra, half_season_deg) & (u[0] >= weather_loss)
    nights, u = nights[ok], u[:, ok]
    # Times: within ~3.5 h of local midnight; g and r of one night 30-90 min apart, in either order;
    # each band taken with probability both_bands_p (at least one of them).
    base = nights + ZTF_MIDNIGHT - 0.145 + 0.245 * u[1]
    sep = 0.02 + 0.0425 * u[2]
    first_g = u[3] < 0.5
    has_g = u[4] < both_bands_p
    has_r = u[5] < both_bands_p
    none = ~(has_g | has_r)
    has_g |= none & first_g
    has_r |= none & ~first_g
    times = {"g": np.where(first_g, base, base + sep)[has_g], "r": np.where(first_g, base + sep, base)[has_r]}
    out_t: dict[str, np.ndarray] = {}
    out_m5: dict[str, np.ndarray] = {}
    for b in ("g", "r"):
        t = times[b]
        t = t[(t >= t_start) & (t <= t_end)]
        if force is not None and force[0] == b:
            t = np.sort(np.append(t[np.abs(t - force[1]) > 0.5], force[1]))  # replaces that night's visit
        depth = m5n[b] - MOON_PENALTY[b] * moon_brightness(t) + np.clip(rng.normal(0.0, 0.25, t.size), -0.8, 0.5)
        out_t[b], out_m5[b] = t, depth
    return Cadence("ztf", out_t, out_m5, force)


_ZTF_GAPS = np.array([1, 2, 3, 4])
_ZTF_GAP_P = np.array([0.15, 0.45, 0.30, 0.10])


def rubin_cadence(
    rng: np.random.Generator,
    ra: float,
    t_start: float,
    t_end: float,
    *,
    force: tuple[str, float] | None = None,
    m5: Mapping[str, float] | None = None,
    weather_loss: float = 0.2,
    nights_per_season: float = 45.0,
    half_season_deg: float = 100.0,
) -> Cadence:
    """Rubin/LSST WFD-like ugrizy epochs: visit pairs on ~45 nights per ~6.5-month season."""
    m5n = dict(RUBIN_M5 if m5 is None else m5)
    bands = list(RUBIN_BAND_SHARE)
    share = np.array([RUBIN_BAND_SHARE[b] for b in bands])
    share = share / share.sum()
    n0, n1 = math.floor(t_start), math.floor(t_end)
    all_nights = np.arange(n0, n1 + 1)
    season = observable(all_nights + RUBIN_MIDNIGHT, ra, half_season_deg)
    season_len = 365.25 * half_season_deg / 180.0
    p_night = min(1.0, nights_per_season / season_len / (1.0 - weather_loss))
    pick = season & (rng.random(all_nights.size) < p_night) & (rng.random(all_nights.size) >= weather_loss)
    nights = all_nights[pick]
    n = nights.size
    t1 = nights + RUBIN_MIDNIGHT + rng.uniform(-0.2, 0.2, n)
    t2 = t1 + rng.uniform(0.018, 0.028, n)  # ~25-40 min later
    b1 = rng.choice(len(bands), size=n, p=share)
    same = rng.random(n) < 0.3
    b2 = np.where(same, b1, rng.choice(len(bands), size=n, p=share))
    times = np.concatenate([t1, t2])
    bidx = np.concatenate([b1, b2])
    out_t: dict[str, np.ndarray] = {}
    out_m5: dict[str, np.ndarray] = {}
    for j, b in enumerate(bands):
        t = times[(bidx == j) & (times >= t_start) & (times <= t_end)]
        if force is not None and force[0] == b:
            t = t[np.abs(t - force[1]) > 0.01]
            t = np.append(t, force[1])
        t = np.sort(t)
        depth = m5n[b] - MOON_PENALTY[b] * moon_brightness(t) + np.clip(rng.normal(0.0, 0.2, t.size), -0.7, 0.4)
        out_t[b], out_m5[b] = t, depth
    return Cadence("lsst", out_t, out_m5, force)


# ------------------------------------------------------------------------------------------------
# Observing
# ------------------------------------------------------------------------------------------------


def _flux_sigma(f_tot: np.ndarray, m5: np.ndarray, sigma_sys: float) -> np.ndarray:
    """The Ivezic error in flux units: with ``f5 = flux(m5)``, ``x = f5 / f``,
    ``sigma_f = f sigma_m / 1.0857 = sqrt((sigma_sys f)^2 + (0.04 - gamma) f f5 + gamma f5^2) / 1.0857``."""
    f5 = njy(m5)
    return np.sqrt((sigma_sys * f_tot) ** 2 + (0.04 - GAMMA) * f_tot * f5 + GAMMA * f5 * f5) / MAG_PER_RELFLUX


def observe_direct(true_mag: np.ndarray, m5: np.ndarray, rng: np.random.Generator,
                   sigma_sys: float = ZTF_SIGMA_SYS) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Science-image photometry: observed magnitude, its error, and detected (``m_obs < m5``).

    The noise is added in flux (the Ivezic error converted exactly), which equals Gaussian noise of
    ``sigma(m)`` in magnitude for bright sources and stays meaningful for sources near or below the
    limit; the reported error is ``1.0857 sigma_f / f_obs``, as a pipeline would report it.
    """
    true_mag = np.asarray(true_mag, dtype=np.float64)
    finite = np.isfinite(true_mag)
    f_true = njy(np.where(finite, true_mag, 99.0))
    f_true[~finite] = 0.0
    sig = _flux_sigma(np.maximum(f_true, 1e-3), m5, sigma_sys)
    f_obs = f_true + sig * rng.standard_normal(f_true.shape)
    obs = mag_from_njy(f_obs)
    det = np.isfinite(obs) & (obs < m5)
    err = np.where(f_obs > 0, MAG_PER_RELFLUX * sig / np.where(f_obs > 0, f_obs, 1.0), np.nan)
    return obs, err, det


@dataclass(slots=True)
class DiffPhotometry:
    """Difference-image photometry of one band: everything a packet needs, per epoch."""

    mjd: np.ndarray
    m5: np.ndarray
    true_mag: np.ndarray
    ref_flux: float  # nJy, the template's flux of the source (what ZTF magnr / Rubin templateFlux says)
    diff_flux: np.ndarray  # nJy, observed (noisy) difference flux
    flux_err: np.ndarray  # nJy
    detected: np.ndarray  # |diff| >= 5 sigma

    @property
    def total_flux(self) -> np.ndarray:
        """Observed total flux = template + observed difference (the DC flux), nJy."""
        return self.ref_flux + self.diff_flux

    @property
    def snr(self) -> np.ndarray:
        return self.diff_flux / self.flux_err


def observe_difference(true_mag: np.ndarray, ref_flux: float, m5: np.ndarray, rng: np.random.Generator,
                       sigma_sys: float = ZTF_SIGMA_SYS, mjd: np.ndarray | None = None,
                       floor_flux: float = 0.0) -> DiffPhotometry:
    """Difference-image photometry against a template holding ``ref_flux`` (nJy) of the source.

    The noise is that of the total flux in the science image (source + ``floor_flux``, e.g. an
    underlying host, + sky), so bright sources get a sigma_sys-limited difference error, as real
    subtractions do. In flux units the Ivezic form reads, with ``f5 = flux(m5)`` and ``x = f5 / f``:
    ``sigma_f = sqrt((sigma_sys f)^2 + (0.04 - gamma) f f5 + gamma f5^2) / 1.0857`` (no logarithms).
    """
    true_mag = np.asarray(true_mag, dtype=np.float64)
    finite = np.isfinite(true_mag)
    f_true = njy(np.where(finite, true_mag, 99.0))
    f_true[~finite] = 0.0
    sig = _flux_sigma(np.maximum(f_true + floor_flux, 1e-3), m5, sigma_sys)
    diff = f_true + floor_flux - ref_flux + sig * rng.standard_normal(f_true.shape)
    det = np.abs(diff) >= DETECTION_SNR * sig
    t = np.asarray(mjd) if mjd is not None else np.zeros_like(true_mag)
    return DiffPhotometry(t, np.asarray(m5, dtype=np.float64), true_mag, float(ref_flux), diff, sig, det)


def to_lightcurve(band: str, mjd: np.ndarray, mag: np.ndarray, mag_err: np.ndarray, kind: str = "dc") -> LightCurve:
    """A :class:`broker_plugin.alert.LightCurve` (sorted, finite) from magnitudes."""
    mjd = np.asarray(mjd, dtype=np.float64)
    mag = np.asarray(mag, dtype=np.float64)
    mag_err = np.asarray(mag_err, dtype=np.float64)
    ok = np.isfinite(mjd) & np.isfinite(mag) & np.isfinite(mag_err) & (mag_err > 0)
    order = np.argsort(mjd[ok], kind="stable")
    t, m, e = mjd[ok][order], mag[ok][order], mag_err[ok][order]
    f = njy(m)
    return LightCurve(band, t, m, e, f, f * e / MAG_PER_RELFLUX, kind)


# ------------------------------------------------------------------------------------------------
# One object seen by one survey
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class SurveyData:
    """An object observed by a survey up to ``t_end``: cadence, per-band difference photometry, template.

    ``ref_window`` is the time span of the template (reference) images, ``n_ref_frames`` how many
    were coadded; the template flux of each band is the object's mean flux over those frames, so a
    variable quasar's template sits at a random point of its own light curve, as in real surveys.
    ``host_flux`` is the host light under the PSF at the source position (nJy, per band; 0 for
    point sources), present in both template and science images.
    """

    survey: str
    cadence: Cadence
    phot: dict[str, DiffPhotometry]
    ref_window: tuple[float, float]
    n_ref_frames: int
    host_flux: dict[str, float]
    sigma_sys: float

    def detected_epochs(self) -> list[tuple[float, str]]:
        """(mjd, band) of every detection, time ordered."""
        out = [(float(t), b) for b, p in self.phot.items() for t in p.mjd[p.detected]]
        return sorted(out)


def host_psf_flux(obj: SimObject, survey: str, band: str) -> float:
    """Host light inside the PSF at the source (nJy): a fraction of the host that falls with offset."""
    if obj.host_mag is None:
        return 0.0
    # The PSF sees ~1.2 mag less than the total host at the nucleus, less again further out.
    m = obj.host_mag + 1.2 + 0.5 * obj.host_offset_arcsec
    if survey == "lsst":
        m += 0.3  # sharper PSF: less host light inside it
    colour = 0.4 * (6200.0 - EFF_WAVELENGTH[survey][band]) / 1400.0  # red hosts: g fainter than r
    return float(njy(m + colour))


def simulate_survey(
    obj: SimObject,
    survey: str,
    t_end: float,
    rng: np.random.Generator,
    *,
    baseline_days: float = 365.0,
    force: tuple[str, float] | None = None,
    sigma_sys: float | None = None,
) -> SurveyData:
    """Observe ``obj`` with ``survey`` from ``t_end - baseline_days`` to ``t_end`` (difference imaging).

    The template is built from ``n_ref_frames`` epochs in an early window (ZTF: within the first
    ~600 days of the survey; Rubin: its first ~120 days), simulated jointly with the light curve so
    that the template flux and the light curve come from the same realisation.
    """
    sig_sys = (ZTF_SIGMA_SYS if survey == "ztf" else RUBIN_SIGMA_SYS) if sigma_sys is None else sigma_sys
    start = ZTF_START_MJD if survey == "ztf" else RUBIN_START_MJD
    t_start = max(t_end - baseline_days, start)
    if survey == "ztf":
        cad = ztf_cadence(rng, obj.ra, t_start, t_end, force=force)
        r0 = start + rng.uniform(0.0, 450.0)
        ref_window = (r0, r0 + rng.uniform(20.0, 150.0))
        n_ref = int(rng.integers(15, 41))
    else:
        cad = rubin_cadence(rng, obj.ra, t_start, t_end, force=force)
        r0 = start + rng.uniform(0.0, 60.0)
        ref_window = (r0, r0 + rng.uniform(10.0, 60.0))
        n_ref = int(rng.integers(3, 13))
    ref_window = (min(ref_window[0], t_end - 1.0), min(ref_window[1], t_end - 0.5))
    bands = list(cad.mjd)
    ref_t = {b: np.sort(rng.uniform(ref_window[0], ref_window[1], n_ref)) for b in bands}
    times = {b: np.concatenate([ref_t[b], cad.mjd[b]]) for b in bands}
    if obj.variability == "sn":
        mags = {b: sn_mag(times[b], b, survey, obj.params) for b in bands}
    else:
        mags = true_magnitudes(obj, survey, times, rng)
    phot: dict[str, DiffPhotometry] = {}
    host = {b: host_psf_flux(obj, survey, b) for b in bands}
    for b in bands:
        m_ref, m_epoch = mags[b][:n_ref], mags[b][n_ref:]
        f_ref_frames = np.where(np.isfinite(m_ref), njy(np.where(np.isfinite(m_ref), m_ref, 99.0)), 0.0)
        if obj.variability == "bogus":
            # An artefact: no source anywhere except a spurious blob at the forced epoch.
            f_ref_frames = np.zeros_like(f_ref_frames)
            m_epoch = np.full(m_epoch.shape, np.inf)
        ref_flux = float(f_ref_frames.mean()) + host[b] if n_ref else host[b]
        p = observe_difference(m_epoch, ref_flux, cad.m5[b], rng, sig_sys, mjd=cad.mjd[b], floor_flux=host[b])
        if obj.variability == "bogus" and force is not None and force[0] == b:
            j = int(np.argmin(np.abs(p.mjd - force[1])))
            f_art = float(njy(obj.mean_mag[f"{survey}:{b}"]))
            p.diff_flux[j] = obj.params["sign"] * f_art
            p.detected[j] = abs(p.diff_flux[j]) >= DETECTION_SNR * p.flux_err[j]
        phot[b] = p
    return SurveyData(survey, cad, phot, ref_window, n_ref, host, sig_sys)
