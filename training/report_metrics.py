"""Evaluation metrics of the training report, and JSON/YAML-safe copies of them.

The lowest layer of the report: the trainer's steps compute metrics with it and the bundle writer
rounds manifests with it, without pulling in the figures or the markdown.

Metrics are computed on the held-out test split only (never used for fitting or model selection). The
decision threshold is 0.5 for every model: each is trained class-balanced, so 0.5 is the balanced
operating point, and no threshold is tuned on the test set.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np


def class_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, Any]:
    """Precision/recall/F1 for both classes at ``threshold``, ROC AUC, average precision, confusion.

    Fractions in [0, 1]; undefined values (no positive prediction, a single class) are NaN, written
    as null in JSON/YAML. ``confusion`` is ``[[TN, FP], [FN, TP]]`` with BAL the positive class.
    """
    from sklearn.metrics import average_precision_score, roc_auc_score

    y = np.asarray(y).astype(np.int64)
    p = np.asarray(p, dtype=np.float64)
    pred = (p >= threshold).astype(np.int64)
    tp = int(np.sum((pred == 1) & (y == 1)))
    fp = int(np.sum((pred == 1) & (y == 0)))
    fn = int(np.sum((pred == 0) & (y == 1)))
    tn = int(np.sum((pred == 0) & (y == 0)))

    def prf(tp_: int, fp_: int, fn_: int) -> dict[str, float]:
        prec = tp_ / (tp_ + fp_) if tp_ + fp_ else math.nan
        rec = tp_ / (tp_ + fn_) if tp_ + fn_ else math.nan
        f1 = 2 * prec * rec / (prec + rec) if (prec + rec) and not math.isnan(prec + rec) else math.nan
        if tp_ == 0 and (fp_ or fn_):
            f1 = 0.0
        return {"precision": prec, "recall": rec, "f1": f1}

    both = y.size and 0 < y.sum() < y.size
    return {
        "threshold": float(threshold),
        "n": int(y.size),
        "n_bal": int(y.sum()),
        "bal": prf(tp, fp, fn),
        "nonbal": prf(tn, fn, fp),
        "roc_auc": float(roc_auc_score(y, p)) if both else math.nan,
        "average_precision": float(average_precision_score(y, p)) if both else math.nan,
        "confusion": [[tn, fp], [fn, tp]],
    }


def summarise_folds(folds: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Mean and standard deviation over CV folds of the headline numbers, plus the folds themselves."""
    keys = {"bal_precision": ("bal", "precision"), "bal_recall": ("bal", "recall"), "bal_f1": ("bal", "f1"),
            "nonbal_precision": ("nonbal", "precision"), "nonbal_recall": ("nonbal", "recall"),
            "nonbal_f1": ("nonbal", "f1")}
    out: dict[str, Any] = {"folds": len(folds)}
    for name, (cls, metric) in keys.items():
        v = np.array([f[cls][metric] for f in folds], dtype=np.float64)
        out[f"{name}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        out[f"{name}_std"] = float(np.nanstd(v)) if np.isfinite(v).any() else math.nan
    for name in ("roc_auc", "average_precision"):
        v = np.array([f[name] for f in folds], dtype=np.float64)
        out[f"{name}_mean"] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
    out["per_fold"] = [{"bal": f["bal"], "nonbal": f["nonbal"], "roc_auc": f["roc_auc"],
                        "average_precision": f["average_precision"], "n": f["n"], "n_bal": f["n_bal"]}
                       for f in folds]
    return out


def plain(obj: Any) -> Any:
    """JSON/YAML-safe copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return [plain(v) for v in obj.tolist()]
    if isinstance(obj, (np.bool_, bool)):
        return bool(obj)
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    return obj


def rounded(obj: Any, digits: int = 4) -> Any:
    """:func:`plain` with floats rounded (manifests stay readable and diffs small)."""
    obj = plain(obj)
    if isinstance(obj, dict):
        return {k: rounded(v, digits) for k, v in obj.items()}
    if isinstance(obj, list):
        return [rounded(v, digits) for v in obj]
    if isinstance(obj, float):
        # small magnitudes (parity figures, learning rates) keep 3 significant digits instead of becoming 0
        return float(f"{obj:.3g}") if 0 < abs(obj) < 10.0 ** (1 - digits) else round(obj, digits)
    return obj

