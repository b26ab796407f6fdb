"""One pinned service process for the end-to-end benchmark: ``python -m benchmarks.worker SPEC.json``.

Why a separate process: the issue asks for the service on *one core* with the broker and the load
generator on the other, so the worker pins itself (``os.sched_setaffinity``) before importing
anything, so that every thread it starts (librdkafka's, onnxruntime's) inherits the one core.

It runs the real :class:`broker_plugin.stream.service.Service` (``Service(cfg).run(stop_event)``), the very
loop ``bal-broker run`` runs, in a thin subclass that only *observes*:

* ``_on_assign`` records when the consumer group gave it partitions (the group join, ~3 s on the
  embedded broker with session.timeout.ms 6000, is excluded from the burst figure by starting the
  clock there; the time from process start is reported too);
* ``post_produce`` samples (time, consumed, acknowledged outputs) after every batch, and once
  ``expect`` messages have been consumed it flushes the producer, so that the time of the *last
  acknowledgement* is observed within a millisecond instead of after the next ``consume`` timeout.
  That flush is the only behavioural change, and it happens after the last batch.

The result (times as epoch seconds, CPU seconds of the process, peak RSS from ``getrusage``) is
written as JSON to the path in the spec; progress goes to ``progress`` every ~0.2 s so the parent
can see a multi-worker run finish.

``BAL_BENCH_ENCODER_BATCH=N`` (what-if, not a product setting) runs the cutout encoder in chunks of N
alerts instead of inference.ENCODER_MAX_BATCH, to size the proposal in the benchmark report.
``BAL_BENCH_PROFILE=PATH`` runs the service loop under ``cProfile`` and writes the statistics to PATH
(for finding where the worker's time goes; the profiler's overhead makes that run's figures slower).
"""

from __future__ import annotations

import json
import os
import sys
import time
from typing import Any


def _pin(cpus: list[int] | None) -> None:
    if cpus and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, set(cpus))


def peak_rss_mb() -> float | None:
    """This process's own peak resident set (VmHWM), in MB.

    Not ``getrusage``: Linux carries ``ru_maxrss`` across ``execve`` from the forked parent, so a child of
    a benchmark holding a 3 GB corpus would report 3 GB whatever it does. VmHWM belongs to the process's
    own address space, which exec replaces.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def thread_cpu_s() -> dict[str, float]:
    """CPU seconds (user + system) of this process's threads, summed by thread name (Linux /proc).

    Splits the worker's CPU between the Python main thread (decode, features, models, the loop) and
    librdkafka's threads (``rdk:broker...``: fetching, compression, sockets), which the per-stage
    timers in the main thread cannot see. Empty where /proc is not there.
    """
    out: dict[str, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    try:
        tids = os.listdir("/proc/self/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/self/task/{tid}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        name = stat[stat.index("(") + 1 : stat.rindex(")")]
        fields = stat[stat.rindex(")") + 2 :].split()
        secs = (int(fields[11]) + int(fields[12])) / tick  # utime, stime (fields 14 and 15 of stat)
        key = "main" if tid == str(os.getpid()) else name.split(":")[0] if ":" in name else name
        out[key] = round(out.get(key, 0.0) + secs, 3)
    return out


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    with open(args[0]) as fh:
        spec: dict[str, Any] = json.load(fh)
    _pin(spec.get("cpus"))  # before the imports: threads inherit the affinity
    t_proc = time.time()

    import resource
    import signal
    import threading

    from broker_plugin.config import load_config
    from broker_plugin.stream.logs import setup_logging
    from broker_plugin.stream.service import Service

    what_if = os.environ.get("BAL_BENCH_ENCODER_BATCH")
    if what_if:  # a what-if for the report only: the cutout encoder's chunk size (inference.py's constant)
        import broker_plugin.models.inference as inference

        inference.ENCODER_MAX_BATCH = int(what_if)  # type: ignore[misc]
    cfg = load_config(overrides=spec["config"], environ={})
    setup_logging(cfg.observability.log_level, cfg.observability.log_format)
    expect = int(spec.get("expect") or 0)
    progress_path = spec.get("progress")

    class BenchService(Service):
        """The service, observed (see the module docstring)."""

        t_assign: float | None = None
        t_first: float | None = None
        t_done: float | None = None
        cpu_assign: float | None = None
        cpu_done: float | None = None
        threads_assign: dict[str, float] | None = None
        threads_done: dict[str, float] | None = None
        samples: list[tuple[float, int, int, float]]
        assignments: list[tuple[float, list[str]]]
        _last_write = 0.0

        def _on_assign(self, consumer: Any, partitions: list[Any]) -> None:
            self.t_assign = time.time()
            self.cpu_assign = time.process_time()
            self.threads_assign = thread_cpu_s()
            self.assigned = [f"{tp.topic}/{tp.partition}" for tp in partitions]
            self.assignments.append((self.t_assign, self.assigned))
            super()._on_assign(consumer, partitions)
            self._write_progress(force=True)

        def consume(self) -> list[Any]:
            msgs = super().consume()
            if msgs and self.t_first is None:
                self.t_first = time.time()
            return msgs

        def post_produce(self) -> None:
            super().post_produce()
            s = self.stats
            if expect and self.t_done is None and s.consumed >= expect:
                self.producer.flush(60.0)
                super().post_produce()
                if s.produced_out + s.produced_dlq >= expect:
                    self.t_done = time.time()
                    self.cpu_done = time.process_time()
                    self.threads_done = thread_cpu_s()
                    self.stop_event.set()
            self.samples.append((time.time(), s.consumed, s.produced_out + s.produced_dlq, time.process_time()))
            self._write_progress()

        def _write_progress(self, force: bool = False) -> None:
            now = time.monotonic()
            if progress_path and (force or now - self._last_write > 0.2):
                self._last_write = now
                s = self.stats
                tmp = progress_path + ".tmp"
                with open(tmp, "w") as fh:
                    json.dump({"assigned": getattr(self, "assigned", None), "t_assign": self.t_assign,
                               "consumed": s.consumed, "acked": s.produced_out + s.produced_dlq}, fh)
                os.replace(tmp, progress_path)

    t_init = time.time()
    service = BenchService(cfg)
    service.samples = []
    service.assignments = []
    t_ready = time.time()
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    cpu0 = time.process_time()
    profile_path = os.environ.get("BAL_BENCH_PROFILE")
    if profile_path:
        import cProfile

        profiler = cProfile.Profile()
        code = profiler.runcall(service.run, stop)
        profiler.dump_stats(profile_path)
    else:
        code = service.run(stop)
    cpu_end = time.process_time()
    # per-thread CPU between assignment and the last acknowledgement (the burst window), else the whole run
    t_a, t_d = service.threads_assign, service.threads_done
    threads = ({k: round(v - t_a.get(k, 0.0), 3) for k, v in t_d.items()} if t_a is not None and t_d is not None
               else thread_cpu_s())
    usage = resource.getrusage(resource.RUSAGE_SELF)
    s = service.stats
    result = {
        "exit_code": code,
        "pid": os.getpid(),
        "cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "t_process_start": t_proc,
        "t_init": t_init,
        "t_ready": t_ready,
        "t_assign": service.t_assign,
        "t_first_message": service.t_first,
        "t_done": service.t_done,
        "cpu_s_total": cpu_end,
        "cpu_s_run": cpu_end - cpu0,
        "cpu_s_at_assign": service.cpu_assign,
        "cpu_s_at_done": service.cpu_done,
        "peak_rss_mb": peak_rss_mb(),
        "thread_cpu_s": threads,
        "ru_maxrss_mb": usage.ru_maxrss / 1024.0,  # inherited across exec on Linux: for reference only
        "consumed": s.consumed,
        "annotated": s.annotated,
        "rejected": s.rejected,
        "produced_out": s.produced_out,
        "produced_candidates": s.produced_candidates,
        "produced_dlq": s.produced_dlq,
        "batches": s.batches,
        "samples": service.samples,
        "assignments": service.assignments,
        "stage_seconds": service.annotator.timings.as_dict(),
        "model_version": service.annotator.model_version,
    }
    with open(spec["result"], "w") as fh:
        json.dump(result, fh)
    return int(code)


if __name__ == "__main__":
    sys.exit(main())
