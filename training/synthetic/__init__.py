"""Physically motivated synthetic data: quasars (BAL and non-BAL), contaminants, light curves,
spectra and survey-shaped alert packets, for training, the demo and the benchmarks.

Modules
    :mod:`.population`   drawing objects (S82 DRW parameters, the explicit BAL light-curve effect)
    :mod:`.lightcurves`  exact DRW, ZTF/Rubin cadences, the Ivezic+2019 error model, detections
    :mod:`.spectra`      SDSS-like C IV window spectra, BAL troughs, the balnicity index
    :mod:`.packets`      ZTF Avro containers and Rubin wire-format messages; nights of alerts
    :mod:`.dataset`      the training set used by ``bal-broker train --synthetic N``
    :mod:`.avrofast`     the compiled Avro encoder the packet writer uses
    :mod:`.stamps`       63x63 cutout triplets (written separately; imported lazily by packets)

Everything is deterministic given a seed (numpy ``Generator``/``SeedSequence``).
"""

from __future__ import annotations

from .dataset import TrainingSet, generate_training_set
from .packets import (
    AlertContext,
    generate_alert,
    generate_night,
    iter_night,
    simulate_alert,
    write_night,
    write_rubin_packet,
    write_ztf_packet,
)
from .population import (
    CLASSES,
    DEFAULT_BAL_FRACTION,
    DEFAULT_STREAM_MIX,
    BalLightCurveEffect,
    SimObject,
    draw_object,
)
from .spectra import Spectrum, balnicity_index, balnicity_index_wave, generate_spectrum

__all__ = [
    "CLASSES",
    "DEFAULT_BAL_FRACTION",
    "DEFAULT_STREAM_MIX",
    "AlertContext",
    "BalLightCurveEffect",
    "SimObject",
    "Spectrum",
    "TrainingSet",
    "balnicity_index",
    "balnicity_index_wave",
    "draw_object",
    "generate_alert",
    "generate_night",
    "generate_spectrum",
    "generate_training_set",
    "iter_night",
    "simulate_alert",
    "write_night",
    "write_rubin_packet",
    "write_ztf_packet",
]
