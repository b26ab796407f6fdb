"""Evaluation metrics and the human-readable report written beside every bundle (``DIR/report/``).

Why the reference study's form: SCIENCE.md quotes one table (precision, recall and F1 for BAL and
non-BAL, multiplicative fusion; Guerra-Varas et al. 2024). Every model here is reported in the same
form with those figures beside ours, so a reader sees at once where a model stands -- and, for a
bundle trained on synthetic data, is told plainly that the comparison is with a different data set.

Metrics are computed on the held-out test split only (never used for fitting or model selection);
k-fold cross-validation figures on the training split are reported separately. The decision threshold
is 0.5 for every model: each is trained class-balanced (balanced bootstrap, balanced class weights or
``pos_weight``), so 0.5 is the balanced operating point, and no threshold is tuned on the test set.

Figures (matplotlib, Agg backend, small PNGs): confusion matrices, precision-recall curves, per-fold
CV metrics, the forest's feature importances, the attention weights, the attention net's loss curves,
and (written by :mod:`training.scorer`) the 2-D projection of the cutout embedding coloured by class.

Sections beyond the reference table: the light-curve model per light-curve history (data release vs
ZTF / Rubin alert windows, :mod:`training.lc_history`), and the candidate scorer (ranking-head
precision / recall / F1 / ROC AUC, ablations, kNN accuracy of the trained vs a random encoder).
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

#: Guerra-Varas et al. (ML4Astro 2024), multiplicative fusion + weighted dense NN (SCIENCE.md), in %.
REFERENCE = {
    "bal": {"precision": 82.35, "recall": 67.96, "f1": 74.47},
    "nonbal": {"precision": 84.86, "recall": 92.50, "f1": 88.52},
}
REFERENCE_SOURCE = "Guerra-Varas et al., ML4Astro 2024: multiplicative fusion + weighted dense NN (SCIENCE.md)"

#: Display names of the models, in report order.
MODEL_TITLES = {
    "bal_lc": "Light curve only (Balanced Random Forest)",
    "spectral": "Spectrum only (kernel PCA + logistic regression)",
    "fusion_late": "Late fusion (logistic stacking of the two probabilities)",
    "fusion_attention": "Multiplicative fusion with modality attention (dense network)",
    "fusion_attention_spec_only": "Ablation: attention network with the light-curve input removed",
}


# ===================================================================================== metrics


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


# ===================================================================================== figures


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


# ===================================================================================== markdown


def _pct(v: Any) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{100 * float(v):.2f}%"


def model_table(m: Mapping[str, Any]) -> str:
    """The reference study's table for one model, with the reference figures beside ours."""
    lines = ["| class | precision | recall | F1 | reference precision | reference recall | reference F1 |",
             "|---|---|---|---|---|---|---|"]
    for cls, name in (("bal", "BAL"), ("nonbal", "non-BAL")):
        ours, ref = m[cls], REFERENCE[cls]
        lines.append(f"| {name} | {_pct(ours['precision'])} | {_pct(ours['recall'])} | {_pct(ours['f1'])} | "
                     f"{ref['precision']:.2f}% | {ref['recall']:.2f}% | {ref['f1']:.2f}% |")
    return "\n".join(lines)


def summary_table(test: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| model | BAL P | BAL R | BAL F1 | non-BAL P | non-BAL R | non-BAL F1 | ROC AUC | AP | n (BAL) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for role, m in test.items():
        lines.append(
            f"| {role} | {_pct(m['bal']['precision'])} | {_pct(m['bal']['recall'])} | {_pct(m['bal']['f1'])} | "
            f"{_pct(m['nonbal']['precision'])} | {_pct(m['nonbal']['recall'])} | {_pct(m['nonbal']['f1'])} | "
            f"{m['roc_auc']:.3f} | {m['average_precision']:.3f} | {m['n']} ({m['n_bal']}) |"
            if m["n"] else f"| {role} | - | - | - | - | - | - | - | - | 0 |")
    ref_b, ref_n = REFERENCE["bal"], REFERENCE["nonbal"]
    lines.append(f"| reference study | {ref_b['precision']:.2f}% | {ref_b['recall']:.2f}% | {ref_b['f1']:.2f}% | "
                 f"{ref_n['precision']:.2f}% | {ref_n['recall']:.2f}% | {ref_n['f1']:.2f}% | - | - | 808 BALs |")
    return "\n".join(lines)


def cv_table(cv: Mapping[str, Mapping[str, Any]]) -> str:
    lines = ["| model | folds | BAL P | BAL R | BAL F1 | non-BAL F1 | ROC AUC |", "|---|---|---|---|---|---|---|"]
    for role, c in cv.items():
        if not c.get("folds"):
            lines.append(f"| {role} | skipped | | | | | |")
            continue

        def ms(k: str, c: Mapping[str, Any] = c) -> str:
            m, s = c.get(f"{k}_mean"), c.get(f"{k}_std")
            return "n/a" if m is None or not math.isfinite(m) else f"{100 * m:.1f} +- {100 * (s or 0):.1f}%"

        roc = c.get("roc_auc_mean")
        lines.append(f"| {role} | {c['folds']} | {ms('bal_precision')} | {ms('bal_recall')} | {ms('bal_f1')} | "
                     f"{ms('nonbal_f1')} | {'n/a' if roc is None or not math.isfinite(roc) else f'{roc:.3f}'} |")
    return "\n".join(lines)


def history_table(by_history: Mapping[str, Mapping[str, Any]], role: str = "bal_lc") -> str:
    """One row per light-curve kind: where the objects come from, how many get a probability, and
    ``role``'s held-out metrics on those (threshold 0.5)."""
    lines = ["| light curves | in training | objects | with a probability | BAL P | BAL R | BAL F1 | non-BAL F1 | "
             "ROC AUC | AP | n (BAL) |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for h in by_history.values():
        m = h.get(role)
        if m is None:
            continue
        n_obj = h["n"] if role == "bal_lc" else m["n"]
        cov = f"{h['n_scored']} ({100 * h['n_scored'] / max(1, h['n']):.0f}%)" if role == "bal_lc" else "-"
        auc, ap = m["roc_auc"], m["average_precision"]
        lines.append(
            f"| {h['title']} | {'yes' if h['in_training'] else 'no (evaluation only)'} | {n_obj} | {cov} | "
            f"{_pct(m['bal']['precision'])} | {_pct(m['bal']['recall'])} | {_pct(m['bal']['f1'])} | "
            f"{_pct(m['nonbal']['f1'])} | {'n/a' if not math.isfinite(auc) else f'{auc:.3f}'} | "
            f"{'n/a' if not math.isfinite(ap) else f'{ap:.3f}'} | {m['n']} ({m['n_bal']}) |")
    return "\n".join(lines)


def _f(v: Any, digits: int = 3) -> str:
    return "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{float(v):.{digits}f}"


def scorer_section(scorer: Mapping[str, Any]) -> list[str]:
    """Markdown for the candidate scorer: head metrics, ablations, the encoder's kNN figures, the
    SIMBAD check on real alerts if it ran, and the embedding picture."""
    entries = scorer.get("entries") or {}
    head = entries.get("ranking_head") or {}
    enc = entries.get("cutout_encoder") or {}
    hm, em = head.get("metrics") or {}, enc.get("metrics") or {}
    htd = head.get("training_data") or {}
    etd = enc.get("training_data") or {}
    out = ["## Candidate scorer (cutout encoder + ranking head)", "",
           "`candidate_score = ranking-head probability x (bal_fusion_prob if known else bal_lc_prob)`, null with a "
           "flag when the alert has no usable cutout or no BAL probability; `is_candidate = candidate_score >= "
           "threshold` (the rule and its reasons: `broker_plugin/models/scoring.py`). The head answers "
           "\"is this alert a quasar worth following up\" (positives: BAL and non-BAL quasars; negatives: stars, "
           "supernovae, blazars, bogus), from the contrastive embedding of the cutouts, the light-curve features and "
           "the alert metadata.",
           "",
           f"Trained on {htd.get('n_alerts', '?')} synthetic alerts (ZTF and Rubin packets decoded by the plugin; "
           f"classes {htd.get('class_counts', {})}), {htd.get('n_test', '?')} held out; the encoder on "
           f"{etd.get('n_stamps', '?')} unlabelled stamps. Synthetic metadata separates the classes more easily "
           "than the sky does: these figures overstate real performance.", "",
           "### Ranking head, held-out synthetic alerts (threshold 0.5)", "",
           "| set | precision | recall | F1 | ROC AUC | AP |", "|---|---|---|---|---|---|",
           f"| all held-out alerts ({htd.get('n_test', '?')}) | {_pct(hm.get('test_precision'))} | "
           f"{_pct(hm.get('test_recall'))} | {_pct(hm.get('test_f1'))} | {_f(hm.get('test_roc_auc'))} | "
           f"{_f(hm.get('test_average_precision'))} |"]
    for key, title in (("ztf", "ZTF"), ("lsst", "Rubin"), ("ztf_no_forced", "ZTF without forced photometry")):
        if f"test_{key}_roc_auc" in hm:
            out.append(f"| {title} ({hm.get(f'test_{key}_n', '?')}) | | | {_pct(hm.get(f'test_{key}_f1'))} | "
                       f"{_f(hm.get(f'test_{key}_roc_auc'))} | |")
    for key, title in (("no_embedding", "ablation: without the image embedding"),
                       ("embedding_only", "ablation: image embedding only")):
        if f"ablation_{key}_roc_auc" in hm:
            out.append(f"| {title} | | | {_pct(hm.get(f'ablation_{key}_f1'))} | "
                       f"{_f(hm.get(f'ablation_{key}_roc_auc'))} | |")
    real = hm.get("real_simbad_check")
    if isinstance(real, Mapping) and real.get("n"):
        out.append(f"| real ZTF alerts labelled by SIMBAD ({real['n']}, {real.get('n_positive')} quasar/AGN) | "
                   f"{_pct(real.get('precision'))} | {_pct(real.get('recall'))} | | {_f(real.get('roc_auc'))} | |")
    out += ["", "### Cutout encoder: kNN (k=5) accuracy on held-out stamps", "",
            "Does the self-supervised embedding group stamps of the same kind (point / nuclear / extended / "
            "artifact) without ever seeing a label? The same network at its random initialisation, and raw pixels, "
            "are the baselines.", "",
            "| embedding | all kinds | point / extended / artifact | alert stamps, morphology |",
            "|---|---|---|---|"]
    for key, title in (("trained", "trained encoder"), ("random", "random encoder (same architecture)"),
                       ("raw_pixels", "raw pixels")):
        out.append(f"| {title} | {_pct(em.get(f'knn_{key}_acc'))} | {_pct(em.get(f'knn_{key}_acc_3kinds'))} | "
                   f"{_pct(em.get(f'knn_alert_morphology_acc_{key}'))} |")
    out += ["", f"NT-Xent loss {_f(em.get('loss_first_epoch'))} (first epoch) -> {_f(em.get('loss_last_epoch'))} "
            "(last epoch).", ""]
    if scorer.get("figure"):
        out += [f"![cutout embedding, 2-D projection coloured by class]({scorer['figure']})", ""]
    return out


def write_report(report_dir: Path, ctx: Mapping[str, Any]) -> Path:
    """Write ``report.md``, ``metrics.json`` and the figures into ``report_dir``; returns report.md.

    ``ctx`` keys (all produced by :func:`training.train.train`): ``kind``, ``title``, ``data``,
    ``test`` (role -> class_metrics on the common test rows), ``test_all`` (role -> metrics on every
    test row the model applies to), ``cv`` (role -> summarise_folds), ``curves`` (role -> (y, p)),
    ``late`` (weights), ``attention`` (history, att_spec, y), ``importances``, ``parity``, ``timings``,
    ``figures`` (bool), ``command``, ``limitations`` (list of lines); optional ``by_history`` (light-curve
    kind -> held-out metrics of ``bal_lc`` / ``fusion_attention``, :func:`training.train._lc_by_history`)
    and ``scorer`` (``{"entries": {role: manifest entry}, "figure": PNG name or None}`` for the candidate
    scorer: its metrics tables and the embedding picture are linked from report.md).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    figs: dict[str, str] = {}
    if ctx.get("figures", True):
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

    synthetic = ctx["kind"] == "synthetic"
    d = ctx["data"]
    out: list[str] = [f"# {ctx['title']}", ""]
    if synthetic:
        out += ["> **Trained on synthetic data.** Every number below describes performance on simulated quasars "
                "(training.synthetic), not on the sky. The reference figures come from real SDSS spectra and ZTF "
                "light curves and are shown for orientation only: the comparison is between different data sets.", ""]
    out += [f"Created {ctx['created']} by `{ctx.get('command') or 'training.train.train()'}` "
            f"(bal-broker {ctx.get('package_version', '?')}, feature version {ctx['feature_version']}).", ""]
    out += ["## Data", ""]
    out += [f"- Objects: {d['n_objects']} ({d['n_bal']} BAL, {d['n_objects'] - d['n_bal']} non-BAL; "
            f"BAL fraction {d['bal_fraction']:.3f}); usable (light curve with >= {d['min_points']} points in g or r, "
            f"or a usable spectrum): {d['n_usable']}.",
            f"- With a usable light curve: {d['n_lc_ok']}; with a usable spectrum: {d['n_spec_ok']}; both: "
            f"{d['n_both']}.",
            f"- Held-out test split: {d['test_fraction']:.0%} stratified ({d['n_test']} objects, "
            f"{d['n_test_bal']} BAL), "
            f"never used for fitting, early stopping or model selection. Training split: {d['n_train']} "
            f"({d['n_train_bal']} BAL).",
            f"- Seed: {d['seed']}."]
    if d.get("downsample"):
        out.append(f"- Non-BALs of the light-curve training set downsampled in the balanced (z, mean r mag) space: "
                   f"{d['downsample']}.")
    if d.get("spectrum_failures"):
        out.append(f"- Spectra that could not be preprocessed: {d['spectrum_failures']}.")
    lh = d.get("lc_history")
    if lh:
        out.append(f"- Light curves (`--lc-history {lh['mode']}`, training/lc_history.py): "
                   + ", ".join(f"{k} {v}" for k, v in lh["counts"].items())
                   + (f"; alert windows {lh['window_days']} days" if lh.get("window_days") else "")
                   + (f"; {100 * lh['ztf_no_forced_fraction']:.0f}% of ZTF alerts without forced photometry"
                      if lh.get("ztf_no_forced_fraction") else "") + f" ({lh['method']}).")
    if d.get("generator"):
        out += ["", "Generator parameters (training.synthetic.generate_training_set):", "", "```json",
                json.dumps(plain(d["generator"]), indent=1), "```"]
    if d.get("sources"):
        out += ["", "Inputs:", "", "```json", json.dumps(plain(d["sources"]), indent=1), "```"]

    out += ["", "## Results on the held-out test split", ""]
    if ctx["test"]:
        out += [f"All models on the same {next(iter(ctx['test'].values()))['n']} test objects (those with both a "
                "usable light curve and a usable spectrum), threshold 0.5:", "", summary_table(ctx["test"]), ""]
    for role, m in ctx["test"].items():
        out += [f"### {MODEL_TITLES.get(role, role)} (`{role}`)", "", model_table(m), ""]
    extra = {r: m for r, m in ctx.get("test_all", {}).items() if m["n"] and r in ("bal_lc", "spectral")}
    if extra:
        out += ["Each single-modality model on every test object it applies to:", "", summary_table(extra), ""]
    if "confusion" in figs:
        out += [f"![confusion matrices]({figs['confusion']})", "", f"![precision-recall curves]({figs['pr']})", ""]

    by_hist = ctx.get("by_history") or {}
    if by_hist:
        out += ["## Light curve only, by light-curve history", "",
                "What the light-curve model can do on each kind of light curve: data-release light curves (years "
                "of photometry, the reference study's setting) against the histories alerts actually carry (ZTF: "
                "30 days, half of them without forced photometry; Rubin: 12 months). Held-out objects only; "
                "metrics on the objects with a probability (>= "
                f"{d['min_points']} points in g or r; the others get null + `too_few_points` at run time). Kinds "
                "not in training are scored on an evaluation-only set.", "", history_table(by_hist, "bal_lc"), ""]
        if any(h.get("fusion_attention") for h in by_hist.values()):
            out += ["The attention fusion on the same held-out objects with a spectrum (the spectrum carries most "
                    "of the weight, so the light-curve history matters less):", "",
                    history_table(by_hist, "fusion_attention"), ""]

    late = ctx.get("late")
    if late:
        out += ["## Late fusion weights", "",
                f"p = sigmoid({late['w_lc']:.3f} logit(p_lc) + {late['w_spec']:.3f} logit(p_spec) "
                f"+ {late['bias']:.3f}), "
                f"fitted on out-of-fold training predictions: the spectrum carries {100 * late['spectral_share']:.0f}% "
                "of the weight.", ""]
    att = ctx.get("attention") or {}
    if att.get("summary"):
        s = att["summary"]
        out += ["## Attention fusion", "",
                f"{s['n_parameters']} parameters; trained {s['epochs_run']} epochs, kept epoch {s['best_epoch']} "
                f"(lowest validation loss); pos_weight {s['pos_weight']:.2f}. Mean attention on the spectrum: "
                f"{s['mean_att_spec']:.3f} (BAL {s['mean_att_spec_bal']:.3f}, "
                f"non-BAL {s['mean_att_spec_nonbal']:.3f}). "
                "The ablation row (`fusion_attention_spec_only`) feeds the same network NaN light-curve "
                "features: the difference to `fusion_attention` is what the light curve adds inside the network; "
                "the difference to `spectral` is the gain of a non-linear head over the linear spectral classifier.",
                ""]
        if "attention" in figs:
            out += [f"![attention]({figs['attention']})", ""]

    out += ["## Cross-validation (training split)", "", cv_table(ctx["cv"]), ""]
    if ctx.get("cv_note"):
        out += [ctx["cv_note"], ""]
    if "cv" in figs:
        out += [f"![cv folds]({figs['cv']})", ""]
    if "importance" in figs:
        out += ["## Light-curve features", "", f"![feature importance]({figs['importance']})", ""]
    if ctx.get("scorer"):
        out += scorer_section(ctx["scorer"])

    out += ["## ONNX parity", "", "| model | max abs difference | checked on |", "|---|---|---|"]
    for role, p in ctx["parity"].items():
        out.append(f"| {role} | {p['max_abs_diff']:.2e} | {p['checked_on']} |")
    for role, e in ((ctx.get("scorer") or {}).get("entries") or {}).items():
        d = (e.get("metrics") or {}).get("onnx_max_abs_diff")
        if d is not None:
            out.append(f"| {role} | {d:.2e} | held-out {'stamps' if role == 'cutout_encoder' else 'alerts'} |")
    out += ["", "## Timings", "", "| step | seconds |", "|---|---|"]
    out += [f"| {k} | {v:.1f} |" for k, v in ctx["timings"].items()]
    out += ["", "## What this bundle is and is not good for", ""]
    out += [f"- {line}" for line in ctx.get("limitations", [])]
    out.append("")
    path = report_dir / "report.md"
    path.write_text("\n".join(out), encoding="utf-8")
    metrics = {k: ctx[k] for k in ("test", "test_all", "cv", "by_history", "late", "parity", "timings") if k in ctx}
    if ctx.get("scorer"):
        metrics["scorer"] = {r: e.get("metrics") for r, e in (ctx["scorer"].get("entries") or {}).items()}
    (report_dir / "metrics.json").write_text(json.dumps(rounded(metrics, 6), indent=1), encoding="utf-8")
    return path
