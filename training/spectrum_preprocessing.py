"""Spectrum preprocessing: SDSS-like spectrum -> fixed rest-frame vector on the C IV window.

Real spectra (spec-lite files, :func:`training.catalogues.load_spec_lite`) and synthetic ones
(``training.synthetic``) both go through :func:`preprocess_spectrum`, so every choice is made once.

Preprocessing choices (and why)
    * **Window 1260-1650 A rest** (:data:`REST_WINDOW`). Balnicity is measured from 3,000 to 25,000 km/s
      blueward of C IV 1549.06 A (Weymann+1991, SCIENCE.md "Synthetic BAL spectra"), i.e. 1424.8-1533.6 A
      rest; the window adds the C IV emission line and its unabsorbed red side (to 1650 A), and Si IV
      1397 A with its own troughs, which appear at the same velocities in about half of BALs
      (25,000 km/s blueward of Si IV is 1285 A). The redshift range is the one where the C IV trough
      region is observed: 1424.8 A x (1 + 1.67) = 3804 A, just above the SDSS-I/II spectrograph's
      3800 A blue limit; at z = 3.6 the window ends at 7590 A, well inside 9200 A (BOSS: 3600-10400 A).
    * At low z the blue end of the window can fall below the spectrograph's limit (z = 1.67, SDSS-I:
      nothing below 1423 A rest). Only the **core** (:data:`CORE_WINDOW`, the BI velocity range plus
      the C IV line and its red side) must be covered; uncovered blue grid bins are filled with the
      median of the first covered bins (a flat continuation) and counted in ``quality["n_filled"]``.
    * **Bad pixels** (``ivar == 0``, ``and_mask != 0`` or non-finite values; spec-lite files already
      zero ``ivar`` where ``and_mask != 0``, SCIENCE.md "Real catalogues") are replaced by linear
      interpolation between the nearest good pixels in log-wavelength, as in the reference study.
    * **Grid**: :data:`N_GRID` = 256 log-spaced bins (constant velocity width, ~316 km/s, ~4.6 SDSS pixels
      of 69 km/s); a >= 2,000 km/s BAL trough spans >= 6 bins, so nothing that defines a BAL is
      smoothed away while the vector stays small for kernel PCA. Rebinning is **flux-conserving**: the
      mean of the piecewise-constant native spectrum over each bin (exact overlap integral), which also
      averages the noise down by ~sqrt(4.6).
    * **Normalisation**: divide by the median flux of the good native pixels in 1600-1650 A rest
      (:data:`NORM_WINDOW`). That region is redward of C IV (BAL troughs are blueshifted, so it is never
      absorbed), >= 9,700 km/s from the line centre (little broad-line wing), and always observed for
      1.67 <= z <= 3.6. A single scalar keeps the continuum slope, which is itself informative: BALs are
      redder on average (Reichard+2003, Gibson+2009; SCIENCE.md). Continuum ~ 1 at the red end.
    * **Clipping** to :data:`CLIP_RANGE` (-0.5, 5): the RBF kernel is a squared distance, so one sky
      residual or cosmic ray would otherwise dominate it; real emission peaks sit below 5x continuum.
    * Failures are typed: :class:`RedshiftOutOfRangeError` (z outside 1.67-3.6 or not finite) and
      :class:`SpectrumQualityError` (reasons ``no_pixels``, ``poor_coverage``, ``too_few_good_pixels``,
      ``no_continuum``); both are :class:`SpectrumError` (a ``ValueError`` and a project
      :class:`~broker_plugin.errors.BalBrokerError` with a ``reason``). :func:`preprocess_batch` turns
      them into a row mask plus the reason, for training loops.

"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from broker_plugin.errors import BalBrokerError

# ----------------------------------------------------------------------------------- constants

#: Speed of light in km/s.
C_KMS = 299_792.458
#: Rest wavelengths (vacuum, A) of C IV and of the Si IV doublet's mean.
CIV_REST = 1549.06
SIIV_REST = 1396.76
#: Redshift range in which the C IV BAL region is inside the SDSS spectral range (SCIENCE.md).
Z_RANGE: tuple[float, float] = (1.67, 3.6)
#: Rest-frame window kept (A): Si IV troughs + C IV troughs up to 25,000 km/s + C IV line + red side.
REST_WINDOW: tuple[float, float] = (1260.0, 1650.0)
#: Number of log-spaced bins of the rest-frame grid.
N_GRID = 256
#: Continuum window for the normalisation (A rest): redward of C IV, never absorbed, always observed.
NORM_WINDOW: tuple[float, float] = (1600.0, 1650.0)
#: Normalised flux is clipped to this range before the embedding.
CLIP_RANGE: tuple[float, float] = (-0.5, 5.0)
#: A good spectrum has at least this fraction of its in-window native pixels good ...
MIN_GOOD_FRACTION = 0.5
#: ... at least this many good native pixels in the normalisation window ...
MIN_NORM_PIXELS = 20
#: ... and at least this fraction of the core window's grid bins covered by data.
MIN_CORE_COVERAGE = 0.9
#: Grid bins with less than this fraction of their width observed count as uncovered.
MIN_BIN_OVERLAP = 0.5
#: How many of the first covered bins set the value of the flat blue fill.
N_FILL_REFERENCE = 8
#: Version string of this preprocessing; change it whenever any constant above changes.
PREPROCESS_VERSION = "spec-civ-1260-1650-256-v1"


def velocity_to_rest_wavelength(v_kms: float, line: float = CIV_REST) -> float:
    """Rest wavelength at which a line absorbs when the absorber moves at ``v_kms`` towards us.

    The inverse of SCIENCE.md's v = c (R^2 - 1)/(R^2 + 1), R = lambda_line / lambda (relativistic Doppler).
    """
    beta = v_kms / C_KMS
    return line * math.sqrt((1.0 - beta) / (1.0 + beta))


#: The window that must be covered: from the 25,000 km/s C IV trough limit to the window's red end.
CORE_WINDOW: tuple[float, float] = (round(velocity_to_rest_wavelength(25_000.0), 1), REST_WINDOW[1])


def make_rest_grid(window: tuple[float, float] = REST_WINDOW, n: int = N_GRID) -> tuple[np.ndarray, np.ndarray]:
    """Log-spaced bin centres and edges (A) over ``window``: equal velocity width per bin."""
    edges = np.geomspace(window[0], window[1], n + 1)
    centres = np.sqrt(edges[:-1] * edges[1:])
    return centres, edges


#: Rest-frame bin centres (A) of the default grid, and their edges.
REST_GRID, REST_GRID_EDGES = make_rest_grid()


# -------------------------------------------------------------------------------------- errors


class SpectrumError(BalBrokerError, ValueError):
    """A spectrum cannot be turned into the fixed rest-frame vector; ``reason`` says why."""

    reason = "spectrum_error"


class RedshiftOutOfRangeError(SpectrumError):
    """z is not finite or outside :data:`Z_RANGE`, so the C IV window is not (fully) observed."""

    reason = "z_out_of_range"


class SpectrumQualityError(SpectrumError):
    """Too little usable data: ``no_pixels``, ``poor_coverage``, ``too_few_good_pixels``, ``no_continuum``."""

    reason = "low_quality"


# ------------------------------------------------------------------------------------ the data


@dataclass(slots=True)
class Spectrum:
    """One 1-D spectrum in the SDSS spec-lite layout.

    ``loglam`` is log10 of the vacuum wavelength in A (observed frame), ``flux`` in 1e-17 erg/s/cm2/A,
    ``ivar`` the inverse variance of ``flux`` (0 = no data), ``and_mask`` the pixel mask that is
    non-zero where every exposure was bad. ``meta`` holds identifiers (plate, mjd, fiberid, z...).
    """

    loglam: np.ndarray
    flux: np.ndarray
    ivar: np.ndarray
    and_mask: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.loglam.shape[0])


# ------------------------------------------------------------------------------- preprocessing


def _pixel_edges(x: np.ndarray) -> np.ndarray:
    """Edges of pixels whose centres are ``x`` (increasing): midpoints, ends extended by half a step."""
    if x.size == 1:
        return np.array([x[0] - 0.5e-4, x[0] + 0.5e-4])
    mid = 0.5 * (x[1:] + x[:-1])
    return np.concatenate(([x[0] - (mid[0] - x[0])], mid, [x[-1] + (x[-1] - mid[-1])]))


def _grid_edges(grid: np.ndarray) -> np.ndarray:
    """Bin edges (A) of a log-spaced grid of centres: geometric midpoints, ends extended."""
    lg = np.log10(np.asarray(grid, dtype=np.float64))
    return 10.0 ** _pixel_edges(lg)


def _rebin_mean(x_edges: np.ndarray, values: np.ndarray, out_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean of a piecewise-constant function over each output bin, and the covered fraction of each bin.

    ``x_edges`` (n+1) bound the n native pixels holding ``values``; ``out_edges`` (m+1) the output bins,
    both in the same coordinate (log10 wavelength). The cumulative integral is exact at native edges and
    linear in between, so interpolating it gives the exact overlap integral.
    """
    cum = np.concatenate(([0.0], np.cumsum(values * np.diff(x_edges))))
    lo, hi = out_edges[:-1], out_edges[1:]
    integral = np.interp(hi, x_edges, cum) - np.interp(lo, x_edges, cum)
    covered = np.clip(np.minimum(hi, x_edges[-1]) - np.maximum(lo, x_edges[0]), 0.0, None)
    frac = covered / (hi - lo)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(covered > 0, integral / np.where(covered > 0, covered, 1.0), np.nan)
    return mean, frac


def _rest_window_pixels(loglam: np.ndarray, flux: np.ndarray, ivar: np.ndarray, and_mask: np.ndarray | None,
                        z: float, out_edges: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(rest log10 wavelength, flux, ivar, bad-mask) of the native pixels overlapping the output window
    (one pixel of margin), sorted by wavelength; checks shapes and that some pixels are left."""
    loglam = np.asarray(loglam, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    mask = np.zeros(loglam.shape, dtype=bool) if and_mask is None else (np.asarray(and_mask) != 0)
    if not (loglam.shape == flux.shape == ivar.shape == mask.shape) or loglam.ndim != 1:
        raise ValueError(f"loglam, flux, ivar, and_mask must be 1-D and equal length, got "
                         f"{loglam.shape}, {flux.shape}, {ivar.shape}, {mask.shape}")
    rest = loglam - math.log10(1.0 + z)
    order = np.argsort(rest, kind="stable")
    if not np.all(order == np.arange(order.size)):
        rest, flux, ivar, mask = rest[order], flux[order], ivar[order], mask[order]
    i0 = max(int(np.searchsorted(rest, out_edges[0])) - 1, 0)
    i1 = min(int(np.searchsorted(rest, out_edges[-1])) + 1, rest.size)
    rest, flux, ivar, mask = rest[i0:i1], flux[i0:i1], ivar[i0:i1], mask[i0:i1]
    if rest.size < 2:
        raise SpectrumQualityError(f"no pixels in the {REST_WINDOW} A rest window at z={z}", reason="no_pixels")
    return rest, flux, ivar, mask


def _continuum_level(rest: np.ndarray, flux: np.ndarray, good: np.ndarray) -> float:
    """Median good flux in :data:`NORM_WINDOW`, the never-absorbed red side of C IV (the normaliser)."""
    lo_n, hi_n = math.log10(NORM_WINDOW[0]), math.log10(NORM_WINDOW[1])
    in_norm = good & (rest >= lo_n) & (rest <= hi_n)
    norm = float(np.median(flux[in_norm])) if in_norm.sum() >= MIN_NORM_PIXELS else float("nan")
    if not (math.isfinite(norm) and norm > 0):
        raise SpectrumQualityError(
            f"no positive continuum in {NORM_WINDOW} A rest ({int(in_norm.sum())} good pixels)",
            reason="no_continuum")
    return norm


def _rebin_to_grid(rest: np.ndarray, filled: np.ndarray, grid: np.ndarray, out_edges: np.ndarray,
                   z: float) -> tuple[np.ndarray, np.ndarray]:
    """Flux-conserving rebin onto ``grid`` and the mask of observed bins; unobserved end bins are
    filled flat from their :data:`N_FILL_REFERENCE` nearest observed bins.

    Coverage is by the observed wavelength range (a native grid is contiguous; a gap in it would be
    bridged by its two neighbouring pixels). Raises when too little of :data:`CORE_WINDOW` is observed.
    """
    mean, frac = _rebin_mean(_pixel_edges(rest), filled, out_edges)
    covered = frac >= MIN_BIN_OVERLAP
    core = (grid >= CORE_WINDOW[0]) & (grid <= CORE_WINDOW[1])
    core_cov = float(covered[core].mean()) if core.any() else 1.0
    if core_cov < MIN_CORE_COVERAGE:
        raise SpectrumQualityError(
            f"only {core_cov:.0%} of the core window {CORE_WINDOW} A rest is observed at z={z}",
            reason="poor_coverage")
    if (~covered).any():
        idx = np.flatnonzero(covered)
        first, last = idx[0], idx[-1]
        mean[:first] = np.median(mean[first:first + N_FILL_REFERENCE])
        mean[last + 1:] = np.median(mean[max(last + 1 - N_FILL_REFERENCE, first):last + 1])
    return mean, covered


def preprocess_spectrum(
    loglam: np.ndarray,
    flux: np.ndarray,
    ivar: np.ndarray,
    and_mask: np.ndarray | None,
    z: float,
    grid: np.ndarray = REST_GRID,
) -> tuple[np.ndarray, dict[str, Any]]:
    """Normalised rest-frame flux on ``grid`` and a quality dict (see the module docstring for choices).

    Steps: shift to the rest frame; mark bad pixels (``ivar <= 0``, ``and_mask != 0``, non-finite);
    interpolate them linearly; rebin (flux-conserving mean) onto ``grid``; fill uncovered blue bins
    flat; divide by the median good flux in :data:`NORM_WINDOW`; clip to :data:`CLIP_RANGE`.

    Raises :class:`RedshiftOutOfRangeError` or :class:`SpectrumQualityError`. The quality dict has
    ``z, n_pixels, frac_good, n_interpolated, frac_covered, n_filled, norm, snr_median, n_clipped``.
    """
    z = float(z)
    if not math.isfinite(z) or not (Z_RANGE[0] <= z <= Z_RANGE[1]):
        raise RedshiftOutOfRangeError(
            f"z={z} outside {Z_RANGE[0]}-{Z_RANGE[1]}: the C IV BAL region is not in the SDSS range")
    grid = np.asarray(grid, dtype=np.float64)
    out_edges_lin = REST_GRID_EDGES if grid is REST_GRID else _grid_edges(grid)
    out_edges = np.log10(out_edges_lin)
    rest, flux, ivar, mask = _rest_window_pixels(loglam, flux, ivar, and_mask, z, out_edges)
    with np.errstate(invalid="ignore"):
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & ~mask
    n_good = int(good.sum())
    frac_good = n_good / rest.size
    if frac_good < MIN_GOOD_FRACTION or n_good < 2:
        raise SpectrumQualityError(
            f"only {frac_good:.0%} good pixels in the window (need {MIN_GOOD_FRACTION:.0%})",
            reason="too_few_good_pixels")
    norm = _continuum_level(rest, flux, good)

    # linear interpolation over bad pixels (edges: nearest good value)
    filled = flux.copy()
    n_interp = int(rest.size - n_good)
    if n_interp:
        filled[~good] = np.interp(rest[~good], rest[good], flux[good])
    mean, covered = _rebin_to_grid(rest, filled, grid, out_edges, z)

    out = mean / norm
    clipped = (out < CLIP_RANGE[0]) | (out > CLIP_RANGE[1])
    out = np.clip(out, *CLIP_RANGE)
    snr = flux[good] * np.sqrt(ivar[good])
    quality: dict[str, Any] = {
        "ok": True,
        "reason": None,
        "z": z,
        "n_pixels": int(rest.size),
        "frac_good": float(frac_good),
        "n_interpolated": n_interp,
        "frac_covered": float(covered.mean()),
        "n_filled": int((~covered).sum()),
        "norm": norm,
        "snr_median": float(np.median(snr)),
        "n_clipped": int(clipped.sum()),
    }
    return out, quality


def _arrays_of(spec: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """(loglam, flux, ivar, and_mask) of a :class:`Spectrum`, any object with those attributes, a
    mapping with those keys, or a 3/4-tuple."""
    if isinstance(spec, dict):
        return spec["loglam"], spec["flux"], spec["ivar"], spec.get("and_mask")
    if hasattr(spec, "loglam"):
        return spec.loglam, spec.flux, spec.ivar, getattr(spec, "and_mask", None)
    parts = tuple(spec)
    if len(parts) == 3:
        return parts[0], parts[1], parts[2], None
    return parts[0], parts[1], parts[2], parts[3]


def preprocess_batch(
    spectra: Iterable[Any], redshifts: Sequence[float] | np.ndarray, grid: np.ndarray = REST_GRID,
) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
    """Preprocess many spectra: ``(X, ok, qualities)``.

    ``X`` is (n, len(grid)) with NaN rows where a spectrum failed; ``ok`` the boolean row mask;
    ``qualities[i]`` the quality dict, or ``{"ok": False, "reason": <SpectrumError.reason>, ...}``.
    Spectra may be :class:`Spectrum` objects, objects/mappings with ``loglam, flux, ivar, and_mask``,
    or tuples of those arrays.
    """
    zs = np.asarray(redshifts, dtype=np.float64)
    rows: list[np.ndarray] = []
    ok: list[bool] = []
    qualities: list[dict[str, Any]] = []
    n = 0
    for spec, z in zip(spectra, zs, strict=True):
        n += 1
        try:
            x, q = preprocess_spectrum(*_arrays_of(spec), float(z), grid=grid)
        except SpectrumError as exc:
            rows.append(np.full(len(grid), np.nan))
            ok.append(False)
            qualities.append({"ok": False, "reason": exc.reason, "message": str(exc), "z": float(z)})
            continue
        rows.append(x)
        ok.append(True)
        qualities.append(q)
    X = np.vstack(rows) if rows else np.empty((0, len(grid)))
    return X, np.asarray(ok, dtype=bool), qualities
