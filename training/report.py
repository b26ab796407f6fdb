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

Layout: :mod:`training.report_metrics` (metrics, JSON-safe copies), :mod:`training.report_tables`
(the markdown tables, the reference figures), :mod:`training.report_figures` (PNGs) and
:mod:`training.report_sections` (one function per section of report.md); this module joins them in
:func:`write_report` and re-exports the names, so ``training.report.class_metrics`` etc. keep working.

Sections beyond the reference table: the light-curve model per light-curve history (data release vs
ZTF / Rubin alert windows, :mod:`training.lc_history`), and the candidate scorer (ranking-head
precision / recall / F1 / ROC AUC, ablations, kNN accuracy of the trained vs a random encoder).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from training import report_sections as sections
from training.report_figures import (
    plot_attention,
    plot_confusion,
    plot_cv,
    plot_importances,
    plot_pr_curves,
    write_figures,
)
from training.report_metrics import class_metrics, plain, rounded, summarise_folds
from training.report_sections import scorer_section
from training.report_tables import (
    MODEL_TITLES,
    REFERENCE,
    REFERENCE_SOURCE,
    cv_table,
    history_table,
    model_table,
    summary_table,
)

__all__ = [
    "MODEL_TITLES", "REFERENCE", "REFERENCE_SOURCE", "class_metrics", "cv_table", "history_table", "model_table",
    "plain", "plot_attention", "plot_confusion", "plot_cv", "plot_importances", "plot_pr_curves", "rounded",
    "scorer_section", "summarise_folds", "summary_table", "write_figures", "write_report",
]


def write_report(report_dir: Path, ctx: Mapping[str, Any]) -> Path:
    """Write ``report.md``, ``metrics.json`` and the figures into ``report_dir``; returns report.md.

    ``ctx`` keys (all produced by :func:`training.train.train`): ``kind``, ``title``, ``data``,
    ``test`` (role -> class_metrics on the common test rows), ``test_all`` (role -> metrics on every
    test row the model applies to), ``cv`` (role -> summarise_folds), ``curves`` (role -> (y, p)),
    ``late`` (weights), ``attention`` (history, att_spec, y), ``importances``, ``parity``, ``timings``,
    ``figures`` (bool), ``command``, ``limitations`` (list of lines); optional ``by_history`` (light-curve
    kind -> held-out metrics of ``bal_lc`` / ``fusion_attention``, :func:`training.train_eval._lc_by_history`)
    and ``scorer`` (``{"entries": {role: manifest entry}, "figure": PNG name or None}`` for the candidate
    scorer: its metrics tables and the embedding picture are linked from report.md).
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    figs = write_figures(report_dir, ctx) if ctx.get("figures", True) else {}
    out = [
        *sections.header_section(ctx),
        *sections.data_section(ctx),
        *sections.results_section(ctx, figs),
        *sections.history_section(ctx),
        *sections.late_fusion_section(ctx),
        *sections.attention_section(ctx, figs),
        *sections.cv_section(ctx, figs),
        *sections.features_section(figs),
        *(scorer_section(ctx["scorer"]) if ctx.get("scorer") else []),
        *sections.parity_section(ctx),
        *sections.timings_section(ctx),
        *sections.limitations_section(ctx),
    ]
    path = report_dir / "report.md"
    path.write_text("\n".join(out), encoding="utf-8")
    _write_metrics_json(report_dir, ctx)
    return path


def _write_metrics_json(report_dir: Path, ctx: Mapping[str, Any]) -> None:
    """Every number of the report, machine-readable (rounded so diffs between runs stay small)."""
    metrics: dict[str, Any] = {k: ctx[k] for k in ("test", "test_all", "cv", "by_history", "late", "parity",
                                                    "timings") if k in ctx}
    if ctx.get("scorer"):
        metrics["scorer"] = {r: e.get("metrics") for r, e in (ctx["scorer"].get("entries") or {}).items()}
    (report_dir / "metrics.json").write_text(json.dumps(rounded(metrics, 6), indent=1), encoding="utf-8")
