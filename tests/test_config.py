"""The typed configuration: every mistake an operator can make is one ConfigError line."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_plugin.config import ServiceConfig, load_config
from broker_plugin.errors import ConfigError


@pytest.fixture
def config_file(tmp_path: Path):
    def write(text: str) -> Path:
        p = tmp_path / "config.yaml"
        p.write_text(text)
        return p

    return write


def test_minimal_config_fills_defaults(config_file) -> None:
    cfg = load_config(config_file("kafka:\n  input_topics: [ztf_alerts]\n"), environ={})
    assert isinstance(cfg, ServiceConfig)
    assert cfg.kafka.input_topics == ("ztf_alerts",)
    assert cfg.kafka.session_timeout_ms == 6000
    assert cfg.processing.batch_size == 500


def test_environment_overrides_keep_types(config_file) -> None:
    env = {
        "BAL_BROKER__KAFKA__BOOTSTRAP_SERVERS": "kafka:9093",
        "BAL_BROKER__PROCESSING__BATCH_SIZE": "64",
        "BAL_BROKER__PROCESSING__DROP_CUTOUTS": "true",
        "BAL_BROKER__KAFKA__SASL_PASSWORD": "s3cret",
        "UNRELATED": "x",
    }
    cfg = load_config(config_file("kafka:\n  input_topics: [a]\n"), environ=env)
    assert cfg.kafka.bootstrap_servers == "kafka:9093"
    assert cfg.processing.batch_size == 64
    assert cfg.processing.drop_cutouts is True
    assert cfg.kafka.sasl_password == "s3cret"


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("kafka:\n  input_topics: [a]\n  bootstrap_server: x\n", "unknown configuration key kafka.bootstrap_server"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  batch_size: many\n", "processing.batch_size"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  candidate_threshold: 1.5\n", "candidate_threshold"),
        ("kafka:\n  input_topics: [a]\nmodels:\n  bundle: /nonexistent/bundle\n", "models.bundle"),
        ("kafka: {}\n", "input_topics or input_pattern"),
        ("kafka:\n  input_pattern: '(['\n", "input_pattern"),
        ("kafka:\n  input_topics: [a]\n  security_protocol: SASL_SSL\n", "SASL needs"),
        ("kafka:\n  input_topics: [a]\n  output_topic: x\n  candidate_topic: x\n", "three different topics"),
        ("- just\n- a list\n", "mapping"),
        ("kafka: [\n", "not valid YAML"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  drop_cutouts: 1\n", "true or false"),
    ],
)
def test_bad_configuration_is_one_clear_line(config_file, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config_file(text), environ={})
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_missing_file_is_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml", environ={})


def test_bad_environment_override_is_rejected(config_file) -> None:
    with pytest.raises(ConfigError, match=r"unknown configuration key kafka\.nope"):
        load_config(config_file("kafka:\n  input_topics: [a]\n"), environ={"BAL_BROKER__KAFKA__NOPE": "1"})


def test_time_window_accepts_iso_and_epoch_ms(config_file) -> None:
    from broker_plugin.config import parse_time_ms

    cfg = load_config(config_file("kafka:\n  input_topics: [a]\nprocessing:\n  time_from: 2024-05-01T00:00:00Z\n"
                                  "  time_to: 1714608000000\n"), environ={})
    assert parse_time_ms(cfg.processing.time_from) == 1714521600000  # YAML's datetime kept as ISO text
    assert parse_time_ms(cfg.processing.time_to) == 1714608000000
    assert parse_time_ms("2024-05-01") == parse_time_ms("2024-05-01T00:00:00+00:00")  # no zone: UTC
    assert cfg.processing.candidate_threshold is None  # the bundle's own threshold unless set


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("processing:\n  time_from: yesterday\n", "processing.time_from"),
        ("processing:\n  time_from: '2024-05-02'\n  time_to: '2024-05-01'\n", "is after processing.time_to"),
    ],
)
def test_bad_time_window_is_one_line(config_file, text: str, needle: str) -> None:
    with pytest.raises(ConfigError, match=needle):
        load_config(config_file("kafka:\n  input_topics: [a]\n" + text), environ={})
