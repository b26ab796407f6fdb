"""The ranking head of the candidate scorer: a small MLP over cutout embedding, light-curve features and
alert metadata, with its input standardisation built into the graph, and its ONNX export and parity.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from broker_plugin.models.scoring import HEAD_INPUTS, HEAD_META_NAMES, HEAD_OUTPUT, run_head
from training.export import save, torch_to_onnx


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


def onnx_session(path: str | Path) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def head_onnx_parity(head: RankingHead, path: str | Path, inputs: Mapping[str, np.ndarray]) -> float:
    """Largest absolute difference between the torch head and its ONNX file on ``inputs``."""
    got = run_head(onnx_session(path), dict(inputs))
    ref = head_predict(head, inputs)
    return float(np.max(np.abs(got - ref))) if ref.size else 0.0
