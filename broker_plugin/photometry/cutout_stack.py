"""Decoded stamps -> the ``(CHANNELS, SIZE, SIZE)`` tensor of one alert: crop, background, noise scale, stretch.

Why a module of its own: training builds tensors from synthetic arrays with :func:`stack_stamps`
and never reads a FITS byte, while :mod:`broker_plugin.photometry.cutouts` adds decoding and the
batch path on top; the size, channel and normalisation conventions (why 32 px, the invalid-pixel
channel, global vs per-image noise: see that module's docstring) live here, in one place for both.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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


def crop_to(img: np.ndarray, size: int = SIZE) -> np.ndarray:
    """Centre-crop a decoded stamp to at most ``size`` x ``size``, as :func:`_place` would.

    The kept window is exactly the one :func:`_place` reads (pixel ``H // 2`` stays at ``size // 2``
    of the tensor), so tensors and flags built from the crop equal those built from the full stamp
    bit for bit. Called right after decoding: the crop is a copy, so the full-size array can be
    freed at once instead of living until the batch's tensors are built.
    """
    if img.ndim != 2:
        return img
    h, w = img.shape
    if h <= size and w <= size:
        return img
    y0 = h // 2 - size // 2 if h > size else 0
    x0 = w // 2 - size // 2 if w > size else 0
    return img[y0 : y0 + min(h, size), x0 : x0 + min(w, size)].copy()



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



def _stack_global_group(
    images: Sequence[Sequence[np.ndarray]], rows: np.ndarray, out: np.ndarray
) -> np.ndarray:
    """:func:`stack_stamps` (``norm="global"``) for many alerts whose three images share one shape.

    Writes ``out[rows[j]]`` for every alert it can do bit-identically in bulk and returns the
    positions ``j`` it left to the per-alert path: a non-finite pixel in the kept region (masking
    and the ``cutout_nan_*`` flag), an image whose quartiles coincide (the ``np.std`` fallback), or
    a noise scale whose float32 reciprocal is not finite. For the others every step is the per-alert
    arithmetic on the same values in the same dtypes: the quartiles are exact order statistics of
    the crop (taken from a sort, the sign of a zero median from the per-alert partition itself);
    sigma is the float32 quartile difference divided in float64; the scale is the middle of the
    three sigmas; the stretch is float32 ``(pixel - float32(bg)) * float32(1 / scale)`` through
    ``arcsinh``, an elementwise ufunc given contiguous arrays as in the per-alert path. Such alerts
    get no flags. Memory: one float32 copy of the crops (~6 MB for 500 ZTF alerts) and temporaries
    of the same size.
    """
    size = out.shape[-1]
    n_img = len(CUTOUT_KINDS)
    h, w = images[0][0].shape
    oy, ox = size // 2 - h // 2, size // 2 - w // 2
    y0, y1 = max(0, -oy), min(h, size - oy)
    x0, x1 = max(0, -ox), min(w, size - ox)
    g = len(images)
    if y1 <= y0 or x1 <= x0:
        return np.arange(g)
    crop = np.empty((g, n_img, y1 - y0, x1 - x0), dtype=np.float32)
    for j, imgs in enumerate(images):
        for c, img in enumerate(imgs):
            crop[j, c] = img[y0:y1, x0:x1]
    m = crop.shape[2] * crop.shape[3]
    flat = crop.reshape(g, n_img, m)  # a view: the values in the order placed[valid] gives them
    k25, k50, k75 = (m - 1) // 4, (m - 1) // 2, (3 * (m - 1)) // 4
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):  # declined rows only
        # Sorting each row (numpy's SIMD sort) gives the same order statistics as the per-alert
        # np.partition, ~3x faster; it may differ only in which zero, +0.0 or -0.0, lands on a
        # quartile. Of the three, only the median's sign can reach the tensor (pixel - bg with a
        # -0.0 pixel), so a zero median is selected again exactly as the per-alert path does.
        srt = np.sort(flat, axis=-1)
        bg = srt[:, :, k50].copy()  # float32, as np.float32(float(part[k50]))
        sigma = (srt[:, :, k75] - srt[:, :, k25]).astype(np.float64) / 1.349
        del srt
        for j, c in zip(*np.nonzero(bg == 0), strict=True):
            bg[j, c] = np.partition(flat[j, c], (k25, k50, k75))[k50]
        scale = np.sort(sigma, axis=1)[:, n_img // 2]  # median of three, all > 0 below
        factor = (1.0 / (ASINH_SOFTENING * scale)).astype(np.float32)
    ok = np.isfinite(flat).all(axis=(1, 2)) & (sigma > 0).all(axis=1) & np.isfinite(factor)
    sel = np.flatnonzero(ok)
    if sel.size:
        if sel.size < g:
            crop, bg, factor = crop[sel], bg[sel], factor[sel]
        crop -= bg[:, :, None, None]
        crop *= factor[:, None, None, None]
        out[rows[sel], :n_img, y0 + oy : y1 + oy, x0 + ox : x1 + ox] = np.arcsinh(crop)
        # The invalid channel, with the per-alert path's own float32 operations.
        valid = np.zeros((size, size), dtype=bool)
        valid[y0 + oy : y1 + oy, x0 + ox : x1 + ox] = True
        invalid = np.full((size, size), float(n_img), dtype=np.float32)
        for _ in range(n_img):
            invalid -= valid
        out[rows[sel], n_img] = invalid * np.float32(1.0 / n_img)
    return np.flatnonzero(~ok)
