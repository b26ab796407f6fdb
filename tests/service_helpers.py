"""Helpers for the streaming-service tests (no fixtures here: see tests/kafka_fixtures.py).

Everything talks to the real embedded broker; nothing here mocks Kafka. The service runs in a
background thread (:class:`ServiceThread`) when a test only needs its behaviour, and as a
subprocess when a test needs signals or ``kill -9``.
"""

from __future__ import annotations

import json
import math
import threading
import time
import zlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.config import ServiceConfig, load_config
from broker_plugin.models.predictions import Predictions
from tests.kafka_helpers import unique_name

CORRUPT_MESSAGES: tuple[tuple[str, bytes], ...] = (
    ("garbage", b"this is not an alert"),
    ("empty", b""),
    ("wire-unknown-id", b"\x00\x00\x00\x27\x0f" + b"\x02" * 40),
    ("container-truncated", b"Obj\x01\x04\x16avro.schema"),
)


def alert_corpus(shared_data: Path, *, synthetic: int = 16) -> list[tuple[str, bytes]]:
    """(name, message bytes) of every real ZTF alert, every Rubin sample (containers and Confluent
    wire format) and, when the synthetic generator is available, ``synthetic`` synthetic packets."""
    out = [(p.name, p.read_bytes()) for p in sorted((shared_data / "ztf" / "alerts").glob("*.avro"))]
    out += [(p.name, p.read_bytes()) for p in sorted((shared_data / "lsst" / "alerts").glob("*.avro"))]
    if synthetic:
        try:
            from training.synthetic import packets
        except ImportError:
            return out
        out += [(f"synthetic_{i:03d}.avro", data)
                for i, (data, _truth) in enumerate(packets.generate_night(synthetic, seed=11))]
    return out


def make_config(bootstrap: str, input_topic: str, **sections: Mapping[str, Any]) -> ServiceConfig:
    """A service configuration for tests: unique group and output topics, short session timeout
    (Tansu's group join takes about half of it), metrics off unless asked for."""
    kafka = {
        "bootstrap_servers": bootstrap,
        "input_topics": [input_topic],
        "group_id": unique_name("svc"),
        "output_topic": unique_name("out"),
        "candidate_topic": unique_name("cand"),
        "dlq_topic": unique_name("dlq"),
        "session_timeout_ms": 2000,
        "consumer_extra": {"topic.metadata.refresh.interval.ms": 1000},
    }
    kafka.update(sections.get("kafka", {}))
    overrides = {"kafka": kafka,
                 "processing": {"batch_timeout_s": 0.2, **sections.get("processing", {})},
                 "observability": {"metrics_port": 0, **sections.get("observability", {})}}
    for name in ("models", "history"):
        if name in sections:
            overrides[name] = dict(sections[name])
    return load_config(overrides=overrides, environ={})


def config_yaml(cfg: ServiceConfig) -> str:
    """The YAML an operator would write for ``cfg`` (for subprocess runs)."""
    import dataclasses

    import yaml

    def plain(v: Any) -> Any:
        if isinstance(v, tuple):
            return list(v)
        if isinstance(v, Mapping):
            return {k: plain(x) for k, x in v.items()}
        return v

    data = {s.name: {k: plain(v) for k, v in dataclasses.asdict(getattr(cfg, s.name)).items() if v is not None}
            for s in dataclasses.fields(cfg)}
    return yaml.safe_dump(data, sort_keys=False)


def produce(bootstrap: str, topic: str, items: Iterable[tuple[bytes | str | None, bytes]], *,
            timestamps: Sequence[int] | None = None, settings: Mapping[str, Any] | None = None) -> int:
    """Produce (key, value) pairs, optionally with explicit timestamps; returns how many."""
    from confluent_kafka import Producer

    conf = {"bootstrap.servers": bootstrap, "linger.ms": 5, **(settings or {})}
    producer = Producer(conf)
    n = 0
    for i, (key, value) in enumerate(items):
        kwargs: dict[str, Any] = {}
        if timestamps is not None:
            kwargs["timestamp"] = timestamps[i]
        while True:
            try:
                producer.produce(topic, value=value, key=key, **kwargs)
                break
            except BufferError:
                producer.poll(0.1)
        producer.poll(0)
        n += 1
    assert producer.flush(30) == 0, "inputs not delivered"
    return n


def topic_partitions(bootstrap: str, topic: str, settings: Mapping[str, Any] | None = None) -> int:
    """Partition count of ``topic``, 0 when it does not exist."""
    from confluent_kafka.admin import AdminClient

    md = AdminClient({"bootstrap.servers": bootstrap, **(settings or {})}).list_topics(timeout=10)
    t = md.topics.get(topic)
    return len(t.partitions) if t is not None and t.error is None else 0


def drain_topic(bootstrap: str, topic: str, *, min_count: int = 0, timeout: float = 20.0, idle: float = 0.3,
                settings: Mapping[str, Any] | None = None) -> list[Any]:
    """Every message of ``topic`` (all partitions, from the beginning): waits for at least
    ``min_count``, then until nothing new arrives for ``idle`` seconds. [] for a missing topic."""
    from confluent_kafka import Consumer, TopicPartition

    deadline = time.monotonic() + timeout
    n_parts = topic_partitions(bootstrap, topic, settings)
    while n_parts == 0 and min_count and time.monotonic() < deadline:
        time.sleep(0.2)
        n_parts = topic_partitions(bootstrap, topic, settings)
    if n_parts == 0:
        return []
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("drain"),
                         "enable.auto.commit": False, "fetch.wait.max.ms": 20, **(settings or {})})
    try:
        # Offset 0, not OFFSET_BEGINNING: Tansu topics are memory-only and start at 0, and resolving
        # OFFSET_BEGINNING costs Tansu half a second.
        consumer.assign([TopicPartition(topic, p, 0) for p in range(n_parts)])
        out: list[Any] = []
        last = time.monotonic()
        while time.monotonic() < deadline:
            batch = [m for m in consumer.consume(num_messages=1000, timeout=0.05) if m.error() is None]
            now = time.monotonic()
            if batch:
                out += batch
                last = now
            elif len(out) >= min_count and now - last >= idle:
                break
        assert len(out) >= min_count, f"only {len(out)} of {min_count} messages on {topic}"
        return out
    finally:
        consumer.close()


def next_offsets(messages: Iterable[Any]) -> dict[int, int]:
    """Per partition, the offset after the last of ``messages`` (what a group that processed them all
    has committed). Computed from the messages because Tansu under-reports high watermarks."""
    out: dict[int, int] = {}
    for m in messages:
        out[m.partition()] = max(out.get(m.partition(), 0), m.offset() + 1)
    return out


def committed(bootstrap: str, group: str, topic: str, partitions: int,
              settings: Mapping[str, Any] | None = None) -> dict[int, int]:
    """The group's committed offset per partition (negative = none), only partitions with one."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, **(settings or {})})
    try:
        got = c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        c.close()


def headers_of(msg: Any) -> dict[str, str]:
    return {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in (msg.headers() or [])}


def wait_for(pred: Callable[[], bool], timeout: float, what: str, step: float = 0.05) -> None:
    deadline = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(step)


class ServiceThread:
    """Runs a :class:`broker_plugin.stream.service.Service` in a thread; ``stop()`` returns its exit status."""

    def __init__(self, service: Any) -> None:
        self.service = service
        self.stop_event = threading.Event()
        self.code: int | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._main, daemon=True)

    def _main(self) -> None:
        try:
            self.code = self.service.run(self.stop_event)
        except BaseException as exc:  # surfaced by stop()/join()
            self.error = exc

    def __enter__(self) -> ServiceThread:
        self.thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stop()

    def join(self, timeout: float) -> int | None:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), f"service did not exit within {timeout} s"
        if self.error is not None:
            raise self.error
        return self.code

    def stop(self, timeout: float = 15.0) -> int | None:
        self.stop_event.set()
        return self.join(timeout)

    def wait_outputs(self, n: int, timeout: float = 30.0) -> None:
        """Until ``n`` inputs are fully handled: acknowledged annotated outputs plus dead letters."""
        s = self.service.stats

        def done() -> bool:
            if self.error is not None or not self.thread.is_alive():
                raise AssertionError(f"service ended early: code={self.code} error={self.error!r}")
            return s.produced_out + s.produced_dlq >= n

        wait_for(done, timeout, f"{n} handled inputs (have {s.produced_out} out + {s.produced_dlq} dlq)")


class FakeStage:
    """A deterministic model stage (the model bundle's interface, not a Kafka mock): scores from a
    hash of the object id, so some alerts are candidates and replay and service agree."""

    version = "fake-1.0"

    def predict(self, features: np.ndarray, alerts: Sequence[Any]) -> Predictions:
        score = np.array([(zlib.crc32(str(a.object_id).encode()) % 1000) / 1000.0 for a in alerts])
        return Predictions(bal_lc_prob=score, bal_fusion_prob=np.full(len(alerts), np.nan),
                           candidate_score=score, is_candidate=score >= 0.5, flags=[["fake"] for _ in alerts])


def same(x: Any, y: Any) -> bool:
    """Deep equality with NaN == NaN (decoded alert records hold NaN floats)."""
    if isinstance(x, float) and isinstance(y, float) and math.isnan(x) and math.isnan(y):
        return True
    if isinstance(x, dict) and isinstance(y, dict):
        return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
    if isinstance(x, list | tuple) and isinstance(y, list | tuple):
        return len(x) == len(y) and all(same(a, b) for a, b in zip(x, y, strict=True))
    return bool(x == y)


def log_events(log_path: Path, name: str | None = None) -> list[dict[str, Any]]:
    """The service's JSON log lines in ``log_path`` (those whose ``event`` is ``name``, if given)."""
    out = []
    for line in log_path.read_text().splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and (name is None or entry.get("event") == name):
            out.append(entry)
    return out


def worker_assignments(log_path: Path) -> dict[str, list[str]]:
    """Each worker's current partitions, replayed from its assign/revoke log events."""
    latest: dict[str, list[str]] = {}
    for entry in log_events(log_path):
        if entry.get("event") == "assign":
            latest[entry["worker"]] = entry["partitions"]
        elif entry.get("event") == "revoke":
            latest.pop(entry["worker"], None)
    return latest
