"""Fusing the two modalities: late (additive) fusion and multiplicative fusion with modality attention.

SCIENCE.md ("The reference study"): each modality can be classified separately and the decisions
combined (late fusion), trusting the spectrum more; or the modalities can be combined inside a dense
network with multiplicative interactions and learned modality-attention weights (Liu+2018,
Mittal+2020), which is what produced the reference figures (BAL P/R/F1 82.35/67.96/74.47%).

Layout: :mod:`training.late_fusion` and :mod:`training.attention_fusion`; this module re-exports both.

Late fusion (:class:`LateFusion`)
    ``p = sigmoid(w_lc logit(p_lc) + w_spec logit(p_spec) + b)``: logistic stacking of the two
    modalities' probabilities, fitted (class-balanced) on *out-of-fold* predictions of the training
    set, so the weights reflect how reliable each modality is on unseen objects rather than how well
    each model memorised its own training rows. The learned weights say how much each modality is
    trusted; on synthetic data the spectral weight is several times the light-curve one. A missing
    ``p_lc`` (NaN: too few points) contributes ``logit = 0`` -- no evidence either way -- so the
    graph degrades to the spectrum alone. Exported as a ten-node graph written with ``onnx.helper``
    (double arithmetic inside, float32 in and out).

Attention fusion (:class:`AttentionFusionNet`)
    Each modality goes through its own small MLP to a hidden vector in (-1, 1) (tanh): ``h_lc``
    from the standardised light-curve features, ``h_spec`` from the standardised spectral embedding.
    Modality attention ``a = softmax(MLP([h_lc, h_spec]))`` (two weights summing to 1, per object)
    scales each modality; the fused vector concatenates an additive term ``a_lc h_lc + a_spec h_spec``
    and a multiplicative one ``(1 + a_lc h_lc) * (1 + a_spec h_spec) - 1`` (elementwise; the
    "1 +" keeps a modality with small activations from zeroing the product, as in Liu+2018's
    multiplicative combination), and a dense head gives the logit. Loss: BCE with ``pos_weight =
    n_nonBAL / n_BAL`` (class-weighted, as the reference study's weighted dense network), Adam,
    early stopping on a stratified validation split of the training rows. *Modality dropout*: during
    training the light-curve input of a random 10% of rows is replaced by the imputation values, so
    the network also learns the case the runtime meets most often -- a known spectrum with a short
    alert light curve. The imputation (NaN -> training median) and the robust standardisation
    (``(x - median) / (IQR / 1.349)``, clipped to +-5 so a heavy-tailed statistic such as
    ``reduced_chi2`` cannot dominate) are buffers of the module, so the exported graph takes the
    plugin's raw feature vector. Output ``probability`` [N, 1] and the ``attention`` weights [N, 2].

Export: ``torch.onnx.export(..., dynamo=True)`` (the default exporter of torch >= 2.9, via
onnxscript), one self-contained file (``external_data=False``), dynamic batch axis. Determinism:
``torch.manual_seed(seed)``, a seeded numpy split, and one torch thread during the fit (restored
afterwards), so the same seed gives the same weights on any machine.
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
