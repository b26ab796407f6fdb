"""Loopback figures for the embedded broker: start time, group join time, produce/consume rates.

Why: these numbers decide test timeouts and tell a newcomer what the embedded broker can and
cannot show (it is a development broker, not a benchmark of Kafka). Informational only; run with
``.venv/bin/python benchmarks/bench_kafka_loopback.py [--messages 10000 --size 5000]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from broker_plugin.broker.embedded import EmbeddedBroker
from broker_plugin.stream.kafka_config import consumer_config, producer_config


def broker_start_seconds(runs: int) -> list[float]:
    times = []
    for _ in range(runs):
        t0 = time.monotonic()
        with EmbeddedBroker():
            times.append(time.monotonic() - t0)
    return times


def group_join_seconds(broker: EmbeddedBroker, session_timeout_ms: int) -> float:
    topic = f"join-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic])
    consumer = Consumer(consumer_config({"session.timeout.ms": session_timeout_ms}, bootstrap=broker.bootstrap,
                                        group_id=f"g-{uuid.uuid4().hex[:8]}"))
    consumer.subscribe([topic])
    t0 = time.monotonic()
    while not consumer.assignment() and time.monotonic() - t0 < 60:
        consumer.poll(0.05)
    elapsed = time.monotonic() - t0
    consumer.close()
    return elapsed


def throughput(broker: EmbeddedBroker, n: int, size: int, partitions: int, compression: str) -> tuple[float, float]:
    topic = f"tp-{uuid.uuid4().hex[:8]}"
    broker.create_topics([topic], partitions=partitions)
    payload = os.urandom(size)  # incompressible, like gzipped FITS cutouts
    producer = Producer(producer_config({"compression.type": compression}, bootstrap=broker.bootstrap))
    producer.produce(topic, b"warm-up")
    producer.flush(10)  # idempotent producer start-up (PID) excluded from the rate
    failures = 0

    def on_delivery(err: object, _msg: object) -> None:
        nonlocal failures
        failures += err is not None

    t0 = time.monotonic()
    for i in range(n):
        while True:
            try:
                producer.produce(topic, payload, key=str(i).encode(), on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    assert producer.flush(60) == 0 and failures == 0
    produce_rate = n / (time.monotonic() - t0)

    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"r-{uuid.uuid4().hex[:8]}",
                         "enable.auto.commit": False})
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
    got = 0
    t0 = time.monotonic()
    while got < n + 1 and time.monotonic() - t0 < 120:
        got += sum(1 for m in consumer.consume(1000, 0.5) if m.error() is None)
    consume_rate = got / (time.monotonic() - t0)
    consumer.close()
    return produce_rate, consume_rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=10_000)
    parser.add_argument("--size", type=int, default=5_000)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()

    starts = broker_start_seconds(5)
    print(f"broker start (process + first metadata answer): median {statistics.median(starts) * 1000:.0f} ms, "
          f"max {max(starts) * 1000:.0f} ms over {len(starts)} runs")
    with EmbeddedBroker() as broker:
        for timeout in (6000, 45000):
            print(f"group join, session.timeout.ms={timeout}: {group_join_seconds(broker, timeout):.1f} s")
        for compression in ("none", "lz4", "zstd"):
            p, c = throughput(broker, args.messages, args.size, args.partitions, compression)
            mb = args.size / 1e6
            print(f"{args.messages} x {args.size} B, {args.partitions} partitions, {compression}: "
                  f"produce {p:,.0f} msg/s ({p * mb:.0f} MB/s), consume {c:,.0f} msg/s ({c * mb:.0f} MB/s)")


if __name__ == "__main__":
    main()
