"""Data-release light curves into the history store: IRSA sources as objects of their own, or as
more names of an object the store already holds at their position.

Why by position: a data-release source is named by IRSA object ids, an alert by its survey's
objectId, and nothing links the two but the sky. Each source is looked up first by its own name
(alias survey ``ztf_dr``; a second import of the same file finds it there, so imports are
idempotent), then by position through :meth:`~broker_plugin.history.store.HistoryStore.read`, which
lets a ``ztf_dr`` probe match a ZTF object (``OBJECT_SURVEY`` maps ``ztf_dr`` to ``ztf``). Only a
source with neither becomes a new object.

The light-curve reader (:func:`broker_plugin.files.dr_lightcurves.load_ztf_lightcurves`) groups oids
into sources by position within one file only: the same star read from two files is two sources.
The store's positional association merges them: the second file's source is within the radius of
the first's object and becomes another name of it, so a source split across files ends up as one
object.

Points are written as the data release's (``ORIGIN_ZTF_DR``, priority ``PRIO_DR``), seen at their
own time: an alert may use every data-release point taken before it (see
:mod:`~broker_plugin.history.merge`). This module takes the light-curve set as a plain mapping
(``{key: {band: LightCurve}}`` with ``.positions``) so the history layer needs nothing from
``broker_plugin.files``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterator, Mapping
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from broker_plugin.alert import LightCurve
from broker_plugin.history.planning import Fresh, fresh_match, key_starts, needed
from broker_plugin.history.points import (
    BAND_CODE,
    ORIGIN_ZTF_DR,
    PRIO_DR,
    kind_code,
    time_key,
)
from broker_plugin.history.sky import object_key, zone_of
from broker_plugin.history.store import SURVEY_CODE, Batch, HistoryStore, Probe, new_object_row

#: Alias survey of data-release sources.
DR_SURVEY = "ztf_dr"
#: Sources per transaction: large enough that a file of thousands of sources is a few round trips.
CHUNK_SOURCES = 1000


class LightCurveSetLike(Protocol):
    """What :func:`import_lightcurves` reads of a ``LightCurveSet``."""

    positions: dict[Hashable, tuple[float, float]]

    def items(self) -> Iterator[tuple[Hashable, Mapping[str, LightCurve]]]: ...  # pragma: no cover


@dataclass
class ImportCounts:
    """What an import did: sources read, objects created, sources named onto existing objects, points."""

    sources: int = 0
    objects_new: int = 0
    associated: int = 0
    points: int = 0
    batches: int = 0

    def add(self, other: ImportCounts) -> None:
        for name in ("sources", "objects_new", "associated", "points", "batches"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


def import_lightcurves(store: HistoryStore, lcset: LightCurveSetLike, *,
                       chunk_sources: int = CHUNK_SOURCES) -> ImportCounts:
    """Write every source of ``lcset`` to ``store``: one read and one transaction per chunk of sources.

    Sources without a position are skipped (the reader gives every source one). Raises
    :class:`~broker_plugin.history.store.StoreError` when the store cannot be read or written.
    """
    counts = ImportCounts()
    items = [(str(k), lcs) for k, lcs in lcset.items() if k in lcset.positions]
    positions = {str(k): v for k, v in lcset.positions.items()}
    for start in range(0, len(items), max(1, chunk_sources)):
        chunk = items[start:start + chunk_sources]
        counts.add(_import_chunk(store, chunk, positions))
    return counts


def _import_chunk(store: HistoryStore, chunk: list[tuple[str, Mapping[str, LightCurve]]],
                  positions: Mapping[str, tuple[float, float]]) -> ImportCounts:
    counts = ImportCounts(sources=len(chunk))
    probes = [Probe(DR_SURVEY, key, *positions[key]) for key, _ in chunk]
    oids, found = store.read(probes)
    named = store._aliases(probes)  # which probes were found by their own name (the rest: by position)
    batch = Batch()
    fresh: Fresh = {}
    oid_of: list[int] = []
    for probe, oid, (_, lcs) in zip(probes, oids, chunk, strict=True):
        if oid is None:
            oid = fresh_match(fresh, probe, store.radius_arcsec)
        if oid is None:
            oid = object_key(DR_SURVEY, probe.name)
            fresh.setdefault(zone_of(probe.dec), []).append((probe.ra, probe.dec, oid, DR_SURVEY))
            counts.objects_new += 1
        elif (SURVEY_CODE[DR_SURVEY], probe.name) not in named:
            counts.associated += 1
        # every source's object row: the store keeps the position of the earliest sighting, so the
        # data release (taken before the alerts, usually) places the object whichever came first
        batch.objects.append(new_object_row(oid, DR_SURVEY, probe.ra, probe.dec, _first_mjd(lcs)))
        if (SURVEY_CODE[DR_SURVEY], probe.name) not in named:
            batch.aliases.append((SURVEY_CODE[DR_SURVEY], probe.name, oid))
        oid_of.append(oid)
    cols = _point_columns([(oid, lcs) for oid, (_, lcs) in zip(oid_of, chunk, strict=True)])
    if cols is not None:
        cols = needed(cols, found)
        batch.point_cols = cols
        counts.points = int(cols[0].size)
    if not batch.is_empty():
        store.write(batch)
        counts.batches = 1
    return counts


def _first_mjd(lcs: Mapping[str, LightCurve]) -> float:
    """The time of a source's first point (the store's default, later than any, when it has none)."""
    firsts = [float(np.min(lc.mjd)) for lc in lcs.values() if len(lc)]
    return min(firsts) if firsts else 1e9


def _point_columns(sources: list[tuple[int, Mapping[str, LightCurve]]]) -> tuple[np.ndarray, ...] | None:
    """oid, bk, tkey, origin, prio, mjd, flux, flux_err, seen of every point, one row per key (the
    smallest error, then flux, wins a key: the store's rule)."""
    parts: list[tuple[int, np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = []
    for oid, lcs in sources:
        for band, lc in lcs.items():
            code = BAND_CODE.get(band)
            if code is None or len(lc) == 0:
                continue
            bk = np.full(len(lc), code * 2 + kind_code(lc.kind), dtype=np.int16)
            parts.append((oid, bk, np.asarray(lc.mjd, dtype=np.float64), np.asarray(lc.flux, dtype=np.float64),
                          np.asarray(lc.flux_err, dtype=np.float64)))
    if not parts:
        return None
    oid = np.concatenate([np.full(p[1].size, p[0], dtype=np.int64) for p in parts])
    bk, mjd, flux, err = (np.concatenate([p[i] for p in parts]) for i in range(1, 5))
    ok = np.isfinite(mjd) & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    oid, bk, mjd, flux, err = oid[ok], bk[ok], mjd[ok], flux[ok], err[ok]
    tkey = time_key(mjd)
    order = np.lexsort((flux, err, tkey, bk, oid))
    oid, bk, tkey, mjd, flux, err = oid[order], bk[order], tkey[order], mjd[order], flux[order], err[order]
    first = key_starts(oid, bk, tkey)
    n = first.size
    return (oid[first], bk[first], tkey[first], np.full(n, ORIGIN_ZTF_DR, dtype=np.int16),
            np.full(n, PRIO_DR, dtype=np.int16), mjd[first], flux[first], err[first], mjd[first].copy())


__all__ = ["CHUNK_SOURCES", "DR_SURVEY", "ImportCounts", "LightCurveSetLike", "import_lightcurves"]
