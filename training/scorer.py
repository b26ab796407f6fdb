"""Training the candidate scorer: the cutout encoder and the ranking head, exported to ONNX.

:func:`train_candidate_scorer` is what ``bal-broker train`` calls; it returns the two models' model
bundle entries (:class:`ScorerArtifacts`). The combination rule that turns the head's probability
and the BAL probabilities into the published ``candidate_score`` lives in
:mod:`broker_plugin.models.scoring` (runtime, numpy only), documented there.

Pipeline, and why
-----------------

1. **Synthetic alerts through the plugin.** ``n_alerts`` ZTF and Rubin packets (with stamps) of a
   mixed population (:data:`HEAD_CLASS_MIX`) are written by :mod:`training.synthetic.packets` and
   decoded with :func:`broker_plugin.decode.decode_alert`; light-curve features come from
   :func:`~broker_plugin.photometry.features.compute_features_batch`, tensors from
   :func:`~broker_plugin.photometry.cutouts.cutout_batch`, metadata from ``Alert.meta``: every number the head
   sees at training is produced by the runtime code from packet bytes. Half of the ZTF alerts lose
   their forced photometry before normalisation (what every pre-4.x ZTF alert looks like; see
   :func:`synthetic_alert_set`). A stratified split (by class) holds out ``test_fraction``.
2. **Contrastive encoder** (:mod:`training.contrastive`, SimCLR / NT-Xent). Its training set is
   unlabelled, so it takes every stamp worth learning from: ``n_stamps`` rendered triplets of every
   kind (70% ZTF-sized 63 px, 30% Rubin-sized 31 px), the stamps of the *training* alerts, and real
   alert stamps from ``real_stamp_dirs`` if given. The held-out alerts' stamps are excluded, so the
   head is evaluated on images the encoder never saw. Exported to ``cutout_encoder.onnx``.
3. **Ranking head** (:class:`RankingHead`): a small MLP on the embedding, the light-curve feature
   vector and the metadata, assembled by :func:`broker_plugin.models.scoring.assemble_head_inputs` from
   embeddings computed *by the exported ONNX encoder* (the runtime numbers). Standardisation
   (median / IQR, then ``asinh`` to tame heavy tails), NaN imputation (the training median) and
   missing-value indicators are layers of the graph, so the runtime passes NaN straight in.
   The graph reads every meta column but ignores ``ndethist`` / ``ncovhist`` (survey-long history
   counts the 90-day simulation cannot reproduce; :class:`HeadConfig`).
   Exported to ``ranking_head.onnx`` with three named inputs (``embedding``, ``lc_features``,
   ``meta``: named blocks make a wrong wiring fail loudly instead of silently shifting columns) and
   one output ``probability`` ``[N, 1]``. Positive class: ``qso_bal`` + ``qso_nonbal``; blazars are
   negatives (see :mod:`broker_plugin.models.scoring`).
4. **Evaluation.** Head precision / recall / F1 (at 0.5) and ROC AUC on the held-out alerts, from
   the exported ONNX files (the artefacts that ship); ablations without the embedding and with the
   embedding only (does the image modality help?); kNN (k=5) accuracy of point / nuclear /
   extended / artifact on held-out rendered stamps, trained encoder vs the same network at its
   random initialisation (and raw pixels); a 2-D projection of held-out embeddings as a PNG;
   optionally the head on real ZTF alerts labelled by SIMBAD (:func:`simbad_check`).

Honest limits: the head's metadata inputs (sgscore1, distpsnr1, neargaia, drb, ...) are drawn per
class by the packet simulator, so held-out synthetic metrics (AUC ~0.99) overstate real
performance; the ablation shows the image embedding adds little on top of light curve + metadata
*on synthetic data*, where the metadata already separates the classes. On the ~120 real
SIMBAD-labelled Fink alerts the default run reaches ROC AUC ~0.84 (10 AGN-like alerts).

Why an MLP in torch rather than gradient boosting via skl2onnx: the head must read NaN (imputed in
the graph), and a float32 MLP exports with parity ~1e-7, where tree ensembles converted to ONNX
compare float32 thresholds and flip a few leaves (parity worse than the 1e-5 we require).

Layout: training data in :mod:`training.scorer_data`, the head in :mod:`training.ranking_head`,
metrics and the picture in :mod:`training.scorer_evaluation`; this module runs the stages in order and
re-exports their public names.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
from torch import nn

from broker_plugin.models.scoring import assemble_head_inputs, cutouts_usable, embed_cutouts
from training.contrastive import ContrastiveConfig
from training.ranking_head import (
    HeadConfig,
    RankingHead,
    export_head_onnx,
    fit_ranking_head,
    head_onnx_parity,
    head_predict,
)
from training.scorer_data import (
    HEAD_CLASS_MIX,
    HEAD_SURVEY_MIX,
    POSITIVE_CLASSES,
    RUBIN_STAMP_SHARE,
    AlertSet,
    real_stamp_tensors,
    rendered_stamps,
    split_by_class,
    synthetic_alert_set,
)
from training.scorer_encoder import (
    ENCODER_FILE,
    EncoderStage,
    Progress,
    Stopwatch,
    encoder_metrics,
    train_encoder_stage,
)
from training.scorer_evaluation import (
    SIMBAD_QSO_TYPES,
    ablation_metrics,
    binary_metrics,
    embedding_figure,
    head_metrics,
    knn_metrics,
    simbad_check,
)
from training.scorer_manifest import (
    HEAD_FILE,
    alerts_training_data,
    encoder_manifest_entry,
    head_manifest_entry,
    plain,
    utc_now,
)

__all__ = [
    "ENCODER_FILE", "FIGURE_FILE", "HEAD_CLASS_MIX", "HEAD_FILE", "HEAD_SURVEY_MIX", "POSITIVE_CLASSES",
    "RUBIN_STAMP_SHARE", "SIMBAD_QSO_TYPES", "TINY", "AlertSet", "HeadConfig", "Progress", "RankingHead",
    "ScorerArtifacts", "binary_metrics", "embedding_figure", "export_head_onnx", "fit_ranking_head",
    "head_onnx_parity", "head_predict", "knn_metrics", "real_stamp_tensors", "rendered_stamps", "simbad_check",
    "synthetic_alert_set", "train_candidate_scorer",
]

#: File name of the embedding picture inside ``out_dir`` (the bundle directory, typically).
FIGURE_FILE = "scorer_embedding.png"

#: Settings for tests and smoke runs (~15-25 s on two cores): ``train_candidate_scorer(out, **TINY)``.
TINY: dict[str, Any] = {
    "n_alerts": 160,
    "n_stamps": 160,
    "n_test_stamps": 120,
    "encoder_epochs": 2,
    "head_epochs": 15,
    "encoder_config": ContrastiveConfig(batch_size=64, width=8, embed_dim=8, proj_dim=8),
    "ablations": False,
    "projection": "pca",
}



@dataclass
class ScorerArtifacts:
    """What :func:`train_candidate_scorer` produced.

    ``manifest_entries`` maps bundle role (``"cutout_encoder"``, ``"ranking_head"``) to the entry
    :mod:`broker_plugin.models.bundle` reads; ``file`` is relative to ``out_dir``, so write the manifest in
    ``out_dir`` (or copy the two files beside it). ``encoder`` / ``head`` are the fitted torch
    modules (for parity checks); everything else is plain data.
    """

    out_dir: Path
    encoder_path: Path
    head_path: Path
    figure_path: Path | None
    manifest_entries: dict[str, dict[str, Any]]
    metrics: dict[str, Any]
    timings: dict[str, float]
    encoder: nn.Module = field(repr=False)
    head: RankingHead = field(repr=False)


@dataclass
class _HeadStage:
    """The fitted and exported ranking head with the inputs it was fitted and tested on."""

    head: RankingHead
    history: dict[str, Any]
    config: HeadConfig
    path: Path
    parity: float
    emb_train: np.ndarray
    emb_test: np.ndarray
    in_train: dict[str, np.ndarray]
    in_test: dict[str, np.ndarray]

    @property
    def embedding_dim(self) -> int:
        return int(self.in_train["embedding"].shape[1])


def _fit_head_stage(out: Path, enc: EncoderStage, train: AlertSet, test: AlertSet, hcfg: HeadConfig,
                    clock: Stopwatch) -> _HeadStage:
    """Embed the alerts with the *exported* encoder (the runtime numbers), fit the head, export it."""
    emb_train = embed_cutouts(enc.session, train.tensors)
    emb_test = embed_cutouts(enc.session, test.tensors)
    in_train = assemble_head_inputs(emb_train, train.features, train.alerts)
    in_test = assemble_head_inputs(emb_test, test.features, test.alerts)
    head, head_hist = fit_ranking_head(in_train, train.labels, hcfg)
    clock.lap("head_train_s")
    head_path = export_head_onnx(head, out / HEAD_FILE)
    head_parity = head_onnx_parity(head, head_path, in_test)
    clock.lap("head_export_s")
    return _HeadStage(head=head, history=head_hist, config=hcfg, path=head_path, parity=head_parity,
                      emb_train=emb_train, emb_test=emb_test, in_train=in_train, in_test=in_test)


def _evaluate(enc: EncoderStage, hs: _HeadStage, train: AlertSet, test: AlertSet, *, ablations: bool,
              simbad_parquet: Sequence[str | Path] | None,
              clock: Stopwatch) -> tuple[dict[str, Any], dict[str, Any], np.ndarray]:
    """Head metrics (from the exported file; ablations and the SIMBAD check when asked) and encoder
    metrics; also the held-out rendered-stamp embedding, for the figure."""
    hm = head_metrics(hs.head, hs.path, train, test, hs.in_train, hs.in_test)
    hm.update(threshold=0.5, onnx_max_abs_diff=hs.parity, best_epoch=hs.history["best_epoch"],
              epochs=hs.config.epochs, n_test_without_cutouts=int((~cutouts_usable(test.cutout_flags)).sum()))
    if ablations:
        hm.update(ablation_metrics(hs.in_train, hs.in_test, train.labels, test.labels, hs.config))
        clock.lap("ablations_s")
    em, test_tr = encoder_metrics(enc, train, test, hs.emb_train, hs.emb_test)
    if simbad_parquet:
        hm["real_simbad_check"] = simbad_check(enc.path, hs.path, simbad_parquet)
    clock.lap("evaluate_s")
    return hm, em, test_tr


def _manifest_entries(enc: EncoderStage, hs: _HeadStage, em: dict[str, Any], hm: dict[str, Any],
                      alerts_td: dict[str, Any], *, seed: int, version: str,
                      real_stamp_dirs: Sequence[str | Path] | None) -> dict[str, dict[str, Any]]:
    """Both bundle entries, the head's pinned to the encoder file's sha256, as plain data."""
    created = utc_now()
    enc_entry = encoder_manifest_entry(enc, em, version=version, created=created, seed=seed,
                                       real_stamp_dirs=real_stamp_dirs)
    head_entry = head_manifest_entry(hs.path, hs.config, hm, alerts_td, embedding_dim=hs.embedding_dim,
                                     encoder_sha256=enc_entry["sha256"], version=version, created=created)
    return {"cutout_encoder": plain(enc_entry), "ranking_head": plain(head_entry)}


def train_candidate_scorer(
    out_dir: str | Path,
    *,
    n_alerts: int = 3000,
    seed: int = 0,
    encoder_epochs: int = 10,
    n_stamps: int = 2500,
    n_test_stamps: int = 1000,
    head_epochs: int = 60,
    test_fraction: float = 0.25,
    ztf_no_forced_fraction: float = 0.5,
    class_mix: Mapping[str, float] | None = None,
    survey_mix: Mapping[str, float] | None = None,
    encoder_config: ContrastiveConfig | None = None,
    head_config: HeadConfig | None = None,
    real_stamp_dirs: Sequence[str | Path] | None = None,
    simbad_parquet: Sequence[str | Path] | None = None,
    ablations: bool = True,
    projection: Literal["pca", "tsne"] = "tsne",
    figure_path: str | Path | None = None,
    version: str = "1",
    progress: Progress | None = None,
) -> ScorerArtifacts:
    """Train, export and evaluate the cutout encoder and the ranking head (module docstring).

    Writes ``out_dir/cutout_encoder.onnx``, ``out_dir/ranking_head.onnx`` and the embedding picture
    (``figure_path``, default ``out_dir/scorer_embedding.png``; pass a path outside the bundle if the
    bundle must hold only models). ``real_stamp_dirs``: folders of real alert files whose stamps join
    the (unlabelled) encoder training set. ``simbad_parquet``: Fink Parquet files with a SIMBAD
    ``cdsxmatch`` column, to score the head on real labelled alerts (:func:`simbad_check`; metric
    ``real_simbad_check``). ``progress`` receives one line per stage and per encoder epoch.
    Defaults take ~1.5-2.5 min on two CPU cores; ``**TINY`` ~10-20 s.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    say = progress or (lambda _msg: None)
    clock = Stopwatch()

    # 1. Synthetic alerts through the plugin's own decoder, features and cutout code.
    say(f"scorer: simulating and decoding {n_alerts} synthetic alerts (ZTF + Rubin, with stamps)")
    data = synthetic_alert_set(n_alerts, seed, class_mix=class_mix, survey_mix=survey_mix,
                               ztf_no_forced_fraction=ztf_no_forced_fraction)
    tr_idx, te_idx = split_by_class(data.classes, test_fraction, seed)
    train, test = data.subset(tr_idx), data.subset(te_idx)
    clock.lap("alerts_s")

    # 2. Contrastive encoder on rendered stamps + training-alert stamps (+ real stamps).
    enc = train_encoder_stage(out, train, seed=seed, n_stamps=n_stamps, n_test_stamps=n_test_stamps,
                              encoder_epochs=encoder_epochs, encoder_config=encoder_config,
                              real_stamp_dirs=real_stamp_dirs, say=say, clock=clock)

    # 3. Head inputs from the *exported* encoder: the numbers the runtime will compute.
    say("scorer: embedding the alerts and fitting the ranking head")
    hs = _fit_head_stage(out, enc, train, test, replace(head_config or HeadConfig(), epochs=head_epochs, seed=seed),
                         clock)

    # 4. Evaluation, from the exported files.
    say("scorer: evaluating (held-out alerts, kNN on held-out stamps)")
    hm, em, test_tr = _evaluate(enc, hs, train, test, ablations=ablations, simbad_parquet=simbad_parquet,
                                clock=clock)

    fig = Path(figure_path) if figure_path is not None else out / FIGURE_FILE
    embedding_figure(fig, [
        ("held-out rendered stamps, by stamp kind", test_tr, enc.y_syn_test),
        ("held-out synthetic alerts, by class", hs.emb_test, test.classes),
    ], method=projection, seed=seed)
    clock.lap("figure_s")
    timings = clock.finish()

    entries = _manifest_entries(enc, hs, em, hm, alerts_training_data(
        data, len(train), len(test), seed=seed, class_mix=class_mix, survey_mix=survey_mix,
        ztf_no_forced_fraction=ztf_no_forced_fraction), seed=seed, version=version, real_stamp_dirs=real_stamp_dirs)
    metrics = {role: entry["metrics"] for role, entry in entries.items()}
    say(f"scorer: done in {timings['total_s']:.0f} s (head test AUC {hm['test_roc_auc']:.3f}, kNN trained "
        f"{em.get('knn_trained_acc', float('nan')):.3f} vs random {em.get('knn_random_acc', float('nan')):.3f})")
    return ScorerArtifacts(out, enc.path, hs.path, fig, entries, metrics, timings, enc.encoder, hs.head)
