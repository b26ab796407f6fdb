"""Self-supervised contrastive image embedding (SimCLR family) for alert cutouts.

Follows the recipe in SCIENCE.md ("contrastive image embeddings", Martinez-Ramirez et al.): a
stochastic augmentation makes two views of each stamp tensor, an encoder ``f`` maps a view to the
embedding that the plugin uses, a small projection head ``g`` (training only) maps the embedding
to the space where the NT-Xent loss compares views by cosine similarity, with temperature ``tau``.
No labels are needed; the labels of the synthetic stamps are used only to *evaluate* the
embedding (kNN accuracy, :func:`train_and_evaluate`).

Inputs are the runtime tensors of :mod:`broker_plugin.photometry.cutouts` (``(4, 32, 32)``: science,
template, difference, invalid-pixel fraction, globally asinh-normalised), built with the very same
:func:`~broker_plugin.photometry.cutouts.stack_stamps`, so the exported encoder sees at run time what it saw in
training. The runtime runs the exported ONNX file with onnxruntime; torch stays in ``training/``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from broker_plugin.photometry.cutouts import CHANNELS, SIZE, Norm, stack_stamps
from training.augment import MASK_CHANNEL as MASK_CHANNEL  # re-exported: its home before the split
from training.augment import AugmentConfig, augment
from training.export import save, torch_to_onnx

#: Names of the exported ONNX graph's input and output (the model bundle's manifest lists them).
ONNX_INPUT = "cutouts"
ONNX_OUTPUT = "embedding"


# --------------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------------


class Encoder(nn.Module):
    """The embedding network ``f``: four 3x3 conv blocks, 32 -> 16 -> 8 -> 4 px, then pooling.

    Small on purpose (~65k parameters, ~3.5 M multiply-adds per alert at width 32): it runs per
    alert on a CPU. The pooled representation concatenates a global average of the last feature
    map with the average of its central 2x2 cells: global pooling alone is blind to *where*
    something is, and "at the centre or beside it" is what separates a nuclear quasar from a
    supernova offset in its host. Both pooling regions map onto themselves under the flips and
    90-degree rotations of the augmentation. BatchNorm is folded into the convolutions at export,
    so it costs nothing at run time.
    """

    def __init__(self, in_channels: int = CHANNELS, width: int = 32, embed_dim: int = 32) -> None:
        super().__init__()
        w = width

        def block(cin: int, cout: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
                nn.BatchNorm2d(cout),
                nn.ReLU(inplace=True),
            )

        self.features = nn.Sequential(
            block(in_channels, w // 2, 1),  # 32 px
            block(w // 2, w, 2),  # 16 px
            block(w, 2 * w, 2),  # 8 px
            block(2 * w, 2 * w, 2),  # 4 px
        )
        self.fc = nn.Linear(4 * w, embed_dim)
        self.in_channels = in_channels
        self.embed_dim = embed_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        s = h.shape[-1]
        lo, hi = s // 2 - 1, s // 2 + 1
        pooled = torch.cat([h.mean(dim=(2, 3)), h[:, :, lo:hi, lo:hi].mean(dim=(2, 3))], dim=1)
        return self.fc(pooled)


class ProjectionHead(nn.Module):
    """``g``: the MLP between the embedding and the loss, used only in training (SimCLR shows the
    representation *before* g transfers better, because g absorbs the augmentation invariances)."""

    def __init__(self, embed_dim: int = 32, hidden: int = 64, out_dim: int = 32) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(embed_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


# --------------------------------------------------------------------------------------------------
# Loss
# --------------------------------------------------------------------------------------------------


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Normalised-temperature cross-entropy (SimCLR's NT-Xent) for two views of N sources.

    For each of the 2N views (anchors), the positive is the other view of the same source and the
    negatives are the 2N - 2 views of the other sources; similarity is the cosine similarity divided
    by ``temperature``. Returns the mean over the 2N anchors of
    ``-log(exp(sim(i, pos)) / sum_{k != i} exp(sim(i, k)))``.
    """
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must both be (N, d), got {tuple(z1.shape)} and {tuple(z2.shape)}")
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2], dim=0), dim=1)
    sim = z @ z.T / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, targets)


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@dataclass
class ContrastiveConfig:
    """Everything that defines a training run; stored in the model manifest for reproducibility."""

    epochs: int = 20
    batch_size: int = 256
    temperature: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    width: int = 32
    embed_dim: int = 32
    proj_dim: int = 32
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)


ProgressCallback = Callable[[int, int, float], None]  # (epoch, epochs, mean loss of the epoch)


def train_encoder(
    x: np.ndarray | torch.Tensor,
    config: ContrastiveConfig | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[Encoder, dict[str, Any]]:
    """Train ``f`` (and a throw-away ``g``) with NT-Xent on tensors ``x`` of shape ``(n, C, S, S)``.

    Deterministic for a given ``config.seed`` on one machine and thread count: the weights come
    from ``torch.manual_seed`` and every shuffle and augmentation from one seeded generator.
    Returns the encoder in eval mode and a history (loss per epoch, seconds).
    """
    cfg = config or ContrastiveConfig()
    data = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    n = data.shape[0]
    if n < 2:
        raise ValueError("contrastive training needs at least two samples (one negative)")
    torch.manual_seed(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    encoder = Encoder(data.shape[1], cfg.width, cfg.embed_dim)
    head = ProjectionHead(cfg.embed_dim, 2 * cfg.embed_dim, cfg.proj_dim)
    # channels_last is ~1.5x faster for these convolutions on CPU (oneDNN); undone before returning.
    encoder = encoder.to(memory_format=torch.channels_last)
    params = list(encoder.parameters()) + list(head.parameters())
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = max(1, n // min(cfg.batch_size, n))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, cfg.epochs * steps_per_epoch))
    bs = min(cfg.batch_size, n)
    history: dict[str, Any] = {"loss": [], "config": asdict(cfg)}
    t0 = time.perf_counter()
    encoder.train()
    head.train()
    for epoch in range(cfg.epochs):
        perm = torch.randperm(n, generator=gen)
        total, batches = 0.0, 0
        for i in range(steps_per_epoch):  # drop the ragged last batch: BatchNorm and NT-Xent want full ones
            idx = perm[i * bs : (i + 1) * bs]
            xb = data[idx]
            v1 = augment(xb, cfg.augment, gen)
            v2 = augment(xb, cfg.augment, gen)
            views = torch.cat([v1, v2], dim=0).contiguous(memory_format=torch.channels_last)
            z = head(encoder(views))
            loss = nt_xent_loss(z[: len(idx)], z[len(idx) :], cfg.temperature)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            total += float(loss.detach())
            batches += 1
        mean = total / max(1, batches)
        history["loss"].append(mean)
        if progress is not None:
            progress(epoch + 1, cfg.epochs, mean)
    history["seconds"] = time.perf_counter() - t0
    encoder = encoder.to(memory_format=torch.contiguous_format)
    encoder.eval()
    return encoder, history


@torch.no_grad()
def embed(encoder: nn.Module, x: np.ndarray | torch.Tensor, batch_size: int = 1024) -> np.ndarray:
    """Embeddings ``(n, embed_dim)`` of tensors ``(n, C, S, S)`` with the encoder in eval mode."""
    was_training = encoder.training
    encoder.eval()
    data = torch.as_tensor(np.asarray(x, dtype=np.float32)) if isinstance(x, np.ndarray) else x.float()
    out = [encoder(data[i : i + batch_size]) for i in range(0, data.shape[0], batch_size)]
    encoder.train(was_training)
    if not out:
        return np.zeros((0, getattr(encoder, "embed_dim", 0)), dtype=np.float32)
    return torch.cat(out).numpy()


# --------------------------------------------------------------------------------------------------
# ONNX export
# --------------------------------------------------------------------------------------------------


def export_encoder_onnx(encoder: nn.Module, path: str | Path, opset: int = 18) -> Path:
    """Export ``f`` to a single self-contained ONNX file with a dynamic batch axis.

    Input ``"cutouts"`` float32 ``(batch, C, S, S)``, output ``"embedding"`` float32
    ``(batch, embed_dim)``. Uses the dynamo (torch.export) exporter, the maintained path in torch
    2.13, with ``external_data=False`` so the weights live inside the one file the bundle checksums.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    was_training = encoder.training
    encoder.eval()
    example = torch.zeros(2, int(getattr(encoder, "in_channels", CHANNELS)), SIZE, SIZE)
    try:
        save(torch_to_onnx(encoder, (example,), [ONNX_INPUT], [ONNX_OUTPUT], opset), path)
    finally:
        encoder.train(was_training)
    return path


def onnx_parity(encoder: nn.Module, path: str | Path, x: np.ndarray) -> float:
    """Largest absolute difference between the torch encoder and its ONNX file on inputs ``x``."""
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run([ONNX_OUTPUT], {ONNX_INPUT: np.asarray(x, dtype=np.float32)})[0]
    ref = embed(encoder, x)
    return float(np.max(np.abs(got - ref))) if ref.size else 0.0


# --------------------------------------------------------------------------------------------------
# Evaluation on synthetic stamps
# --------------------------------------------------------------------------------------------------


def synthetic_tensors(
    n: int,
    rng: np.random.Generator,
    kinds: Sequence[str] | None = None,
    mag_range: tuple[float, float] = (14.0, 21.0),
    norm: Norm = "global",
) -> tuple[np.ndarray, np.ndarray]:
    """Render ``n`` synthetic triplets and stack them exactly as the runtime does."""
    from training.synthetic.stamps import KINDS, render_dataset

    trip, labels = render_dataset(n, rng, tuple(kinds or KINDS), mag_range)
    x = (
        np.stack([stack_stamps(t, norm=norm)[0] for t in trip])
        if trip
        else np.zeros((0, CHANNELS, SIZE, SIZE), np.float32)
    )
    return x.astype(np.float32), labels


def knn_predict(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, k: int = 5) -> np.ndarray:
    """Predictions of a k-nearest-neighbour classifier (cosine distance, as NT-Xent compares
    embeddings by angle) fitted on the training embeddings."""
    from sklearn.neighbors import KNeighborsClassifier

    clf = KNeighborsClassifier(n_neighbors=k, metric="cosine", algorithm="brute")
    clf.fit(train_x, train_y)
    return clf.predict(test_x)


def train_and_evaluate(
    n_train: int = 3000,
    n_test: int = 1000,
    epochs: int = 20,
    seed: int = 0,
    config: ContrastiveConfig | None = None,
    kinds: Sequence[str] | None = None,
    progress: ProgressCallback | None = None,
    onnx_path: str | Path | None = None,
    norm: Norm = "global",
) -> dict[str, Any]:
    """Train on synthetic stamps and measure how well the embedding separates the stamp kinds.

    The labels never enter training: they only score the embedding by kNN (k=5) accuracy on
    held-out stamps, for the trained encoder and, as the baseline, the same architecture with its
    random initial weights (and raw pixels). Optionally exports the trained encoder to ONNX and
    records the parity. Returns a flat dict of metrics for the training report.
    """
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    x_train, y_train = synthetic_tensors(n_train, rng, kinds, norm=norm)
    x_test, y_test = synthetic_tensors(n_test, rng, kinds, norm=norm)
    render_s = time.perf_counter() - t0

    cfg = replace(config or ContrastiveConfig(), epochs=epochs, seed=seed)
    # The baseline is the trained encoder's own starting point: train_encoder re-seeds identically.
    torch.manual_seed(seed)
    random_encoder = Encoder(CHANNELS, cfg.width, cfg.embed_dim).eval()
    encoder, history = train_encoder(x_train, cfg, progress)

    metrics: dict[str, Any] = {
        "n_train": n_train,
        "n_test": n_test,
        "epochs": epochs,
        "seed": seed,
        "norm": norm,
        "temperature": cfg.temperature,
        "batch_size": cfg.batch_size,
        "embed_dim": cfg.embed_dim,
        "render_seconds": render_s,
        "train_seconds": history["seconds"],
        "loss_first_epoch": history["loss"][0] if history["loss"] else None,
        "loss_last_epoch": history["loss"][-1] if history["loss"] else None,
        "torch_threads": torch.get_num_threads(),
    }
    spaces = {
        "trained": (embed(encoder, x_train), embed(encoder, x_test)),
        "random": (embed(random_encoder, x_train), embed(random_encoder, x_test)),
        "raw_pixels": (x_train.reshape(len(x_train), -1), x_test.reshape(len(x_test), -1)),
    }
    for name, (e_train, e_test) in spaces.items():
        pred = knn_predict(e_train, y_train, e_test)
        metrics[f"knn_acc_{name}"] = float(np.mean(pred == y_test))
        for kind in sorted(set(y_test.tolist())):
            sel = y_test == kind
            metrics[f"knn_recall_{name}_{kind}"] = float(np.mean(pred[sel] == kind))
    if onnx_path is not None:
        export_encoder_onnx(encoder, onnx_path)
        metrics["onnx_path"] = str(onnx_path)
        metrics["onnx_max_abs_diff"] = onnx_parity(encoder, onnx_path, x_test[:256])
    return metrics

