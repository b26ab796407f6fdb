"""The fitting steps of ``bal-broker train``: features, split, the two single-modality models, the two fusions.

One function per step the trainer announces, each taking what earlier steps produced and returning a
small record, so :func:`training.train.train` reads as the list of steps and each step can be read
(and tested) alone. Every step sees only the training split; the held-out rows are used in
:mod:`training.train_eval`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from broker_plugin.models.inference import enough_points
from training.train_config import TrainConfig, _both_classes, _folds, _oof
from training.train_data import Dataset


@dataclass
class Features:
    """The runtime's feature vectors and which objects each model can use."""

    X: np.ndarray
    lc_ok: np.ndarray
    spec_ok: np.ndarray
    usable: np.ndarray


@dataclass
class Split:
    is_train: np.ndarray
    is_test: np.ndarray


@dataclass
class LCFit:
    """The light-curve forest: final model, its rows, probabilities on every object, CV results."""

    model: Any
    rows: np.ndarray
    final_rows: np.ndarray
    p: np.ndarray
    oof: np.ndarray
    fold_metrics: list[dict[str, Any]]
    downsample: dict[str, Any] | None


@dataclass
class SpectralFit:
    """The spectral model: embedding (``E`` as the catalogue stores it), classifier, probabilities, CV."""

    embedding: Any
    clf: Any
    rows: np.ndarray
    E: np.ndarray
    p: np.ndarray
    oof: np.ndarray
    fold_metrics: list[dict[str, Any]]


@dataclass
class FusionFit:
    """A fusion model, the rows it was fitted on and its CV fold metrics (``cv_note``: why CV was not used)."""

    model: Any
    rows: np.ndarray
    fold_metrics: list[dict[str, Any]]
    cv_note: str | None = None


def features_step(data: Dataset, config: TrainConfig, st: Any) -> Features:
    """Features with the plugin's own code (no train/serve skew) and the runtime's point-count rule."""
    from broker_plugin.photometry.features import compute_features_batch

    n = len(data)
    X = np.asarray(compute_features_batch(data.lightcurves)[0], dtype=np.float64)
    lc_ok = enough_points(data.lightcurves, config.min_points)
    spec_ok = np.asarray(data.spec_ok, dtype=bool)
    st.note = (f"{n} objects, {int(lc_ok.sum())} with >= {config.min_points} points, "
               f"{int(spec_ok.sum())} with a usable spectrum")
    return Features(X, lc_ok, spec_ok, lc_ok | spec_ok)


def split_step(data: Dataset, config: TrainConfig, feats: Features) -> Split:
    """Stratified held-out split of the usable objects, made once and never revisited."""
    from sklearn.model_selection import train_test_split

    y_all, n = data.labels.astype(np.int64), len(data)
    idx = np.flatnonzero(feats.usable)
    _both_classes(y_all[idx], "data set")
    tr_idx, te_idx = train_test_split(idx, test_size=config.test_fraction, stratify=y_all[idx],
                                      random_state=config.seed)
    is_train = np.zeros(n, dtype=bool)
    is_train[tr_idx] = True
    is_test = np.zeros(n, dtype=bool)
    is_test[te_idx] = True
    return Split(is_train, is_test)


def lc_step(data: Dataset, config: TrainConfig, feats: Features, split: Split, st: Any) -> LCFit:
    """Light-curve forest: k-fold out-of-fold probabilities (for late fusion and CV), then a final fit."""
    from training.lc_classifier import balanced_downsample, fit_lc_classifier, luminosity_space

    y_all, n, seed, X = data.labels.astype(np.int64), len(data), config.seed, feats.X
    rows = np.flatnonzero(split.is_train & feats.lc_ok)
    _both_classes(y_all[rows], "light-curve training set")
    space = luminosity_space(X, data.z)

    def lc_rows(r: np.ndarray, s: int) -> np.ndarray:
        if config.downsample_ratio is None:
            return r
        return r[balanced_downsample(space[r], y_all[r], ratio=config.downsample_ratio, seed=s)]

    def lc_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        fit_rows = lc_rows(a, seed)
        return fit_lc_classifier(X[fit_rows], y_all[fit_rows], config.lc, seed).predict_proba(X[b])

    lc_folds = _folds(y_all[rows], config.cv_folds, seed)
    oof_rows, fold_metrics = _oof(rows, y_all[rows], lc_folds, lc_fit_predict)
    final_rows = lc_rows(rows, seed)
    downsample = None
    if config.downsample_ratio is not None:
        downsample = {"ratio": config.downsample_ratio, "before": int(rows.size),
                      "after": int(final_rows.size), "bal": int(y_all[final_rows].sum())}
    model = fit_lc_classifier(X[final_rows], y_all[final_rows], config.lc, seed)
    p = np.full(n, np.nan)
    p[feats.lc_ok] = model.predict_proba(X[feats.lc_ok])
    oof = np.full(n, np.nan)
    oof[rows] = oof_rows
    st.note = f"{final_rows.size} training objects, {len(lc_folds)} folds"
    return LCFit(model, rows, final_rows, p, oof, fold_metrics, downsample)


def spectral_step(data: Dataset, config: TrainConfig, feats: Features, split: Split, st: Any) -> SpectralFit:
    """Kernel-PCA embedding + logistic regression, the same CV; the embedding rounded to float32 as the
    catalogue stores it and the plugin feeds it."""
    from training.spectra import fit_spectral_classifier, fit_spectral_embedding

    y_all, n, seed, S, spec_ok = data.labels.astype(np.int64), len(data), config.seed, data.spectra, feats.spec_ok
    srows = np.flatnonzero(split.is_train & spec_ok)
    _both_classes(y_all[srows], "spectral training set")

    def n_comp(m: int) -> int:
        return int(max(1, min(config.n_components, min(config.n_landmarks, m) - 2)))

    def spec_fit(a: np.ndarray) -> tuple[Any, Any]:
        emb = fit_spectral_embedding(S[a], n_comp(a.size), seed, y=y_all[a], n_landmarks=config.n_landmarks)
        clf = fit_spectral_classifier(emb.transform(S[a]), y_all[a], seed)
        return emb, clf

    def spec_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        emb, clf = spec_fit(a)
        return clf.predict_proba(emb.transform(S[b]))

    sp_folds = _folds(y_all[srows], config.cv_folds, seed)
    oof_rows, fold_metrics = _oof(srows, y_all[srows], sp_folds, spec_fit_predict)
    embedding, spec_clf = spec_fit(srows)
    E = np.full((n, embedding.n_components), np.nan, dtype=np.float64)
    E[spec_ok] = embedding.transform(S[spec_ok])
    E = E.astype(np.float32).astype(np.float64)  # what the catalogue stores and the plugin feeds
    p = np.full(n, np.nan)
    p[spec_ok] = spec_clf.predict_proba(E[spec_ok])
    oof = np.full(n, np.nan)
    oof[srows] = oof_rows
    st.note = f"{srows.size} training spectra, {embedding.n_components} kernel-PCA components"
    return SpectralFit(embedding, spec_clf, srows, E, p, oof, fold_metrics)


def late_fusion_step(data: Dataset, config: TrainConfig, feats: Features, split: Split, lc: LCFit,
                     spec: SpectralFit, st: Any) -> FusionFit:
    """Logistic stacking on out-of-fold probabilities (in-sample ones when CV was impossible, said in the
    report), so the fusion never learns from a model's fit to its own training rows."""
    from training.fusion import fit_late_fusion

    y_all, seed = data.labels.astype(np.int64), config.seed
    both = split.is_train & feats.lc_ok & feats.spec_ok
    both_tr = np.flatnonzero(both & np.isfinite(lc.oof) & np.isfinite(spec.oof))
    cv_note = None
    if both_tr.size and np.bincount(y_all[both_tr], minlength=2).min() >= 2:
        src_lc, src_sp = lc.oof, spec.oof
    else:  # too few objects for CV: fit on in-sample probabilities (said in the report)
        both_tr = np.flatnonzero(both)
        src_lc, src_sp = lc.p, spec.p
        cv_note = "CV was not possible for every model (too few objects per class); late fusion was fitted " \
                  "on in-sample probabilities."
    _both_classes(y_all[both_tr], "late-fusion training set (objects with both modalities)")
    late = fit_late_fusion(src_lc[both_tr], src_sp[both_tr], y_all[both_tr], seed=seed)

    def late_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        m = fit_late_fusion(src_lc[a], src_sp[a], y_all[a], seed=seed)
        return m.predict(src_lc[b], src_sp[b])

    late_folds = _folds(y_all[both_tr], config.cv_folds, seed)
    _, fold_metrics = _oof(both_tr, y_all[both_tr], late_folds, late_fit_predict)
    st.note = f"w_lc {late.w_lc:.3f}, w_spec {late.w_spec:.3f} (spectral share {late.spectral_share:.0%})"
    return FusionFit(late, both_tr, fold_metrics, cv_note)


def attention_step(data: Dataset, config: TrainConfig, feats: Features, split: Split, spec: SpectralFit,
                   st: Any) -> FusionFit:
    """Attention fusion on raw features + the spectral embedding (light-curve features may be NaN)."""
    from training.fusion import fit_attention_fusion, n_parameters

    y_all, seed, X, E = data.labels.astype(np.int64), config.seed, feats.X, spec.E
    arows = np.flatnonzero(split.is_train & feats.spec_ok)

    def att_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
        m = fit_attention_fusion(X[a], E[a], y_all[a], config.attention, seed)
        return m.predict_proba(X[b], E[b])

    att_folds = _folds(y_all[arows], config.cv_folds, seed)
    _, fold_metrics = _oof(arows, y_all[arows], att_folds, att_fit_predict)
    att = fit_attention_fusion(X[arows], E[arows], y_all[arows], config.attention, seed)
    st.note = (f"{arows.size} objects, {n_parameters(att)} parameters, best epoch "
               f"{att.history['best_epoch']}/{att.history['epochs_run']}")
    return FusionFit(att, arows, fold_metrics)


def require_usable(feats: Features) -> None:
    if not feats.usable.any():
        raise ConfigError("no object has a usable light curve or spectrum")
