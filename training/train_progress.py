"""Stage reporting for ``bal-broker train``: a progress bar on a terminal, one log line per step otherwise.

Its own module so the step modules (:mod:`training.train_data` logs while reading real spectra) can
report without importing the orchestrator in :mod:`training.train`.
"""

from __future__ import annotations

import sys
import time
from typing import Any


class Progress:
    """Stage reporting: a tqdm bar on a terminal, one log line per stage otherwise (CI logs stay clean)."""

    def __init__(self, total: int, *, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.bar = None
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="train", unit="step", file=self.stream, dynamic_ncols=True,
                                leave=False)
            except ImportError:  # tqdm is a runtime dependency, but a bar is not worth failing for
                self.bar = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"bal-broker train: {message}", file=self.stream)
        else:
            print(f"bal-broker train: {message}", file=self.stream, flush=True)

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Step:
    def __init__(self, progress: Progress, name: str) -> None:
        self.p, self.name = progress, name
        self.note = ""

    def __enter__(self) -> _Step:
        self.t = time.perf_counter()
        if self.p.bar is not None:
            self.p.bar.set_description(f"train: {self.name}")
        return self

    def __exit__(self, *exc: Any) -> None:
        dt = time.perf_counter() - self.t
        self.p.timings[self.name] = self.p.timings.get(self.name, 0.0) + dt
        if exc[0] is not None:
            return
        self.p.done += 1
        if self.p.bar is not None:
            self.p.bar.update(1)
        self.p.log(f"[{self.p.done}/{self.p.total}] {self.name}: {self.note + ' ' if self.note else ''}"
                   f"({dt:.1f} s)")
