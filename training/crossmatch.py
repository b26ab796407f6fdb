"""Positional cross-match of light-curve sources to catalogue quasars (one-to-one, nearest wins)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

import numpy as np

from .dr16q import QuasarCatalogue
from .ztf_lightcurves import LightCurveSet


def match_lightcurves(
    catalogue: QuasarCatalogue,
    lc_positions: Mapping[Hashable, tuple[float, float]] | LightCurveSet,
    radius_arcsec: float = 1.5,
) -> dict[Hashable, int]:
    """Cross-match light-curve sources to catalogue rows by position: ``{source_key: catalogue_row}``.

    Each source goes to its nearest catalogue quasar if within ``radius_arcsec``; when several sources
    land on one quasar, only the nearest keeps it (one-to-one). ZTF astrometry is good to ~0.1-0.3",
    and 1.5" is the distance within which the runtime treats a detection as sitting on a
    reference source (``DC_MAX_DISTNR``).
    """
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    positions = lc_positions.positions if isinstance(lc_positions, LightCurveSet) else lc_positions
    keys = list(positions)
    if not keys or len(catalogue) == 0:
        return {}
    ra = np.array([positions[k][0] for k in keys], dtype=np.float64)
    dec = np.array([positions[k][1] for k in keys], dtype=np.float64)
    src = SkyCoord(ra * u.deg, dec * u.deg)
    cat = SkyCoord(catalogue.ra * u.deg, catalogue.dec * u.deg)
    if len(catalogue) == 1:
        sep = src.separation(cat[0]).arcsec
        idx = np.zeros(len(keys), dtype=np.int64)
    else:
        idx, sep2d, _ = src.match_to_catalog_sky(cat)
        sep = sep2d.arcsec
    best: dict[int, tuple[float, Hashable]] = {}
    for k, i, s in zip(keys, idx, sep, strict=True):
        if s <= radius_arcsec and (int(i) not in best or s < best[int(i)][0]):
            best[int(i)] = (float(s), k)
    return {k: i for i, (_, k) in sorted(best.items(), key=lambda kv: str(kv[1][1]))}
