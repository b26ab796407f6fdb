"""Held-out evaluation and ONNX export of ``bal-broker train`` (the "evaluation" and "ONNX export" steps).

The test split is used here and only here: every model is scored on the objects with both modalities
(one table for all), each single-modality model on every test object it applies to, and the
light-curve model per light-curve kind. The export step converts each model and checks the ONNX
graph against the Python model (<= 1e-5), so a bundle never ships a graph that disagrees with what
was evaluated.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from broker_plugin.models.inference import enough_points
from training.train_data import Dataset
from training.train_steps import Features, FusionFit, LCFit, SpectralFit, Split


@dataclass
class Evaluation:
    """Held-out metrics (``test``: common rows, ``test_all``: every applicable row), PR curves, the
    attention weights on the common rows, CV summaries and the per-light-curve-kind table."""

    common: np.ndarray
    test: dict[str, Any]
    test_all: dict[str, Any]
    curves: dict[str, Any]
    att_w: np.ndarray
    cv: dict[str, Any]
    by_history: dict[str, dict[str, Any]]


@dataclass
class Exported:
    """The four ONNX graphs by role and their parity records."""

    onnx: dict[str, Any]
    parity: dict[str, dict[str, Any]]


def evaluation_step(data: Dataset, config: Any, feats: Features, split: Split, lc: LCFit, spec: SpectralFit,
                    late: FusionFit, att: FusionFit) -> Evaluation:
    """Every model on the held-out test split (threshold 0.5), plus the no-light-curve ablation."""
    from training.report import class_metrics, summarise_folds

    y_all, n, X, E = data.labels.astype(np.int64), len(data), feats.X, spec.E
    lc_ok, spec_ok, is_test = feats.lc_ok, feats.spec_ok, split.is_test
    common = np.flatnonzero(is_test & lc_ok & spec_ok)
    preds = {"bal_lc": lc.p, "spectral": spec.p, "fusion_late": late.model.predict(lc.p, spec.p)}
    p_att = np.full(n, np.nan)
    p_att[spec_ok] = att.model.predict_proba(X[spec_ok], E[spec_ok])
    preds["fusion_attention"] = p_att
    p_att_spec = np.full(n, np.nan)
    p_att_spec[spec_ok] = att.model.predict_proba(np.full_like(X[spec_ok], np.nan), E[spec_ok])
    preds["fusion_attention_spec_only"] = p_att_spec
    test = {r: class_metrics(y_all[common], p[common]) for r, p in preds.items()} if common.size else {}
    applies = {"bal_lc": is_test & lc_ok, "spectral": is_test & spec_ok,
               "fusion_late": is_test & lc_ok & spec_ok, "fusion_attention": is_test & spec_ok}
    test_all = {r: class_metrics(y_all[m], preds[r][m]) for r, m in applies.items()}
    curves = {r: (y_all[common], preds[r][common]) for r in ("bal_lc", "spectral", "fusion_late",
                                                               "fusion_attention")}
    att_w = att.model.attention(X[common], E[common]) if common.size else np.empty((0, 2))
    cv = {"bal_lc": summarise_folds(lc.fold_metrics), "spectral": summarise_folds(spec.fold_metrics),
          "fusion_late": summarise_folds(late.fold_metrics), "fusion_attention": summarise_folds(att.fold_metrics)}
    by_history = _lc_by_history(data, lc.model, is_test, lc_ok, spec_ok, lc.p, p_att, config.min_points)
    return Evaluation(common, test, test_all, curves, att_w, cv, by_history)


def _lc_by_history(data: Dataset, lc_model: Any, is_test: np.ndarray, lc_ok: np.ndarray, spec_ok: np.ndarray,
                   p_lc: np.ndarray, p_att: np.ndarray, min_points: int) -> dict[str, dict[str, Any]]:
    """Held-out metrics of the light-curve model (and of the attention fusion where spectra exist)
    per light-curve kind: the test split's objects of each kind trained on, and the evaluation-only
    sets (:class:`EvalSet`) of the kinds left out. ``n_scored``: objects with >= ``min_points``
    points in g or r, i.e. with a ``bal_lc_prob`` at run time (the metrics are on those)."""
    from broker_plugin.photometry.features import compute_features_batch
    from training.lc_history import KIND_TITLES, KINDS
    from training.report import class_metrics

    y = data.labels.astype(np.int64)
    kinds = data.kinds()
    out: dict[str, dict[str, Any]] = {}
    for k in KINDS:
        rows = is_test & (kinds == k)
        if rows.any():
            ok = rows & lc_ok
            both = rows & spec_ok
            out[k] = {"title": KIND_TITLES[k], "source": "held-out test split", "in_training": True,
                      "n": int(rows.sum()), "n_scored": int(ok.sum()),
                      "bal_lc": class_metrics(y[ok], p_lc[ok]),
                      "fusion_attention": class_metrics(y[both], p_att[both]) if both.any() else None}
        elif k in data.lc_eval:
            ev = data.lc_eval[k]
            sel = np.arange(len(ev.lightcurves)) if ev.rows is None else np.flatnonzero(is_test[ev.rows])
            if sel.size == 0:
                continue
            curves = [ev.lightcurves[i] for i in sel]
            ye = np.asarray(ev.labels)[sel].astype(np.int64)
            ok = enough_points(curves, min_points)
            Xe = np.asarray(compute_features_batch([curves[i] for i in np.flatnonzero(ok)])[0], dtype=np.float64)
            pe = lc_model.predict_proba(Xe) if ok.any() else np.zeros(0)
            out[k] = {"title": KIND_TITLES[k], "source": ev.description, "in_training": False,
                      "n": int(sel.size), "n_scored": int(ok.sum()), "bal_lc": class_metrics(ye[ok], pe),
                      "fusion_attention": None}
    return out



def export_step(config: Any, data: Dataset, feats: Features, split: Split, lc: LCFit, spec: SpectralFit,
                late: FusionFit, att: FusionFit, ev: Evaluation, st: Any) -> Exported:
    """Every model to ONNX, each checked against its Python model on held-out inputs and edge cases."""
    onnx: dict[str, Any] = {}
    parity: dict[str, dict[str, Any]] = {}
    onnx["bal_lc"], parity["bal_lc"] = _export_lc(lc, feats.X[split.is_test & feats.lc_ok], config.seed)
    onnx["spectral"], parity["spectral"] = _export_spectral(spec, data.spectra, feats.spec_ok, split.is_test)
    onnx["fusion_late"], parity["fusion_late"] = _export_late(late.model, lc.p[ev.common], spec.p[ev.common])
    onnx["fusion_attention"], parity["fusion_attention"] = _export_attention(att.model, feats.X, spec.E,
                                                                             feats.spec_ok, split.is_test)
    st.note = ", ".join(f"{r} {p['max_abs_diff']:.1e}" for r, p in parity.items())
    return Exported(onnx, parity)


def _export_lc(lc: LCFit, X_test: np.ndarray, seed: int) -> tuple[Any, dict[str, Any]]:
    """The forest, checked on the test features and on inputs placed at its split thresholds."""
    from training import export
    from training.lc_classifier import threshold_probe_inputs

    lc_onnx = lc.model.to_onnx()
    sess = export.session(lc_onnx)
    Xp = np.vstack([X_test.astype(np.float32), threshold_probe_inputs(lc.model, seed=seed)])
    return lc_onnx, {"max_abs_diff": export.check_parity(
        "bal_lc", export.run(sess, {"features": Xp}, "probabilities")[:, 1], lc.model.predict_proba(Xp)),
        "checked_on": f"{Xp.shape[0]} rows (test features + inputs at split thresholds)"}


def _export_spectral(spec: SpectralFit, S: np.ndarray, spec_ok: np.ndarray,
                     is_test: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Preprocessed flux -> embedding and probability in one graph, both outputs checked."""
    from training import export
    from training.spectra import spectral_pipeline_onnx

    embedding, spec_clf = spec.embedding, spec.clf
    spec_onnx = spectral_pipeline_onnx(embedding, spec_clf)
    Sp = S[spec_ok & is_test].astype(np.float32)
    if Sp.shape[0] == 0:
        Sp = S[spec_ok][:64].astype(np.float32)
    outs = export.run(spec_onnx, {"flux": Sp})
    d_emb = export.check_parity("spectral embedding", outs["embedding"], embedding.transform(Sp))
    d_p = export.check_parity("spectral probability", outs["probabilities"][:, 1],
                              spec_clf.predict_proba(embedding.transform(Sp)))
    return spec_onnx, {"max_abs_diff": max(d_emb, d_p),
                       "checked_on": f"{Sp.shape[0]} test spectra (embedding and probability)"}


def _export_late(late: Any, p_lc: np.ndarray, p_spec: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Late fusion, checked on the test probabilities plus NaN and 0/1 edge cases."""
    from training import export

    late_onnx = late.to_onnx()
    pl = np.concatenate([p_lc, [np.nan, 0.0, 1.0, 0.5]]).astype(np.float32)
    ps = np.concatenate([p_spec, [0.3, 0.0, 1.0, 0.5]]).astype(np.float32)
    return late_onnx, {"max_abs_diff": export.check_parity(
        "fusion_late", export.run(late_onnx, {"p_lc": pl, "p_spec": ps}, "probability"), late.predict(pl, ps)),
        "checked_on": f"{pl.size} rows (test probabilities, NaN and 0/1 edge cases)"}


def _export_attention(att: Any, X: np.ndarray, E: np.ndarray, spec_ok: np.ndarray,
                      is_test: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """Attention fusion, probability and weights checked, with and without light-curve features."""
    from training import export

    att_onnx = att.to_onnx()
    ra_ = np.flatnonzero(spec_ok & is_test)
    if ra_.size == 0:
        ra_ = np.flatnonzero(spec_ok)[:64]
    extra_ = ra_[:8]  # the same embeddings again with every light-curve feature missing
    Xa = np.vstack([X[ra_], np.full((extra_.size, X.shape[1]), np.nan)]).astype(np.float32)
    Ea = np.vstack([E[ra_], E[extra_]]).astype(np.float32)
    att_out = export.run(att_onnx, {"lc_features": Xa, "spec_embedding": Ea})
    d_att = export.check_parity("fusion_attention", att_out["probability"], att.predict_proba(Xa, Ea))
    d_w = export.check_parity("fusion_attention weights", att_out["attention"], att.attention(Xa, Ea))
    return att_onnx, {"max_abs_diff": max(d_att, d_w),
                      "checked_on": f"{Xa.shape[0]} rows (test objects + all-NaN features)"}
