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

The held-out test split is never used to fit, to stop early or to choose anything; the decision
threshold is 0.5 throughout (all models are trained class-balanced). The default bundle is built with
``make bundle`` (``scripts/build_default_bundle.sh``).
"""

from __future__ import annotations

import argparse
import math
import shlex
import sys
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.cli import positive_int
from broker_plugin.errors import ConfigError
from broker_plugin.models.inference import DEFAULT_CANDIDATE_THRESHOLD, DEFAULT_MIN_POINTS, enough_points
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION

#: Seed and size of the default bundle (``make bundle``).
DEFAULT_BUNDLE_SEED = 20261122
DEFAULT_BUNDLE_N = 6000
#: Smallest synthetic set that leaves a few BALs in every CV fold and in the test split.
MIN_SYNTHETIC = 60


# ==================================================================================== progress


class Progress:
    """Stage reporting: a tqdm bar on a terminal, one log line per stage otherwise (CI logs stay clean)."""

    def __init__(self, total: int, *, enabled: bool = True, stream: Any = None) -> None:
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.total = total
        self.done = 0
        self.bar = None
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        if enabled and getattr(self.stream, "isatty", lambda: False)():
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, desc="train", unit="step", file=self.stream, dynamic_ncols=True,
                                leave=False)
            except ImportError:  # tqdm is a runtime dependency, but a bar is not worth failing for
                self.bar = None

    def log(self, message: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(f"bal-broker train: {message}", file=self.stream)
        else:
            print(f"bal-broker train: {message}", file=self.stream, flush=True)

    def step(self, name: str) -> _Step:
        return _Step(self, name)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


class _Step:
    def __init__(self, progress: Progress, name: str) -> None:
        self.p, self.name = progress, name
        self.note = ""

    def __enter__(self) -> _Step:
        self.t = time.perf_counter()
        if self.p.bar is not None:
            self.p.bar.set_description(f"train: {self.name}")
        return self

    def __exit__(self, *exc: Any) -> None:
        dt = time.perf_counter() - self.t
        self.p.timings[self.name] = self.p.timings.get(self.name, 0.0) + dt
        if exc[0] is not None:
            return
        self.p.done += 1
        if self.p.bar is not None:
            self.p.bar.update(1)
        self.p.log(f"[{self.p.done}/{self.p.total}] {self.name}: {self.note + ' ' if self.note else ''}"
                   f"({dt:.1f} s)")


# ======================================================================================== data


@dataclass
class Dataset:
    """Training objects: position, redshift, label, light curves, preprocessed spectra.

    ``spectra`` is (n, N_GRID) from :func:`training.spectra.preprocess_batch` with NaN rows where an
    object has no usable spectrum (``spec_ok`` False; ``spec_reasons`` says why: ``missing`` or a
    :class:`training.spectra.SpectrumError` reason). Spectra are preprocessed at load time so a real
    catalogue of 10^5 spectra never holds its raw pixels in memory at once.
    """

    kind: str  # "synthetic" | "real"
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    labels: np.ndarray
    lightcurves: list[dict[str, Any]]
    spectra: np.ndarray
    spec_ok: np.ndarray
    spec_reasons: list[str]
    description: dict[str, Any] = field(default_factory=dict)
    #: Light-curve kind of each object (:data:`training.lc_history.KINDS`); None = all ``dr``.
    history: np.ndarray | None = None
    #: Evaluation-only light curves of kinds left out of training (see :class:`EvalSet`).
    lc_eval: dict[str, EvalSet] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.size)

    def kinds(self) -> np.ndarray:
        return self.history if self.history is not None else np.full(len(self), "dr")


@dataclass
class EvalSet:
    """Light curves of one kind used only to evaluate the light-curve model, never to fit.

    ``rows`` given: the i-th light curve is a copy (cut to the kind's window) of Dataset object
    ``rows[i]``, and only held-out test objects are scored. ``rows`` None: separate objects (a
    separately simulated set), all scored.
    """

    kind: str
    lightcurves: list[dict[str, Any]]
    labels: np.ndarray
    rows: np.ndarray | None = None
    description: str = ""


def _preprocess(spectra: Sequence[Any | None], z: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from training.spectra import N_GRID, preprocess_batch

    n = len(spectra)
    out = np.full((n, N_GRID), np.nan)
    ok = np.zeros(n, dtype=bool)
    reasons = ["missing"] * n
    have = [i for i, s in enumerate(spectra) if s is not None]
    if have:
        X, good, quals = preprocess_batch([spectra[i] for i in have], z[have])
        for j, i in enumerate(have):
            if good[j]:
                out[i], ok[i], reasons[i] = X[j], True, "ok"
            else:
                reasons[i] = str(quals[j].get("reason", "spectrum_error"))
    return out, ok, reasons


def synthetic_dataset(n: int, seed: int, *, bal_fraction: float | None = None, lc_history: str = "mixed",
                      effect: Any = None, n_eval: int | None = None) -> Dataset:
    """``n`` synthetic quasars (see :mod:`training.synthetic.dataset`), spectra preprocessed.

    Light curves: the kinds of ``lc_history`` in its proportions (:mod:`training.lc_history`), each
    kind simulated with its own seed. Kinds left out get an evaluation-only set of ``n_eval``
    objects (default a quarter of ``n``, at least 100, at most 3000; no spectra).
    """
    from training import lc_history as lh

    kwargs: dict[str, Any] = {}
    if bal_fraction is not None:
        kwargs["bal_fraction"] = bal_fraction
    if effect is not None:
        kwargs["effect"] = effect
    counts = lh.kind_counts(n, lc_history)
    parts = [(k, lh.synthetic_kind_set(k, counts[k], lh.sub_seed(seed, k), **kwargs))
             for k in lh.KINDS if counts.get(k, 0) > 0]
    lightcurves = [lc for _, ts in parts for lc in ts.lightcurves]
    spectra_raw = [sp for _, ts in parts for sp in ts.spectra]
    truth = [t for _, ts in parts for t in ts.truth]
    z = np.concatenate([np.asarray(ts.z, dtype=np.float64) for _, ts in parts])
    labels = np.concatenate([np.asarray(ts.labels) for _, ts in parts]).astype(np.int64)
    history = np.array([k for k, ts in parts for _ in range(len(ts))], dtype=str)
    spectra, ok, reasons = _preprocess(spectra_raw, z)
    ids = np.array([f"synth-{seed}-{i:06d}" for i in range(len(labels))])
    meta0 = dict(parts[0][1].meta)
    per_part = ("seed", "n", "survey", "photometry", "baseline_days", "ztf_no_forced_fraction")
    generator = {k: v for k, v in meta0.items() if k not in per_part}
    generator.update(seed=seed, n=n, parts={k: {key: ts.meta.get(key) for key in per_part} for k, ts in parts})
    history_desc = lh.describe(lc_history, counts=counts, method="data-release light curves (photometry='dr'); "
                               "alert kinds: synthetic alert packets decoded by broker_plugin.decode "
                               "(photometry='packet')")
    lc_eval: dict[str, EvalSet] = {}
    m = n_eval if n_eval is not None else int(min(3000, max(100, round(0.25 * n))))
    for k in lh.KINDS:
        if counts.get(k, 0) == 0 and m > 0:
            ts = lh.synthetic_kind_set(k, m, lh.eval_seed(seed, k), with_spectra=False, **kwargs)
            lc_eval[k] = EvalSet(k, list(ts.lightcurves), np.asarray(ts.labels).astype(np.int64), None,
                                 f"{m} separately simulated objects (seed {lh.eval_seed(seed, k)}), not in training")
    return Dataset(
        kind="synthetic", ids=ids, ra=np.array([t["ra"] for t in truth], dtype=np.float64),
        dec=np.array([t["dec"] for t in truth], dtype=np.float64), z=z, labels=labels, lightcurves=lightcurves,
        spectra=spectra, spec_ok=ok, spec_reasons=reasons,
        description={"generator": generator, "lc_history": history_desc},
        history=history, lc_eval=lc_eval,
    )


def real_dataset(dr16q: str | Path, spectra_dir: str | Path, lightcurves: str | Path, *,
                 label_column: str | None = None, labels_csv: str | Path | None = None,
                 progress: Progress | None = None, lc_history: str = "mixed", seed: int = 0) -> Dataset:
    """DR16Q (labelled rows) + spec-lite spectra + IRSA ZTF light curves matched by position.

    ``lc_history`` (:mod:`training.lc_history`): that share of the light curves is cut to ZTF 30-day
    / 365-day windows ending at a random point (seeded by ``seed``); kinds left out of training are
    evaluated on cut copies of the held-out objects' light curves."""
    from training import lc_history as lh
    from training.catalogues import (
        load_dr16q,
        load_spec_lite,
        load_ztf_lightcurves,
        match_lightcurves,
        spec_lite_path,
    )
    from training.spectra import N_GRID, SpectrumError, preprocess_spectrum

    for label, p, want_dir in (("--dr16q", dr16q, False), ("--spectra", spectra_dir, True),
                               ("--lightcurves", lightcurves, None)):
        path = Path(p)
        if not path.exists():
            raise ConfigError(f"{label} {path}: not found")
        if want_dir is True and not path.is_dir():
            raise ConfigError(f"{label} {path}: not a directory")
        if want_dir is False and not path.is_file():
            raise ConfigError(f"{label} {path}: not a file")
    try:
        cat = load_dr16q(dr16q, label_column=label_column, labels_csv=labels_csv)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--dr16q {dr16q}: cannot read the catalogue: {exc}") from None
    n_rows = len(cat)
    cat = cat.labelled()
    if len(cat) == 0:
        raise ConfigError(f"--dr16q {dr16q}: no labelled quasars in 1.67 <= z <= 3.6 (label source "
                          f"{cat.label_source})")
    n = len(cat)
    spectra = np.full((n, N_GRID), np.nan)
    ok = np.zeros(n, dtype=bool)
    reasons = ["missing"] * n
    for i in range(n):
        plate, mjd, fiber = int(cat.plate[i]), int(cat.mjd[i]), int(cat.fiberid[i])
        if plate < 0 or mjd < 0 or fiber < 0:
            reasons[i] = "no_spectrum_id"
            continue
        path = spec_lite_path(spectra_dir, plate, mjd, fiber)
        if not path.is_file():
            continue
        try:
            spec = load_spec_lite(path)
            spectra[i], _ = preprocess_spectrum(spec.loglam, spec.flux, spec.ivar, spec.and_mask, float(cat.z[i]))
            ok[i], reasons[i] = True, "ok"
        except SpectrumError as exc:
            reasons[i] = exc.reason
        except (OSError, ValueError, KeyError) as exc:
            reasons[i] = f"unreadable:{type(exc).__name__}"
        if progress is not None and (i + 1) % 5000 == 0:
            progress.log(f"  spectra: {i + 1}/{n} read")
    try:
        lcs = load_ztf_lightcurves(lightcurves)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--lightcurves {lightcurves}: cannot read the light curves: {exc}") from None
    matches = match_lightcurves(cat, lcs)
    curves: list[dict[str, Any]] = [{} for _ in range(n)]
    for key, row in matches.items():
        curves[int(row)] = {b: lc for b, lc in lcs[key].items()}
    history = lh.assign_kinds(n, lc_history, seed)
    train_curves: list[dict[str, Any]] = list(curves)
    for k in lh.KINDS:
        rows = np.flatnonzero(history == k)
        if k != "dr" and rows.size:
            for i, lc in zip(rows, lh.window_copies([curves[i] for i in rows], k, seed), strict=True):
                train_curves[int(i)] = lc
    labels = cat.label.astype(np.int64)
    lc_eval = {k: EvalSet(k, lh.window_copies(curves, k, seed), labels, np.arange(n),
                          "held-out objects' light curves cut to this kind's window, not in training")
               for k in lh.KINDS if not (history == k).any()}
    counts = {k: int((history == k).sum()) for k in lh.KINDS if (history == k).any()}
    desc = {"sources": {"dr16q": str(dr16q), "spectra": str(spectra_dir), "lightcurves": str(lightcurves),
                        "label_source": cat.label_source, "catalogue_rows_in_z_range": n_rows,
                        "labelled": n, "lightcurve_sources": len(lcs), "matched_lightcurves": len(matches)},
            "lc_history": lh.describe(lc_history, counts=counts, method="IRSA light curves; alert kinds cut to "
                                      "windows ending at a random point (training.lc_history.truncate_lightcurves)",
                                      forced_fraction=False)}
    return Dataset(kind="real", ids=np.asarray(cat.name).astype(str), ra=cat.ra.astype(np.float64),
                   dec=cat.dec.astype(np.float64), z=cat.z.astype(np.float64),
                   labels=labels, lightcurves=train_curves, spectra=spectra, spec_ok=ok,
                   spec_reasons=reasons, description=desc, history=history, lc_eval=lc_eval)


# ====================================================================================== config


@dataclass
class TrainConfig:
    """Everything that shapes a training run; recorded in the manifest."""

    seed: int = 0
    test_fraction: float = 0.25
    cv_folds: int = 5
    min_points: int = DEFAULT_MIN_POINTS
    n_components: int = 16
    n_landmarks: int = 500
    downsample_ratio: float | None = None
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD
    lc: Any = None  # LCClassifierConfig
    attention: Any = None  # AttentionConfig
    name: str | None = None
    version: str = "0.1.0"
    figures: bool = True
    command: str | None = None
    lc_history: str = "mixed"

    def __post_init__(self) -> None:
        from training.fusion import AttentionConfig
        from training.lc_classifier import LCClassifierConfig

        self.lc = self.lc or LCClassifierConfig()
        self.attention = self.attention or AttentionConfig()
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ConfigError(f"--test-fraction must be in [0.05, 0.5], got {self.test_fraction}")
        if self.cv_folds < 2:
            raise ConfigError(f"--cv-folds must be at least 2, got {self.cv_folds}")
        if not 0.0 <= self.candidate_threshold <= 1.0:
            raise ConfigError(f"--candidate-threshold must be in [0, 1], got {self.candidate_threshold}")
        if self.downsample_ratio is not None and self.downsample_ratio <= 0:
            raise ConfigError(f"--downsample-ratio must be positive, got {self.downsample_ratio}")
        from training.lc_history import LC_HISTORIES

        if self.lc_history not in LC_HISTORIES:
            raise ConfigError(f"--lc-history must be one of {', '.join(LC_HISTORIES)}, got {self.lc_history!r}")

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("lc", "attention", "command")}
        d["lc_classifier"] = self.lc.as_dict()
        d["attention"] = self.attention.as_dict()
        return d


@dataclass
class TrainResult:
    out: Path
    manifest: dict[str, Any]
    test: dict[str, Any]
    cv: dict[str, Any]
    parity: dict[str, Any]
    timings: dict[str, float]
    elapsed_s: float

    def summary_line(self) -> str:
        parts = []
        for role in ("bal_lc", "spectral", "fusion_late", "fusion_attention"):
            m = self.test.get(role)
            if m and m["n"]:
                f1 = m["bal"]["f1"]
                parts.append(f"{role} BAL F1 {100 * f1:.1f}%" if f1 == f1 else f"{role} BAL F1 n/a")
        head = (self.manifest.get("models", {}).get("ranking_head") or {}).get("metrics") or {}
        if head.get("test_roc_auc") is not None:
            parts.append(f"candidate scorer head ROC AUC {head['test_roc_auc']:.3f}")
        return (f"train: bundle written to {self.out} in {self.elapsed_s:.1f} s; test split: " + ", ".join(parts))


# ======================================================================================= CV


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (k capped by the minority count; [] when fewer than 2 per class)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y.astype(np.int64), minlength=2)
    k = int(min(k, counts.min()))
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(y.size), y))


def _oof(rows: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
         fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold predictions for ``rows`` and per-fold metrics; ``fit_predict(train_rows, val_rows)``."""
    from training.report import class_metrics

    p = np.full(rows.size, np.nan)
    per_fold = []
    for tr, va in folds:
        p[va] = fit_predict(rows[tr], rows[va])
        per_fold.append(class_metrics(y[va], p[va]))
    return p, per_fold


def _both_classes(y: np.ndarray, what: str) -> None:
    counts = np.bincount(np.asarray(y).astype(np.int64), minlength=2)
    if counts.min() < 2:
        raise ConfigError(f"{what}: need at least 2 BALs and 2 non-BALs, have {counts[1]} and {counts[0]}")


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
    import broker_plugin
    from broker_plugin.models.bundle import ModelBundle
    from broker_plugin.models.inference import BundleStage
    from broker_plugin.photometry.features import compute_features_batch
    from training import export
    from training.bundle_writer import (
        CatalogueArtifact,
        ModelArtifact,
        check_output_dir,
        replace_dir,
        staging_dir,
        utc_now,
    )
    from training.fusion import fit_attention_fusion, fit_late_fusion, n_parameters
    from training.lc_classifier import (
        balanced_downsample,
        fit_lc_classifier,
        luminosity_space,
        threshold_probe_inputs,
    )
    from training.report import class_metrics, summarise_folds, write_report
    from training.spectra import fit_spectral_classifier, fit_spectral_embedding, spectral_pipeline_onnx

    config = config or TrainConfig()
    out = check_output_dir(out)
    prog = progress or Progress(9, enabled=False)
    t_start = time.perf_counter()
    seed = config.seed
    y_all = data.labels.astype(np.int64)
    n = len(data)

    # ---- features
    with prog.step("features") as st:
        X = np.asarray(compute_features_batch(data.lightcurves)[0], dtype=np.float64)
        lc_ok = enough_points(data.lightcurves, config.min_points)
        spec_ok = np.asarray(data.spec_ok, dtype=bool)
        usable = lc_ok | spec_ok
        st.note = (f"{n} objects, {int(lc_ok.sum())} with >= {config.min_points} points, "
                   f"{int(spec_ok.sum())} with a usable spectrum")
    if not usable.any():
        raise ConfigError("no object has a usable light curve or spectrum")

    # ---- split
    with prog.step("split"):
        from sklearn.model_selection import train_test_split

        idx = np.flatnonzero(usable)
        _both_classes(y_all[idx], "data set")
        tr_idx, te_idx = train_test_split(idx, test_size=config.test_fraction, stratify=y_all[idx],
                                          random_state=seed)
        is_train = np.zeros(n, dtype=bool)
        is_train[tr_idx] = True
        is_test = np.zeros(n, dtype=bool)
        is_test[te_idx] = True

    # ---- light-curve forest
    downsample_info = None
    with prog.step("light-curve classifier") as st:
        rows = np.flatnonzero(is_train & lc_ok)
        _both_classes(y_all[rows], "light-curve training set")
        space = luminosity_space(X, data.z)

        def lc_rows(r: np.ndarray, s: int) -> np.ndarray:
            if config.downsample_ratio is None:
                return r
            return r[balanced_downsample(space[r], y_all[r], ratio=config.downsample_ratio, seed=s)]

        def lc_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            fit_rows = lc_rows(a, seed)
            return fit_lc_classifier(X[fit_rows], y_all[fit_rows], config.lc, seed).predict_proba(X[b])

        lc_folds = _folds(y_all[rows], config.cv_folds, seed)
        oof_lc_rows, lc_fold_metrics = _oof(rows, y_all[rows], lc_folds, lc_fit_predict)
        final_rows = lc_rows(rows, seed)
        if config.downsample_ratio is not None:
            downsample_info = {"ratio": config.downsample_ratio, "before": int(rows.size),
                               "after": int(final_rows.size), "bal": int(y_all[final_rows].sum())}
        lc_model = fit_lc_classifier(X[final_rows], y_all[final_rows], config.lc, seed)
        p_lc = np.full(n, np.nan)
        p_lc[lc_ok] = lc_model.predict_proba(X[lc_ok])
        oof_lc = np.full(n, np.nan)
        oof_lc[rows] = oof_lc_rows
        st.note = f"{final_rows.size} training objects, {len(lc_folds)} folds"

    # ---- spectral model
    with prog.step("spectral classifier") as st:
        srows = np.flatnonzero(is_train & spec_ok)
        _both_classes(y_all[srows], "spectral training set")
        S = data.spectra

        def n_comp(m: int) -> int:
            return int(max(1, min(config.n_components, min(config.n_landmarks, m) - 2)))

        def spec_fit(a: np.ndarray) -> tuple[Any, Any]:
            emb = fit_spectral_embedding(S[a], n_comp(a.size), seed, y=y_all[a], n_landmarks=config.n_landmarks)
            clf = fit_spectral_classifier(emb.transform(S[a]), y_all[a], seed)
            return emb, clf

        def spec_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            emb, clf = spec_fit(a)
            return clf.predict_proba(emb.transform(S[b]))

        sp_folds = _folds(y_all[srows], config.cv_folds, seed)
        oof_sp_rows, sp_fold_metrics = _oof(srows, y_all[srows], sp_folds, spec_fit_predict)
        embedding, spec_clf = spec_fit(srows)
        E = np.full((n, embedding.n_components), np.nan, dtype=np.float64)
        E[spec_ok] = embedding.transform(S[spec_ok])
        E = E.astype(np.float32).astype(np.float64)  # what the catalogue stores and the plugin feeds
        p_spec = np.full(n, np.nan)
        p_spec[spec_ok] = spec_clf.predict_proba(E[spec_ok])
        oof_sp = np.full(n, np.nan)
        oof_sp[srows] = oof_sp_rows
        st.note = f"{srows.size} training spectra, {embedding.n_components} kernel-PCA components"

    # ---- late fusion
    with prog.step("late fusion") as st:
        both_tr = np.flatnonzero(is_train & lc_ok & spec_ok & np.isfinite(oof_lc) & np.isfinite(oof_sp))
        cv_note = None
        if both_tr.size and np.bincount(y_all[both_tr], minlength=2).min() >= 2:
            late_src_lc, late_src_sp = oof_lc, oof_sp
        else:  # too few objects for CV: fit on in-sample probabilities (said in the report)
            both_tr = np.flatnonzero(is_train & lc_ok & spec_ok)
            late_src_lc, late_src_sp = p_lc, p_spec
            cv_note = "CV was not possible for every model (too few objects per class); late fusion was fitted " \
                      "on in-sample probabilities."
        _both_classes(y_all[both_tr], "late-fusion training set (objects with both modalities)")
        late = fit_late_fusion(late_src_lc[both_tr], late_src_sp[both_tr], y_all[both_tr], seed=seed)

        def late_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            m = fit_late_fusion(late_src_lc[a], late_src_sp[a], y_all[a], seed=seed)
            return m.predict(late_src_lc[b], late_src_sp[b])

        late_folds = _folds(y_all[both_tr], config.cv_folds, seed)
        _, late_fold_metrics = _oof(both_tr, y_all[both_tr], late_folds, late_fit_predict)
        st.note = f"w_lc {late.w_lc:.3f}, w_spec {late.w_spec:.3f} (spectral share {late.spectral_share:.0%})"

    # ---- attention fusion
    with prog.step("attention fusion") as st:
        arows = np.flatnonzero(is_train & spec_ok)

        def att_fit_predict(a: np.ndarray, b: np.ndarray) -> np.ndarray:
            m = fit_attention_fusion(X[a], E[a], y_all[a], config.attention, seed)
            return m.predict_proba(X[b], E[b])

        att_folds = _folds(y_all[arows], config.cv_folds, seed)
        _, att_fold_metrics = _oof(arows, y_all[arows], att_folds, att_fit_predict)
        att = fit_attention_fusion(X[arows], E[arows], y_all[arows], config.attention, seed)
        st.note = (f"{arows.size} objects, {n_parameters(att)} parameters, best epoch "
                   f"{att.history['best_epoch']}/{att.history['epochs_run']}")

    # ---- evaluation on the held-out test split
    with prog.step("evaluation"):
        common = np.flatnonzero(is_test & lc_ok & spec_ok)
        preds = {
            "bal_lc": p_lc,
            "spectral": p_spec,
            "fusion_late": late.predict(p_lc, p_spec),
        }
        p_att = np.full(n, np.nan)
        p_att[spec_ok] = att.predict_proba(X[spec_ok], E[spec_ok])
        preds["fusion_attention"] = p_att
        p_att_spec = np.full(n, np.nan)
        p_att_spec[spec_ok] = att.predict_proba(np.full_like(X[spec_ok], np.nan), E[spec_ok])
        preds["fusion_attention_spec_only"] = p_att_spec
        test = {r: class_metrics(y_all[common], p[common]) for r, p in preds.items()} if common.size else {}
        applies = {"bal_lc": is_test & lc_ok, "spectral": is_test & spec_ok,
                   "fusion_late": is_test & lc_ok & spec_ok, "fusion_attention": is_test & spec_ok}
        test_all = {r: class_metrics(y_all[m], preds[r][m]) for r, m in applies.items()}
        curves = {r: (y_all[common], preds[r][common]) for r in ("bal_lc", "spectral", "fusion_late",
                                                                   "fusion_attention")}
        att_w = att.attention(X[common], E[common]) if common.size else np.empty((0, 2))
        cv = {"bal_lc": summarise_folds(lc_fold_metrics), "spectral": summarise_folds(sp_fold_metrics),
              "fusion_late": summarise_folds(late_fold_metrics), "fusion_attention": summarise_folds(att_fold_metrics)}
        by_history = _lc_by_history(data, lc_model, is_test, lc_ok, spec_ok, p_lc, p_att, config.min_points)

    # ---- export + parity
    with prog.step("ONNX export") as st:
        parity: dict[str, dict[str, Any]] = {}
        lc_onnx = lc_model.to_onnx()
        sess = export.session(lc_onnx)
        Xp = np.vstack([X[is_test & lc_ok].astype(np.float32), threshold_probe_inputs(lc_model, seed=seed)])
        parity["bal_lc"] = {"max_abs_diff": export.check_parity(
            "bal_lc", export.run(sess, {"features": Xp}, "probabilities")[:, 1], lc_model.predict_proba(Xp)),
            "checked_on": f"{Xp.shape[0]} rows (test features + inputs at split thresholds)"}

        spec_onnx = spectral_pipeline_onnx(embedding, spec_clf)
        Sp = S[spec_ok & is_test].astype(np.float32)
        if Sp.shape[0] == 0:
            Sp = S[spec_ok][:64].astype(np.float32)
        outs = export.run(spec_onnx, {"flux": Sp})
        d_emb = export.check_parity("spectral embedding", outs["embedding"], embedding.transform(Sp))
        d_p = export.check_parity("spectral probability", outs["probabilities"][:, 1],
                                  spec_clf.predict_proba(embedding.transform(Sp)))
        parity["spectral"] = {"max_abs_diff": max(d_emb, d_p),
                              "checked_on": f"{Sp.shape[0]} test spectra (embedding and probability)"}

        late_onnx = late.to_onnx()
        pl = np.concatenate([p_lc[common], [np.nan, 0.0, 1.0, 0.5]]).astype(np.float32)
        ps = np.concatenate([p_spec[common], [0.3, 0.0, 1.0, 0.5]]).astype(np.float32)
        parity["fusion_late"] = {"max_abs_diff": export.check_parity(
            "fusion_late", export.run(late_onnx, {"p_lc": pl, "p_spec": ps}, "probability"), late.predict(pl, ps)),
            "checked_on": f"{pl.size} rows (test probabilities, NaN and 0/1 edge cases)"}

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
        parity["fusion_attention"] = {"max_abs_diff": max(d_att, d_w),
                                      "checked_on": f"{Xa.shape[0]} rows (test objects + all-NaN features)"}
        st.note = ", ".join(f"{r} {p['max_abs_diff']:.1e}" for r, p in parity.items())

    # ---- manifest entries (the bundle is written below, after the extra models)
    name = config.name or ("bal-synthetic" if data.kind == "synthetic" else "bal-dr16q")
    kind = data.kind
    n_tr, n_te = int(is_train.sum()), int(is_test.sum())
    gen = data.description.get("generator")
    base_td: dict[str, Any] = {
        "kind": kind, "seed": seed, "n_objects": n, "n_train": n_tr, "n_test": n_te,
        "test_fraction": config.test_fraction,
    }
    if gen:
        base_td["generator"] = gen
    if data.description.get("sources"):
        base_td["sources"] = data.description["sources"]
    lc_hist_desc = data.description.get("lc_history")
    if lc_hist_desc:
        base_td["lc_history"] = lc_hist_desc

    def td(rows_: np.ndarray, what: str, **extra: Any) -> dict[str, Any]:
        yb = y_all[rows_]
        return {**base_td, "rows": what, "n_fit": int(rows_.size), "n_bal": int(yb.sum()),
                "n_nonbal": int(yb.size - yb.sum()), "bal_fraction": float(yb.mean()) if yb.size else None,
                **extra}

    def metrics(role: str) -> dict[str, Any]:
        m: dict[str, Any] = {"threshold": 0.5}
        if role in test:
            m["test_common"] = _headline(test[role])
        if role in test_all:
            m["test_all_applicable"] = _headline(test_all[role])
        m["cv"] = {k: v for k, v in cv[role].items() if k != "per_fold"}
        m["onnx_parity_max_abs"] = parity[role]["max_abs_diff"]
        hist = {k: {"source": v["source"], "in_training": v["in_training"], "n_objects": v["n"],
                    **_headline(v[role])} for k, v in by_history.items() if v.get(role) is not None}
        if hist:
            m["test_by_lc_history"] = hist
        return m

    version = config.version
    models = [
        ModelArtifact("bal_lc", lc_onnx, version,
                      "Balanced Random Forest on the light-curve feature vector (median imputation + missing "
                      "indicators inside the graph); probabilities[:, 1] = P(BAL)",
                      td(final_rows, f"training objects with >= {config.min_points} points in g or r",
                         class_imbalance="balanced bootstrap per tree (Chen+2004)", downsample=downsample_info,
                         config=config.lc.as_dict()),
                      metrics("bal_lc"), FEATURE_NAMES, FEATURE_VERSION,
                      {"min_points": int(config.min_points), "positive_class": "BAL",
                       "feature_importances": dict(sorted(lc_model.feature_importances().items(),
                                                          key=lambda kv: -kv[1])[:10])}),
        ModelArtifact("spectral", spec_onnx, version,
                      "C IV-window spectrum (training.spectra preprocessing, flux on the rest-frame grid) -> "
                      "RBF kernel-PCA embedding -> logistic regression; for offline use and the catalogue",
                      td(srows, "training objects with a usable spectrum",
                         class_imbalance="class-balanced logistic regression; class-balanced landmarks",
                         n_components=embedding.n_components, n_landmarks=int(embedding.landmarks.shape[0]),
                         preprocess_version=embedding.version),
                      metrics("spectral"), None, None, {"positive_class": "BAL"}),
        ModelArtifact("fusion_late", late_onnx, version,
                      "sigmoid(w_lc logit(p_lc) + w_spec logit(p_spec) + b), fitted on out-of-fold "
                      "probabilities; NaN p_lc contributes 0",
                      td(both_tr, "training objects with both modalities (out-of-fold probabilities)"),
                      metrics("fusion_late"), None, None,
                      {"weights": {"w_lc": late.w_lc, "w_spec": late.w_spec, "bias": late.bias,
                                   "spectral_share": late.spectral_share}}),
        ModelArtifact("fusion_attention", att_onnx, version,
                      "Multiplicative fusion with modality attention (dense network): raw light-curve "
                      "features (imputed and scaled inside the graph) + spectral embedding -> P(BAL)",
                      td(arows, "training objects with a usable spectrum (light-curve features may be NaN)",
                         class_imbalance=f"BCE with pos_weight {att.history['pos_weight']:.3f}",
                         config=config.attention.as_dict(), epochs_run=att.history["epochs_run"],
                         best_epoch=att.history["best_epoch"], n_parameters=n_parameters(att)),
                      metrics("fusion_attention"), FEATURE_NAMES, FEATURE_VERSION, {"positive_class": "BAL"}),
    ]
    cat_rows = np.flatnonzero(spec_ok)
    catalogue = CatalogueArtifact(
        ids=data.ids[cat_rows], ra=data.ra[cat_rows], dec=data.dec[cat_rows], z=data.z[cat_rows],
        embedding=E[cat_rows].astype(np.float32), spec_prob=p_spec[cat_rows].astype(np.float32),
        description=("synthetic objects (positions from the generator) with their spectral embedding and "
                     "p_spec" if kind == "synthetic" else
                     "DR16Q quasars with a usable spec-lite spectrum: embedding and p_spec"),
    )
    created = utc_now()
    limitations = _limitations(kind, test, late, config.lc_history, by_history)
    description = (f"{'Synthetic-data' if kind == 'synthetic' else 'DR16Q'} BAL bundle: light-curve forest, "
                   "spectral model, late and attention fusion, spectral catalogue"
                   + (". Trained on simulated quasars: for demos, tests and plumbing, not for science."
                      if kind == "synthetic" else "."))
    training_config = config.as_dict()
    training_config["lc_history"] = config.lc_history

    staging = staging_dir(out)
    try:
        extra_entries: dict[str, Any] | None = None
        if extra_models is not None:
            with prog.step(extra_step) as st:
                extra_entries = {str(r): dict(e) for r, e in extra_models(staging).items()}
                st.note = ", ".join(sorted(extra_entries))
        scorer = {r: extra_entries[r] for r in ("cutout_encoder", "ranking_head")
                  if extra_entries and r in extra_entries}
        with prog.step("bundle and report") as st:
            if len(scorer) == 2:
                decision_rule = ("candidate_score = ranking_head probability x (bal_fusion_prob if known else "
                                 "bal_lc_prob); is_candidate = candidate_score >= candidate_threshold "
                                 "(broker_plugin.models.scoring.combine)")
                description += " Candidate scorer: contrastive cutout encoder + ranking head."
            else:
                decision_rule = "is_candidate = (bal_fusion_prob if known else bal_lc_prob) >= candidate_threshold"
            bundle_extra = {
                "feature_version": FEATURE_VERSION,
                "decision_rule": decision_rule,
                "training_command": config.command,
                "training_config": training_config,
                "package_version": broker_plugin.__version__,
            }
            manifest = write_bundle_files(staging, name, version, description, kind, config, models, catalogue,
                                          bundle_extra, data, is_train, is_test, limitations, extra_entries,
                                          scorer=bool(scorer))
            # the plugin's verifier must accept what was written, before anything replaces ``out``
            stage = BundleStage(ModelBundle.load(staging))
            if stage.fusion_role != "fusion_attention":
                raise RuntimeError("written bundle does not wire the attention fusion")
            if len(scorer) == 2 and not stage.has_candidate_scorer:
                raise RuntimeError("written bundle does not wire the candidate scorer")
            timings = {**prog.timings, "total (to the report)": time.perf_counter() - t_start}
            scorer_fig = staging / "report" / "scorer_embedding.png"
            ctx = {
                "kind": kind, "title": f"Evaluation report: {name} {version}", "created": created,
                "package_version": broker_plugin.__version__, "feature_version": FEATURE_VERSION,
                "command": config.command, "figures": config.figures,
                "data": {"n_objects": n, "n_bal": int(y_all.sum()), "bal_fraction": float(y_all.mean()),
                         "n_usable": int(usable.sum()), "n_lc_ok": int(lc_ok.sum()), "n_spec_ok": int(spec_ok.sum()),
                         "n_both": int((lc_ok & spec_ok).sum()), "min_points": config.min_points,
                         "test_fraction": config.test_fraction, "n_test": n_te, "n_test_bal": int(y_all[is_test].sum()),
                         "n_train": n_tr, "n_train_bal": int(y_all[is_train].sum()), "seed": seed,
                         "downsample": downsample_info, "generator": gen,
                         "sources": data.description.get("sources"),
                         "lc_history": lc_hist_desc,
                         "spectrum_failures": dict(Counter(r for r in data.spec_reasons if r != "ok"))},
                "test": test, "test_all": test_all, "cv": cv, "curves": curves, "cv_note": cv_note,
                "by_history": by_history,
                "late": {"w_lc": late.w_lc, "w_spec": late.w_spec, "bias": late.bias,
                         "spectral_share": late.spectral_share},
                "attention": {"history": att.history, "att_spec": att_w[:, 1], "y": y_all[common],
                              "summary": _att_summary(att, att_w, y_all[common], n_parameters(att))},
                "importances": lc_model.feature_importances(), "parity": parity, "timings": timings,
                "limitations": limitations,
                "scorer": ({"entries": {r: manifest["models"][r] for r in scorer},
                            "figure": scorer_fig.name if scorer_fig.is_file() else None} if scorer else None),
            }
            write_report(staging / "report", ctx)
            replace_dir(staging, out)
            st.note = f"{_dir_size(out) / 1e6:.2f} MB"
    except BaseException:
        import shutil

        shutil.rmtree(staging, ignore_errors=True)
        raise
    prog.close()
    return TrainResult(out=out, manifest=manifest, test=test, cv=cv, parity=parity, timings=dict(prog.timings),
                       elapsed_s=time.perf_counter() - t_start)


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

