"""The history stage of the pipeline: one read before the features, one write after, per batch.

Why per batch: a store round trip costs more than annotating an alert, so the stage asks the store
once for every object of the batch (:meth:`HistoryStage.merge`) and writes everything the batch
taught it in one transaction (:meth:`HistoryStage.write`). Alerts of the same object inside one
batch see each other's points as if they had come in separate batches (each sees the points seen
by its own time), so the batch size never changes a record.

What is written: the packet points of every alert that the store does not already hold as well or
earlier (most of a packet's points are the previous alert's), new objects and the names they were
met under, upper limits, and Rubin's per-object aggregates.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from broker_plugin.alert import Alert, packet_history
from broker_plugin.history.merge import merge_alert
from broker_plugin.history.planning import Fresh, fresh_match, key_starts, needed
from broker_plugin.history.points import (
    PRIO_ALERT,
    Limits,
    Points,
    alert_points,
    limit_points,
    time_key,
)
from broker_plugin.history.sky import object_key, zone_of
from broker_plugin.history.store import (
    SURVEY_CODE,
    Batch,
    HistoryStore,
    Probe,
    StoredObject,
    StoreError,
    new_object_row,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Flag of an alert whose history could not be merged because of a bug (its packet alone was used).
HISTORY_ERROR_FLAG = "history_internal_error"


@dataclass
class Pending:
    """What :meth:`HistoryStage.merge` found and :meth:`HistoryStage.write` stores."""

    batch: Batch = field(default_factory=Batch)


@dataclass(slots=True)
class _Member:
    """One alert of the batch with its object and its packet's own points."""

    alert: Alert
    oid: int
    points: Points
    limits: Limits


def with_retries(fn: Callable[[], T], *, deadline_s: float, on_retry: Callable[[int, StoreError, float], None],
                 sleep: Callable[[float], object] = time.sleep, stopped: Callable[[], bool] = lambda: False) -> T:
    """``fn()``, retried with exponential backoff (0.5 s doubling to 10 s) while it raises
    :class:`StoreError`, until ``deadline_s`` has passed or ``stopped()``; then the last error is raised."""
    start = time.monotonic()
    attempt = 0
    while True:
        try:
            return fn()
        except StoreError as exc:
            attempt += 1
            delay = min(10.0, 0.5 * 2 ** (attempt - 1))
            if time.monotonic() - start + delay > deadline_s or stopped():
                raise
            on_retry(attempt, exc, delay)
            sleep(delay)
            if stopped():
                raise


class HistoryStage:
    """Merge a batch of alerts with their objects' stored histories, then store what they add."""

    def __init__(self, store: HistoryStore, *, window_days: float | None = None) -> None:
        self.store = store
        self.window_days = window_days
        self.cross_survey = store.cross_survey
        self.batches = 0

    def merge(self, alerts: Sequence[Alert]) -> Pending:
        """Replace every alert's light curves by the merged ones (in place); the write to do next.

        Raises the backend's error when the store cannot be read: the caller retries the batch.
        """
        pending = Pending()
        if not alerts:
            return pending
        first: dict[tuple[str, str], Alert] = {}
        for a in alerts:  # each name's earliest alert of the batch locates it (order-independent)
            b = first.get((a.survey, a.object_id))
            if b is None or (a.mjd, a.ra, a.dec) < (b.mjd, b.ra, b.dec):
                first[(a.survey, a.object_id)] = a
        probes = {k: Probe(a.survey, a.object_id, a.ra, a.dec) for k, a in first.items()}
        keys = list(probes)
        oids, found = self.store.read(list(probes.values()))
        oid_of = self._assign(keys, [probes[k] for k in keys], [first[k].mjd for k in keys], oids, found,
                              pending.batch)
        try:
            members = [_Member(a, oid_of[(a.survey, a.object_id)], alert_points(a),
                               limit_points(a.upper_limits, float(a.mjd))) for a in alerts]
            self._merge_members(members, found)
            self._plan_writes(members, found, pending.batch)
        except Exception:  # a bug here must cost the history, not the batch
            log.exception("history merge failed for a batch of %d alerts; their packets alone are used", len(alerts))
            for a in alerts:
                a.history = packet_history(a.lightcurves)
                if HISTORY_ERROR_FLAG not in a.flags:
                    a.flags.append(HISTORY_ERROR_FLAG)
            return Pending()
        self.batches += 1
        return pending

    def write(self, pending: Pending) -> None:
        """Store the batch (one transaction); raises the backend's error for the caller to retry."""
        self.store.write(pending.batch)

    # -- association -----------------------------------------------------------------------------

    def _assign(self, keys: list[tuple[str, str]], probes: list[Probe], times: list[float], oids: list[int | None],
                found: dict[int, StoredObject], batch: Batch) -> dict[tuple[str, str], int]:
        """The oid of every (survey, name) of the batch; new objects and aliases added to ``batch``.

        A name not yet stored but matched by position becomes an alias of that object. Unmatched names
        within the radius of each other in this batch become one new object (the first name's).
        """
        out: dict[tuple[str, str], int] = {}
        fresh: Fresh = {}  # zone -> new objects of this batch
        radius = self.store.radius_arcsec
        for (survey, name), probe, t, oid in zip(keys, probes, times, oids, strict=True):
            if oid is None:
                oid = fresh_match(fresh, probe, radius, accept=lambda s, p=probe: self.cross_survey or s == p.survey)
            if oid is None:
                oid = object_key(survey, name)
                fresh.setdefault(zone_of(probe.dec), []).append((probe.ra, probe.dec, oid, survey))
                found.setdefault(oid, StoredObject(oid))
            # every object of the batch: its row takes this position only if this is its earliest
            # sighting (a no-op otherwise), so workers in any order agree on where an object is
            batch.objects.append(new_object_row(oid, survey, probe.ra, probe.dec, t))
            batch.aliases.append((SURVEY_CODE[survey], name, oid))
            out[(survey, name)] = oid
        return out

    # -- merging ---------------------------------------------------------------------------------

    def _merge_members(self, members: list[_Member], found: dict[int, StoredObject]) -> None:
        by_oid: dict[int, list[_Member]] = {}
        for m in members:
            by_oid.setdefault(m.oid, []).append(m)
        for oid, group in by_oid.items():
            obj = found.get(oid) or StoredObject(oid)
            points = Points.concat([obj.points, *(m.points for m in group)]) if len(group) > 1 or len(obj.points) \
                else Points.empty()
            limits = Limits.concat([obj.limits, *(m.limits for m in group)]) if len(obj.limits) or len(group) > 1 \
                else None
            for m in group:
                aggregates = _latest_aggregates(obj, m.alert)
                merge_alert(m.alert, points, limits, cross_survey=self.cross_survey, window_days=self.window_days,
                            aggregates=aggregates, packet=m.points)

    # -- what to write ---------------------------------------------------------------------------

    def _plan_writes(self, members: list[_Member], found: dict[int, StoredObject], batch: Batch) -> None:
        new = _point_columns(members)
        if new is not None:
            batch.point_cols = needed(new, found)
        lim = _limit_columns(members)
        if lim is not None:
            batch.limit_cols = lim
        for m in members:
            if m.alert.aggregates:
                have = found.get(m.oid)
                prev = have.aggregates.get(m.alert.survey) if have else None
                if prev is None or prev[0] < m.alert.mjd:
                    batch.aggregates.append((m.oid, SURVEY_CODE[m.alert.survey], float(m.alert.mjd),
                                             json.dumps(m.alert.aggregates, sort_keys=True, allow_nan=True)))


def _latest_aggregates(obj: StoredObject, alert: Alert) -> dict[str, float] | None:
    got = obj.aggregates.get(alert.survey)
    return got[1] if got is not None and got[0] <= alert.mjd else None


def _point_columns(members: Sequence[_Member]) -> tuple[np.ndarray, ...] | None:
    """oid, bk, tkey, origin, prio, mjd, flux, flux_err, seen of every packet point of the batch,
    one row per key: the best measurement, seen at the earliest alert that carried it."""
    parts = [(m.oid, m.points) for m in members if len(m.points)]
    if not parts:
        return None
    pts = Points.concat([p for _, p in parts])
    oid = np.concatenate([np.full(len(p), o, dtype=np.int64) for o, p in parts])
    bk = pts.band.astype(np.int16) * 2 + pts.kind
    tkey = time_key(pts.mjd)
    order = np.lexsort((pts.flux, pts.flux_err, tkey, bk, oid))
    oid, bk, tkey, pts = oid[order], bk[order], tkey[order], pts.take(order)
    starts = key_starts(oid, bk, tkey)
    seen = np.minimum.reduceat(pts.seen, starts)
    keep = pts.take(starts)
    prio = np.full(starts.size, PRIO_ALERT, dtype=np.int16)
    return (oid[starts], bk[starts], tkey[starts], keep.origin.astype(np.int16), prio, keep.mjd, keep.flux,
            keep.flux_err, seen)


def _limit_columns(members: Sequence[_Member]) -> tuple[np.ndarray, ...] | None:
    parts = [(m.oid, m.limits) for m in members if len(m.limits)]
    if not parts:
        return None
    lim = Limits.concat([p for _, p in parts])
    oid = np.concatenate([np.full(len(p), o, dtype=np.int64) for o, p in parts])
    tkey = time_key(lim.mjd)
    band = lim.band.astype(np.int16)
    order = np.lexsort((-lim.limit_mag, tkey, band, oid))
    oid, band, tkey, lim = oid[order], band[order], tkey[order], lim.take(order)
    starts = key_starts(oid, band, tkey)
    seen = np.minimum.reduceat(lim.seen, starts)
    return oid[starts], band[starts], tkey[starts], lim.mjd[starts], lim.limit_mag[starts], seen
