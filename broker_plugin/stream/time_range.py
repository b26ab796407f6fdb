"""Time-range mode (``processing.time_from``/``time_to``): replay a window of the input topics.

Why it is shaped like this: partitions are *assigned* (no group rebalancing) in a separate group
``<group_id>-range-<from>-<to>`` from ``offsets_for_times``; messages outside the window are skipped
client-side too (Tansu answers offset 0 for every timestamp); a partition is done at its first
message after ``time_to`` or, when ``time_to`` is in the past, when the consumer reaches its end
(librdkafka's partition-EOF event; Tansu's high watermarks are too low, so they are not used).
:class:`TimeRangeMode` holds the service's side of it, mixed into the service.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from broker_plugin.config import ServiceConfig, parse_time_ms
from broker_plugin.stream.stop import EXIT_INPUT, ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")


@dataclass
class TimeRange:
    """A replay window in epoch milliseconds (either end may be open)."""

    start_ms: int | None
    end_ms: int | None

    @classmethod
    def from_config(cls, cfg: ServiceConfig) -> TimeRange | None:
        p = cfg.processing
        if p.time_from is None and p.time_to is None:
            return None
        return cls(parse_time_ms(p.time_from, "processing.time_from") if p.time_from is not None else None,
                   parse_time_ms(p.time_to, "processing.time_to") if p.time_to is not None else None)

    def closed(self, now_ms: float | None = None) -> bool:
        """Whether the window ended in the past: then a partition is also done at its end."""
        now = time.time() * 1000 if now_ms is None else now_ms
        return self.end_ms is not None and self.end_ms <= now

    def suffix(self) -> str:
        return f"range-{self.start_ms if self.start_ms is not None else 'start'}-" \
               f"{self.end_ms if self.end_ms is not None else 'open'}"


class TimeRangeMode:
    """The service's time-range behaviour: assign this worker's partitions, filter, know when done.

    Expects of the service: ``cfg``, ``range``, ``worker``, ``consumer``, ``tracker``, ``stats``,
    ``exactly_once``, ``_started``, ``_range_parts``, ``_range_done`` and ``_retry_until_stopped``.
    """

    range: TimeRange | None
    _range_parts: set[tuple[str, int]]
    _range_done: set[tuple[str, int]]

    def range_finished(self) -> bool:
        """Whether every partition of the window is done (the loop then ends with status 0)."""
        return self.range is not None and self._started and len(self._range_done) >= len(self._range_parts)

    def _assign_range(self) -> None:
        """Time-range mode: assign this worker's share of the input partitions from offsets_for_times."""
        from confluent_kafka import OFFSET_BEGINNING, TopicPartition

        assert self.range is not None
        k = self.cfg.kafka
        metadata = self._retry_until_stopped("list_topics", lambda: self.consumer.list_topics(timeout=10.0))
        names = list(k.input_topics)
        missing = [t for t in names if t not in metadata.topics]
        if missing:
            raise ServiceStop(f"input topic {missing[0]} does not exist (time-range replay needs existing topics)",
                              EXIT_INPUT)
        if k.input_pattern:
            rx = re.compile(k.input_pattern)
            names += sorted(t for t in metadata.topics if not t.startswith("__") and rx.match(t) and t not in names)
        parts = sorted((t, p) for t in names for p in metadata.topics[t].partitions)
        index, count = self.worker
        parts = parts[index::count]
        if self.range.start_ms is not None:
            query = [TopicPartition(t, p, self.range.start_ms) for t, p in parts]
            found = self._retry_until_stopped("offsets_for_times",
                                              lambda: self.consumer.offsets_for_times(query, timeout=10.0))
            starts = {(tp.topic, tp.partition): tp.offset for tp in found}
        else:
            starts = {tp: OFFSET_BEGINNING for tp in parts}
        assign = []
        for t, p in parts:
            start = starts.get((t, p), OFFSET_BEGINNING)
            self._range_parts.add((t, p))
            if start < 0 and start != OFFSET_BEGINNING:  # -1: no message at or after time_from
                self._range_done.add((t, p))
            else:
                assign.append(TopicPartition(t, p, start if start >= 0 else OFFSET_BEGINNING))
        self.consumer.assign(assign)
        log.info("time range %s..%s: %d partitions assigned, %d already done", self.cfg.processing.time_from,
                 self.cfg.processing.time_to, len(assign), len(self._range_done),
                 extra={"event": "assign", "partitions": len(assign)})

    def _filter_range(self, msgs: list[Any], eof: Sequence[tuple[str, int]] = ()) -> list[Any]:
        """Keep in-window messages of unfinished partitions; skipped ones are marked done at once.
        ``eof``: partitions the consumer reached the end of (done when the window is closed)."""
        assert self.range is not None
        start, end = self.range.start_ms, self.range.end_ms
        keep = []
        newly_done = []
        for m in msgs:
            key = (m.topic(), m.partition())
            if key in self._range_done:
                continue
            ts_type, ts = m.timestamp()
            if ts_type and end is not None and ts > end:
                self._range_done.add(key)
                newly_done.append(key)
                continue
            if ts_type and start is not None and ts < start:
                self.stats.skipped += 1
                if not self.exactly_once:
                    self.tracker.begin(key[0], key[1], m.offset(), 0)
            else:
                keep.append(m)
        for key in eof:
            if key not in self._range_done:
                self._range_done.add(key)
                newly_done.append(key)
        if newly_done:
            from confluent_kafka import TopicPartition

            try:
                self.consumer.pause([TopicPartition(t, p) for t, p in newly_done])
            except Exception as exc:  # pausing is an optimisation; the filter above is the rule
                log.debug("pause failed: %s", exc)
        return keep

