"""``bal-broker train``: data -> features -> four models -> ONNX + manifest + catalogue -> report.

Usage::

    bal-broker train --synthetic N --out DIR [--seed S] [--lc-history dr|alert|mixed] [--no-scorer]
    bal-broker train --dr16q DR16Q.fits --spectra SPEC_DIR --lightcurves LC_DIR --out DIR [--seed S]

Steps (each logged; a progress bar instead when stderr is a terminal):

1. **Data.** Synthetic: :func:`training.synthetic.generate_training_set`, an SDSS-like spectrum for
   every quasar and light curves of the kinds ``--lc-history`` asks for (:mod:`training.lc_history`;
   default ``mixed``: data-release light curves as the reference study's, plus ZTF 30-day and Rubin
   12-month alert histories made by writing synthetic alert packets and decoding them with the
   plugin -- the train/serve mismatch fix). Real: :func:`~training.catalogues.load_dr16q` (labels
   from ``BI_CIV`` unless told otherwise; unlabelled rows dropped), spec-lite files found with
   :func:`~training.catalogues.spec_lite_path`, IRSA light curves with
   :func:`~training.catalogues.load_ztf_lightcurves` matched by position
   (:func:`~training.catalogues.match_lightcurves`). Objects may lack either modality: each model
   uses the objects it can, and an object with neither is dropped (counted in the report); with
   ``--lc-history alert|mixed`` part of the IRSA light curves are cut to alert-length windows.
2. **Features** with the plugin's own :func:`broker_plugin.photometry.features.compute_features_batch`;
   spectra preprocessed once with :func:`training.spectra.preprocess_batch` (failures counted by reason).
3. **Split**: a stratified 25% test split, held out from everything below.
4. **Light-curve forest** (:mod:`training.lc_classifier`) on objects with >= ``min_points`` points
   in g or r (the runtime's rule, :func:`broker_plugin.models.inference.enough_points`), 5-fold stratified
   CV for out-of-fold probabilities and CV metrics, then a fit on the whole training split.
5. **Spectral model** (:mod:`training.spectra`: kernel PCA + logistic regression), the same CV.
6. **Late fusion** fitted on the two models' out-of-fold probabilities (:mod:`training.fusion`).
7. **Attention fusion** on raw features + the spectral embedding, 5-fold CV then a final fit.
8. **Test evaluation** of all models on the common test objects (both modalities), plus an
   ablation (the attention net without light curve), and of the light-curve model per light-curve
   kind (data release, ZTF alert, Rubin alert; kinds left out of training on an evaluation-only set).
9. **Export** every model to ONNX with a parity check (<= 1e-5).
10. **Candidate scorer** (:func:`training.scorer.train_candidate_scorer`, through the ``extra_models``
    hook; ``--no-scorer`` skips it): the cutout encoder and the ranking head, trained on synthetic
    alert packets, written beside the other models. Its size follows N (:func:`scorer_settings`).
11. Write the bundle and the spectral catalogue (every object with a usable spectrum: position, z,
    embedding, p_spec), re-load the bundle through the plugin's verifier (checksums, feature names,
    the scorer's meta columns and encoder hash), write the report.

Layout: this module is the command line and the orchestrator :func:`train`; the steps live in
:mod:`training.train_data` (1), :mod:`training.train_steps` (2-7), :mod:`training.train_eval` (8-9) and
:mod:`training.train_report` (11), with :mod:`training.train_config` and :mod:`training.train_progress`
shared by all of them. The names are re-exported here, so ``training.train.Dataset`` etc. keep working.

The held-out test split is never used to fit, to stop early or to choose anything; the decision
threshold is 0.5 throughout (all models are trained class-balanced). The default bundle is built with
``make bundle`` (``scripts/build_default_bundle.sh``).
"""

from __future__ import annotations

import argparse
import shlex
import time
from collections import Counter
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from broker_plugin.args import positive_int
from broker_plugin.errors import ConfigError
from broker_plugin.models.inference import DEFAULT_CANDIDATE_THRESHOLD, DEFAULT_MIN_POINTS
from training.train_config import (
    DEFAULT_BUNDLE_N,
    DEFAULT_BUNDLE_SEED,
    MIN_SYNTHETIC,
    TrainConfig,
    TrainResult,
)
from training.train_data import Dataset, EvalSet, real_dataset, synthetic_dataset
from training.train_progress import Progress

__all__ = [
    "DEFAULT_BUNDLE_N", "DEFAULT_BUNDLE_SEED", "MIN_SYNTHETIC", "SCORER_TINY_MAX_N", "Dataset", "EvalSet",
    "Progress", "TrainConfig", "TrainResult", "add_parser", "real_dataset", "run", "scorer_hook",
    "scorer_settings", "synthetic_dataset", "train",
]


# ===================================================================================== train


def train(data: Dataset, out: str | Path, config: TrainConfig | None = None, *,
          progress: Progress | None = None,
          extra_models: Callable[[Path], Mapping[str, Mapping[str, Any]]] | None = None,
          extra_step: str = "extra models") -> TrainResult:
    """Train every model on ``data``, write the bundle to ``out`` and its report to ``out/report``.

    ``extra_models(staging_dir) -> {role: manifest entry}`` is the hook for models trained elsewhere
    (the candidate scorer's ``cutout_encoder`` / ``ranking_head``, :func:`scorer_hook`): it writes
    its files into the staging directory (figures into ``staging_dir/report``) and returns their
    entries, which go into the same manifest and are verified with everything else before the
    bundle replaces ``out``; it runs as its own progress step named ``extra_step``. Their metrics
    (from the entries) and ``report/scorer_embedding.png`` (if written) go into the report.
    """
    from training import train_eval, train_steps
    from training.bundle_writer import check_output_dir, staging_dir
    from training.train_report import Fitted, bundle_and_report_step, plan_bundle

    config = config or TrainConfig()
    out = check_output_dir(out)
    prog = progress or Progress(9, enabled=False)
    t_start = time.perf_counter()

    with prog.step("features") as st:
        feats = train_steps.features_step(data, config, st)
    train_steps.require_usable(feats)
    with prog.step("split"):
        split = train_steps.split_step(data, config, feats)
    with prog.step("light-curve classifier") as st:
        lc = train_steps.lc_step(data, config, feats, split, st)
    with prog.step("spectral classifier") as st:
        spec = train_steps.spectral_step(data, config, feats, split, st)
    with prog.step("late fusion") as st:
        late = train_steps.late_fusion_step(data, config, feats, split, lc, spec, st)
    with prog.step("attention fusion") as st:
        att = train_steps.attention_step(data, config, feats, split, spec, st)
    with prog.step("evaluation"):
        ev = train_eval.evaluation_step(data, config, feats, split, lc, spec, late, att)
    with prog.step("ONNX export") as st:
        exported = train_eval.export_step(config, data, feats, split, lc, spec, late, att, ev, st)

    fitted = Fitted(data, config, feats, split, lc, spec, late, att, ev, exported)
    plan = plan_bundle(fitted)  # manifest entries; the bundle is written below, after the extra models
    staging = staging_dir(out)
    try:
        extra_entries: dict[str, Any] | None = None
        if extra_models is not None:
            with prog.step(extra_step) as st:
                extra_entries = {str(r): dict(e) for r, e in extra_models(staging).items()}
                st.note = ", ".join(sorted(extra_entries))
        with prog.step("bundle and report") as st:
            manifest = bundle_and_report_step(
                fitted, plan, staging, out, extra_entries,
                lambda: {**prog.timings, "total (to the report)": time.perf_counter() - t_start}, st)
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    prog.close()
    return TrainResult(out=out, manifest=manifest, test=ev.test, cv=ev.cv, parity=exported.parity,
                       timings=dict(prog.timings), elapsed_s=time.perf_counter() - t_start)


# ============================================================================= candidate scorer

#: Objects up to which ``bal-broker train`` uses the scorer's TINY settings (tests, smoke runs).
SCORER_TINY_MAX_N = 400


def scorer_settings(n: int) -> dict[str, Any]:
    """Candidate-scorer settings for a training run on ``n`` objects.

    Up to :data:`SCORER_TINY_MAX_N` objects: :data:`training.scorer.TINY` (~5-10 s). Above, the
    scorer's defaults scaled by ``n / DEFAULT_BUNDLE_N`` (capped at 1): the default bundle's 6000
    objects get the full defaults (3000 synthetic alerts, 2500 rendered stamps, 10 encoder epochs,
    t-SNE picture; ~2 min on two cores), a 1000-object run about a sixth of the alerts and stamps.
    The scorer trains on its own synthetic alerts, so ``n`` only sets the effort, not the data.
    """
    from training.scorer import TINY

    if n <= SCORER_TINY_MAX_N:
        return dict(TINY)
    f = min(1.0, n / DEFAULT_BUNDLE_N)
    return {"n_alerts": max(400, round(3000 * f)), "n_stamps": max(400, round(2500 * f)),
            "n_test_stamps": max(200, round(1000 * f)), "encoder_epochs": max(3, round(10 * f)),
            "head_epochs": 60, "projection": "tsne" if f >= 0.5 else "pca"}


def scorer_hook(settings: Mapping[str, Any], *, seed: int, version: str, figures: bool = True,
                progress: Callable[[str], None] | None = None) -> Callable[[Path], dict[str, dict[str, Any]]]:
    """The ``extra_models`` hook of :func:`train` that trains the candidate scorer into the staging
    bundle (``cutout_encoder.onnx``, ``ranking_head.onnx``; the embedding picture into
    ``report/scorer_embedding.png`` unless ``figures`` is False) and returns their manifest entries."""

    def hook(staging: Path) -> dict[str, dict[str, Any]]:
        import logging
        import tempfile

        # torch's ONNX exporter logs one warning per torchvision operator it cannot register (torchvision
        # is not a dependency); they say nothing about this export
        logging.getLogger("torch.onnx._internal.exporter._registration").setLevel(logging.ERROR)

        from training.scorer import FIGURE_FILE, train_candidate_scorer

        with tempfile.TemporaryDirectory() as tmp:
            fig = (staging / "report" / FIGURE_FILE) if figures else Path(tmp) / FIGURE_FILE
            art = train_candidate_scorer(staging, seed=seed, version=version, figure_path=fig, progress=progress,
                                         **dict(settings))
        return art.manifest_entries

    return hook


# ========================================================================================= CLI


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 < v < 1.0:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1, got {v}")
    return v


#: Parser defaults, filled by add_parser (so the recorded command omits options left at their default).
_DEFAULTS: dict[str, Any] = {}


def add_parser(subparsers: Any) -> None:
    """Register ``train`` on the ``bal-broker`` command line (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser(
        "train",
        help="train every model, export ONNX + manifest, write the evaluation report",
        description=("Train the light-curve forest, the spectral model and the two fusion models on synthetic "
                     "data (--synthetic N) or on DR16Q + spec-lite spectra + IRSA ZTF light curves, hold out a "
                     "stratified test split, export everything to a model bundle DIR (ONNX, manifest.yaml, "
                     "catalogue.npz) and write DIR/report/report.md."),
    )
    src = p.add_argument_group("data (choose one)")
    src.add_argument("--synthetic", type=positive_int, metavar="N", help="N synthetic quasars")
    src.add_argument("--dr16q", metavar="FILE", help="DR16Q(-like) FITS catalogue")
    src.add_argument("--spectra", metavar="DIR", help="directory of spec-PLATE-MJD-FIBER.fits files")
    src.add_argument("--lightcurves", metavar="DIR", help="IRSA ZTF light curves (file or directory)")
    src.add_argument("--label-column", metavar="COL", help="DR16Q column giving the BAL label (default BI_CIV > 0)")
    src.add_argument("--labels-csv", metavar="FILE", help="separate label list (e.g. visually inspected BALs)")
    p.add_argument("--out", "-o", required=True, metavar="DIR", help="bundle directory (created or replaced)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--bal-fraction", type=_fraction, default=None, help="synthetic: BAL fraction (default 0.13)")
    p.add_argument("--lc-history", choices=("dr", "alert", "mixed"), default="mixed",
                   help="light curves of the light-curve models: data-release (dr, ~4 yr), alert-length (alert: ZTF "
                        "30 d + Rubin 12 months, from decoded synthetic alerts or cut real light curves) or both "
                        "(mixed, default); see training/lc_history.py")
    p.add_argument("--no-scorer", action="store_true",
                   help="skip the candidate scorer (cutout encoder + ranking head): candidate_score stays null")
    p.add_argument("--test-fraction", type=_fraction, default=0.25, help="held-out fraction (default 0.25)")
    p.add_argument("--cv-folds", type=positive_int, default=5, help="k of the stratified k-fold CV (default 5)")
    p.add_argument("--min-points", type=positive_int, default=DEFAULT_MIN_POINTS,
                   help=f"points in g or r for a light-curve probability (default {DEFAULT_MIN_POINTS})")
    p.add_argument("--n-estimators", type=positive_int, default=150, help="trees of the forest (default 150)")
    p.add_argument("--max-depth", type=positive_int, default=12, help="depth limit of the trees (default 12)")
    p.add_argument("--epochs", type=positive_int, default=200, help="attention net: max epochs (default 200)")
    p.add_argument("--n-components", type=positive_int, default=16, help="kernel-PCA components (default 16)")
    p.add_argument("--downsample-ratio", type=float, default=None, metavar="R",
                   help="downsample non-BALs to R per BAL in the balanced (z, mean mag) space (default: off)")
    p.add_argument("--candidate-threshold", type=float, default=DEFAULT_CANDIDATE_THRESHOLD,
                   help=f"manifest default decision threshold (default {DEFAULT_CANDIDATE_THRESHOLD})")
    p.add_argument("--name", default=None, help="bundle name (default bal-synthetic / bal-dr16q)")
    p.add_argument("--bundle-version", default="0.1.0", help="bundle version (default 0.1.0)")
    p.add_argument("--no-figures", action="store_true", help="skip the report's PNG figures")
    p.add_argument("--jobs", type=positive_int, default=1, help="threads for the forest (default 1)")
    p.add_argument("--quiet", "-q", action="store_true", help="no progress output")
    p.set_defaults(handler=run)
    _DEFAULTS.update({a.dest: a.default for a in p._actions if a.dest != "help"})


#: (option, attribute) pairs, in the order a command line is rebuilt for the manifest.
_RECORDED_OPTIONS = (
    ("--synthetic", "synthetic"), ("--dr16q", "dr16q"), ("--spectra", "spectra"), ("--lightcurves", "lightcurves"),
    ("--label-column", "label_column"), ("--labels-csv", "labels_csv"), ("--seed", "seed"),
    ("--bal-fraction", "bal_fraction"), ("--lc-history", "lc_history"), ("--test-fraction", "test_fraction"),
    ("--cv-folds", "cv_folds"), ("--min-points", "min_points"), ("--n-estimators", "n_estimators"),
    ("--max-depth", "max_depth"), ("--epochs", "epochs"), ("--n-components", "n_components"),
    ("--downsample-ratio", "downsample_ratio"), ("--candidate-threshold", "candidate_threshold"),
    ("--name", "name"), ("--bundle-version", "bundle_version"), ("--no-scorer", "no_scorer"), ("--out", "out"),
)


def _command_line(args: argparse.Namespace, parser_defaults: dict[str, Any]) -> str:
    """The command that reproduces this run (options that differ from their defaults), for the manifest.

    Rebuilt from the parsed options rather than copied from ``sys.argv`` so it is right however the
    handler was called (``bal-broker``, ``python -m broker_plugin``, ``cli.main([...])`` in a test)."""
    parts = ["bal-broker", "train"]
    for flag, dest in _RECORDED_OPTIONS:
        value = getattr(args, dest, None)
        if value is None or (dest != "out" and dest in parser_defaults and value == parser_defaults[dest]
                             and dest != "seed"):
            continue
        parts += [flag] if value is True else [flag, str(value)]
    return " ".join(shlex.quote(p) for p in parts)


def _require_training_extra() -> None:
    """One clear line (exit 2) when the ``training`` extra is not installed, instead of a traceback."""
    import importlib.util

    needed = ("sklearn", "imblearn", "skl2onnx", "onnx", "torch", "onnxscript", "matplotlib")
    missing = [m for m in needed if importlib.util.find_spec(m) is None]
    if missing:
        raise ConfigError(f"bal-broker train needs the training extra (missing: {', '.join(missing)}): "
                          "pip install 'bal-broker[training]'")


def run(args: argparse.Namespace) -> int:
    """The ``train`` handler: validate, load, train, print one summary line."""
    real = [args.dr16q, args.spectra, args.lightcurves]
    if args.synthetic is not None and any(v is not None for v in real):
        raise ConfigError("choose either --synthetic N or --dr16q/--spectra/--lightcurves, not both")
    if args.synthetic is None and not all(v is not None for v in real):
        if any(v is not None for v in real):
            raise ConfigError("real data needs all three of --dr16q FILE --spectra DIR --lightcurves DIR")
        raise ConfigError("no training data: give --synthetic N or --dr16q FILE --spectra DIR --lightcurves DIR")
    if args.synthetic is not None and args.synthetic < MIN_SYNTHETIC:
        raise ConfigError(f"--synthetic must be at least {MIN_SYNTHETIC} (enough BALs for CV and a test split)")
    _require_training_extra()
    from training.bundle_writer import check_output_dir
    from training.fusion import AttentionConfig
    from training.lc_classifier import LCClassifierConfig

    check_output_dir(args.out)  # fail before generating data
    config = TrainConfig(
        seed=args.seed, test_fraction=args.test_fraction, cv_folds=args.cv_folds, min_points=args.min_points,
        n_components=args.n_components, downsample_ratio=args.downsample_ratio,
        candidate_threshold=args.candidate_threshold,
        lc=LCClassifierConfig(n_estimators=args.n_estimators, max_depth=args.max_depth, n_jobs=args.jobs),
        attention=AttentionConfig(epochs=args.epochs), name=args.name, version=args.bundle_version,
        figures=not args.no_figures, command=_command_line(args, _DEFAULTS), lc_history=args.lc_history,
    )
    prog = Progress(10 if args.no_scorer else 11, enabled=not args.quiet)
    with prog.step("data") as st:
        if args.synthetic is not None:
            data = synthetic_dataset(args.synthetic, args.seed, bal_fraction=args.bal_fraction,
                                     lc_history=args.lc_history)
        else:
            data = real_dataset(args.dr16q, args.spectra, args.lightcurves, label_column=args.label_column,
                                labels_csv=args.labels_csv, progress=prog, lc_history=args.lc_history,
                                seed=args.seed)
        counts = Counter(data.kinds().tolist())
        st.note = (f"{len(data)} {data.kind} objects, {int(data.labels.sum())} BAL; light curves "
                   + ", ".join(f"{k} {counts[k]}" for k in sorted(counts)))
    hook = None if args.no_scorer else scorer_hook(
        scorer_settings(len(data)), seed=args.seed, version=args.bundle_version, figures=not args.no_figures,
        progress=prog.log)
    result = train(data, args.out, config, progress=prog, extra_models=hook, extra_step="candidate scorer")
    print(result.summary_line(), flush=True)
    return 0

