"""Plain helpers for Kafka tests (no fixtures here; see :mod:`tests.kafka_fixtures`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

#: ``make(prefix="t", partitions=1) -> topic name``, what the ``topic_factory`` fixture returns.
TopicFactory = Callable[..., str]


def unique_name(prefix: str = "t") -> str:
    """A topic or group name no other test uses (Kafka names: letters, digits, '.', '_', '-')."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def read_topic(bootstrap: str, topic: str, count: int, *, partitions: int = 1, timeout: float = 15.0) -> list[Any]:
    """The first ``count`` messages of ``topic`` (all partitions, from the beginning).

    Uses ``assign`` rather than a consumer group, so there is no group join to wait for; raises
    AssertionError naming how many arrived if fewer than ``count`` do within ``timeout``.
    """
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_name("reader"),
                         "enable.auto.commit": False, "enable.partition.eof": False})
    try:
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        messages: list[Any] = []
        deadline = time.monotonic() + timeout
        while len(messages) < count and time.monotonic() < deadline:
            for msg in consumer.consume(num_messages=count - len(messages), timeout=0.2):
                if msg.error() is None:
                    messages.append(msg)
        assert len(messages) >= count, f"only {len(messages)} of {count} messages arrived on {topic}"
        return messages
    finally:
        consumer.close()
