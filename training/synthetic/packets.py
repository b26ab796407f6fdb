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

import gzip
import io
import math

import numpy as np

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
    "fallback_encode_stamp",
    "fallback_render_triplet",
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


# The two stand-ins below are no longer used by the generator (stamps and
# broker_plugin.photometry.cutouts are always importable in an install); they stay only because
# tests/test_synthetic_packets.py::test_stamp_fallbacks_work calls them. Delete them with that test.


def fallback_render_triplet(kind: str, mag: float, rng: np.random.Generator, size: int = 63,
                            ref_mag: float | None = None) -> dict[str, np.ndarray]:
    """Minimal stand-in for ``stamps.render_triplet``: Gaussian PSFs on a noisy sky (unused; see above)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size // 2
    fwhm = float(rng.uniform(1.5, 3.0))
    s = fwhm / 2.3548
    psf = np.exp(-0.5 * ((x - c) ** 2 + (y - c) ** 2) / s**2) / (2 * np.pi * s * s)
    zp = 26.2
    f_sci = 10 ** (-0.4 * (mag - zp))
    f_ref = 10 ** (-0.4 * (ref_mag - zp)) if ref_mag is not None and np.isfinite(ref_mag) else 0.0
    sky = float(rng.uniform(60, 350))
    sci = sky + f_sci * psf + rng.normal(0, math.sqrt(sky), (size, size))
    ref = sky + f_ref * psf + rng.normal(0, math.sqrt(sky) / 4, (size, size))
    return {"science": sci.astype(np.float32), "template": ref.astype(np.float32),
            "difference": (sci - ref).astype(np.float32)}


def fallback_encode_stamp(arr: np.ndarray, *, compress: bool = True) -> bytes:
    """Minimal stand-in for ``broker_plugin.photometry.cutouts.encode_stamp`` (unused; see above)."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(np.asarray(arr, dtype=np.float32)).writeto(buf)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw
