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
* restarts a child that dies (a non-zero status, or killed by a signal) while the parent is not
  stopping, after a backoff that starts at :data:`RESTART_BACKOFF_S` and doubles per quick failure
  of that child up to :data:`MAX_BACKOFF_S` (reset once it has run :data:`STABLE_AFTER_S`); the
  other children keep running, so one poison pill costs one worker a restart, not the whole group.
  A child that exits 0 (a finished time range) is not restarted;
* exits, once every child has exited, with the worst status of the children's last runs: the
  highest exit code, a child killed by signal S counting as 128+S. Children still alive 15 s after
  being told to stop are killed.
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
#: First wait before restarting a dead child, its doubling cap, and how long a child must run before
#: its next failure starts the backoff over (seconds).
RESTART_BACKOFF_S = 1.0
MAX_BACKOFF_S = 60.0
STABLE_AFTER_S = 60.0
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


class _Child:
    """One worker slot: its process, when it started, and its restart backoff."""

    def __init__(self, index: int, count: int, config_path: Any, cfg: ServiceConfig) -> None:
        self.index, self.count, self.config_path, self.cfg = index, count, config_path, cfg
        self.backoff = RESTART_BACKOFF_S
        self.restart_at: float | None = None
        self.proc = self._spawn()

    def _spawn(self) -> subprocess.Popen[bytes]:
        self.started = time.monotonic()
        return subprocess.Popen(child_command(self.config_path), env=child_env(self.index, self.count, self.cfg))

    def supervise(self, now: float) -> None:
        """Schedule a restart of a dead child, or restart it when its backoff has passed."""
        code = self.proc.poll()
        if code in (None, 0):
            return
        if self.restart_at is None:
            if now - self.started >= STABLE_AFTER_S:
                self.backoff = RESTART_BACKOFF_S
            self.restart_at = now + self.backoff
            log.error("worker %d (pid %d) exited with status %d; restarting it in %.0f s, the others keep running",
                      self.index, self.proc.pid, exit_status(code), self.backoff,
                      extra={"event": "worker_died", "worker": f"{self.index}/{self.count}",
                             "status": exit_status(code)})
            self.backoff = min(MAX_BACKOFF_S, self.backoff * 2)
        elif now >= self.restart_at:
            self.restart_at = None
            self.proc = self._spawn()
            log.info("worker %d restarted (pid %d)", self.index, self.proc.pid,
                     extra={"event": "worker_restarted", "worker": f"{self.index}/{self.count}", "pid": self.proc.pid})


def run_workers(config_path: str | os.PathLike[str] | None, count: int, cfg: ServiceConfig) -> int:
    """Run ``count`` workers until they all exit; returns the worst status (see module docstring)."""
    children: list[_Child] = []
    stopping = False
    stop_time = 0.0

    def forward(signum: int, _frame: Any) -> None:
        nonlocal stopping, stop_time
        if not stopping:
            stopping = True
            stop_time = time.monotonic()
            log.info("received %s: stopping %d workers", signal.Signals(signum).name, len(children))
        for c in children:
            if c.proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    c.proc.send_signal(signal.SIGTERM)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        for i in range(count):
            children.append(_Child(i, count, config_path, cfg))
        log.info("started %d workers (pids %s)", count, ", ".join(str(c.proc.pid) for c in children),
                 extra={"event": "workers", "pids": [c.proc.pid for c in children]})
        while True:
            now = time.monotonic()
            if not stopping:
                for c in children:
                    c.supervise(now)
            if all(c.proc.poll() is not None and (stopping or c.restart_at is None) for c in children):
                break
            if stopping and now - stop_time > KILL_AFTER_S:
                for c in children:
                    if c.proc.poll() is None:
                        log.warning("worker %d ignored SIGTERM for %.0f s; killing it", c.proc.pid, KILL_AFTER_S)
                        c.proc.kill()
            time.sleep(0.1)
    finally:
        for c in children:  # never leave orphans, whatever happened above
            if c.proc.poll() is None:
                c.proc.kill()
                c.proc.wait()
        for s, h in previous.items():
            signal.signal(s, h)
    statuses = [exit_status(c.proc.returncode) for c in children]
    log.info("workers exited with %s", statuses, extra={"event": "workers_done", "statuses": statuses})
    return max(statuses)
