"""Credentials in URLs never reach a message, a header or a log line."""

from __future__ import annotations

import pytest

from broker_plugin.redact import redact_url, url_secrets
from broker_plugin.stream.schema_registry import SchemaRegistryWriter


@pytest.mark.parametrize(("url", "shown"), [
    ("https://key:s3cr3t@psrc-1.confluent.cloud/schema-registry/", "https://key:***@psrc-1.confluent.cloud/schema-registry/"),
    ("postgresql://bal:pa%40ss@db:5432/bal", "postgresql://bal:***@db:5432/bal"),
    ("http://registry:8081", "http://registry:8081"),
    ("not a url", "not a url"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_url_secrets_names_the_password_and_the_pair() -> None:
    assert url_secrets("https://key:s3cr3t@host/") == ["s3cr3t", "key:s3cr3t"]
    assert url_secrets("https://host/") == [] and url_secrets(None) == []


def test_a_registry_error_never_shows_the_password() -> None:
    from broker_plugin.broker.tansu import find_free_port

    client = SchemaRegistryWriter(f"http://user:s3cr3t-value@127.0.0.1:{find_free_port()}/", timeout_s=1.0)
    with pytest.raises(Exception) as err:
        client.register("subject-value", "{\"type\": \"string\"}")
    assert "s3cr3t-value" not in str(err.value)


def test_registry_credentials_are_registered_secrets_and_stay_out_of_dlq_messages() -> None:
    from broker_plugin.config import load_config
    from broker_plugin.decode.schemas import RegistryClient
    from broker_plugin.errors import DecodeError
    from broker_plugin.stream.clients import secrets_of

    url = "http://reader:very-secret-pw@127.0.0.1:9/registry"
    cfg = load_config(overrides={"kafka": {"input_topics": ["t"], "schema_registry_url": url}}, environ={})
    assert "very-secret-pw" in secrets_of(cfg)
    with pytest.raises(DecodeError) as err:
        RegistryClient(url, timeout_s=0.5).get(4242)
    assert "very-secret-pw" not in str(err.value) and "reader:***@" in str(err.value)
