"""Typed service configuration: YAML plus environment overrides, validated in one place.

Why one place: operators deploy the service from a ConfigMap and a Secret, and a typo must stop
the service at start-up with one line naming the key, not surface as a librdkafka error an hour
later. Every section is a frozen dataclass; :func:`load_config` checks unknown keys, types and
ranges and raises :class:`~broker_plugin.errors.ConfigError` (exit status 2).

Environment overrides use ``BAL_BROKER__SECTION__KEY`` (double underscores separate levels), e.g.
``BAL_BROKER__KAFKA__BOOTSTRAP_SERVERS=kafka:9092`` or ``BAL_BROKER__KAFKA__SASL_PASSWORD=...``;
values are parsed as YAML scalars so numbers and booleans keep their types. Secrets should come
from the environment (a Kubernetes Secret), never from the committed YAML.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import math
import os
import re
import types
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

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


def _coerce_bool(value: Any, where: str) -> bool:
    """Only a YAML boolean: ``1`` or ``"yes"`` for a flag is more likely a typo than intent."""
    if isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected true or false, got {value!r}")


def _coerce_int(value: Any, where: str) -> int:
    """An integer, never a bool (``True`` is an ``int`` in Python but not in a config file)."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ConfigError(f"{where}: expected an integer, got {value!r}")


def _coerce_float(value: Any, where: str) -> float:
    """A number; an integer widens losslessly to float, a bool is refused."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    raise ConfigError(f"{where}: expected a number, got {value!r}")


def _coerce_str(value: Any, where: str) -> str:
    """A string; numbers and YAML's unquoted dates are turned back into the text that was meant."""
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if isinstance(value, _dt.date):  # YAML reads an unquoted 2024-05-01T00:00:00Z as a datetime
        if isinstance(value, _dt.datetime) and value.tzinfo is None:
            value = value.replace(tzinfo=_dt.timezone.utc)
        return value.isoformat()
    raise ConfigError(f"{where}: expected a string, got {type(value).__name__}")


#: Coercers of the scalar annotations, split out of :func:`_coerce` so each type's rule reads alone.
_SCALAR_COERCERS: dict[Any, Callable[[Any, str], Any]] = {
    bool: _coerce_bool,
    int: _coerce_int,
    float: _coerce_float,
    str: _coerce_str,
}


def _coerce(value: Any, tp: Any, where: str) -> Any:
    """Check ``value`` against the annotation ``tp``; convert only lossless, obvious cases."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                continue
        # The value is never shown: it may be a secret.
        raise ConfigError(f"{where}: expected {_type_name(tp)}, got {type(value).__name__}")
    if origin is tuple:
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list of strings, got {type(value).__name__}")
        return tuple(_coerce(v, typing.get_args(tp)[0], f"{where}[{i}]") for i, v in enumerate(value))
    if origin in (Mapping, dict) or tp is Mapping:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{where}: expected a mapping, got {type(value).__name__}")
        return dict(value)
    scalar = _SCALAR_COERCERS.get(tp)
    if scalar is not None:
        return scalar(value, where)
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, where)
    raise ConfigError(f"{where}: unsupported type {tp!r}")  # pragma: no cover - programming error


def _type_name(tp: Any) -> str:
    return " or ".join(getattr(a, "__name__", str(a)) for a in typing.get_args(tp)) or str(tp)


def _build(cls: type, data: Any, where: str) -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where or 'configuration'}: expected a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown configuration key {prefix}{unknown[0]} (known: {', '.join(sorted(names))})")
    kwargs = {k: _coerce(v, hints[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def _env_target_type(path: list[str]) -> Any:
    """The annotation of the setting an environment path names, or None when it names none."""
    tp: Any = ServiceConfig
    for part in path:
        if not dataclasses.is_dataclass(tp):
            return None
        hints = typing.get_type_hints(tp)
        if part not in hints:
            return None
        tp = hints[part]
    return tp


def _is_text(tp: Any) -> bool:
    """A ``str`` or ``str | None`` setting: its environment value is taken verbatim."""
    if tp is str:
        return True
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args == [str]
    return False


def _env_value(key: str, raw: str, path: list[str]) -> Any:
    """An environment override's value.

    Why not YAML for everything: a password such as ``0123456`` (YAML: the octal 42798), ``0x1F``,
    ``null`` or ``pa ss #x`` (YAML: a comment) must reach librdkafka exactly as the Secret holds it.
    Text settings therefore take the string verbatim; numbers, flags, lists and mappings are read
    as YAML, and a value that is not valid YAML is passed on as the string for type checking.
    """
    if _is_text(_env_target_type(path)):
        return raw
    if raw == "":
        return None
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        return raw


def _apply_env(data: dict[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    for key, raw in environ.items():
        if not key.startswith(ENV_PREFIX):
            continue
        path = [p.lower() for p in key[len(ENV_PREFIX):].split("__") if p]
        if len(path) < 2:
            raise ConfigError(f"environment override {key}: use {ENV_PREFIX}SECTION__KEY")
        value = _env_value(key, raw, path)
        node = data
        for part in path[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"environment override {key}: {part} is not a section")
        node[path[-1]] = value
    return data


def load_config(path: str | Path | None = None, *, overrides: Mapping[str, Any] | None = None,
                environ: Mapping[str, str] | None = None) -> ServiceConfig:
    """Read YAML (if given), apply ``overrides`` (nested dict) and environment variables, validate.

    Raises ConfigError with one line naming the problem: unreadable file, bad YAML, unknown key,
    wrong type or out-of-range value.
    """
    data: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"configuration file not found: {p}")
        try:
            loaded = yaml.safe_load(p.read_text(encoding="utf-8"))
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            at = f" at line {mark.line + 1}" if mark is not None else ""
            raise ConfigError(f"configuration file {p} is not valid YAML{at}") from None
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"configuration file {p} must hold a mapping at the top level")
        data = loaded or {}
    for section, values in (overrides or {}).items():
        if isinstance(values, Mapping):
            data.setdefault(section, {}).update(values)
        else:
            data[section] = values
    data = _apply_env(data, os.environ if environ is None else environ)
    return _build(ServiceConfig, data, "")
