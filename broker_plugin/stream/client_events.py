"""The service's Kafka client callbacks: partition assignment, revocation and loss, client errors.

Why apart from the loop: librdkafka calls these from inside ``consume``/``poll``; what they must do
(flush, store and commit before giving partitions away; forget lost ones; stop only on fatal
errors; log the rest rate-limited) is a rule of its own, not a step of the loop.
:class:`KafkaCallbacks` is mixed into the service.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from broker_plugin.stream.kafka_errors import error_name, error_text, is_fatal
from broker_plugin.stream.stop import ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")

#: Seconds the shutdown may spend flushing the producer (the whole drain must stay under 10 s).
DRAIN_TIMEOUT_S = 6.0


class KafkaCallbacks:
    """``on_assign``/``on_revoke``/``on_lost`` and ``error_cb`` of the service's clients.

    Expects of the service: ``producer``, ``tracker``, ``metrics``, ``worker``, ``exactly_once``,
    ``stalls`` (the assignment, for :mod:`broker_plugin.stream.stall`), ``_fatal``, ``_error_log`` and ``_store``.
    """

    _fatal: ServiceStop | None

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %d partitions", len(partitions), extra={
            "event": "assign", "worker": f"{self.worker[0]}/{self.worker[1]}", "pid": os.getpid(),
            "partitions": [f"{tp.topic}/{tp.partition}" for tp in partitions]})
        self.stalls.assign(partitions)

    _drain_deadline: float | None = None

    def _drain_left(self) -> float:
        """Seconds a flush may wait: DRAIN_TIMEOUT_S, or what is left of the shutdown's one deadline
        (the drain's own flush and the revocation that closing the consumer triggers share it, so
        SIGTERM ends within ~10 s even with outputs that are never acknowledged)."""
        if self._drain_deadline is None:
            return DRAIN_TIMEOUT_S
        return max(0.0, self._drain_deadline - time.monotonic())

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Before losing partitions: finish their outputs, store and commit, so the next owner starts
        exactly after what we produced."""
        from confluent_kafka import KafkaException

        self.stalls.revoke(partitions)
        try:
            left = self.producer.flush(self._drain_left()) if self.producer is not None else 0
            self._store()
            if not self.exactly_once:
                try:
                    consumer.commit(asynchronous=False)
                except KafkaException as exc:
                    log.debug("commit on revoke: %s", exc)
            keys = [(tp.topic, tp.partition) for tp in partitions]
            lost = self.tracker.forget(keys)
            log.info("revoked %d partitions", len(partitions), extra={
                "event": "revoke", "worker": f"{self.worker[0]}/{self.worker[1]}", "pid": os.getpid(),
                "unacknowledged": lost + left})
        except Exception:  # an exception here would surface from consume() and kill the loop
            log.exception("error while handling partition revocation")

    def _on_lost(self, consumer: Any, partitions: list[Any]) -> None:
        self.stalls.revoke(partitions)
        keys = [(tp.topic, tp.partition) for tp in partitions]
        lost = self.tracker.forget(keys)
        log.warning("lost %d partitions (session timeout?); %d unacknowledged messages will be processed again",
                    len(partitions), lost)

    def _on_kafka_error(self, err: Any) -> None:
        """librdkafka ``error_cb``: client-level errors (broker down, auth). librdkafka reconnects by
        itself; we log at WARNING, rate-limited, and stop only on fatal errors."""
        self.metrics.kafka_errors.labels(error_name(err)).inc()
        if is_fatal(err):
            if self._fatal is None:
                self._fatal = ServiceStop(f"fatal Kafka client error: {error_text(err)}")
            return
        self._log_kafka_error(err, where="client")

    def _log_kafka_error(self, err: Any, *, where: str) -> None:
        name = error_name(err)
        text = error_text(err)
        self._log_rate_limited(f"{where}-{name}", "Kafka %s error %s: %s", where, name, text)

    def _log_rate_limited(self, key: str, fmt: str, *args: Any) -> None:
        ok, suppressed = self._error_log.allow(key, time.monotonic())
        if ok:
            suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
            log.warning(fmt + suffix, *args, extra={"event": "kafka_error", "key": key})
