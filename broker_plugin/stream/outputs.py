"""What the service produces: outputs grouped per input message, dead-letter headers, running totals.

Why apart from the loop: execute builds these, the producers send them and tests read them; none of
that needs the consumer or the loop.
"""

from __future__ import annotations

import collections
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

