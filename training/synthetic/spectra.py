"""Synthetic SDSS-like quasar spectra of the C IV window, BAL troughs, and the balnicity index.

Model (SCIENCE.md, "Synthetic BAL spectra")
    * Grid: SDSS log-linear sampling, ``loglam = 3.5563 + 1e-4 i`` (3600-10400 A observed), kept where
      the rest wavelength is within ``rest_range`` (default 1200-2000 A, the C IV window); at the low
      end of the redshift range the blue cut of the spectrograph trims the window, as in real data.
    * Continuum: ``f_nu ~ nu^alpha`` with alpha = -0.5 (+- 0.2 scatter), i.e. ``f_lambda ~ lambda^(-2 - alpha)``,
      reddened for BALs by the same SMC-like E(B-V) as their light curves (one object, one dust).
    * Broad emission, Gaussian in velocity: C IV 1549.06 (FWHM 4000-6000 km/s, EW ~30 A), Si IV+O IV]
      1397, C III] 1908.73, He II 1640, N V 1240 and Ly-alpha 1215.67 (its red wing enters at 1200 A).
    * Absorption: the unabsorbed spectrum times ``prod_k (1 - D_k P_k(v))`` with the outflow velocity
      ``v = c (R^2 - 1)/(R^2 + 1)``, ``R = lambda_line (1 + z) / lambda`` (positive = blueshifted).
      BAL troughs are centred 3000-25000 km/s, width 2000 + log-normal (median 3500 km/s), depth
      0.2-0.9, flat-bottomed with 250 km/s soft edges; one (70%), two (25%) or three troughs; a
      Si IV trough at the same velocity in half of them. 10% of non-BALs get a narrow (<2000 km/s)
      mini-BAL/NAL-like trough, so BI = 0 does not mean "no absorption".
    * Noise: S/N per pixel 2-10 (uniform) at the continuum level, worse at the blue and red ends;
      random masked pixels (single pixels, a bad-column run, the 5577 A sky line) with ``ivar = 0``
      and a non-zero SDSS ``and_mask`` bit.

Labelling
    The label is ``BI > 0`` with the Weymann+1991 balnicity index measured on the *noiseless*
    normalised spectrum (the transmission), i.e. the truth a careful visual inspection recovers.
    Troughs of BAL objects are redrawn until that holds and mini-BAL troughs until it does not, so
    the drawn class and the BI label agree. ``bi_civ_observed`` (BI of the noisy spectrum, 5-pixel
    smoothed, divided by the true unabsorbed model) is kept in the truth to show label noise.

Balnicity index conventions (:func:`balnicity_index`)
    ``"weymann"`` (default): C switches on only after the flux has stayed below 0.9 for 2000 km/s
    counting from the high-velocity end, so the first 2000 km/s of every trough do not contribute;
    this is Weymann+1991's wording and how catalogue BI values are computed. ``"full_run"``: C = 1
    over the whole of every run at least 2000 km/s long (SCIENCE.md's shorthand). Both give BI = 0
    for a trough narrower than 2000 km/s; they differ by 2000 km/s x the mean deficit per trough.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .balnicity import (
    BI_MIN_WIDTH,
    BI_THRESHOLD,
    BI_VMAX,
    BI_VMIN,
    C_KMS,
    LAM_CIV,
    Convention,
    balnicity_index,
    balnicity_index_wave,
    outflow_velocity,
    velocity_from_rest,
)

__all__ = [
    "BI_MIN_WIDTH", "BI_THRESHOLD", "BI_VMAX", "BI_VMIN", "BRIGHTSKY", "C_KMS", "DLOGLAM", "EMISSION_LINES",
    "FULLREJECT", "LAM_CIII", "LAM_CIV", "LAM_HEII", "LAM_LYA", "LAM_NV", "LAM_SIIV", "LOGLAM0", "LOGLAM_MAX",
    "NODATA", "Convention", "Spectrum", "Trough", "balnicity_index", "balnicity_index_wave", "draw_bal_troughs",
    "draw_narrow_trough", "generate_spectrum", "observed_grid", "outflow_velocity", "transmission", "troughs_bi",
    "unabsorbed_model", "velocity_from_rest", "write_spec_lite",
]

LAM_SIIV: float = 1396.76
LAM_CIII: float = 1908.73
LAM_LYA: float = 1215.67
LAM_NV: float = 1240.14
LAM_HEII: float = 1640.42

#: SDSS coadd sampling: log10(lambda) step and the first pixel used here (3600 A).
DLOGLAM: float = 1e-4
LOGLAM0: float = 3.5563
LOGLAM_MAX: float = math.log10(10400.0)

#: SDSS pixel mask bits used here (sdss ``SPPIXMASK``): FULLREJECT, BRIGHTSKY, NODATA.
FULLREJECT: int = 1 << 18
BRIGHTSKY: int = 1 << 23
NODATA: int = 1 << 24

#: (rest wavelength, median rest EW [A], FWHM range [km/s]) of the broad emission lines.
EMISSION_LINES: tuple[tuple[float, float, tuple[float, float]], ...] = (
    (LAM_LYA, 70.0, (4000.0, 7000.0)),
    (LAM_NV, 12.0, (4000.0, 7000.0)),
    (LAM_SIIV, 8.0, (4000.0, 7000.0)),
    (LAM_CIV, 30.0, (4000.0, 6000.0)),
    (LAM_HEII, 2.0, (3000.0, 6000.0)),
    (LAM_CIII, 20.0, (4000.0, 7000.0)),
)

# ------------------------------------------------------------------------------------------------
# Troughs
# ------------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Trough:
    """One absorption trough: centre and full width (km/s), maximum depth, and which ion."""

    v_center: float
    width: float
    depth: float
    line: float = LAM_CIV
    edge: float = 250.0

    def profile(self, v: np.ndarray) -> np.ndarray:
        """Flat-bottomed profile P(v) in [0, 1] with tanh edges of softness ``edge`` km/s."""
        lo, hi = self.v_center - 0.5 * self.width, self.v_center + 0.5 * self.width
        return 0.5 * (np.tanh((v - lo) / self.edge) - np.tanh((v - hi) / self.edge))

    def as_dict(self) -> dict[str, float]:
        return {"v_center": self.v_center, "width": self.width, "depth": self.depth, "line": self.line}


def transmission(wave_obs: np.ndarray, z: float, troughs: list[Trough]) -> np.ndarray:
    """Product of ``1 - D P(v)`` over the troughs, each in its own ion's velocity frame."""
    t = np.ones_like(np.asarray(wave_obs, dtype=np.float64))
    for tr in troughs:
        t *= 1.0 - tr.depth * tr.profile(outflow_velocity(wave_obs, z, tr.line))
    return t


_V_FINE = np.arange(0.0, 30000.0, 10.0)


def troughs_bi(troughs: list[Trough], convention: Convention = "weymann") -> float:
    """BI of a set of troughs on a fine velocity grid (C IV frame; Si IV troughs ignored, as BI_CIV)."""
    civ = [t for t in troughs if t.line == LAM_CIV]
    if not civ:
        return 0.0
    f = np.ones_like(_V_FINE)
    for t in civ:
        f *= 1.0 - t.depth * t.profile(_V_FINE)
    return balnicity_index(_V_FINE, f, convention=convention)


def draw_bal_troughs(rng: np.random.Generator, *, siiv_fraction: float = 0.5, max_tries: int = 50) -> list[Trough]:
    """C IV (+ Si IV) BAL troughs whose noiseless BI is positive (redrawn until it is)."""
    for _ in range(max_tries):
        k = int(rng.choice([1, 2, 3], p=[0.70, 0.25, 0.05]))
        troughs: list[Trough] = []
        for _ in range(k):
            width = 2000.0 + float(np.exp(rng.normal(math.log(1500.0), 0.6)))
            width = min(width, 15000.0)
            v_c = float(rng.uniform(BI_VMIN, BI_VMAX))
            depth = float(rng.uniform(0.2, 0.9))
            troughs.append(Trough(v_c, width, depth))
            if rng.random() < siiv_fraction:
                troughs.append(Trough(v_c, width, depth * float(rng.uniform(0.4, 1.0)), LAM_SIIV))
        if troughs_bi(troughs) > 0:
            return troughs
    return [Trough(10000.0, 5000.0, 0.6)]  # a textbook BAL; reached with negligible probability


def draw_narrow_trough(rng: np.random.Generator, max_tries: int = 50) -> list[Trough]:
    """A mini-BAL / NAL-like C IV trough narrower than 2000 km/s whose BI is 0 (redrawn until it is)."""
    for _ in range(max_tries):
        t = [Trough(float(rng.uniform(BI_VMIN, BI_VMAX)), float(rng.uniform(300.0, 1500.0)),
                    float(rng.uniform(0.2, 0.8)), edge=150.0)]
        if troughs_bi(t) == 0.0 and troughs_bi(t, "full_run") == 0.0:
            return t
    return []


# ------------------------------------------------------------------------------------------------
# Spectra
# ------------------------------------------------------------------------------------------------


@dataclass(slots=True)
class Spectrum:
    """A spec-lite-like coadd: ``loglam`` (log10 A), ``flux`` (1e-17 erg/s/cm2/A), ``ivar``, ``and_mask``.

    ``truth`` holds what generated it (troughs, S/N, BI of the noiseless and of the noisy spectrum);
    ``model`` (noiseless flux) and ``unabsorbed`` (continuum x emission) are kept only on request.
    """

    z: float
    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    is_bal: bool
    bi_civ: float
    truth: dict[str, Any] = field(default_factory=dict)
    model: np.ndarray | None = None
    unabsorbed: np.ndarray | None = None

    @property
    def meta(self) -> dict[str, Any]:
        """Identifiers in the form :class:`training.spectra.Spectrum` carries (duck-type compatible)."""
        return {"z": self.z, "synthetic": True, "bi_civ": self.bi_civ}

    @property
    def wave(self) -> np.ndarray:
        return np.power(10.0, self.loglam.astype(np.float64))

    @property
    def wave_rest(self) -> np.ndarray:
        return self.wave / (1.0 + self.z)

    def __len__(self) -> int:
        return int(self.loglam.shape[0])


def observed_grid(z: float, rest_range: tuple[float, float] = (1200.0, 2000.0)) -> np.ndarray:
    """SDSS loglam pixels (float64) whose rest wavelength lies in ``rest_range`` and within 3600-10400 A."""
    lo = max(math.log10(rest_range[0] * (1.0 + z)), LOGLAM0)
    hi = min(math.log10(rest_range[1] * (1.0 + z)), LOGLAM_MAX)
    i0 = math.ceil((lo - LOGLAM0) / DLOGLAM - 1e-9)
    i1 = math.floor((hi - LOGLAM0) / DLOGLAM + 1e-9)
    return LOGLAM0 + DLOGLAM * np.arange(i0, i1 + 1, dtype=np.float64)


def _ab_flambda_1e17(mag: float, wave: float) -> float:
    """f_lambda (1e-17 erg/s/cm2/A) of an AB magnitude at ``wave`` A."""
    f_nu = 10.0 ** (-0.4 * (mag + 48.6))
    return f_nu * 2.99792458e18 / wave**2 / 1e-17


def unabsorbed_model(wave_obs: np.ndarray, z: float, rng: np.random.Generator, *, r_mag: float = 19.5,
                     ebv: float = 0.0, alpha_nu: float | None = None) -> tuple[np.ndarray, dict[str, Any]]:
    """Continuum x (1 + emission) in 1e-17 units, normalised to ``r_mag`` at 6200 A observed."""
    from .population import smc_extinction  # local import keeps module import order simple

    wr = wave_obs / (1.0 + z)
    alpha = float(rng.normal(-0.5, 0.2)) if alpha_nu is None else alpha_nu
    cont = (wr / 1549.06) ** (-2.0 - alpha)
    if ebv > 0:
        cont = cont * np.power(10.0, -0.4 * smc_extinction(wr, ebv))
    lines = np.zeros_like(wr)
    line_truth = []
    for lam, ew_med, (fw_lo, fw_hi) in EMISSION_LINES:
        ew = ew_med * float(np.exp(rng.normal(0.0, 0.25)))
        fwhm = float(rng.uniform(fw_lo, fw_hi))
        sigma = lam * fwhm / C_KMS / 2.3548
        if wr[0] - 5 * sigma > lam or wr[-1] + 5 * sigma < lam:
            continue
        # Emission on top of a unit continuum at the line: EW (A) / (sigma sqrt(2 pi)).
        lines += ew / (sigma * math.sqrt(2 * math.pi)) * np.exp(-0.5 * ((wr - lam) / sigma) ** 2)
        line_truth.append({"line": lam, "ew": ew, "fwhm": fwhm})
    model = cont * (1.0 + lines)
    # Normalise: continuum level matching r_mag at 6200 A (extrapolated if outside the grid).
    wr_norm = 6200.0 / (1.0 + z)
    cont_norm = (wr_norm / 1549.06) ** (-2.0 - alpha)
    if ebv > 0:
        cont_norm *= 10.0 ** (-0.4 * float(smc_extinction(wr_norm, ebv)))
    scale = _ab_flambda_1e17(r_mag, 6200.0) / cont_norm
    return model * scale, {"alpha_nu": alpha, "lines": line_truth}


def _draw_troughs(rng: np.random.Generator, is_bal: bool, mini_bal_fraction: float,
                  siiv_fraction: float) -> list[Trough]:
    """BAL troughs, or (for a non-BAL, with probability ``mini_bal_fraction``) one narrow trough."""
    if is_bal:
        return draw_bal_troughs(rng, siiv_fraction=siiv_fraction)
    if rng.random() < mini_bal_fraction:
        return draw_narrow_trough(rng)
    return []


def _noise_sigma(wave: np.ndarray, base: np.ndarray, s2n: float) -> np.ndarray:
    """Per-pixel noise: continuum / S/N, worse at both ends of the spectrograph and at [O I] 5577."""
    cont_level = float(np.median(base))
    shape = 1.0 + 1.5 * np.exp(-(wave - 3600.0) / 250.0) + 1.0 * np.exp((wave - 10400.0) / 500.0)
    shape += 2.0 * np.exp(-0.5 * ((wave - 5577.3) / 3.0) ** 2)  # [O I] sky line residuals
    return cont_level / s2n * shape


def _draw_and_mask(wave: np.ndarray, rng: np.random.Generator, mask_fraction_max: float) -> np.ndarray:
    """An SDSS-like AND_MASK: scattered rejected pixels, sometimes a run without data, sometimes
    the bright [O I] sky line flagged."""
    and_mask = np.zeros(wave.shape, dtype=np.int32)
    n = wave.size
    frac = float(rng.uniform(0.0, mask_fraction_max))
    and_mask[rng.random(n) < frac] |= FULLREJECT
    if rng.random() < 0.3:
        run = int(rng.integers(5, 41))
        s = int(rng.integers(0, max(n - run, 1)))
        and_mask[s : s + run] |= NODATA
    sky = np.abs(wave - 5577.3) < 2.5
    if rng.random() < 0.5:
        and_mask[sky] |= BRIGHTSKY
    return and_mask


def _observed_bi(wave: np.ndarray, z: float, flux: np.ndarray, base: np.ndarray, masked: np.ndarray) -> float:
    """BI of what an observer sees: noisy flux / true unabsorbed model, 5-pixel smoothing, masked
    pixels interpolated (NaN, hence BI of no pixels, when almost everything is masked)."""
    n = wave.size
    good = ~masked
    obs_norm = np.full(n, np.nan)
    if good.sum() > 5:
        ratio = np.interp(np.arange(n), np.flatnonzero(good), (flux / base)[good])
        obs_norm = np.convolve(ratio, np.ones(5) / 5.0, mode="same")
    return balnicity_index(outflow_velocity(wave, z), obs_norm)


def generate_spectrum(
    z: float,
    is_bal: bool,
    rng: np.random.Generator,
    *,
    r_mag: float = 19.5,
    ebv: float = 0.0,
    snr: float | None = None,
    snr_range: tuple[float, float] = (2.0, 10.0),
    rest_range: tuple[float, float] = (1200.0, 2000.0),
    mini_bal_fraction: float = 0.1,
    siiv_fraction: float = 0.5,
    mask_fraction_max: float = 0.03,
    keep_model: bool = True,
    troughs: list[Trough] | None = None,
) -> Spectrum:
    """One synthetic spectrum of a quasar at redshift ``z`` (BAL troughs if ``is_bal``).

    ``troughs`` overrides the random draw (then the label is whatever their BI says).
    """
    loglam = observed_grid(z, rest_range)
    if loglam.size < 10:
        raise ValueError(f"z = {z} leaves no C IV window inside 3600-10400 A")
    wave = np.power(10.0, loglam)
    base, model_truth = unabsorbed_model(wave, z, rng, r_mag=r_mag, ebv=ebv)
    if troughs is None:
        troughs = _draw_troughs(rng, is_bal, mini_bal_fraction, siiv_fraction)
    trans = transmission(wave, z, troughs)
    model = base * trans
    # Noiseless BI on the normalised spectrum, over the full velocity range (not only the observed pixels).
    bi = troughs_bi(troughs)
    s2n = float(rng.uniform(*snr_range)) if snr is None else float(snr)
    sigma = _noise_sigma(wave, base, s2n)
    flux = model + sigma * rng.standard_normal(wave.shape)
    ivar = 1.0 / sigma**2
    and_mask = _draw_and_mask(wave, rng, mask_fraction_max)
    masked = and_mask != 0
    ivar[masked] = 0.0
    flux[(and_mask & NODATA) != 0] = 0.0
    bi_obs = _observed_bi(wave, z, flux, base, masked)
    truth = {
        "troughs": [t.as_dict() for t in troughs],
        "snr": s2n,
        "r_mag": r_mag,
        "ebv": ebv,
        "bi_civ_full_run": troughs_bi(troughs, "full_run"),
        "bi_civ_observed": bi_obs,
        "has_mini_bal": (not is_bal) and bool(troughs),
        **model_truth,
    }
    return Spectrum(
        z=float(z),
        loglam=loglam.astype(np.float32),
        flux=flux.astype(np.float32),
        ivar=ivar.astype(np.float32),
        and_mask=and_mask,
        is_bal=bi > 0,
        bi_civ=bi,
        truth=truth,
        model=model.astype(np.float32) if keep_model else None,
        unabsorbed=base.astype(np.float32) if keep_model else None,
    )


def write_spec_lite(path: str | Any, spectrum: Spectrum, *, plate: int, mjd: int, fiber: int,
                    ra: float = 0.0, dec: float = 0.0) -> None:
    """Write ``spectrum`` as an SDSS spec-lite-like FITS file (``spec-PLATE-MJD-FIBER.fits`` layout).

    HDU 1 ``COADD`` holds ``flux``, ``loglam``, ``ivar``, ``and_mask`` (SDSS types: float32 and int32),
    HDU 2 ``SPALL`` the redshift ``Z``; the primary header PLATEID, MJD, FIBERID, PLUG_RA, PLUG_DEC and
    ``SYNTHET = T``. Lets the real-catalogue reader (``training.catalogues.load_spec_lite``) be tested on
    synthetic spectra with known labels.
    """
    from astropy.io import fits

    primary = fits.PrimaryHDU()
    hdr = primary.header
    hdr["PLATEID"], hdr["MJD"], hdr["FIBERID"] = int(plate), int(mjd), int(fiber)
    hdr["PLUG_RA"], hdr["PLUG_DEC"] = float(ra), float(dec)
    hdr["SYNTHET"] = (True, "bal-broker synthetic spectrum, not SDSS data")
    coadd = fits.BinTableHDU.from_columns([
        fits.Column(name="flux", format="E", array=spectrum.flux.astype(np.float32)),
        fits.Column(name="loglam", format="E", array=spectrum.loglam.astype(np.float32)),
        fits.Column(name="ivar", format="E", array=spectrum.ivar.astype(np.float32)),
        fits.Column(name="and_mask", format="J", array=spectrum.and_mask.astype(np.int32)),
    ], name="COADD")
    spall = fits.BinTableHDU.from_columns([
        fits.Column(name="Z", format="E", array=np.array([spectrum.z], dtype=np.float32)),
        fits.Column(name="BI_CIV", format="E", array=np.array([spectrum.bi_civ], dtype=np.float32)),
    ], name="SPALL")
    fits.HDUList([primary, coadd, spall]).writeto(path, overwrite=True)
