"""The service's side of the history store: opening it, and what a store outage does to a batch.

Why the batch is put back rather than held: while the store is unavailable (locked, restarting,
unreachable) the batch can be neither annotated on its real history nor committed. Holding it in
memory and retrying would stop the consumer from polling, and after ``max.poll.interval.ms`` the
group would take its partitions away. Instead the consumer is rewound to the batch's first offset
on each partition (nothing of it was produced or stored), a WARNING and the
``bal_history_store_errors`` metric say why, the loop waits with exponential backoff (cut short by
SIGTERM) and the next ``consume`` reads the same messages again. No offset moves past an alert
whose history was not written; no crash, no restart loop.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from typing import Any

from broker_plugin.config import ServiceConfig
from broker_plugin.history import HistoryStage, StoreError, open_store
from broker_plugin.history.stage import with_retries

log = logging.getLogger(__name__)

#: Longest wait between two attempts at a batch while the store is unavailable (seconds).
MAX_BACKOFF_S = 30.0
#: How long the service waits for its store at start-up before it gives up (exit 2).
STARTUP_RETRY_S = 60.0


def open_history(cfg: ServiceConfig, *, retry_s: float = STARTUP_RETRY_S,
                 stop: threading.Event | None = None) -> HistoryStage | None:
    """The history stage the configuration asks for (None for ``history.backend: none``).

    A store that cannot be reached yet (a database still starting beside the service) is retried
    with backoff and a WARNING for ``retry_s``; then, or at once for a store of a newer schema or a
    file that is no database, :class:`~broker_plugin.errors.ConfigError` (one line, exit 2).
    ``stop`` (SIGTERM) cuts the wait short: the last error is raised at once.
    """
    h = cfg.history
    if h.backend == "none":
        return None
    spec = h.path if h.backend == "sqlite" else h.url

    def on_retry(attempt: int, exc: Exception, delay: float) -> None:
        log.warning("history store not reachable yet (attempt %d): %s; retrying in %.1f s", attempt, exc, delay,
                    extra={"event": "history_unavailable", "failures": attempt})

    wait = stop if stop is not None else threading.Event()
    store = with_retries(lambda: open_store(spec, radius_arcsec=h.radius_arcsec, cross_survey=h.cross_survey),
                         deadline_s=retry_s, on_retry=on_retry, sleep=wait.wait, stopped=wait.is_set)
    return HistoryStage(store, window_days=h.window_days)


class HistoryOutage:
    """Mixin of :class:`~broker_plugin.stream.service.Service`: put a batch back when the store fails.

    Needs ``consumer``, ``metrics``, ``stop_event`` and ``_error_log`` (a rate limiter) from the service.
    """

    consumer: Any
    metrics: Any
    stop_event: Any
    _error_log: Any
    _store_failures: int = 0

    def history_outage(self, messages: Sequence[Any], exc: StoreError) -> None:
        """Rewind to the batch's first offsets, report, and wait before the batch is read again."""
        from confluent_kafka import TopicPartition

        self._store_failures += 1
        self.metrics.history_errors.inc()
        first: dict[tuple[str, int], int] = {}
        for m in messages:
            key = (m.topic(), m.partition())
            first[key] = min(first.get(key, m.offset()), m.offset())
        for (topic, partition), offset in first.items():
            try:
                self.consumer.seek(TopicPartition(topic, partition, offset))
            except Exception as err:  # partition revoked meanwhile: its new owner reads it from the commit
                log.debug("seek %s[%d]@%d after a store failure: %s", topic, partition, offset, err)
        delay = min(MAX_BACKOFF_S, 0.5 * 2 ** min(self._store_failures - 1, 8))
        if self._error_log.allow("history", time.monotonic())[0]:
            log.warning("history store unavailable (%d batches put back so far): %s; %d messages will be read "
                        "again in %.1f s, no offset committed for them", self._store_failures, exc, len(messages),
                        delay, extra={"event": "history_unavailable", "failures": self._store_failures})
        self.stop_event.wait(delay)

    def history_ok(self) -> None:
        """A batch went through: the next outage starts its backoff from the beginning."""
        if self._store_failures:
            log.warning("history store available again after %d failed attempts", self._store_failures,
                        extra={"event": "history_recovered", "failures": self._store_failures})
            self._store_failures = 0
