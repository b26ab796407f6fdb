"""Messages too large to forward, against the real embedded broker: no single message stops a partition.

A 1.2 MB random message and a valid ZTF alert carrying a 4 MB science stamp, mixed with real alerts,
under small ``kafka.*_max_bytes`` limits: the whole topic is processed and committed, the hostile
alert goes out without cutouts (flagged ``cutouts_dropped_size``), the random message is dead-lettered
as a stub, and a restart on the same group consumes nothing more. An input over
``kafka.input_max_bytes`` is never decoded (a stub, ``message_too_large``). A producer whose own
``message.max.bytes`` is below the configured limits (what a broker refusing a size looks like to
the delivery callback) gets the same outcome through the retry path.
"""

from __future__ import annotations

import hashlib
import io
import logging
import os
import time
from pathlib import Path
from typing import Any

import fastavro
import pytest

from broker_plugin.broker.embedded import EmbeddedBroker
from broker_plugin.models.annotate import Annotator
from broker_plugin.stream.service import Service
from tests.kafka_helpers import unique_name
from tests.service_helpers import (
    FakeStage,
    ServiceThread,
    alert_corpus,
    committed,
    drain_topic,
    headers_of,
    make_config,
    next_offsets,
    produce,
    wait_for,
)

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]

PARTITIONS = 2


@pytest.fixture(scope="module")
def ztf(shared_data: Path) -> list[bytes]:
    return [p.read_bytes() for p in sorted((shared_data / "ztf" / "alerts").glob("*.avro"))[:12]]


def _with_big_stamp(alert: bytes, size: int) -> bytes:
    """A valid ZTF alert whose cutoutScience stampData is ``size`` random bytes."""
    reader = fastavro.reader(io.BytesIO(alert))
    (record,) = list(reader)
    record["cutoutScience"]["stampData"] = os.urandom(size)
    buf = io.BytesIO()
    fastavro.writer(buf, reader.writer_schema, [record], codec="null")
    return buf.getvalue()


def _record(msg: Any) -> dict[str, Any]:
    (rec,) = list(fastavro.reader(io.BytesIO(msg.value())))
    return rec


def _run(kafka_broker: EmbeddedBroker, items: list[tuple[bytes, bytes]], **kafka: Any) -> dict[str, Any]:
    """Produce ``items`` (key, value) to a fresh topic, run the service until every input is handled,
    stop it; returns the config, the inputs by source, the outputs, the DLQ and the commits."""
    topic = unique_name("size-in")
    kafka_broker.create_topics([topic], partitions=PARTITIONS)
    produce(kafka_broker.bootstrap, topic, items, settings={"message.max.bytes": 20_000_000})
    cfg = make_config(kafka_broker.bootstrap, topic, kafka=kafka, processing={"batch_size": 8})
    service = Service(cfg, annotator=Annotator(FakeStage()))
    with ServiceThread(service) as st:
        st.wait_outputs(len(items), timeout=90)
        wait_for(lambda: service.tracker.pending == 0, 20, "acknowledgements")
        code = st.stop()
    big = {"fetch.max.bytes": 20_000_000, "receive.message.max.bytes": 20_001_000}
    inputs = drain_topic(kafka_broker.bootstrap, topic, min_count=len(items), settings=big)
    k = cfg.kafka
    return {
        "cfg": cfg, "code": code, "service": service, "topic": topic,
        "inputs": {f"{m.topic()}/{m.partition()}/{m.offset()}": m for m in inputs},
        "next": next_offsets(inputs),
        "out": drain_topic(kafka_broker.bootstrap, k.output_topic, min_count=1, settings=big),
        "dlq": drain_topic(kafka_broker.bootstrap, k.dlq_topic, min_count=1, settings=big),
        "committed": committed(kafka_broker.bootstrap, k.group_id, topic, PARTITIONS),
    }


def _check_stub(dlq: Any, original: bytes, key: bytes) -> dict[str, str]:
    h = headers_of(dlq)
    assert h["bal_truncated"] == "true"
    assert int(h["bal_original_size"]) == len(original)
    assert h["bal_original_sha256"] == hashlib.sha256(original).hexdigest()
    assert dlq.value() == original[:1024]
    assert dlq.key() == key
    return h


def _check_hostile_out(run: dict[str, Any], hostile: bytes, n_good: int) -> None:
    by_value = {m.value(): src for src, m in run["inputs"].items()}
    hostile_src = by_value[hostile]
    assert len(run["out"]) == n_good
    seen = set()
    for m in run["out"]:
        src = headers_of(m)["bal_source"]
        seen.add(src)
        rec = _record(m)
        if src == hostile_src:
            assert rec["cutoutScience"] is None and rec["cutoutTemplate"] is None
            assert "cutouts_dropped_size" in rec["bal"]["flags"]
            assert len(m.value()) < 1_000_000
        else:
            assert rec["cutoutScience"] is not None
            assert "cutouts_dropped_size" not in rec["bal"]["flags"]
    assert len(seen) == n_good


def test_oversized_output_and_dead_letter_do_not_stop_the_partition(kafka_broker: EmbeddedBroker,
                                                                    ztf: list[bytes]) -> None:
    hostile = _with_big_stamp(ztf[0], 4 * 1024 * 1024)
    junk = os.urandom(1_200_000)
    items = [(f"good-{i}".encode(), a) for i, a in enumerate(ztf[1:7])]
    items += [(b"hostile", hostile), (b"junk", junk)]
    items += [(f"good-{i}".encode(), a) for i, a in enumerate(ztf[7:], start=7)]
    run = _run(kafka_broker, items, output_max_bytes=1_000_000, dlq_max_bytes=512_000)
    assert run["code"] == 0
    assert run["committed"] == run["next"]  # the whole topic, to the end
    _check_hostile_out(run, hostile, len(items) - 1)
    (dlq,) = run["dlq"]
    _check_stub(dlq, junk, b"junk")
    assert run["service"].stats.reasons["output_too_large"] == 0

    # a restart on the same group: nothing left to consume (no crash loop, no duplicates)
    again = Service(run["cfg"], annotator=Annotator(FakeStage()))
    with ServiceThread(again) as st:
        wait_for(lambda: again.consumer is not None and bool(again.consumer.assignment()), 30, "assignment")
        time.sleep(2.0)
        assert st.stop() == 0
    assert again.stats.consumed == 0
    k = run["cfg"].kafka
    assert len(drain_topic(kafka_broker.bootstrap, k.dlq_topic, min_count=1)) == 1


def test_input_over_input_max_bytes_is_never_decoded(kafka_broker: EmbeddedBroker, ztf: list[bytes]) -> None:
    hostile = _with_big_stamp(ztf[0], 2 * 1024 * 1024)  # a valid alert: decoded, it would be annotated
    items = [(b"good-1", ztf[1]), (b"hostile", hostile), (b"good-2", ztf[2])]
    run = _run(kafka_broker, items, input_max_bytes=1_000_000)
    assert run["code"] == 0
    assert run["committed"] == run["next"]
    assert len(run["out"]) == 2
    (dlq,) = run["dlq"]
    h = _check_stub(dlq, hostile, b"hostile")
    assert h["bal_error_reason"] == "message_too_large"
    assert h["bal_source"] == {m.value(): s for s, m in run["inputs"].items()}[hostile]
    assert run["service"].stats.reasons["message_too_large"] == 1


def test_size_refused_at_produce_time_is_sent_smaller(kafka_broker: EmbeddedBroker, ztf: list[bytes]) -> None:
    """The producer refuses (MSG_SIZE_TOO_LARGE) what the configured limits let through: the output
    is sent again without cutouts, the dead letter as a stub, from the delivery path."""
    hostile = _with_big_stamp(ztf[0], 4 * 1024 * 1024)
    junk = os.urandom(1_200_000)
    items = [(b"good-1", ztf[1]), (b"hostile", hostile), (b"junk", junk), (b"good-2", ztf[2])]
    run = _run(kafka_broker, items, producer_extra={"message.max.bytes": 1_000_000})
    assert run["code"] == 0
    assert run["committed"] == run["next"]
    _check_hostile_out(run, hostile, 3)
    (dlq,) = run["dlq"]
    _check_stub(dlq, junk, b"junk")


@pytest.fixture(scope="module")
def wire_alert(shared_data: Path) -> bytes:
    """A Rubin alert in the Confluent wire format (its output embeds the schema: it grows)."""
    return next(d for n, d in alert_corpus(shared_data, synthetic=0) if n.startswith("boom_wire"))


def test_output_refused_for_size_goes_out_without_cutouts(kafka_broker: EmbeddedBroker, wire_alert: bytes,
                                                          ztf: list[bytes]) -> None:
    """Replaces test_service's ``test_output_too_large_goes_to_dlq``: the producer refuses the
    annotated output (larger than the input) and it goes out without cutouts instead of to the DLQ."""
    items = [(b"big", wire_alert), (b"small", ztf[1])]
    run = _run(kafka_broker, items, producer_extra={"message.max.bytes": len(wire_alert) + 2000})
    assert run["code"] == 0 and run["dlq"] == []
    assert run["committed"] == run["next"]
    big_src = {m.value(): src for src, m in run["inputs"].items()}[wire_alert]
    big = next(m for m in run["out"] if headers_of(m)["bal_source"] == big_src)
    rec = _record(big)
    assert rec["cutoutScience"] is None and "cutouts_dropped_size" in rec["bal"]["flags"]
    s = run["service"].stats
    assert (s.annotated, s.rejected, s.produced_out, s.produced_dlq) == (2, 0, 2, 0)


def test_refused_stub_stops_without_committing(kafka_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture,
                                               wire_alert: bytes) -> None:
    """Replaces test_service's ``test_dlq_failure_stops_without_committing``: only when even the
    dead-letter stub (1 kB and headers) is refused does the service stop, with status 1, uncommitted."""
    topic = unique_name("nodlq")
    kafka_broker.create_topics([topic], partitions=1)
    produce(kafka_broker.bootstrap, topic, [(b"big", wire_alert)])
    cfg = make_config(kafka_broker.bootstrap, topic, kafka={"producer_extra": {"message.max.bytes": 1000}})
    with caplog.at_level(logging.ERROR, logger="broker_plugin.stream.service"):
        st = ServiceThread(Service(cfg, annotator=Annotator(FakeStage())))
        with st:
            assert st.join(30) == 1
    assert any("dead-letter topic" in r.getMessage() for r in caplog.records)
    assert committed(kafka_broker.bootstrap, cfg.kafka.group_id, topic, 1) == {}
