"""Per input partition, the contiguous run of input messages whose outputs are all acknowledged.

Why: outputs go to different partitions and are acknowledged out of order, but storing offset N+1
means "everything before N+1 is done"; so an offset may be stored only once every earlier message of
its partition is fully acknowledged (at-least-once delivery, see :mod:`broker_plugin.stream.service`).
"""

from __future__ import annotations

import collections
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any


@dataclass(slots=True, eq=False)
class _Entry:
    """One input message whose outputs are in flight."""

    offset: int
    remaining: int
    track: _PartitionTrack
    source: Any = None  # the input message, kept for dead-lettering on a produce failure
    dlq_sent: bool = False
    since: float = 0.0  # time.monotonic() at registration: how long its outputs have been waiting


@dataclass(slots=True, eq=False)
class _PartitionTrack:
    entries: collections.deque[_Entry] = field(default_factory=collections.deque)
    next_offset: int | None = None  # offset to store: everything before it is fully acknowledged
    dirty: bool = False
    alive: bool = True


class OffsetTracker:
    """Per input partition, the contiguous run of input messages whose outputs are all acknowledged.

    ``begin`` registers a consumed message with its number of outputs (0 = done at once, e.g. a
    message outside the replay window); ``done`` records one acknowledged output; ``advanced``
    returns ``(topic, partition, offset_to_store)`` for every partition whose run grew. Messages are
    registered in consume order, which is offset order within a partition; gaps in offsets
    (compaction, transaction markers) do not matter because the run is over registered messages.
    """

    def __init__(self) -> None:
        self._parts: dict[tuple[str, int], _PartitionTrack] = {}
        self.pending = 0  #: messages registered and not yet fully acknowledged
        #: tracks of forgotten (revoked, lost) partitions whose outputs are still in the producer:
        #: they no longer count as pending, but an output the broker never acknowledges is a stall
        self._orphans: list[_PartitionTrack] = []

    def begin(self, topic: str, partition: int, offset: int, outputs: int, source: Any = None) -> _Entry:
        track = self._parts.get((topic, partition))
        if track is None:
            track = self._parts[(topic, partition)] = _PartitionTrack()
        entry = _Entry(offset, outputs, track, source, since=time.monotonic())
        track.entries.append(entry)
        if outputs <= 0:
            track.dirty = True
        else:
            self.pending += 1
        return entry

    def done(self, entry: _Entry) -> None:
        """One output of ``entry`` was acknowledged (or replaced by one that was)."""
        entry.remaining -= 1
        if entry.remaining == 0:
            entry.source = None
            if entry.track.alive:
                self.pending -= 1
                entry.track.dirty = True

    def advanced(self) -> list[tuple[str, int, int]]:
        out = []
        for (topic, partition), track in self._parts.items():
            if not track.dirty:
                continue
            track.dirty = False
            moved = False
            entries = track.entries
            while entries and entries[0].remaining <= 0:
                track.next_offset = entries.popleft().offset + 1
                moved = True
            if moved and track.next_offset is not None:
                out.append((topic, partition, track.next_offset))
        return out

    def forget(self, partitions: Iterable[tuple[str, int]]) -> int:
        """Drop revoked partitions; returns how many of their messages were still unacknowledged
        (their offsets are not stored: the next owner processes them again, at-least-once)."""
        lost = 0
        for key in partitions:
            track = self._parts.pop(key, None)
            if track is None:
                continue
            track.alive = False
            unacked = sum(1 for e in track.entries if e.remaining > 0)
            if unacked:
                self._orphans.append(track)
            lost += unacked
            self.pending -= unacked
        return lost

    def oldest_pending(self) -> float | None:
        """``time.monotonic()`` at which the oldest message still waiting for an acknowledgement was
        registered, None when nothing is pending. Cheap: the first unacknowledged entry of each
        partition is its oldest (entries are in registration order), and after :meth:`advanced` it
        is the head of the queue. Outputs of revoked or lost partitions count too, until the
        broker acknowledges (or refuses) them."""
        oldest: float | None = None
        for track in self._parts.values():
            for entry in track.entries:
                if entry.remaining > 0:
                    if oldest is None or entry.since < oldest:
                        oldest = entry.since
                    break
        if self._orphans:
            for track in self._orphans:
                entries = track.entries
                while entries and entries[0].remaining <= 0:
                    entries.popleft()
                if entries and (oldest is None or entries[0].since < oldest):
                    oldest = entries[0].since
            self._orphans = [t for t in self._orphans if t.entries]
        return oldest

    def partitions(self) -> list[tuple[str, int]]:
        return list(self._parts)

