"""Outflow velocities and the balnicity index (BI) of C IV, shared by the spectrum generator, the
trough truth and callers that measure BI on real spectra (conventions: see :mod:`.spectra`)."""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

C_KMS: float = 299792.458
LAM_CIV: float = 1549.06

BI_VMIN: float = 3000.0
BI_VMAX: float = 25000.0
BI_MIN_WIDTH: float = 2000.0
BI_THRESHOLD: float = 0.9

Convention = Literal["weymann", "full_run"]


def outflow_velocity(wave_obs: np.ndarray, z: float, line: float = LAM_CIV) -> np.ndarray:
    """Outflow velocity (km/s, positive blueward) of ``line`` absorbed at observed wavelength ``wave_obs``.

    Relativistic Doppler: ``v = c (R^2 - 1)/(R^2 + 1)`` with ``R = line (1 + z) / lambda``.
    """
    r2 = (line * (1.0 + z) / np.asarray(wave_obs, dtype=np.float64)) ** 2
    return C_KMS * (r2 - 1.0) / (r2 + 1.0)


def velocity_from_rest(wave_rest: np.ndarray, line: float = LAM_CIV) -> np.ndarray:
    """Outflow velocity (km/s) for rest-frame wavelengths (the same formula with z = 0)."""
    return outflow_velocity(wave_rest, 0.0, line)


def balnicity_index(
    velocity: np.ndarray,
    norm_flux: np.ndarray,
    *,
    convention: Convention = "weymann",
    v_min: float = BI_VMIN,
    v_max: float = BI_VMAX,
    min_width: float = BI_MIN_WIDTH,
    threshold: float = BI_THRESHOLD,
    dv: float = 5.0,
) -> float:
    """Balnicity index (km/s) of a continuum-normalised spectrum given on outflow velocities.

    ``BI = integral_{v_min}^{v_max} [1 - f(v)/0.9] C dv`` (Weymann+1991). The spectrum is linearly
    interpolated onto a ``dv`` km/s grid over [v_min, v_max] (non-finite fluxes are dropped first),
    so the result does not depend on the input sampling beyond that interpolation. See the module
    docstring for the two conventions for C.
    """
    v = np.asarray(velocity, dtype=np.float64)
    f = np.asarray(norm_flux, dtype=np.float64)
    ok = np.isfinite(v) & np.isfinite(f)
    v, f = v[ok], f[ok]
    if v.size < 2:
        return 0.0
    order = np.argsort(v)
    v, f = v[order], f[order]
    n = round((v_max - v_min) / dv)
    grid = v_min + dv * (np.arange(n) + 0.5)  # cell centres: each cell weighs dv
    inside = (grid >= v[0]) & (grid <= v[-1])
    fg = np.interp(grid, v, f)
    below = inside & (fg < threshold)
    if not below.any():
        return 0.0
    # Runs of consecutive "below" cells.
    d = np.diff(np.concatenate([[0], below.astype(np.int8), [0]]))
    starts, ends = np.flatnonzero(d == 1), np.flatnonzero(d == -1)  # [start, end) in cell index
    deficit = 1.0 - fg / threshold
    total = 0.0
    need = math.ceil(min_width / dv - 1e-9)
    for s, e in zip(starts, ends, strict=True):
        length = e - s
        if length < need:
            continue
        if convention == "weymann":
            # Counting from the high-velocity end (index e-1 downwards), C turns on after `need` cells.
            total += float(deficit[s : e - need].sum()) * dv
        elif convention == "full_run":
            total += float(deficit[s:e].sum()) * dv
        else:
            raise ValueError(f"unknown BI convention {convention!r}")
    return total


def balnicity_index_wave(wave_rest: np.ndarray, norm_flux: np.ndarray, *, line: float = LAM_CIV,
                         **kwargs: Any) -> float:
    """:func:`balnicity_index` for a spectrum given on rest-frame wavelengths (Angstrom)."""
    return balnicity_index(velocity_from_rest(wave_rest, line), norm_flux, **kwargs)
