"""Survey-shaped alert packets from simulated objects: the historical import path.

The generator lives in per-survey modules; this module re-exports their public names so that
``from training.synthetic.packets import iter_night`` (training/scorer.py, the tests) keeps working:

    :mod:`.ztf_packets`    ZTF Avro containers (:func:`write_ztf_packet`)
    :mod:`.rubin_packets`  Rubin Confluent wire-format messages (:func:`write_rubin_packet`)
    :mod:`.night`          choosing the alerting epoch; nights of alerts (:func:`write_night`)
    :mod:`.avro_schemas`   the schemas, compiled encoders and record templates
    :mod:`.packet_common`  the alert context, per-epoch truth and cutout stamps both writers share
"""

from __future__ import annotations

from .avro_schemas import (
    RUBIN_SCHEMA_VERSION,
    SYNTHETIC_PI,
    SYNTHETIC_PUBLISHER,
    ZTF_SCHEMA_DIR,
    ZTF_SCHEMA_VERSION,
    avro_container,
    rubin_encoder,
    rubin_schema,
    rubin_schema_id,
    ztf_encoder,
    ztf_schema,
    ztf_schema_json,
)
from .night import (
    DEFAULT_HISTORY_DAYS,
    DEFAULT_NIGHT_MJD,
    generate_alert,
    generate_night,
    iter_night,
    simulate_alert,
    write_night,
)
from .packet_common import AlertContext, gzip_rle, render_cutouts
from .rubin_packets import (
    RUBIN_FORCED_ID_BASE,
    RUBIN_OBJECT_ID_BASE,
    RUBIN_SOURCE_ID_BASE,
    RUBIN_WINDOW_DAYS,
    write_rubin_packet,
)
from .ztf_packets import ZTF_WINDOW_DAYS, write_ztf_packet, ztf_object_id

__all__ = [
    "DEFAULT_HISTORY_DAYS",
    "DEFAULT_NIGHT_MJD",
    "RUBIN_FORCED_ID_BASE",
    "RUBIN_OBJECT_ID_BASE",
    "RUBIN_SCHEMA_VERSION",
    "RUBIN_SOURCE_ID_BASE",
    "RUBIN_WINDOW_DAYS",
    "SYNTHETIC_PI",
    "SYNTHETIC_PUBLISHER",
    "ZTF_SCHEMA_DIR",
    "ZTF_SCHEMA_VERSION",
    "ZTF_WINDOW_DAYS",
    "AlertContext",
    "avro_container",
    "generate_alert",
    "generate_night",
    "gzip_rle",
    "iter_night",
    "render_cutouts",
    "rubin_encoder",
    "rubin_schema",
    "rubin_schema_id",
    "simulate_alert",
    "write_night",
    "write_rubin_packet",
    "write_ztf_packet",
    "ztf_encoder",
    "ztf_object_id",
    "ztf_schema",
    "ztf_schema_json",
]
