"""Reading librdkafka errors: names, fatality, and which delivery errors no retry can fix.

Why shared: the at-least-once producer, the transactional one and the client callbacks all judge
the same ``KafkaError`` objects, and must judge them the same way.
"""

from __future__ import annotations

from typing import Any

#: Delivery errors that no retry can fix: dead-letter at once.
PERMANENT_PRODUCE_ERRORS = frozenset({
    "MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "INVALID_RECORD", "RECORD_LIST_TOO_LARGE", "INVALID_MSG",
    "CORRUPT_MESSAGE", "TOPIC_AUTHORIZATION_FAILED", "INVALID_TOPIC_EXCEPTION", "_INVALID_ARG",
})
#: Delivery errors meaning "this message is too large" (librdkafka's own message.max.bytes check and
#: the broker's MESSAGE_TOO_LARGE share code 10): the output is retried smaller, never as it is.
SIZE_ERRORS = frozenset({"MSG_SIZE_TOO_LARGE", "_MSG_SIZE_TOO_LARGE", "RECORD_LIST_TOO_LARGE"})
PARTITION_EOF = -191  # confluent_kafka.KafkaError._PARTITION_EOF


def error_name(err: Any) -> str:
    """The librdkafka error name (``MSG_SIZE_TOO_LARGE``), else the exception's class name."""
    try:
        return str(err.name())
    except Exception:
        return type(err).__name__


def error_text(err: Any) -> str:
    """The human-readable text of a ``KafkaError`` (or of anything else)."""
    return err.str() if hasattr(err, "str") else str(err)


def is_fatal(err: Any) -> bool:
    """Whether librdkafka marks ``err`` fatal (the client is unusable)."""
    return bool(getattr(err, "fatal", lambda: False)())
