"""What the service produces: outputs grouped per input message, dead-letter headers, running totals.

Why apart from the loop: execute builds these, the producers send them and tests read them; none of
that needs the consumer or the loop.
"""

from __future__ import annotations

import collections
import hashlib
from dataclasses import dataclass, field
from typing import Any

from broker_plugin import __version__


@dataclass(slots=True)
class Output:
    """One message to produce."""

    topic: str
    key: bytes | str | None
    value: bytes
    headers: list[tuple[str, str | bytes]]
    kind: str  # "out", "candidate" or "dlq"
    reduced: bool = False  # already as small as it gets: an output without cutouts, a dead-letter stub


@dataclass(slots=True)
class Work:
    """The outputs of one input message (the unit of offset tracking)."""

    msg: Any
    outputs: list[Output]


@dataclass
class ServiceStats:
    """Running totals (also in the metrics); the summary line and tests read them."""

    consumed: int = 0
    skipped: int = 0  # outside the replay window
    annotated: int = 0
    rejected: int = 0
    produced_out: int = 0
    produced_candidates: int = 0
    produced_dlq: int = 0
    batches: int = 0
    reasons: collections.Counter[str] = field(default_factory=collections.Counter)


def source_of(msg: Any) -> str:
    """``topic/partition/offset`` of a consumed message (the ``bal_source`` header)."""
    return f"{msg.topic()}/{msg.partition()}/{msg.offset()}"


def dlq_headers(msg: Any, *, error_class: str, reason: str, message: str, stage: str) -> list[tuple[str, str]]:
    """Dead-letter headers: what failed and where the message came from (DESIGN.md, Kafka)."""
    ts_type, ts = msg.timestamp()
    return [
        ("bal_error_class", error_class),
        ("bal_error_reason", reason),
        ("bal_error_message", " ".join(str(message).split())[:1000]),
        ("bal_error_stage", stage),
        ("bal_source_topic", str(msg.topic())),
        ("bal_source_partition", str(msg.partition())),
        ("bal_source_offset", str(msg.offset())),
        ("bal_source_timestamp", str(ts if ts_type else -1)),
        ("bal_source", source_of(msg)),
        ("bal_plugin_version", __version__),
    ]



#: Bytes of the original message a dead-letter stub keeps (:func:`dlq_stub`).
STUB_PREFIX_BYTES = 1024


def message_size(out: Output) -> int:
    """Bytes of ``out`` as the size limits count them: value, key and headers."""
    key = out.key.encode("utf-8") if isinstance(out.key, str) else (out.key or b"")
    headers = sum(len(k) + len(v.encode("utf-8") if isinstance(v, str) else v) for k, v in out.headers)
    return len(out.value) + len(key) + headers


def dlq_stub(out: Output) -> Output:
    """A dead letter too large to send, as a small one: the first bytes of the original value, its
    headers plus ``bal_truncated``, ``bal_original_size`` and ``bal_original_sha256``; same key."""
    value = out.value
    headers = [h for h in out.headers if h[0] not in ("bal_truncated", "bal_original_size", "bal_original_sha256")]
    headers += [("bal_truncated", "true"), ("bal_original_size", str(len(value))),
                ("bal_original_sha256", hashlib.sha256(value).hexdigest())]
    return Output(out.topic, out.key, bytes(value[:STUB_PREFIX_BYTES]), headers, out.kind, reduced=True)


def fit_dead_letter(out: Output, max_bytes: int) -> Output:
    """``out`` when it fits in ``max_bytes`` (``kafka.dlq_max_bytes``), else its :func:`dlq_stub`."""
    return out if message_size(out) <= max_bytes else dlq_stub(out)
