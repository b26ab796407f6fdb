"""Late (additive) fusion of the two modalities' probabilities, and the logit link both fusions use.

Late fusion (:class:`LateFusion`)
    ``p = sigmoid(w_lc logit(p_lc) + w_spec logit(p_spec) + b)``: logistic stacking of the two
    modalities' probabilities, fitted (class-balanced) on *out-of-fold* predictions of the training
    set, so the weights reflect how reliable each modality is on unseen objects rather than how well
    each model memorised its own training rows. The learned weights say how much each modality is
    trusted; on synthetic data the spectral weight is several times the light-curve one. A missing
    ``p_lc`` (NaN: too few points) contributes ``logit = 0`` -- no evidence either way -- so the
    graph degrades to the spectrum alone. Exported as a ten-node graph written with ``onnx.helper``
    (double arithmetic inside, float32 in and out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.models.inference import (
    LATE_LC_INPUT,
    LATE_OUTPUT,
    LATE_SPEC_INPUT,
)

ONNX_OPSET = 18
ONNX_IR_VERSION = 9
#: Probabilities are clipped to [EPS, 1 - EPS] before the logit.
EPS = 1e-6


def logit(p: np.ndarray, eps: float = EPS) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    return np.log(p) - np.log1p(-p)


def sigmoid(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return 0.5 * (1.0 + np.tanh(0.5 * x))


# =================================================================================== late fusion


@dataclass
class LateFusion:
    """``p = sigmoid(w_lc logit(p_lc) + w_spec logit(p_spec) + bias)``; NaN inputs contribute 0."""

    w_lc: float
    w_spec: float
    bias: float
    eps: float = EPS

    @property
    def spectral_share(self) -> float:
        """w_spec / (|w_lc| + |w_spec|): how much of the decision the spectrum carries."""
        total = abs(self.w_lc) + abs(self.w_spec)
        return abs(self.w_spec) / total if total > 0 else math.nan

    def predict(self, p_lc: np.ndarray, p_spec: np.ndarray) -> np.ndarray:
        """The numpy reference of the ONNX graph (inputs rounded to float32 as the graph's are)."""
        a = np.asarray(p_lc, dtype=np.float32).astype(np.float64)
        b = np.asarray(p_spec, dtype=np.float32).astype(np.float64)
        la = np.where(np.isnan(a), 0.0, logit(np.nan_to_num(a, nan=0.5), self.eps))
        lb = np.where(np.isnan(b), 0.0, logit(np.nan_to_num(b, nan=0.5), self.eps))
        return sigmoid(self.w_lc * la + self.w_spec * lb + self.bias)

    def to_onnx(self, path: str | Path | None = None) -> Any:
        """``p_lc``, ``p_spec`` float32 [N] -> ``probability`` float32 [N] (double inside)."""
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        from .export import save

        def c(name: str, v: float) -> Any:
            return numpy_helper.from_array(np.array(v, dtype=np.float64), name)

        inits = [c("eps", self.eps), c("one_minus_eps", 1.0 - self.eps), c("one", 1.0), c("zero", 0.0),
                 c("w_lc", self.w_lc), c("w_spec", self.w_spec), c("bias", self.bias)]
        n = helper.make_node
        nodes = []
        for src, tag in ((LATE_LC_INPUT, "lc"), (LATE_SPEC_INPUT, "spec")):
            nodes += [
                n("Cast", [src], [f"{tag}_d"], to=TensorProto.DOUBLE),
                n("IsNaN", [f"{tag}_d"], [f"{tag}_nan"]),
                n("Clip", [f"{tag}_d", "eps", "one_minus_eps"], [f"{tag}_c"]),
                n("Sub", ["one", f"{tag}_c"], [f"{tag}_q"]),
                n("Div", [f"{tag}_c", f"{tag}_q"], [f"{tag}_odds"]),
                n("Log", [f"{tag}_odds"], [f"{tag}_logit_raw"]),
                n("Where", [f"{tag}_nan", "zero", f"{tag}_logit_raw"], [f"{tag}_logit"]),
                n("Mul", [f"{tag}_logit", f"w_{tag}"], [f"{tag}_term"]),
            ]
        nodes += [
            n("Add", ["lc_term", "spec_term"], ["s"]),
            n("Add", ["s", "bias"], ["z"]),
            n("Sigmoid", ["z"], ["p_d"]),
            n("Cast", ["p_d"], [LATE_OUTPUT], to=TensorProto.FLOAT),
        ]
        graph = helper.make_graph(
            nodes, "late_fusion",
            [helper.make_tensor_value_info(LATE_LC_INPUT, TensorProto.FLOAT, ["N"]),
             helper.make_tensor_value_info(LATE_SPEC_INPUT, TensorProto.FLOAT, ["N"])],
            [helper.make_tensor_value_info(LATE_OUTPUT, TensorProto.FLOAT, ["N"])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="bal-broker.training.fusion")
        model.ir_version = ONNX_IR_VERSION
        model.doc_string = (f"late fusion: sigmoid({self.w_lc:.6g} logit(p_lc) + {self.w_spec:.6g} logit(p_spec) "
                            f"+ {self.bias:.6g}); NaN inputs contribute 0")
        helper.set_model_props(model, {"model": "fusion_late", "w_lc": repr(self.w_lc),
                                       "w_spec": repr(self.w_spec), "bias": repr(self.bias)})
        onnx.checker.check_model(model)
        if path is not None:
            save(model, path)
        return model


def fit_late_fusion(p_lc: np.ndarray, p_spec: np.ndarray, y: np.ndarray, *, C: float = 1.0,
                    seed: int = 0) -> LateFusion:
    """Fit the weights by class-balanced logistic regression on the two logits (out-of-fold inputs)."""
    from sklearn.linear_model import LogisticRegression

    a = np.asarray(p_lc, dtype=np.float32).astype(np.float64)
    b = np.asarray(p_spec, dtype=np.float32).astype(np.float64)
    ok = np.isfinite(a) & np.isfinite(b)
    y = np.asarray(y).astype(np.int64)[ok]
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("late fusion needs both classes among rows with both probabilities")
    Z = np.column_stack([logit(a[ok]), logit(b[ok])])
    lr = LogisticRegression(C=C, class_weight="balanced", max_iter=2000, random_state=seed).fit(Z, y)
    return LateFusion(w_lc=float(lr.coef_[0, 0]), w_spec=float(lr.coef_[0, 1]), bias=float(lr.intercept_[0]))
