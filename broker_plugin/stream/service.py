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
Offsets are *stored* (``consumer.store_offsets``) only when every output of a message has been
acknowledged by the broker: :class:`OffsetTracker` counts outstanding outputs per input message and,
per input partition, advances over the contiguous run of fully acknowledged messages (outputs go to
different partitions and are acknowledged out of order; storing offset N+1 means "everything
before N+1 is done"). Committing is librdkafka's auto-commit of stored offsets (every second, on
rebalance and on close; see :mod:`broker_plugin.stream.kafka_config`), plus an explicit synchronous commit
on partition revocation (after flushing the producer) and at shutdown. We chose auto-commit of
stored offsets over a commit per batch: it never commits unacknowledged work, costs no round trip
per batch, and loses at most ~1 s of acknowledged work to re-processing after a crash.

A produce failure never loses an alert: the output is retried (``PRODUCE_RETRIES``, except for
errors that cannot succeed on retry, such as message too large), then the input goes to the DLQ with
reason ``produce_failed``; if the DLQ refuses it too (after the same retries), the service stops
with status 1 and that message's offset (and every later one of its partition) is never stored;
the acknowledged prefix before it is still committed, which is safe.

``kafka.exactly_once: true`` uses a transactional producer instead: per batch ``begin_transaction``,
produce, ``send_offsets_to_transaction`` (batch positions, the group metadata),
``commit_transaction``; on failure ``abort_transaction`` and rewind the consumer to the batch start.
(The embedded Tansu broker shows aborted records to read_committed readers, so only the happy path
is testable there.)

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
``processing.time_from``/``time_to`` replay a time window: partitions are *assigned* (no group
rebalancing) in a separate group ``<group_id>-range-<from>-<to>`` from ``offsets_for_times``;
messages outside the window are skipped client-side too (Tansu answers offset 0 for every
timestamp); a partition is done at its first message after ``time_to`` or, when ``time_to`` is in
the past, when the consumer reaches its end (librdkafka's partition-EOF event; Tansu's high
watermarks are too low, so they are not used); the service exits 0 when every partition is done.
``--workers N`` runs N processes in the same group (:mod:`broker_plugin.stream.workers`).
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import logging
import os
import re
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_plugin import __version__
from broker_plugin.config import ServiceConfig, load_config, parse_time_ms
from broker_plugin.errors import BalBrokerError, ConfigError
from broker_plugin.pipeline import INTERNAL_ERROR, settle_heap
from broker_plugin.stream.logs import RateLimiter, rate_limit, register_secret

log = logging.getLogger(__name__)
_rdkafka_log = logging.getLogger("broker_plugin.stream.service.librdkafka")
rate_limit(_rdkafka_log)  # librdkafka logs every reconnection attempt while a broker is down

#: Extra attempts to produce one output after a (retriable) delivery failure before dead-lettering.
PRODUCE_RETRIES = 2
#: Seconds the shutdown may spend flushing the producer (the whole drain must stay under 10 s).
DRAIN_TIMEOUT_S = 6.0
#: Seconds between INFO progress lines (never per alert; per batch only at DEBUG).
PROGRESS_INTERVAL_S = 10.0
#: librdkafka statistics interval when metrics are on (consumer lag gauge).
STATS_INTERVAL_MS = 5000
#: Consecutive aborted transactions (exactly_once) before the service gives up with status 1.
MAX_TXN_FAILURES = 5
#: Environment variable through which ``--workers`` tells a child its index and the worker count.
WORKER_ENV = "BAL_BROKER_WORKER"

EXIT_OK = 0
EXIT_INTERNAL = 1
EXIT_INPUT = 2

#: Delivery errors that no retry can fix: dead-letter at once.
_PERMANENT_PRODUCE_ERRORS = frozenset({
    "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "RECORD_LIST_TOO_LARGE", "INVALID_MSG",
    "CORRUPT_MESSAGE", "TOPIC_AUTHORIZATION_FAILED", "INVALID_TOPIC_EXCEPTION", "_INVALID_ARG",
})


class ServiceStop(BalBrokerError):
    """A condition that ends the service with ``exit_code`` after draining (not a crash)."""

    reason = "service_stop"

    def __init__(self, message: str, exit_code: int = EXIT_INTERNAL) -> None:
        super().__init__(message)
        self.exit_code = exit_code


# ----------------------------------------------------------------------------- offset tracking


@dataclass(slots=True, eq=False)
class _Entry:
    """One input message whose outputs are in flight."""

    offset: int
    remaining: int
    track: _PartitionTrack
    source: Any = None  # the input message, kept for dead-lettering on a produce failure
    dlq_sent: bool = False


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

    def begin(self, topic: str, partition: int, offset: int, outputs: int, source: Any = None) -> _Entry:
        track = self._parts.get((topic, partition))
        if track is None:
            track = self._parts[(topic, partition)] = _PartitionTrack()
        entry = _Entry(offset, outputs, track, source)
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
            lost += unacked
            self.pending -= unacked
        return lost

    def partitions(self) -> list[tuple[str, int]]:
        return list(self._parts)


# ----------------------------------------------------------------------------- error budget


class ErrorBudget:
    """More than ``max_errors`` failed messages within ``window_s`` seconds -> exhausted."""

    def __init__(self, max_errors: int, window_s: float) -> None:
        self.max_errors = max_errors
        self.window_s = window_s
        self._events: collections.deque[tuple[float, str]] = collections.deque()

    def add(self, now: float, reason: str) -> None:
        self._events.append((now, reason))

    def exhausted(self, now: float) -> bool:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        return len(self._events) > self.max_errors

    def reasons(self) -> collections.Counter[str]:
        return collections.Counter(r for _, r in self._events)


# ----------------------------------------------------------------------------- time range


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


# ----------------------------------------------------------------------------- outputs


@dataclass(slots=True)
class Output:
    """One message to produce."""

    topic: str
    key: bytes | str | None
    value: bytes
    headers: list[tuple[str, str | bytes]]
    kind: str  # "out", "candidate" or "dlq"


@dataclass(slots=True)
class Work:
    """The outputs of one input message (the unit of offset tracking)."""

    msg: Any
    outputs: list[Output]


@dataclass
class ServiceStats:
    """Running totals (also in the metrics); the summary line and tests read them."""

    consumed: int = 0
    skipped: int = 0  # outside the replay window
    annotated: int = 0
    rejected: int = 0
    produced_out: int = 0
    produced_candidates: int = 0
    produced_dlq: int = 0
    batches: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


def source_of(msg: Any) -> str:
    """``topic/partition/offset`` of a consumed message (the ``bal_source`` header)."""
    return f"{msg.topic()}/{msg.partition()}/{msg.offset()}"


def dlq_headers(msg: Any, *, error_class: str, reason: str, message: str, stage: str) -> list[tuple[str, str]]:
    """Dead-letter headers: what failed and where the message came from (DESIGN.md, Kafka)."""
    ts_type, ts = msg.timestamp()
    return [
        ("bal_error_class", error_class),
        ("bal_error_reason", reason),
        ("bal_error_message", " ".join(str(message).split())[:1000]),
        ("bal_error_stage", stage),
        ("bal_source_topic", str(msg.topic())),
        ("bal_source_partition", str(msg.partition())),
        ("bal_source_offset", str(msg.offset())),
        ("bal_source_timestamp", str(ts if ts_type else -1)),
        ("bal_source", source_of(msg)),
        ("bal_plugin_version", __version__),
    ]


# ----------------------------------------------------------------------------- the service


class Service:
    """One service process: a consumer, a producer, an annotator, an output encoder, metrics.

    ``consumer``/``producer`` may be handed in (anything with the confluent-kafka interface);
    otherwise they are created from ``cfg.kafka`` in :meth:`start`. ``annotator`` defaults to one
    with the configured model bundle (:func:`broker_plugin.models.annotate.load_model_stage`), loaded here
    so a bad bundle fails before any connection is made. ``worker`` is ``(index, count)`` under
    ``--workers`` (only the time-range mode, which assigns partitions itself, needs it).
    """

    def __init__(self, cfg: ServiceConfig, *, consumer: Any = None, producer: Any = None,
                 annotator: Any = None, metrics: Any = None, worker: tuple[int, int] = (0, 1),
                 clock: Callable[[], float] = time.monotonic) -> None:
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
        self.encoder = OutputEncoder(drop_cutouts=cfg.processing.drop_cutouts, registry_url=k.schema_registry_url,
                                     subject=f"{k.output_topic}-value")
        self.metrics = metrics if metrics is not None else Metrics()
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
        self.stop_event = threading.Event()
        self.stop_reason: str | None = None
        self._last_progress = clock()
        self._progress_base = 0
        self.max_in_flight = max(2 * cfg.processing.batch_size, 1000)
        for secret in _secrets_of(cfg):
            register_secret(secret)

    # -- life cycle: start (pre-consume) ---------------------------------------------------------

    def client_settings(self) -> dict[str, Any]:
        """KafkaConfig as the settings mapping :mod:`broker_plugin.stream.kafka_config` understands."""
        k = self.cfg.kafka
        return {f.name: getattr(k, f.name) for f in dataclasses.fields(k)}

    def consumer_conf(self) -> dict[str, Any]:
        from broker_plugin.stream.kafka_config import consumer_config

        conf = consumer_config(self.client_settings(), group_id=self.group_id)
        conf["logger"] = _rdkafka_log
        conf["error_cb"] = self._on_kafka_error
        if self.cfg.observability.metrics_port:
            conf.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
        if "statistics.interval.ms" in conf:
            conf["stats_cb"] = self.metrics.on_stats
        if self.exactly_once:
            conf["enable.auto.commit"] = False  # offsets go through the transaction
        if self.range is not None and self.range.closed():
            # The end of a closed window's partition is where the consumer catches up with it:
            # librdkafka's partition-EOF event (not the ListOffsets high watermark, which Tansu
            # under-reports).
            conf["enable.partition.eof"] = True
        return conf

    def producer_conf(self) -> dict[str, Any]:
        from broker_plugin.stream.kafka_config import producer_config

        txn = None
        if self.exactly_once:
            txn = f"bal-broker-{self.group_id}-{os.getpid()}-{os.urandom(4).hex()}"
        conf = producer_config(self.client_settings(), transactional_id=txn)
        conf["logger"] = _rdkafka_log
        conf["error_cb"] = self._on_kafka_error
        return conf

    def start(self) -> None:
        """Create the clients (unless handed in), subscribe or assign, start the metrics endpoint."""
        from confluent_kafka import Consumer, Producer

        from broker_plugin.stream.kafka_config import redact

        cfg = self.cfg
        log.info("bal-broker %s service starting", __version__, extra={
            "event": "start", "group_id": self.group_id, "worker": f"{self.worker[0]}/{self.worker[1]}",
            "mode": "exactly_once" if self.exactly_once else "at_least_once",
            "model_version": self.annotator.model_version,
            "output_format": "wire" if self.encoder.wire_format else "container",
            "config": {s.name: redact(dataclasses.asdict(getattr(cfg, s.name))) for s in dataclasses.fields(cfg)},
        })
        if self.producer is None:
            self.producer = Producer(self.producer_conf())
        settle_heap()  # models and clients are loaded: keep the collector off them (pipeline.settle_heap)
        if self.exactly_once:
            self._retry_until_stopped("init_transactions", lambda: self.producer.init_transactions(10.0))
        if self.consumer is None:
            self.consumer = Consumer(self.consumer_conf())
        if cfg.observability.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(cfg.observability.metrics_port)
            except OSError as exc:
                raise ServiceStop(f"observability.metrics_port {cfg.observability.metrics_port}: cannot serve "
                                  f"metrics there ({exc.strerror or exc})", EXIT_INPUT) from None
            log.info("metrics on port %d", self.metrics_port, extra={"event": "metrics", "port": self.metrics_port})
        if self.range is None:
            topics = list(cfg.kafka.input_topics)
            if cfg.kafka.input_pattern:
                pat = cfg.kafka.input_pattern
                topics.append(pat if pat.startswith("^") else "^" + pat)
            self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
            log.info("subscribed to %s in group %s", ", ".join(topics), self.group_id)
        else:
            self._assign_range()
        self._started = True

    def _retry_until_stopped(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` until it succeeds, backing off (broker unreachable at start), until stopped."""
        from confluent_kafka import KafkaException

        delay = 0.5
        while True:
            try:
                return fn()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                if getattr(err, "fatal", lambda: False)():
                    raise ServiceStop(f"{what} failed fatally: {err}") from None
                log.warning("%s failed (%s); retrying in %.1f s", what, err, delay)
            if self._stopping():
                raise ServiceStop(f"stopped while waiting for {what}", EXIT_OK)
            self._sleep(delay)
            delay = min(delay * 2, 10.0)

    def _stopping(self) -> bool:
        return self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on a stop request."""
        self.stop_event.wait(seconds)

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

    def range_finished(self) -> bool:
        return self.range is not None and self._started and len(self._range_done) >= len(self._range_parts)

    # -- life cycle: consume ---------------------------------------------------------------------

    def consume(self) -> list[Any]:
        """One micro-batch of messages (errors logged, rate-limited, and dropped).

        Adaptive batching: take what the client has already fetched (up to ``batch_size``, without
        waiting); only when nothing is there, wait up to ``batch_timeout_s`` for messages and take
        what has arrived. ``consume(batch_size, batch_timeout_s)`` alone would wait the whole
        timeout whenever fewer than ``batch_size`` messages come in that time, which at 250 alerts/s
        made every alert wait ~0.5 s for its batch to fill. Under load the fetched queue holds
        thousands of messages and batches are full; at a low rate a batch is whatever arrived while
        the previous one was processed, so latency is about one batch's processing time.
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
            if err.code() == _PARTITION_EOF:
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

    # -- life cycle: execute ---------------------------------------------------------------------

    def execute(self, messages: Sequence[Any]) -> list[Work]:
        """Decode, annotate and encode a batch; every message gets outputs (annotated or DLQ)."""
        from broker_plugin.pipeline import describe, process_batch

        k = self.cfg.kafka
        n = len(messages)
        self.stats.consumed += n
        self.metrics.alerts_in.inc(n)
        todo: list[Any] = []
        works: dict[int, Work] = {}
        for i, m in enumerate(messages):
            forced = self._force_dlq.pop((m.topic(), m.partition(), m.offset()), None) if self._force_dlq else None
            if forced is not None:
                works[i] = Work(m, [self._dlq(m, "KafkaError", "produce_failed", forced, "produce")])
            else:
                todo.append(i)
        timings_before = dict(self.annotator.timings.seconds)
        processed = process_batch(self.annotator, [messages[i].value() or b"" for i in todo])
        after = self.annotator.timings.seconds
        delta = {s: after.get(s, 0.0) - timings_before.get(s, 0.0) for s in after}
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
        now = self._clock()
        for w in works.values():
            if w.outputs[0].kind == "dlq":
                reason = dict(w.outputs[0].headers)["bal_error_reason"]
                self.stats.rejected += 1
                self.stats.reasons[reason] += 1
                self.metrics.reject(str(reason))
                self.budget.add(now, str(reason))
        return [works[i] for i in range(n) if i in works]

    def _dlq(self, msg: Any, error_class: str, reason: str, message: str, stage: str) -> Output:
        headers = dlq_headers(msg, error_class=error_class, reason=reason, message=message, stage=stage)
        return Output(self.cfg.kafka.dlq_topic, msg.key(), msg.value() or b"", list(headers), "dlq")

    # -- life cycle: produce ---------------------------------------------------------------------

    def produce(self, works: Sequence[Work]) -> None:
        """Hand every output to the producer (at-least-once) or commit them in one transaction."""
        t0 = time.perf_counter()
        if self.exactly_once:
            self._produce_transaction(works)
        else:
            for w in works:
                m = w.msg
                entry = self.tracker.begin(m.topic(), m.partition(), m.offset(), len(w.outputs), m)
                for out in w.outputs:
                    self._send(out, entry, 0)
            self.producer.poll(0)
        self.metrics.observe_stage("produce", time.perf_counter() - t0, len(works))

    def _send(self, out: Output, entry: _Entry, attempt: int) -> None:
        from confluent_kafka import KafkaException

        def on_delivery(err: Any, _msg: Any) -> None:
            self._delivered(err, out, entry, attempt)

        while True:
            try:
                self.producer.produce(out.topic, value=out.value, key=out.key, headers=out.headers,
                                      on_delivery=on_delivery)
                return
            except BufferError:  # local queue full: serve delivery reports, then retry
                self.producer.poll(0.1)
            except KafkaException as exc:  # refused before sending (e.g. larger than message.max.bytes)
                self._delivered(exc.args[0] if exc.args else exc, out, entry, attempt)
                return

    def _delivered(self, err: Any, out: Output, entry: _Entry, attempt: int) -> None:
        """Delivery report (or produce-time refusal) of one output."""
        if err is None:
            if out.kind == "out":
                self._acked_out += 1
            elif out.kind == "candidate":
                self._acked_candidates += 1
            else:
                self._acked_dlq += 1
            self.tracker.done(entry)
            return
        name = _error_name(err)
        text = err.str() if hasattr(err, "str") else str(err)
        if attempt < PRODUCE_RETRIES and name not in _PERMANENT_PRODUCE_ERRORS:
            self._log_rate_limited(f"produce-{name}", "producing to %s failed (%s); retrying", out.topic, text)
            self._send(out, entry, attempt + 1)
            return
        if out.kind == "dlq":  # nowhere left to put the message: stop; its offset is never stored
            if self._fatal is None:
                self._fatal = ServiceStop(f"the dead-letter topic {out.topic} refused a message from "
                                          f"{dict(out.headers).get('bal_source')}: {text}; stopping without "
                                          "committing it")
            return
        if out.kind == "out":  # the alert did not go out annotated after all (keeps the counts adding up)
            self.stats.annotated -= 1
        if entry.dlq_sent:  # another output of this input already went to the DLQ: that covers it
            self.tracker.done(entry)
            return
        entry.dlq_sent = True
        self._log_rate_limited(f"produce-dlq-{name}", "producing to %s failed for good (%s); dead-lettering the "
                               "input", out.topic, text)
        src = entry.source
        if src is None:  # cannot happen: the entry is not done while an output is outstanding
            self._fatal = ServiceStop(f"lost track of an input while dead-lettering ({text})")
            return
        self.stats.rejected += 1
        self.stats.reasons["produce_failed"] += 1
        self.metrics.reject("produce_failed")
        self._send(self._dlq(src, "KafkaError", "produce_failed", f"{out.topic}: {text}", "produce"), entry, 0)

    def _produce_transaction(self, works: Sequence[Work]) -> None:
        """exactly_once: one transaction per batch, offsets included; abort and rewind on failure."""
        from confluent_kafka import KafkaException, TopicPartition

        if not works:
            return
        failures: list[tuple[Any, Any]] = []
        counts = collections.Counter()

        def on_delivery_for(out: Output, msg: Any) -> Callable[[Any, Any], None]:
            def cb(err: Any, _m: Any) -> None:
                if err is None:
                    counts[out.kind] += 1
                else:
                    failures.append((msg, err))
            return cb

        first: dict[tuple[str, int], int] = {}
        nxt: dict[tuple[str, int], int] = {}
        for w in works:
            key = (w.msg.topic(), w.msg.partition())
            first.setdefault(key, w.msg.offset())
            nxt[key] = max(nxt.get(key, 0), w.msg.offset() + 1)
        p = self.producer
        try:
            p.begin_transaction()
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
            if failures:
                raise _TxnAbort("produce refused")
            offsets = [TopicPartition(t, part, o) for (t, part), o in nxt.items()]
            p.send_offsets_to_transaction(offsets, self.consumer.consumer_group_metadata(), 30.0)
            p.commit_transaction(30.0)
            if failures:  # pragma: no cover - commit_transaction raises when a delivery failed
                raise _TxnAbort("delivery failed")
        except (KafkaException, _TxnAbort) as exc:
            err = exc.args[0] if exc.args else exc
            if getattr(err, "fatal", lambda: False)():
                raise ServiceStop(f"transactional producer failed fatally: {err}") from None
            self._txn_failures += 1
            log.warning("transaction aborted (%s); rewinding %d partitions", err, len(first))
            try:
                p.abort_transaction(30.0)
            except KafkaException as abort_exc:
                raise ServiceStop(f"could not abort the transaction: {abort_exc}") from None
            for msg, ferr in failures:  # messages that cannot be produced go to the DLQ on replay
                if _error_name(ferr) in _PERMANENT_PRODUCE_ERRORS:
                    text = ferr.str() if hasattr(ferr, "str") else str(ferr)
                    self._force_dlq[(msg.topic(), msg.partition(), msg.offset())] = text
            for (t, part), o in first.items():
                self.consumer.seek(TopicPartition(t, part, o))
            if self._txn_failures > MAX_TXN_FAILURES:
                raise ServiceStop(f"{self._txn_failures} consecutive transactions failed (last: {err})") from None
            return
        self._txn_failures = 0
        self._acked_out += counts["out"]
        self._acked_candidates += counts["candidate"]
        self._acked_dlq += counts["dlq"]

    # -- life cycle: post-produce ----------------------------------------------------------------

    def post_produce(self) -> None:
        """Serve delivery reports, store acknowledged offsets, apply back-pressure and the error
        budget, publish metrics, log progress."""
        self.producer.poll(0)
        while self.tracker.pending > self.max_in_flight and self._fatal is None and not self._stopping():
            self.producer.poll(0.1)  # back-pressure: bound the outputs in flight
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
        if now - self._last_progress >= PROGRESS_INTERVAL_S:
            self._log_progress(now)

    def _store(self) -> None:
        if self.exactly_once:
            return
        advanced = self.tracker.advanced()
        if not advanced:
            return
        from confluent_kafka import KafkaException, TopicPartition

        offsets = [TopicPartition(t, p, o) for t, p, o in advanced]
        try:
            self.consumer.store_offsets(offsets=offsets)
        except KafkaException as exc:  # partition no longer assigned: its next owner re-processes
            log.debug("store_offsets: %s", exc)

    def _flush_counts(self) -> None:
        m = self.metrics
        if self._acked_out:
            m.alerts_out.inc(self._acked_out)
            self.stats.produced_out += self._acked_out
        if self._acked_candidates:
            m.candidates.inc(self._acked_candidates)
            self.stats.produced_candidates += self._acked_candidates
        if self._acked_dlq:
            self.stats.produced_dlq += self._acked_dlq
        self._acked_out = self._acked_candidates = self._acked_dlq = 0

    def _log_progress(self, now: float) -> None:
        done = self.stats.consumed
        rate = (done - self._progress_base) / max(now - self._last_progress, 1e-9)
        self._last_progress = now
        self._progress_base = done
        log.info("%d alerts in, %d annotated, %d rejected, %d candidates (%.0f alerts/s)", done,
                 self.stats.annotated, self.stats.rejected, self.stats.produced_candidates, rate,
                 extra={"event": "progress", "alerts_in": done, "annotated": self.stats.annotated,
                        "rejected": self.stats.rejected, "candidates": self.stats.produced_candidates,
                        "alerts_per_s": round(rate, 1), "in_flight": self.tracker.pending})

    # -- life cycle: tear down -------------------------------------------------------------------

    def tear_down(self) -> None:
        """Drain: flush the producer, store what was acknowledged, commit synchronously, close."""
        from confluent_kafka import KafkaException

        t0 = time.monotonic()
        try:
            if self.producer is not None:
                left = self.producer.flush(DRAIN_TIMEOUT_S)
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

    # -- callbacks -------------------------------------------------------------------------------

    def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
        log.info("assigned %d partitions", len(partitions), extra={
            "event": "assign", "worker": f"{self.worker[0]}/{self.worker[1]}", "pid": os.getpid(),
            "partitions": [f"{tp.topic}/{tp.partition}" for tp in partitions]})

    def _on_revoke(self, consumer: Any, partitions: list[Any]) -> None:
        """Before losing partitions: finish their outputs, store and commit, so the next owner starts
        exactly after what we produced."""
        from confluent_kafka import KafkaException

        try:
            left = self.producer.flush(DRAIN_TIMEOUT_S) if self.producer is not None else 0
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
        keys = [(tp.topic, tp.partition) for tp in partitions]
        lost = self.tracker.forget(keys)
        log.warning("lost %d partitions (session timeout?); %d unacknowledged messages will be processed again",
                    len(partitions), lost)

    def _on_kafka_error(self, err: Any) -> None:
        """librdkafka ``error_cb``: client-level errors (broker down, auth). librdkafka reconnects by
        itself; we log at WARNING, rate-limited, and stop only on fatal errors."""
        self.metrics.kafka_errors.labels(_error_name(err)).inc()
        if getattr(err, "fatal", lambda: False)():
            if self._fatal is None:
                self._fatal = ServiceStop(f"fatal Kafka client error: {err.str() if hasattr(err, 'str') else err}")
            return
        self._log_kafka_error(err, where="client")

    def _log_kafka_error(self, err: Any, *, where: str) -> None:
        name = _error_name(err)
        text = err.str() if hasattr(err, "str") else str(err)
        self._log_rate_limited(f"{where}-{name}", "Kafka %s error %s: %s", where, name, text)

    def _log_rate_limited(self, key: str, fmt: str, *args: Any) -> None:
        ok, suppressed = self._error_log.allow(key, time.monotonic())
        if ok:
            suffix = f" ({suppressed} similar suppressed)" if suppressed else ""
            log.warning(fmt + suffix, *args, extra={"event": "kafka_error", "key": key})


_PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF


class _TxnAbort(Exception):
    """Internal: abort the current transaction (a produce was refused)."""


def _error_name(err: Any) -> str:
    try:
        return str(err.name())
    except Exception:
        return type(err).__name__


def _secrets_of(cfg: ServiceConfig) -> list[str]:
    """Secret values in the configuration, for the log scrubber."""
    from broker_plugin.stream.kafka_config import is_secret_key

    k = cfg.kafka
    out = [v for v in (k.sasl_password, k.ssl_key_password) if v]
    for extra in (k.consumer_extra, k.producer_extra):
        out += [str(v) for key, v in extra.items() if v is not None and is_secret_key(str(key))]
    return out


def worker_from_env(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``BAL_BROKER_WORKER=i/N`` (set by ``--workers``), else ``(0, 1)``."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    m = re.fullmatch(r"(\d+)/(\d+)", raw.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        return (0, 1)
    return (int(m.group(1)), int(m.group(2)))


# ----------------------------------------------------------------------------- command line


def add_parser(subparsers: Any) -> None:
    """Register ``bal-broker run --config FILE [--workers N]`` (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser(
        "run", help="the streaming service: consume alerts, annotate, produce (until SIGTERM)",
        description="Consume alerts from Kafka, annotate them and produce annotated alerts, BAL candidates and "
                    "dead letters, until SIGTERM/SIGINT (or the end of processing.time_to). Settings come from "
                    "--config and BAL_BROKER__SECTION__KEY environment variables.")
    p.add_argument("--config", metavar="FILE", default=None, help="YAML configuration (see deploy/)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="run N worker processes in the same consumer group (default 1)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    from broker_plugin.stream.logs import setup_logging

    if args.workers < 1:
        raise ConfigError(f"--workers must be at least 1, got {args.workers}")
    cfg = load_config(args.config)
    if args.workers > 1:
        from broker_plugin.stream.workers import run_workers

        setup_logging(cfg.observability.log_level, cfg.observability.log_format)
        return run_workers(args.config, args.workers, cfg)
    setup_logging(cfg.observability.log_level, cfg.observability.log_format)
    service = Service(cfg, worker=worker_from_env())  # loads the model bundle: BundleError -> exit 2
    stop = threading.Event()

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("received %s: draining", signal.Signals(signum).name)
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return service.run(stop)
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
