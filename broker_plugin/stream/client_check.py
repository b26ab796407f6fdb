"""Checking the Kafka client settings as librdkafka reads them, before the service starts.

Why: librdkafka validates its configuration only when a client is created. Until now that was deep in
start-up, so an unknown property in ``consumer_extra``/``producer_extra`` or a wrong SSL key password
ended the service as an "internal error" traceback (exit 1), and an orchestrator restarted it forever.
Creating a consumer and a producer handle from the very settings the service will use takes a few
milliseconds, touches no broker state (the handles are closed before they join a group or produce)
and turns each such mistake into one line and exit status 2.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from broker_plugin.config import ServiceConfig
from broker_plugin.errors import ConfigError


def _settings(cfg: ServiceConfig) -> dict[str, Any]:
    k = cfg.kafka
    return {f.name: getattr(k, f.name) for f in dataclasses.fields(k)}


def _reason(exc: BaseException) -> str:
    err = exc.args[0] if exc.args else None
    text = err.str() if hasattr(err, "str") else str(exc)
    return " ".join(str(text).split())[:300]


def check_client_settings(cfg: ServiceConfig) -> None:
    """Raise :class:`ConfigError` (one line) when librdkafka refuses the consumer or producer settings."""
    from confluent_kafka import Consumer, KafkaException, Producer

    from broker_plugin.stream.kafka_config import consumer_config, producer_config

    settings = _settings(cfg)
    quiet = {"log_level": 0, "logger": lambda *_: None}
    for kind, build in (("consumer", consumer_config), ("producer", producer_config)):
        conf = {**build(settings), **quiet}
        try:
            client = Consumer(conf) if kind == "consumer" else Producer(conf)
        except (KafkaException, ValueError, TypeError) as exc:
            extra = "consumer_extra" if kind == "consumer" else "producer_extra"
            raise ConfigError(f"kafka: librdkafka refuses the {kind} settings ({_reason(exc)}); check kafka.{extra} "
                              "and the ssl_*/sasl_* settings") from None
        if kind == "consumer":
            client.close()
        else:
            client.flush(0)
        del client
