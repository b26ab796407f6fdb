"""The "bundle and report" step of ``bal-broker train``: manifest entries, bundle files, verification, report.

The manifest entries are built before the extra models (the candidate scorer) run, the bundle is
written into a staging directory, re-loaded through the plugin's own verifier, and only then does it
replace the output directory: a bundle the plugin would refuse is never left behind.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION
from training.train_config import TrainConfig
from training.train_data import Dataset
from training.train_eval import Evaluation, Exported
from training.train_steps import Features, FusionFit, LCFit, SpectralFit, Split


@dataclass
class Fitted:
    """Everything the steps before the bundle produced, in one place for the manifest and the report."""

    data: Dataset
    config: TrainConfig
    feats: Features
    split: Split
    lc: LCFit
    spec: SpectralFit
    late: FusionFit
    att: FusionFit
    ev: Evaluation
    exported: Exported


@dataclass
class BundlePlan:
    """Manifest content decided before the extra models run (their entries are added later)."""

    name: str
    version: str
    kind: str
    description: str
    models: list[Any]
    catalogue: Any
    created: str
    limitations: list[str]
    training_config: dict[str, Any]


def _training_data(f: Fitted) -> Callable[..., dict[str, Any]]:
    """A function giving one model's ``training_data``: the block every model shares plus its rows."""
    data, config = f.data, f.config
    y_all = data.labels.astype(np.int64)
    base_td: dict[str, Any] = {
        "kind": data.kind, "seed": config.seed, "n_objects": len(data), "n_train": int(f.split.is_train.sum()),
        "n_test": int(f.split.is_test.sum()), "test_fraction": config.test_fraction,
    }
    for key in ("generator", "sources", "lc_history"):
        if data.description.get(key):
            base_td[key] = data.description[key]

    def td(rows_: np.ndarray, what: str, **extra: Any) -> dict[str, Any]:
        yb = y_all[rows_]
        return {**base_td, "rows": what, "n_fit": int(rows_.size), "n_bal": int(yb.sum()),
                "n_nonbal": int(yb.size - yb.sum()), "bal_fraction": float(yb.mean()) if yb.size else None,
                **extra}

    return td


def _model_metrics(f: Fitted, role: str) -> dict[str, Any]:
    """The manifest's ``metrics`` of one model: held-out headline figures, CV summary, ONNX parity."""
    ev = f.ev
    m: dict[str, Any] = {"threshold": 0.5}
    if role in ev.test:
        m["test_common"] = _headline(ev.test[role])
    if role in ev.test_all:
        m["test_all_applicable"] = _headline(ev.test_all[role])
    m["cv"] = {k: v for k, v in ev.cv[role].items() if k != "per_fold"}
    m["onnx_parity_max_abs"] = f.exported.parity[role]["max_abs_diff"]
    hist = {k: {"source": v["source"], "in_training": v["in_training"], "n_objects": v["n"],
                **_headline(v[role])} for k, v in ev.by_history.items() if v.get(role) is not None}
    if hist:
        m["test_by_lc_history"] = hist
    return m


def _model_artifacts(f: Fitted) -> list[Any]:
    """One :class:`~training.bundle_writer.ModelArtifact` per exported model, in manifest order."""
    from training.bundle_writer import ModelArtifact
    from training.fusion import n_parameters

    config, version, onnx = f.config, f.config.version, f.exported.onnx
    lc_model, embedding, late, att = f.lc.model, f.spec.embedding, f.late.model, f.att.model
    td = _training_data(f)
    return [
        ModelArtifact("bal_lc", onnx["bal_lc"], version,
                      "Balanced Random Forest on the light-curve feature vector (median imputation + missing "
                      "indicators inside the graph); probabilities[:, 1] = P(BAL)",
                      td(f.lc.final_rows, f"training objects with >= {config.min_points} points in g or r",
                         class_imbalance="balanced bootstrap per tree (Chen+2004)", downsample=f.lc.downsample,
                         config=config.lc.as_dict()),
                      _model_metrics(f, "bal_lc"), FEATURE_NAMES, FEATURE_VERSION,
                      {"min_points": int(config.min_points), "positive_class": "BAL",
                       "feature_importances": dict(sorted(lc_model.feature_importances().items(),
                                                          key=lambda kv: -kv[1])[:10])}),
        ModelArtifact("spectral", onnx["spectral"], version,
                      "C IV-window spectrum (training.spectra preprocessing, flux on the rest-frame grid) -> "
                      "RBF kernel-PCA embedding -> logistic regression; for offline use and the catalogue",
                      td(f.spec.rows, "training objects with a usable spectrum",
                         class_imbalance="class-balanced logistic regression; class-balanced landmarks",
                         n_components=embedding.n_components, n_landmarks=int(embedding.landmarks.shape[0]),
                         preprocess_version=embedding.version),
                      _model_metrics(f, "spectral"), None, None, {"positive_class": "BAL"}),
        ModelArtifact("fusion_late", onnx["fusion_late"], version,
                      "sigmoid(w_lc logit(p_lc) + w_spec logit(p_spec) + b), fitted on out-of-fold "
                      "probabilities; NaN p_lc contributes 0",
                      td(f.late.rows, "training objects with both modalities (out-of-fold probabilities)"),
                      _model_metrics(f, "fusion_late"), None, None, {"weights": _late_weights(late)}),
        ModelArtifact("fusion_attention", onnx["fusion_attention"], version,
                      "Multiplicative fusion with modality attention (dense network): raw light-curve "
                      "features (imputed and scaled inside the graph) + spectral embedding -> P(BAL)",
                      td(f.att.rows, "training objects with a usable spectrum (light-curve features may be NaN)",
                         class_imbalance=f"BCE with pos_weight {att.history['pos_weight']:.3f}",
                         config=config.attention.as_dict(), epochs_run=att.history["epochs_run"],
                         best_epoch=att.history["best_epoch"], n_parameters=n_parameters(att)),
                      _model_metrics(f, "fusion_attention"), FEATURE_NAMES, FEATURE_VERSION,
                      {"positive_class": "BAL"}),
    ]


def _late_weights(late: Any) -> dict[str, Any]:
    return {"w_lc": late.w_lc, "w_spec": late.w_spec, "bias": late.bias, "spectral_share": late.spectral_share}


def plan_bundle(f: Fitted) -> BundlePlan:
    """Manifest entries, the spectral catalogue, the limitations and the description of the bundle."""
    from training.bundle_writer import CatalogueArtifact, utc_now

    data, config, kind = f.data, f.config, f.data.kind
    name = config.name or ("bal-synthetic" if kind == "synthetic" else "bal-dr16q")
    models = _model_artifacts(f)
    cat_rows = np.flatnonzero(f.feats.spec_ok)
    catalogue = CatalogueArtifact(
        ids=data.ids[cat_rows], ra=data.ra[cat_rows], dec=data.dec[cat_rows], z=data.z[cat_rows],
        embedding=f.spec.E[cat_rows].astype(np.float32), spec_prob=f.spec.p[cat_rows].astype(np.float32),
        description=("synthetic objects (positions from the generator) with their spectral embedding and "
                     "p_spec" if kind == "synthetic" else
                     "DR16Q quasars with a usable spec-lite spectrum: embedding and p_spec"),
    )
    created = utc_now()
    limitations = _limitations(kind, f.ev.test, f.late.model, config.lc_history, f.ev.by_history)
    description = (f"{'Synthetic-data' if kind == 'synthetic' else 'DR16Q'} BAL bundle: light-curve forest, "
                   "spectral model, late and attention fusion, spectral catalogue"
                   + (". Trained on simulated quasars: for demos, tests and plumbing, not for science."
                      if kind == "synthetic" else "."))
    training_config = config.as_dict()
    training_config["lc_history"] = config.lc_history
    return BundlePlan(name, config.version, kind, description, models, catalogue, created, limitations,
                      training_config)


def _decision_rule(scorer: Mapping[str, Any]) -> str:
    if len(scorer) == 2:
        return ("candidate_score = ranking_head probability x (bal_fusion_prob if known else "
                "bal_lc_prob); is_candidate = candidate_score >= candidate_threshold "
                "(broker_plugin.models.scoring.combine)")
    return "is_candidate = (bal_fusion_prob if known else bal_lc_prob) >= candidate_threshold"


def _verify_bundle(staging: Path, with_scorer: bool) -> None:
    """The plugin's verifier must accept what was written, before anything replaces the output."""
    from broker_plugin.models.bundle import ModelBundle
    from broker_plugin.models.inference import BundleStage

    stage = BundleStage(ModelBundle.load(staging))
    if stage.fusion_role != "fusion_attention":
        raise RuntimeError("written bundle does not wire the attention fusion")
    if with_scorer and not stage.has_candidate_scorer:
        raise RuntimeError("written bundle does not wire the candidate scorer")


def bundle_and_report_step(f: Fitted, plan: BundlePlan, staging: Path, out: Path,
                           extra_entries: dict[str, Any] | None, timings: Callable[[], dict[str, float]],
                           st: Any) -> dict[str, Any]:
    """Write the bundle into ``staging``, verify it, write the report, move it to ``out``; the manifest.

    ``timings()`` is called once the bundle is verified (the report's timings run to that point)."""
    import broker_plugin
    from training.bundle_writer import replace_dir
    from training.report import write_report

    scorer = {r: extra_entries[r] for r in ("cutout_encoder", "ranking_head")
              if extra_entries and r in extra_entries}
    description = plan.description
    if len(scorer) == 2:
        description += " Candidate scorer: contrastive cutout encoder + ranking head."
    bundle_extra = {
        "feature_version": FEATURE_VERSION,
        "decision_rule": _decision_rule(scorer),
        "training_command": f.config.command,
        "training_config": plan.training_config,
        "package_version": broker_plugin.__version__,
    }
    manifest = write_bundle_files(staging, plan.name, plan.version, description, plan.kind, f.config, plan.models,
                                  plan.catalogue, bundle_extra, f.data, f.split.is_train, f.split.is_test,
                                  plan.limitations, extra_entries, scorer=bool(scorer))
    _verify_bundle(staging, len(scorer) == 2)
    scorer_fig = staging / "report" / "scorer_embedding.png"
    ctx = _report_context(f, plan, timings())
    ctx["scorer"] = ({"entries": {r: manifest["models"][r] for r in scorer},
                      "figure": scorer_fig.name if scorer_fig.is_file() else None} if scorer else None)
    write_report(staging / "report", ctx)
    replace_dir(staging, out)
    st.note = f"{_dir_size(out) / 1e6:.2f} MB"
    return manifest


def _report_context(f: Fitted, plan: BundlePlan, timings: dict[str, float]) -> dict[str, Any]:
    """The ``ctx`` of :func:`training.report.write_report` (all but ``scorer``)."""
    import broker_plugin
    from training.fusion import n_parameters

    data, config, ev, split, feats = f.data, f.config, f.ev, f.split, f.feats
    y_all = data.labels.astype(np.int64)
    lc_ok, spec_ok = feats.lc_ok, feats.spec_ok
    att = f.att.model
    return {
        "kind": plan.kind, "title": f"Evaluation report: {plan.name} {plan.version}", "created": plan.created,
        "package_version": broker_plugin.__version__, "feature_version": FEATURE_VERSION,
        "command": config.command, "figures": config.figures,
        "data": {"n_objects": len(data), "n_bal": int(y_all.sum()), "bal_fraction": float(y_all.mean()),
                 "n_usable": int(feats.usable.sum()), "n_lc_ok": int(lc_ok.sum()), "n_spec_ok": int(spec_ok.sum()),
                 "n_both": int((lc_ok & spec_ok).sum()), "min_points": config.min_points,
                 "test_fraction": config.test_fraction, "n_test": int(split.is_test.sum()),
                 "n_test_bal": int(y_all[split.is_test].sum()),
                 "n_train": int(split.is_train.sum()), "n_train_bal": int(y_all[split.is_train].sum()),
                 "seed": config.seed, "downsample": f.lc.downsample, "generator": data.description.get("generator"),
                 "sources": data.description.get("sources"),
                 "lc_history": data.description.get("lc_history"),
                 "spectrum_failures": dict(Counter(r for r in data.spec_reasons if r != "ok"))},
        "test": ev.test, "test_all": ev.test_all, "cv": ev.cv, "curves": ev.curves, "cv_note": f.late.cv_note,
        "by_history": ev.by_history,
        "late": _late_weights(f.late.model),
        "attention": {"history": att.history, "att_spec": ev.att_w[:, 1], "y": y_all[ev.common],
                      "summary": _att_summary(att, ev.att_w, y_all[ev.common], n_parameters(att))},
        "importances": f.lc.model.feature_importances(), "parity": f.exported.parity, "timings": timings,
        "limitations": plan.limitations,
    }


def write_bundle_files(staging: Path, name: str, version: str, description: str, kind: str, config: TrainConfig,
                       models: list[Any], catalogue: Any, bundle_extra: dict[str, Any], data: Dataset,
                       is_train: np.ndarray, is_test: np.ndarray, limitations: list[str],
                       extra_entries: Mapping[str, Mapping[str, Any]] | None = None, *,
                       scorer: bool = False) -> dict[str, Any]:
    from training.bundle_writer import write_bundle

    readme = _readme(name, version, kind, config, data, is_train, is_test, limitations, scorer=scorer)
    return write_bundle(staging, name=name, version=version, description=description, trained_on=kind,
                        candidate_threshold=config.candidate_threshold, models=models, catalogue=catalogue,
                        bundle_extra=bundle_extra, readme=readme, extra_entries=extra_entries)


def _headline(m: dict[str, Any]) -> dict[str, Any]:
    return {"n": m["n"], "n_bal": m["n_bal"], "bal": m["bal"], "nonbal": m["nonbal"], "roc_auc": m["roc_auc"],
            "average_precision": m["average_precision"]}


def _att_summary(att: Any, w: np.ndarray, y: np.ndarray, n_params: int) -> dict[str, Any]:
    def mean(v: np.ndarray) -> float:
        return float(np.mean(v)) if v.size else math.nan

    return {"n_parameters": n_params, "epochs_run": att.history["epochs_run"], "best_epoch": att.history["best_epoch"],
            "pos_weight": att.history["pos_weight"], "mean_att_spec": mean(w[:, 1]),
            "mean_att_spec_bal": mean(w[y == 1, 1]), "mean_att_spec_nonbal": mean(w[y == 0, 1])}


def _limitations(kind: str, test: dict[str, Any], late: Any, lc_history: str = "dr",
                 by_history: Mapping[str, Mapping[str, Any]] | None = None) -> list[str]:
    lines = []
    if kind == "synthetic":
        lines += [
            "Trained on synthetic data (training.synthetic): simulated DRW light curves drawn from Stripe 82 "
            "fits, ZTF-like cadence and errors, SDSS-like C IV spectra labelled by balnicity. The only BAL "
            "light-curve signal is the one the generator puts in (BalLightCurveEffect: SMC dust, redder and "
            "fainter BALs); the real sky may have less, or a different one.",
            "Good for: demos, tests, benchmarks, exercising the whole pipeline (replay, streaming, fusion) with "
            "realistic shapes and rates, and as a template for the real training run.",
            "Not good for: selecting real BAL candidates, quoting completeness or purity, or any scientific "
            "conclusion. Retrain on DR16Q + SDSS spectra + ZTF light curves (`bal-broker train --dr16q ...`).",
            "The spectral catalogue holds synthetic positions: real alerts will (correctly) almost never match "
            "it, so bal_fusion_prob stays null on real streams.",
        ]
    if lc_history == "dr":
        lines.append(
            "The light-curve classifier was trained on data-release light curves only (`--lc-history dr`: years "
            "of photometry, hundreds of points); an alert carries 30 days (ZTF) to 12 months (Rubin) of history, "
            "so on alerts bal_lc_prob extrapolates: see the per-history table of the report.")
    else:
        lines.append(
            f"The light-curve classifier was trained with `--lc-history {lc_history}` (alert-length light curves"
            + (" and data-release ones" if lc_history == "mixed" else "")
            + "): on alerts it sees the kind of light curve it was trained on, but a 30-day ZTF history "
            "carries little variability information; the report's per-history table says how much.")
    alert_auc = [v["bal_lc"]["roc_auc"] for k, v in (by_history or {}).items() if k != "dr"]
    if alert_auc and all(a == a for a in alert_auc) and max(alert_auc) < 0.6:
        lines.append("On alert light curves the light-curve BAL probability is close to chance (ROC AUC "
                     + ", ".join(f"{a:.2f}" for a in alert_auc) + "): for alerts without a known spectrum, "
                     "treat bal_lc_prob as a weak hint.")
    lines += [
        "All models assume the object is a quasar in 1.67 <= z <= 3.6: for stars, supernovae or bogus alerts "
        "the probabilities have no meaning (the candidate scorer is meant to rank those out).",
        "Threshold 0.5 on class-balanced models trades precision for recall at the ~13% BAL prevalence; use the "
        "precision-recall curves to pick another operating point (candidate_threshold).",
    ]
    return lines


def _readme(name: str, version: str, kind: str, config: TrainConfig, data: Dataset, is_train: np.ndarray,
            is_test: np.ndarray, limitations: list[str], *, scorer: bool = False) -> str:
    head = (f"# Model bundle `{name}` {version}\n\n"
            + ("**Synthetic data only.** " if kind == "synthetic" else "")
            + "Made by `bal-broker train`; verified by the plugin at start-up (checksums, feature names and "
              f"feature version {FEATURE_VERSION}).\n\n")
    body = [
        "Files: `manifest.yaml` (the contract: see `broker_plugin/models/bundle.py`), `bal_lc.onnx` (light-curve "
        "forest), `spectral.onnx` (spectrum -> embedding, P(BAL); offline use), `fusion_late.onnx`, "
        "`fusion_attention.onnx` (used at run time when an alert matches the catalogue), `catalogue.npz` "
        "(objects with known spectra), "
        + ("`cutout_encoder.onnx` + `ranking_head.onnx` (the candidate scorer: contrastive cutout embedding and "
           "ranking head, combined with the BAL probability by `broker_plugin.models.scoring.combine`), "
           if scorer else "")
        + "`report/report.md` (evaluation: tables, figures, limitations).",
        "",
        f"Light curves the light-curve models were trained on: `--lc-history {config.lc_history}` (see "
        "`training/lc_history.py`).",
        "",
        f"Rebuild: `{config.command or 'bal-broker train ...'}` (deterministic for a given seed and package "
        "version; only the time stamps in the manifest and the timings in the report change).",
        "",
        f"Objects: {len(data)} ({int(data.labels.sum())} BAL); training split {int(is_train.sum())}, held-out "
        f"test split {int(is_test.sum())}. Seed {config.seed}.",
        "",
        "## What it is and is not good for",
        "",
        *[f"- {line}" for line in limitations],
        "",
    ]
    return head + "\n".join(body)


def _dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())

