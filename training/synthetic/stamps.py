"""Synthetic ZTF-like alert stamps (science, template, difference) for the image encoder.

Why synthetic: the contrastive encoder needs thousands of varied stamps with a known kind to
*evaluate* the embedding (SimCLR itself needs no labels), and the real alerts shipped with the
project are a few hundred. The renderer mimics what matters to the encoder, calibrated on the real
ZTF stamps in ``../shared/data/ztf/alerts``: 63x63 px at 1.0"/px, sky 60-350 DN with ~5 DN noise in
the science image, a template (reference coadd) with the same sky level and 3-6x less noise, a
difference image with zero background; zero-point ~26.2 mag so that a magnitude maps to counts;
seeing 1.5-3.0" FWHM with a Moffat profile.

Kinds (``kind`` argument; the stamp is centred on the detection, as survey alerts are):

* ``"point"``: an unresolved source (star, hostless transient, host-less quasar). The template holds
  the same source at ``ref_mag`` (or nothing, a new source); the difference is a PSF of either sign.
* ``"nuclear"``: a point source on the nucleus of an extended host, an AGN/quasar sitting on its
  reference source (SCIENCE.md): the difference is a PSF residual of either sign at the centre.
* ``"extended"``: a Sersic galaxy whose nucleus is 1.5-6 px from the centre and an SN-like transient
  at the centre, present in the science and difference images only.
* ``"artifact"``: bogus detections, one of :data:`ARTIFACT_SUBTYPES` (or name it,
  ``"artifact:cosmic"``): a cosmic ray (1-4 sharp pixels, no PSF), a bad column, a chip edge (NaN
  region plus an edge glow), or a dipole from a misaligned subtraction of a bright star.

Every stamp also gets 0-3 static field stars, which cancel in the difference image, so that "a
source somewhere in the stamp" is not a shortcut for the encoder. All randomness comes from the
``rng`` argument, so a seeded generator gives identical stamps.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache

import numpy as np

#: Pixel scale, arcsec per pixel (ZTF).
PIXEL_SCALE: float = 1.0
#: ZTF camera gain (electrons per DN) and read noise (electrons).
GAIN: float = 6.2
READ_NOISE_E: float = 10.0
#: Range of photometric zero-points (mag giving 1 DN in a 30 s exposure), as in ZTF magzpsci.
ZP_RANGE: tuple[float, float] = (25.9, 26.4)
#: Range of sky levels in the science image (DN per pixel), log-uniform.
SKY_RANGE: tuple[float, float] = (60.0, 350.0)
#: Science-image seeing FWHM range, arcsec.
FWHM_RANGE: tuple[float, float] = (1.5, 3.0)

KINDS: tuple[str, ...] = ("point", "nuclear", "extended", "artifact")
ARTIFACT_SUBTYPES: tuple[str, ...] = ("cosmic", "column", "edge", "dipole")


@lru_cache(maxsize=8)
def _grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x), cached: every render of one size uses the same grid."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    return y, x


def _mag_to_counts(mag: float, zp: float) -> float:
    return float(10.0 ** (-0.4 * (mag - zp)))


def _moffat_alpha(fwhm_px: float, beta: float) -> float:
    return fwhm_px / (2.0 * np.sqrt(2.0 ** (1.0 / beta) - 1.0))


def _moffat(size: int, y0: float, x0: float, fwhm_px: float, beta: float) -> np.ndarray:
    """Unit-flux Moffat PSF sampled at pixel centres (analytic normalisation, so flux that falls
    outside the stamp is lost, as in a real cutout)."""
    y, x = _grid(size)
    alpha = _moffat_alpha(fwhm_px, beta)
    r2 = ((y - y0) ** 2 + (x - x0) ** 2) / (alpha * alpha)
    return (beta - 1.0) / (np.pi * alpha * alpha) * (1.0 + r2) ** (-beta)


def _sersic(size: int, y0: float, x0: float, r_e: float, n: float, q: float, theta: float) -> np.ndarray:
    """Unit-flux (within the stamp) elliptical Sersic profile, before PSF convolution."""
    y, x = _grid(size)
    dy, dx = y - y0, x - x0
    c, s = np.cos(theta), np.sin(theta)
    u = dx * c + dy * s
    v = (-dx * s + dy * c) / q
    r = np.sqrt(u * u + v * v) / r_e
    b_n = 2.0 * n - 1.0 / 3.0 + 0.009876 / n
    img = np.exp(-b_n * (r ** (1.0 / n) - 1.0))
    return img / img.sum()


def _convolve(img: np.ndarray, fwhm_px: float, beta: float) -> np.ndarray:
    """Convolve with a Moffat PSF by FFT on a padded grid (no wrap-around from the far edge)."""
    size = img.shape[0]
    pad = 16
    n = size + 2 * pad
    big = np.zeros((n, n))
    big[pad : pad + size, pad : pad + size] = img
    kernel = _moffat(n, n // 2, n // 2, fwhm_px, beta)
    kernel = np.fft.ifftshift(kernel / kernel.sum())
    out = np.fft.irfft2(np.fft.rfft2(big) * np.fft.rfft2(kernel), s=(n, n))
    return out[pad : pad + size, pad : pad + size]


def _random_galaxy(rng: np.random.Generator, size: int, y0: float, x0: float) -> np.ndarray:
    """A host galaxy: disc-like to bulge-like Sersic index, 1.5-6" effective radius, any shape."""
    n = float(rng.uniform(0.8, 4.0))
    r_e = float(rng.uniform(1.5, 6.0)) / PIXEL_SCALE
    q = float(rng.uniform(0.3, 1.0))
    theta = float(rng.uniform(0.0, np.pi))
    return _sersic(size, y0, x0, r_e, n, q, theta)


def _parse_kind(kind: str, rng: np.random.Generator) -> tuple[str, str | None]:
    base, _, sub = kind.partition(":")
    if base not in KINDS:
        raise ValueError(f"unknown stamp kind {kind!r}; expected one of {KINDS} or 'artifact:<subtype>'")
    if base != "artifact":
        if sub:
            raise ValueError(f"only 'artifact' takes a subtype, got {kind!r}")
        return base, None
    if not sub:
        sub = str(ARTIFACT_SUBTYPES[int(rng.integers(len(ARTIFACT_SUBTYPES)))])
    if sub not in ARTIFACT_SUBTYPES:
        raise ValueError(f"unknown artifact subtype {sub!r}; expected one of {ARTIFACT_SUBTYPES}")
    return base, sub


@dataclass(slots=True)
class _Scene:
    """One epoch being rendered: its observing conditions and the noiseless image components.

    ``static_*`` is the sky that does not change (in both images, each with its own PSF);
    ``sci_only`` is in the science image only (seen in the difference), ``ref_only_*`` in the
    template only (seen negative in the difference; ``_sci_psf`` is that flux PSF-matched to the
    science image); ``spikes`` are unconvolved science-only defects (cosmic rays, columns).
    """

    size: int
    mag: float
    ref_mag: float | None
    zp: float
    sky: float
    fwhm: float
    fwhm_ref: float
    beta: float
    n_coadd: float
    c: int
    yc: float
    xc: float
    flux: float
    static_sci: np.ndarray = field(init=False)
    static_ref: np.ndarray = field(init=False)
    sci_only: np.ndarray = field(init=False)
    ref_only_sci_psf: np.ndarray = field(init=False)
    ref_only_ref_psf: np.ndarray = field(init=False)
    spikes: np.ndarray = field(init=False)
    nan_mask: np.ndarray = field(init=False)

    def __post_init__(self) -> None:
        shape = (self.size, self.size)
        self.static_sci, self.static_ref = np.zeros(shape), np.zeros(shape)
        self.sci_only = np.zeros(shape)
        self.ref_only_sci_psf, self.ref_only_ref_psf = np.zeros(shape), np.zeros(shape)
        self.spikes = np.zeros(shape)
        self.nan_mask = np.zeros(shape, dtype=bool)

    def psf(self, y0: float, x0: float, *, ref: bool = False) -> np.ndarray:
        """The unit-flux PSF of the science image (or of the template) centred at (y0, x0)."""
        return _moffat(self.size, y0, x0, self.fwhm_ref if ref else self.fwhm, self.beta)

    def add_static(self, img: np.ndarray) -> None:
        """An extended static source (a host), convolved with each image's PSF."""
        self.static_sci += _convolve(img, self.fwhm, self.beta)
        self.static_ref += _convolve(img, self.fwhm_ref, self.beta)

    def add_reference_source(self, ref_flux: float) -> None:
        """The template's own point source at the detection (both PSFs)."""
        self.ref_only_sci_psf += ref_flux * self.psf(self.yc, self.xc)
        self.ref_only_ref_psf += ref_flux * self.psf(self.yc, self.xc, ref=True)


def _observing_conditions(mag: float, rng: np.random.Generator, size: int, ref_mag: float | None) -> _Scene:
    """Draw the conditions of this epoch and of the reference coadd (in this order from ``rng``)."""
    zp = float(rng.uniform(*ZP_RANGE))
    sky = float(np.exp(rng.uniform(np.log(SKY_RANGE[0]), np.log(SKY_RANGE[1]))))
    fwhm = float(rng.uniform(*FWHM_RANGE)) / PIXEL_SCALE
    fwhm_ref = float(rng.uniform(0.8 * FWHM_RANGE[0], fwhm * PIXEL_SCALE)) / PIXEL_SCALE
    beta = float(rng.uniform(2.5, 4.5))
    n_coadd = float(rng.uniform(10.0, 40.0))
    c = size // 2
    yc, xc = c + float(rng.uniform(-0.5, 0.5)), c + float(rng.uniform(-0.5, 0.5))
    return _Scene(size, mag, ref_mag, zp, sky, fwhm, fwhm_ref, beta, n_coadd, c, yc, xc, _mag_to_counts(mag, zp))


def _add_field_stars(sc: _Scene, rng: np.random.Generator) -> None:
    """0-3 static field stars anywhere but on the detection."""
    size, c = sc.size, sc.c
    for _ in range(int(rng.integers(0, 4))):
        while True:
            fy, fx = rng.uniform(0, size - 1, 2)
            if (fy - c) ** 2 + (fx - c) ** 2 > 36.0:
                break
        f = _mag_to_counts(float(rng.uniform(min(sc.mag, 20.0) - 1.0, 21.5)), sc.zp)
        sc.static_sci += f * sc.psf(fy, fx)
        sc.static_ref += f * sc.psf(fy, fx, ref=True)


def _add_point(sc: _Scene, rng: np.random.Generator) -> None:
    """A point source over its reference counterpart (none 35% of the time when not given)."""
    if sc.ref_mag is None and rng.random() < 0.35:
        ref_flux = 0.0
    else:
        rm = sc.ref_mag if sc.ref_mag is not None else sc.mag + float(rng.normal(0.0, 0.4))
        ref_flux = _mag_to_counts(rm, sc.zp)
    sc.sci_only += sc.flux * sc.psf(sc.yc, sc.xc)
    sc.add_reference_source(ref_flux)


def _add_nuclear(sc: _Scene, rng: np.random.Generator) -> None:
    """A host galaxy whose nucleus varied: brighter or fainter now than in the reference by 0.1-1 mag."""
    host_mag = sc.ref_mag if sc.ref_mag is not None else sc.mag + float(rng.uniform(-1.0, 2.0))
    sc.add_static(_mag_to_counts(host_mag, sc.zp) * _random_galaxy(rng, sc.size, sc.yc, sc.xc))
    delta = float(rng.uniform(0.1, 1.0)) * (1.0 if rng.random() < 0.5 else -1.0)
    ref_flux = _mag_to_counts(sc.mag + delta, sc.zp)
    sc.sci_only += sc.flux * sc.psf(sc.yc, sc.xc)
    sc.add_reference_source(ref_flux)


def _add_extended(sc: _Scene, rng: np.random.Generator) -> None:
    """A transient offset from the centre of its host galaxy (absent from the template)."""
    host_mag = sc.ref_mag if sc.ref_mag is not None else sc.mag + float(rng.uniform(-2.0, 1.5))
    r, phi = float(rng.uniform(1.5, 6.0)), float(rng.uniform(0.0, 2.0 * np.pi))
    host_y, host_x = sc.yc + r * np.sin(phi), sc.xc + r * np.cos(phi)
    sc.add_static(_mag_to_counts(host_mag, sc.zp) * _random_galaxy(rng, sc.size, host_y, host_x))
    sc.sci_only += sc.flux * sc.psf(sc.yc, sc.xc)


def _add_cosmic(sc: _Scene, rng: np.random.Generator) -> None:
    """A sharp hit: 1-4 adjacent pixels, not convolved with the PSF (it never went through the
    atmosphere), with most of the flux in one pixel."""
    size, c, flux = sc.size, sc.c, sc.flux
    py, px = c + int(rng.integers(-1, 2)), c + int(rng.integers(-1, 2))
    sc.spikes[py, px] += flux * float(rng.uniform(0.4, 0.9))
    for _ in range(int(rng.integers(0, 4))):
        py = int(np.clip(py + rng.integers(-1, 2), 0, size - 1))
        px = int(np.clip(px + rng.integers(-1, 2), 0, size - 1))
        sc.spikes[py, px] += flux * float(rng.uniform(0.05, 0.4))


def _add_column(sc: _Scene, rng: np.random.Generator) -> None:
    """A hot (or dead) column through the detection, science image only."""
    col = sc.c + int(rng.integers(-2, 3))
    level = sc.flux * float(rng.uniform(0.03, 0.15)) * (1.0 if rng.random() < 0.8 else -1.0)
    y0 = int(rng.integers(0, sc.size // 2))
    sc.spikes[y0:, col] += level


def _add_edge(sc: _Scene, rng: np.random.Generator) -> None:
    """The detection sits next to a chip edge: beyond a straight line the stamp is NaN, and a glow
    along the edge (bad subtraction near the boundary) triggered the alert."""
    size, c = sc.size, sc.c
    ang = float(rng.uniform(0.0, 2.0 * np.pi))
    d = float(rng.uniform(2.0, 10.0))
    y, x = _grid(size)
    dist = (x - c) * np.cos(ang) + (y - c) * np.sin(ang) - d  # > 0 beyond the edge
    sc.nan_mask = dist > 0
    glow_width = float(rng.uniform(1.0, 3.0))
    sc.sci_only += sc.flux / (2.0 * size) * np.exp(-np.abs(dist) / glow_width) * (dist <= 0)
    if rng.random() < 0.5:  # sometimes a real faint source near the edge as well
        sc.sci_only += 0.3 * sc.flux * sc.psf(sc.yc, sc.xc)


def _add_dipole(sc: _Scene, rng: np.random.Generator) -> None:
    """A bright star subtracted with a 0.5-1.5 px astrometric misalignment: a +/- lobe pair."""
    star_mag = sc.ref_mag if sc.ref_mag is not None else sc.mag
    star = _mag_to_counts(star_mag, sc.zp)
    r, phi = float(rng.uniform(0.5, 1.5)), float(rng.uniform(0.0, 2.0 * np.pi))
    dy, dx = r * np.sin(phi), r * np.cos(phi)
    sc.sci_only += star * sc.psf(sc.yc, sc.xc)
    sc.ref_only_sci_psf += star * sc.psf(sc.yc + dy, sc.xc + dx)
    sc.ref_only_ref_psf += star * sc.psf(sc.yc, sc.xc, ref=True)  # the template is fine


#: The renderer of each stamp kind / artifact subtype.
_RENDERERS: dict[str, Callable[[_Scene, np.random.Generator], None]] = {
    "point": _add_point, "nuclear": _add_nuclear, "extended": _add_extended,
    "cosmic": _add_cosmic, "column": _add_column, "edge": _add_edge, "dipole": _add_dipole,
}


def _noisy_triplet(sc: _Scene, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Poisson (Gaussian approximation) on sky + sources plus read noise in the science image; the
    template is a coadd of ``n_coadd`` such images (same sky level, sqrt(n) less noise). The
    subtraction is PSF-matched: static sky cancels; the template's noise enters (slightly smoothed
    in reality; white here), its extra flux enters with the science PSF."""
    size, sky = sc.size, sc.sky
    sci_model = sky + sc.static_sci + sc.sci_only
    var_sci = np.clip(sci_model, 0.0, None) / GAIN + (READ_NOISE_E / GAIN) ** 2
    sci_noise = rng.standard_normal((size, size)) * np.sqrt(var_sci)
    ref_model = sky + sc.static_ref + sc.ref_only_ref_psf
    var_ref = (np.clip(ref_model, 0.0, None) / GAIN + (READ_NOISE_E / GAIN) ** 2) / sc.n_coadd
    ref_noise = rng.standard_normal((size, size)) * np.sqrt(var_ref)

    science = sci_model + sci_noise + sc.spikes
    template = ref_model + ref_noise
    difference = science - sky - sc.static_sci - sc.ref_only_sci_psf - ref_noise
    out = {"science": science, "template": template, "difference": difference}
    if sc.nan_mask.any():
        for a in out.values():
            a[sc.nan_mask] = np.nan
    return {k: v.astype(np.float32) for k, v in out.items()}


def render_triplet(
    kind: str,
    mag: float,
    rng: np.random.Generator,
    size: int = 63,
    ref_mag: float | None = None,
) -> dict[str, np.ndarray]:
    """Render one alert's science, template and difference stamps (float32, DN).

    ``mag`` is the brightness of what triggered the alert as seen in the science image: the point
    source (``point``), the nucleus (``nuclear``), the transient (``extended``) or the artifact's
    equivalent flux (``artifact``). ``ref_mag`` is the reference counterpart: the template's point
    source (``point``; drawn when None, a new source without counterpart 35% of the time), the host
    galaxy (``nuclear``, ``extended``) or the star (``artifact:dipole``); drawn when None.
    """
    base, sub = _parse_kind(kind, rng)
    if size < 16:
        raise ValueError(f"size must be at least 16 px, got {size}")
    sc = _observing_conditions(mag, rng, size, ref_mag)
    _add_field_stars(sc, rng)
    _RENDERERS[sub if base == "artifact" and sub is not None else base](sc, rng)
    return _noisy_triplet(sc, rng)


def render_dataset(
    n: int,
    rng: np.random.Generator,
    kinds: tuple[str, ...] = KINDS,
    mag_range: tuple[float, float] = (14.0, 21.0),
    size: int = 63,
) -> tuple[list[dict[str, np.ndarray]], np.ndarray]:
    """``n`` triplets with kinds drawn uniformly from ``kinds`` and magnitudes uniform in
    ``mag_range``; returns the triplets and the kind labels (``np.ndarray`` of str)."""
    labels = np.asarray([kinds[int(i)] for i in rng.integers(0, len(kinds), n)])
    mags = rng.uniform(mag_range[0], mag_range[1], n)
    triplets = [render_triplet(str(k), float(m), rng, size=size) for k, m in zip(labels, mags, strict=True)]
    return triplets, labels
