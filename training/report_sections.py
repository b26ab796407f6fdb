"""The sections of the training report (``report.md``), one function per section, in report order.

Each takes the report context of :func:`training.report.write_report` (and the figure names where a
section links figures) and returns its markdown lines, so a section can be read, changed or tested
without the others; :func:`training.report.write_report` only joins them.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from training.report_metrics import plain
from training.report_tables import MODEL_TITLES, _f, _pct, cv_table, history_table, model_table, summary_table


def header_section(ctx: Mapping[str, Any]) -> list[str]:
    """Title, the synthetic-data warning, and how the bundle was made."""
    out: list[str] = [f"# {ctx['title']}", ""]
    if ctx["kind"] == "synthetic":
        out += ["> **Trained on synthetic data.** Every number below describes performance on simulated quasars "
                "(training.synthetic), not on the sky. The reference figures come from real SDSS spectra and ZTF "
                "light curves and are shown for orientation only: the comparison is between different data sets.", ""]
    out += [f"Created {ctx['created']} by `{ctx.get('command') or 'training.train.train()'}` "
            f"(bal-broker {ctx.get('package_version', '?')}, feature version {ctx['feature_version']}).", ""]
    return out


def data_section(ctx: Mapping[str, Any]) -> list[str]:
    """Object counts, the split, light-curve kinds, generator parameters or real inputs."""
    d = ctx["data"]
    out = ["## Data", ""]
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
    return out


def results_section(ctx: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """The held-out test split: the summary table, one reference-form table per model, the figures."""
    out = ["", "## Results on the held-out test split", ""]
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
    return out


def history_section(ctx: Mapping[str, Any]) -> list[str]:
    """The light-curve model (and the attention fusion) per light-curve kind; empty without the table."""
    by_hist = ctx.get("by_history") or {}
    if not by_hist:
        return []
    out = ["## Light curve only, by light-curve history", "",
           "What the light-curve model can do on each kind of light curve: data-release light curves (years "
           "of photometry, the reference study's setting) against the histories alerts actually carry (ZTF: "
           "30 days, half of them without forced photometry; Rubin: 12 months). Held-out objects only; "
           "metrics on the objects with a probability (>= "
           f"{ctx['data']['min_points']} points in g or r; the others get null + `too_few_points` at run time). "
           "Kinds not in training are scored on an evaluation-only set.", "", history_table(by_hist, "bal_lc"), ""]
    if any(h.get("fusion_attention") for h in by_hist.values()):
        out += ["The attention fusion on the same held-out objects with a spectrum (the spectrum carries most "
                "of the weight, so the light-curve history matters less):", "",
                history_table(by_hist, "fusion_attention"), ""]
    return out


def late_fusion_section(ctx: Mapping[str, Any]) -> list[str]:
    late = ctx.get("late")
    if not late:
        return []
    return ["## Late fusion weights", "",
            f"p = sigmoid({late['w_lc']:.3f} logit(p_lc) + {late['w_spec']:.3f} logit(p_spec) "
            f"+ {late['bias']:.3f}), "
            f"fitted on out-of-fold training predictions: the spectrum carries {100 * late['spectral_share']:.0f}% "
            "of the weight.", ""]


def attention_section(ctx: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    """The attention net's size, training and mean attention, and what the ablation row means."""
    att = ctx.get("attention") or {}
    if not att.get("summary"):
        return []
    s = att["summary"]
    out = ["## Attention fusion", "",
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
    return out


def cv_section(ctx: Mapping[str, Any], figs: Mapping[str, str]) -> list[str]:
    out = ["## Cross-validation (training split)", "", cv_table(ctx["cv"]), ""]
    if ctx.get("cv_note"):
        out += [ctx["cv_note"], ""]
    if "cv" in figs:
        out += [f"![cv folds]({figs['cv']})", ""]
    return out


def features_section(figs: Mapping[str, str]) -> list[str]:
    if "importance" not in figs:
        return []
    return ["## Light-curve features", "", f"![feature importance]({figs['importance']})", ""]


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



def parity_section(ctx: Mapping[str, Any]) -> list[str]:
    """ONNX-vs-Python differences of every exported model, the candidate scorer's included."""
    out = ["## ONNX parity", "", "| model | max abs difference | checked on |", "|---|---|---|"]
    for role, p in ctx["parity"].items():
        out.append(f"| {role} | {p['max_abs_diff']:.2e} | {p['checked_on']} |")
    for role, e in ((ctx.get("scorer") or {}).get("entries") or {}).items():
        d = (e.get("metrics") or {}).get("onnx_max_abs_diff")
        if d is not None:
            out.append(f"| {role} | {d:.2e} | held-out {'stamps' if role == 'cutout_encoder' else 'alerts'} |")
    return out


def timings_section(ctx: Mapping[str, Any]) -> list[str]:
    return ["", "## Timings", "", "| step | seconds |", "|---|---|",
            *[f"| {k} | {v:.1f} |" for k, v in ctx["timings"].items()]]


def limitations_section(ctx: Mapping[str, Any]) -> list[str]:
    return ["", "## What this bundle is and is not good for", "",
            *[f"- {line}" for line in ctx.get("limitations", [])], ""]
