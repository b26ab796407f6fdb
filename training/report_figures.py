"""Figures of the training report (matplotlib, Agg backend, small PNGs without time stamps).

Confusion matrices, precision-recall curves, per-fold CV metrics, the forest's feature importances,
the attention weights and the attention net's loss curves; :func:`write_figures` draws the ones a
report has data for. (The cutout-embedding picture is drawn by :mod:`training.scorer`.)
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from training.report_tables import REFERENCE


def write_figures(report_dir: Path, ctx: Mapping[str, Any]) -> dict[str, str]:
    """Draw the figures ``ctx`` has data for into ``report_dir``; figure key -> PNG file name."""
    figs: dict[str, str] = {}
    if ctx["test"]:
        figs["confusion"] = plot_confusion(ctx["test"], report_dir / "confusion_matrices.png")
        figs["pr"] = plot_pr_curves(ctx["curves"], report_dir / "precision_recall.png")
    if any(c.get("per_fold") for c in ctx["cv"].values()):
        figs["cv"] = plot_cv(ctx["cv"], report_dir / "cv_folds.png")
    if ctx.get("importances"):
        figs["importance"] = plot_importances(ctx["importances"], report_dir / "lc_feature_importance.png")
    att = ctx.get("attention") or {}
    if att.get("att_spec") is not None and len(att["att_spec"]):
        figs["attention"] = plot_attention(np.asarray(att["att_spec"]), np.asarray(att["y"]), att["history"],
                                           report_dir / "attention.png")
    return figs


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Any, path: Path) -> str:
    fig.savefig(path, dpi=90, bbox_inches="tight", metadata={"Software": None, "CreationDate": None})
    _plt().close(fig)
    return path.name


def plot_confusion(results: Mapping[str, Mapping[str, Any]], path: Path) -> str:
    plt = _plt()
    roles = list(results)
    fig, axes = plt.subplots(1, len(roles), figsize=(3.1 * len(roles), 3.0), squeeze=False)
    for k, (ax, role) in enumerate(zip(axes[0], roles, strict=True)):
        cm = np.asarray(results[role]["confusion"], dtype=np.float64)
        frac = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
        ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
        for i in range(2):
            for j in range(2):
                ax.text(j, i, f"{int(cm[i, j])}\n{100 * frac[i, j]:.1f}%", ha="center", va="center",
                        color="white" if frac[i, j] > 0.6 else "black", fontsize=8)
        ax.set_xticks([0, 1], ["non-BAL", "BAL"])
        ax.set_yticks([0, 1], ["non-BAL", "BAL"] if k == 0 else ["", ""])
        ax.set_xlabel("predicted")
        if k == 0:
            ax.set_ylabel("true")
        ax.set_title(role, fontsize=9)
    fig.suptitle("Confusion matrices on the held-out test split (threshold 0.5; rows normalised)", fontsize=9)
    return _save(fig, path)


def plot_pr_curves(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], path: Path) -> str:
    from sklearn.metrics import average_precision_score, precision_recall_curve

    plt = _plt()
    fig, ax = plt.subplots(figsize=(7.4, 4.2))
    prevalence = None
    for role, (y, p) in curves.items():
        if y.size == 0 or y.sum() in (0, y.size):
            continue
        prec, rec, _ = precision_recall_curve(y, p)
        ax.plot(rec, prec, label=f"{role} (AP {average_precision_score(y, p):.3f})", lw=1.4)
        prevalence = float(np.mean(y))
    if prevalence is not None:
        ax.axhline(prevalence, color="grey", ls=":", lw=1, label=f"chance ({prevalence:.3f})")
    ref = REFERENCE["bal"]
    ax.plot([ref["recall"] / 100], [ref["precision"] / 100], "k*", ms=9, label="reference study (BAL)")
    ax.set_xlabel("recall (BAL)")
    ax.set_ylabel("precision (BAL)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))  # outside: curves stay visible
    ax.set_title("Precision-recall, held-out test split", fontsize=9)
    return _save(fig, path)


def plot_cv(cv: Mapping[str, Mapping[str, Any]], path: Path) -> str:
    plt = _plt()
    roles = [r for r in cv if cv[r].get("per_fold")]
    metrics = [("bal", "precision"), ("bal", "recall"), ("bal", "f1"), ("nonbal", "f1")]
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(roles), 3.6))
    width = 0.8 / len(metrics)
    for k, (cls, m) in enumerate(metrics):
        for i, role in enumerate(roles):
            vals = [f[cls][m] for f in cv[role]["per_fold"]]
            x = i + (k - (len(metrics) - 1) / 2) * width
            ax.scatter(np.full(len(vals), x), vals, s=10, color=f"C{k}", label=f"{cls} {m}" if i == 0 else None)
            ax.hlines(np.nanmean(np.asarray(vals, dtype=float)), x - width / 2, x + width / 2, color=f"C{k}")
    ax.set_xticks(range(len(roles)), roles, fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel("per-fold value")
    ax.legend(fontsize=7, ncol=2, loc="lower right")
    ax.set_title(f"{cv[roles[0]]['folds'] if roles else 0}-fold stratified CV on the training split "
                 "(dots: folds, bars: mean)", fontsize=9)
    return _save(fig, path)


def plot_importances(importances: Mapping[str, float], path: Path, top: int = 15) -> str:
    plt = _plt()
    items = sorted(importances.items(), key=lambda kv: -kv[1])[:top][::-1]
    fig, ax = plt.subplots(figsize=(5.0, 0.25 * len(items) + 1.0))
    ax.barh([k for k, _ in items], [v for _, v in items], color="C0")
    ax.set_xlabel("mean decrease in impurity")
    ax.tick_params(axis="y", labelsize=7)
    ax.set_title("Light-curve forest: most important features", fontsize=9)
    return _save(fig, path)


def plot_attention(att_spec: np.ndarray, y: np.ndarray, history: Mapping[str, Any], path: Path) -> str:
    plt = _plt()
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(8.6, 3.2))
    bins = np.linspace(0, 1, 31)
    for cls, name in ((0, "non-BAL"), (1, "BAL")):
        v = att_spec[y == cls]
        if v.size:
            a1.hist(v, bins=bins, alpha=0.6, density=True, label=f"{name} (mean {np.mean(v):.2f})")
    a1.set_xlabel("attention weight of the spectrum, a_spec (a_lc = 1 - a_spec)")
    a1.set_ylabel("density")
    a1.legend(fontsize=7)
    a1.set_title("Modality attention, test split", fontsize=9)
    a2.plot(history.get("train_loss", []), label="train")
    a2.plot(history.get("val_loss", []), label="validation")
    if history.get("best_epoch"):
        a2.axvline(history["best_epoch"] - 1, color="grey", ls=":", lw=1, label="kept")
    a2.set_xlabel("epoch")
    a2.set_ylabel("class-weighted BCE")
    a2.legend(fontsize=7)
    a2.set_title("Attention network training", fontsize=9)
    return _save(fig, path)

