"""Encoder stage of the candidate scorer: render stamps, train the contrastive encoder, export it,
and the kNN probes that say whether its embedding learned stamp morphology.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from broker_plugin.models.scoring import cutouts_usable
from broker_plugin.photometry.cutouts import CHANNELS, SIZE
from training.contrastive import (
    ContrastiveConfig,
    Encoder,
    embed,
    export_encoder_onnx,
    knn_predict,
    onnx_parity,
    train_encoder,
)
from training.ranking_head import onnx_session
from training.scorer_data import AlertSet, real_stamp_tensors, rendered_stamps
from training.scorer_evaluation import knn_metrics

#: File name of the exported encoder inside ``out_dir``.
ENCODER_FILE = "cutout_encoder.onnx"

Progress = Callable[[str], None]


class Stopwatch:
    """Per-stage wall times (``timings`` of :class:`ScorerArtifacts`), in the order the stages ran."""

    def __init__(self) -> None:
        self.timings: dict[str, float] = {}
        self.start = self.last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(now - self.last, 3)
        self.last = now

    def finish(self) -> dict[str, float]:
        self.timings["total_s"] = round(time.perf_counter() - self.start, 3)
        self.timings["torch_threads"] = torch.get_num_threads()
        return self.timings


@dataclass
class EncoderStage:
    """The trained and exported encoder with the stamp sets it was trained and probed on."""

    cfg: ContrastiveConfig
    encoder: nn.Module
    random_encoder: nn.Module
    history: dict[str, Any]
    path: Path
    parity: float
    session: Any
    x_syn: np.ndarray
    y_syn: np.ndarray
    x_syn_test: np.ndarray
    y_syn_test: np.ndarray
    x_real: np.ndarray
    n_real_files: int
    n_alert_stamps: int
    n_stamps: int


def train_encoder_stage(out: Path, train: AlertSet, *, seed: int, n_stamps: int, n_test_stamps: int,
                         encoder_epochs: int, encoder_config: ContrastiveConfig | None,
                         real_stamp_dirs: Sequence[str | Path] | None, say: Progress,
                         clock: Stopwatch) -> EncoderStage:
    """Render stamps, train the contrastive encoder on every stamp but the held-out alerts', export it.

    The random baseline is built from the same torch seed just before training, so it is the trained
    encoder's own starting point (what the kNN comparison needs).
    """
    say(f"scorer: rendering {n_stamps} + {n_test_stamps} held-out synthetic stamps")
    x_syn, y_syn = rendered_stamps(n_stamps, np.random.default_rng([seed, 1]))
    x_syn_test, y_syn_test = rendered_stamps(n_test_stamps, np.random.default_rng([seed, 2]))
    x_real, n_real_files = real_stamp_tensors(real_stamp_dirs) if real_stamp_dirs else (
        np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), 0)
    alert_ok = cutouts_usable(train.cutout_flags)
    x_enc = np.concatenate([x_syn, train.tensors[alert_ok], x_real]).astype(np.float32)
    clock.lap("render_s")

    cfg = replace(encoder_config or ContrastiveConfig(), epochs=encoder_epochs, seed=seed)
    say(f"scorer: training the contrastive encoder on {len(x_enc)} stamps ({encoder_epochs} epochs)")
    torch.manual_seed(cfg.seed)  # the random baseline is the trained encoder's own starting point
    random_encoder = Encoder(CHANNELS, cfg.width, cfg.embed_dim).eval()
    encoder, enc_hist = train_encoder(
        x_enc, cfg, lambda e, n, loss: say(f"scorer: encoder epoch {e}/{n} NT-Xent loss {loss:.3f}"))
    clock.lap("encoder_train_s")

    enc_path = export_encoder_onnx(encoder, out / ENCODER_FILE)
    enc_parity = onnx_parity(encoder, enc_path, x_syn_test[:256])
    enc_sess = onnx_session(enc_path)
    clock.lap("encoder_export_s")
    return EncoderStage(cfg=cfg, encoder=encoder, random_encoder=random_encoder, history=enc_hist, path=enc_path,
                         parity=enc_parity, session=enc_sess, x_syn=x_syn, y_syn=y_syn, x_syn_test=x_syn_test,
                         y_syn_test=y_syn_test, x_real=x_real, n_real_files=n_real_files,
                         n_alert_stamps=int(alert_ok.sum()), n_stamps=len(x_enc))


def encoder_metrics(enc: EncoderStage, train: AlertSet, test: AlertSet, emb_train: np.ndarray,
                     emb_test: np.ndarray) -> tuple[dict[str, Any], np.ndarray]:
    """kNN probes of the encoder (trained vs random init vs raw pixels) on held-out rendered stamps and
    on the alerts' own stamps; also returns the held-out rendered-stamp embedding (for the figure)."""
    em: dict[str, Any] = {"onnx_max_abs_diff": enc.parity, "loss_first_epoch": enc.history["loss"][0],
                          "loss_last_epoch": enc.history["loss"][-1]}
    x_syn, y_syn, x_syn_test, y_syn_test = enc.x_syn, enc.y_syn, enc.x_syn_test, enc.y_syn_test
    ref_tr, test_tr = embed(enc.encoder, x_syn), embed(enc.encoder, x_syn_test)
    em.update(knn_metrics("knn_trained", ref_tr, y_syn, test_tr, y_syn_test))
    em.update(knn_metrics("knn_random", embed(enc.random_encoder, x_syn), y_syn,
                          embed(enc.random_encoder, x_syn_test), y_syn_test))
    em.update(knn_metrics("knn_raw_pixels", x_syn.reshape(len(x_syn), -1), y_syn,
                          x_syn_test.reshape(len(x_syn_test), -1), y_syn_test))
    # The same question on the alerts' own stamps (ZTF 63 px and Rubin 31 px, the packet writer's morphology).
    for name, e_tr, e_te in (("trained", emb_train, emb_test),
                             ("random", embed(enc.random_encoder, train.tensors),
                              embed(enc.random_encoder, test.tensors))):
        if len(train) >= 5 and len(test):
            pred = knn_predict(e_tr, train.morphology, e_te, 5)
            em[f"knn_alert_morphology_acc_{name}"] = float(np.mean(pred == test.morphology))
    return em, test_tr
