"""Silent stalls: the conditions under which the service looks alive but does no useful work.

Why apart from the loop: a consumer that sits with no partition, a producer whose outputs are never
acknowledged (the broker was replaced: new cluster id, the idempotent producer's id unknown to it),
or a subscription that matches no topic all leave the progress lines looking healthy ("0 alerts
in"). Each is a rule of its own, checked once per loop turn from ``post_produce``, cheaply:

* **unacknowledged outputs**: the oldest input whose outputs are still waiting for the broker
  (:meth:`~broker_plugin.stream.offsets.OffsetTracker.oldest_pending`, O(partitions)) is older than
  ``observability.unacked_timeout_s`` -> WARNING, ``bal_stalled{reason="unacknowledged"}`` and exit 1
  after the drain, so that the orchestrator restarts the pod with fresh clients;
* **cluster id changed**: read from ``consumer.list_topics()`` once per ``kafka.metadata_refresh_ms``
  (never per batch) -> WARNING, ``bal_stalled{reason="cluster_changed"}`` and exit 1;
* **no assignment**: no partition assigned (``on_assign``/``on_revoke``/``on_lost``) for
  ``observability.no_assignment_timeout_s`` -> WARNING repeated every that many seconds,
  ``bal_stalled{reason="no_assignment"}``; the service keeps running (the group may rebalance);
* **subscription unmatched**: from the same metadata, input topics that do not exist and an
  ``input_pattern`` that matches no topic -> ``bal_subscription_unmatched`` (how many) and, once it
  has lasted ``no_assignment_timeout_s``, a WARNING repeated at that period; keeps running.

The loop's heartbeat (each turn, idle turns included) and these conditions are what ``/healthz``
answers (:meth:`Stalls.report`, read from the metrics HTTP thread): 503 when the heartbeat is older
than ``max(60 s, 3 x batch_timeout_s)`` or a condition that ends the process holds.
:class:`StallWatch` is mixed into the service; :class:`Stalls` holds the state.
"""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Iterable
from typing import Any

from broker_plugin.config import ServiceConfig
from broker_plugin.stream.stop import ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")

#: Lower bound of the heartbeat age ``/healthz`` accepts (a batch of slow models must not fail it).
HEARTBEAT_MIN_S = 60.0
#: Seconds the periodic metadata request may block the loop (broker down: it fails, next time again).
METADATA_TIMEOUT_S = 2.0


class Stalls:
    """State of the stall checks; :meth:`report` is ``/healthz`` (``metrics.health``).

    ``heartbeat_limit_s`` may be lowered (tests); times are ``time.monotonic()``.
    """

    def __init__(self, cfg: ServiceConfig, metrics: Any) -> None:
        o = cfg.observability
        now = time.monotonic()
        self.metrics = metrics
        self.unacked_timeout_s = o.unacked_timeout_s
        self.no_assignment_timeout_s = o.no_assignment_timeout_s
        self.heartbeat_limit_s = max(HEARTBEAT_MIN_S, 3.0 * cfg.processing.batch_timeout_s)
        self.metadata_interval_s = cfg.kafka.metadata_refresh_ms / 1000.0
        self.heartbeat = now
        self.next_metadata = now
        self.cluster_id: str | None = None
        self.assigned: set[tuple[str, int]] = set()
        self.unassigned_since: float | None = now
        self.unmatched: list[str] = []
        self.unmatched_since: float | None = None
        self.holding: dict[str, bool] = {}  #: condition -> whether it ends the process
        self._warned: dict[str, float] = {}
        if hasattr(metrics, "health"):
            metrics.health = self.report

    def flag(self, reason: str, on: bool, *, fatal: bool = False) -> None:
        """Condition ``reason`` starts (``on``) or ends; mirrored in ``bal_stalled``."""
        if on:
            self.holding[reason] = fatal
        else:
            self.holding.pop(reason, None)
        gauge = getattr(self.metrics, "stalled", None)
        if gauge is not None and reason != "subscription_unmatched":
            gauge.labels(reason).set(1 if on else 0)

    def due(self, key: str, now: float, period: float) -> bool:
        """True at most once per ``period`` seconds per ``key`` (periodic WARNINGs)."""
        last = self._warned.get(key)
        if last is not None and now - last < period:
            return False
        self._warned[key] = now
        return True

    def assign(self, partitions: Iterable[Any]) -> None:
        self.assigned.update((tp.topic, tp.partition) for tp in partitions)
        if self.assigned:
            self.unassigned_since = None
            if "no_assignment" in self.holding:
                self.flag("no_assignment", False)
                log.info("partitions assigned again (%d)", len(self.assigned))

    def revoke(self, partitions: Iterable[Any]) -> None:
        self.assigned.difference_update((tp.topic, tp.partition) for tp in partitions)
        if not self.assigned and self.unassigned_since is None:
            self.unassigned_since = time.monotonic()

    def report(self) -> tuple[int, dict[str, Any]]:
        """``(HTTP status, body)`` of ``/healthz``: 200 while the loop turns and nothing fatal holds."""
        age = time.monotonic() - self.heartbeat
        holding = self.holding.copy()  # the loop thread may change it meanwhile
        stalled = sorted(holding)
        beating = age < self.heartbeat_limit_s
        if not beating:
            stalled.insert(0, "heartbeat")
        ok = beating and not any(holding.values())
        return (200 if ok else 503), {"status": "ok" if ok else "stalled", "heartbeat_age_s": round(age, 3),
                                      "heartbeat_limit_s": self.heartbeat_limit_s, "stalled": stalled}


class StallWatch:
    """The checks of :mod:`broker_plugin.stream.stall`, run from the loop.

    Expects of the service: ``cfg``, ``consumer``, ``producer``, ``tracker``, ``range``, ``stalls``,
    ``metrics``, ``stats``, ``group_id``, ``max_in_flight``, ``_fatal``, ``_stopping`` and the
    progress counters ``_last_progress``/``_progress_base``.
    """

    stalls: Stalls
    _fatal: ServiceStop | None

    def _backpressure(self) -> None:
        """Bound the outputs in flight: serve delivery reports until few enough are left (the loop
        still turns: heartbeat; the unacknowledged-output check may end the wait)."""
        while self.tracker.pending > self.max_in_flight and self._fatal is None and not self._stopping():
            self.producer.poll(0.1)
            now = time.monotonic()
            self.stalls.heartbeat = now
            self._check_unacked(now)

    def watch_stalls(self) -> None:
        """Once per loop turn: heartbeat, unacknowledged outputs, and at a low rate the metadata
        (cluster id, subscription); raises :class:`ServiceStop` (exit 1) on a fatal stall."""
        now = time.monotonic()
        s = self.stalls
        s.heartbeat = now
        self._check_unacked(now)
        if self._fatal is not None:
            raise self._fatal
        if now >= s.next_metadata:
            self._check_metadata(now)
        if self.range is None:
            self._check_assignment(now)

    def _check_unacked(self, now: float) -> None:
        s = self.stalls
        oldest = self.tracker.oldest_pending()
        if oldest is None or now - oldest < s.unacked_timeout_s or "unacknowledged" in s.holding:
            return
        s.flag("unacknowledged", True, fatal=True)
        msg = (f"outputs ({_queued(self.producer)} in the producer) have waited {now - oldest:.0f} s for the broker's "
               f"acknowledgement (observability.unacked_timeout_s={s.unacked_timeout_s:g}): the producer is stuck "
               "(broker replaced or unreachable?); stopping so that the service is restarted with new clients")
        log.warning("%s", msg, extra={"event": "stall", "reason": "unacknowledged", "in_flight": self.tracker.pending,
                                       "oldest_s": round(now - oldest, 1)})
        if self._fatal is None:
            self._fatal = ServiceStop(msg)

    def _check_metadata(self, now: float) -> None:
        s = self.stalls
        s.next_metadata = now + s.metadata_interval_s
        try:
            md = self.consumer.list_topics(timeout=METADATA_TIMEOUT_S)
        except Exception as exc:  # broker unreachable (KafkaException), or a client without metadata
            log.debug("metadata for the stall checks: %s", exc)
            return
        cluster_id = getattr(md, "cluster_id", None)
        if cluster_id:
            if s.cluster_id is None:
                s.cluster_id = cluster_id
            elif cluster_id != s.cluster_id:
                s.flag("cluster_changed", True, fatal=True)
                msg = (f"the Kafka cluster id changed from {s.cluster_id} to {cluster_id} (the broker was replaced): "
                       "group state and producer ids are gone; stopping so that the service is restarted")
                log.warning("%s", msg, extra={"event": "stall", "reason": "cluster_changed",
                                              "old_cluster_id": s.cluster_id, "cluster_id": cluster_id})
                raise ServiceStop(msg)
        if self.range is None:
            self._check_subscription(now, {n for n, t in md.topics.items() if getattr(t, "error", None) is None})

    def _check_subscription(self, now: float, names: set[str]) -> None:
        s = self.stalls
        k = self.cfg.kafka
        unmatched = [t for t in k.input_topics if t not in names]
        if k.input_pattern:
            pattern = k.input_pattern if k.input_pattern.startswith("^") else "^" + k.input_pattern
            try:
                rx: re.Pattern[str] | None = re.compile(pattern)
            except re.error:  # a POSIX regex Python cannot read: librdkafka's business, not ours
                rx = None
            if rx is not None and not any(rx.search(n) for n in names):
                unmatched.append(pattern)
        self.metrics.subscription_unmatched.set(len(unmatched))
        s.unmatched = unmatched
        if not unmatched:
            s.unmatched_since = None
            s.holding.pop("subscription_unmatched", None)
            return
        s.holding["subscription_unmatched"] = False
        if s.unmatched_since is None:
            s.unmatched_since = now
        period = s.no_assignment_timeout_s
        if now - s.unmatched_since >= period and s.due("unmatched", now, period):
            log.warning("subscription matches no topic for %.0f s: %s (topics absent from the metadata)",
                        now - s.unmatched_since, ", ".join(unmatched),
                        extra={"event": "stall", "reason": "subscription_unmatched", "unmatched": unmatched})

    def _check_assignment(self, now: float) -> None:
        s = self.stalls
        since = s.unassigned_since
        period = s.no_assignment_timeout_s
        if since is None or now - since < period:
            return
        if "no_assignment" not in s.holding:
            s.flag("no_assignment", True)
        if s.due("no_assignment", now, period):
            why = (f"the subscription matches nothing ({', '.join(s.unmatched)})" if s.unmatched else
                   "the group may have more members than partitions, or its coordinator lost track of it")
            log.warning("no partition assigned for %.0f s in group %s: %s; still running", now - since,
                        self.group_id, why, extra={"event": "stall", "reason": "no_assignment",
                                                   "seconds": round(now - since, 1)})

    def _log_progress(self, now: float) -> None:
        done = self.stats.consumed
        rate = (done - self._progress_base) / max(now - self._last_progress, 1e-9)
        self._last_progress = now
        self._progress_base = done
        oldest = self.tracker.oldest_pending()
        log.info("%d alerts in, %d annotated, %d rejected, %d candidates (%.0f alerts/s)", done,
                 self.stats.annotated, self.stats.rejected, self.stats.produced_candidates, rate,
                 extra={"event": "progress", "alerts_in": done, "annotated": self.stats.annotated,
                        "rejected": self.stats.rejected, "candidates": self.stats.produced_candidates,
                        "alerts_per_s": round(rate, 1), "in_flight": self.tracker.pending,
                        "oldest_unacked_s": None if oldest is None else round(time.monotonic() - oldest, 1),
                        "assigned": len(self.stalls.assigned), "stalled": sorted(self.stalls.holding)})


def _queued(producer: Any) -> str:
    """How many messages the producer still holds (``len(producer)``), or ``"?"``."""
    try:
        return str(len(producer))
    except TypeError:
        return "?"
