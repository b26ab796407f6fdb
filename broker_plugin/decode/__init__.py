"""Alert decoding: message bytes -> :class:`~broker_plugin.alert.Alert` (the start of the one data path).

Public API::

    from broker_plugin.decode import decode_alert, configure, Decoder
    alert = decode_alert(message_bytes)          # raises DecodeError(reason=...) on bad input
    configure(registry_url="http://registry:8081")  # optional fallback for unshipped schema ids
    Decoder(registry_url=None).decode(data)      # an independent decoder with its own settings

Also: :func:`decode_container_records` (every record of a container, for archives and tests),
:func:`alert_from_record` (an already-decoded record, e.g. a Parquet row, through the same
normalisation), :data:`META_FIELDS` (the keys of ``Alert.meta``, fixed order).

Modules: :mod:`.avro` framing and codecs, :mod:`.schemas` schema caches and the registry client,
:mod:`.ztf` and :mod:`.rubin` record -> Alert, :mod:`.decoder` the pipeline.
"""

from __future__ import annotations

from typing import Any

from broker_plugin.alert import Alert

from .decoder import DEFAULT_MAX_MESSAGE_BYTES, META_FIELDS, Decoder, alert_from_record, detect_survey
from .rubin import LSST_META_FIELDS
from .ztf import ZTF_META_FIELDS

__all__ = [
    "DEFAULT_MAX_MESSAGE_BYTES",
    "LSST_META_FIELDS",
    "META_FIELDS",
    "ZTF_META_FIELDS",
    "Decoder",
    "alert_from_record",
    "configure",
    "decode_alert",
    "decode_container_records",
    "default_decoder",
    "detect_survey",
]

_default = Decoder()


def default_decoder() -> Decoder:
    """The module-level Decoder that :func:`decode_alert` uses."""
    return _default


def configure(registry_url: str | None = None, *, max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
              registry_timeout_s: float = 5.0) -> Decoder:
    """Replace the default decoder's settings (e.g. from the service configuration at start-up)."""
    global _default
    _default = Decoder(registry_url, max_message_bytes=max_message_bytes, registry_timeout_s=registry_timeout_s)
    return _default


def decode_alert(data: bytes) -> Alert:
    """Decode one alert message (Avro container with one alert, or Confluent wire format).

    Raises :class:`~broker_plugin.errors.DecodeError` whose ``reason`` is one of
    :data:`~broker_plugin.errors.DECODE_REASONS`; never any other exception for bad bytes.
    """
    return _default.decode(data)


def decode_container_records(data: bytes) -> list[Any]:
    """Every record of an Avro container (or the one record of a wire-format message), undecorated."""
    return _default.records(data)
