"""The streaming service with a history store, against the real embedded broker: a store outage puts
the batch back (WARNING, metric, no commit, nothing produced twice), and two workers of one group on
PostgreSQL leave the rows one worker leaves."""

from __future__ import annotations

import logging
import signal
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.broker.embedded import EmbeddedBroker
from broker_plugin.history import HistoryStage, open_store
from broker_plugin.models.annotate import Annotator
from broker_plugin.pipeline import process_batch
from broker_plugin.stream.service import Service
from tests.kafka_helpers import unique_name
from tests.service_helpers import (
    FakeStage,
    ServiceThread,
    committed,
    config_yaml,
    drain_topic,
    make_config,
    produce,
    wait_for,
    worker_assignments,
)

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(180)]


@pytest.fixture(scope="module")
def ztf(ztf_alert_files: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in ztf_alert_files]


def test_a_locked_store_puts_the_batch_back_until_it_is_free(kafka_broker: EmbeddedBroker, ztf: list[bytes],
                                                             tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    topic = unique_name("hist-in")
    kafka_broker.create_topics([topic], partitions=2)
    path = tmp_path / "history.sqlite"
    open_store(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")  # another writer holds the store
    produce(kafka_broker.bootstrap, topic, [(None, v) for v in ztf])
    cfg = make_config(kafka_broker.bootstrap, topic, processing={"batch_size": 32},
                      history={"backend": "sqlite", "path": str(path)})
    service = Service(cfg, annotator=Annotator(FakeStage()))
    service.history.store.conn.raw.execute("PRAGMA busy_timeout=50")  # fail fast while locked
    caplog.set_level(logging.WARNING)
    with ServiceThread(service) as st:
        wait_for(lambda: service._store_failures >= 3, 30, "three failed attempts")
        assert service.stats.produced_out == 0 and service.stats.consumed == 0
        assert committed(kafka_broker.bootstrap, cfg.kafka.group_id, topic, 2) == {}
        assert service.metrics.history_errors._value.get() >= 3
        holder.execute("ROLLBACK")
        holder.close()
        st.wait_outputs(len(ztf), timeout=90)
        wait_for(lambda: service.tracker.pending == 0, 10, "acknowledgements")
        assert st.stop() == 0
    assert any("history store unavailable" in r.getMessage() for r in caplog.records)
    assert any("available again" in r.getMessage() for r in caplog.records)
    out = drain_topic(kafka_broker.bootstrap, cfg.kafka.output_topic, min_count=len(ztf))
    assert len(out) == len(ztf)  # every alert once: nothing was produced for the batches put back
    assert sum(committed(kafka_broker.bootstrap, cfg.kafka.group_id, topic, 2).values()) == len(ztf)
    assert open_store(str(path)).stats()["points"] > 900


def _rows(store: Any) -> dict[str, list[tuple[Any, ...]]]:
    cur = store.conn.cursor()
    out = {}
    for t in ("objects", "aliases", "points", "limits", "aggregates"):
        cur.execute(f"SELECT * FROM {t}")
        out[t] = sorted(tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in cur.fetchall())
    store.conn.commit()
    return out


def test_two_workers_of_one_group_on_postgres_store_what_one_worker_stores(
        kafka_broker: EmbeddedBroker, ztf: list[bytes], postgres_url: str, postgres_server: Any,
        tmp_path: Path) -> None:
    """``bal-broker run --workers 2`` with the PostgreSQL backend: both processes take two of four
    partitions, and the store ends up with exactly the rows one worker (here: one replay) leaves."""
    from broker_plugin.decode import default_decoder

    alerts = default_decoder().decode_batch(ztf)
    ordered = [ztf[i] for _, i in sorted((a.mjd, i) for i, a in enumerate(alerts))]
    topic = unique_name("hist2-in")
    kafka_broker.create_topics([topic], partitions=4)
    cfg = make_config(kafka_broker.bootstrap, topic, processing={"batch_size": 8},
                      history={"backend": "postgresql", "url": postgres_url})
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    log_path = tmp_path / "workers.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen([sys.executable, "-m", "broker_plugin", "run", "--config", str(path), "--workers",
                                 "2"], stdout=subprocess.DEVNULL, stderr=log_file)
        try:
            wait_for(lambda: sorted(len(v) for v in worker_assignments(log_path).values()) == [2, 2], 60,
                     "two workers holding two partitions each")
            produce(kafka_broker.bootstrap, topic, [(f"k{i % 7}".encode(), v) for i, v in enumerate(ordered)])
            drain_topic(kafka_broker.bootstrap, cfg.kafka.output_topic, min_count=len(ztf), timeout=60)
        finally:
            proc.send_signal(signal.SIGTERM)
            code = proc.wait(30)
    assert code == 0, log_path.read_text()[-2000:]
    one = postgres_server.create_database(unique_name("one").replace("-", "_").lower())
    single = open_store(one)
    stage = HistoryStage(single)
    for k in range(0, len(ordered), 8):
        process_batch(Annotator(None), ordered[k:k + 8], history=stage)
    assert _rows(open_store(postgres_url)) == _rows(single)
