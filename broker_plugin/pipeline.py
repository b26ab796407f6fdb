"""One batch of raw alert messages -> annotated records and rejects: the step replay and the service share.

Why a module of its own: ``bal-broker replay`` (files) and ``bal-broker run`` (Kafka) must turn the
same bytes into the same records and reject the same messages for the same reasons; only where the
bytes come from and where the results go differ. :func:`process_batch` is that common middle:
decode every message, guard the alert (:func:`broker_plugin.models.annotate.check_alert`), annotate the
survivors in one vectorised call, and fall back to alert-by-alert annotation when the batch call
raises, so that one alert that breaks the feature code costs only itself (as ``internal_error``).

Nothing here knows about files, Kafka, offsets or output formats.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from broker_plugin.alert import Alert
from broker_plugin.config import ProcessingConfig
from broker_plugin.decode import default_decoder
from broker_plugin.errors import DecodeError
from broker_plugin.history import HistoryStage
from broker_plugin.models.annotate import check_alert
from broker_plugin.photometry.cutouts import cutout_limits

#: Reason recorded for an unexpected exception (a bug), whatever the stage.
INTERNAL_ERROR = "internal_error"

#: The garbage collector's young-generation threshold while batches are processed (CPython's default is
#: 700 allocations): a 500-alert batch allocates ~10^6 objects, nearly all freed by reference counting.
GC_GEN0_THRESHOLD = 10_000

#: Reason recorded when a decoded alert fails :func:`broker_plugin.models.annotate.check_alert`.
BAD_VALUE = "bad_value"


@dataclass(slots=True)
class Rejected:
    """A message of the batch that produced no record, and why.

    ``stage`` is ``decode`` or ``annotate``; ``reason`` a short machine-readable word (a
    :data:`~broker_plugin.errors.DECODE_REASONS` entry or :data:`INTERNAL_ERROR`); ``error_class``
    the exception's class name (dead-letter headers carry it).
    """

    index: int
    stage: str
    reason: str
    message: str
    error_class: str


@dataclass
class ProcessedBatch:
    """What :func:`process_batch` returns. ``records[i]`` belongs to ``alerts[i]`` and to input
    message ``indices[i]``; records keep input order; rejects are in (stage, input) order."""

    alerts: list[Alert] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    indices: list[int] = field(default_factory=list)
    rejects: list[Rejected] = field(default_factory=list)
    decode_s: float = 0.0
    annotate_s: float = 0.0
    history_s: float = 0.0


def settle_heap() -> None:
    """Call once after start-up (models, schemas and modules loaded), before the first batch.

    Why: with CPython's defaults the cyclic garbage collector ran ~1,400 times per 1,000 alerts and
    re-scanned every start-up object on each older-generation pass, ~30 us per alert (measured with
    ``gc.callbacks`` around the batch loop). ``gc.freeze`` moves the start-up objects to a permanent
    generation the collector skips, and a higher young threshold makes collections rarer: ~5 us per
    alert. Batch objects hold no reference cycles of note, so memory is unaffected; the collector still
    runs, just less often.
    """
    gc.collect()
    gc.freeze()
    gen0, gen1, gen2 = gc.get_threshold()
    gc.set_threshold(max(gen0, GC_GEN0_THRESHOLD), gen1, gen2)


def describe(exc: BaseException) -> str:
    """``"ClassName: first line of the message"``, at most 500 characters (for rejects and headers)."""
    text = str(exc).splitlines()[0] if str(exc) else ""
    return f"{type(exc).__name__}: {text}"[:500]


def process_batch(annotator: Any, payloads: Sequence[bytes], *, decode: Callable[[bytes], Alert] | None = None,
                  history: HistoryStage | None = None, processing: ProcessingConfig | None = None) -> ProcessedBatch:
    """Decode and annotate ``payloads`` (one alert message each) with ``annotator``.

    ``decode`` defaults to the default decoder's batch path
    (:meth:`broker_plugin.decode.Decoder.decode_batch`, the same alerts as
    :func:`~broker_plugin.decode.decode_alert` on each message, light curves built for the batch at
    once); a given ``decode`` is called per message. Never raises for bad input or a bug in
    decode/features/models: those become :class:`Rejected` entries.

    ``history``: the object history stage. The batch's objects are read once before the features
    (every alert then carries its merged light curve) and the batch's points written once after
    annotation; :class:`~broker_plugin.history.StoreError` propagates, with nothing written, so
    the caller can retry the whole batch (nothing of it has been produced or committed yet).

    ``processing``: the stamp pixel cap and the batch's inflated-bytes budget
    (``max_stamp_pixels``, ``batch_inflated_bytes``; None: their defaults), so the cutouts of one
    batch never hold more memory than the budget whatever the messages claim.
    """
    out = ProcessedBatch()
    t0 = time.perf_counter()
    if decode is None:
        decoded = default_decoder().decode_batch(payloads)
    else:
        decoded = []
        for data in payloads:
            try:
                decoded.append(decode(data))
            except Exception as exc:
                decoded.append(exc)
    alerts: list[Alert] = []
    indices: list[int] = []
    for i, alert in enumerate(decoded):
        if isinstance(alert, DecodeError):
            out.rejects.append(Rejected(i, "decode", alert.reason, str(alert), type(alert).__name__))
            continue
        if isinstance(alert, Exception):  # a decoder bug must not lose the rest of the batch
            out.rejects.append(Rejected(i, "decode", INTERNAL_ERROR, describe(alert), type(alert).__name__))
            continue
        problem = check_alert(alert)
        if problem is not None:
            out.rejects.append(Rejected(i, "decode", BAD_VALUE, problem, "DecodeError"))
            continue
        alerts.append(alert)
        indices.append(i)
    pending = history.merge(alerts) if history is not None else None
    t1 = time.perf_counter()
    out.decode_s = t1 - t0
    p = processing or ProcessingConfig()
    with cutout_limits(p.max_stamp_pixels, p.batch_inflated_bytes):
        _annotate(annotator, alerts, indices, out)
    t2 = time.perf_counter()
    out.annotate_s = t2 - t1
    if history is not None and pending is not None:
        history.write(pending)
        out.history_s = time.perf_counter() - t2
    return out


def _annotate(annotator: Any, alerts: list[Alert], indices: list[int], out: ProcessedBatch) -> None:
    """Annotate in one call; if it raises, retry alert by alert so only the alerts that really break
    the code are rejected (as internal errors) and the rest still get records."""
    if not alerts:
        return
    try:
        records = annotator.annotate_batch(alerts)
    except Exception:
        records = None
    if records is not None:
        out.alerts.extend(alerts)
        out.records.extend(records)
        out.indices.extend(indices)
        return
    for alert, index in zip(alerts, indices, strict=True):
        try:
            (record,) = annotator.annotate_batch([alert])
        except Exception as exc:
            out.rejects.append(Rejected(index, "annotate", INTERNAL_ERROR, describe(exc), type(exc).__name__))
            continue
        out.alerts.append(alert)
        out.records.append(record)
        out.indices.append(index)
