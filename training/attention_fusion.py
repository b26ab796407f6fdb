"""Multiplicative fusion of the two modalities with learned modality attention (Liu+2018, Mittal+2020).

Attention fusion (:class:`AttentionFusionNet`)
    Each modality goes through its own small MLP to a hidden vector in (-1, 1) (tanh): ``h_lc``
    from the standardised light-curve features, ``h_spec`` from the standardised spectral embedding.
    Modality attention ``a = softmax(MLP([h_lc, h_spec]))`` (two weights summing to 1, per object)
    scales each modality; the fused vector concatenates an additive term ``a_lc h_lc + a_spec h_spec``
    and a multiplicative one ``(1 + a_lc h_lc) * (1 + a_spec h_spec) - 1`` (elementwise; the
    "1 +" keeps a modality with small activations from zeroing the product, as in Liu+2018's
    multiplicative combination), and a dense head gives the logit. Loss: BCE with ``pos_weight =
    n_nonBAL / n_BAL`` (class-weighted, as the reference study's weighted dense network), Adam,
    early stopping on a stratified validation split of the training rows. *Modality dropout*: during
    training the light-curve input of a random 10% of rows is replaced by the imputation values, so
    the network also learns the case the runtime meets most often -- a known spectrum with a short
    alert light curve. The imputation (NaN -> training median) and the robust standardisation
    (``(x - median) / (IQR / 1.349)``, clipped to +-5 so a heavy-tailed statistic such as
    ``reduced_chi2`` cannot dominate) are buffers of the module, so the exported graph takes the
    plugin's raw feature vector. Output ``probability`` [N, 1] and the ``attention`` weights [N, 2].

Export: ``torch.onnx.export(..., dynamo=True)`` (the default exporter of torch >= 2.9, via
onnxscript), one self-contained file (``external_data=False``), dynamic batch axis. Determinism:
``torch.manual_seed(seed)``, a seeded numpy split, and one torch thread during the fit (restored
afterwards), so the same seed gives the same weights on any machine.
"""

from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.models.inference import (
    ATT_LC_INPUT,
    ATT_OUTPUT,
    ATT_SPEC_INPUT,
    ATT_WEIGHTS,
)
from training.late_fusion import ONNX_OPSET

# ============================================================================== attention fusion


@dataclass(frozen=True)
class AttentionConfig:
    """Size and training schedule of the attention-fusion network (small: a few thousand weights)."""

    hidden: int = 32
    embed: int = 16
    dropout: float = 0.1
    modality_dropout: float = 0.1
    lr: float = 2e-3
    weight_decay: float = 1e-4
    epochs: int = 200
    batch_size: int = 256
    patience: int = 25
    val_fraction: float = 0.15
    clip: float = 5.0

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def robust_scaling(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (median, IQR/1.349) ignoring NaN; std, then 1, where the IQR is 0 or undefined."""
    X = np.asarray(X, dtype=np.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        center = np.nanmedian(X, axis=0)
        q75, q25 = np.nanpercentile(X, [75, 25], axis=0)
        std = np.nanstd(X, axis=0)
    scale = (q75 - q25) / 1.349
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, std)
    scale = np.where(np.isfinite(scale) & (scale > 0), scale, 1.0)
    center = np.where(np.isfinite(center), center, 0.0)
    return center.astype(np.float32), scale.astype(np.float32)


def _torch() -> Any:
    import torch

    return torch


def _build_net(n_lc: int, n_spec: int, lc_center: np.ndarray, lc_scale: np.ndarray, spec_center: np.ndarray,
               spec_scale: np.ndarray, config: AttentionConfig) -> Any:
    torch = _torch()
    nn = torch.nn

    class AttentionFusionNet(nn.Module):
        """See the module docstring; ``forward`` returns (logit [N, 1], attention [N, 2])."""

        def __init__(self) -> None:
            super().__init__()
            h, e, d = config.hidden, config.embed, config.dropout
            self.clip = float(config.clip)
            self.register_buffer("lc_center", torch.as_tensor(lc_center, dtype=torch.float32))
            self.register_buffer("lc_scale", torch.as_tensor(lc_scale, dtype=torch.float32))
            self.register_buffer("spec_center", torch.as_tensor(spec_center, dtype=torch.float32))
            self.register_buffer("spec_scale", torch.as_tensor(spec_scale, dtype=torch.float32))
            self.enc_lc = nn.Sequential(nn.Linear(n_lc, h), nn.ReLU(), nn.Dropout(d), nn.Linear(h, e), nn.Tanh())
            self.enc_spec = nn.Sequential(nn.Linear(n_spec, h), nn.ReLU(), nn.Dropout(d), nn.Linear(h, e), nn.Tanh())
            self.attention = nn.Sequential(nn.Linear(2 * e, h), nn.ReLU(), nn.Linear(h, 2))
            self.head = nn.Sequential(nn.Linear(2 * e, h), nn.ReLU(), nn.Dropout(d), nn.Linear(h, 1))

        def standardise(self, x: Any, center: Any, scale: Any) -> Any:
            x = torch.where(torch.isnan(x), center, x)
            return torch.clamp((x - center) / scale, -self.clip, self.clip)

        def forward(self, lc_features: Any, spec_embedding: Any, lc_keep: Any = None) -> tuple[Any, Any]:
            z_lc = self.standardise(lc_features, self.lc_center, self.lc_scale)
            z_spec = self.standardise(spec_embedding, self.spec_center, self.spec_scale)
            if lc_keep is not None:
                z_lc = z_lc * lc_keep
            h_lc = self.enc_lc(z_lc)
            h_spec = self.enc_spec(z_spec)
            a = torch.softmax(self.attention(torch.cat([h_lc, h_spec], dim=1)), dim=1)
            w_lc = a[:, 0:1] * h_lc
            w_spec = a[:, 1:2] * h_spec
            fused = torch.cat([w_lc + w_spec, (1.0 + w_lc) * (1.0 + w_spec) - 1.0], dim=1)
            return self.head(fused), a

    return AttentionFusionNet()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    torch = _torch()
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _stratified_split(y: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    val = []
    for c in (0, 1):
        rows = np.flatnonzero(y == c)
        k = min(max(round(fraction * rows.size), 1), rows.size - 1) if rows.size >= 2 else 0
        val.append(rng.choice(rows, size=k, replace=False))
    v = np.sort(np.concatenate(val))
    t = np.setdiff1d(np.arange(y.size), v)
    return t, v


@dataclass
class AttentionFusion:
    """A fitted attention-fusion network and its training record."""

    net: Any
    config: AttentionConfig
    seed: int
    n_lc: int
    n_spec: int
    history: dict[str, Any]

    def _outputs(self, X_lc: np.ndarray, E: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        self.net.eval()
        with torch.no_grad(), _torch_threads(1):
            logit_t, a = self.net(torch.as_tensor(np.asarray(X_lc, dtype=np.float32)),
                                  torch.as_tensor(np.asarray(E, dtype=np.float32)))
            p = torch.sigmoid(logit_t)
        return p.numpy().reshape(-1).astype(np.float64), a.numpy().astype(np.float64)

    def predict_proba(self, X_lc: np.ndarray, E: np.ndarray) -> np.ndarray:
        """P(BAL) per row from raw features (NaN allowed) and spectral embeddings."""
        return self._outputs(X_lc, E)[0]

    def attention(self, X_lc: np.ndarray, E: np.ndarray) -> np.ndarray:
        """Modality weights (light curve, spectrum) per row."""
        return self._outputs(X_lc, E)[1]

    def to_onnx(self, path: str | Path | None = None) -> Any:
        """``lc_features`` [N, F], ``spec_embedding`` [N, K] -> ``probability`` [N, 1], ``attention`` [N, 2]."""
        import onnx

        from .export import save, set_metadata, torch_to_onnx

        torch = _torch()

        class _Exported(torch.nn.Module):
            def __init__(self, net: Any) -> None:
                super().__init__()
                self.net = net

            def forward(self, lc_features: Any, spec_embedding: Any) -> tuple[Any, Any]:
                logit_t, a = self.net(lc_features, spec_embedding)
                return torch.sigmoid(logit_t), a

        self.net.eval()
        wrapper = _Exported(self.net).eval()
        ex_lc = torch.zeros(3, self.n_lc)
        ex_lc[0, 0] = float("nan")
        ex = (ex_lc, torch.zeros(3, self.n_spec))
        with _torch_threads(1):
            model = torch_to_onnx(wrapper, ex, [ATT_LC_INPUT, ATT_SPEC_INPUT], [ATT_OUTPUT, ATT_WEIGHTS], ONNX_OPSET)
        model.producer_name = "bal-broker.training.fusion"
        set_metadata(model, {"model": "fusion_attention", "positive_class": "BAL", "seed": self.seed,
                             "n_lc_features": self.n_lc, "embedding_dim": self.n_spec})
        onnx.checker.check_model(model)
        if path is not None:
            save(model, path)
        return model


def fit_attention_fusion(X_lc: np.ndarray, E: np.ndarray, y: np.ndarray, config: AttentionConfig | None = None,
                         seed: int = 0) -> AttentionFusion:
    """Train the attention-fusion network on raw features ``X_lc`` (NaN = missing), embeddings ``E``
    and labels ``y``; early stopping on a stratified validation split of these rows."""
    torch = _torch()
    config = config or AttentionConfig()
    X_lc = np.asarray(X_lc, dtype=np.float32)
    E = np.asarray(E, dtype=np.float32)
    y = np.asarray(y).astype(np.int64)
    if X_lc.shape[0] != E.shape[0] or X_lc.shape[0] != y.size:
        raise ValueError("X_lc, E and y must have the same number of rows")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError("attention fusion needs both classes")
    tr, va = _stratified_split(y, config.val_fraction, seed)
    lc_c, lc_s = robust_scaling(X_lc[tr])
    sp_c, sp_s = robust_scaling(E[tr])
    n_pos = max(int(y[tr].sum()), 1)
    pos_weight = (tr.size - n_pos) / n_pos

    with _torch_threads(1):
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        net = _build_net(X_lc.shape[1], E.shape[1], lc_c, lc_s, sp_c, sp_s, config)
        opt = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=torch.tensor([pos_weight], dtype=torch.float32))
        xt, et = torch.as_tensor(X_lc[tr]), torch.as_tensor(E[tr])
        yt = torch.as_tensor(y[tr], dtype=torch.float32).reshape(-1, 1)
        xv, ev = torch.as_tensor(X_lc[va]), torch.as_tensor(E[va])
        yv = torch.as_tensor(y[va], dtype=torch.float32).reshape(-1, 1)
        best = (math.inf, 0, {k: v.clone() for k, v in net.state_dict().items()})
        train_curve: list[float] = []
        val_curve: list[float] = []
        for epoch in range(config.epochs):
            net.train()
            order = torch.randperm(tr.size, generator=gen)
            total = 0.0
            for start in range(0, tr.size, config.batch_size):
                b = order[start:start + config.batch_size]
                keep = (torch.rand(b.numel(), 1, generator=gen) >= config.modality_dropout).float()
                logit_b, _ = net(xt[b], et[b], keep)
                loss = loss_fn(logit_b, yt[b])
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach()) * b.numel()
            train_curve.append(total / tr.size)
            net.eval()
            with torch.no_grad():
                vl = float(loss_fn(net(xv, ev)[0], yv)) if va.size else train_curve[-1]
            val_curve.append(vl)
            if vl < best[0] - 1e-6:
                best = (vl, epoch, {k: v.clone() for k, v in net.state_dict().items()})
            elif epoch - best[1] >= config.patience:
                break
        net.load_state_dict(best[2])
        net.eval()
    history = {"epochs_run": len(train_curve), "best_epoch": best[1] + 1, "best_val_loss": best[0],
               "train_loss": train_curve, "val_loss": val_curve, "pos_weight": pos_weight,
               "n_train": int(tr.size), "n_val": int(va.size)}
    return AttentionFusion(net=net, config=config, seed=seed, n_lc=int(X_lc.shape[1]), n_spec=int(E.shape[1]),
                           history=history)


def n_parameters(fusion: AttentionFusion) -> int:
    return int(sum(p.numel() for p in fusion.net.parameters()))
