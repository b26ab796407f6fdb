"""Survey cadences: when a field is observed, in which band, and how deep.

ZTF (:func:`ztf_cadence`): a field is observable ~8 months a year (while the Sun is more than
~120 deg of right ascension away from it), visited every 1-4 nights (mean ~2.4, the public
survey's 2-3 night cadence) in g and in r on the same night with probability 0.85 each, a night
lost to weather with probability 0.25; the 5-sigma depth of each epoch is the nominal m5
(g 20.8, r 20.6) minus a moon-phase penalty, with 0.25 mag seeing/transparency scatter.
Rubin (:func:`rubin_cadence`): ~6.5-month seasons, ~45 visit nights per season in pairs of
visits ~33 min apart, bands drawn with the LSST WFD visit shares (u 7%, g 9%, r 22%, i 22%,
z 20%, y 20%), nominal single-visit m5 u 23.9, g 25.0, r 24.7, i 24.0, z 23.3, y 22.1.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

ZTF_M5: dict[str, float] = {"g": 20.8, "r": 20.6}
RUBIN_M5: dict[str, float] = {"u": 23.9, "g": 25.0, "r": 24.7, "i": 24.0, "z": 23.3, "y": 22.1}

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
