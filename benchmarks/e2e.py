"""End-to-end runs of the streaming service through the embedded broker (Tansu).

Layout on the machine (documented in the report): the service worker process pins itself to one
core (``cpus[0]``); the broker (all its threads) and this process (the load generator and the
output reader) are pinned to the other core(s). That way the worker's figures are per core, and
the broker's own cost shows up as the other core's load rather than as the plugin's.

Runs (each with a fresh broker, so memory from a previous run never weighs on the next):

``burst``
    ``n`` alerts pre-loaded into a 4-partition topic, then one worker started. The clock starts when
    the consumer group assigns the partitions (the group join, about half of session.timeout.ms on
    Tansu, ~3 s at 6000 ms, is excluded and reported separately) and stops at the acknowledgement of
    the last output (delivery report). Sustained alerts/s = n / that time. CPU seconds of the worker
    over the same interval give alerts per CPU-second, which a busy shared machine disturbs less.
``latency``
    One worker, assigned and idle; then alerts are produced at a fixed offered rate (paced on the
    monotonic clock) while this process reads the output topic. Latency of an alert = the time its
    annotated output was *received* by the reader minus the time its input was handed to the
    producer (both on this process's clock), matched through the output's ``bal_source`` header
    (input topic/partition/offset) and the input's delivery report. The first second is warm-up.
``scaling``
    ``k`` workers in one consumer group on a pre-loaded topic, worker i pinned to core i, the broker
    sharing the last core. Throughput is measured on the window where every worker holds its final
    assignment and none has run dry, from the (time, acknowledged) samples each worker records.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .corpus import Packet

REPO_ROOT = Path(__file__).resolve().parent.parent
PARTITIONS = 4
#: The cores this process could use when it started (later pinning narrows sched_getaffinity).
INITIAL_CPUS: list[int] = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else [0]
#: session.timeout.ms for the workers: Tansu's join takes about half of it (kafka_config.py).
SESSION_TIMEOUT_MS = 6000


# ---------------------------------------------------------------------------------------- helpers


def set_affinity_all(pid: int, cpus: Sequence[int]) -> None:
    """Pin every thread of process ``pid`` (``taskset -a -p``): sched_setaffinity(pid) alone only
    moves the main thread, and Tansu's runtime threads already exist when it is ready."""
    if not cpus or not hasattr(os, "sched_setaffinity"):
        return
    task_dir = Path(f"/proc/{pid}/task")
    tids = [int(t.name) for t in task_dir.iterdir()] if task_dir.is_dir() else [pid]
    for tid in tids:
        with contextlib.suppress(OSError):  # a thread that just exited
            os.sched_setaffinity(tid, set(cpus))


def core_plan() -> tuple[list[int], list[int]]:
    """(worker cores, other cores): the first usable core for the worker, the rest for the broker and
    the load generator. With one usable core nothing can be separated: both lists are that core."""
    cpus = INITIAL_CPUS
    if len(cpus) < 2:
        return cpus, cpus
    return cpus[:1], cpus[1:]


def _proc_cpu_s(pid: int) -> float | None:
    try:
        import psutil

        t = psutil.Process(pid).cpu_times()
        return float(t.user + t.system)
    except Exception:  # psutil missing or the process gone
        return None


def _topics(broker: Any, names: Sequence[str]) -> None:
    broker.create_topics(list(names), partitions=PARTITIONS)


def _producer(bootstrap: str) -> Any:
    from confluent_kafka import Producer

    from broker_plugin.stream.kafka_config import producer_config

    return Producer(producer_config({}, bootstrap=bootstrap))


def preload(bootstrap: str, topic: str, packets: Sequence[Packet]) -> float:
    """Produce every packet (keyed by object id, as ``bal-broker publish`` does); seconds taken."""
    producer = _producer(bootstrap)
    failures = 0

    def on_delivery(err: Any, _msg: Any) -> None:
        nonlocal failures
        failures += err is not None

    t0 = time.monotonic()
    for p in packets:
        while True:
            try:
                producer.produce(topic, value=p.data, key=p.key, on_delivery=on_delivery)
                break
            except BufferError:
                producer.poll(0.05)
        producer.poll(0)
    left = producer.flush(120)
    if left or failures:
        raise RuntimeError(f"pre-loading {topic}: {left} undelivered, {failures} failed")
    return time.monotonic() - t0


def worker_config(bootstrap: str, in_topic: str, tag: str, *, models: str | None = None,
                  processing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Service configuration (``load_config`` overrides) for a benchmark worker: shipped defaults except
    unique topic/group names, no metrics endpoint, WARNING logs."""
    cfg: dict[str, Any] = {
        "kafka": {"bootstrap_servers": bootstrap, "input_topics": [in_topic], "group_id": f"bench-{tag}",
                  "output_topic": f"{in_topic}-out", "candidate_topic": f"{in_topic}-cand",
                  "dlq_topic": f"{in_topic}-dlq", "session_timeout_ms": SESSION_TIMEOUT_MS},
        "processing": dict(processing or {}),
        "observability": {"metrics_port": 0, "log_level": "WARNING", "log_format": "text"},
    }
    if models:
        cfg["models"] = {"bundle": models}
    return cfg


class Worker:
    """A spawned :mod:`benchmarks.worker` process."""

    def __init__(self, workdir: Path, name: str, config: dict[str, Any], cpus: Sequence[int], expect: int) -> None:
        self.result_path = workdir / f"{name}.result.json"
        self.progress_path = workdir / f"{name}.progress.json"
        self.log_path = workdir / f"{name}.log"
        spec = {"config": config, "cpus": list(cpus), "expect": expect, "result": str(self.result_path),
                "progress": str(self.progress_path)}
        spec_path = workdir / f"{name}.spec.json"
        spec_path.write_text(json.dumps(spec))
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in wait()
        env = dict(os.environ, PYTHONPATH=str(REPO_ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
        self.proc = subprocess.Popen([sys.executable, "-m", "benchmarks.worker", str(spec_path)], cwd=REPO_ROOT,
                                     stdout=self._log, stderr=subprocess.STDOUT, env=env)

    def progress(self) -> dict[str, Any]:
        try:
            return json.loads(self.progress_path.read_text())
        except (OSError, ValueError):
            return {}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def wait(self, timeout: float) -> dict[str, Any]:
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        finally:
            self._log.close()
        if not self.result_path.is_file():
            tail = self.log_path.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"benchmark worker exited with {self.proc.returncode} without a result:\n{tail}")
        return json.loads(self.result_path.read_text())


def _broker(other: Sequence[int]) -> Any:
    from broker_plugin.broker.embedded import EmbeddedBroker

    broker = EmbeddedBroker().start()
    set_affinity_all(broker.pid, other)
    return broker


# ------------------------------------------------------------------------------------------ burst


def run_burst(packets: Sequence[Packet], *, models: str | None = None, timeout: float = 300.0) -> dict[str, Any]:
    """Pre-load ``packets``, start one pinned worker, time from assignment to the last acknowledgement."""
    mine, other = core_plan()
    os.sched_setaffinity(0, set(other))
    n = len(packets)
    with tempfile.TemporaryDirectory(prefix="bal-bench-") as tmp:
        broker = _broker(other)
        try:
            topic = f"burst-{uuid.uuid4().hex[:8]}"
            _topics(broker, [topic, f"{topic}-out", f"{topic}-cand", f"{topic}-dlq"])
            load_s = preload(broker.bootstrap, topic, packets)
            b0 = _proc_cpu_s(broker.pid)
            w = Worker(Path(tmp), "w0", worker_config(broker.bootstrap, topic, topic, models=models), mine, n)
            r = w.wait(timeout)
            b1 = _proc_cpu_s(broker.pid)
        finally:
            broker.stop()
    if r.get("t_done") is None or r.get("t_assign") is None:
        raise RuntimeError(f"burst did not complete: consumed {r.get('consumed')}, acked "
                           f"{r.get('produced_out', 0) + r.get('produced_dlq', 0)} of {n}")
    clear_s = r["t_done"] - r["t_assign"]
    cpu_s = (r["cpu_s_at_done"] or 0.0) - (r["cpu_s_at_assign"] or 0.0)
    return {
        "alerts": n,
        "preload_s": round(load_s, 3),
        "worker_cpus": r["cpus"],
        "broker_cpus": list(other),
        "clear_s_from_assignment": round(clear_s, 3),
        "clear_s_from_process_start": round(r["t_done"] - r["t_process_start"], 3),
        "startup_s": round(r["t_ready"] - r["t_process_start"], 3),
        "group_join_s": round(r["t_assign"] - r["t_ready"], 3),
        "first_message_after_assign_s": round((r["t_first_message"] or r["t_assign"]) - r["t_assign"], 3),
        "alerts_per_s": round(n / clear_s, 1),
        "worker_cpu_s": round(cpu_s, 3),
        "worker_cpu_ms_per_alert": round(cpu_s / n * 1e3, 4),
        "alerts_per_cpu_s": round(n / cpu_s, 1) if cpu_s > 0 else None,
        "worker_cpu_utilisation": round(cpu_s / clear_s, 3),
        "broker_cpu_ms_per_alert": round((b1 - b0) / n * 1e3, 4) if b0 is not None and b1 is not None else None,
        "broker_cpu_utilisation": round((b1 - b0) / clear_s, 3) if b0 is not None and b1 is not None else None,
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "thread_cpu_ms_per_alert": {k: round(v / n * 1e3, 4) for k, v in (r.get("thread_cpu_s") or {}).items()},
        "annotated": r["annotated"],
        "rejected": r["rejected"],
        "candidates": r["produced_candidates"],
        "batches": r["batches"],
        "worker_stage_ms_per_alert": {k: round(v / n * 1e3, 4) for k, v in r["stage_seconds"].items()},
        "model_version": r["model_version"],
    }


# ---------------------------------------------------------------------------------------- latency


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolation percentile (numpy's default), without numpy's import cost in the hot loop."""
    s = sorted(values)
    if not s:
        return float("nan")
    k = (len(s) - 1) * q / 100.0
    lo = int(k)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def run_latency(packets: Sequence[Packet], rate: float, duration_s: float, *, models: str | None = None,
                warmup_s: float = 1.0, processing: dict[str, Any] | None = None) -> dict[str, Any]:
    """Offer ``rate`` alerts/s for ``duration_s`` to an assigned, idle worker; latency percentiles."""
    from confluent_kafka import Consumer, TopicPartition

    mine, other = core_plan()
    os.sched_setaffinity(0, set(other))
    n = min(len(packets), int(rate * duration_s))
    with tempfile.TemporaryDirectory(prefix="bal-bench-") as tmp:
        broker = _broker(other)
        try:
            topic = f"lat-{uuid.uuid4().hex[:8]}"
            out_topic = f"{topic}-out"
            _topics(broker, [topic, out_topic, f"{topic}-cand", f"{topic}-dlq"])
            w = Worker(Path(tmp), "w0", worker_config(broker.bootstrap, topic, topic, models=models,
                                                      processing=processing), mine, 0)
            deadline = time.monotonic() + 120
            while not w.progress().get("assigned"):
                if w.proc.poll() is not None or time.monotonic() > deadline:
                    w.stop()
                    w.wait(30)
                    raise RuntimeError("latency worker never got its partitions")
                time.sleep(0.05)

            reader = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": f"reader-{topic}",
                               "enable.auto.commit": False, "fetch.wait.max.ms": 10,
                               "logger": _quiet_logger()})
            reader.assign([TopicPartition(out_topic, p, 0) for p in range(PARTITIONS)])
            received: dict[tuple[int, int], float] = {}
            stop_reading = threading.Event()

            def read() -> None:
                while not stop_reading.is_set():
                    for m in reader.consume(500, 0.02):
                        if m.error() is not None:
                            continue
                        now = time.time()
                        src = dict(m.headers() or []).get("bal_source")
                        if src:
                            _t, part, off = src.decode().rsplit("/", 2)
                            received.setdefault((int(part), int(off)), now)

            reader_thread = threading.Thread(target=read, daemon=True)
            reader_thread.start()

            sent: dict[tuple[int, int], float] = {}
            producer = _producer(broker.bootstrap)

            def on_delivery_for(t_send: float) -> Any:
                def cb(err: Any, msg: Any) -> None:
                    if err is None:
                        sent[(msg.partition(), msg.offset())] = t_send
                return cb

            t0 = time.monotonic()
            t0_epoch = time.time()
            for i in range(n):
                target = t0 + i / rate
                delay = target - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                p = packets[i]
                producer.produce(topic, value=p.data, key=p.key, on_delivery=on_delivery_for(time.time()))
                producer.poll(0)
            producer.flush(30)
            offered_s = time.monotonic() - t0
            drain_deadline = time.monotonic() + 30
            while len(received) < n and time.monotonic() < drain_deadline:
                time.sleep(0.05)
            stop_reading.set()
            reader_thread.join(5)
            reader.close()
            w.stop()
            r = w.wait(60)
        finally:
            broker.stop()
    lat = [received[k] - t for k, t in sent.items() if k in received and t - t0_epoch >= warmup_s]
    lat_ms = [x * 1e3 for x in lat]
    return {
        "offered_rate": rate,
        "offered_alerts": n,
        "achieved_offer_rate": round(n / offered_s, 1),
        "received": len(received),
        "measured_alerts": len(lat_ms),
        "warmup_s": warmup_s,
        "p50_ms": round(_percentile(lat_ms, 50), 1),
        "p90_ms": round(_percentile(lat_ms, 90), 1),
        "p99_ms": round(_percentile(lat_ms, 99), 1),
        "max_ms": round(max(lat_ms), 1) if lat_ms else None,
        "mean_ms": round(statistics.fmean(lat_ms), 1) if lat_ms else None,
        "batches": r["batches"],
        "mean_batch": round(r["consumed"] / r["batches"], 1) if r["batches"] else None,
        "peak_rss_mb": round(r["peak_rss_mb"], 1),
        "processing": dict(processing or {}),
    }


def _quiet_logger() -> Any:
    import logging

    return logging.getLogger("benchmarks.librdkafka")


# ---------------------------------------------------------------------------------------- scaling


def _window_rate(results: Sequence[dict[str, Any]]) -> tuple[float, float, int]:
    """(alerts/s, window seconds, alerts acknowledged in the window) over the interval where every
    worker holds its final assignment and none has finished: [max(t_assign), min(last progress)]."""
    start = max(r["t_assign"] for r in results)
    ends = []
    for r in results:
        samples = r["samples"]
        final = samples[-1][2] if samples else 0
        last_change = next((s[0] for s in samples if s[2] >= final), start)
        ends.append(last_change)
    end = min(ends)
    total = 0
    for r in results:
        acked_at = [(s[0], s[2]) for s in r["samples"]]
        total += _acked_at(acked_at, end) - _acked_at(acked_at, start)
    span = end - start
    return (total / span if span > 0 else float("nan")), span, total


def _acked_at(samples: Sequence[tuple[float, int]], t: float) -> float:
    """Acknowledged count at time ``t``, linearly interpolated between samples."""
    prev_t, prev_a = None, 0
    for st, a in samples:
        if st >= t:
            if prev_t is None or st == prev_t:
                return float(a) if prev_t is not None else 0.0
            return prev_a + (a - prev_a) * (t - prev_t) / (st - prev_t)
        prev_t, prev_a = st, a
    return float(prev_a)


def run_scaling(packets: Sequence[Packet], workers: int, *, models: str | None = None,
                timeout: float = 300.0) -> dict[str, Any]:
    """``workers`` pinned workers in one group on a pre-loaded topic; throughput on the common window."""
    cpus = INITIAL_CPUS
    broker_cpus = cpus[-1:]
    os.sched_setaffinity(0, set(broker_cpus))
    n = len(packets)
    with tempfile.TemporaryDirectory(prefix="bal-bench-") as tmp:
        broker = _broker(broker_cpus)
        try:
            topic = f"scale-{uuid.uuid4().hex[:8]}"
            _topics(broker, [topic, f"{topic}-out", f"{topic}-cand", f"{topic}-dlq"])
            preload(broker.bootstrap, topic, packets)
            b0 = _proc_cpu_s(broker.pid)
            cfg = worker_config(broker.bootstrap, topic, topic, models=models)
            ws = [Worker(Path(tmp), f"w{i}", cfg, [cpus[i % len(cpus)]], 0) for i in range(workers)]
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline:
                if sum(int(w.progress().get("acked", 0)) for w in ws) >= n:
                    break
                if any(w.proc.poll() is not None for w in ws):
                    break
                time.sleep(0.1)
            for w in ws:
                w.stop()
            results = [w.wait(60) for w in ws]
            b1 = _proc_cpu_s(broker.pid)
        finally:
            broker.stop()
    acked = sum(r["produced_out"] + r["produced_dlq"] for r in results)
    if acked < n or any(r.get("t_assign") is None for r in results):
        raise RuntimeError(f"scaling run incomplete: {acked} of {n} acknowledged")
    rate, span, in_window = _window_rate(results)
    start = max(r["t_assign"] for r in results)
    util = []
    for r in results:  # CPU seconds / wall seconds of each worker over the common window
        inside = [smp for smp in r["samples"] if start <= smp[0] <= start + span]
        util.append(round((inside[-1][3] - inside[0][3]) / (inside[-1][0] - inside[0][0]), 3)
                    if len(inside) > 1 and inside[-1][0] > inside[0][0] else None)
    return {
        "workers": workers,
        "alerts": n,
        "worker_cpus": [r["cpus"] for r in results],
        "broker_cpus": broker_cpus,
        "alerts_per_s": round(rate, 1),
        "window_s": round(span, 3),
        "alerts_in_window": round(in_window),
        "per_worker_alerts": [r["consumed"] for r in results],
        "per_worker_cpu_utilisation": util,
        "per_worker_alerts_per_cpu_s": [round(r["consumed"] / r["cpu_s_run"], 1) if r["cpu_s_run"] else None
                                        for r in results],
        "peak_rss_mb": [round(r["peak_rss_mb"], 1) for r in results],
        "broker_cpu_ms_per_alert": round((b1 - b0) / n * 1e3, 4) if b0 is not None and b1 is not None else None,
        "broker_cpu_utilisation": round((b1 - b0) / span, 3) if b0 is not None and b1 is not None and span else None,
    }
