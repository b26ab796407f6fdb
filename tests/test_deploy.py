"""The shipped deployment files stay in step with the typed configuration and the CLI."""

from __future__ import annotations

import re
from pathlib import Path
from urllib.parse import urlsplit

import yaml

from broker_plugin.config import load_config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"

#: docker compose's ``${VAR}`` / ``${VAR:-default}`` interpolation, enough for the shipped file.
_COMPOSE_VAR = re.compile(r"\$\{(\w+)(?::-([^}]*))?\}")


def _interpolate(value: str, env: dict[str, str]) -> str:
    return _COMPOSE_VAR.sub(lambda m: env.get(m.group(1), m.group(2) or ""), value)


def _compose() -> dict:
    return yaml.safe_load((DEPLOY / "compose" / "docker-compose.yml").read_text())


def _configmap_data() -> dict:
    cm = yaml.safe_load((DEPLOY / "k8s" / "configmap.yaml").read_text())
    return yaml.safe_load(cm["data"]["config.yaml"])


def _has_password(url: str) -> bool:
    return urlsplit(url).password is not None


def test_compose_config_is_valid() -> None:
    cfg = load_config(DEPLOY / "compose" / "config.yaml", environ={})
    assert cfg.kafka.bootstrap_servers == "kafka:9092"
    assert cfg.kafka.input_pattern is not None


def test_kubernetes_configmap_holds_a_valid_config(tmp_path: Path) -> None:
    data = _configmap_data()
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
    compose = _compose()
    kafka_env = compose["services"]["kafka"]["environment"]
    assert "controller" in kafka_env["KAFKA_PROCESS_ROLES"]
    assert compose["services"]["bal-broker"]["command"][0] == "run"


# --- the shared history store: several replicas in one consumer group need one PostgreSQL ---------


def test_compose_config_selects_postgresql_without_a_password() -> None:
    cfg = load_config(DEPLOY / "compose" / "config.yaml", environ={})
    assert cfg.history.backend == "postgresql"
    assert urlsplit(cfg.history.url).hostname == "postgres"
    assert not _has_password(cfg.history.url)


def test_compose_runs_postgres_and_passes_the_url_with_its_password() -> None:
    services = _compose()["services"]
    pg = services["postgres"]
    assert pg["image"] == "postgres:16"
    assert pg["environment"]["POSTGRES_USER"] == "bal"
    assert pg["environment"]["POSTGRES_DB"] == "bal"
    assert "${POSTGRES_PASSWORD:-" in pg["environment"]["POSTGRES_PASSWORD"]  # env var, dev default
    assert "pg_isready" in " ".join(pg["healthcheck"]["test"])
    volume = pg["volumes"][0].split(":")[0]
    assert volume in _compose()["volumes"]  # a named volume, not a bind mount

    broker = services["bal-broker"]
    assert broker["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert broker["depends_on"]["kafka"]["condition"] == "service_healthy"
    raw_url = broker["environment"]["BAL_BROKER__HISTORY__URL"]
    assert "${POSTGRES_PASSWORD" in raw_url  # the same variable as the postgres service

    for shell_env in ({}, {"POSTGRES_PASSWORD": "s3cret"}):
        expected = _interpolate(pg["environment"]["POSTGRES_PASSWORD"], shell_env)
        environ = {k: _interpolate(str(v), shell_env) for k, v in broker["environment"].items()
                   if k.startswith("BAL_BROKER__")}
        cfg = load_config(DEPLOY / "compose" / "config.yaml", environ=environ)
        url = urlsplit(cfg.history.url)
        assert cfg.history.backend == "postgresql"
        assert (url.username, url.password, url.hostname, url.port, url.path) == ("bal", expected, "postgres",
                                                                                   5432, "/bal")


def test_kubernetes_configmap_selects_postgresql_and_the_secret_supplies_the_url(tmp_path: Path) -> None:
    data = _configmap_data()
    assert data["history"]["backend"] == "postgresql"
    assert not _has_password(data["history"]["url"])
    ca = tmp_path / "ca.crt"
    ca.write_text("stand-in")
    data["kafka"]["ssl_ca_location"] = str(ca)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    assert load_config(path, environ={}).history.backend == "postgresql"  # valid without the Secret, too

    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.yaml").read_text())
    url = secret["stringData"]["history-url"]
    assert "REPLACE-ME" in url  # a placeholder, never a real credential
    cfg = load_config(path, environ={"BAL_BROKER__KAFKA__SASL_PASSWORD": "from-secret",
                                     "BAL_BROKER__HISTORY__URL": url})
    assert cfg.history.backend == "postgresql"
    assert cfg.history.url == url


def test_deployment_takes_the_history_url_from_the_secret() -> None:
    docs = yaml.safe_load((DEPLOY / "k8s" / "deployment.yaml").read_text())
    assert docs["spec"]["replicas"] > 1  # the reason the store must be shared
    container = docs["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e for e in container["env"]}
    ref = env["BAL_BROKER__HISTORY__URL"]["valueFrom"]["secretKeyRef"]
    secret = yaml.safe_load((DEPLOY / "k8s" / "secret.yaml").read_text())
    assert ref["name"] == secret["metadata"]["name"]
    assert ref["key"] in secret["stringData"]


def test_dockerfile_installs_the_postgres_extra() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert re.search(r"pip wheel .*\.\[postgres\]", text)
    assert re.search(r"pip install .*bal-broker\[postgres\]", text)
