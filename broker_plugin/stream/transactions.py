"""Exactly-once delivery (``kafka.exactly_once: true``): one Kafka transaction per batch.

Why it is shaped like this: per batch ``begin_transaction``, produce, ``send_offsets_to_transaction``
(batch positions, the group metadata), ``commit_transaction``; on failure ``abort_transaction`` and
rewind the consumer to the batch start, so the batch is processed again. Messages whose outputs can
never be produced (too large, ...) are remembered and go to the DLQ on that replay, so one bad
message cannot abort every transaction. (The embedded Tansu broker shows aborted records to
read_committed readers, so only the happy path is testable there.) :class:`ExactlyOnceDelivery` is
mixed into the service.
"""

from __future__ import annotations

import collections
import logging
from collections.abc import Callable, Sequence
from typing import Any

from broker_plugin.stream.kafka_errors import PERMANENT_PRODUCE_ERRORS, error_name, error_text, is_fatal
from broker_plugin.stream.outputs import Output, Work
from broker_plugin.stream.stop import ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")

#: Consecutive aborted transactions (exactly_once) before the service gives up with status 1.
MAX_TXN_FAILURES = 5


class _TxnAbort(Exception):
    """Internal: abort the current transaction (a produce was refused)."""


Positions = dict[tuple[str, int], int]


def batch_positions(works: Sequence[Work]) -> tuple[Positions, Positions]:
    """Per input partition, the batch's first offset (where to rewind) and the next one (to commit)."""
    first: Positions = {}
    nxt: Positions = {}
    for w in works:
        key = (w.msg.topic(), w.msg.partition())
        first.setdefault(key, w.msg.offset())
        nxt[key] = max(nxt.get(key, 0), w.msg.offset() + 1)
    return first, nxt


class ExactlyOnceDelivery:
    """The transactional produce path of the service.

    Expects of the service: ``producer``, ``consumer``, ``_txn_failures``, ``_force_dlq`` and the
    ``_acked_*`` counters.
    """

    _txn_failures: int
    _force_dlq: dict[tuple[str, int, int], str]

    def _produce_transaction(self, works: Sequence[Work]) -> None:
        """exactly_once: one transaction per batch, offsets included; abort and rewind on failure."""
        from confluent_kafka import KafkaException, TopicPartition

        if not works:
            return
        failures: list[tuple[Any, Any]] = []
        counts: collections.Counter[str] = collections.Counter()
        first, nxt = batch_positions(works)
        p = self.producer
        try:
            p.begin_transaction()
            self._produce_all(works, failures, counts)
            if failures:
                raise _TxnAbort("produce refused")
            offsets = [TopicPartition(t, part, o) for (t, part), o in nxt.items()]
            p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30.0)
            p.commit_transaction(30.0)
            if failures:  # pragma: no cover - commit_transaction raises when a delivery failed
                raise _TxnAbort("delivery failed")
        except (KafkaException, _TxnAbort) as exc:
            self._abort_transaction(exc.args[0] if exc.args else exc, failures, first)
            return
        self._txn_failures = 0
        self._acked_out += counts["out"]
        self._acked_candidates += counts["candidate"]
        self._acked_dlq += counts["dlq"]

    def _produce_all(self, works: Sequence[Work], failures: list[tuple[Any, Any]],
                     counts: collections.Counter[str]) -> None:
        """Hand every output to the transactional producer; refusals and failed deliveries go to
        ``failures``, acknowledged outputs are counted by kind in ``counts``."""
        from confluent_kafka import KafkaException

        def on_delivery_for(out: Output, msg: Any) -> Callable[[Any, Any], None]:
            def cb(err: Any, _m: Any) -> None:
                if err is None:
                    counts[out.kind] += 1
                else:
                    failures.append((msg, err))
            return cb

        p = self.producer
        for w in works:
            for out in w.outputs:
                while True:
                    try:
                        p.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                  on_delivery=on_delivery_for(out, w.msg))
                        break
                    except BufferError:
                        p.poll(0.1)
                    except KafkaException as exc:
                        failures.append((w.msg, exc.args[0] if exc.args else exc))
                        break

    def _abort_transaction(self, err: Any, failures: list[tuple[Any, Any]], first: Positions) -> None:
        """Abort, remember the messages no retry can produce, rewind to the batch start; stop when
        the transactional producer is dead or too many transactions failed in a row."""
        from confluent_kafka import KafkaException, TopicPartition

        if is_fatal(err):
            raise ServiceStop(f"transactional producer failed fatally: {err}") from None
        self._txn_failures += 1
        log.warning("transaction aborted (%s); rewinding %d partitions", err, len(first))
        try:
            self.producer.abort_transaction(30.0)
        except KafkaException as abort_exc:
            raise ServiceStop(f"could not abort the transaction: {abort_exc}") from None
        for msg, ferr in failures:  # messages that cannot be produced go to the DLQ on replay
            if error_name(ferr) in PERMANENT_PRODUCE_ERRORS:
                self._force_dlq[(msg.topic(), msg.partition(), msg.offset())] = error_text(ferr)
        for (t, part), o in first.items():
            self.consumer.seek(TopicPartition(t, part, o))
        if self._txn_failures > MAX_TXN_FAILURES:
            raise ServiceStop(f"{self._txn_failures} consecutive transactions failed (last: {err})") from None
