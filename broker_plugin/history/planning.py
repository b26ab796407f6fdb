"""What a batch must write and which new object a name joins: shared by the stage and the DR import.

Why one module: the alert stage (:mod:`~broker_plugin.history.stage`) and the data-release import
(:mod:`~broker_plugin.history.dr_import`) both write points under the store's upsert rule and both
group the new objects of one batch by position; each had its own copy (the import's a Python loop
over every stored point). One rule, vectorised, serves both.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from broker_plugin.history.points import ORIGIN_PRIO, Points, time_key
from broker_plugin.history.rows import Probe, StoredObject
from broker_plugin.history.sky import cone_ranges, separation_arcsec

#: New objects of one batch, by zone: (ra, dec, oid, survey) each.
Fresh = dict[int, list[tuple[float, float, int, str]]]


def key_starts(oid: np.ndarray, k: np.ndarray, tkey: np.ndarray) -> np.ndarray:
    """Indices of the first row of each (oid, k, tkey) key in arrays sorted by that key."""
    first = np.r_[True, (oid[1:] != oid[:-1]) | (k[1:] != k[:-1]) | (tkey[1:] != tkey[:-1])]
    return np.flatnonzero(first)


def fresh_match(fresh: Fresh, probe: Probe, radius: float,
                accept: Callable[[str], bool] = lambda _survey: True) -> int | None:
    """The nearest new object of this batch within ``radius`` of ``probe`` whose survey ``accept``s."""
    best: tuple[float, int] | None = None
    for zone, lo, hi in cone_ranges(probe.ra, probe.dec, radius):
        for ra, dec, oid, survey in fresh.get(zone, ()):
            if not (lo <= ra <= hi) or not accept(survey):
                continue
            d = separation_arcsec(probe.ra, probe.dec, ra, dec)
            if d <= radius and (best is None or (d, oid) < best):
                best = (d, oid)
    return None if best is None else best[1]


def needed(new: tuple[np.ndarray, ...], found: dict[int, StoredObject]) -> tuple[np.ndarray, ...]:
    """The rows of ``new`` (point columns, one per key) the store lacks, holds seen later, or holds a
    worse measurement of -- what the upsert would change -- given what was read of the objects."""
    index = {int(o): i for i, o in enumerate(np.unique(new[0]).tolist())}
    return _needed(new, _stored_columns(found, index), index)


def _stored_columns(found: dict[int, StoredObject], index: dict[int, int]) -> tuple[np.ndarray, ...]:
    """composite key, seen, prio, flux_err, flux of the stored points of the batch's objects."""
    parts = [(index[o], obj.points) for o, obj in found.items() if o in index and len(obj.points)]
    if not parts:
        e = np.empty(0)
        return np.empty(0, dtype=np.int64), e, e, e, e
    pts = Points.concat([p for _, p in parts])
    idx = np.concatenate([np.full(len(p), i, dtype=np.int64) for i, p in parts])
    comp = _composite(idx, pts.band.astype(np.int64) * 2 + pts.kind, time_key(pts.mjd))
    prio = ORIGIN_PRIO[pts.origin].astype(np.float64)
    order = np.argsort(comp, kind="stable")
    return comp[order], pts.seen[order], prio[order], pts.flux_err[order], pts.flux[order]


def _composite(idx: np.ndarray, bk: np.ndarray, tkey: np.ndarray) -> np.ndarray:
    """One int64 per (batch object, band and kind, exposure): 19 + 4 + 40 bits."""
    return (idx.astype(np.int64) << 44) | (bk.astype(np.int64) << 40) | (tkey.astype(np.int64) & ((1 << 40) - 1))


def _needed(new: tuple[np.ndarray, ...], stored: tuple[np.ndarray, ...],
            index: dict[int, int]) -> tuple[np.ndarray, ...]:
    """The rows of ``new`` the store lacks, holds later, or holds a worse measurement of."""
    oid, bk, tkey, _origin, prio, _mjd, flux, err, seen = new
    s_comp, s_seen, s_prio, s_err, s_flux = stored
    if s_comp.size == 0:
        return new
    comp = _composite(np.array([index[int(o)] for o in oid.tolist()], dtype=np.int64), bk, tkey)
    pos = np.minimum(np.searchsorted(s_comp, comp), s_comp.size - 1)
    exists = s_comp[pos] == comp
    better = (prio < s_prio[pos]) | ((prio == s_prio[pos]) & ((err < s_err[pos]) | ((err == s_err[pos])
                                                                                   & (flux < s_flux[pos]))))
    need = ~exists | (seen < s_seen[pos]) | better
    return tuple(c[need] for c in new)


