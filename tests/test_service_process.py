"""``bal-broker run`` as operators run it: subprocesses, signals, ``kill -9``, ``--workers``, bad configs.

Real embedded broker, real processes (``python -m broker_plugin run --config FILE``). Each test is
bounded in time; the service's own timing contract (SIGTERM -> exit 0 within 10 s) is asserted.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.broker.embedded import EmbeddedBroker
from broker_plugin.stream.kafka_output import OutputEncoder
from tests.kafka_helpers import unique_name
from tests.service_helpers import (
    alert_corpus,
    committed,
    config_yaml,
    drain_topic,
    headers_of,
    log_events,
    make_config,
    next_offsets,
    produce,
    wait_for,
    worker_assignments,
)

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka]

REPO = Path(__file__).resolve().parent.parent


def _start(config: Path, *extra: str, stderr: Any = subprocess.DEVNULL) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "broker_plugin", "run", "--config", str(config), *extra],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=stderr)


def _stop(proc: subprocess.Popen[bytes], within: float = 10.0) -> tuple[int, float]:
    """SIGTERM, then wait; returns (status, seconds it took)."""
    t0 = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(within)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise AssertionError(f"no exit within {within} s of SIGTERM") from None
    return code, time.monotonic() - t0


class _Collector(threading.Thread):
    """Reads a topic continuously (assigned, from offset 0) while the service runs."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.messages: list[Any] = []
        self.stopping = threading.Event()

    def run(self) -> None:
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": self.bootstrap, "group.id": unique_name("col"),
                      "enable.auto.commit": False, "fetch.wait.max.ms": 20})
        c.assign([TopicPartition(self.topic, p, 0) for p in range(self.partitions)])
        try:
            while not self.stopping.is_set():
                self.messages += [m for m in c.consume(500, 0.05) if m.error() is None]
        finally:
            c.close()


@pytest.fixture(scope="module")
def ztf_alerts(shared_data: Path) -> list[tuple[str, bytes]]:
    return [(n, d) for n, d in alert_corpus(shared_data, synthetic=0) if n.endswith(".avro")]


def _key(data: bytes) -> str:
    from broker_plugin.decode import decode_alert

    return decode_alert(data).object_id


@pytest.mark.timeout(120)
def test_kill_9_mid_stream_loses_nothing(kafka_broker: EmbeddedBroker, ztf_alerts: list[tuple[str, bytes]],
                                         tmp_path: Path) -> None:
    """kill -9 the worker three times mid-stream and restart it: every input offset still gets an
    output (at least once), and a final SIGTERM exits 0 within 10 s with every offset committed."""
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("k9")
    kafka_broker.create_topics([topic], partitions=4)
    items = [(_key(d), d) for _, d in ztf_alerts] * 5
    produce(bootstrap, topic, items)
    cfg = make_config(bootstrap, topic, processing={"batch_size": 16})
    kafka_broker.create_topics([cfg.kafka.output_topic], partitions=4)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    collector = _Collector(bootstrap, cfg.kafka.output_topic, 4)
    collector.start()
    wanted = {f"{topic}/{m.partition()}/{m.offset()}" for m in drain_topic(bootstrap, topic, min_count=len(items))}
    assert len(wanted) == len(items)
    kills = 0
    try:
        for _ in range(3):
            before = len(collector.messages)
            proc = _start(path)
            try:
                wait_for(lambda b=before: len(collector.messages) >= b + 30, 30, "outputs before the kill")
            finally:
                proc.kill()  # SIGKILL: no drain, no commit
                proc.wait()
            kills += 1
            if len({headers_of(m)["bal_source"] for m in collector.messages}) >= len(wanted):
                break  # pragma: no cover - the machine was faster than the kills
        proc = _start(path)
        try:
            wait_for(lambda: {headers_of(m)["bal_source"] for m in collector.messages} >= wanted, 60,
                     "every input offset in the output")
        finally:
            code, took = _stop(proc)
    finally:
        collector.stopping.set()
        collector.join(5)
    assert kills >= 2
    assert code == 0 and took < 10
    seen = [headers_of(m)["bal_source"] for m in collector.messages]
    assert set(seen) == wanted  # every input offset, nothing else
    assert len(seen) >= len(wanted)  # at least once (duplicates allowed after a kill)
    inputs = drain_topic(bootstrap, topic, min_count=len(items))
    assert committed(bootstrap, cfg.kafka.group_id, topic, 4) == next_offsets(inputs)


@pytest.mark.timeout(90)
def test_two_workers_share_partitions_and_drain_on_sigterm(kafka_broker: EmbeddedBroker,
                                                           ztf_alerts: list[tuple[str, bytes]],
                                                           tmp_path: Path) -> None:
    """``--workers 2``: both processes join one group on a 4-partition topic and split it; together
    they produce exactly the outputs one worker would (output bytes are deterministic, so the
    expected set is computed locally); SIGTERM to the parent exits 0 within 10 s, all committed."""
    from broker_plugin.decode import decode_alert
    from broker_plugin.models.annotate import Annotator, load_model_stage

    bootstrap = kafka_broker.bootstrap
    topic = unique_name("w2")
    kafka_broker.create_topics([topic], partitions=4)
    cfg = make_config(bootstrap, topic, processing={"batch_size": 32})
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log_file:
        proc = _start(path, "--workers", "2", stderr=log_file)
        try:
            wait_for(lambda: sorted(len(v) for v in worker_assignments(log_path).values()) == [2, 2], 40,
                     "two workers holding two partitions each")
            items = [(_key(d), d) for _, d in ztf_alerts] * 2
            produce(bootstrap, topic, items)
            out = drain_topic(bootstrap, cfg.kafka.output_topic, min_count=len(items), timeout=40)
        finally:
            code, took = _stop(proc)
    assert code == 0 and took < 10, log_path.read_text()[-2000:]
    final = worker_assignments(log_path)
    assert set(final) <= {"0/2", "1/2"}
    encoder, annotator = OutputEncoder(), Annotator(load_model_stage(None))  # what the workers load
    expected = set()
    for _, data in ztf_alerts:
        alert = decode_alert(data)
        expected.add((alert.object_id.encode(), encoder.encode(data, alert, annotator.annotate_batch([alert])[0])))
    got = [(m.key(), m.value()) for m in out]
    assert len(got) == len(items)
    assert set(got) == expected
    inputs = drain_topic(bootstrap, topic, min_count=len(items))
    assert committed(bootstrap, cfg.kafka.group_id, topic, 4) == next_offsets(inputs)
    pids = {json.loads(line).get("pid") for line in log_path.read_text().splitlines()
            if line.startswith("{") and '"assign"' in line}
    assert len(pids) == 2


def test_a_dead_worker_is_restarted_and_the_others_keep_running(kafka_broker: EmbeddedBroker,
                                                                ztf_alerts: list[tuple[str, bytes]],
                                                                tmp_path: Path) -> None:
    """kill -9 one of two workers: the parent restarts it after a backoff, the other keeps its pid and
    keeps consuming, every alert produced afterwards is annotated, and SIGTERM still exits 0."""
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("w-restart")
    kafka_broker.create_topics([topic], partitions=4)
    cfg = make_config(bootstrap, topic, processing={"batch_size": 32})
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    log_path = tmp_path / "workers.log"

    def events(name: str) -> list[dict[str, Any]]:
        return log_events(log_path, name)

    with open(log_path, "wb") as log_file:
        proc = _start(path, "--workers", "2", stderr=log_file)
        try:
            wait_for(lambda: bool(events("workers")), 20, "the workers to start")
            first, second = events("workers")[0]["pids"]
            wait_for(lambda: len({e["pid"] for e in events("assign")}) == 2, 40, "both workers assigned")
            os.kill(first, signal.SIGKILL)
            wait_for(lambda: bool(events("worker_restarted")), 30, "the dead worker's restart")
            assert events("worker_died")[0]["status"] == 128 + signal.SIGKILL
            os.kill(second, 0)  # still the same process: it was never stopped
            items = [(_key(d), d) for _, d in ztf_alerts]
            produce(bootstrap, topic, items)
            out = drain_topic(bootstrap, cfg.kafka.output_topic, min_count=len(items), timeout=60)
        finally:
            code, _ = _stop(proc)
    assert code == 0, log_path.read_text()[-2000:]
    assert len({m.value() for m in out}) == len(items)
    assert events("worker_restarted")[0]["pid"] not in (first, second)


@pytest.mark.timeout(60)
def test_sigterm_during_start_up_exits_0_promptly(tmp_path: Path) -> None:
    """The history store is not up yet, so start-up waits for it (up to 60 s): SIGTERM ends it at once."""
    pytest.importorskip("psycopg")
    from broker_plugin.broker.embedded import find_free_port

    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  input_topics: [a]\nhistory:\n  backend: postgresql\n"
                    f"  url: postgresql://bal@127.0.0.1:{find_free_port()}/bal\n"
                    "observability:\n  metrics_port: 0\n  log_format: json\n")
    log_path = tmp_path / "start.log"
    with open(log_path, "wb") as log_file:
        proc = _start(path, stderr=log_file)
        try:
            wait_for(lambda: "not reachable yet" in log_path.read_text(), 30, "the start-up waiting for its store")
            code, took = _stop(proc, within=5.0)
        finally:  # never leave the worker behind when the test fails
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    assert code == 0 and took < 5.0, log_path.read_text()[-2000:]
    assert "stopped during start-up" in log_path.read_text()


@pytest.mark.timeout(90)
def test_stop_ends_within_10_s_with_outputs_never_acknowledged(ztf_alerts: list[tuple[str, bytes]]) -> None:
    """The broker dies while a batch is being annotated, so its outputs are never acknowledged: the
    drain's flush and the revocation's flush share one deadline (they took 6 s each before)."""
    from broker_plugin.models.annotate import Annotator
    from broker_plugin.stream.service import Service
    from tests.service_helpers import FakeStage, ServiceThread

    broker = EmbeddedBroker().start()
    entered = threading.Event()

    class SlowStage(FakeStage):
        def predict(self, features: Any, alerts: Any) -> Any:
            entered.set()
            time.sleep(2.0)  # the broker is stopped meanwhile
            return super().predict(features, alerts)

    try:
        topic = unique_name("unacked")
        broker.create_topics([topic], partitions=1)
        produce(broker.bootstrap, topic, [(_key(d), d) for _, d in ztf_alerts[:40]])
        cfg = make_config(broker.bootstrap, topic, processing={"batch_size": 40},
                          observability={"unacked_timeout_s": 60.0})
        service = Service(cfg, annotator=Annotator(SlowStage()))
        with ServiceThread(service) as st:
            wait_for(entered.is_set, 40, "the first batch")
            broker.stop()
            wait_for(lambda: service.stats.batches >= 1, 20, "the batch handed to the producer")
            assert service.stats.produced_out == 0  # nothing acknowledged: the broker is gone
            t0 = time.monotonic()
            st.stop(timeout=20.0)
            took = time.monotonic() - t0
    finally:
        broker.stop()
    assert took < 10.0, f"stop took {took:.1f} s"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("text", "needle"), [
    ("kafka:\n  input_topics: [a]\n  bootstrap_server: x\n", "unknown configuration key kafka.bootstrap_server"),
    ("kafka:\n  input_topics: [a]\nprocessing:\n  batch_size: lots\n", "processing.batch_size"),
    ("kafka:\n  input_topics: [a]\nmodels:\n  bundle: /nonexistent/bundle\n", "models.bundle"),
    ("kafka:\n  input_topics: [a]\nmodels:\n  bundle: {empty}\n", "bundle"),
    ("kafka:\n  input_topics: [a]\nprocessing:\n  time_from: yesterday\n", "processing.time_from"),
])
def test_bad_configuration_exits_2_with_one_line(tmp_path: Path, text: str, needle: str) -> None:
    empty = tmp_path / "empty_bundle"
    empty.mkdir()
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("{empty}", str(empty)))
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAL_BROKER__")}
    res = subprocess.run([sys.executable, "-m", "broker_plugin", "run", "--config", str(path)], cwd=REPO,
                         capture_output=True, text=True, timeout=30, env=env)
    assert res.returncode == 2, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("bal-broker: error:") and needle in lines[0]
