"""The streaming service against the real embedded broker, in-process (a background thread).

One module-scoped run carries the main checks (every alert annotated exactly as replay does, keyed
by object id, candidates a subset, corrupt messages dead-lettered with their headers, offsets
committed, metrics served); smaller runs cover the time window, exactly-once, produce failures, the
error budget and a broker that is not there at start.
"""

from __future__ import annotations

import io
import json
import logging
import urllib.request
from pathlib import Path
from typing import Any

import fastavro
import pytest

from broker_plugin import __version__
from broker_plugin.broker.embedded import EmbeddedBroker, find_free_port
from broker_plugin.models.annotate import Annotator
from broker_plugin.stream.service import Service
from tests.kafka_helpers import unique_name
from tests.service_helpers import (
    CORRUPT_MESSAGES,
    FakeStage,
    ServiceThread,
    alert_corpus,
    committed,
    drain_topic,
    headers_of,
    make_config,
    next_offsets,
    produce,
    same,
    wait_for,
)

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(120)]


def _key_of(data: bytes) -> str | None:
    from broker_plugin.decode import decode_alert

    try:
        return decode_alert(data).object_id
    except Exception:
        return None


@pytest.fixture(scope="module")
def corpus(shared_data: Path) -> list[tuple[str, bytes]]:
    return alert_corpus(shared_data)


@pytest.fixture(scope="module")
def e2e(kafka_broker: EmbeddedBroker, corpus: list[tuple[str, bytes]], tmp_path_factory: Any) -> dict[str, Any]:
    """One service run over every alert plus corrupt messages, with a candidate-marking model stage
    and the metrics endpoint on; returns what the tests below inspect."""
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("in")
    kafka_broker.create_topics([topic], partitions=4)
    messages: list[tuple[str, bytes | None, bytes]] = []
    for i, (name, data) in enumerate(corpus):
        messages.append((name, _key_of(data), data))
        if i % 40 == 7:  # corrupt messages interleaved with good ones
            cname, cdata = CORRUPT_MESSAGES[(i // 40) % len(CORRUPT_MESSAGES)]
            messages.append((cname, f"bad-{i}".encode(), cdata))
    produce(bootstrap, topic, [(k, v) for _, k, v in messages])
    port = find_free_port()
    # an in-memory history store, as replay keeps one: the records must then be replay's exactly
    cfg = make_config(bootstrap, topic, observability={"metrics_port": port}, processing={"batch_size": 64},
                      history={"backend": "sqlite", "path": ":memory:"})
    service = Service(cfg, annotator=Annotator(FakeStage()))
    with ServiceThread(service) as st:
        st.wait_outputs(len(messages), timeout=60)
        wait_for(lambda: service.tracker.pending == 0, 10, "acknowledgements")
        metrics_text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        code = st.stop()
    k = cfg.kafka
    n_corrupt = sum(1 for name, _, _ in messages if not name.endswith(".avro"))
    return {
        "cfg": cfg, "topic": topic, "messages": messages, "code": code, "metrics": metrics_text,
        "service": service, "corpus": corpus, "n_corrupt": n_corrupt, "tmp": tmp_path_factory.mktemp("e2e"),
        "out": drain_topic(bootstrap, k.output_topic, min_count=len(messages) - n_corrupt),
        "cand": drain_topic(bootstrap, k.candidate_topic, min_count=0),
        "dlq": drain_topic(bootstrap, k.dlq_topic, min_count=n_corrupt),
        "inputs": drain_topic(bootstrap, topic, min_count=len(messages)),
        "committed": committed(bootstrap, k.group_id, topic, 4),

    }


def test_every_alert_annotated_once_keyed_by_object_id(e2e: dict[str, Any]) -> None:
    assert e2e["code"] == 0
    good = [(name, key, data) for name, key, data in e2e["messages"] if name.endswith(".avro")]
    assert len(good) >= 128 + 10
    out = e2e["out"]
    assert len(out) == len(good)
    inputs = {f"{m.topic()}/{m.partition()}/{m.offset()}": m for m in e2e["inputs"]}
    seen = set()
    for m in out:
        h = headers_of(m)
        src = inputs[h["bal_source"]]
        seen.add(h["bal_source"])
        assert h["bal_plugin_version"] == __version__
        assert m.key() == src.key() and m.key().decode() == _key_of(src.value())
    assert len(seen) == len(good)
    surveys = {json.loads(json.dumps(_bal(m)))["survey"] for m in out}
    assert surveys == {"ztf", "lsst"}


def _bal(msg: Any) -> dict[str, Any]:
    (rec,) = list(fastavro.reader(io.BytesIO(msg.value())))
    return rec["bal"]


def test_outputs_are_input_plus_bal_equal_to_replay(e2e: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain fastavro reads every output; the alert fields equal the input's, ``bal`` equals the
    JSONL record replay writes for the same alert (same model stage, both with a history store:
    the service's in batches of 64 over 4 partitions, replay's in one batch in file order)."""
    from broker_plugin.decode import decode_container_records
    from broker_plugin.files.replay import replay
    from broker_plugin.models import annotate

    tmp: Path = e2e["tmp"]
    files = []
    for name, data in e2e["corpus"]:
        p = tmp / "in" / name
        p.parent.mkdir(exist_ok=True)
        p.write_bytes(data)
        files.append(p)
    monkeypatch.setattr(annotate, "load_model_stage", lambda path: FakeStage())
    replay(files, tmp / "replay.jsonl", models=str(tmp))
    records = [json.loads(line) for line in (tmp / "replay.jsonl").read_text().splitlines()]
    assert len(records) == len(files)  # one per input, in input order
    expected = {data: rec for (_, data), rec in zip(e2e["corpus"], records, strict=True)}
    inputs = {f"{m.topic()}/{m.partition()}/{m.offset()}": m for m in e2e["inputs"]}
    for m in e2e["out"]:
        reader = fastavro.reader(io.BytesIO(m.value()))
        assert reader.writer_schema["fields"][-1]["name"] == "bal"
        (rec,) = list(reader)
        bal = rec.pop("bal")
        source = inputs[headers_of(m)["bal_source"]].value()
        (original,) = decode_container_records(source)
        assert same(rec, original)
        assert json.loads(json.dumps(bal)) == expected[source]


def test_candidates_are_the_flagged_subset(e2e: dict[str, Any]) -> None:
    out_by_src = {headers_of(m)["bal_source"]: m for m in e2e["out"]}
    flagged = {s for s, m in out_by_src.items() if _bal(m)["is_candidate"]}
    cand = e2e["cand"]
    assert 0 < len(cand) < len(out_by_src)
    assert {headers_of(m)["bal_source"] for m in cand} == flagged
    for m in cand:
        assert m.value() == out_by_src[headers_of(m)["bal_source"]].value()
        assert m.key() == out_by_src[headers_of(m)["bal_source"]].key()


def test_corrupt_messages_go_to_dlq_with_headers(e2e: dict[str, Any]) -> None:
    bad = {key: (name, data) for name, key, data in e2e["messages"] if not name.endswith(".avro")}
    dlq = e2e["dlq"]
    assert len(dlq) == e2e["n_corrupt"] == len(bad)
    reasons = set()
    for m in dlq:
        h = headers_of(m)
        name, data = bad[m.key()]
        assert m.value() == data, name
        assert h["bal_error_class"] == "DecodeError"
        assert h["bal_error_reason"] and h["bal_error_message"]
        assert h["bal_source_topic"] == e2e["topic"]
        assert h["bal_source"] == f"{h['bal_source_topic']}/{h['bal_source_partition']}/{h['bal_source_offset']}"
        assert h["bal_plugin_version"] == __version__
        reasons.add(h["bal_error_reason"])
    assert {"bad_magic", "empty", "unknown_schema_id", "truncated"} <= reasons


def test_offsets_committed_to_the_end(e2e: dict[str, Any]) -> None:
    assert e2e["committed"] == next_offsets(e2e["inputs"])


def test_metrics_endpoint_serves_the_counters(e2e: dict[str, Any]) -> None:
    text = e2e["metrics"]
    values = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            values[name] = float(value)
    total = len(e2e["messages"])
    assert values["bal_alerts_in_total"] == total
    assert values["bal_alerts_out_total"] == total - e2e["n_corrupt"]
    assert values["bal_candidates_total"] == len(e2e["cand"])
    assert sum(v for k, v in values.items() if k.startswith("bal_alerts_rejected_total")) == e2e["n_corrupt"]
    assert 'bal_alerts_rejected_total{reason="bad_magic"}' in values
    for stage in ("decode", "features", "inference", "encode", "produce"):
        assert f'bal_stage_seconds_per_alert_count{{stage="{stage}"}}' in values
    assert "bal_consumer_lag" in text


def test_time_window_replay_stops_by_itself(kafka_broker: EmbeddedBroker, corpus: list[tuple[str, bytes]]) -> None:
    """Messages with explicit timestamps before, inside and after the window: only the inside ones
    are annotated (client-side filtering too, as Tansu's offsets_for_times answers 0), and the run
    ends on its own with status 0 once every partition is past time_to."""
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("win")
    kafka_broker.create_topics([topic], partitions=2)
    base = 1_600_000_000_000  # 2020-09-13: a closed window in the past
    alerts = [data for name, data in corpus if name.endswith(".avro")][:30]
    stamps = [base + i * 1000 for i in range(30)]  # 10 before, 10 inside, 10 after
    produce(bootstrap, topic, [(_key_of(d), d) for d in alerts], timestamps=stamps)
    cfg = make_config(bootstrap, topic, processing={"time_from": str(base + 10_000), "time_to": str(base + 19_000),
                                                    "batch_size": 8})
    service = Service(cfg)
    st = ServiceThread(service)
    with st:
        assert st.join(30) == 0
    out = drain_topic(bootstrap, cfg.kafka.output_topic, min_count=10)
    assert len(out) == 10
    want = {stamps[i] for i in range(10, 20)}
    inputs = {f"{m.topic()}/{m.partition()}/{m.offset()}": m for m in drain_topic(bootstrap, topic, min_count=30)}
    assert {inputs[headers_of(m)["bal_source"]].timestamp()[1] for m in out} == want
    assert service.group_id.startswith(cfg.kafka.group_id + "-range-")


def test_exactly_once_happy_path(kafka_broker: EmbeddedBroker, corpus: list[tuple[str, bytes]]) -> None:
    """Transactions on Tansu: outputs and offsets committed together, input topic subscribed by
    regex. (Tansu shows aborted records to read_committed readers, so abort semantics cannot be
    tested against it.)"""
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("eos")
    kafka_broker.create_topics([topic], partitions=4)
    items = [(_key_of(d), d) for _, d in corpus[:40]] + [(b"bad", b"junk")]
    produce(bootstrap, topic, items)
    # subscribed by pattern (librdkafka treats '^...' as a regex), not by name
    cfg = make_config(bootstrap, topic, kafka={"exactly_once": True, "input_topics": [],
                                               "input_pattern": f"^{topic}$"}, processing={"batch_size": 16})
    service = Service(cfg)
    with ServiceThread(service) as st:
        st.wait_outputs(len(items), timeout=30)
        assert st.stop() == 0
    assert len(drain_topic(bootstrap, cfg.kafka.output_topic, min_count=40)) == 40
    assert len(drain_topic(bootstrap, cfg.kafka.dlq_topic, min_count=1)) == 1
    inputs = drain_topic(bootstrap, topic, min_count=len(items))
    assert committed(bootstrap, cfg.kafka.group_id, topic, 4) == next_offsets(inputs)


def test_error_budget_stops_with_status_2(kafka_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("rot")
    kafka_broker.create_topics([topic], partitions=1)
    produce(bootstrap, topic, [(f"k{i}".encode(), b"rotten %d" % i) for i in range(10)])
    cfg = make_config(bootstrap, topic, processing={"error_max": 3, "error_window_s": 60, "batch_size": 2})
    with caplog.at_level(logging.ERROR, logger="broker_plugin.stream.service"):
        st = ServiceThread(Service(cfg))
        with st:
            assert st.join(30) == 2
    assert any("error budget exhausted" in r.getMessage() for r in caplog.records)
    dlq = drain_topic(bootstrap, cfg.kafka.dlq_topic, min_count=4)
    assert 4 <= len(dlq) <= 10
    # what was dead-lettered is committed, nothing beyond
    assert committed(bootstrap, cfg.kafka.group_id, topic, 1)[0] == len(dlq)


def test_broker_unreachable_at_start_is_retried(corpus: list[tuple[str, bytes]],
                                                caplog: pytest.LogCaptureFixture) -> None:
    """No broker at start: the service waits (warnings, rate-limited; no crash, no hot loop) and
    processes alerts once a broker appears on its bootstrap address."""
    port = find_free_port()
    bootstrap = f"127.0.0.1:{port}"
    topic = unique_name("late")
    fast = {"reconnect.backoff.ms": 100, "reconnect.backoff.max.ms": 500}
    cfg = make_config(bootstrap, topic, kafka={"consumer_extra": {**fast, "topic.metadata.refresh.interval.ms": 500},
                                                "producer_extra": fast})
    service = Service(cfg)
    polls = []
    original = service.consume
    service.consume = lambda: polls.append(1) or original()  # type: ignore[method-assign]
    with caplog.at_level(logging.WARNING), ServiceThread(service) as st:
        wait_for(lambda: len(polls) >= 3, 10, "the loop to poll")
        import time

        time.sleep(1.5)
        assert len(polls) < 40, "the loop spins while the broker is down"
        with EmbeddedBroker(port) as broker:
            broker.create_topics([topic], partitions=1)
            produce(broker.bootstrap, topic, [(_key_of(d), d) for _, d in corpus[:5]])
            st.wait_outputs(5, timeout=30)
            assert st.stop() == 0
    warnings = [r for r in caplog.records if r.levelno >= logging.WARNING and "service" in r.name]
    assert warnings, "a broker that is down must be reported"
    assert len(warnings) < 30, "broker-down warnings must be rate-limited"
