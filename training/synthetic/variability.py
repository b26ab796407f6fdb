"""True brightness of simulated objects: the damped random walk and the contaminant models.

Damped random walk (SCIENCE.md, "Quasar variability").
The Ornstein-Uhlenbeck process is simulated with its *exact* update on uneven times,
``x_i = mu + a (x_{i-1} - mu) + N(0, (SF_inf^2 / 2)(1 - a^2))``, ``a = exp(-dt / tau_obs)``, started
from the stationary distribution; there is no time step to choose and no discretisation error.
:func:`drw_unit` evaluates the recursion in closed form with cumulative sums (identical to the
loop up to rounding; the tests compare them).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from .population import EFF_WAVELENGTH, SimObject

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
