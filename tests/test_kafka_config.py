"""librdkafka settings: at-least-once defaults that cannot be overridden away, and no leaked secrets.

Why: a single wrong property (auto offset store, acks=1) silently breaks the delivery guarantee,
and a config dict printed at start-up is the classic way a SASL password ends up in a log.
"""

from __future__ import annotations

import dataclasses

import pytest

from broker_plugin.errors import ConfigError
from broker_plugin.stream.kafka_config import (
    REDACTED,
    admin_config,
    consumer_config,
    producer_config,
    redact,
)

SECURE = {
    "bootstrap_servers": "kafka-1:9093,kafka-2:9093",
    "group_id": "bal",
    "security_protocol": "sasl_ssl",
    "ssl_ca_location": "/etc/kafka/ca.pem",
    "ssl_certificate_location": "/etc/kafka/client.pem",
    "ssl_key_location": "/etc/kafka/client.key",
    "ssl_key_password": "keypass",
    "sasl_mechanism": "SCRAM-SHA-512",
    "sasl_username": "bal",
    "sasl_password": "hunter2",
    "output_topic": "bal-annotated",  # application key: ignored here
    "consumer_extra": {"fetch.wait.max.ms": 50},
    "producer_extra": {"linger.ms": 20},
}


def test_consumer_defaults_are_at_least_once() -> None:
    config = consumer_config(bootstrap="127.0.0.1:9092", group_id="g")
    assert config["enable.auto.offset.store"] is False
    assert config["enable.auto.commit"] is True
    assert config["session.timeout.ms"] == 6000
    assert config["heartbeat.interval.ms"] < config["session.timeout.ms"] / 2
    assert config["auto.offset.reset"] == "earliest"


def test_producer_defaults_are_idempotent_acks_all() -> None:
    config = producer_config(bootstrap="127.0.0.1:9092")
    assert config["enable.idempotence"] is True and config["acks"] == "all"
    assert "group.id" not in config
    assert producer_config(bootstrap="b:1", transactional_id="bal-0")["transactional.id"] == "bal-0"


def test_security_settings_pass_through_to_every_client() -> None:
    consumer, producer, admin = consumer_config(SECURE), producer_config(SECURE), admin_config(SECURE)
    for config in (consumer, producer, admin):
        assert config["bootstrap.servers"] == "kafka-1:9093,kafka-2:9093"
        assert config["security.protocol"] == "SASL_SSL"
        assert config["ssl.key.password"] == "keypass" and config["sasl.password"] == "hunter2"
        assert config["sasl.mechanism"] == "SCRAM-SHA-512" and config["ssl.ca.location"] == "/etc/kafka/ca.pem"
        assert "output_topic" not in config and "output.topic" not in config
    assert consumer["fetch.wait.max.ms"] == 50 and "linger.ms" not in consumer
    assert producer["linger.ms"] == 20 and "fetch.wait.max.ms" not in producer
    assert "group.id" not in producer and "group.id" not in admin


def test_accepts_a_kafka_config_dataclass_as_dict() -> None:
    from broker_plugin.config import KafkaConfig

    settings = dataclasses.asdict(KafkaConfig(input_topics=("ztf",)))
    config = consumer_config(settings)
    assert config["group.id"] == "bal-broker" and config["security.protocol"] == "PLAINTEXT"
    assert "sasl.password" not in config  # None means unset


def test_overrides_that_break_the_guarantee_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"enable\.auto\.offset\.store"):
        consumer_config({"enable.auto.offset.store": True}, bootstrap="b:1", group_id="g")
    with pytest.raises(ConfigError, match="acks"):
        producer_config({"acks": 1}, bootstrap="b:1")
    with pytest.raises(ConfigError, match="unknown Kafka setting 'bootstrap_server'"):
        producer_config({"bootstrap_server": "b:1"})
    with pytest.raises(ConfigError, match=r"group\.id"):
        consumer_config(bootstrap="b:1")


def test_redact_masks_secrets_and_keeps_the_rest() -> None:
    config = consumer_config(SECURE) | {
        "sasl.oauthbearer.client.secret": "s3cret",
        "sasl.oauthbearer.config": "principal=bal secret=xyz",
        "sasl.oauthbearer.token.endpoint.url": "https://idp/token",
        "ssl.key.pem": "-----BEGIN PRIVATE KEY-----\nabc",
        "ssl.certificate.pem": "-----BEGIN CERTIFICATE-----\nabc",
        "ssl.keystore.password": "ks",
        "basic.auth.user.info": "user:pw",
        "odd.name": "-----BEGIN ENCRYPTED PRIVATE KEY-----\nabc",
    }
    safe = redact(config)
    for key in ("sasl.password", "ssl.key.password", "sasl.oauthbearer.client.secret", "sasl.oauthbearer.config",
                "ssl.key.pem", "ssl.keystore.password", "basic.auth.user.info", "odd.name"):
        assert safe[key] == REDACTED, key
    assert safe["sasl.username"] == "bal" and safe["ssl.key.location"] == "/etc/kafka/client.key"
    assert safe["sasl.oauthbearer.token.endpoint.url"] == "https://idp/token"
    assert safe["ssl.certificate.pem"].startswith("-----BEGIN CERTIFICATE")
    assert "hunter2" not in repr(safe) and "keypass" not in repr(safe)
    assert config["sasl.password"] == "hunter2"  # the original is untouched
    nested = redact({"kafka": {"sasl_password": "pw", "consumer_extra": {"ssl.key.password": "k"}}})
    assert nested == {"kafka": {"sasl_password": REDACTED, "consumer_extra": {"ssl.key.password": REDACTED}}}
