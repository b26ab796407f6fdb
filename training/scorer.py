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
"""

from __future__ import annotations

import datetime as _dt
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from broker_plugin.alert import Alert
from broker_plugin.models.bundle import sha256_file
from broker_plugin.models.scoring import (
    ENCODER_INPUT,
    ENCODER_OUTPUT,
    HEAD_INPUTS,
    HEAD_META_NAMES,
    HEAD_OUTPUT,
    assemble_head_inputs,
    cutouts_usable,
    embed_cutouts,
    run_head,
)
from broker_plugin.photometry.cutouts import CHANNEL_NAMES, CHANNELS, SIZE, cutout_batch, stack_stamps
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION, compute_features_batch
from training.contrastive import (
    ContrastiveConfig,
    Encoder,
    embed,
    export_encoder_onnx,
    knn_predict,
    onnx_parity,
    train_encoder,
)
from training.export import save, torch_to_onnx

#: Population of the head's synthetic alerts. Richer in contaminants than the demo stream mix
#: (blazars in particular, the hardest negative) but still far richer in quasars than a real
#: stream: the head learns to separate classes; its probability is not a real-stream rate.
HEAD_CLASS_MIX: dict[str, float] = {"qso": 0.4, "star": 0.2, "sn": 0.15, "blazar": 0.1, "bogus": 0.15}
#: ZTF / Rubin share of the synthetic alerts (as :func:`training.synthetic.packets.iter_night`).
HEAD_SURVEY_MIX: dict[str, float] = {"ztf": 0.7, "lsst": 0.3}
#: Classes the head calls positive (see broker_plugin.models.scoring for why blazars are not).
POSITIVE_CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal")
#: File names inside ``out_dir`` (the bundle directory, typically).
ENCODER_FILE = "cutout_encoder.onnx"
HEAD_FILE = "ranking_head.onnx"
FIGURE_FILE = "scorer_embedding.png"
#: Share of rendered training stamps drawn at Rubin's cutout size (31 px) rather than ZTF's 63 px.
RUBIN_STAMP_SHARE = 0.3

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

Progress = Callable[[str], None]


# --------------------------------------------------------------------------------------------------
# Data
# --------------------------------------------------------------------------------------------------


@dataclass
class AlertSet:
    """Synthetic alerts decoded by the plugin, with everything the head needs, index-aligned."""

    alerts: list[Alert]
    classes: np.ndarray  # str, population.CLASSES
    labels: np.ndarray  # int8, 1 = quasar (POSITIVE_CLASSES)
    morphology: np.ndarray  # str, the stamp kind the packet writer rendered
    features: np.ndarray  # [N, len(FEATURE_NAMES)] float64
    tensors: np.ndarray  # [N, CHANNELS, SIZE, SIZE] float32
    cutout_flags: list[list[str]]
    no_forced: np.ndarray  # bool, ZTF alerts stripped of forced photometry (old-schema look-alikes)

    def __len__(self) -> int:
        return len(self.alerts)

    def subset(self, idx: np.ndarray) -> AlertSet:
        return AlertSet(
            [self.alerts[i] for i in idx], self.classes[idx], self.labels[idx], self.morphology[idx],
            self.features[idx], self.tensors[idx], [self.cutout_flags[i] for i in idx], self.no_forced[idx],
        )


def synthetic_alert_set(
    n: int,
    seed: int,
    *,
    class_mix: Mapping[str, float] | None = None,
    survey_mix: Mapping[str, float] | None = None,
    ztf_no_forced_fraction: float = 0.0,
) -> AlertSet:
    """``n`` synthetic alerts, packet bytes -> ``decode_alert`` -> features, tensors (the runtime path).

    ``ztf_no_forced_fraction`` of the ZTF alerts lose their forced photometry (``fp_hists``) before
    normalisation, through :func:`broker_plugin.decode.alert_from_record` (the runtime's own path for
    decoded records): that is what every alert of ZTF schemas before 4.x looks like, and most
    archived alerts are of those. Their quasars then have a handful of >= 5 sigma difference
    detections (median 1 point), not ~17 points of forced photometry, and the head must not learn
    "few points = not a quasar" from the generator's schema-4.02-only packets.
    """
    from broker_plugin.decode import alert_from_record, decode_alert
    from training.synthetic.packets import iter_night

    rng = np.random.default_rng([seed, 3])
    alerts: list[Alert] = []
    classes: list[str] = []
    morph: list[str] = []
    no_forced: list[bool] = []
    for packet, truth in iter_night(n, survey_mix or HEAD_SURVEY_MIX, seed, class_mix=class_mix or HEAD_CLASS_MIX,
                                    stamps=True):
        alert = decode_alert(packet)
        strip = alert.survey == "ztf" and rng.random() < ztf_no_forced_fraction
        if strip:
            record = {**alert.record, "fp_hists": None}
            alert = alert_from_record(record, schema_version=alert.schema_version, raw=packet)
        alerts.append(alert)
        classes.append(str(truth["label"]))
        morph.append(str(truth.get("morphology", "point")))
        no_forced.append(strip)
    features, _ = compute_features_batch([a.lightcurves for a in alerts])
    tensors, cflags = cutout_batch([a.cutouts for a in alerts])
    cls = np.asarray(classes, dtype=str)
    return AlertSet(alerts, cls, np.isin(cls, POSITIVE_CLASSES).astype(np.int8), np.asarray(morph, dtype=str),
                    np.asarray(features, dtype=np.float64), tensors, cflags, np.asarray(no_forced, dtype=bool))


def rendered_stamps(n: int, rng: np.random.Generator, rubin_share: float = RUBIN_STAMP_SHARE) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """``n`` rendered triplets of every stamp kind, stacked as the runtime does, and their kinds.

    Part of them at Rubin's 31 px (padded to 32 by :func:`stack_stamps`, as real Rubin cutouts
    are), so the encoder learns both surveys' geometry.
    """
    from training.synthetic.stamps import KINDS, render_dataset

    n_rubin = round(n * rubin_share)
    parts, labels = [], []
    for count, size in ((n - n_rubin, 63), (n_rubin, 31)):
        if count <= 0:
            continue
        trip, lab = render_dataset(count, rng, KINDS, size=size)
        parts.append(np.stack([stack_stamps(t)[0] for t in trip]))
        labels.append(lab)
    if not parts:
        return np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), np.zeros(0, dtype=str)
    x = np.concatenate(parts).astype(np.float32)
    y = np.concatenate(labels)
    order = rng.permutation(len(y))
    return x[order], y[order]


def real_stamp_tensors(dirs: Sequence[str | Path]) -> tuple[np.ndarray, int]:
    """Tensors of every decodable alert file (``*.avro``, recursively) with usable cutouts, and the
    number of files read. Unreadable files are skipped: they are optional extra training images."""
    from broker_plugin.decode import decode_alert
    from broker_plugin.errors import BalBrokerError

    cutouts = []
    n_files = 0
    for d in dirs:
        for path in sorted(Path(d).rglob("*.avro")):
            n_files += 1
            try:
                cutouts.append(decode_alert(path.read_bytes()).cutouts)
            except (BalBrokerError, OSError):
                continue
    if not cutouts:
        return np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), n_files
    x, flags = cutout_batch(cutouts)
    return x[cutouts_usable(flags)], n_files


def _split(classes: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by class) train / test indices; classes too small to split go to training."""
    rng = np.random.default_rng([seed, 7])
    train, test = [], []
    for c in sorted(set(classes.tolist())):
        idx = np.flatnonzero(classes == c)
        rng.shuffle(idx)
        k = round(len(idx) * test_fraction) if len(idx) >= 2 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


# --------------------------------------------------------------------------------------------------
# The ranking head
# --------------------------------------------------------------------------------------------------


def _robust_stats(x: np.ndarray, robust: bool) -> tuple[np.ndarray, np.ndarray]:
    """Per-column centre and scale over finite values: median and IQR/1.349 (or mean and std).

    Falls back to the standard deviation when the IQR is zero (binary or quantised columns) and to
    1 when that is zero too or the column has no finite value.
    """
    d = x.shape[1]
    center = np.zeros(d, dtype=np.float64)
    scale = np.ones(d, dtype=np.float64)
    for j in range(d):
        v = x[:, j][np.isfinite(x[:, j])].astype(np.float64)
        if v.size == 0:
            continue
        if robust:
            q25, q50, q75 = np.percentile(v, [25, 50, 75])
            center[j], s = q50, (q75 - q25) / 1.349
        else:
            center[j], s = v.mean(), 0.0
        if not s > 0:
            s = float(v.std())
        scale[j] = s if s > 0 else 1.0
    return center.astype(np.float32), scale.astype(np.float32)


#: Largest standardised magnitude kept before the asinh stretch (asinh(1e4) ~ 9.9).
_Z_MAX = 1e4


class _Prep(nn.Module):
    """Standardise, impute and stretch one input block inside the graph.

    Non-finite values become the column centre (so 0 after standardising: median imputation), the
    standardised value goes through ``asinh`` (linear within ~1 sigma, logarithmic beyond, so a
    DRW time scale of 1e4 d or an absurd excess variance cannot dominate), and, if ``indicators``,
    a 0/1 "was missing" column per input column is appended: for these features missingness itself
    is informative (too few points, a Rubin alert without ZTF's PS1 fields, a pre-3.3 ZTF schema).
    Columns with ``keep = 0`` are read but zeroed: the input contract stays the full column list
    while the model ignores columns it must not trust.
    """

    def __init__(self, center: np.ndarray, scale: np.ndarray, indicators: bool,
                 keep: np.ndarray | None = None) -> None:
        super().__init__()
        d = int(np.asarray(center).shape[0])
        k = np.ones(d, dtype=np.float32) if keep is None else np.asarray(keep, dtype=np.float32)
        self.register_buffer("center", torch.as_tensor(center, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("inv_scale", torch.as_tensor(1.0 / scale, dtype=torch.float32).reshape(1, -1))
        self.register_buffer("keep", torch.as_tensor(k).reshape(1, -1))
        self.indicators = indicators

    @property
    def out_dim(self) -> int:
        d = int(self.center.shape[1])
        return 2 * d if self.indicators else d

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bad = torch.isnan(x) | torch.isinf(x)
        z = (torch.where(bad, self.center, x) - self.center) * self.inv_scale
        # Clamp before asinh: a finite but absurd float32 (3e38) would overflow to inf here.
        z = torch.asinh(torch.clamp(z, -_Z_MAX, _Z_MAX)) * self.keep
        if self.indicators:
            return torch.cat([z, bad.to(z.dtype) * self.keep], dim=1)
        return z


class RankingHead(nn.Module):
    """P(quasar worth following up | embedding, light-curve features, metadata).

    ``forward(embedding, lc_features, meta) -> probability [N, 1]``; :meth:`logits` for training.
    Two hidden layers (64, 32): about 10k parameters, microseconds per alert.
    """

    def __init__(self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], hidden: tuple[int, int] = (64, 32),
                 dropout: float = 0.1, meta_keep: np.ndarray | None = None) -> None:
        super().__init__()
        self.prep_embedding = _Prep(*stats["embedding"], indicators=False)
        self.prep_lc = _Prep(*stats["lc_features"], indicators=True)
        self.prep_meta = _Prep(*stats["meta"], indicators=True, keep=meta_keep)
        d = self.prep_embedding.out_dim + self.prep_lc.out_dim + self.prep_meta.out_dim
        self.mlp = nn.Sequential(
            nn.Linear(d, hidden[0]), nn.ReLU(), nn.Dropout(dropout),
            nn.Linear(hidden[0], hidden[1]), nn.ReLU(),
            nn.Linear(hidden[1], 1),
        )
        self.dims = {k: int(v[0].shape[0]) for k, v in stats.items()}

    def logits(self, embedding: torch.Tensor, lc_features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.prep_embedding(embedding), self.prep_lc(lc_features), self.prep_meta(meta)], dim=1)
        return self.mlp(h)

    def forward(self, embedding: torch.Tensor, lc_features: torch.Tensor, meta: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.logits(embedding, lc_features, meta))


@dataclass
class HeadConfig:
    """Ranking-head training settings (stored in the manifest)."""

    epochs: int = 60
    batch_size: int = 128
    lr: float = 3e-3
    weight_decay: float = 1e-3
    hidden: tuple[int, int] = (64, 32)
    dropout: float = 0.1
    val_fraction: float = 0.15  # of the training split, for choosing the epoch (early stopping)
    seed: int = 0
    #: Meta columns the head reads but ignores. ZTF's ndethist/ncovhist count the position's whole
    #: survey history (real alerts: median ~60 / ~780), the simulator only 90 days (~3-7 / ~46): a
    #: head trained on them would call every real quasar an outlier.
    ignore_meta: tuple[str, ...] = ("ndethist", "ncovhist")


def fit_ranking_head(inputs: Mapping[str, np.ndarray], y: np.ndarray,
                     config: HeadConfig | None = None) -> tuple[RankingHead, dict[str, Any]]:
    """Fit a :class:`RankingHead` on an :func:`assemble_head_inputs` feed and 0/1 labels.

    Binary cross-entropy, AdamW, minibatches; a stratified ``val_fraction`` of the data chooses the
    epoch with the lowest validation loss (its weights are kept), which stops an over-long run
    from overfitting a small synthetic set. Deterministic in ``config.seed``.
    """
    cfg = config or HeadConfig()
    y = np.asarray(y, dtype=np.float32).reshape(-1)
    n = y.shape[0]
    stats = {
        "embedding": _robust_stats(inputs["embedding"], robust=False),
        "lc_features": _robust_stats(inputs["lc_features"], robust=True),
        "meta": _robust_stats(inputs["meta"], robust=True),
    }
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    unknown = set(cfg.ignore_meta) - set(HEAD_META_NAMES)
    if unknown:
        raise ValueError(f"ignore_meta names unknown meta columns: {sorted(unknown)}")
    keep = np.array([name not in cfg.ignore_meta for name in HEAD_META_NAMES], dtype=np.float32)
    head = RankingHead(stats, cfg.hidden, cfg.dropout, keep)
    rng = np.random.default_rng([cfg.seed, 11])
    val = np.zeros(n, dtype=bool)
    for c in (0.0, 1.0):
        idx = np.flatnonzero(y == c)
        rng.shuffle(idx)
        if idx.size >= 5:
            val[idx[: round(idx.size * cfg.val_fraction)]] = True
    tensors = {k: torch.as_tensor(np.asarray(inputs[k], dtype=np.float32)) for k in HEAD_INPUTS}
    yt = torch.as_tensor(y).reshape(-1, 1)
    fit_idx = torch.as_tensor(np.flatnonzero(~val))
    val_idx = torch.as_tensor(np.flatnonzero(val))
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    history: dict[str, Any] = {"train_loss": [], "val_loss": [], "config": asdict(cfg)}
    best_state, best_loss, best_epoch = None, float("inf"), 0
    t0 = time.perf_counter()
    for epoch in range(cfg.epochs):
        head.train()
        perm = fit_idx[torch.randperm(fit_idx.numel(), generator=gen)]
        total, batches = 0.0, 0
        for i in range(0, perm.numel(), cfg.batch_size):
            b = perm[i : i + cfg.batch_size]
            if b.numel() < 2:
                continue
            loss = loss_fn(head.logits(*(tensors[k][b] for k in HEAD_INPUTS)), yt[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach())
            batches += 1
        history["train_loss"].append(total / max(1, batches))
        head.eval()
        if val_idx.numel():
            with torch.no_grad():
                vl = float(loss_fn(head.logits(*(tensors[k][val_idx] for k in HEAD_INPUTS)), yt[val_idx]))
            history["val_loss"].append(vl)
            if vl < best_loss:
                best_loss, best_epoch = vl, epoch + 1
                best_state = {k: v.detach().clone() for k, v in head.state_dict().items()}
    if best_state is not None:
        head.load_state_dict(best_state)
    history.update(best_epoch=best_epoch or cfg.epochs, best_val_loss=best_loss if best_state else None,
                   seconds=time.perf_counter() - t0, n_fit=int((~val).sum()), n_val=int(val.sum()))
    head.eval()
    return head, history


@torch.no_grad()
def head_predict(head: RankingHead, inputs: Mapping[str, np.ndarray]) -> np.ndarray:
    """``[N]`` probabilities of the torch head (eval mode) on an :func:`assemble_head_inputs` feed."""
    head.eval()
    out = head(*(torch.as_tensor(np.asarray(inputs[k], dtype=np.float32)) for k in HEAD_INPUTS))
    return out.numpy().reshape(-1).astype(np.float64)


def export_head_onnx(head: RankingHead, path: str | Path, opset: int = 18) -> Path:
    """Export the head to one self-contained ONNX file: inputs ``embedding`` / ``lc_features`` /
    ``meta`` (float32, dynamic batch), output ``probability`` float32 ``[batch, 1]``.

    The same dynamo exporter as the encoder (:func:`training.contrastive.export_encoder_onnx`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    head.eval()
    example = tuple(torch.zeros(2, head.dims[k]) for k in HEAD_INPUTS)
    save(torch_to_onnx(head, example, list(HEAD_INPUTS), [HEAD_OUTPUT], opset), path)
    return path


def _session(path: str | Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def head_onnx_parity(head: RankingHead, path: str | Path, inputs: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference between the torch head and its ONNX file on ``inputs``."""
    got = run_head(_session(path), dict(inputs))
    ref = head_predict(head, inputs)
    return float(np.max(np.abs(got - ref))) if ref.size else 0.0


# --------------------------------------------------------------------------------------------------
# Metrics and picture
# --------------------------------------------------------------------------------------------------


def binary_metrics(y: np.ndarray, p: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Precision, recall, F1 at ``threshold``, ROC AUC and average precision (NaN when undefined)."""
    from sklearn.metrics import average_precision_score, f1_score, precision_score, recall_score, roc_auc_score

    y = np.asarray(y).astype(int)
    pred = (np.asarray(p) >= threshold).astype(int)
    both = len(set(y.tolist())) == 2
    return {
        "precision": float(precision_score(y, pred, zero_division=0)),
        "recall": float(recall_score(y, pred, zero_division=0)),
        "f1": float(f1_score(y, pred, zero_division=0)),
        "roc_auc": float(roc_auc_score(y, p)) if both else float("nan"),
        "average_precision": float(average_precision_score(y, p)) if both else float("nan"),
    }


def knn_metrics(prefix: str, ref_x: np.ndarray, ref_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray,
                k: int = 5) -> dict[str, float]:
    """kNN (cosine, k=5) accuracy over all kinds, recall per kind, and the 3-kind accuracy
    (point / extended / artifact: nuclear stamps dropped from reference and test)."""
    out: dict[str, float] = {}
    if len(ref_y) < k or len(test_y) == 0:
        return out
    pred = knn_predict(ref_x, ref_y, test_x, k)
    out[f"{prefix}_acc"] = float(np.mean(pred == test_y))
    for kind in sorted(set(test_y.tolist())):
        sel = test_y == kind
        out[f"{prefix}_recall_{kind}"] = float(np.mean(pred[sel] == kind))
    r3, t3 = ref_y != "nuclear", test_y != "nuclear"
    if r3.sum() >= k and t3.any():
        pred3 = knn_predict(ref_x[r3], ref_y[r3], test_x[t3], k)
        out[f"{prefix}_acc_3kinds"] = float(np.mean(pred3 == test_y[t3]))
    return out


#: SIMBAD types (Fink's ``cdsxmatch``) counted as "a quasar worth following" in :func:`simbad_check`:
#: quasars and AGN, including Seyferts and LINERs (SIMBAD often types a faint quasar's host that way).
#: Blazars and BL Lacs count as negatives, as in training.
SIMBAD_QSO_TYPES: frozenset[str] = frozenset(
    {"QSO", "QSO_Candidate", "AGN", "AGN_Candidate", "Seyfert", "Seyfert_1", "Seyfert_2", "LINER"})


def simbad_check(encoder_path: str | Path, head_path: str | Path, parquet_files: Sequence[str | Path],
                 label_column: str = "cdsxmatch") -> dict[str, Any]:
    """The exported head on *real* ZTF alerts labelled by a SIMBAD cross-match (Fink Parquet rows).

    Not a benchmark (the shipped sample is ~120 alerts, ~10 of them AGN-like), but the only check
    that the synthetic-trained head ranks real quasars above real stars at all. Rows are turned into
    alerts by :func:`broker_plugin.decode.alert_from_record` and scored through
    :func:`broker_plugin.models.scoring.head_probability`, the runtime path.
    """
    import pyarrow.parquet as pq

    from broker_plugin.decode import alert_from_record
    from broker_plugin.errors import BalBrokerError
    from broker_plugin.models.scoring import head_probability

    alerts, labels = [], []
    for f in parquet_files:
        for row in pq.read_table(f).to_pylist():
            try:
                alerts.append(alert_from_record(row))
            except BalBrokerError:
                continue
            labels.append(str(row.get(label_column)))
    if not alerts:
        return {"n": 0}
    features, _ = compute_features_batch([a.lightcurves for a in alerts])
    prob, ok, _ = head_probability(_session(encoder_path), _session(head_path), features, alerts)
    y = np.isin(np.asarray(labels), sorted(SIMBAD_QSO_TYPES)).astype(int)
    m = binary_metrics(y[ok], prob[ok])
    return {"n": int(ok.sum()), "n_positive": int(y[ok].sum()), "roc_auc": m["roc_auc"],
            "precision": m["precision"], "recall": m["recall"],
            "positive_types": sorted(SIMBAD_QSO_TYPES), "files": [Path(f).name for f in parquet_files]}


def _project(x: np.ndarray, method: str, seed: int) -> np.ndarray:
    """2-D projection for the picture (PCA, or t-SNE initialised by PCA)."""
    from sklearn.decomposition import PCA

    if method == "tsne" and len(x) > 10:
        from sklearn.manifold import TSNE

        return TSNE(2, perplexity=min(30.0, (len(x) - 1) / 3.0), init="pca", random_state=seed).fit_transform(x)
    return PCA(2, random_state=seed).fit_transform(x)


def embedding_figure(path: str | Path, panels: Sequence[tuple[str, np.ndarray, np.ndarray]], method: str = "tsne",
                     seed: int = 0, max_points: int = 1500) -> Path:
    """PNG of one 2-D projection per ``(title, embeddings, labels)`` panel, points coloured by label."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    fig, axes = plt.subplots(1, len(panels), figsize=(6.5 * len(panels), 5.5), squeeze=False)
    for ax, (title, x, y) in zip(axes[0], panels, strict=True):
        if len(x) > max_points:
            keep = np.sort(rng.choice(len(x), max_points, replace=False))
            x, y = x[keep], y[keep]
        if len(x) >= 3:
            xy = _project(np.asarray(x, dtype=np.float64), method, seed)
            for j, lab in enumerate(sorted(set(y.tolist()))):
                sel = y == lab
                ax.scatter(xy[sel, 0], xy[sel, 1], s=7, alpha=0.7, color=plt.cm.tab10(j % 10),
                           label=f"{lab} ({int(sel.sum())})")
            ax.legend(fontsize=8, markerscale=2, loc="best")
        ax.set_title(title, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle(f"Contrastive cutout embedding, held-out data ({method.upper()} projection)", fontsize=11)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# --------------------------------------------------------------------------------------------------
# Orchestration
# --------------------------------------------------------------------------------------------------


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


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def _plain(v: Any) -> Any:
    """YAML/JSON-safe copy: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return _plain(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    return v


def _counts(a: np.ndarray) -> dict[str, int]:
    vals, cnt = np.unique(a, return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, cnt, strict=True)}


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
    timings: dict[str, float] = {}
    t_start = time.perf_counter()

    def lap(name: str, t: float) -> float:
        now = time.perf_counter()
        timings[name] = round(now - t, 3)
        return now

    # 1. Synthetic alerts through the plugin's own decoder, features and cutout code.
    say(f"scorer: simulating and decoding {n_alerts} synthetic alerts (ZTF + Rubin, with stamps)")
    t = time.perf_counter()
    data = synthetic_alert_set(n_alerts, seed, class_mix=class_mix, survey_mix=survey_mix,
                               ztf_no_forced_fraction=ztf_no_forced_fraction)
    tr_idx, te_idx = _split(data.classes, test_fraction, seed)
    train, test = data.subset(tr_idx), data.subset(te_idx)
    t = lap("alerts_s", t)

    # 2. Contrastive encoder on rendered stamps + training-alert stamps (+ real stamps).
    say(f"scorer: rendering {n_stamps} + {n_test_stamps} held-out synthetic stamps")
    x_syn, y_syn = rendered_stamps(n_stamps, np.random.default_rng([seed, 1]))
    x_syn_test, y_syn_test = rendered_stamps(n_test_stamps, np.random.default_rng([seed, 2]))
    x_real, n_real_files = real_stamp_tensors(real_stamp_dirs) if real_stamp_dirs else (
        np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), 0)
    alert_ok = cutouts_usable(train.cutout_flags)
    x_enc = np.concatenate([x_syn, train.tensors[alert_ok], x_real]).astype(np.float32)
    t = lap("render_s", t)

    cfg = replace(encoder_config or ContrastiveConfig(), epochs=encoder_epochs, seed=seed)
    say(f"scorer: training the contrastive encoder on {len(x_enc)} stamps ({encoder_epochs} epochs)")
    torch.manual_seed(cfg.seed)  # the random baseline is the trained encoder's own starting point
    random_encoder = Encoder(CHANNELS, cfg.width, cfg.embed_dim).eval()
    encoder, enc_hist = train_encoder(
        x_enc, cfg, lambda e, n, loss: say(f"scorer: encoder epoch {e}/{n} NT-Xent loss {loss:.3f}"))
    t = lap("encoder_train_s", t)

    enc_path = export_encoder_onnx(encoder, out / ENCODER_FILE)
    enc_parity = onnx_parity(encoder, enc_path, x_syn_test[:256])
    enc_sess = _session(enc_path)
    t = lap("encoder_export_s", t)

    # 3. Head inputs from the *exported* encoder: the numbers the runtime will compute.
    say("scorer: embedding the alerts and fitting the ranking head")
    emb_train = embed_cutouts(enc_sess, train.tensors)
    emb_test = embed_cutouts(enc_sess, test.tensors)
    in_train = assemble_head_inputs(emb_train, train.features, train.alerts)
    in_test = assemble_head_inputs(emb_test, test.features, test.alerts)
    hcfg = replace(head_config or HeadConfig(), epochs=head_epochs, seed=seed)
    head, head_hist = fit_ranking_head(in_train, train.labels, hcfg)
    t = lap("head_train_s", t)
    head_path = export_head_onnx(head, out / HEAD_FILE)
    head_parity = head_onnx_parity(head, head_path, in_test)
    t = lap("head_export_s", t)

    # 4. Evaluation, from the exported files.
    say("scorer: evaluating (held-out alerts, kNN on held-out stamps)")
    p_test = run_head(_session(head_path), in_test)
    test_ok = cutouts_usable(test.cutout_flags)
    hm: dict[str, Any] = {f"test_{k}": v for k, v in binary_metrics(test.labels, p_test).items()}
    for survey in ("ztf", "lsst"):
        sel = np.array([a.survey == survey for a in test.alerts], dtype=bool)
        if sel.any():
            hm.update({f"test_{survey}_{k}": v for k, v in binary_metrics(test.labels[sel], p_test[sel]).items()
                       if k in ("roc_auc", "f1")})
            hm[f"test_{survey}_n"] = int(sel.sum())
    if test.no_forced.any():
        nf = binary_metrics(test.labels[test.no_forced], p_test[test.no_forced])
        hm.update({f"test_ztf_no_forced_{k}": nf[k] for k in ("roc_auc", "f1")})
        hm["test_ztf_no_forced_n"] = int(test.no_forced.sum())
    for c in sorted(set(test.classes.tolist())):
        sel = test.classes == c
        hm[f"test_mean_prob_{c}"] = float(np.mean(p_test[sel]))
        hm[f"test_frac_above_0.5_{c}"] = float(np.mean(p_test[sel] >= 0.5))
    train_m = binary_metrics(train.labels, head_predict(head, in_train))
    hm.update(train_roc_auc=train_m["roc_auc"], train_f1=train_m["f1"], threshold=0.5,
              onnx_max_abs_diff=head_parity, best_epoch=head_hist["best_epoch"], epochs=hcfg.epochs,
              n_test_without_cutouts=int((~test_ok).sum()))
    if ablations:
        for name, blank in (("no_embedding", ("embedding",)), ("embedding_only", ("lc_features", "meta"))):
            def zero(feed: Mapping[str, np.ndarray], blank: tuple[str, ...] = blank) -> dict[str, np.ndarray]:
                return {k: (np.zeros_like(v) if k in blank else v) for k, v in feed.items()}

            h_ab, _ = fit_ranking_head(zero(in_train), train.labels, hcfg)
            ab = binary_metrics(test.labels, head_predict(h_ab, zero(in_test)))
            hm[f"ablation_{name}_roc_auc"] = ab["roc_auc"]
            hm[f"ablation_{name}_f1"] = ab["f1"]
        t = lap("ablations_s", t)

    em: dict[str, Any] = {"onnx_max_abs_diff": enc_parity, "loss_first_epoch": enc_hist["loss"][0],
                          "loss_last_epoch": enc_hist["loss"][-1]}
    ref_tr, test_tr = embed(encoder, x_syn), embed(encoder, x_syn_test)
    em.update(knn_metrics("knn_trained", ref_tr, y_syn, test_tr, y_syn_test))
    em.update(knn_metrics("knn_random", embed(random_encoder, x_syn), y_syn, embed(random_encoder, x_syn_test),
                          y_syn_test))
    em.update(knn_metrics("knn_raw_pixels", x_syn.reshape(len(x_syn), -1), y_syn,
                          x_syn_test.reshape(len(x_syn_test), -1), y_syn_test))
    # The same question on the alerts' own stamps (ZTF 63 px and Rubin 31 px, the packet writer's morphology).
    for name, e_tr, e_te in (("trained", emb_train, emb_test),
                             ("random", embed(random_encoder, train.tensors), embed(random_encoder, test.tensors))):
        if len(train) >= 5 and len(test):
            pred = knn_predict(e_tr, train.morphology, e_te, 5)
            em[f"knn_alert_morphology_acc_{name}"] = float(np.mean(pred == test.morphology))
    if simbad_parquet:
        hm["real_simbad_check"] = simbad_check(enc_path, head_path, simbad_parquet)
    t = lap("evaluate_s", t)

    fig = Path(figure_path) if figure_path is not None else out / FIGURE_FILE
    embedding_figure(fig, [
        ("held-out rendered stamps, by stamp kind", test_tr, y_syn_test),
        ("held-out synthetic alerts, by class", emb_test, test.classes),
    ], method=projection, seed=seed)
    t = lap("figure_s", t)
    timings["total_s"] = round(time.perf_counter() - t_start, 3)
    timings["torch_threads"] = torch.get_num_threads()

    created = _now()
    survey_counts = _counts(np.array([a.survey for a in data.alerts], dtype=str))
    alerts_td = {
        "kind": "synthetic", "generator": "training.synthetic.packets.iter_night -> broker_plugin.decode",
        "seed": seed, "n_alerts": len(data), "n_train": len(train), "n_test": len(test),
        "class_mix": dict(class_mix or HEAD_CLASS_MIX), "survey_mix": dict(survey_mix or HEAD_SURVEY_MIX),
        "class_counts": _counts(data.classes), "survey_counts": survey_counts,
        "ztf_no_forced_fraction": ztf_no_forced_fraction, "n_ztf_no_forced": int(data.no_forced.sum()),
        "positive_classes": list(POSITIVE_CLASSES), "positive_fraction": float(data.labels.mean()),
    }
    enc_entry = {
        "file": ENCODER_FILE, "sha256": sha256_file(enc_path), "version": version, "created": created,
        "inputs": [{"name": ENCODER_INPUT, "shape": ["batch", CHANNELS, SIZE, SIZE], "dtype": "float32"}],
        "outputs": [{"name": ENCODER_OUTPUT, "shape": ["batch", cfg.embed_dim], "dtype": "float32"}],
        "description": "SimCLR-style contrastive encoder of the alert cutouts (science, template, difference, "
                       "invalid-pixel fraction); the ranking head reads its embedding",
        "preprocessing": {"function": "broker_plugin.photometry.cutouts.cutout_batch", "size": SIZE,
                          "channels": list(CHANNEL_NAMES), "norm": "global"},
        "config": asdict(cfg),
        "training_data": {
            "kind": "synthetic" if not len(x_real) else "synthetic+real",
            "n_stamps": len(x_enc), "n_rendered": len(x_syn),
            "n_training_alert_stamps": int(alert_ok.sum()), "n_real_stamps": len(x_real),
            "real_stamp_dirs": [str(d) for d in (real_stamp_dirs or [])], "n_real_files": n_real_files,
            "rendered_kind_counts": _counts(y_syn), "rubin_size_share": RUBIN_STAMP_SHARE,
            "n_test_stamps": len(x_syn_test), "seed": seed,
        },
        "metrics": em,
    }
    head_entry = {
        "file": HEAD_FILE, "sha256": sha256_file(head_path), "version": version, "created": created,
        "inputs": [
            {"name": "embedding", "shape": ["batch", int(in_train["embedding"].shape[1])], "dtype": "float32"},
            {"name": "lc_features", "shape": ["batch", len(FEATURE_NAMES)], "dtype": "float32"},
            {"name": "meta", "shape": ["batch", len(HEAD_META_NAMES)], "dtype": "float32"},
        ],
        "outputs": [{"name": HEAD_OUTPUT, "shape": ["batch", 1], "dtype": "float32"}],
        "description": "P(alert is a quasar worth following up) from cutout embedding, light-curve features and "
                       "alert metadata; combined with the BAL probability by broker_plugin.models.scoring.combine",
        "feature_names": list(FEATURE_NAMES),
        "feature_version": FEATURE_VERSION,
        "meta_names": list(HEAD_META_NAMES),
        "meta_ignored": list(hcfg.ignore_meta),
        "embedding_dim": int(in_train["embedding"].shape[1]),
        "encoder_sha256": enc_entry["sha256"],
        "input_assembly": "broker_plugin.models.scoring.assemble_head_inputs",
        "combination_rule": "broker_plugin.models.scoring.combine",
        "positive_classes": list(POSITIVE_CLASSES),
        "config": asdict(hcfg),
        "training_data": alerts_td,
        "metrics": hm,
    }
    entries = {"cutout_encoder": _plain(enc_entry), "ranking_head": _plain(head_entry)}
    metrics = {role: entry["metrics"] for role, entry in entries.items()}
    say(f"scorer: done in {timings['total_s']:.0f} s (head test AUC {hm['test_roc_auc']:.3f}, kNN trained "
        f"{em.get('knn_trained_acc', float('nan')):.3f} vs random {em.get('knn_random_acc', float('nan')):.3f})")
    return ScorerArtifacts(out, enc_path, head_path, fig, entries, metrics, timings, encoder, head)
