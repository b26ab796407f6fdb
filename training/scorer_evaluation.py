"""Metrics and the embedding picture of the candidate scorer (held-out alerts, kNN probes, SIMBAD check).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.models.scoring import run_head
from broker_plugin.photometry.features import compute_features_batch
from training.contrastive import knn_predict
from training.ranking_head import HeadConfig, RankingHead, fit_ranking_head, head_predict, onnx_session
from training.scorer_data import AlertSet


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1 at ``threshold``, ROC AUC and average precision (NaN when undefined)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(p) >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    return {
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
    }


def knn_metrics(prefix: str, ref_x: np.ndarray, ref_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                k: int = 5) -> dict[str, float]:
    """kNN (cosine, k=5) accuracy over all kinds, recall per kind, and the 3-kind accuracy
    (point / extended / artifact: nuclear stamps dropped from reference and test)."""
    out: dict[str, float] = {}
    if len(ref_y) < k or len(test_y) == 0:
        return out
    pred = knn_predict(ref_x, ref_y, test_x, k)
    out[f"{prefix}_acc"] = float(np.mean(pred == test_y))
    for kind in sorted(set(test_y.tolist())):
        sel = test_y == kind
        out[f"{prefix}_recall_{kind}"] = float(np.mean(pred[sel] == kind))
    r3, t3 = ref_y != "nuclear", test_y != "nuclear"
    if r3.sum() >= k and t3.any():
        pred3 = knn_predict(ref_x[r3], ref_y[r3], test_x[t3], k)
        out[f"{prefix}_acc_3kinds"] = float(np.mean(pred3 == test_y[t3]))
    return out


#: SIMBAD types (Fink's ``cdsxmatch``) counted as "a quasar worth following" in :func:`simbad_check`:
#: quasars and AGN, including Seyferts and LINERs (SIMBAD often types a faint quasar's host that way).
#: Blazars and BL Lacs count as negatives, as in training.
SIMBAD_QSO_TYPES: frozenset[str] = frozenset(
    {"QSO", "QSO_Candidate", "AGN", "AGN_Candidate", "Seyfert", "Seyfert_1", "Seyfert_2", "LINER"})


def simbad_check(encoder_path: str | Path, head_path: str | Path, parquet_files: Sequence[str | Path],
                 label_column: str = "cdsxmatch") -> dict[str, Any]:
    """The exported head on *real* ZTF alerts labelled by a SIMBAD cross-match (Fink Parquet rows).

    Not a benchmark (the shipped sample is ~120 alerts, ~10 of them AGN-like), but the only check
    that the synthetic-trained head ranks real quasars above real stars at all. Rows are turned into
    alerts by :func:`broker_plugin.decode.alert_from_record` and scored through
    :func:`broker_plugin.models.scoring.head_probability`, the runtime path.
    """
    import pyarrow.parquet as pq

    from broker_plugin.decode import alert_from_record
    from broker_plugin.errors import BalBrokerError
    from broker_plugin.models.scoring import head_probability

    alerts, labels = [], []
    for f in parquet_files:
        for row in pq.read_table(f).to_pylist():
            try:
                alerts.append(alert_from_record(row))
            except BalBrokerError:
                continue
            labels.append(str(row.get(label_column)))
    if not alerts:
        return {"n": 0}
    features, _ = compute_features_batch([a.lightcurves for a in alerts])
    prob, ok, _ = head_probability(onnx_session(encoder_path), onnx_session(head_path), features, alerts)
    y = np.isin(np.asarray(labels), sorted(SIMBAD_QSO_TYPES)).astype(int)
    m = binary_metrics(y[ok], prob[ok])
    return {"n": int(ok.sum()), "n_positive": int(y[ok].sum()), "roc_auc": m["roc_auc"],
            "precision": m["precision"], "recall": m["recall"],
            "positive_types": sorted(SIMBAD_QSO_TYPES), "files": [Path(f).name for f in parquet_files]}


def _project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D projection for the picture (PCA, or t-SNE initialised by PCA)."""
    from sklearn.decomposition import PCA

    if method == "tsne" and len(x) > 10:
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3.0), init="pca", random_state=seed).fit_transform(x)
    return PCA(2, random_state=seed).fit_transform(x)


def embedding_figure(path: str | Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]], method: str = "tsne",
                     seed: int = 0, max_points: int = 1500) -> Path:
    """PNG of one 2-D projection per ``(title, embeddings, labels)`` panel, points coloured by label."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (title, x, y) in zip(axes[0], panels, strict=True):
        if len(x) > max_points:
            keep = np.sort(rng.choice(len(x), max_points, replace=False))
            x, y = x[keep], y[keep]
        if len(x) >= 3:
            xy = _project(np.asarray(x, dtype=np.float64), method, seed)
            for j, lab in enumerate(sorted(set(y.tolist()))):
                sel = y == lab
                ax.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.7, color=plt.cm.tab10(j % 10),
                           label=f"{lab} ({int(sel.sum())})")
            ax.legend(fontsize=8, markerscale=2, loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Contrastive cutout embedding, held-out data ({method.upper()} projection)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def head_metrics(head: RankingHead, head_path: Path, train: AlertSet, test: AlertSet,
                  in_train: Mapping[str, np.ndarray], in_test: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Held-out metrics of the *exported* head (overall, per survey, without forced photometry, per
    class) and the training-set fit of the torch head."""
    p_test = run_head(onnx_session(head_path), in_test)
    hm: dict[str, Any] = {f"test_{k}": v for k, v in binary_metrics(test.labels, p_test).items()}
    for survey in ("ztf", "lsst"):
        sel = np.array([a.survey == survey for a in test.alerts], dtype=bool)
        if sel.any():
            hm.update({f"test_{survey}_{k}": v for k, v in binary_metrics(test.labels[sel], p_test[sel]).items()
                       if k in ("roc_auc", "f1")})
            hm[f"test_{survey}_n"] = int(sel.sum())
    if test.no_forced.any():
        nf = binary_metrics(test.labels[test.no_forced], p_test[test.no_forced])
        hm.update({f"test_ztf_no_forced_{k}": nf[k] for k in ("roc_auc", "f1")})
        hm["test_ztf_no_forced_n"] = int(test.no_forced.sum())
    for c in sorted(set(test.classes.tolist())):
        sel = test.classes == c
        hm[f"test_mean_prob_{c}"] = float(np.mean(p_test[sel]))
        hm[f"test_frac_above_0.5_{c}"] = float(np.mean(p_test[sel] >= 0.5))
    train_m = binary_metrics(train.labels, head_predict(head, in_train))
    hm.update(train_roc_auc=train_m["roc_auc"], train_f1=train_m["f1"])
    return hm


def ablation_metrics(in_train: Mapping[str, np.ndarray], in_test: Mapping[str, np.ndarray], y_train: np.ndarray,
                      y_test: np.ndarray, hcfg: HeadConfig) -> dict[str, float]:
    """Heads refitted with the embedding zeroed, and with everything but the embedding zeroed: does
    the image modality help?"""
    out: dict[str, float] = {}
    for name, blank in (("no_embedding", ("embedding",)), ("embedding_only", ("lc_features", "meta"))):
        def zero(feed: Mapping[str, np.ndarray], blank: tuple[str, ...] = blank) -> dict[str, np.ndarray]:
            return {k: (np.zeros_like(v) if k in blank else v) for k, v in feed.items()}

        h_ab, _ = fit_ranking_head(zero(in_train), y_train, hcfg)
        ab = binary_metrics(y_test, head_predict(h_ab, zero(in_test)))
        out[f"ablation_{name}_roc_auc"] = ab["roc_auc"]
        out[f"ablation_{name}_f1"] = ab["f1"]
    return out
