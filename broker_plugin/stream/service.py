"""``bal-broker run``: the streaming service (consume -> decode -> features -> models -> produce -> commit).

Why it is shaped like this
--------------------------
The service is one loop of micro-batches, in the step life cycle ALeRCE's pipeline steps use
(``start`` = pre-consume, ``consume``, ``execute``, ``produce``, ``post_produce``, ``tear_down``),
with the Kafka consumer and producer as objects handed in or created from the configuration, so
another transport (or a test double) can be swapped in without touching the processing.

* ``consume``: up to ``batch_size`` messages in a consumer group on ``kafka.input_topics`` and/or
  ``kafka.input_pattern`` (a ``^``-anchored regex subscription): what is already fetched, else what
  arrives within ``batch_timeout_s`` (adaptive batching, see :meth:`Service.consume`).
* ``execute``: :func:`broker_plugin.pipeline.process_batch`, the very code replay uses, then
  :class:`broker_plugin.stream.kafka_output.OutputEncoder` (input alert bytes + ``bal`` field).
* ``produce``: every annotated alert to ``output_topic`` (keyed by object id, header ``bal_source``
  = ``topic/partition/offset`` of the input), candidates (``is_candidate``) also to
  ``candidate_topic``, every failure to ``dlq_topic`` (original key and bytes, headers naming the error
  class, reason, message, stage, source topic/partition/offset and plugin version).

Delivery: at least once
-----------------------
Offsets are *stored* (``consumer.store_offsets``) only when every output of a message, and of every
earlier message of its partition, has been acknowledged by the broker
(:class:`~broker_plugin.stream.offsets.OffsetTracker`). Committing is librdkafka's auto-commit of stored
offsets (every second, on rebalance and on close; see :mod:`broker_plugin.stream.kafka_config`), plus
an explicit synchronous commit on partition revocation (after flushing the producer) and at
shutdown. We chose auto-commit of stored offsets over a commit per batch: it never commits
unacknowledged work, costs no round trip per batch, and loses at most ~1 s of acknowledged work to
re-processing after a crash. A produce failure never loses an alert: retries, then the DLQ, then a
stop with status 1 (:mod:`broker_plugin.stream.delivery`). ``kafka.exactly_once: true`` uses one
transaction per batch instead (:mod:`broker_plugin.stream.transactions`).

Exit status
-----------
0: stopped by SIGTERM/SIGINT (after draining: finish the batch, flush, store, commit, close, within
~10 s) or a time-range run finished. 2: bad configuration (before anything starts), or the error
budget was exhausted by *input* failures (more than ``processing.error_max`` messages dead-lettered
within ``error_window_s``, all of them bad data: the stream is broken, restarting will not help).
1: the budget was exhausted and internal errors (bugs) were among the failures, the DLQ refused a
message, the schema registry failed, or librdkafka reported a fatal error.

Other modes
-----------
``processing.time_from``/``time_to`` replay a time window, assigning partitions in a group of its
own, and exit 0 when every partition is done (:mod:`broker_plugin.stream.time_range`).
``--workers N`` runs N processes in the same group (:mod:`broker_plugin.stream.workers`).

Where the code is
-----------------
This module holds the loop (:meth:`Service.run`) and the phases of :class:`~broker_plugin.stream.step.Step`;
the rest is mixed in from modules named for what they hold: ``clients``, ``client_events``,
``delivery``, ``transactions``, ``time_range`` and ``history_retry`` (a history-store outage puts
the batch back), on the plain pieces ``offsets``, ``error_budget``, ``outputs`` and ``stop``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

from broker_plugin import __version__
from broker_plugin.config import ServiceConfig
from broker_plugin.errors import BalBrokerError
from broker_plugin.history import StoreError
from broker_plugin.pipeline import INTERNAL_ERROR
from broker_plugin.stream.client_events import DRAIN_TIMEOUT_S, KafkaCallbacks
from broker_plugin.stream.clients import STATS_INTERVAL_MS, KafkaClients, secrets_of
from broker_plugin.stream.delivery import PRODUCE_RETRIES, AtLeastOnceDelivery
from broker_plugin.stream.error_budget import ErrorBudget
from broker_plugin.stream.history_retry import HistoryOutage, open_history
from broker_plugin.stream.kafka_errors import PARTITION_EOF
from broker_plugin.stream.logs import RateLimiter, register_secret
from broker_plugin.stream.offsets import OffsetTracker
from broker_plugin.stream.outputs import Output, ServiceStats, Work, dlq_headers, source_of
from broker_plugin.stream.stall import Stalls, StallWatch
from broker_plugin.stream.step import Step
from broker_plugin.stream.stop import EXIT_INPUT, EXIT_INTERNAL, EXIT_OK, ServiceStop
from broker_plugin.stream.time_range import TimeRange, TimeRangeMode
from broker_plugin.stream.transactions import MAX_TXN_FAILURES, ExactlyOnceDelivery
from broker_plugin.stream.workers import WORKER_ENV, worker_from_env

log = logging.getLogger(__name__)

#: Seconds between INFO progress lines (never per alert; per batch only at DEBUG).
PROGRESS_INTERVAL_S = 10.0

#: Names that lived here before the service was split, still importable from here.
__all__ = [
    "DRAIN_TIMEOUT_S", "EXIT_INPUT", "EXIT_INTERNAL", "EXIT_OK", "MAX_TXN_FAILURES", "PRODUCE_RETRIES",
    "STATS_INTERVAL_MS", "WORKER_ENV", "ErrorBudget", "OffsetTracker", "Output", "Service", "ServiceStats",
    "ServiceStop", "TimeRange", "Work", "dlq_headers", "source_of", "worker_from_env",
]


# ----------------------------------------------------------------------------- the service


class Service(TimeRangeMode, AtLeastOnceDelivery, ExactlyOnceDelivery, KafkaCallbacks,
              KafkaClients, HistoryOutage, StallWatch, Step):
    """One service process: a consumer, a producer, an annotator, an output encoder, metrics.

    ``consumer``/``producer`` may be handed in (anything with the confluent-kafka interface);
    otherwise they are created from ``cfg.kafka`` in :meth:`start`. ``annotator`` defaults to one
    with the configured model bundle (:func:`broker_plugin.models.annotate.load_model_stage`), loaded here
    so a bad bundle fails before any connection is made. ``worker`` is ``(index, count)`` under
    ``--workers`` (only the time-range mode, which assigns partitions itself, needs it).
    """

    def __init__(self, cfg: ServiceConfig, *, consumer: Any = None, producer: Any = None,
                 annotator: Any = None, metrics: Any = None, worker: tuple[int, int] = (0, 1),
                 clock: Callable[[], float] = time.monotonic, stop: threading.Event | None = None) -> None:
        from broker_plugin.models.annotate import Annotator, load_model_stage
        from broker_plugin.stream.kafka_output import OutputEncoder
        from broker_plugin.stream.metrics import Metrics

        self.cfg = cfg
        k = cfg.kafka
        if k.schema_registry_url:
            from broker_plugin import decode

            decode.configure(registry_url=k.schema_registry_url)
        if annotator is None:
            annotator = Annotator(load_model_stage(cfg.models.bundle,
                                                   candidate_threshold=cfg.processing.candidate_threshold))
        self.annotator = annotator
        self.stop_event = stop if stop is not None else threading.Event()  # SIGTERM during start-up too
        # a wrong store URL or a newer schema: exit 2 before connecting; waits for a store still starting
        self.history = open_history(cfg, stop=self.stop_event)
        self.encoder = OutputEncoder(drop_cutouts=cfg.processing.drop_cutouts, registry_url=k.schema_registry_url,
                                     subject=f"{k.output_topic}-value", max_bytes=k.output_max_bytes)
        self.metrics = metrics if metrics is not None else Metrics()
        self.stalls = Stalls(cfg, self.metrics)  # heartbeat and silent stalls, /healthz (stream.stall)
        self.consumer = consumer
        self.producer = producer
        self.worker = worker
        self.range = TimeRange.from_config(cfg)
        self.group_id = k.group_id if self.range is None else f"{k.group_id}-{self.range.suffix()}"
        self.exactly_once = k.exactly_once
        self.tracker = OffsetTracker()
        self.budget = ErrorBudget(cfg.processing.error_max, cfg.processing.error_window_s)
        self.stats = ServiceStats()
        self.metrics_port: int | None = None
        self._clock = clock
        self._fatal: ServiceStop | None = None
        self._error_log = RateLimiter(10.0)
        self._acked_out = self._acked_candidates = self._acked_dlq = 0
        self._range_parts: set[tuple[str, int]] = set()
        self._range_done: set[tuple[str, int]] = set()
        self._force_dlq: dict[tuple[str, int, int], str] = {}  # exactly_once: inputs to dead-letter on replay
        self._txn_failures = 0
        self._empty_polls = 0
        self._started = False
        self.stop_reason: str | None = None
        self._last_progress = clock()
        self._progress_base = 0
        self.max_in_flight = max(2 * cfg.processing.batch_size, 1000)
        for secret in secrets_of(cfg):
            register_secret(secret)

    # -- life cycle: consume ---------------------------------------------------------------------

    def consume(self) -> list[Any]:
        """One micro-batch of messages (errors logged, rate-limited, and dropped).

        Adaptive batching: take what the client has already fetched (up to ``batch_size``, without
        waiting); only when nothing is there, wait up to ``batch_timeout_s`` and take what arrived.
        ``consume(batch_size, batch_timeout_s)`` alone waited the whole timeout whenever fewer
        messages came, which at 250 alerts/s made every alert wait ~0.5 s; this way a batch under
        load is full and at a low rate latency is about one batch's processing time.
        """
        p = self.cfg.processing
        msgs = self.consumer.consume(num_messages=p.batch_size, timeout=0)
        if not msgs:
            msgs = self.consumer.consume(num_messages=1, timeout=p.batch_timeout_s)
            if msgs and p.batch_size > 1:
                msgs += self.consumer.consume(num_messages=p.batch_size - 1, timeout=0)
        good = []
        errors = 0
        eof = []
        for m in msgs:
            err = m.error()
            if err is None:
                good.append(m)
                continue
            if err.code() == PARTITION_EOF:
                eof.append((m.topic(), m.partition()))
                continue
            errors += 1
            self._log_kafka_error(err, where="consume")
        if errors and not good:  # only errors (unknown topic, broker down): back off, never hot-loop
            self._empty_polls += 1
            self._sleep(min(5.0, 0.1 * 2 ** min(self._empty_polls, 6)))
        elif good:
            self._empty_polls = 0
        if self.range is not None and (good or eof):
            good = self._filter_range(good, eof)
        return good

    # -- life cycle: execute ---------------------------------------------------------------------

    def execute(self, messages: Sequence[Any]) -> list[Work]:
        """Decode, annotate and encode a batch; every message gets outputs (annotated or DLQ), or none
        when the history store failed (the batch is then put back: :class:`HistoryOutage`)."""
        from broker_plugin.pipeline import describe, process_batch

        k = self.cfg.kafka
        n = len(messages)
        todo: list[Any] = []
        works: dict[int, Work] = {}
        for i, m in enumerate(messages):
            forced = self._force_dlq.get((m.topic(), m.partition(), m.offset())) if self._force_dlq else None
            if forced is not None:
                works[i] = Work(m, [self._dlq(m, "KafkaError", "produce_failed", forced, "produce")])
            elif (too_large := self._oversized_input(m)) is not None:  # never decoded: a DLQ stub
                works[i] = too_large
            else:
                todo.append(i)
        timings_before = dict(self.annotator.timings.seconds)
        try:
            processed = process_batch(self.annotator, [messages[i].value() or b"" for i in todo],
                                      history=self.history, processing=self.cfg.processing)
        except StoreError as exc:  # nothing of the batch was produced: read it again later
            self.history_outage(messages, exc)
            return []
        self.history_ok()
        for i in works:  # dead-lettered for good now that the batch goes out
            self._force_dlq.pop((messages[i].topic(), messages[i].partition(), messages[i].offset()), None)
        self.stats.consumed += n
        self.metrics.alerts_in.inc(n)
        delta = {s: v - timings_before.get(s, 0.0) for s, v in self.annotator.timings.seconds.items()}
        for r in processed.rejects:
            m = messages[todo[r.index]]
            works[todo[r.index]] = Work(m, [self._dlq(m, r.error_class, r.reason, r.message, r.stage)])
        t0 = time.perf_counter()
        for alert, record, j in zip(processed.alerts, processed.records, processed.indices, strict=True):
            m = messages[todo[j]]
            try:
                value = self.encoder.encode(m.value(), alert, record)
            except Exception as exc:
                from broker_plugin.stream.kafka_output import RegistryError

                if isinstance(exc, RegistryError):
                    raise ServiceStop(str(exc)) from None
                reason = getattr(exc, "reason", INTERNAL_ERROR) if isinstance(exc, BalBrokerError) else INTERNAL_ERROR
                works[todo[j]] = Work(m, [self._dlq(m, type(exc).__name__, reason, describe(exc), "encode")])
                continue
            key = str(record["object_id"])
            headers = [("bal_source", source_of(m)), ("bal_plugin_version", __version__)]
            outs = [Output(k.output_topic, key, value, headers, "out")]
            if record.get("is_candidate"):
                outs.append(Output(k.candidate_topic, key, value, headers, "candidate"))
            works[todo[j]] = Work(m, outs)
            self.stats.annotated += 1
        encode_s = time.perf_counter() - t0 + delta.get("records", 0.0)
        self.metrics.observe_stage("decode", processed.decode_s, n)
        self.metrics.observe_stage("features", delta.get("features", 0.0), n)
        self.metrics.observe_stage("inference", delta.get("models", 0.0), n)
        self.metrics.observe_stage("encode", encode_s, n)
        self.metrics.observe_stage("history", processed.history_s, n if self.history is not None else 0)
        now = self._clock()
        for w in works.values():
            if w.outputs[0].kind == "dlq":
                reason = dict(w.outputs[0].headers)["bal_error_reason"]
                self.stats.rejected += 1
                self.stats.reasons[reason] += 1
                self.metrics.reject(str(reason))
                self.budget.add(now, str(reason))
        return [works[i] for i in range(n) if i in works]

    # -- life cycle: produce ---------------------------------------------------------------------

    def produce(self, works: Sequence[Work]) -> None:
        """Hand every output to the producer (at-least-once) or commit them in one transaction."""
        t0 = time.perf_counter()
        if self.exactly_once:
            self._produce_transaction(works)
        else:
            self._produce_each(works)
        self.metrics.observe_stage("produce", time.perf_counter() - t0, len(works))

    # -- life cycle: post-produce ----------------------------------------------------------------

    def post_produce(self) -> None:
        """Serve delivery reports, store acknowledged offsets, apply back-pressure and the error
        budget and the stall checks, publish metrics, log progress."""
        self.producer.poll(0)
        self._backpressure()  # bound the outputs in flight
        self._store()
        self._flush_counts()
        if self._fatal is not None:
            raise self._fatal
        now = self._clock()
        if self.budget.exhausted(now):
            reasons = self.budget.reasons()
            code = EXIT_INTERNAL if reasons.get(INTERNAL_ERROR) else EXIT_INPUT
            top = ", ".join(f"{r}={c}" for r, c in reasons.most_common(5))
            raise ServiceStop(f"error budget exhausted: more than {self.budget.max_errors} messages failed within "
                              f"{self.budget.window_s:g} s ({top}); they are in {self.cfg.kafka.dlq_topic}", code)
        self.watch_stalls()
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._log_progress(now)

    # -- life cycle: tear down -------------------------------------------------------------------

    def tear_down(self) -> None:
        """Drain: flush the producer, store what was acknowledged, commit synchronously, close."""
        from confluent_kafka import KafkaException

        t0 = time.monotonic()
        try:
            self._drain_deadline = t0 + DRAIN_TIMEOUT_S  # one deadline for every flush of the drain
            if self.producer is not None:
                left = self.producer.flush(self._drain_left())
                if left:
                    log.warning("%d outputs unacknowledged after %.0f s at shutdown; their inputs stay "
                                "uncommitted and will be processed again", left, DRAIN_TIMEOUT_S)
            if self.consumer is not None and self._started:
                self._store()
                self._flush_counts()
                if not self.exactly_once:
                    try:
                        self.consumer.commit(asynchronous=False)
                    except KafkaException as exc:  # _NO_OFFSET: nothing stored since the last commit
                        log.debug("final commit: %s", exc)
        finally:
            if self.consumer is not None:
                try:
                    self.consumer.close()
                except Exception as exc:  # already closed, broker gone: nothing left to do
                    log.debug("consumer close: %s", exc)
            self.metrics.close()
        s = self.stats
        log.info("stopped after %d alerts in, %d annotated, %d rejected, %d candidates (drain %.1f s)",
                 s.consumed, s.annotated, s.rejected, s.produced_candidates, time.monotonic() - t0,
                 extra={"event": "stop", "alerts_in": s.consumed, "annotated": s.annotated, "rejected": s.rejected,
                        "candidates": s.produced_candidates, "reasons": dict(s.reasons)})

    # -- the loop --------------------------------------------------------------------------------

    def run(self, stop: threading.Event | None = None) -> int:
        """Run until ``stop`` is set, a time range is finished, or a :class:`ServiceStop`; returns the
        exit status. Other exceptions (bugs) propagate after the drain."""
        if stop is not None:
            self.stop_event = stop
        code = EXIT_OK
        try:
            self.start()
            while not self.stop_event.is_set():
                if self.range_finished():
                    log.info("time range finished on every partition")
                    break
                messages = self.consume()
                if messages:
                    works = self.execute(messages)
                    self.produce(works)
                    # drop this batch's outputs now (librdkafka holds its own copies until they are
                    # acknowledged), not when the next batch's are built: one batch less at the peak
                    del works
                    self.stats.batches += 1
                    self.metrics.batches.inc()
                    log.debug("batch of %d", len(messages), extra={"event": "batch", "size": len(messages)})
                self.post_produce()
        except ServiceStop as exc:
            code = exc.exit_code
            if code != EXIT_OK:
                log.error("%s", exc, extra={"event": "fatal", "exit_code": code})
            self.stop_reason = str(exc)
        finally:
            self.tear_down()
        return code
