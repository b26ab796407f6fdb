"""What the history store reads and writes, as plain rows: probes, stored objects, a batch's writes.

Why apart from :mod:`~broker_plugin.history.store`: these are the values that cross the store's
interface (the stage, the data-release import and the benchmark build them), while the store module
holds the SQL; keeping them here lets each stay small and lets callers import the rows without the
backends.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from broker_plugin.history.points import Limits, Points
from broker_plugin.history.sky import zone_of

#: Survey codes of objects and aliases; ``ztf_dr`` names data-release objects (IRSA oids / sources).
SURVEY_CODE: dict[str, int] = {"ztf": 0, "lsst": 1, "ztf_dr": 2}
SURVEY_NAME: dict[int, str] = {v: k for k, v in SURVEY_CODE.items()}
#: The survey an alias belongs to for association (data-release objects are the survey's own).
OBJECT_SURVEY: dict[str, str] = {"ztf": "ztf", "lsst": "lsst", "ztf_dr": "ztf"}
#: Rows per ``IN (...)`` list: well under SQLite's parameter limit, and large enough to be few queries.
IN_CHUNK = 900


class StoreError(ConfigError):
    """The store could not be read or written (unreachable, locked, full); the batch can be retried.

    A :class:`~broker_plugin.errors.ConfigError`: where it ends a command (a replay whose store stays
    unreachable, a wrong URL) it is one line and exit status 2; the service retries instead.
    """


class StoreVersionError(ConfigError):
    """The store was written by a newer version of this code."""


@dataclass(frozen=True, slots=True)
class Probe:
    """An object to look up: the name a survey gives it and where it is."""

    survey: str  # a SURVEY_CODE key
    name: str
    ra: float
    dec: float


@dataclass(slots=True)
class StoredObject:
    """What the store holds about one object."""

    oid: int
    points: Points = field(default_factory=Points.empty)
    limits: Limits = field(default_factory=Limits.empty)
    #: (mjd, aggregates) per survey, the latest alert's.
    aggregates: dict[str, tuple[float, dict[str, float]]] = field(default_factory=dict)


@dataclass(slots=True)
class Batch:
    """Everything one batch writes (see :meth:`HistoryStore.write`); arrays are column-aligned."""

    objects: list[tuple[int, int, float, float, int, float]] = field(default_factory=list)  # oid survey ra dec zone t
    aliases: list[tuple[int, str, int]] = field(default_factory=list)  # survey, name, oid
    point_cols: tuple[np.ndarray, ...] | None = None  # oid, bk, tkey, origin, prio, mjd, flux, flux_err, seen
    limit_cols: tuple[np.ndarray, ...] | None = None  # oid, band, tkey, mjd, limit_mag, seen
    aggregates: list[tuple[int, int, float, str]] = field(default_factory=list)  # oid, survey, mjd, json

    def is_empty(self) -> bool:
        return not (self.objects or self.aliases or self.aggregates
                    or (self.point_cols is not None and len(self.point_cols[0]))
                    or (self.limit_cols is not None and len(self.limit_cols[0])))


def _points_of(rows: Sequence[tuple[Any, ...]]) -> tuple[np.ndarray, Points]:
    """(oid per row, Points) of fetched ``points`` rows (oid, bk, origin, mjd, flux, flux_err, seen).

    One conversion of the whole rows (the oid column, which float64 cannot hold exactly, is read
    again as integers): slicing each row first cost more than the conversion.
    """
    oids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    arr = np.array(rows, dtype=np.float64).reshape(len(rows), 7)
    bk = arr[:, 1].astype(np.int8)
    return oids, Points(bk >> 1, bk & 1, arr[:, 2].astype(np.int8), arr[:, 3].copy(), arr[:, 4].copy(),
                        arr[:, 5].copy(), arr[:, 6].copy())


def _limits_of(rows: Sequence[tuple[Any, ...]]) -> tuple[np.ndarray, Limits]:
    oids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
    arr = np.array([r[1:] for r in rows], dtype=np.float64).reshape(len(rows), 4)
    return oids, Limits(arr[:, 0].astype(np.int8), arr[:, 1].copy(), arr[:, 2].copy(), arr[:, 3].copy())


def _split(oids: np.ndarray, cols: Any, found: dict[int, StoredObject], attr: str) -> None:
    """Give each object its rows (``oids`` sorted, as the queries order them)."""
    if oids.size == 0:
        return
    cuts = np.flatnonzero(np.r_[True, oids[1:] != oids[:-1], True])
    for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
        obj = found.get(int(oids[a]))
        if obj is not None:
            setattr(obj, attr, cols.take(slice(a, b)))  # views of the fetched arrays: no copy


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _remapped(cols: tuple[np.ndarray, ...], remap: dict[int, int]) -> tuple[np.ndarray, ...]:
    """``cols`` with oids moved to the object another writer created first (rare)."""
    if not remap:
        return cols
    oid = cols[0].copy()
    for old, new in remap.items():
        oid[oid == old] = new
    return (oid, *cols[1:])


def new_object_row(oid: int, survey: str, ra: float, dec: float,
                   first_mjd: float = 1e9) -> tuple[int, int, float, float, int, float]:
    """The ``objects`` row of a new object of ``survey`` (an alias survey), first seen at ``first_mjd``
    (its position is replaced by an earlier sighting's; the default loses to every real time)."""
    return oid, SURVEY_CODE[OBJECT_SURVEY[survey]], float(ra), float(dec), zone_of(dec), float(first_mjd)


