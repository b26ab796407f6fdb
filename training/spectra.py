"""The spectral branch: SDSS-like spectrum -> fixed rest-frame vector -> kernel-PCA embedding -> p_spec.

This follows the reference study's spectral modality (SCIENCE.md, "The reference study"): keep the C IV
blueshifted region for 1.67 <= z <= 3.6, interpolate over bad pixels, rebin to a common length, reduce
the dimension with kernel PCA. Every choice is made once, so that real spectra (spec-lite files,
:func:`training.catalogues.load_spec_lite`) and synthetic ones (``training.synthetic``) go through the
same code.

Layout: preprocessing in :mod:`training.spectrum_preprocessing` (choices documented there), the
kernel-PCA embedding and its ONNX graph in :mod:`training.spectral_embedding`, the classifier in
:mod:`training.spectral_classifier`. This module re-exports all three, the import point of the branch.
"""

from __future__ import annotations

from .spectral_classifier import (
    CLF_INPUT,
    CLF_LABEL,
    CLF_PROBA,
    SpectralClassifier,
    fit_spectral_classifier,
    spectral_pipeline_onnx,
)
from .spectral_embedding import (
    EMBED_INPUT,
    EMBED_OUTPUT,
    ONNX_IR_VERSION,
    ONNX_OPSET,
    SpectralEmbedding,
    fit_spectral_embedding,
    median_heuristic_gamma,
)
from .spectrum_preprocessing import (
    C_KMS,
    CIV_REST,
    CLIP_RANGE,
    CORE_WINDOW,
    MIN_BIN_OVERLAP,
    MIN_CORE_COVERAGE,
    MIN_GOOD_FRACTION,
    MIN_NORM_PIXELS,
    N_FILL_REFERENCE,
    N_GRID,
    NORM_WINDOW,
    PREPROCESS_VERSION,
    REST_GRID,
    REST_GRID_EDGES,
    REST_WINDOW,
    SIIV_REST,
    Z_RANGE,
    RedshiftOutOfRangeError,
    Spectrum,
    SpectrumError,
    SpectrumQualityError,
    make_rest_grid,
    preprocess_batch,
    preprocess_spectrum,
    velocity_to_rest_wavelength,
)

__all__ = [
    "CIV_REST", "CLF_INPUT", "CLF_LABEL", "CLF_PROBA", "CLIP_RANGE", "CORE_WINDOW", "C_KMS", "EMBED_INPUT",
    "EMBED_OUTPUT", "MIN_BIN_OVERLAP", "MIN_CORE_COVERAGE", "MIN_GOOD_FRACTION", "MIN_NORM_PIXELS",
    "NORM_WINDOW", "N_FILL_REFERENCE", "N_GRID", "ONNX_IR_VERSION", "ONNX_OPSET", "PREPROCESS_VERSION",
    "REST_GRID", "REST_GRID_EDGES", "REST_WINDOW", "SIIV_REST", "Z_RANGE", "RedshiftOutOfRangeError",
    "SpectralClassifier", "SpectralEmbedding", "Spectrum", "SpectrumError", "SpectrumQualityError",
    "fit_spectral_classifier", "fit_spectral_embedding", "make_rest_grid", "median_heuristic_gamma",
    "preprocess_batch", "preprocess_spectrum", "spectral_pipeline_onnx", "velocity_to_rest_wavelength",
]
