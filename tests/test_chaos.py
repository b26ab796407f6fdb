"""Chaos, bounded: hostile messages mixed into real alerts, the worker killed mid-stream three times.

Real broker (the embedded Tansu on loopback), real bytes, the real ``bal-broker run`` in a subprocess.
The stream holds oversized random messages (over ``kafka.input_max_bytes``), ZTF containers whose
writer schema is recursive, and alerts whose three stamps are cutout bombs, shuffled into the real
ZTF alerts. Each run is killed with SIGKILL after it has made progress; a last run drains the rest
and is stopped with SIGTERM. At the end every input offset is in the annotated output or in the
dead-letter topic, no run ended on its own (no crash loop), and the worker's peak RSS stayed under
the 500 MB the README documents.
"""

from __future__ import annotations

import os
import random
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.broker.embedded import EmbeddedBroker
from tests.kafka_helpers import unique_name
from tests.service_helpers import config_yaml, drain_topic, headers_of, make_config, produce, wait_for
from tests.test_cutout_bombs import _bomb, _rewrite
from tests.test_hostile_schemas import _recursive_real_alert
from tests.test_service_process import _Collector, _start, _stop

pytest_plugins = ["tests.kafka_fixtures"]
pytestmark = [pytest.mark.kafka, pytest.mark.timeout(240)]

#: The peak RSS the README documents for one worker (benchmarks: Peak RSS of one worker <= 500 MB).
RSS_LIMIT_MB = 500.0


def _peak_rss_mb(pid: int) -> float:
    """VmHWM of a live process: its own peak resident set, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024.0
    return 0.0


def _bal(msg: Any) -> dict[str, Any]:
    import io

    import fastavro

    (rec,) = list(fastavro.reader(io.BytesIO(msg.value())))
    return rec["bal"]


def _stream(ztf_alert_files: list[Path], ztf_alert_dir: Path) -> list[tuple[str, bytes]]:
    rng = random.Random(20261202)
    real = [p.read_bytes() for p in ztf_alert_files]
    bomb = _bomb()
    hostile = [os.urandom(1_200_000) for _ in range(6)]  # over input_max_bytes: stubs, never decoded
    hostile += [_recursive_real_alert(ztf_alert_dir)] * 6  # bad_schema, never handed to a reader
    hostile += [_rewrite(p, bomb) for p in ztf_alert_files[:6]]  # annotated without cutouts
    items = [(f"real-{i}", d) for i, d in enumerate(real)] + [(f"hostile-{i}", d) for i, d in enumerate(hostile)]
    rng.shuffle(items)
    return items


def test_hostile_stream_with_kills_loses_nothing_and_stays_bounded(
        kafka_broker: EmbeddedBroker, ztf_alert_files: list[Path], ztf_alert_dir: Path, tmp_path: Path) -> None:
    bootstrap = kafka_broker.bootstrap
    topic = unique_name("chaos")
    kafka_broker.create_topics([topic], partitions=4)
    items = _stream(ztf_alert_files, ztf_alert_dir)
    produce(bootstrap, topic, [(name.encode(), data) for name, data in items],
            settings={"message.max.bytes": 4_000_000})
    cfg = make_config(bootstrap, topic, processing={"batch_size": 8},
                      kafka={"input_max_bytes": 1_048_576, "dlq_max_bytes": 524_288})
    kafka_broker.create_topics([cfg.kafka.output_topic, cfg.kafka.dlq_topic], partitions=4)
    path = tmp_path / "config.yaml"
    path.write_text(config_yaml(cfg))
    wanted = {f"{topic}/{m.partition()}/{m.offset()}" for m in drain_topic(bootstrap, topic, min_count=len(items))}
    out, dlq = _Collector(bootstrap, cfg.kafka.output_topic, 4), _Collector(bootstrap, cfg.kafka.dlq_topic, 4)
    out.start()
    dlq.start()

    def handled() -> set[str]:
        got = {headers_of(m)["bal_source"] for m in out.messages}
        for m in dlq.messages:
            h = headers_of(m)
            got.add(f"{h['bal_source_topic']}/{h['bal_source_partition']}/{h['bal_source_offset']}")
        return got

    peaks: list[float] = []
    try:
        for _ in range(3):
            before = len(handled())
            proc = _start(path)
            try:
                wait_for(lambda b=before: len(handled()) >= min(b + 25, len(wanted)), 60, "progress before the kill")
                assert proc.poll() is None, "the worker ended on its own"
                peaks.append(_peak_rss_mb(proc.pid))
            finally:
                proc.send_signal(signal.SIGKILL)
                proc.wait()
        proc = _start(path)
        try:
            wait_for(lambda: handled() >= wanted, 90, "every input offset in the output or the DLQ")
            assert proc.poll() is None, "the last worker ended on its own"
            time.sleep(0.5)
            peaks.append(_peak_rss_mb(proc.pid))
        finally:
            code, took = _stop(proc)
    finally:
        out.stopping.set()
        dlq.stopping.set()
        out.join(10)
        dlq.join(10)
    assert code == 0 and took < 10.0
    assert handled() >= wanted
    reasons: dict[str, int] = {}
    for m in dlq.messages:
        r = headers_of(m)["bal_error_reason"]
        reasons[r] = reasons.get(r, 0) + 1
    assert reasons.get("message_too_large", 0) >= 6 and reasons.get("bad_schema", 0) >= 6, reasons
    bombed = {headers_of(m)["bal_source"] for m in out.messages if "cutouts_dropped_size" in _bal(m)["flags"]}
    assert len(bombed) >= 6  # every bomb annotated, without its cutouts
    assert max(peaks) < RSS_LIMIT_MB, f"peak RSS {max(peaks):.0f} MB"
