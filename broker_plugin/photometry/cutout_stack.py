"""Decoded stamps -> the ``(CHANNELS, SIZE, SIZE)`` tensor of one alert: crop, background, noise scale, stretch.

Why a module of its own: training builds tensors from synthetic arrays with :func:`stack_stamps`
and never reads a FITS byte, while :mod:`broker_plugin.photometry.cutouts` adds decoding and the
batch path on top; the size, channel and normalisation conventions (why 32 px, the invalid-pixel
channel, global vs per-image noise: see that module's docstring) live here, in one place for both.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Literal

import numpy as np

from broker_plugin.alert import CUTOUT_KINDS

#: Side of the square tensor, in pixels (see the module docstring for why 32).
SIZE: int = 32
#: science, template, difference, invalid-pixel fraction.
CHANNELS: int = 4
CHANNEL_NAMES: tuple[str, ...] = (*CUTOUT_KINDS, "invalid")
#: Softening of the asinh stretch, in units of the tensor's noise scale: pixels within about one
#: sigma stay linear, bright sources are compressed logarithmically (a 1000-sigma star maps to ~7.6).
ASINH_SOFTENING: float = 1.0

Norm = Literal["global", "per_image"]
NORMS: tuple[str, ...] = ("global", "per_image")


def _place(img: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Centre-crop or zero-pad to ``size`` (pixel H//2 -> size//2).

    Returns the image (0 outside the stamp and at non-finite pixels), the valid-pixel mask, and
    whether any pixel inside the kept region was non-finite (padding alone is not flagged: Rubin
    cutouts are natively smaller than 32 px).
    """
    out = np.zeros((size, size), dtype=np.float32)
    valid = np.zeros((size, size), dtype=bool)
    if img.ndim != 2:
        return out, valid, False
    h, w = img.shape
    oy, ox = size // 2 - h // 2, size // 2 - w // 2
    y0, y1 = max(0, -oy), min(h, size - oy)
    x0, x1 = max(0, -ox), min(w, size - ox)
    has_bad = False
    if y1 > y0 and x1 > x0:
        src = img[y0:y1, x0:x1]
        fin = np.isfinite(src)
        valid[y0 + oy : y1 + oy, x0 + ox : x1 + ox] = fin
        has_bad = not fin.all()
        out[y0 + oy : y1 + oy, x0 + ox : x1 + ox] = np.where(fin, src, 0.0) if has_bad else src
    return out, valid, has_bad



def _background_and_sigma(values: np.ndarray) -> tuple[float, float]:
    """Sky level (median) and Gaussian-equivalent noise (IQR / 1.349) from one partition.

    Quartiles rather than mean/std so that the source itself, a host galaxy covering up to a
    quarter of the crop, or a cosmic ray, does not set the scale; a single ``np.partition`` call
    because ``np.median`` twice per image cost more than decoding on the hot path. Falls back to
    the standard deviation when the quartiles coincide (quantised or nearly constant images).
    """
    n = values.size
    if n == 0:
        return 0.0, 0.0
    k25, k50, k75 = (n - 1) // 4, (n - 1) // 2, (3 * (n - 1)) // 4
    part = np.partition(values, (k25, k50, k75))
    bg = float(part[k50])
    sigma = float(part[k75] - part[k25]) / 1.349
    if not sigma > 0:
        sigma = float(np.std(values))
    return bg, sigma



def stack_stamps(
    images: Mapping[str, np.ndarray | None], size: int = SIZE, norm: Norm = "global"
) -> tuple[np.ndarray, list[str]]:
    """Build the ``(CHANNELS, size, size)`` tensor from already decoded images.

    Shared by the runtime (after :func:`decode_stamp`) and by training (synthetic arrays), so both
    see exactly the same cropping, normalisation and masking. A ``None`` image gives a zero channel
    and a full invalid mask; the caller adds the flag saying why.

    ``"global"`` divides every image by one scale, the median of the three images' noise levels
    (for ZTF and Rubin that is the science/difference noise, the template being a deeper coadd),
    so relative amplitudes between the images survive; ``"per_image"`` uses each image's own.
    """
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    n_img = len(CUTOUT_KINDS)
    tensor = np.zeros((CHANNELS, size, size), dtype=np.float32)
    invalid = np.full((size, size), float(n_img), dtype=np.float32)
    valids: list[np.ndarray | None] = []
    sigmas: list[float] = []
    flags: list[str] = []
    for c, kind in enumerate(CUTOUT_KINDS):
        img = images.get(kind)
        if img is None:
            valids.append(None)
            sigmas.append(0.0)
            continue
        placed, valid, has_bad = _place(np.asarray(img, dtype=np.float32), size)
        if has_bad:
            flags.append(f"cutout_nan_{kind}")
        bg, sigma = _background_and_sigma(placed[valid])
        placed -= np.float32(bg)  # this image's own sky background
        tensor[c] = placed
        valids.append(valid)
        sigmas.append(sigma)
        invalid -= valid

    good = [s for s, v in zip(sigmas, valids, strict=True) if v is not None and s > 0]
    if norm == "global":
        good.sort()  # median of at most three values; np.median costs ~20 us of overhead here
        m = len(good)
        scale = (good[m // 2] if m % 2 else 0.5 * (good[m // 2 - 1] + good[m // 2])) if m else 1.0
        scales = [scale] * n_img
        if not good and any(v is not None and v.any() for v in valids):
            flags.append("cutout_flat")
    else:
        scales = []
        for kind, s, v in zip(CUTOUT_KINDS, sigmas, valids, strict=True):
            if v is not None and v.any() and not s > 0:
                flags.append(f"cutout_flat_{kind}")
            scales.append(s if s > 0 else 1.0)

    for c, v in enumerate(valids):
        if v is None:
            continue
        ch = np.arcsinh(tensor[c] * np.float32(1.0 / (ASINH_SOFTENING * scales[c])))
        ch[~v] = 0.0
        tensor[c] = ch
    tensor[n_img] = invalid * np.float32(1.0 / n_img)
    return tensor, flags
