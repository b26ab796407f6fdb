"""Physically motivated synthetic data: quasars (BAL and non-BAL), contaminants, light curves,
spectra and survey-shaped alert packets, for training, the demo and the benchmarks.

Modules
    :mod:`.population`    drawing objects; with :mod:`.filters` (bands, wavelengths),
                          :mod:`.bal_effect` (the explicit BAL light-curve effect) and
                          :mod:`.drw_table` (the Stripe 82 DRW parameters)
    :mod:`.lightcurves`   the Ivezic+2019 error model, detections, whole-survey simulation; with
                          :mod:`.variability` (exact DRW, contaminant models) and :mod:`.cadences`
    :mod:`.spectra`       SDSS-like C IV window spectra, BAL troughs; :mod:`.balnicity` the BI
    :mod:`.ztf_packets`   ZTF Avro containers (schemas, encoders: :mod:`.avro_schemas`)
    :mod:`.rubin_packets` Rubin wire-format messages (shared parts: :mod:`.packet_common`)
    :mod:`.night`         nights of alerts (:mod:`.packets` re-exports all three)
    :mod:`.dataset`       the training set used by ``bal-broker train --synthetic N``
    :mod:`.avrofast`      the compiled Avro encoder the packet writers use
    :mod:`.stamps`        63x63 cutout triplets

Everything is deterministic given a seed (numpy ``Generator``/``SeedSequence``).
"""

from __future__ import annotations

from .dataset import TrainingSet, generate_training_set
from .night import generate_alert, generate_night, iter_night, simulate_alert, write_night
from .packet_common import AlertContext
from .population import (
    CLASSES,
    DEFAULT_BAL_FRACTION,
    DEFAULT_STREAM_MIX,
    BalLightCurveEffect,
    SimObject,
    draw_object,
)
from .rubin_packets import write_rubin_packet
from .spectra import Spectrum, balnicity_index, balnicity_index_wave, generate_spectrum
from .ztf_packets import write_ztf_packet

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
