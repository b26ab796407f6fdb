"""Typed errors. Each carries a short machine-readable ``reason`` so that rejects files and
dead-letter headers can be grouped and acted on, and a human message saying what to do."""

from __future__ import annotations


class BalBrokerError(Exception):
    """Base class of every error the plugin raises on purpose."""

    reason: str = "error"

    def __init__(self, message: str, *, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class DecodeError(BalBrokerError):
    """A message could not be turned into an :class:`~broker_plugin.alert.Alert`.

    ``reason`` is one of a small fixed vocabulary (see :data:`DECODE_REASONS`), so that
    operators can count rejects by cause.
    """

    reason = "decode_error"


#: The reasons a DecodeError may carry; tests check that corrupt inputs map onto distinct ones.
DECODE_REASONS = (
    "empty",  # zero-length message or file
    "truncated",  # the bytes end before the record does
    "bad_magic",  # neither an Avro container nor a Confluent wire-format message
    "unknown_schema_id",  # wire-format schema id not shipped and not in the registry
    "bad_schema",  # embedded writer schema cannot be parsed
    "corrupt_avro",  # the Avro body is not valid for its schema
    "unknown_alert_type",  # a valid Avro record that is neither a ZTF nor a Rubin alert
    "missing_field",  # a required alert field is absent or null
    "bad_value",  # a required field holds an impossible value
    "multiple_records",  # a container with other than one alert where one is expected
    "too_large",  # message or decompressed block above the decoder's size limit (corrupt length or bomb)
)


class ConfigError(BalBrokerError):
    """Bad configuration or command-line usage: exit status 2 with one clear line."""

    reason = "config_error"


class BundleError(BalBrokerError):
    """The model bundle is missing, tampered with, or disagrees with this plugin's feature code."""

    reason = "bundle_error"
