"""``bal-broker replay``: annotate archived alerts into a file, the offline twin of the service.

Why it exists: astronomers re-run a night (or a ZTF nightly tarball) through the same decode ->
features -> models -> annotation path as the streaming service, without Kafka, and get one output
record per input alert, in input order. Anything that produces no record is listed in
``FILE.rejects.jsonl`` with the stage and reason, so ``annotated + rejected == read`` always holds
and nothing disappears silently.

Exit status (DESIGN.md): 0 success, including runs where corrupt inputs were rejected (bad alerts
in an archive are data, not a failure of the run); 2 for bad usage/config/input paths; 1 when an
alert hit an *internal* error (a bug: decoder or feature code raising something other than
DecodeError) -- the run still completes and writes every other alert, then reports the count.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_plugin.args import positive_int
from broker_plugin.errors import ConfigError
from broker_plugin.history import HistoryStage, open_store
from broker_plugin.history.stage import with_retries
from broker_plugin.pipeline import INTERNAL_ERROR as _INTERNAL_ERROR
from broker_plugin.pipeline import process_batch, settle_heap

#: Default micro-batch: the service's processing.batch_size default, large enough to amortise the
#: vectorised feature/ONNX calls, small enough that a batch's alerts (with cutouts) fit in memory.
DEFAULT_BATCH_SIZE = 500
#: Seconds a replay retries a batch while its history store is unavailable (locked, unreachable)
#: before it gives up with one line (exit 2): long enough for a database restart.
STORE_RETRY_S = 60.0

log = logging.getLogger(__name__)

#: Reason recorded in the rejects for an unexpected exception (a bug), per stage.
INTERNAL_ERROR = _INTERNAL_ERROR


@dataclass
class ReplayResult:
    """Counts and timings of one replay; ``summary_line`` is what the CLI prints."""

    output: Path
    rejects: Path
    read: int = 0
    annotated: int = 0
    rejected: int = 0
    candidates: int = 0
    internal_errors: int = 0
    skipped: int = 0
    elapsed_s: float = 0.0
    reasons: Counter[str] = field(default_factory=Counter)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def alerts_per_s(self) -> float:
        return self.read / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def summary_line(self) -> str:
        line = (
            f"replay: {self.read} alerts read, {self.annotated} annotated, {self.rejected} rejected, "
            f"{self.candidates} candidates in {self.elapsed_s:.2f} s ({self.alerts_per_s:.1f} alerts/s) "
            f"-> {self.output}"
        )
        if self.rejected:
            top = ", ".join(f"{r}={n}" for r, n in self.reasons.most_common(4))
            line += f" (rejects: {self.rejects}: {top})"
        if self.skipped:
            line += f"; {self.skipped} non-.avro files ignored"
        return line


def replay(
    inputs: Sequence[str | Path],
    output: str | Path,
    *,
    models: str | Path | None = None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    progress: bool | None = None,
    history: str | None = None,
    store_retry_s: float = STORE_RETRY_S,
) -> ReplayResult:
    """Annotate every alert of ``inputs`` into ``output`` (+ ``output.rejects.jsonl``).

    All validation (inputs, output path, model bundle, history store) happens before any file is
    created, so a usage error leaves nothing behind. ``progress`` None: a tqdm bar on a terminal.
    ``history``: a SQLite file or a ``postgresql://`` URL; None keeps an in-memory store for the run,
    so a night's alerts accumulate their objects' histories as in the service. A store unavailable
    for ``store_retry_s`` ends the replay; that and usage problems raise ConfigError (exit 2).
    """
    from broker_plugin.files.output import check_output_path, open_rejects, open_writer, rejects_path
    from broker_plugin.files.sources import iter_inputs
    from broker_plugin.models.annotate import Annotator, load_model_stage

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out_path = check_output_path(output)
    result = ReplayResult(output=out_path, rejects=rejects_path(out_path))

    def on_skip(_origin: str) -> None:
        result.skipped += 1
    items = iter_inputs(inputs, on_skip=on_skip)  # raises ConfigError for a missing input now
    annotator = Annotator(load_model_stage(models))
    stage = HistoryStage(open_store(history))
    metadata = _file_metadata(annotator.model_version)
    timings: Counter[str] = Counter()
    bar = _progress_bar(sys.stderr.isatty() if progress is None else progress)
    t_start = time.perf_counter()
    settle_heap()  # models loaded: keep the garbage collector off them (pipeline.settle_heap)
    writer = open_writer(out_path, feature_names=annotator.feature_names, metadata=metadata)
    try:
        rejects = open_rejects(out_path)
    except BaseException:
        writer.abort()
        raise

    def reject(origin: str, reason: str, message: str, data: bytes, stage: str) -> None:
        rejects.reject(origin, reason, message, data, stage)
        result.rejected += 1
        result.reasons[reason] += 1
        if reason == INTERNAL_ERROR:
            result.internal_errors += 1

    try:
        it = iter(items)
        while True:
            t0 = time.perf_counter()
            batch = _take(it, batch_size)
            t1 = time.perf_counter()
            timings["read"] += t1 - t0
            if not batch:
                break
            _replay_batch(batch, annotator, stage, writer, reject, result, timings, store_retry_s)
            if bar is not None:
                bar.update(len(batch))
        t_close = time.perf_counter()
        writer.close()
        rejects.close()
        timings["write"] += time.perf_counter() - t_close
    except BaseException:
        writer.abort()
        rejects.abort()
        raise
    finally:
        if bar is not None:
            bar.close()
        stage.store.close()

    result.elapsed_s = time.perf_counter() - t_start
    result.candidates = annotator.candidates
    result.timings = {**dict(timings), **{f"annotate.{k}": v for k, v in annotator.timings.as_dict().items()}}
    return result


#: ``reject(origin, reason, message, data, stage)``: record one input that produced no output record.
RejectFn = Callable[[str, str, str, bytes, str], None]


def _file_metadata(model_version: str) -> dict[str, str]:
    """Key/value metadata stamped into the output file, so a file says which code and models made it."""
    from broker_plugin import __version__
    from broker_plugin.photometry.features import FEATURE_VERSION

    return {
        "bal_broker.version": __version__,
        "bal_broker.feature_version": FEATURE_VERSION,
        "bal_broker.model_version": model_version,
    }


def _replay_batch(batch: list[Any], annotator: Any, stage: HistoryStage, writer: Any, reject: RejectFn,
                  result: ReplayResult, timings: Counter[str], store_retry_s: float) -> None:
    """Decode, annotate and write one read batch, rejecting what produces no record.

    Split out of :func:`replay` so the run's setup and teardown (validation, opening and aborting
    the outputs) read apart from the per-batch work; it runs once per batch, not per alert.
    """
    result.read += len(batch)

    # Decode + annotate is shared with the streaming service (broker_plugin.pipeline).
    readable = [i for i, item in enumerate(batch) if item.error is None]
    payloads = [batch[i].data for i in readable]

    def on_retry(attempt: int, exc: Exception, delay: float) -> None:
        log.warning("history store unavailable (attempt %d): %s; retrying the batch in %.1f s", attempt, exc, delay)

    processed = with_retries(lambda: process_batch(annotator, payloads, history=stage), deadline_s=store_retry_s,
                             on_retry=on_retry)
    # Rejects in the order they happen: read and decode per input item, then annotate.
    failed = [(0, i, item.error, item.message, "read")
              for i, item in enumerate(batch) if item.error is not None]
    failed += [(0 if r.stage == "decode" else 1, readable[r.index], r.reason, r.message, r.stage)
               for r in processed.rejects]
    for _, i, reason, message, stage in sorted(failed, key=lambda f: (f[0], f[1])):
        reject(batch[i].origin, reason, message, batch[i].data, stage)
    records = processed.records
    timings["decode"] += processed.decode_s
    timings["annotate"] += processed.annotate_s
    timings["history"] += processed.history_s
    t3 = time.perf_counter()

    writer.write(records)
    result.annotated += len(records)
    timings["write"] += time.perf_counter() - t3


def _take(it: Any, n: int) -> list[Any]:
    batch = []
    for item in it:
        batch.append(item)
        if len(batch) >= n:
            break
    return batch


def _progress_bar(show: bool) -> Any:
    """A tqdm bar on stderr, or None: only on a terminal, so logs and CI output stay clean."""
    if not show:
        return None
    from tqdm import tqdm

    return tqdm(unit=" alerts", desc="replay", file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


# --------------------------------------------------------------------------------------- CLI


def add_parser(subparsers: Any) -> None:
    """Register ``replay`` on the ``bal-broker`` command line (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser(
        "replay",
        help="annotate archived alerts (.avro files, directories, ZTF .tar.gz) into a file",
        description=(
            "Annotate archived alerts into FILE (.jsonl, .avro or .parquet), one record per input alert in "
            "input order. Directories are searched recursively for *.avro files (sorted by name); "
            ".tar.gz/.tgz nightly tarballs are streamed without extraction. Alerts that cannot be decoded "
            "are listed with the reason in FILE.rejects.jsonl, which is always created."
        ),
    )
    p.add_argument("inputs", nargs="+", metavar="INPUT", help=".avro file, directory of them, or .tar.gz tarball")
    p.add_argument("--output", "-o", required=True, metavar="FILE", help="output file: .jsonl, .avro or .parquet")
    p.add_argument("--models", metavar="DIR", default=None, help="model bundle directory")
    p.add_argument("--history", metavar="PATH_OR_URL", default=None,
                   help="object history store: a SQLite file or a postgresql:// URL (default: in memory for this run)")
    p.add_argument(
        "--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
        help=f"alerts per annotation batch (default {DEFAULT_BATCH_SIZE})",
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    """The ``replay`` handler: run, print the summary line on stdout, pick the exit status."""
    result = replay(args.inputs, args.output, models=args.models, batch_size=args.batch_size, history=args.history)
    print(result.summary_line(), flush=True)
    if result.internal_errors:
        print(
            f"bal-broker: error: {result.internal_errors} alerts hit internal errors "
            f"(reason {INTERNAL_ERROR} in {result.rejects}); please report this",
            file=sys.stderr,
        )
        return 1
    return 0
