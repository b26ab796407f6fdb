"""The spectral branch: SDSS-like spectrum -> fixed rest-frame vector -> kernel-PCA embedding -> p_spec.

This follows the reference study's spectral modality (SCIENCE.md, "The reference study"): keep the C IV
blueshifted region for 1.67 <= z <= 3.6, interpolate over bad pixels, rebin to a common length, reduce
the dimension with kernel PCA. Every choice is made here once, so that real spectra (spec-lite files,
:func:`training.catalogues.load_spec_lite`) and synthetic ones (``training.synthetic``) go through the
same code.

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

Embedding and classifier
    * :func:`fit_spectral_embedding`: RBF kernel PCA on at most ``n_landmarks`` (500) training
      spectra, class-balanced when labels are given; gamma from the median heuristic (1 / median
      squared distance between landmarks) so the kernel is neither ~1 everywhere nor ~0 off the
      diagonal. The transform is exported as an ONNX graph written with
      ``onnx.helper`` (RBF via ``|x|^2 - 2 x L^T + |L|^2``, kernel centring with the fit-time column
      means, projection on ``alphas / sqrt(lambdas)``): float32 input and output, double arithmetic
      inside, landmarks stored as float32 (500 x 256 x 4 B = 512 kB). The numpy reference
      (:meth:`SpectralEmbedding.transform`) rounds its input to float32 and uses the same float32-exact
      landmarks, so it and onnxruntime agree to float32 output rounding (~1e-7), and it equals
      sklearn's ``KernelPCA(kernel="rbf").fit(landmarks).transform`` to ~1e-12 (tested). The fit is the
      same algorithm as sklearn's (centred kernel, top eigenpairs, sklearn's sign convention) done
      directly with LAPACK's bisection eigensolver, because sklearn's dense path uses the MRRR driver,
      which takes seconds on a centred RBF kernel's cluster of near-zero eigenvalues. skl2onnx 1.20
      does convert ``KernelPCA`` (checked: a float32 graph is within ~3e-7 of sklearn on the toy
      spectra, a float64 one within 1e-13 at twice the size); the hand-written graph is kept because
      it computes the kernel in double whatever the input precision (``|x|^2 - 2 x.L + |L|^2`` cancels
      for near neighbours, the one place float32 could break the 1e-5 parity), stores the landmarks
      in float32 (half the file), carries the preprocessing version in its metadata, and needs no
      sklearn object to export.
    * :func:`fit_spectral_classifier`: standardise + class-balanced logistic regression on the
      embedding, exported with skl2onnx (``zipmap=False``). The kernel PCA already supplies the
      non-linearity; a linear model keeps p_spec smooth and well calibrated for the fusion models,
      and its ONNX graph is exact in float32.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
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
    loglam = np.asarray(loglam, dtype=np.float64)
    flux = np.asarray(flux, dtype=np.float64)
    ivar = np.asarray(ivar, dtype=np.float64)
    mask = np.zeros(loglam.shape, dtype=bool) if and_mask is None else (np.asarray(and_mask) != 0)
    if not (loglam.shape == flux.shape == ivar.shape == mask.shape) or loglam.ndim != 1:
        raise ValueError(f"loglam, flux, ivar, and_mask must be 1-D and equal length, got "
                         f"{loglam.shape}, {flux.shape}, {ivar.shape}, {mask.shape}")
    grid = np.asarray(grid, dtype=np.float64)
    out_edges_lin = REST_GRID_EDGES if grid is REST_GRID else _grid_edges(grid)
    out_edges = np.log10(out_edges_lin)

    # rest frame, restricted to the native pixels that overlap the window (one pixel of margin)
    rest = loglam - math.log10(1.0 + z)
    order = np.argsort(rest, kind="stable")
    if not np.all(order == np.arange(order.size)):
        rest, flux, ivar, mask = rest[order], flux[order], ivar[order], mask[order]
    i0 = max(int(np.searchsorted(rest, out_edges[0])) - 1, 0)
    i1 = min(int(np.searchsorted(rest, out_edges[-1])) + 1, rest.size)
    rest, flux, ivar, mask = rest[i0:i1], flux[i0:i1], ivar[i0:i1], mask[i0:i1]
    if rest.size < 2:
        raise SpectrumQualityError(f"no pixels in the {REST_WINDOW} A rest window at z={z}", reason="no_pixels")
    with np.errstate(invalid="ignore"):
        good = np.isfinite(flux) & np.isfinite(ivar) & (ivar > 0) & ~mask
    n_good = int(good.sum())
    frac_good = n_good / rest.size
    if frac_good < MIN_GOOD_FRACTION or n_good < 2:
        raise SpectrumQualityError(
            f"only {frac_good:.0%} good pixels in the window (need {MIN_GOOD_FRACTION:.0%})",
            reason="too_few_good_pixels")

    # continuum level from the never-absorbed red side of C IV
    lo_n, hi_n = math.log10(NORM_WINDOW[0]), math.log10(NORM_WINDOW[1])
    in_norm = good & (rest >= lo_n) & (rest <= hi_n)
    norm = float(np.median(flux[in_norm])) if in_norm.sum() >= MIN_NORM_PIXELS else float("nan")
    if not (math.isfinite(norm) and norm > 0):
        raise SpectrumQualityError(
            f"no positive continuum in {NORM_WINDOW} A rest ({int(in_norm.sum())} good pixels)",
            reason="no_continuum")

    # linear interpolation over bad pixels (edges: nearest good value)
    filled = flux.copy()
    n_interp = int(rest.size - n_good)
    if n_interp:
        filled[~good] = np.interp(rest[~good], rest[good], flux[good])

    # flux-conserving rebin; coverage of each output bin by the observed wavelength range (a native
    # grid is contiguous; a gap in it would be bridged by its two neighbouring pixels)
    mean, frac = _rebin_mean(_pixel_edges(rest), filled, out_edges)
    covered = frac >= MIN_BIN_OVERLAP
    core = (grid >= CORE_WINDOW[0]) & (grid <= CORE_WINDOW[1])
    core_cov = float(covered[core].mean()) if core.any() else 1.0
    if core_cov < MIN_CORE_COVERAGE:
        raise SpectrumQualityError(
            f"only {core_cov:.0%} of the core window {CORE_WINDOW} A rest is observed at z={z}",
            reason="poor_coverage")
    n_filled = int((~covered).sum())
    if n_filled:
        idx = np.flatnonzero(covered)
        first, last = idx[0], idx[-1]
        mean[:first] = np.median(mean[first:first + N_FILL_REFERENCE])
        mean[last + 1:] = np.median(mean[max(last + 1 - N_FILL_REFERENCE, first):last + 1])

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
        "n_filled": n_filled,
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


# ----------------------------------------------------------------------------- kernel PCA


#: ONNX opset of the hand-written embedding graph (ReduceSum/ReduceMean take axes as an input).
ONNX_OPSET = 18
#: IR version written into the models; onnxruntime >= 1.16 reads it.
ONNX_IR_VERSION = 9
#: Names of the embedding graph's input and output.
EMBED_INPUT, EMBED_OUTPUT = "flux", "embedding"


def _sq_dists(X: np.ndarray, L: np.ndarray, l_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, in the operation order of the ONNX graph, clamped at 0."""
    xx = np.sum(X * X, axis=1, keepdims=True)
    return np.maximum(xx + (-2.0) * (X @ L.T) + l_sq[None, :], 0.0)


def median_heuristic_gamma(L: np.ndarray) -> float:
    """RBF gamma = 1 / median squared distance between distinct landmarks (1/n_features if degenerate)."""
    d2 = _sq_dists(L, L, np.sum(L * L, axis=1))
    iu = np.triu_indices(L.shape[0], k=1)
    med = float(np.median(d2[iu])) if iu[0].size else 0.0
    return 1.0 / med if med > 0 else 1.0 / L.shape[1]


@dataclass
class SpectralEmbedding:
    """A fitted RBF kernel PCA, stored as the arrays its transform needs (no sklearn at use time).

    ``transform(x) = centre(exp(-gamma |x - L|^2)) @ scaled_alphas`` where ``L`` are the landmarks,
    centring uses the fit-time column means ``k_col_mean`` and their mean ``k_all_mean``, and
    ``scaled_alphas = eigenvectors / sqrt(eigenvalues)`` (sklearn's KernelPCA.transform).
    """

    landmarks: np.ndarray  # (M, D) float64 holding float32-exact values
    gamma: float
    scaled_alphas: np.ndarray  # (M, k)
    eigenvalues: np.ndarray  # (k,)
    k_col_mean: np.ndarray  # (M,)
    k_all_mean: float
    landmark_index: np.ndarray  # (M,) rows of the fitting X used as landmarks
    seed: int = 0
    version: str = PREPROCESS_VERSION
    grid: np.ndarray = field(default_factory=lambda: REST_GRID.copy())

    @property
    def n_components(self) -> int:
        return int(self.scaled_alphas.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.landmarks.shape[1])

    @property
    def landmark_sq(self) -> np.ndarray:
        return np.sum(self.landmarks * self.landmarks, axis=1)

    def kernel(self, X: np.ndarray) -> np.ndarray:
        """RBF kernel between ``X`` (rounded to float32, as the ONNX input is) and the landmarks."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) spectra, got {X.shape}")
        return np.exp(_sq_dists(X, self.landmarks, self.landmark_sq) * (-self.gamma))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The numpy reference transform (float64 output); the ONNX graph matches it to ~1e-7."""
        K = self.kernel(X)
        Kc = K - self.k_col_mean[None, :] - np.mean(K, axis=1, keepdims=True) + self.k_all_mean
        return Kc @ self.scaled_alphas

    # ---- ONNX
    def to_onnx(self, path: str | Path | None = None) -> Any:
        """The transform as an ONNX model (input ``flux`` float32 [N, D] -> ``embedding`` float32 [N, k]).

        Written with ``onnx.helper``: the graph casts to double, computes the RBF kernel against the
        float32-stored landmarks, centres it with the fit-time means and projects. Saved to ``path``
        (a single file, no external data) when given; the ``ModelProto`` is returned either way.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        M, D = self.landmarks.shape
        k = self.n_components
        inits = [
            numpy_helper.from_array(np.ascontiguousarray(self.landmarks.T.astype(np.float32)), "landmarks_T_f32"),
            numpy_helper.from_array(self.landmark_sq.reshape(1, M).astype(np.float64), "landmark_sq"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(-2.0, dtype=np.float64), "minus_two"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float64), "zero"),
            numpy_helper.from_array(np.array(-self.gamma, dtype=np.float64), "neg_gamma"),
            numpy_helper.from_array(self.k_col_mean.reshape(1, M).astype(np.float64), "k_col_mean"),
            numpy_helper.from_array(np.array(self.k_all_mean, dtype=np.float64), "k_all_mean"),
            numpy_helper.from_array(self.scaled_alphas.astype(np.float64), "scaled_alphas"),
        ]
        n = helper.make_node
        nodes = [
            n("Cast", [EMBED_INPUT], ["x"], to=TensorProto.DOUBLE),
            n("Cast", ["landmarks_T_f32"], ["landmarks_T"], to=TensorProto.DOUBLE),
            n("Mul", ["x", "x"], ["x_sq"]),
            n("ReduceSum", ["x_sq", "axis1"], ["xx"], keepdims=1),
            n("MatMul", ["x", "landmarks_T"], ["xl"]),
            n("Mul", ["xl", "minus_two"], ["m2xl"]),
            n("Add", ["xx", "m2xl"], ["d2a"]),
            n("Add", ["d2a", "landmark_sq"], ["d2b"]),
            n("Max", ["d2b", "zero"], ["d2"]),
            n("Mul", ["d2", "neg_gamma"], ["arg"]),
            n("Exp", ["arg"], ["K"]),
            n("Sub", ["K", "k_col_mean"], ["Kc1"]),
            n("ReduceMean", ["K", "axis1"], ["k_row_mean"], keepdims=1),
            n("Sub", ["Kc1", "k_row_mean"], ["Kc2"]),
            n("Add", ["Kc2", "k_all_mean"], ["Kc"]),
            n("MatMul", ["Kc", "scaled_alphas"], ["emb64"]),
            n("Cast", ["emb64"], [EMBED_OUTPUT], to=TensorProto.FLOAT),
        ]
        graph = helper.make_graph(
            nodes, "spectral_kernel_pca",
            [helper.make_tensor_value_info(EMBED_INPUT, TensorProto.FLOAT, ["N", D])],
            [helper.make_tensor_value_info(EMBED_OUTPUT, TensorProto.FLOAT, ["N", k])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="bal-broker.training.spectra")
        model.ir_version = ONNX_IR_VERSION
        model.doc_string = (f"RBF kernel PCA of C IV-window spectra ({self.version}); "
                            f"{M} landmarks, gamma={self.gamma:.6g}, {k} components")
        helper.set_model_props(model, {
            "preprocess_version": self.version,
            "rest_window_A": f"{REST_WINDOW[0]},{REST_WINDOW[1]}",
            "n_grid": str(D),
            "norm_window_A": f"{NORM_WINDOW[0]},{NORM_WINDOW[1]}",
            "gamma": repr(self.gamma),
            "n_landmarks": str(M),
            "n_components": str(k),
            "embedding_seed": str(self.seed),
        })
        onnx.checker.check_model(model)
        if path is not None:
            onnx.save_model(model, str(path))
        return model

    # ---- persistence (numpy only, for training pipelines)
    def save(self, path: str | Path) -> None:
        """Write the arrays to an ``.npz`` file (see :meth:`load`)."""
        np.savez(path, landmarks=self.landmarks, gamma=self.gamma, scaled_alphas=self.scaled_alphas,
                 eigenvalues=self.eigenvalues, k_col_mean=self.k_col_mean, k_all_mean=self.k_all_mean,
                 landmark_index=self.landmark_index, seed=self.seed, version=self.version, grid=self.grid)

    @classmethod
    def load(cls, path: str | Path) -> SpectralEmbedding:
        with np.load(path, allow_pickle=False) as d:
            return cls(landmarks=d["landmarks"], gamma=float(d["gamma"]), scaled_alphas=d["scaled_alphas"],
                       eigenvalues=d["eigenvalues"], k_col_mean=d["k_col_mean"], k_all_mean=float(d["k_all_mean"]),
                       landmark_index=d["landmark_index"], seed=int(d["seed"]), version=str(d["version"]),
                       grid=d["grid"])


def _choose_landmarks(n: int, n_landmarks: int, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices of at most ``n_landmarks`` rows; with labels, as class-balanced as the classes allow.

    BALs are ~13% of quasars (SCIENCE.md): a uniform subsample would describe the kernel space mostly
    with non-BALs, so the minority class gets an equal share of the landmarks when it has enough rows.
    """
    if n <= n_landmarks:
        return np.arange(n)
    if y is None:
        return np.sort(rng.choice(n, size=n_landmarks, replace=False))
    y = np.asarray(y)
    classes = np.unique(y)
    per = n_landmarks // len(classes)
    chosen: list[np.ndarray] = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        chosen.append(rng.choice(rows, size=min(per, rows.size), replace=False))
    picked = np.concatenate(chosen)
    rest = np.setdiff1d(np.arange(n), picked)
    extra = n_landmarks - picked.size
    if extra > 0:
        picked = np.concatenate((picked, rng.choice(rest, size=extra, replace=False)))
    return np.sort(picked)


def fit_spectral_embedding(
    X: np.ndarray,
    n_components: int = 16,
    seed: int = 0,
    *,
    y: np.ndarray | None = None,
    n_landmarks: int = 500,
    gamma: float | None = None,
) -> SpectralEmbedding:
    """Fit RBF kernel PCA on at most ``n_landmarks`` preprocessed spectra (equivalent to sklearn's
    ``KernelPCA(n_components, kernel="rbf", gamma=gamma).fit(landmarks)``).

    ``X``: (n, D) rows from :func:`preprocess_spectrum` (finite). ``y`` (optional labels) makes the
    landmark subsample class-balanced. ``gamma`` defaults to the median heuristic. The landmarks are
    rounded to float32 before the fit, so the exported graph (which stores them as float32) is the
    fitted model exactly.
    """
    from scipy.linalg import eigh

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError("fit_spectral_embedding needs a finite 2-D array (drop failed rows first)")
    if n_components < 1 or n_components >= min(n_landmarks, X.shape[0]):
        raise ValueError(f"n_components={n_components} must be in [1, min(n_landmarks, n_rows) - 1]")
    rng = np.random.default_rng(seed)
    idx = _choose_landmarks(X.shape[0], n_landmarks, y, rng)
    L = X[idx].astype(np.float32).astype(np.float64)
    M = L.shape[0]
    g = median_heuristic_gamma(L) if gamma is None else float(gamma)
    l_sq = np.sum(L * L, axis=1)
    K_fit = np.exp(_sq_dists(L, L, l_sq) * (-g))
    col_mean = K_fit.mean(axis=0)
    all_mean = float(col_mean.mean())
    Kc = K_fit - col_mean[None, :] - col_mean[:, None] + all_mean  # K is symmetric: row means = col means
    # top eigenpairs of the centred kernel (LAPACK's bisection driver: fast for a few of many
    # near-degenerate eigenvalues, where the default MRRR driver is ~50x slower)
    lambdas, alphas = eigh(Kc, subset_by_index=[M - n_components, M - 1], driver="evx")
    lambdas, alphas = lambdas[::-1].copy(), alphas[:, ::-1].copy()
    lambdas[lambdas < 0] = 0.0  # round-off on a PSD matrix
    # deterministic signs: the largest-|.| entry of each eigenvector positive (sklearn's convention)
    signs = np.sign(alphas[np.argmax(np.abs(alphas), axis=0), np.arange(n_components)])
    alphas *= np.where(signs == 0, 1.0, signs)
    scaled = np.zeros_like(alphas)
    nz = lambdas > 0
    scaled[:, nz] = alphas[:, nz] / np.sqrt(lambdas[nz])
    return SpectralEmbedding(landmarks=L, gamma=g, scaled_alphas=scaled, eigenvalues=lambdas, k_col_mean=col_mean,
                             k_all_mean=all_mean, landmark_index=idx, seed=seed)


# ------------------------------------------------------------------------------- classifier

#: Names of the classifier graph's input and outputs.
CLF_INPUT, CLF_LABEL, CLF_PROBA = "embedding", "label", "probabilities"


@dataclass
class SpectralClassifier:
    """Standardise + logistic regression on the spectral embedding; ``p_spec`` = P(BAL)."""

    pipeline: Any  # sklearn Pipeline
    n_features: int
    seed: int = 0

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """P(BAL) per row, computed on float32-rounded input (what the ONNX graph sees)."""
        e = np.asarray(emb, dtype=np.float32)
        return self.pipeline.predict_proba(e)[:, 1]

    def to_onnx(self, path: str | Path | None = None) -> Any:
        """ONNX via skl2onnx: ``embedding`` float32 [N, k] -> ``label`` int64 [N], ``probabilities``
        float32 [N, 2] (columns: non-BAL, BAL; no ZipMap)."""
        import onnx
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        final = self.pipeline.steps[-1][1]
        model = convert_sklearn(
            self.pipeline,
            initial_types=[(CLF_INPUT, FloatTensorType([None, self.n_features]))],
            options={id(final): {"zipmap": False}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
        model.ir_version = ONNX_IR_VERSION
        onnx.helper.set_model_props(model, {"model": "spectral_classifier", "positive_class": "BAL",
                                            "seed": str(self.seed)})
        onnx.checker.check_model(model)
        if path is not None:
            onnx.save_model(model, str(path))
        return model


def fit_spectral_classifier(emb: np.ndarray, y: np.ndarray, seed: int = 0, *, C: float = 1.0) -> SpectralClassifier:
    """Fit standardise + class-balanced logistic regression on the embedding (``y``: 1 BAL, 0 non-BAL).

    ``class_weight="balanced"`` stands in for the reference study's balanced resampling (BALs are the
    ~13% minority, SCIENCE.md), so that p_spec = 0.5 is a sensible operating point.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    e = np.asarray(emb, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("fit_spectral_classifier needs labels 0 (non-BAL) and 1 (BAL), both present")
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed)),
    ])
    pipe.fit(e, y)
    return SpectralClassifier(pipeline=pipe, n_features=int(e.shape[1]), seed=seed)


def spectral_pipeline_onnx(embedding: SpectralEmbedding, classifier: SpectralClassifier,
                           path: str | Path | None = None) -> Any:
    """One ONNX model ``flux`` -> (``embedding``, ``label``, ``probabilities``): the two graphs joined,
    for consumers that want p_spec straight from a preprocessed spectrum."""
    import onnx
    from onnx import compose

    m1 = embedding.to_onnx()
    m2 = classifier.to_onnx()
    # both must import the same opsets for merge_models
    ops = {o.domain: o.version for o in m1.opset_import}
    ops.update({o.domain: o.version for o in m2.opset_import})
    for m in (m1, m2):
        del m.opset_import[:]
        m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(ops.items()))
    # metadata: the embedding's keys plus the classifier's, prefixed (merge_models refuses clashes)
    props = {p.key: p.value for p in m1.metadata_props}
    props.update({f"classifier_{p.key}": p.value for p in m2.metadata_props})
    props["model"] = "spectral_pipeline"
    del m1.metadata_props[:]
    del m2.metadata_props[:]
    # keep the public input/output names, prefix every internal name of the classifier graph
    m2 = compose.add_prefix(m2, "clf_", rename_inputs=False, rename_outputs=False)
    merged = compose.merge_models(m1, m2, io_map=[(EMBED_OUTPUT, CLF_INPUT)],
                                  outputs=[EMBED_OUTPUT, CLF_LABEL, CLF_PROBA])
    merged.ir_version = ONNX_IR_VERSION
    onnx.helper.set_model_props(merged, props)
    onnx.checker.check_model(merged)
    if path is not None:
        onnx.save_model(merged, str(path))
    return merged
