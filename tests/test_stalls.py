"""Silent stalls against the real embedded broker (broker_plugin/stream/stall.py).

A blocked processing loop turns ``/healthz`` to 503; a subscription that matches nothing is
reported (WARNING, ``bal_stalled{reason="no_assignment"}``, ``bal_subscription_unmatched``) while the
service keeps running; outputs the broker never acknowledges and a replaced broker (new cluster id)
end the service with status 1. Every limit is configured small, so each test takes seconds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_plugin.broker.embedded import EmbeddedBroker, find_free_port
from broker_plugin.models.annotate import Annotator
from broker_plugin.models.predictions import Predictions
from broker_plugin.stream.service import Service
from tests.kafka_helpers import unique_name
from tests.service_helpers import FakeStage, ServiceThread, make_config, produce, wait_for

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(90)]

SERVICE_LOG = "broker_plugin.stream.service"


def _alerts(shared_data: Path, n: int = 4) -> list[tuple[bytes | None, bytes]]:
    paths = sorted((shared_data / "ztf" / "alerts").glob("*.avro"))[:n]
    assert paths, "no ZTF alerts in the shared data"
    return [(p.stem.encode(), p.read_bytes()) for p in paths]


def _healthz(port: int) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


class HookStage(FakeStage):
    """FakeStage that runs ``hook()`` (once) inside ``predict``: a slow model, a broker that dies."""

    def __init__(self, hook: Any) -> None:
        self.hook = hook
        self.calls = 0

    def predict(self, features: np.ndarray, alerts: Sequence[Any]) -> Predictions:
        self.calls += 1
        if self.calls == 1:
            self.hook()
        return super().predict(features, alerts)


def test_healthz_reports_a_blocked_loop(kafka_broker: EmbeddedBroker, shared_data: Path) -> None:
    topic = unique_name("in")
    kafka_broker.create_topics([topic], partitions=1)
    release = threading.Event()
    port = find_free_port()
    cfg = make_config(kafka_broker.bootstrap, topic, observability={"metrics_port": port})
    service = Service(cfg, annotator=Annotator(HookStage(lambda: release.wait(20))))
    service.stalls.heartbeat_limit_s = 1.5  # the shipped floor is 60 s
    with ServiceThread(service) as st:
        wait_for(lambda: service.metrics_port is not None, 15, "the metrics endpoint")
        status, body = _healthz(port)
        assert status == 200 and body["status"] == "ok" and body["heartbeat_age_s"] < 1.5, body
        assert body["stalled"] == []
        produce(kafka_broker.bootstrap, topic, _alerts(shared_data, 2))
        wait_for(lambda: _healthz(port)[0] == 503, 20, "/healthz 503 while predict blocks the loop", step=0.2)
        status, body = _healthz(port)
        assert status == 503 and body["status"] == "stalled" and "heartbeat" in body["stalled"], body
        assert body["heartbeat_age_s"] >= 1.5
        release.set()
        st.wait_outputs(2, timeout=20)
        wait_for(lambda: _healthz(port)[0] == 200, 10, "/healthz 200 once the loop turns again", step=0.1)
        assert st.stop() == 0


def test_pattern_matching_nothing_is_reported(kafka_broker: EmbeddedBroker, caplog: pytest.LogCaptureFixture) -> None:
    pattern = "^" + unique_name("nothing") + "-.*"
    port = find_free_port()
    cfg = make_config(kafka_broker.bootstrap, "unused",
                      kafka={"input_topics": [], "input_pattern": pattern, "metadata_refresh_ms": 1000},
                      observability={"metrics_port": port, "no_assignment_timeout_s": 1.0})
    service = Service(cfg, annotator=Annotator(FakeStage()))
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger=SERVICE_LOG), ServiceThread(service) as st:
        def reported() -> bool:
            text = service.metrics.text()
            msgs = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
            return ('bal_stalled{reason="no_assignment"} 1.0' in text and "bal_subscription_unmatched 1.0" in text
                    and any("no partition assigned" in m for m in msgs)
                    and any("subscription matches no topic" in m and pattern in m for m in msgs))

        wait_for(reported, 15, "the no-assignment and unmatched-subscription reports", step=0.1)
        assert time.monotonic() - t0 < 15
        status, body = _healthz(port)
        assert status == 200, body  # not fatal: the service keeps running
        assert {"no_assignment", "subscription_unmatched"} <= set(body["stalled"])
        assert st.thread.is_alive()
        assert st.stop() == 0


def test_unacknowledged_outputs_stop_with_status_1(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = EmbeddedBroker().start()
    try:
        topic = unique_name("in")
        broker.create_topics([topic], partitions=1)
        produce(broker.bootstrap, topic, _alerts(shared_data, 4))
        # the broker dies while the first batch is in the model: its outputs are never acknowledged
        cfg = make_config(broker.bootstrap, topic, processing={"batch_size": 8},
                          observability={"unacked_timeout_s": 2.0})
        service = Service(cfg, annotator=Annotator(HookStage(broker.stop)))
        t0 = time.monotonic()
        with caplog.at_level(logging.WARNING, logger=SERVICE_LOG), ServiceThread(service) as st:
            # the timeout, then the drain (6 s flush) and the close, with a margin for the group join
            code = st.join(2.0 + 25)
        assert code == 1
        assert time.monotonic() - t0 < 27
        assert 'bal_stalled{reason="unacknowledged"} 1.0' in service.metrics.text()
        assert any(r.levelno == logging.WARNING and "acknowledgement" in r.getMessage() for r in caplog.records)
        assert "acknowledgement" in (service.stop_reason or "")
    finally:
        broker.stop()


def test_replaced_broker_stops_with_status_1(shared_data: Path, caplog: pytest.LogCaptureFixture) -> None:
    broker = EmbeddedBroker().start()
    replacement: EmbeddedBroker | None = None
    try:
        topic = unique_name("in")
        broker.create_topics([topic], partitions=1)
        produce(broker.bootstrap, topic, _alerts(shared_data, 2))
        cfg = make_config(broker.bootstrap, topic, kafka={"metadata_refresh_ms": 1000},
                          observability={"unacked_timeout_s": 120.0})
        service = Service(cfg, annotator=Annotator(FakeStage()))
        with caplog.at_level(logging.WARNING, logger=SERVICE_LOG), ServiceThread(service) as st:
            st.wait_outputs(2, timeout=20)  # the first loop turn read the cluster id already
            port = broker.port
            broker.stop()
            replacement = EmbeddedBroker(port=port).start()
            assert replacement.cluster_id != broker.cluster_id
            replacement.create_topics([topic], partitions=1)
            code = st.join(30)
        assert code == 1
        assert 'bal_stalled{reason="cluster_changed"} 1.0' in service.metrics.text()
        assert any(r.levelno == logging.WARNING and "cluster id changed" in r.getMessage() for r in caplog.records)
        assert replacement.cluster_id in (service.stop_reason or "")
    finally:
        broker.stop()
        if replacement is not None:
            replacement.stop()
