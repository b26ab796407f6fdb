"""``bal-broker publish``: replay archived alerts into a Kafka topic, byte for byte.

Why: to drive the streaming service (and its tests, and the demo) with real alerts without access
to the ZTF or Rubin streams. Each message value is exactly the bytes of one archived alert: a ZTF
file is one Avro object container holding one alert, which is what the real ZTF stream carries;
a Rubin file in Confluent wire format is sent as is. Nothing is re-encoded, so what the service
decodes is what a live stream would have delivered.

* Key: the alert's object id (what the service keys its outputs by, so one object's alerts stay
  in one partition and in order), from :func:`broker_plugin.decode.decode_alert`. A message that
  does not decode is still published, with no key: corrupt alerts are how the DLQ path is tested.
* Pacing: ``rate`` messages per second by a token bucket (in its virtual-schedule form) on the
  monotonic clock, so the long-run rate is exact (no drift from sleep overshoot).
* Delivery: every message's fate is counted. Produce-time refusals (e.g. message too large),
  delivery errors reported by the broker, and anything still undelivered when the bounded final
  flush times out (purged, so it is reported rather than lost in a dying producer) all end up in
  :attr:`PublishStats.failed` with the first few reasons in :attr:`PublishStats.errors`.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_plugin.errors import BalBrokerError, ConfigError

log = logging.getLogger(__name__)

KeyFn = Callable[[bytes], "bytes | str | None"]
ProgressFn = Callable[["PublishStats"], None]

#: How many individual error reasons :class:`PublishStats` keeps (the counts are always complete).
MAX_ERRORS_KEPT = 20


class PublishError(BalBrokerError):
    """Publishing could not start (broker unreachable) or was misused."""

    reason = "publish_error"


@dataclass
class PublishStats:
    """What happened to every input of one :func:`publish` call."""

    read: int = 0  #: input items seen (files, directory entries, tarball members)
    produced: int = 0  #: handed to the producer
    delivered: int = 0  #: acknowledged by the broker
    failed: int = 0  #: refused at produce time, failed delivery, or undelivered at the final flush
    refused: int = 0  #: the part of ``failed`` that the producer refused before sending (too large...)
    unreadable: int = 0  #: inputs that could not be read (not published)
    skipped: int = 0  #: non-alert files ignored in directories and tarballs
    unkeyed: int = 0  #: published without a key because the key function failed
    bytes_delivered: int = 0
    elapsed_s: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when every readable input was delivered."""
        return self.failed == 0 and self.unreadable == 0 and self.delivered == self.produced

    @property
    def rate(self) -> float:
        """Delivered messages per second of wall time."""
        return self.delivered / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def note(self, message: str) -> None:
        if len(self.errors) < MAX_ERRORS_KEPT:
            self.errors.append(message)

    def summary(self) -> str:
        """One line for the end of ``bal-broker publish``."""
        parts = [f"{self.delivered}/{self.produced} messages delivered", f"{self.failed} failed"]
        if self.unreadable:
            parts.append(f"{self.unreadable} unreadable inputs")
        if self.skipped:
            parts.append(f"{self.skipped} non-alert files skipped")
        if self.unkeyed:
            parts.append(f"{self.unkeyed} without key")
        parts.append(f"{self.bytes_delivered / 1e6:.1f} MB in {self.elapsed_s:.1f} s ({self.rate:.0f} msg/s)")
        return ", ".join(parts)


class TokenBucket:
    """Paces events to ``rate`` per second; after lateness, catches up with short bursts.

    Implemented as the equivalent virtual-schedule form (GCRA): event *i* is due at
    ``t0 + i / rate``. Because the next due time advances from the *schedule*, not from when the
    sleep really ended, sleep overshoot is absorbed and N events take (N - 1) / rate seconds: the
    rate does not drift. Lateness up to ``max(burst / rate, slack)`` seconds is caught up (so
    coarse sleeps at high rates still reach the rate); beyond that, after a stall such as a slow
    tarball read, the surplus is forgotten so the stall never turns into a long burst.
    """

    def __init__(self, rate: float, burst: float = 1.0, clock: Callable[[], float] = time.monotonic,
                 slack: float = 0.05) -> None:
        if not rate > 0:
            raise ConfigError(f"rate must be a positive number of messages per second, not {rate}")
        self.rate = float(rate)
        self.interval = 1.0 / self.rate
        self.tolerance = max(max(1.0, float(burst)) * self.interval, slack)
        self._clock = clock
        self._due = clock()  # when the next event may go

    def delay(self) -> float:
        """Seconds until the next event may go (0 when it may go now)."""
        return max(0.0, self._due - self._clock())

    def acquire(self, sleep: Callable[[float], Any] = time.sleep) -> None:
        """Block (through ``sleep``, which may return early or late) until the next slot, and take it."""
        while (wait := self.delay()) > 0:
            sleep(wait)
        now = self._clock()
        self._due = max(self._due, now - self.tolerance) + self.interval


def object_id_key(data: bytes) -> str | None:
    """Key function: the alert's object id, or None when it does not decode.

    Any exception means "no key" (a replay tool must not stop on one odd alert), never a lost
    message; the decoder is imported lazily so that ``publish`` works without the science stack.
    """
    try:
        from broker_plugin.decode import decode_alert

        object_id = decode_alert(data).object_id
    except Exception:
        return None
    return str(object_id) if object_id not in (None, "") else None


def publish(paths: Sequence[str | Path], topic: str, bootstrap: str, *, rate: float | None = None,
            key_fn: KeyFn | None = object_id_key, progress: ProgressFn | None = None,
            settings: Mapping[str, Any] | None = None, flush_timeout: float = 30.0,
            connect_timeout: float = 10.0, progress_interval: float = 0.5) -> PublishStats:
    """Replay the alerts in ``paths`` (files, directories, .tar.gz) into ``topic`` at ``bootstrap``.

    ``rate`` (messages/s) paces the stream; ``None`` sends as fast as the broker takes them.
    ``key_fn(value) -> key`` (default: object id; ``None``: no keys). ``progress(stats)`` is called
    every ``progress_interval`` seconds and once at the end. ``settings`` are Kafka settings
    (security...) as accepted by :func:`broker_plugin.stream.kafka_config.producer_config`.

    Raises :class:`ConfigError` for a bad input path or rate, :class:`PublishError` when the broker
    cannot be reached within ``connect_timeout``; delivery problems are counted, not raised.
    """
    from confluent_kafka import KafkaException, Producer

    from broker_plugin.files.sources import iter_inputs
    from broker_plugin.stream.kafka_config import producer_config

    if not topic:
        raise ConfigError("publish needs a topic name")
    if flush_timeout <= 0:
        raise ConfigError("flush_timeout must be positive")
    bucket = TokenBucket(rate) if rate is not None else None
    stats = PublishStats()

    def on_skip(origin: str) -> None:
        stats.skipped += 1

    items = iter_inputs(list(paths), on_skip=on_skip)  # validates every path before anything is sent
    config = producer_config(settings, bootstrap=bootstrap)
    config.setdefault("logger", logging.getLogger("broker_plugin.broker.publish.librdkafka"))
    _check_reachable(config, topic, connect_timeout)
    producer = Producer(config)

    start = time.monotonic()
    next_progress = start + progress_interval

    def report(now: float) -> None:
        stats.elapsed_s = now - start
        if progress is not None:
            progress(stats)

    try:
        for item in items:
            stats.read += 1
            if not item.ok:
                stats.unreadable += 1
                stats.note(f"{item.origin}: {item.error}: {item.message}")
                continue
            key = None
            if key_fn is not None:
                key = key_fn(item.data)
                if key is None:
                    stats.unkeyed += 1
            if bucket is not None:
                bucket.acquire(lambda s: producer.poll(s))
            _produce(producer, topic, item.data, key, _delivery_report(stats, item.origin, len(item.data)),
                     stats, item.origin, KafkaException)
            producer.poll(0)
            now = time.monotonic()
            if now >= next_progress:
                report(now)
                next_progress = now + progress_interval
    except KeyboardInterrupt:
        # Deliver what was already handed over (briefly), say so, and let the caller exit 130.
        left = producer.flush(min(5.0, flush_timeout))
        log.warning("interrupted after %d messages; %d still undelivered", stats.produced, left)
        raise

    _final_flush(producer, stats, flush_timeout)
    report(time.monotonic())
    return stats


def _delivery_report(stats: PublishStats, origin: str, size: int) -> Callable[[Any, Any], None]:
    """The delivery callback of one message: counts it delivered or failed (with the broker's reason).

    A factory rather than a closure inside :func:`publish` only to keep that function readable; one
    callback per message is made either way.
    """
    def callback(err: Any, _msg: Any) -> None:  # err: confluent_kafka.KafkaError or None
        if err is None:
            stats.delivered += 1
            stats.bytes_delivered += size
        else:
            stats.failed += 1
            stats.note(f"{origin}: {err.str()}")
    return callback


def _final_flush(producer: Any, stats: PublishStats, flush_timeout: float) -> None:
    """Wait for the outstanding deliveries, then account for every message produced.

    Whatever is still queued after ``flush_timeout`` is purged so that its callbacks report it as
    failed, and messages whose callback never fired are counted as failed too: ``produced`` always
    equals ``delivered + failed - refused`` afterwards, nothing is lost silently.
    """
    remaining = producer.flush(flush_timeout)
    if remaining:
        # Purge so the callbacks report them as failed, instead of silently dropping them with the producer.
        log.warning("%d messages still undelivered after %.0f s; purging them", remaining, flush_timeout)
        producer.purge(in_queue=True, in_flight=True, blocking=False)
        producer.flush(min(5.0, flush_timeout))
    unaccounted = stats.produced - stats.delivered - (stats.failed - stats.refused)
    if unaccounted > 0:  # callbacks that never fired: still count them, never lose them silently
        stats.failed += unaccounted
        stats.note(f"{unaccounted} messages had no delivery report after the final flush")


def _produce(producer: Any, topic: str, value: bytes, key: bytes | str | None,
             callback: Callable[[Any, Any], None], stats: PublishStats, origin: str,
             kafka_exception: type[Exception]) -> None:
    """produce() with back-pressure: wait while the local queue is full; refusals are counted."""
    while True:
        try:
            producer.produce(topic, value=value, key=key, on_delivery=callback)
        except BufferError:
            producer.poll(0.1)  # queue full: serve delivery reports, then retry
            continue
        except kafka_exception as exc:  # e.g. MSG_SIZE_TOO_LARGE: refused before it ever left
            stats.failed += 1
            stats.refused += 1
            stats.note(f"{origin}: refused by the producer: {exc.args[0] if exc.args else exc}")
            return
        stats.produced += 1
        return


def _check_reachable(config: Mapping[str, Any], topic: str, timeout: float) -> None:
    """Fail fast with one line when the broker cannot be reached (else every message would time out)."""
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import AdminClient

    admin_conf = {k: v for k, v in config.items()
                  if k in ("bootstrap.servers", "client.id", "logger") or k.startswith(("security.", "ssl.", "sasl."))}
    try:
        metadata = AdminClient(admin_conf).list_topics(timeout=timeout)
    except KafkaException as exc:
        raise PublishError(f"cannot reach Kafka at {config['bootstrap.servers']} within {timeout:.0f} s: "
                           f"{exc.args[0] if exc.args else exc}") from None
    if topic not in metadata.topics:
        log.info("topic %s does not exist yet; relying on the broker to auto-create it", topic)


def add_parser(subparsers: Any) -> None:
    """Register ``bal-broker publish`` (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser("publish", help="replay archived alerts into a Kafka topic",
                              description="Send every alert of INPUT (.avro files, directories, .tar.gz) "
                                          "to a topic, byte for byte, keyed by object id.")
    p.add_argument("inputs", nargs="+", metavar="INPUT")
    p.add_argument("--topic", required=True)
    p.add_argument("--bootstrap", default="127.0.0.1:9092", help="HOST:PORT (default %(default)s)")
    p.add_argument("--rate", type=float, default=None, help="messages per second (default: as fast as possible)")
    p.add_argument("--no-key", action="store_true", help="send without keys (skips decoding)")
    p.set_defaults(handler=_run)


def _run(args: argparse.Namespace) -> int:
    show = sys.stderr.isatty()

    def progress(stats: PublishStats) -> None:
        if show:
            print(f"\r{stats.delivered}/{stats.produced} delivered, {stats.failed} failed", end="",
                  file=sys.stderr, flush=True)

    stats = publish(args.inputs, args.topic, args.bootstrap, rate=args.rate,
                    key_fn=None if args.no_key else object_id_key, progress=progress)
    if show:
        print(file=sys.stderr)
    print(stats.summary())
    for line in stats.errors:
        print(f"  {line}", file=sys.stderr)
    return 0 if stats.ok else 1
