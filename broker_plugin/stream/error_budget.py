"""The error budget: how many dead-lettered messages within a window the service tolerates.

Why: a few bad alerts are the stream's fault and go to the DLQ; a flood of them means the stream (or
the service) is broken, and stopping says so louder than a growing dead-letter topic.
"""

from __future__ import annotations

import collections


class ErrorBudget:
    """More than ``max_errors`` failed messages within ``window_s`` seconds -> exhausted."""

    def __init__(self, max_errors: int, window_s: float) -> None:
        self.max_errors = max_errors
        self.window_s = window_s
        self._events: collections.deque[tuple[float, str]] = collections.deque()

    def add(self, now: float, reason: str) -> None:
        self._events.append((now, reason))

    def exhausted(self, now: float) -> bool:
        while self._events and now - self._events[0][0] > self.window_s:
            self._events.popleft()
        return len(self._events) > self.max_errors

    def reasons(self) -> collections.Counter[str]:
        return collections.Counter(r for _, r in self._events)

