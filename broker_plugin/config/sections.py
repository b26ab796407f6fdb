"""The configuration's sections (frozen dataclasses) and the checks that make a configuration valid.

Part of :mod:`broker_plugin.config` (see its docstring): the settings and their rules live here, the
reading of YAML and the environment in :mod:`~broker_plugin.config.loading`.
"""


from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from broker_plugin.errors import ConfigError

ENV_PREFIX = "BAL_BROKER__"


@dataclass(frozen=True)
class KafkaConfig:
    """Where to read and write. Topic names follow the DESIGN.md contract."""

    bootstrap_servers: str = "127.0.0.1:9092"
    group_id: str = "bal-broker"
    input_topics: tuple[str, ...] = ()
    #: A regular expression (librdkafka subscribes to ``^``-prefixed names as patterns), e.g.
    #: ``^ztf_[0-9]{8}_programid1$`` for the daily ZTF topics. Used in addition to input_topics.
    input_pattern: str | None = None
    output_topic: str = "bal-annotated"
    candidate_topic: str = "bal-candidates"
    dlq_topic: str = "bal-dlq"
    #: Transactions (consume-transform-produce atomically) instead of at-least-once.
    exactly_once: bool = False
    #: Start from the earliest offset when the group has no committed offset.
    auto_offset_reset: str = "earliest"
    session_timeout_ms: int = 6000
    #: librdkafka security settings; secrets are redacted from every log line.
    security_protocol: str = "PLAINTEXT"
    ssl_ca_location: str | None = None
    ssl_certificate_location: str | None = None
    ssl_key_location: str | None = None
    ssl_key_password: str | None = None
    sasl_mechanism: str | None = None
    sasl_username: str | None = None
    sasl_password: str | None = None
    #: Extra librdkafka properties, passed through verbatim (operators' escape hatch).
    consumer_extra: Mapping[str, Any] = field(default_factory=dict)
    producer_extra: Mapping[str, Any] = field(default_factory=dict)
    #: Confluent schema registry for wire-format output and unknown input schema ids (optional).
    schema_registry_url: str | None = None
    #: Message size limits (bytes). Rubin's alert stream allows 10 MB messages; the input limit sets
    #: the consumer's fetch and receive limits, the output and dead-letter limits what the service
    #: will send: a larger annotated alert goes out without its cutouts (flag cutouts_dropped_size), a
    #: larger dead letter as a stub (headers, size, sha256, first bytes). The topics' own
    #: max.message.bytes (1 MB by default on Apache Kafka) must allow as much.
    input_max_bytes: int = 10_485_760
    output_max_bytes: int = 10_485_760
    dlq_max_bytes: int = 10_485_760
    #: How often librdkafka refreshes topic metadata (ms): how soon a recreated or new topic that
    #: matches input_pattern is consumed (librdkafka's default is 5 minutes).
    metadata_refresh_ms: int = 30_000


@dataclass(frozen=True)
class ProcessingConfig:
    """Micro-batching, candidate selection and the error budget."""

    batch_size: int = 500
    batch_timeout_s: float = 0.5
    #: Decision threshold for is_candidate; None keeps the model bundle's own (its manifest's
    #: bundle.candidate_threshold), which is what replay uses too.
    candidate_threshold: float | None = None
    #: Drop the three cutouts from the annotated output to save bandwidth (they stay in the input).
    drop_cutouts: bool = False
    #: Stop with a clear message when more than error_max messages fail within error_window_s.
    error_max: int = 1000
    error_window_s: float = 60.0
    #: Optional replay window (ISO-8601 or epoch milliseconds), resolved with offsets_for_times.
    time_from: str | None = None
    time_to: str | None = None
    #: Largest cutout decoded, in pixels (real stamps are 63x63 = 3,969 or smaller): a larger one is
    #: not inflated past this and the alert is annotated without cutouts (flag cutouts_dropped_size).
    max_stamp_pixels: int = 16_384
    #: Inflated cutout bytes one batch may hold; alerts past it are annotated without cutouts
    #: (flag cutouts_dropped_budget), so memory is bounded per batch, not per message.
    batch_inflated_bytes: int = 67_108_864


@dataclass(frozen=True)
class ModelsConfig:
    """The model bundle; ``None`` means the default bundle shipped inside the package."""

    bundle: str | None = None


@dataclass(frozen=True)
class HistoryConfig:
    """The object history store (broker_plugin.history; the README's "History store"): ``backend``
    ``none`` (packets alone), ``sqlite`` (one machine: ``path``) or ``postgresql`` (several workers or
    pods: ``url``, with its password from the environment, ``BAL_BROKER__HISTORY__URL``)."""

    backend: str = "none"
    path: str | None = None
    url: str | None = None
    #: Objects within this distance (arcsec) are one object (a ZTF objectId, its data-release
    #: light curve, and with cross_survey the same source seen by Rubin).
    radius_arcsec: float = 1.5
    cross_survey: bool = False
    #: Retention: points older than this many days before an alert are not read for it (None: all).
    window_days: float | None = None


@dataclass(frozen=True)
class ObservabilityConfig:
    metrics_port: int = 9108  # 0 disables the Prometheus endpoint
    log_level: str = "INFO"
    log_format: str = "json"  # "json" for log shippers, "text" for people
    #: Outputs waiting longer than this for the broker's acknowledgement: WARNING, metric, exit 1 (restart).
    unacked_timeout_s: float = 120.0
    #: No partition assigned (or nothing subscribed matches) for this long: WARNING and metric, repeated.
    no_assignment_timeout_s: float = 120.0


@dataclass(frozen=True)
class ServiceConfig:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    processing: ProcessingConfig = field(default_factory=ProcessingConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    observability: ObservabilityConfig = field(default_factory=ObservabilityConfig)

    def __post_init__(self) -> None:
        _validate(self)


#: Perl-style class escapes that Python's ``re`` knows and librdkafka's own regex engine lacks: a
#: pattern with ``\d`` matches no topic there, silently (measured; the others are the same family and
#: refused the same way, with the bracket form to write instead).
_UNSUPPORTED_ESCAPES = {"d": "[0-9]", "D": "[^0-9]", "w": "[A-Za-z0-9_]", "W": "[^A-Za-z0-9_]",
                        "s": "[ ]", "S": "[^ ]", "b": None, "B": None, "A": "^", "Z": "$", "z": "$"}


def _check_librdkafka_pattern(pattern: str) -> None:
    """Validate a topic pattern as librdkafka will read it, not as Python would.

    Measured against the embedded broker: ``^ztf_[0-9]{8}_programid1$`` matches
    ``ztf_20261202_programid1`` and ``^ztf_\\d{8}_programid1$`` matches nothing.
    """
    i = 0
    while i < len(pattern) - 1:
        if pattern[i] == "\\":
            nxt = pattern[i + 1]
            if nxt in _UNSUPPORTED_ESCAPES:
                use = _UNSUPPORTED_ESCAPES[nxt]
                hint = f"; write {use} instead" if use else ""
                raise ConfigError(f"kafka.input_pattern: librdkafka's regex has no \\{nxt} (it would match no "
                                  f"topic){hint}")
            i += 2
            continue
        i += 1
    try:
        re.compile(pattern)
    except re.error as exc:
        raise ConfigError(f"kafka.input_pattern is not a valid regular expression: {exc}") from None


def _validate(cfg: ServiceConfig) -> None:
    k, p, o = cfg.kafka, cfg.processing, cfg.observability
    _check_bootstrap(k.bootstrap_servers)
    if not k.input_topics and not k.input_pattern:
        raise ConfigError("kafka: set input_topics or input_pattern (nothing to consume)")
    if k.input_pattern is not None:
        _check_librdkafka_pattern(k.input_pattern)
    if k.auto_offset_reset not in ("earliest", "latest"):
        raise ConfigError("kafka.auto_offset_reset must be 'earliest' or 'latest'")
    if k.security_protocol.upper() not in ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"):
        raise ConfigError(f"kafka.security_protocol {k.security_protocol!r} is not one of PLAINTEXT, SSL, "
                          "SASL_PLAINTEXT, SASL_SSL")
    if k.security_protocol.upper().startswith("SASL") and not (k.sasl_mechanism and k.sasl_username):
        raise ConfigError("kafka: SASL needs sasl_mechanism and sasl_username (password from the environment)")
    for name in ("ssl_ca_location", "ssl_certificate_location", "ssl_key_location"):
        value = getattr(k, name)
        if value is not None and not Path(value).is_file():
            raise ConfigError(f"kafka.{name}: file not found: {value}")
    if len({k.output_topic, k.candidate_topic, k.dlq_topic}) != 3:
        raise ConfigError("kafka: output_topic, candidate_topic and dlq_topic must be three different topics")
    if p.batch_size < 1 or p.batch_size > 100_000:
        raise ConfigError("processing.batch_size must be between 1 and 100000")
    if p.batch_timeout_s <= 0:
        raise ConfigError("processing.batch_timeout_s must be positive")
    if p.candidate_threshold is not None and not 0.0 <= p.candidate_threshold <= 1.0:
        raise ConfigError("processing.candidate_threshold must be in [0, 1]")
    if p.error_max < 0 or p.error_window_s <= 0:
        raise ConfigError("processing.error_max must be >= 0 and error_window_s > 0")
    _validate_limits(cfg)
    window = [parse_time_ms(v, f"processing.{n}") if v is not None else None
              for n, v in (("time_from", p.time_from), ("time_to", p.time_to))]
    if window[0] is not None and window[1] is not None and window[0] > window[1]:
        raise ConfigError(f"processing.time_from ({p.time_from}) is after processing.time_to ({p.time_to})")
    if not 0 <= o.metrics_port <= 65535:
        raise ConfigError("observability.metrics_port must be 0 (off) or a TCP port")
    if o.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError("observability.log_level must be DEBUG, INFO, WARNING or ERROR")
    if o.log_format not in ("json", "text"):
        raise ConfigError("observability.log_format must be 'json' or 'text'")
    if cfg.models.bundle is not None and not Path(cfg.models.bundle).is_dir():
        raise ConfigError(f"models.bundle: not a directory: {cfg.models.bundle}")
    _validate_history(cfg.history)


#: One bootstrap address as librdkafka reads it: an optional ``PROTOCOL://``, a host name, IPv4
#: address or bracketed IPv6 address, and an optional port.
_BOOTSTRAP_ADDRESS = re.compile(r"^(?:[A-Za-z_]+://)?(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]*[A-Za-z0-9])?)"
                                r"(?::([0-9]{1,5}))?$")


def _check_bootstrap(value: str) -> None:
    """Refuse a ``bootstrap_servers`` librdkafka could never connect to: it would retry it forever."""
    parts = [v.strip() for v in value.split(",")]
    for part in parts:
        m = _BOOTSTRAP_ADDRESS.match(part)
        if not part or m is None or (m.group(1) is not None and not 0 < int(m.group(1)) < 65536):
            raise ConfigError(f"kafka.bootstrap_servers: {part!r} is not HOST:PORT (a comma-separated list of them)")


#: Inflated bytes a real alert's cutouts take (three 63x63 ZTF stamps: ~60 kB), for the budget check.
INFLATED_BYTES_PER_ALERT = 65_536


def _validate_limits(cfg: ServiceConfig) -> None:
    """Sizes, timeouts and budgets: positive (floats are finite already: the loader refuses nan/inf)."""
    k, p, o = cfg.kafka, cfg.processing, cfg.observability
    for where, value, low in (("kafka.input_max_bytes", k.input_max_bytes, 1024),
                              ("kafka.output_max_bytes", k.output_max_bytes, 1024),
                              ("kafka.dlq_max_bytes", k.dlq_max_bytes, 1024),
                              ("kafka.metadata_refresh_ms", k.metadata_refresh_ms, 1000),
                              ("kafka.session_timeout_ms", k.session_timeout_ms, 1000),
                              ("processing.max_stamp_pixels", p.max_stamp_pixels, 64 * 64),
                              ("processing.batch_inflated_bytes", p.batch_inflated_bytes, 1 << 20),
                              ("observability.unacked_timeout_s", o.unacked_timeout_s, 1.0),
                              ("observability.no_assignment_timeout_s", o.no_assignment_timeout_s, 1.0)):
        if value < low:
            raise ConfigError(f"{where} must be at least {low:g}")
    if p.batch_inflated_bytes < p.batch_size * INFLATED_BYTES_PER_ALERT:
        raise ConfigError(f"processing.batch_inflated_bytes must be at least batch_size x {INFLATED_BYTES_PER_ALERT} "
                          "(a real ZTF alert's three stamps inflate to ~60 kB): real alerts would lose their cutouts")
    if max(k.input_max_bytes, k.output_max_bytes, k.dlq_max_bytes) > 1_000_000_000:
        raise ConfigError("kafka.*_max_bytes must be at most 1000000000 (librdkafka's limit)")


MAX_HISTORY_RADIUS_ARCSEC = 60.0  # the zone height of broker_plugin.history.sky: the largest radius it serves


def _validate_history(h: HistoryConfig) -> None:
    if h.backend not in ("none", "sqlite", "postgresql"):
        raise ConfigError(f"history.backend must be none, sqlite or postgresql, got {h.backend!r}")
    if (h.backend, bool(h.path)) == ("sqlite", False):
        raise ConfigError("history.backend sqlite needs history.path (a file)")
    if h.backend == "postgresql" and not (h.url or "").startswith(("postgresql://", "postgres://")):
        raise ConfigError("history.backend postgresql needs history.url (postgresql://USER@HOST:PORT/DB)")
    if not (math.isfinite(h.radius_arcsec) and 0.0 < h.radius_arcsec <= MAX_HISTORY_RADIUS_ARCSEC):
        raise ConfigError(f"history.radius_arcsec must be in (0, {MAX_HISTORY_RADIUS_ARCSEC:g}]")
    if h.window_days is not None and not (math.isfinite(h.window_days) and h.window_days > 0):
        raise ConfigError("history.window_days must be a positive number of days (or null: no limit)")


def parse_time_ms(value: str, where: str = "time") -> int:
    """Epoch milliseconds of ``value``: an integer (epoch ms) or an ISO-8601 date/time.

    Why here: the replay window is validated at start-up like every other setting. A time without
    a zone is UTC (alert streams and Kafka timestamps are UTC); ``Z`` is accepted on Python 3.10.
    """
    text = str(value).strip()
    if re.fullmatch(r"-?\d+", text):
        return int(text)
    try:
        parsed = _dt.datetime.fromisoformat(text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text)
    except ValueError:
        raise ConfigError(f"{where}: {value!r} is neither epoch milliseconds nor an ISO-8601 time "
                          "(e.g. 2024-05-01T00:00:00Z)") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=_dt.timezone.utc)
    return round(parsed.timestamp() * 1000)


