"""Light curves: true brightness (DRW and contaminant models), survey cadences and the error model.

The true brightness models live in :mod:`.variability` and the cadences in :mod:`.cadences`;
both are re-exported here, the module callers have always imported them from.

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
from dataclasses import dataclass

import numpy as np

from broker_plugin.alert import LightCurve

from .cadences import (
    MOON_PENALTY,
    RUBIN_BAND_SHARE,
    RUBIN_M5,
    RUBIN_MIDNIGHT,
    RUBIN_START_MJD,
    ZTF_M5,
    ZTF_MIDNIGHT,
    ZTF_START_MJD,
    Cadence,
    moon_brightness,
    observable,
    opposition_ra,
    rubin_cadence,
    sun_ra_deg,
    ztf_cadence,
)
from .population import EFF_WAVELENGTH, SimObject
from .variability import (
    correlated_drw,
    drw_loop,
    drw_magnitudes,
    drw_unit,
    periodic_mag,
    sn_mag,
    true_magnitudes,
)

__all__ = [
    "DETECTION_SNR", "GAMMA", "MAG_PER_RELFLUX", "MOON_PENALTY", "NJY_ZEROPOINT", "RUBIN_BAND_SHARE", "RUBIN_M5",
    "RUBIN_MIDNIGHT", "RUBIN_SIGMA_SYS", "RUBIN_START_MJD", "ZTF_M5", "ZTF_MIDNIGHT", "ZTF_SIGMA_SYS",
    "ZTF_START_MJD", "Cadence", "DiffPhotometry", "SurveyData", "correlated_drw", "drw_loop", "drw_magnitudes",
    "drw_unit", "flux_error", "host_psf_flux", "mag_error", "mag_from_njy", "moon_brightness", "njy",
    "observable", "observe_difference", "observe_direct", "opposition_ra", "periodic_mag", "rubin_cadence",
    "simulate_survey", "sn_mag", "sun_ra_deg", "to_lightcurve", "true_magnitudes", "ztf_cadence",
]

#: AB magnitude of 1 nJy (mag = 31.4 - 2.5 log10 f_nJy), as in broker_plugin.photometry.lightcurve.
NJY_ZEROPOINT: float = 31.4
#: 2.5 / ln 10: relative flux error -> magnitude error.
MAG_PER_RELFLUX: float = 2.5 / math.log(10.0)
#: Ivezic+2019 gamma (sky-limited regime), SCIENCE.md.
GAMMA: float = 0.039
#: Detection threshold on |difference flux| / sigma, the ZTF/Rubin alert threshold.
DETECTION_SNR: float = 5.0
ZTF_SIGMA_SYS: float = 0.015
RUBIN_SIGMA_SYS: float = 0.005


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
