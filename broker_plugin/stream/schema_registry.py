"""Registering output schemas with a Confluent-compatible schema registry.

Why stdlib HTTP and a cache: registration happens once per distinct input schema (a handful per
stream), so a client library would buy nothing; and a registry failure is not the message's fault,
so it raises :class:`RegistryError`, which stops the service instead of dead-lettering the stream.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from broker_plugin.errors import BalBrokerError
from broker_plugin.redact import redact_url


class RegistryError(BalBrokerError):
    """The schema registry refused or failed to register an output schema: not the message's
    fault, so the service stops (without committing) instead of dead-lettering the stream."""

    reason = "schema_registry_error"


class SchemaRegistryWriter:
    """Registers output schemas with a Confluent-compatible registry (stdlib HTTP, ids cached).

    ``POST {url}/subjects/{subject}/versions`` with ``{"schema": "..."}`` answers ``{"id": N}`` and
    is idempotent: an already-registered schema returns its existing id.
    """

    def __init__(self, url: str, timeout_s: float = 5.0) -> None:
        self.url = url.rstrip("/")
        self.shown_url = redact_url(self.url)  # what messages (and so DLQ headers) may show
        self.timeout_s = timeout_s
        self._ids: dict[tuple[str, str], int] = {}

    def register(self, subject: str, schema_json: str) -> int:
        key = (subject, schema_json)
        hit = self._ids.get(key)
        if hit is not None:
            return hit
        endpoint = f"{self.url}/subjects/{urllib.request.quote(subject, safe='')}/versions"
        body = json.dumps({"schema": schema_json}).encode("utf-8")
        req = urllib.request.Request(endpoint, data=body, method="POST",
                                     headers={"Content-Type": "application/vnd.schemaregistry.v1+json"})
        try:
            with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:  # the operator sets the URL
                answer = json.loads(resp.read())
            sid = int(answer["id"])
        except urllib.error.HTTPError as exc:
            detail = exc.read()[:300].decode("utf-8", "replace")
            hint = " (subject compatibility refuses this schema: set it to NONE or FORWARD)" if exc.code == 409 else ""
            raise RegistryError(f"schema registry {self.shown_url} refused the output schema for subject {subject}: "
                                f"HTTP {exc.code} {detail}{hint}") from None
        except (urllib.error.URLError, OSError, ValueError, KeyError, TypeError) as exc:
            raise RegistryError(f"schema registry {self.shown_url} unreachable or confused while registering "
                                f"subject {subject}: {exc}") from None
        self._ids[key] = sid
        return sid


