"""Logistic regression on the spectral embedding (p_spec), and the joined flux -> p_spec ONNX graph.

:func:`fit_spectral_classifier`: standardise + class-balanced logistic regression on the
embedding, exported with skl2onnx (``zipmap=False``). The kernel PCA already supplies the
non-linearity; a linear model keeps p_spec smooth and well calibrated for the fusion models,
and its ONNX graph is exact in float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .spectral_embedding import EMBED_OUTPUT, ONNX_IR_VERSION, ONNX_OPSET, SpectralEmbedding

#: Names of the classifier graph's input and outputs.
CLF_INPUT, CLF_LABEL, CLF_PROBA = "embedding", "label", "probabilities"


@dataclass
class SpectralClassifier:
    """Standardise + logistic regression on the spectral embedding; ``p_spec`` = P(BAL)."""

    pipeline: Any  # sklearn Pipeline
    n_features: int
    seed: int = 0

    def predict_proba(self, emb: np.ndarray) -> np.ndarray:
        """P(BAL) per row, computed on float32-rounded input (what the ONNX graph sees)."""
        e = np.asarray(emb, dtype=np.float32)
        return self.pipeline.predict_proba(e)[:, 1]

    def to_onnx(self, path: str | Path | None = None) -> Any:
        """ONNX via skl2onnx: ``embedding`` float32 [N, k] -> ``label`` int64 [N], ``probabilities``
        float32 [N, 2] (columns: non-BAL, BAL; no ZipMap)."""
        import onnx
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        final = self.pipeline.steps[-1][1]
        model = convert_sklearn(
            self.pipeline,
            initial_types=[(CLF_INPUT, FloatTensorType([None, self.n_features]))],
            options={id(final): {"zipmap": False}},
            target_opset={"": ONNX_OPSET, "ai.onnx.ml": 3},
        )
        model.ir_version = ONNX_IR_VERSION
        onnx.helper.set_model_props(model, {"model": "spectral_classifier", "positive_class": "BAL",
                                            "seed": str(self.seed)})
        onnx.checker.check_model(model)
        if path is not None:
            onnx.save_model(model, str(path))
        return model


def fit_spectral_classifier(emb: np.ndarray, y: np.ndarray, seed: int = 0, *, C: float = 1.0) -> SpectralClassifier:
    """Fit standardise + class-balanced logistic regression on the embedding (``y``: 1 BAL, 0 non-BAL).

    ``class_weight="balanced"`` stands in for the reference study's balanced resampling (BALs are the
    ~13% minority, SCIENCE.md), so that p_spec = 0.5 is a sensible operating point.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler

    e = np.asarray(emb, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if set(np.unique(y)) != {0, 1}:
        raise ValueError("fit_spectral_classifier needs labels 0 (non-BAL) and 1 (BAL), both present")
    pipe = Pipeline([
        ("scale", StandardScaler()),
        ("logreg", LogisticRegression(C=C, class_weight="balanced", max_iter=5000, random_state=seed)),
    ])
    pipe.fit(e, y)
    return SpectralClassifier(pipeline=pipe, n_features=int(e.shape[1]), seed=seed)


def spectral_pipeline_onnx(embedding: SpectralEmbedding, classifier: SpectralClassifier,
                           path: str | Path | None = None) -> Any:
    """One ONNX model ``flux`` -> (``embedding``, ``label``, ``probabilities``): the two graphs joined,
    for consumers that want p_spec straight from a preprocessed spectrum."""
    import onnx
    from onnx import compose

    m1 = embedding.to_onnx()
    m2 = classifier.to_onnx()
    # both must import the same opsets for merge_models
    ops = {o.domain: o.version for o in m1.opset_import}
    ops.update({o.domain: o.version for o in m2.opset_import})
    for m in (m1, m2):
        del m.opset_import[:]
        m.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in sorted(ops.items()))
    # metadata: the embedding's keys plus the classifier's, prefixed (merge_models refuses clashes)
    props = {p.key: p.value for p in m1.metadata_props}
    props.update({f"classifier_{p.key}": p.value for p in m2.metadata_props})
    props["model"] = "spectral_pipeline"
    del m1.metadata_props[:]
    del m2.metadata_props[:]
    # keep the public input/output names, prefix every internal name of the classifier graph
    m2 = compose.add_prefix(m2, "clf_", rename_inputs=False, rename_outputs=False)
    merged = compose.merge_models(m1, m2, io_map=[(EMBED_OUTPUT, CLF_INPUT)],
                                  outputs=[EMBED_OUTPUT, CLF_LABEL, CLF_PROBA])
    merged.ir_version = ONNX_IR_VERSION
    onnx.helper.set_model_props(merged, props)
    onnx.checker.check_model(merged)
    if path is not None:
        onnx.save_model(merged, str(path))
    return merged
