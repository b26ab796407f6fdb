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
        ("kafka:\n  input_topics: [a]\n  bootstrap_servers: 'not a host::::'\n", "kafka.bootstrap_servers"),
        ("kafka:\n  input_topics: [a]\n  bootstrap_servers: 'kafka:99999'\n", "kafka.bootstrap_servers"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  batch_timeout_s: .nan\n", "finite"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  error_window_s: .inf\n", "finite"),
        ("kafka:\n  input_topics: [a]\nprocessing:\n  batch_timeout_s: -1\n", "batch_timeout_s"),
        ("kafka:\n  input_topics: [a]\n  output_max_bytes: -5\n", "kafka.output_max_bytes"),
        ("kafka:\n  input_topics: [a]\nobservability:\n  unacked_timeout_s: 0\n", "unacked_timeout_s"),
        ("kafka:\n  input_topics: [a]\nhistory:\n  radius_arcsec: .nan\n", "finite"),
        ("kafka:\n  input_topics: [a]\n  session_timeout_ms: -3\n", "session_timeout_ms"),
    ],
)
def test_bad_configuration_is_one_clear_line(config_file, text: str, needle: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(config_file(text), environ={})
    message = str(err.value)
    assert needle in message
    assert "\n" not in message


def test_a_config_file_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes("kafka:\n  input_topics: [caf\xe9]\n".encode("latin-1"))
    with pytest.raises(ConfigError, match="not UTF-8") as err:
        load_config(path, environ={})
    assert "\n" not in str(err.value)


def test_nan_from_the_environment_is_refused(config_file) -> None:
    env = {"BAL_BROKER__PROCESSING__BATCH_TIMEOUT_S": ".nan"}
    with pytest.raises(ConfigError, match=r"processing\.batch_timeout_s"):
        load_config(config_file("kafka:\n  input_topics: [a]\n"), environ=env)


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


@pytest.mark.parametrize("raw", ["0123456", "0x1F", "null", "pa ss #x", "[a, b]", "{k: v}", "", "true", "1e3"])
def test_string_settings_take_the_environment_verbatim(config_file, raw: str) -> None:
    """A Secret's bytes reach librdkafka unchanged: YAML would read 0123456 as 42798, drop '#x'..."""
    env = {"BAL_BROKER__KAFKA__SASL_PASSWORD": raw, "BAL_BROKER__KAFKA__SASL_USERNAME": raw}
    cfg = load_config(config_file("kafka:\n  input_topics: [a]\n"), environ=env)
    assert cfg.kafka.sasl_password == raw
    assert cfg.kafka.sasl_username == raw


def test_a_type_error_never_shows_the_value(config_file) -> None:
    """A wrong type in a setting that may hold a secret names the key and the type, never the value."""
    text = "kafka:\n  input_topics: [a]\n  sasl_password: [hunter2, s3cret]\n"
    with pytest.raises(ConfigError) as err:
        load_config(config_file(text), environ={})
    assert "sasl_password" in str(err.value)
    assert "hunter2" not in str(err.value) and "s3cret" not in str(err.value)


def test_typed_settings_from_the_environment_are_still_parsed(config_file) -> None:
    env = {"BAL_BROKER__PROCESSING__BATCH_SIZE": "0x20", "BAL_BROKER__KAFKA__INPUT_TOPICS": "[x, y]"}
    cfg = load_config(config_file("kafka:\n  input_topics: [a]\n"), environ=env)
    assert cfg.processing.batch_size == 32
    assert cfg.kafka.input_topics == ("x", "y")


@pytest.mark.parametrize("pattern", [r"^ztf_\d{8}_programid1$", r"^lsst-\w+$", r"^a\sb$"])
def test_patterns_librdkafka_cannot_read_are_refused(config_file, pattern: str) -> None:
    """Python's re accepts \\d; librdkafka's engine matches nothing with it (checked on the embedded broker)."""
    with pytest.raises(ConfigError, match="librdkafka's regex has no"):
        load_config(config_file(f"kafka:\n  input_pattern: '{pattern}'\n"), environ={})


@pytest.mark.parametrize("pattern", [r"^ztf_[0-9]{8}_programid1$", r"^lsst-alerts-v[0-9]+$", r"^a\.b\\d$"])
def test_patterns_librdkafka_reads_are_accepted(config_file, pattern: str) -> None:
    cfg = load_config(config_file(f"kafka:\n  input_pattern: '{pattern}'\n"), environ={})
    assert cfg.kafka.input_pattern == pattern


@pytest.mark.parametrize("path", ["deploy/compose/config.yaml"])
def test_shipped_configurations_use_readable_patterns(path: str) -> None:
    cfg = load_config(Path(__file__).resolve().parent.parent / path, environ={})
    assert cfg.kafka.input_pattern is None or "\\d" not in cfg.kafka.input_pattern
