"""librdkafka's own verdict on the client settings, before the service starts: one line, exit 2."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin.config import load_config
from broker_plugin.errors import ConfigError
from broker_plugin.stream.client_check import check_client_settings


def _cfg(**kafka: object) -> object:
    return load_config(overrides={"kafka": {"input_topics": ["t"], **kafka}}, environ={})


@pytest.mark.parametrize(("kafka", "needle"), [
    ({"consumer_extra": {"no.such.prop": 1}}, "no.such.prop"),
    ({"producer_extra": {"linger.ms": "soon"}}, "producer"),
    ({"consumer_extra": {"session.timeout.ms": -5}}, "consumer"),
])
def test_properties_librdkafka_refuses_are_one_line(kafka: dict[str, object], needle: str) -> None:
    with pytest.raises(ConfigError, match=needle) as err:
        check_client_settings(_cfg(**kafka))
    assert "\n" not in str(err.value)


def test_good_settings_pass() -> None:
    check_client_settings(_cfg(consumer_extra={"fetch.wait.max.ms": 200}, producer_extra={"linger.ms": 10}))


@pytest.fixture
def encrypted_key(tmp_path: Path) -> tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed")
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=bal-broker-test", "-passout", "pass:right-password"],
                   check=True, capture_output=True)
    return key, cert


def test_a_wrong_ssl_key_password_is_one_line_without_the_password(encrypted_key: tuple[Path, Path]) -> None:
    key, cert = encrypted_key
    ssl = {"security_protocol": "SSL", "ssl_ca_location": str(cert), "ssl_certificate_location": str(cert),
           "ssl_key_location": str(key)}
    check_client_settings(_cfg(**ssl, ssl_key_password="right-password"))
    with pytest.raises(ConfigError, match=r"ssl\.key") as err:
        check_client_settings(_cfg(**ssl, ssl_key_password="wrong-password"))
    assert "wrong-password" not in str(err.value) and "\n" not in str(err.value)


@pytest.mark.timeout(60)
def test_bal_broker_run_exits_2_on_an_unknown_property(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("kafka:\n  input_topics: [a]\n  consumer_extra: {no.such.prop: 1}\nobservability:\n"
                    "  metrics_port: 0\n")
    proc = subprocess.run([sys.executable, "-m", "broker_plugin", "run", "--config", str(path)],
                          capture_output=True, text=True, timeout=50)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "no.such.prop" in proc.stderr
