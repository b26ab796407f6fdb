"""Markdown tables of the training report, with the reference study's figures beside ours.

Why the reference study's form: SCIENCE.md quotes one table (precision, recall and F1 for BAL and
non-BAL, multiplicative fusion; Guerra-Varas et al. 2024). Every model is reported in the same form
so a reader sees at once where a model stands.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

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

