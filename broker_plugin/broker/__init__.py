"""Broker tooling: the embedded Kafka-compatible broker (Tansu) and publishing archives to a topic.

Used by ``bal-broker broker`` and ``bal-broker publish``, by the demo and by the tests; the stream
runner does not depend on it (it talks to any Kafka).
"""
