"""Credentials in URLs: shown nowhere, whatever message or header a URL ends up in.

Why a module at the bottom of the tree: a schema-registry or database URL may carry ``user:password@``
(Confluent Cloud registries, PostgreSQL DSNs), and such URLs reach error messages in decode, the
history store and the Kafka output, some of which become dead-letter headers that anyone reading
the DLQ topic sees. Every place that puts a URL in text calls :func:`redact_url`, and the service
registers :func:`url_secrets` with the log scrubber.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

MASK = "***"


def redact_url(url: str) -> str:
    """``url`` with its password (and any ``user:password`` pair) replaced by ``***``; unchanged
    when it carries none or cannot be parsed."""
    try:
        parts = urlsplit(url)
        password = parts.password
        host = parts.hostname or ""
        port = parts.port
    except ValueError:
        return url
    if password is None:
        return url
    user = parts.username or ""
    netloc = f"{user}:{MASK}@{host}" + (f":{port}" if port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def url_secrets(url: str | None) -> list[str]:
    """The secret parts of ``url`` (its password, and the ``user:password`` pair) for the log scrubber."""
    if not url:
        return []
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:
        return []
    if not password:
        return []
    return [password, f"{parts.username or ''}:{password}"]
