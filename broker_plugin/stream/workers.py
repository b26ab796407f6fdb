"""``bal-broker run --workers N``: N service processes in one consumer group, supervised by a parent.

Why processes, and why subprocesses of ``bal-broker run`` rather than multiprocessing: feature
extraction and inference are CPU-bound Python/numpy, so scale-out is by processes (DESIGN.md: more
processes or pods in the same group); each child is exactly the single-worker service an operator
would run by hand (same code path, same signals, its own librdkafka clients and ONNX sessions), and
a child that crashes cannot corrupt the others' state.

The parent:

* starts N children ``python -m broker_plugin run --config FILE`` with ``BAL_BROKER_WORKER=i/N``
  (used by the time-range mode to split partitions) and, when metrics are on, the metrics port
  ``metrics_port + i`` through the usual ``BAL_BROKER__OBSERVABILITY__METRICS_PORT`` override;
* forwards SIGTERM/SIGINT to every child (each drains and exits on its own);
* if a child exits with a non-zero status while the others run, stops the others (a half-staffed
  group would silently fall behind) and
* exits with the worst child status: the highest exit code, a child killed by signal S counting as
  128+S. Children still alive 15 s after being told to stop are killed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from broker_plugin.config import ENV_PREFIX, ServiceConfig

log = logging.getLogger(__name__)

#: Seconds between being told to stop and killing children that have not exited.
KILL_AFTER_S = 15.0
#: Environment variable through which ``--workers`` tells a child its index and the worker count.
WORKER_ENV = "BAL_BROKER_WORKER"


def worker_from_env(environ: dict[str, str] | None = None) -> tuple[int, int]:
    """``(index, count)`` from ``BAL_BROKER_WORKER=i/N`` (set by ``--workers``), else ``(0, 1)``."""
    raw = (os.environ if environ is None else environ).get(WORKER_ENV, "")
    m = re.fullmatch(r"(\d+)/(\d+)", raw.strip())
    if not m or not 0 <= int(m.group(1)) < int(m.group(2)):
        return (0, 1)
    return (int(m.group(1)), int(m.group(2)))


def child_command(config_path: str | os.PathLike[str] | None) -> list[str]:
    """The command line of one worker."""
    cmd = [sys.executable, "-m", "broker_plugin", "run"]
    if config_path is not None:
        cmd += ["--config", str(Path(config_path).resolve())]
    return cmd


def child_env(index: int, count: int, cfg: ServiceConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """Environment of worker ``index``: its identity and, if metrics are on, its own metrics port."""
    env = dict(os.environ if base is None else base)
    env[WORKER_ENV] = f"{index}/{count}"
    port = cfg.observability.metrics_port
    if port:
        env[f"{ENV_PREFIX}OBSERVABILITY__METRICS_PORT"] = str(port + index)
    return env


def exit_status(returncode: int) -> int:
    """A child's status as a shell would report it (killed by signal S -> 128+S)."""
    return 128 - returncode if returncode < 0 else returncode


def run_workers(config_path: str | os.PathLike[str] | None, count: int, cfg: ServiceConfig) -> int:
    """Run ``count`` workers until they all exit; returns the worst status (see module docstring)."""
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False
    stop_time = 0.0

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping, stop_time
        if not stopping:
            stopping = True
            stop_time = time.monotonic()
            log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(procs))
        for p in procs:
            if p.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    p.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(count):
            procs.append(subprocess.Popen(child_command(config_path), env=child_env(i, count, cfg)))
        log.info("started %d workers (pids %s)", count, ", ".join(str(p.pid) for p in procs),
                 extra={"event": "workers", "pids": [p.pid for p in procs]})
        while True:
            codes = [p.poll() for p in procs]
            if all(c is not None for c in codes):
                break
            failed = [c for c in codes if c not in (None, 0)]
            if failed and not stopping:
                log.error("a worker exited with status %d; stopping the others", exit_status(failed[0]))
                forward(signal.SIGTERM, None)
            if stopping and time.monotonic() - stop_time > KILL_AFTER_S:
                for p in procs:
                    if p.poll() is None:
                        log.warning("worker %d ignored SIGTERM for %.0f s; killing it", p.pid, KILL_AFTER_S)
                        p.kill()
            time.sleep(0.1)
    finally:
        for p in procs:  # never leave orphans, whatever happened above
            if p.poll() is None:
                p.kill()
                p.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    statuses = [exit_status(p.returncode) for p in procs]
    log.info("workers exited with %s", statuses, extra={"event": "workers_done", "statuses": statuses})
    return max(statuses)
