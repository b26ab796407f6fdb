"""Stochastic augmentations of cutout tensors: the two views the contrastive loss compares.

What the encoder becomes invariant to is decided here (small shifts, flips/rotations, blanked pixels
and blocks, noise), separately from the model and the loss (:mod:`training.contrastive`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from broker_plugin.photometry.cutouts import CHANNELS

#: Index of the invalid-pixel channel in the tensor (the last one).
MASK_CHANNEL = CHANNELS - 1


@dataclass
class AugmentConfig:
    """Strength of each stochastic augmentation (SCIENCE.md: flips, rotations, NaN masking, crops).

    What is *not* augmented matters as much: no brightness rescaling (the global normalisation
    keeps bright vs faint on purpose) and no channel shuffling (science/template/difference have
    distinct roles).
    """

    max_shift: int = 1  # pixels; detections are centred to ~1 px, a larger shift would teach invariance to "offset"
    pixel_mask_max: float = 0.03  # fraction of pixels blanked, drawn uniformly up to this, per view
    block_prob: float = 0.5  # chance of blanking one square block (a NaN region, a chip edge)
    block_max: int = 10  # largest block side in pixels
    noise_max: float = 0.15  # Gaussian noise sigma (asinh units, ~noise units near 0), drawn up to this


def augment(x: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator | None = None) -> torch.Tensor:
    """One random view of each tensor in a batch ``(B, C, S, S)``; every sample draws its own.

    Blanked pixels follow the runtime convention of :mod:`broker_plugin.photometry.cutouts`: 0 in the image
    channels and 1 in the invalid-pixel channel, which is why the masking here teaches the encoder
    to ignore NaN regions rather than to read them as sky.
    """
    b, _, s, _ = x.shape
    dev = x.device
    g = generator

    def rand(*shape: int) -> torch.Tensor:
        return torch.rand(*shape, generator=g, device=dev)

    # Dihedral group: a random 90-degree rotation, then a random flip. Applied group-wise (at most
    # three rotated copies and one flipped copy of parts of the batch), not by a per-sample loop.
    k = torch.randint(0, 4, (b,), generator=g, device=dev)
    flip = rand(b) < 0.5
    x = x.clone()
    for r in (1, 2, 3):
        sel = k == r
        if bool(sel.any()):
            x[sel] = torch.rot90(x[sel], r, dims=(2, 3))
    if bool(flip.any()):
        x[flip] = x[flip].flip(3)

    # Small shifts: pad with "invalid" pixels and take a shifted window per sample.
    p = cfg.max_shift
    if p > 0:
        xp = F.pad(x, (p, p, p, p))
        xp[:, MASK_CHANNEL] += F.pad(torch.zeros(b, s, s, device=dev, dtype=x.dtype), (p, p, p, p), value=1.0)
        dy = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev)
        dx = torch.randint(0, 2 * p + 1, (b,), generator=g, device=dev)
        ar = torch.arange(s, device=dev)
        rows = (dy[:, None] + ar[None, :])[:, :, None]  # (B, S, 1)
        cols = (dx[:, None] + ar[None, :])[:, None, :]  # (B, 1, S)
        bi = torch.arange(b, device=dev)[:, None, None]
        x = xp.permute(0, 2, 3, 1)[bi, rows, cols].permute(0, 3, 1, 2)

    # Blank random pixels and, sometimes, one block: NaN-style masking.
    frac = rand(b, 1, 1) * cfg.pixel_mask_max
    blank = rand(b, s, s) < frac
    if cfg.block_prob > 0 and cfg.block_max > 0:
        has_block = rand(b) < cfg.block_prob
        side = torch.randint(2, cfg.block_max + 1, (b,), generator=g, device=dev)
        y0 = (rand(b) * (s - side + 1)).long()
        x0 = (rand(b) * (s - side + 1)).long()
        ar = torch.arange(s, device=dev)
        in_y = (ar[None, :] >= y0[:, None]) & (ar[None, :] < (y0 + side)[:, None])
        in_x = (ar[None, :] >= x0[:, None]) & (ar[None, :] < (x0 + side)[:, None])
        block = in_y[:, :, None] & in_x[:, None, :] & has_block[:, None, None]
        blank = blank | block
    blank4 = blank[:, None]
    img = x[:, :MASK_CHANNEL].masked_fill(blank4, 0.0)
    mask = x[:, MASK_CHANNEL:].masked_fill(blank4, 1.0)

    # Gaussian noise on valid image pixels only.
    sigma = rand(b, 1, 1, 1) * cfg.noise_max
    noise = torch.randn(img.shape, generator=g, device=dev, dtype=img.dtype) * sigma
    img = img + noise * (mask < 1.0)
    return torch.cat([img, mask], dim=1)
