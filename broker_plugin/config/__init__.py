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

from broker_plugin.config.loading import load_config
from broker_plugin.config.sections import (
    ENV_PREFIX,
    MAX_HISTORY_RADIUS_ARCSEC,
    HistoryConfig,
    KafkaConfig,
    ModelsConfig,
    ObservabilityConfig,
    ProcessingConfig,
    ServiceConfig,
    parse_time_ms,
)

__all__ = ["ENV_PREFIX", "MAX_HISTORY_RADIUS_ARCSEC", "HistoryConfig", "KafkaConfig", "ModelsConfig",
           "ObservabilityConfig", "ProcessingConfig", "ServiceConfig", "load_config", "parse_time_ms"]
