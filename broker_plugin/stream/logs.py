"""Logging for the service: JSON lines for log shippers, plain text for people, secrets scrubbed.

Why JSON: in Kubernetes the log line is the unit a shipper (Loki, Elasticsearch...) indexes; one
JSON object per line with ``ts``, ``level``, ``logger``, ``msg`` and the structured fields passed
as ``extra={...}`` makes "alerts/s per pod" a query instead of a regex.

Volume: the service logs per batch at DEBUG and a progress line at INFO at most every few
seconds, never per alert (DESIGN.md).

Secrets: the configuration is logged once at start through
:func:`broker_plugin.stream.kafka_config.redact`. As a second line of defence, every formatter made here
replaces the values registered with :func:`register_secret` (the SASL password, the SSL key
password, anything secret-looking in ``consumer_extra``/``producer_extra``) by ``***`` in the
final line, whatever logger produced it (librdkafka's log lines included).
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import sys
import threading
from typing import IO, Any

#: Attributes every LogRecord has; anything else on a record came from ``extra=`` and is logged.
_STANDARD_ATTRS = frozenset(vars(logging.LogRecord("x", 0, "x", 0, "x", None, None))) | {"message", "asctime"}
_MASK = "***"
#: Secrets shorter than this are not scrubbed (masking "a" everywhere would garble every line).
MIN_SECRET_LENGTH = 4

_secrets: set[str] = set()
_secrets_lock = threading.Lock()


def register_secret(value: Any) -> None:
    """Never let ``value`` appear in a line formatted by this module's formatters."""
    if isinstance(value, str) and len(value) >= MIN_SECRET_LENGTH:
        with _secrets_lock:
            _secrets.add(value)


def scrub(text: str) -> str:
    """``text`` with every registered secret replaced by ``***``."""
    for secret in _secrets:
        if secret in text:
            text = text.replace(secret, _MASK)
    return text


def _scrubbed(value: Any) -> Any:
    """``value`` with secrets masked in every string inside it, before it is serialised.

    Why before: JSON escapes a ``"`` or ``\\`` inside a secret (``pa"ss`` becomes ``pa\\"ss``), so a
    scrub of the finished line no longer finds the secret's text and prints it in clear.
    """
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: _scrubbed(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [_scrubbed(v) for v in value]
    if value is None or isinstance(value, bool | int | float):
        return value
    return scrub(str(value))


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD_ATTRS and not k.startswith("_")}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts (UTC ISO-8601), level, logger, msg, the ``extra`` fields, exc."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": _dt.datetime.fromtimestamp(record.created, _dt.timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _extras(record).items():
            entry.setdefault(key, value)
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return scrub(json.dumps(_scrubbed(entry), default=str, ensure_ascii=False))


class TextFormatter(logging.Formatter):
    """``time level logger: message key=value ...`` for people at a terminal."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = _extras(record)
        if extras:
            line += " " + " ".join(f"{k}={_scrubbed(v)}" for k, v in extras.items())  # before repr escapes
        return scrub(line)


def make_formatter(fmt: str) -> logging.Formatter:
    """``"json"`` or ``"text"`` (the values ``observability.log_format`` accepts)."""
    if fmt == "json":
        return JsonFormatter()
    if fmt == "text":
        return TextFormatter()
    raise ValueError(f"log format must be 'json' or 'text', not {fmt!r}")


def setup_logging(level: str = "INFO", fmt: str = "json", stream: IO[str] | None = None) -> logging.Handler:
    """Send every logger's records to ``stream`` (stderr) in ``fmt``; replaces earlier handlers of
    ours on the root logger, so calling it twice does not double every line. Returns the handler."""
    root = logging.getLogger()
    for h in list(root.handlers):
        if getattr(h, "_bal_broker", False):
            root.removeHandler(h)
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(make_formatter(fmt))
    handler._bal_broker = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(level.upper())
    return handler


class RateLimiter:
    """At most one event per ``interval_s`` per key: for error callbacks that can fire in bursts
    (every broker connection attempt while Kafka is down) without flooding the log."""

    def __init__(self, interval_s: float = 10.0) -> None:
        self.interval_s = interval_s
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def allow(self, key: str, now: float) -> tuple[bool, int]:
        """(whether to log now, how many events of this key were suppressed since the last one)."""
        last = self._last.get(key)
        if last is not None and now - last < self.interval_s:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False, 0
        self._last[key] = now
        return True, self._suppressed.pop(key, 0)


class RateLimitFilter(logging.Filter):
    """A logging filter passing at most one record per ``interval_s`` per key (librdkafka's own log
    lines: while a broker is down it logs every reconnection attempt, several per second). The key
    is librdkafka's facility and client name (``record.args[:2]`` as confluent-kafka passes them)
    plus the level; the next line that passes says how many were suppressed."""

    def __init__(self, interval_s: float = 10.0) -> None:
        super().__init__()
        self.limiter = RateLimiter(interval_s)

    def filter(self, record: logging.LogRecord) -> bool:
        args = record.args if isinstance(record.args, tuple) else ()
        key = f"{record.levelno}:{args[0] if args else record.msg}:{args[1] if len(args) > 1 else ''}"
        ok, suppressed = self.limiter.allow(key, record.created)
        if ok and suppressed:
            record.suppressed = suppressed
        return ok


def rate_limit(logger: logging.Logger, interval_s: float = 10.0) -> None:
    """Install a :class:`RateLimitFilter` on ``logger`` once (idempotent)."""
    if not any(isinstance(f, RateLimitFilter) for f in logger.filters):
        logger.addFilter(RateLimitFilter(interval_s))
