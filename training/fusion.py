"""Fusing the two modalities: late (additive) fusion and multiplicative fusion with modality attention.

SCIENCE.md ("The reference study"): each modality can be classified separately and the decisions
combined (late fusion), trusting the spectrum more; or the modalities can be combined inside a dense
network with multiplicative interactions and learned modality-attention weights (Liu+2018,
Mittal+2020), which is what produced the reference figures (BAL P/R/F1 82.35/67.96/74.47%).

Layout: :mod:`training.late_fusion` and :mod:`training.attention_fusion`; this module re-exports both.

Late fusion (:class:`LateFusion`, :mod:`training.late_fusion`)
    logistic stacking of the two modalities' out-of-fold probabilities.

Attention fusion (:class:`AttentionFusionNet`, :mod:`training.attention_fusion`)
    a small network with per-modality encoders, softmax modality attention and an additive plus
    multiplicative combination. Each module's docstring gives the model, its loss and its export.
"""

from __future__ import annotations

from broker_plugin.photometry.features import FEATURE_NAMES
from training.attention_fusion import (
    AttentionConfig,
    AttentionFusion,
    fit_attention_fusion,
    n_parameters,
    robust_scaling,
)
from training.late_fusion import EPS, ONNX_IR_VERSION, ONNX_OPSET, LateFusion, fit_late_fusion, logit, sigmoid

__all__ = [
    "EPS",
    "FEATURE_NAMES",
    "ONNX_IR_VERSION",
    "ONNX_OPSET",
    "AttentionConfig",
    "AttentionFusion",
    "LateFusion",
    "fit_attention_fusion",
    "fit_late_fusion",
    "logit",
    "n_parameters",
    "robust_scaling",
    "sigmoid",
]
