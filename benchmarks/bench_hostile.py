"""Peak RSS with a batch of hostile alerts: ``process_batch`` on cutout bombs vs on ordinary alerts.

Why: a ZTF alert's stamps are gzipped FITS, and gzip lets ~60 kB declare an image of 4000x4000
float32 zeros (61 MiB once inflated). Unbounded, one batch of 500 such alerts would try to inflate
~90 GB. The cutout path now refuses a stamp over ``processing.max_stamp_pixels`` before inflating
past it (flag ``cutouts_dropped_size``) and spends at most ``processing.batch_inflated_bytes`` per
batch (flag ``cutouts_dropped_budget``); this section shows what that leaves of the worker's memory.

How: two fresh processes (``python -m benchmarks.bench_hostile PACKETS OUT``), so that each peak is
the process's own (VmHWM, :func:`benchmarks.worker.peak_rss_mb`; ``ru_maxrss`` would carry the
parent's over ``exec``). Each loads the shipped bundle (``Annotator(load_model_stage(None))``), calls
``settle_heap`` as the service does, runs the same warm-up (``WARMUP_PASSES`` batches of the first
``WARMUP_ALERTS`` ordinary alerts), then one ``process_batch`` with the default ``ProcessingConfig``
on (a) the ordinary batch or (b) the same alerts with all three stamps replaced by the bomb, each
re-encoded with fastavro using the packet's own schema. The alerts are synthetic ZTF packets of the
benchmark corpus (never ``../shared/data``), so the section runs on any checkout.

The hostile batch's messages are larger (three ~60 kB bombs each), and a worker must hold its batch
whatever is in it, so the input bytes of both batches are reported beside the peaks.
"""

from __future__ import annotations

import gzip
import io
import json
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import fastavro

from . import corpus as corpus_mod

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
BOMB_SIDE = 4000  #: 4000 x 4000 float32 = 61 MiB inflated per stamp
WARMUP_ALERTS = 50
WARMUP_PASSES = 3
#: Goal: the hostile batch's peak within this of the ordinary one's (and under report's peak-RSS target).
GOAL_DIFF_MB = 50.0
_LEN = struct.Struct(">I")


def bomb_stamp(side: int = BOMB_SIDE) -> bytes:
    """A valid gzipped FITS image of ``side`` x ``side`` float32 zeros (a few kB per MiB inflated)."""
    cards = [f"SIMPLE  = {'T':>20}", f"BITPIX  = {-32:>20}", f"NAXIS   = {2:>20}",
             f"NAXIS1  = {side:>20}", f"NAXIS2  = {side:>20}", "END"]
    head = b"".join(c.ljust(80).encode("ascii") for c in cards)
    head += b" " * (-len(head) % 2880)
    body = 4 * side * side
    return gzip.compress(head + bytes(body + (-body % 2880)), compresslevel=9, mtime=0)


def with_bombs(data: bytes, stamp: bytes) -> bytes:
    """One alert container re-encoded with its own writer schema, its three stamps replaced by ``stamp``."""
    reader = fastavro.reader(io.BytesIO(data))
    schema, records = reader.writer_schema, list(reader)
    for rec in records:
        for kind in KINDS:
            if isinstance(rec.get(kind), dict):
                rec[kind]["stampData"] = stamp
    out = io.BytesIO()
    fastavro.writer(out, schema, records)
    return out.getvalue()


def ordinary_packets(n: int, corpus: corpus_mod.Corpus | None = None, seed: int = 2026) -> list[bytes]:
    """``n`` synthetic ZTF alerts: the corpus's own where it has enough, else freshly generated."""
    have = corpus.group("ztf", "synthetic") if corpus is not None else []
    if len(have) < n:
        have = corpus_mod.synthetic(n, "ztf", seed)
    return [p.data for p in have[:n]]


def _write_packets(path: Path, warmup: Sequence[bytes], batch: Sequence[bytes]) -> None:
    with path.open("wb") as fh:
        fh.write(_LEN.pack(len(warmup)) + _LEN.pack(len(batch)))
        for data in (*warmup, *batch):
            fh.write(_LEN.pack(len(data)))
            fh.write(data)


def _read_packets(path: str) -> tuple[list[bytes], list[bytes]]:
    """Each packet read on its own (no whole-file buffer to inflate the peak)."""
    with open(path, "rb") as fh:
        (n_warm,), (n_batch,) = _LEN.unpack(fh.read(4)), _LEN.unpack(fh.read(4))
        packets = [fh.read(_LEN.unpack(fh.read(4))[0]) for _ in range(n_warm + n_batch)]
    return packets[:n_warm], packets[n_warm:]


def _rss_mb() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024.0
    except (OSError, ValueError, IndexError):
        pass
    return None


def child(argv: list[str]) -> int:
    """The measured process: warm up, one batch, result JSON to ``argv[1]``."""
    from broker_plugin.config import ProcessingConfig
    from broker_plugin.models.annotate import Annotator, load_model_stage
    from broker_plugin.photometry.cutouts import FLAG_DROPPED_BUDGET, FLAG_DROPPED_SIZE
    from broker_plugin.pipeline import process_batch, settle_heap

    from .worker import peak_rss_mb

    warmup, batch = _read_packets(argv[0])
    annotator = Annotator(load_model_stage(None))
    settle_heap()
    processing = ProcessingConfig()
    for _ in range(WARMUP_PASSES):
        process_batch(annotator, warmup, processing=processing)
    before_peak, before_rss = peak_rss_mb(), _rss_mb()
    t0 = time.perf_counter()
    out = process_batch(annotator, batch, processing=processing)
    elapsed = time.perf_counter() - t0
    flags = [set(r.get("flags") or ()) for r in out.records]
    result = {
        "alerts": len(batch),
        "input_mb": round(sum(len(b) for b in batch) / 2**20, 1),
        "peak_rss_mb": round(peak_rss_mb() or 0.0, 1),
        "peak_rss_after_warmup_mb": round(before_peak or 0.0, 1),
        "rss_after_warmup_mb": round(before_rss or 0.0, 1),
        "batch_s": round(elapsed, 3),
        "records": len(out.records),
        "rejects": len(out.rejects),
        "flagged": sum(1 for f in flags if f & {FLAG_DROPPED_SIZE, FLAG_DROPPED_BUDGET}),
        "flagged_size": sum(1 for f in flags if FLAG_DROPPED_SIZE in f),
        "flagged_budget": sum(1 for f in flags if FLAG_DROPPED_BUDGET in f),
        "limits": {"max_stamp_pixels": processing.max_stamp_pixels,
                   "batch_inflated_bytes": processing.batch_inflated_bytes},
    }
    Path(argv[1]).write_text(json.dumps(result))
    return 0


def _measure(tmp: Path, name: str, warmup: Sequence[bytes], batch: Sequence[bytes]) -> dict[str, Any]:
    packets, result = tmp / f"{name}.bin", tmp / f"{name}.json"
    _write_packets(packets, warmup, batch)
    res = subprocess.run([sys.executable, "-m", "benchmarks.bench_hostile", str(packets), str(result)],
                         cwd=REPO_ROOT, capture_output=True, text=True, timeout=600, check=False)
    if res.returncode != 0:
        raise RuntimeError(f"hostile benchmark child ({name}) failed: {res.stderr[-3000:]}")
    return dict(json.loads(result.read_text()))


def run(alerts: int = 500, corpus: corpus_mod.Corpus | None = None, side: int = BOMB_SIDE,
        peak_goal_mb: float = 500.0) -> dict[str, Any]:
    """Both batches, each in its own process (see the module docstring); the section's JSON."""
    t0 = time.time()
    ordinary = ordinary_packets(alerts, corpus)
    stamp = bomb_stamp(side)
    hostile = [with_bombs(d, stamp) for d in ordinary]
    warmup = ordinary[:WARMUP_ALERTS]
    with tempfile.TemporaryDirectory(prefix="bal-hostile-") as d:
        plain = _measure(Path(d), "ordinary", warmup, ordinary)
        bombs = _measure(Path(d), "hostile", warmup, hostile)
    limits = bombs.pop("limits")
    plain.pop("limits", None)
    diff = round(bombs["peak_rss_mb"] - plain["peak_rss_mb"], 1)
    return {
        "alerts": alerts,
        "bomb": {"side": side, "gzip_bytes": len(stamp), "inflated_mb_per_stamp": round(4 * side * side / 2**20, 1),
                 "stamps_per_alert": len(KINDS),
                 "unbounded_inflated_gb_per_batch": round(alerts * len(KINDS) * 4 * side * side / 1e9, 1)},
        "limits": limits,
        "warmup": {"alerts": len(warmup), "passes": WARMUP_PASSES},
        "ordinary": plain,
        "hostile": bombs,
        "peak_rss_diff_mb": diff,
        "input_diff_mb": round(bombs["input_mb"] - plain["input_mb"], 1),
        "goal": {"diff_mb": GOAL_DIFF_MB, "peak_rss_mb": peak_goal_mb,
                 "met": diff <= GOAL_DIFF_MB and bombs["peak_rss_mb"] <= peak_goal_mb},
        "duration_s": round(time.time() - t0, 1),
    }


if __name__ == "__main__":
    sys.exit(child(sys.argv[1:]))
