"""The BAL light-curve classifier: a Balanced Random Forest on the plugin's feature vector.

Why this model (SCIENCE.md, "The reference study"): BALs are ~13% of quasars and the reference work
handled that with Balanced Random Forests (Chen+2004): every tree is grown on a bootstrap sample
drawn with equal numbers of BALs and non-BALs, so no class weighting or threshold shift is needed for
``p = 0.5`` to be a balanced operating point, and the forest sees every non-BAL across its trees
instead of a single downsampled subset. ALeRCE's light-curve classifier makes the same choice
(Sanchez-Saez+2021). The optional :func:`balanced_downsample` reproduces the reference study's second
step, downsampling non-BALs in a space where both classes then have the same distribution.

The feature vector is exactly :data:`broker_plugin.photometry.features.FEATURE_NAMES`, computed by the plugin's
own :func:`~broker_plugin.photometry.features.compute_features_batch` (training imports it, never copies it), with
NaN for missing values. Missing values are handled *inside* the model: :class:`MedianImputer`
replaces NaN by the training median and (by default) appends a 0/1 "was missing" column for each
feature that had missing values in training, so a failed DRW fit can itself be informative. It is an
sklearn transformer with its own skl2onnx converter, so the exported graph contains the imputation
and the plugin feeds raw features.

ONNX export: imbalanced-learn's ``BalancedRandomForestClassifier`` is not known to skl2onnx, but its
fitted state (``estimators_`` of plain decision trees, ``classes_``, probability averaging) is that of
a ``RandomForestClassifier``, so it is registered with skl2onnx's random-forest shape calculator and
converter. Input ``features`` float32 [N, F]; outputs ``label`` int64 [N] and ``probabilities``
float32 [N, 2] (non-BAL, BAL; ``zipmap=False``). sklearn trees compare float32 features with float64
thresholds and skl2onnx stores float32 thresholds; the reference :meth:`LCClassifier.predict_proba`
feeds float32-rounded features, and the parity check (also on inputs placed exactly at and next to
every split threshold) stays below 1e-6.

Size: the defaults (150 trees, depth <= 12, >= 3 samples per leaf) keep the ONNX file near 1 MB for
a few thousand training objects (each tree only sees a balanced sample of twice the BAL count).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.base import BaseEstimator, TransformerMixin

from broker_plugin.models.inference import LC_INPUT, LC_LABEL, LC_PROBA
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION

#: ONNX opsets of the exported forest (TreeEnsembleClassifier from ai.onnx.ml 3).
TARGET_OPSET = {"": 18, "ai.onnx.ml": 3}
ONNX_IR_VERSION = 9


@dataclass(frozen=True)
class LCClassifierConfig:
    """Hyper-parameters of the forest; the defaults keep the exported file around 1 MB."""

    n_estimators: int = 150
    max_depth: int | None = 12
    min_samples_leaf: int = 3
    max_features: str | float = "sqrt"
    add_indicator: bool = True
    n_jobs: int = 1

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------------- imputer


class MedianImputer(TransformerMixin, BaseEstimator):
    """NaN -> training median per feature (0 for a feature never observed), plus optional indicators.

    Why not sklearn's ``SimpleImputer``: its skl2onnx converter ignores ``add_indicator`` (the graph
    would output fewer columns than the forest was trained on), and it silently drops all-NaN
    columns, which would shift every later feature. This one keeps the column count fixed and has
    a converter (:func:`_convert_median_imputer`) that writes ``IsNaN -> Where`` (+ ``Gather ->
    Cast -> Concat`` for the indicators). Works in float32, as the ONNX graph does.
    """

    def __init__(self, add_indicator: bool = True) -> None:
        self.add_indicator = add_indicator

    def fit(self, X: np.ndarray, y: Any = None) -> MedianImputer:
        X = np.asarray(X, dtype=np.float32)
        nan = np.isnan(X)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column: handled just below
            med = np.nanmedian(X, axis=0) if X.shape[0] else np.zeros(X.shape[1])
        self.statistics_ = np.where(np.isfinite(med), med, 0.0).astype(np.float32)
        self.indicator_features_ = (np.flatnonzero(nan.any(axis=0)).astype(np.int64) if self.add_indicator
                                    else np.empty(0, dtype=np.int64))
        self.n_features_in_ = int(X.shape[1])
        return self

    @property
    def n_features_out_(self) -> int:
        return self.n_features_in_ + int(self.indicator_features_.size)

    def transform(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X, dtype=np.float32)
        if X.ndim != 2 or X.shape[1] != self.n_features_in_:
            raise ValueError(f"expected (n, {self.n_features_in_}) features, got {X.shape}")
        nan = np.isnan(X)
        out = np.where(nan, self.statistics_[None, :], X).astype(np.float32)
        if self.indicator_features_.size:
            out = np.hstack([out, nan[:, self.indicator_features_].astype(np.float32)])
        return out


def _shape_median_imputer(operator: Any) -> None:
    from skl2onnx.common.data_types import FloatTensorType

    op = operator.raw_operator
    n = operator.inputs[0].get_first_dimension()
    operator.outputs[0].type = FloatTensorType([n, op.n_features_out_])


def _convert_median_imputer(scope: Any, operator: Any, container: Any) -> None:
    from onnx import TensorProto

    op = operator.raw_operator
    x = operator.inputs[0].full_name
    out = operator.outputs[0].full_name
    isnan = scope.get_unique_variable_name("isnan")
    med = scope.get_unique_variable_name("median")
    container.add_initializer(med, TensorProto.FLOAT, [1, op.n_features_in_], op.statistics_.tolist())
    container.add_node("IsNaN", [x], [isnan], name=scope.get_unique_operator_name("IsNaN"))
    if not op.indicator_features_.size:
        container.add_node("Where", [isnan, med, x], [out], name=scope.get_unique_operator_name("Where"))
        return
    imputed = scope.get_unique_variable_name("imputed")
    container.add_node("Where", [isnan, med, x], [imputed], name=scope.get_unique_operator_name("Where"))
    idx = scope.get_unique_variable_name("indicator_index")
    container.add_initializer(idx, TensorProto.INT64, [int(op.indicator_features_.size)],
                              op.indicator_features_.tolist())
    picked = scope.get_unique_variable_name("missing")
    container.add_node("Gather", [isnan, idx], [picked], axis=1, name=scope.get_unique_operator_name("Gather"))
    flt = scope.get_unique_variable_name("missing_f")
    container.add_node("Cast", [picked], [flt], to=TensorProto.FLOAT, name=scope.get_unique_operator_name("Cast"))
    container.add_node("Concat", [imputed, flt], [out], axis=1, name=scope.get_unique_operator_name("Concat"))


_REGISTERED = False


def register_converters() -> None:
    """Teach skl2onnx about :class:`MedianImputer` and imblearn's Balanced Random Forest (idempotent)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from imblearn.ensemble import BalancedRandomForestClassifier
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes
    from skl2onnx.operator_converters.random_forest import convert_sklearn_random_forest_classifier

    update_registered_converter(MedianImputer, "BalBrokerMedianImputer", _shape_median_imputer,
                                _convert_median_imputer)
    update_registered_converter(
        BalancedRandomForestClassifier, "ImbBalancedRandomForestClassifier",
        calculate_linear_classifier_output_shapes, convert_sklearn_random_forest_classifier,
        options={"zipmap": [True, False, "columns"], "nocl": [True, False], "raw_scores": [True, False],
                 "output_class_labels": [False, True], "decision_path": [True, False],
                 "decision_leaf": [True, False]},
    )
    _REGISTERED = True


# -------------------------------------------------------------------------------- classifier


def build_pipeline(config: LCClassifierConfig, seed: int) -> Any:
    """Unfitted ``Pipeline([MedianImputer, BalancedRandomForestClassifier])``.

    ``sampling_strategy="all", replacement=True, bootstrap=False`` is Chen+2004's balanced random
    forest (each tree: a bootstrap of the minority class and an equal-size draw of the majority),
    stated explicitly because imbalanced-learn's defaults changed across versions.
    """
    from imblearn.ensemble import BalancedRandomForestClassifier
    from sklearn.pipeline import Pipeline

    brf = BalancedRandomForestClassifier(
        n_estimators=config.n_estimators, max_depth=config.max_depth, min_samples_leaf=config.min_samples_leaf,
        max_features=config.max_features, sampling_strategy="all", replacement=True, bootstrap=False,
        random_state=seed, n_jobs=config.n_jobs,
    )
    return Pipeline([("impute", MedianImputer(add_indicator=config.add_indicator)), ("brf", brf)])


@dataclass
class LCClassifier:
    """A fitted light-curve classifier; ``predict_proba`` gives P(BAL) on float32-rounded features."""

    pipeline: Any
    config: LCClassifierConfig
    seed: int
    feature_names: tuple[str, ...] = FEATURE_NAMES
    feature_version: str = FEATURE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def n_features(self) -> int:
        return len(self.feature_names)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """P(BAL) per row; rows are rounded to float32 first, as the ONNX input is."""
        X = np.asarray(X, dtype=np.float32)
        return self.pipeline.predict_proba(X)[:, 1].astype(np.float64)

    def feature_importances(self) -> dict[str, float]:
        """Mean decrease in impurity per input feature (indicator columns added to their feature)."""
        imp = self.pipeline.named_steps["impute"]
        raw = np.asarray(self.pipeline.named_steps["brf"].feature_importances_, dtype=np.float64)
        per = raw[: imp.n_features_in_].copy()
        np.add.at(per, imp.indicator_features_, raw[imp.n_features_in_:])
        return {name: float(v) for name, v in zip(self.feature_names, per, strict=True)}

    def to_onnx(self, path: str | Path | None = None) -> Any:
        """``features`` float32 [N, F] -> ``label`` int64 [N], ``probabilities`` float32 [N, 2]."""
        import onnx
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import FloatTensorType

        from .export import save, set_metadata

        register_converters()
        brf = self.pipeline.named_steps["brf"]
        model = convert_sklearn(
            self.pipeline, initial_types=[(LC_INPUT, FloatTensorType([None, self.n_features]))],
            options={id(brf): {"zipmap": False}}, target_opset=TARGET_OPSET,
        )
        # the converter names its outputs label/probabilities; make sure they are the runtime's names
        names = [o.name for o in model.graph.output]
        if names != [LC_LABEL, LC_PROBA]:
            raise RuntimeError(f"unexpected forest outputs {names}")
        model.ir_version = ONNX_IR_VERSION
        model.producer_name = "bal-broker.training.lc_classifier"
        set_metadata(model, {"model": "bal_lc", "positive_class": "BAL", "feature_version": self.feature_version,
                             "n_features": self.n_features, "seed": self.seed})
        onnx.checker.check_model(model)
        if path is not None:
            save(model, path)
        return model


def fit_lc_classifier(X: np.ndarray, y: np.ndarray, config: LCClassifierConfig | None = None,
                      seed: int = 0) -> LCClassifier:
    """Fit the forest on features ``X`` (n, F; NaN = missing) and labels ``y`` (1 BAL, 0 non-BAL)."""
    config = config or LCClassifierConfig()
    X = np.asarray(X, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if X.ndim != 2 or X.shape[1] != len(FEATURE_NAMES):
        raise ValueError(f"expected (n, {len(FEATURE_NAMES)}) features in FEATURE_NAMES order, got {X.shape}")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("the light-curve classifier needs both BALs (1) and non-BALs (0)")
    pipe = build_pipeline(config, seed)
    pipe.fit(X, y)
    return LCClassifier(pipeline=pipe, config=config, seed=seed)


def threshold_probe_inputs(clf: LCClassifier, n_max: int = 4000, seed: int = 0) -> np.ndarray:
    """Feature rows sitting exactly at, just above and just below the forest's split thresholds.

    These are the inputs where float32 (ONNX) and float64 (sklearn) threshold comparisons could
    disagree; the parity check runs on them as well as on real rows.
    """
    imp = clf.pipeline.named_steps["impute"]
    brf = clf.pipeline.named_steps["brf"]
    feats, thrs = [], []
    for est in brf.estimators_:
        t = est.tree_
        inner = t.feature >= 0
        feats.append(t.feature[inner])
        thrs.append(t.threshold[inner])
    f = np.concatenate(feats)
    t = np.concatenate(thrs)
    keep = f < imp.n_features_in_  # splits on indicator columns are probed through NaNs below
    f, t = f[keep], t[keep]
    rng = np.random.default_rng(seed)
    if f.size > n_max:
        pick = rng.choice(f.size, size=n_max, replace=False)
        f, t = f[pick], t[pick]
    base = np.tile(imp.statistics_.astype(np.float32), (f.size, 1))
    rows = []
    for direction in (0.0, np.inf, -np.inf):
        b = base.copy()
        v = t.astype(np.float32)
        if direction:
            v = np.nextafter(v, np.float32(direction))
        b[np.arange(f.size), f] = v
        rows.append(b)
    nan_rows = base[: min(64, f.size)].copy()
    if nan_rows.size:
        nan_rows[:, rng.integers(0, imp.n_features_in_, nan_rows.shape[0])] = np.nan
        rows.append(nan_rows)
    return np.vstack(rows) if rows else np.empty((0, imp.n_features_in_), dtype=np.float32)


# ----------------------------------------------------------------------- balanced downsampling


def balanced_downsample(space: np.ndarray, y: np.ndarray, *, ratio: float = 1.0, n_bins: int = 8,
                        seed: int = 0) -> np.ndarray:
    """Indices of a subset where non-BALs follow the BALs' distribution in a 2-D ``space``.

    The reference study downsampled non-BALs in a balanced (black-hole mass, bolometric luminosity)
    space so that the classifier could not separate the classes by those properties alone. Here the
    space is whatever the caller passes (``train.py`` uses redshift and mean r magnitude, a luminosity
    proxy available for both synthetic and real data). Bins are quantiles of the BALs along each
    axis; in each 2-D cell at most ``ceil(ratio * n_BAL)`` non-BALs are kept at random. Every BAL is
    kept; rows with a non-finite coordinate keep their BALs and drop their non-BALs.
    """
    space = np.asarray(space, dtype=np.float64)
    y = np.asarray(y).astype(np.int64)
    if space.ndim != 2 or space.shape != (y.size, 2):
        raise ValueError(f"space must be (n, 2) aligned with y, got {space.shape}")
    rng = np.random.default_rng(seed)
    finite = np.isfinite(space).all(axis=1)
    bal = (y == 1) & finite
    if not bal.any():
        return np.flatnonzero(y == 1)
    cells = np.zeros(y.size, dtype=np.int64)
    for axis in range(2):
        edges = np.unique(np.quantile(space[bal, axis], np.linspace(0, 1, n_bins + 1)[1:-1]))
        cells = cells * (n_bins + 1) + np.searchsorted(edges, np.where(finite, space[:, axis], 0.0))
    keep = [np.flatnonzero(y == 1)]
    for c in np.unique(cells[bal]):
        n_bal = int(np.sum(bal & (cells == c)))
        rows = np.flatnonzero((y == 0) & finite & (cells == c))
        k = min(rows.size, int(np.ceil(ratio * n_bal)))
        if k:
            keep.append(rng.choice(rows, size=k, replace=False))
    return np.sort(np.concatenate(keep))


def luminosity_space(X: np.ndarray, z: np.ndarray, names: Sequence[str] = FEATURE_NAMES) -> np.ndarray:
    """(z, mean r magnitude; g where r is missing): the balanced space :func:`balanced_downsample` uses."""
    X = np.asarray(X, dtype=np.float64)
    r = X[:, list(names).index("r_mean_mag")]
    g = X[:, list(names).index("g_mean_mag")]
    return np.column_stack([np.asarray(z, dtype=np.float64), np.where(np.isfinite(r), r, g)])
