"""The shipped deployment files stay in step with the typed configuration and the CLI."""

from __future__ import annotations

from pathlib import Path

import yaml

from broker_plugin.config import load_config

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"


def test_compose_config_is_valid() -> None:
    cfg = load_config(DEPLOY / "compose" / "config.yaml", environ={})
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert cfg.kafka.input_pattern is not None


def test_kubernetes_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    data = yaml.safe_load(cm["data"]["config.yaml"])
    ca = tmp_path / "ca.crt"  # the Secret mounts it in the pod; here a stand-in file
    ca.write_text("stand-in")
    data["kafka"]["ssl_ca_location"] = str(ca)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    cfg = load_config(path, environ={"BAL_BROKER__KAFKA__SASL_PASSWORD": "from-secret"})
    assert cfg.kafka.security_protocol == "SASL_SSL"
    assert cfg.kafka.sasl_password == "from-secret"


def test_deployment_takes_the_password_from_the_secret() -> None:
    docs = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    container = docs["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    assert env["BAL_BROKER__KAFKA__SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]["name"] == "bal-broker-kafka"
    assert container["args"][:2] == ["run", "--config"]
    assert container["securityContext"]["allowPrivilegeEscalation"] is False


def test_compose_runs_the_plugin_against_kraft_kafka() -> None:
    compose = yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())
    kafka_env = compose["services"]["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert compose["services"]["bal-broker"]["command"][0] == "run"
