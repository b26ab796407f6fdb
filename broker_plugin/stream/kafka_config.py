"""librdkafka configuration for the service, ``publish`` and the tests, built in one place.

Why one place: the delivery guarantee lives in a handful of librdkafka properties, and a wrong
one (``enable.auto.offset.store=true``, ``acks=1``) silently turns at-least-once into
at-most-once. Every client the project creates gets its dict from here.

At-least-once, the librdkafka way (the pattern AMPEL and ALeRCE-style consumers rely on):

* ``enable.auto.offset.store=false``: librdkafka does **not** mark a message as done when
  ``poll()`` returns it. The service calls ``consumer.store_offsets(message)`` only once every
  output produced for that message (annotated alert, candidate, or DLQ record) has been
  acknowledged by the broker (producer delivery callback without error).
* ``enable.auto.commit=true``: the background thread commits the *stored* offsets every
  ``auto.commit.interval.ms`` and on rebalance/close, so nothing unacknowledged is ever committed
  and at most about one interval of acknowledged work is replayed after a crash.
* Caveat for the service: outputs of different inputs may be acknowledged out of order (they go to
  different output partitions), so only the contiguous prefix of acknowledged offsets of each input
  partition may be stored; storing offset N+1 commits "everything before N+1 is done".

Producers are idempotent with ``acks=all`` so retries after a timeout never duplicate or reorder
within a partition; ``linger.ms`` is small because alert streams are latency-sensitive and
alerts are large (tens to hundreds of kB), so batches fill quickly anyway.

Settings come as a plain mapping: either the field names of
:class:`broker_plugin.config.KafkaConfig` (``bootstrap_servers``, ``sasl_password``,
``consumer_extra``...) or raw librdkafka property names (anything containing a dot), which pass
through verbatim. :func:`redact` masks secrets for logging.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from broker_plugin.errors import ConfigError

#: KafkaConfig field names (and a few friendly spellings) that are librdkafka properties.
SETTING_ALIASES: dict[str, str] = {
    "bootstrap": "bootstrap.servers",
    "bootstrap_servers": "bootstrap.servers",
    "group_id": "group.id",
    "client_id": "client.id",
    "auto_offset_reset": "auto.offset.reset",
    "session_timeout_ms": "session.timeout.ms",
    "security_protocol": "security.protocol",
    "ssl_ca_location": "ssl.ca.location",
    "ssl_certificate_location": "ssl.certificate.location",
    "ssl_key_location": "ssl.key.location",
    "ssl_key_password": "ssl.key.password",
    "sasl_mechanism": "sasl.mechanism",
    "sasl_mechanisms": "sasl.mechanism",
    "sasl_username": "sasl.username",
    "sasl_password": "sasl.password",
    # librdkafka's default (5 min) leaves a recreated topic or a new pattern match unseen for minutes
    "metadata_refresh_ms": "topic.metadata.refresh.interval.ms",
}

#: Settings that belong to only one kind of client (a producer refuses ``group.id`` silently
#: but warns on ``session.timeout.ms``; keep each dict clean).
CONSUMER_ONLY = frozenset({"group.id", "auto.offset.reset", "session.timeout.ms", "heartbeat.interval.ms",
                           "group.instance.id", "isolation.level", "max.poll.interval.ms",
                           "enable.auto.commit", "enable.auto.offset.store", "auto.commit.interval.ms",
                           "partition.assignment.strategy", "enable.partition.eof", "fetch.min.bytes",
                           "fetch.max.bytes", "max.partition.fetch.bytes", "fetch.wait.max.ms"})

#: KafkaConfig fields that configure the application, not librdkafka: accepted and ignored.
APPLICATION_KEYS = frozenset({"input_topics", "input_pattern", "output_topic", "candidate_topic", "dlq_topic",
                              "exactly_once", "schema_registry_url", "input_max_bytes", "output_max_bytes",
                              "dlq_max_bytes"})

#: Per-client-kind escape hatches of KafkaConfig: merged verbatim into that kind's dict only.
EXTRA_KEYS = {"consumer": "consumer_extra", "producer": "producer_extra"}

#: ``topic.metadata.refresh.interval.ms`` (kafka.metadata_refresh_ms): a topic recreated after a
#: broker replacement, or a new topic matching ``input_pattern``, is seen within 30 s, not 5 min.
DEFAULT_METADATA_REFRESH_MS = 30_000

#: Session timeout that suits both Kafka (its group.min.session.timeout.ms is 6000) and the
#: embedded Tansu broker, whose group join waits about half the session timeout (45 s default ->
#: ~23 s per join; 6 s -> ~3 s).
DEFAULT_SESSION_TIMEOUT_MS = 6000

CONSUMER_DEFAULTS: dict[str, Any] = {
    "client.id": "bal-broker",
    "enable.auto.commit": True,
    "enable.auto.offset.store": False,
    "auto.commit.interval.ms": 1000,
    "auto.offset.reset": "earliest",
    "session.timeout.ms": DEFAULT_SESSION_TIMEOUT_MS,
    "isolation.level": "read_committed",
    "enable.partition.eof": False,
    "topic.metadata.refresh.interval.ms": DEFAULT_METADATA_REFRESH_MS,
}

PRODUCER_DEFAULTS: dict[str, Any] = {
    "client.id": "bal-broker",
    "enable.idempotence": True,
    "acks": "all",
    "linger.ms": 5,
    # lz4: cheap, supported by every Kafka client and broker since 0.10; alerts carry gzipped
    # FITS cutouts that barely compress, so a heavier codec buys little.
    "compression.type": "lz4",
    "topic.metadata.refresh.interval.ms": DEFAULT_METADATA_REFRESH_MS,
}

#: Substrings of property names whose values are secrets (matched case-insensitively).
_SECRET_KEY_PARTS = ("password", "secret", "token", "credential", "jaas", "user.info", "private",
                     "oauthbearer.config", "api.key", "apikey")
_PEM_KEY = re.compile(r"key.*\.pem$|\.pem.*key", re.IGNORECASE)
_PRIVATE_KEY_VALUE = re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----")
REDACTED = "***"


def normalise_settings(settings: Mapping[str, Any] | None, kind: str) -> dict[str, Any]:
    """Turn a plain settings mapping into librdkafka property names for ``kind`` of client.

    ``kind`` is ``"consumer"``, ``"producer"`` or ``"admin"``. ``None`` values mean "unset" and
    are dropped. Unknown underscore names raise :class:`ConfigError` (a typo must not vanish).
    """
    if kind not in ("consumer", "producer", "admin"):
        raise ValueError(f"kind must be consumer, producer or admin, not {kind!r}")
    out: dict[str, Any] = {}
    extras: dict[str, Any] = {}
    for key, value in (settings or {}).items():
        if value is None or key in APPLICATION_KEYS:
            continue
        if key in EXTRA_KEYS.values():
            if not isinstance(value, Mapping):
                raise ConfigError(f"kafka.{key} must be a mapping of librdkafka properties")
            if key == EXTRA_KEYS.get(kind):
                extras.update({k: v for k, v in value.items() if v is not None})
            continue
        if key in SETTING_ALIASES:
            out[SETTING_ALIASES[key]] = value
        elif "." in key:
            out[key] = value
        else:
            raise ConfigError(f"unknown Kafka setting {key!r}: use a KafkaConfig field name or a "
                              "librdkafka property (e.g. 'socket.timeout.ms')")
    if kind != "consumer":
        out = {k: v for k, v in out.items() if k not in CONSUMER_ONLY}
    out.update(extras)
    if isinstance(out.get("security.protocol"), str):
        out["security.protocol"] = out["security.protocol"].upper()
    return out


def consumer_config(settings: Mapping[str, Any] | None = None, *, bootstrap: str | None = None,
                    group_id: str | None = None) -> dict[str, Any]:
    """librdkafka config for an at-least-once consumer (see the module docstring).

    ``bootstrap``/``group_id`` override the settings. Refuses, with a :class:`ConfigError`, an
    override that would commit offsets of unprocessed messages (``enable.auto.offset.store``).
    """
    config = dict(CONSUMER_DEFAULTS)
    config.update(normalise_settings(settings, "consumer"))
    if bootstrap is not None:
        config["bootstrap.servers"] = bootstrap
    if group_id is not None:
        config["group.id"] = group_id
    _require(config, "bootstrap.servers")
    _require(config, "group.id")
    if _truthy(config.get("enable.auto.offset.store")):
        raise ConfigError("enable.auto.offset.store must stay false: offsets are stored only after the "
                          "outputs of a message are acknowledged (at-least-once)")
    if "heartbeat.interval.ms" not in config:
        # librdkafka's default (3000) must stay below a third of a short session timeout.
        config["heartbeat.interval.ms"] = max(100, min(3000, int(config["session.timeout.ms"]) // 3))
    return config


def producer_config(settings: Mapping[str, Any] | None = None, *, bootstrap: str | None = None,
                    transactional_id: str | None = None) -> dict[str, Any]:
    """librdkafka config for an idempotent, ``acks=all`` producer.

    ``enable.idempotence`` may be switched off in the settings (old secured clusters need the
    IdempotentWrite ACL for it), but ``acks`` must stay ``all``: with fewer acknowledgements a
    leader failover loses messages the service has already committed offsets for.
    ``transactional_id`` (for ``exactly_once``) makes it a transactional producer.
    """
    config = dict(PRODUCER_DEFAULTS)
    config.update(normalise_settings(settings, "producer"))
    if bootstrap is not None:
        config["bootstrap.servers"] = bootstrap
    if transactional_id is not None:
        config["transactional.id"] = transactional_id
    _require(config, "bootstrap.servers")
    if str(config.get("acks")).lower() not in ("all", "-1"):
        raise ConfigError(f"producer acks must be 'all' (got {config.get('acks')!r}): at-least-once "
                          "needs every in-sync replica to have the output before the input offset is stored")
    return config


def admin_config(settings: Mapping[str, Any] | None = None, *, bootstrap: str | None = None) -> dict[str, Any]:
    """Connection and security settings only, for an AdminClient (topic checks, metadata)."""
    config: dict[str, Any] = {"client.id": "bal-broker"}
    config.update(normalise_settings(settings, "admin"))
    if bootstrap is not None:
        config["bootstrap.servers"] = bootstrap
    _require(config, "bootstrap.servers")
    return config


def is_secret_key(key: str) -> bool:
    """True when a property name looks like it holds a secret (passwords, tokens, private keys)."""
    lowered = key.lower()
    if lowered.endswith((".location", ".url")) and not any(p in lowered for p in ("password", "secret")):
        return False  # a file path or endpoint (ssl.key.location, ...token.endpoint.url): not a secret
    return any(part in lowered for part in _SECRET_KEY_PARTS) or bool(_PEM_KEY.search(lowered))


def redact(config: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``config`` safe to log: secret-looking values become ``"***"``.

    Masks by key (``sasl.password``, ``ssl.key.password``, ``ssl.key.pem``,
    ``sasl.oauthbearer.client.secret``, ``sasl.oauthbearer.config``, ``basic.auth.user.info``...)
    and by value (anything holding a PEM private key), recursing into nested mappings such as
    ``consumer_extra``. Paths (``ssl.key.location``) stay visible: they help debugging and are not
    secrets. Unset (``None``) secrets stay ``None`` so that "not configured" remains visible.
    """
    out: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, Mapping):
            out[key] = redact(value)
        elif value is not None and (is_secret_key(str(key)) or
                                    (isinstance(value, str) and _PRIVATE_KEY_VALUE.search(value))):
            out[key] = REDACTED
        else:
            out[key] = value
    return out


def _require(config: Mapping[str, Any], key: str) -> None:
    if not config.get(key):
        raise ConfigError(f"Kafka setting {key} is required")


def _truthy(value: Any) -> bool:
    if isinstance(value, str):
        return value.strip().lower() in ("true", "1", "yes", "on")
    return bool(value)
