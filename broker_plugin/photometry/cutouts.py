"""Alert image stamps: decode, re-encode, and turn into the fixed-size tensor the image encoder reads.

The candidate scorer's image modality (SCIENCE.md, "contrastive image embeddings") sees every alert
as one ``(CHANNELS, SIZE, SIZE)`` float32 tensor built from the science, template and difference
stamps. This module is on the per-alert hot path and in the runtime package, so it uses numpy
(plus astropy only as a fallback) and never torch.

Decisions, and why:

* **Size 32 px.** ZTF stamps are 63x63 at 1"/px; Rubin cutouts in the public samples are 30-36 px
  at 0.2"/px. 32 px keeps the central 32" of a ZTF stamp (a host galaxy and its nucleus fit) and
  pads a 30 px Rubin cutout by one pixel only; 48 px would make Rubin tensors one-third padding and
  cost 2.25x the encoder time. Cropping and padding keep pixel ``H // 2`` of the stamp at pixel
  ``SIZE // 2`` of the tensor, the pixel on which both surveys centre the detection.
* **A fourth channel, the invalid-pixel fraction.** NaN pixels (chip edges, masked stars), padding
  and missing stamps become 0 in the image channels *after* normalisation, and channel 3 holds the
  fraction of the three images that were invalid at that pixel (0, 1/3, 2/3 or 1). Without it the
  encoder could not tell "no data" from "sky"; the contrastive augmentation mimics exactly this
  (it zeroes pixels and raises the mask), so the runtime and training see the same convention.
* **Global normalisation by default.** Each image's own background (median of its valid crop
  pixels) is subtracted, then the *whole tensor* is divided by one noise scale (the median of the
  three images' IQR-based noise levels, i.e. the science/difference noise, the template being a
  deeper coadd) and stretched with ``asinh``. One scale for the tensor keeps the ratios between
  science, template and difference (a bright quasar on a faint host vs a faint transient), and
  values in units of noise keep bright vs faint distinguishable, which SCIENCE.md reports
  mattered; it also makes ZTF DN and Rubin nJy comparable. ``"per_image"`` (each image scaled by
  its own noise) is kept for comparison.
* **Same pixel grid, different sky.** 32 px is 32" for ZTF but 6.4" for Rubin: an encoder trained
  on one survey's stamps should not be trusted on the other's without retraining.
* **Never raise on a bad stamp in** :func:`cutout_tensor`. A missing or corrupt stamp gives a zero
  channel, a full mask and a flag (``cutout_missing_<kind>``, ``cutout_bad_<kind>``); the alert is
  still scored by the other modalities. :func:`decode_stamp` itself raises :class:`CutoutError`
  (reason ``"bad_cutout"``) so that callers wanting strictness have it.
* **A numpy FITS reader for the common case.** Every real ZTF and Rubin stamp is a primary HDU
  with a 2-D image (ZTF: gzipped, BITPIX -32, a 6-card header; Rubin: plain FITS with a variance
  and a PSF extension that we do not need). Parsing the 80-character cards ourselves and reading
  the big-endian block with ``np.frombuffer`` is ~50x faster than ``astropy.io.fits``; anything
  unusual (no image in the primary HDU, compressed images, random groups, NAXIS other than 2)
  falls back to astropy. Tests check both paths give identical arrays on all real stamps.
  Parsed headers are memoised on their bytes (ZTF stamp headers repeat from alert to alert), and
  gzip is inflated with ISA-L (package ``isal``) when it is installed: zlib stays the reference,
  redoing anything ISA-L does not inflate cleanly, so the same stamps decode, to the same bytes,
  and the same ones fail with the same message, with or without it.
* **A batch path, bit-identical to the per-alert one.** :func:`cutout_batch` (what the runtime and
  training call, ~500 alerts at a time) decodes every stamp, then normalises the common case (global
  norm, three decoded stamps of one shape, no NaN in the kept region, non-zero noise) for all such
  alerts at once with a handful of numpy calls; the rest go through :func:`stack_stamps`. Per-alert
  Python and numpy call overhead cost as much as the arithmetic on 32x32 crops. Every step repeats
  the per-alert arithmetic in the same dtypes (see :func:`_stack_global_group`), and tests check
  that the tensors and flags equal :func:`cutout_tensor`'s bit for bit on real, synthetic and
  hand-made edge-case alerts: the encoder sees the same numbers whichever path built them.

Layout: this module decodes stamps (gzip inflate, the memoised fast header path) and builds batches;
the FITS format itself (cards, astropy fallback, :func:`encode_stamp`) is in
:mod:`~broker_plugin.photometry.stamp_fits` and the one-alert tensor (:func:`stack_stamps`, the
size/channel/normalisation constants) in :mod:`~broker_plugin.photometry.cutout_stack`; their
public names are re-exported here, where callers import them.
"""

from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence
from types import ModuleType

import numpy as np

from broker_plugin.alert import CUTOUT_KINDS
from broker_plugin.photometry.cutout_stack import (
    ASINH_SOFTENING,
    CHANNEL_NAMES,
    CHANNELS,
    NORMS,
    SIZE,
    Norm,
    stack_stamps,
)
from broker_plugin.photometry.stamp_fits import (
    _BLOCK,
    CutoutError,
    _decode_astropy,
    _Layout,
    _parse_layout,
    encode_stamp,
)

__all__ = [
    "ASINH_SOFTENING",
    "CHANNELS",
    "CHANNEL_NAMES",
    "HEADER_CACHE_MAX",
    "MAX_STAMP_BYTES",
    "NORMS",
    "SIZE",
    "CutoutError",
    "Norm",
    "cutout_batch",
    "cutout_tensor",
    "decode_stamp",
    "encode_stamp",
    "stack_stamps",
]

try:  # ISA-L's inflate is ~1.6x faster than zlib's on stamps; optional, zlib is the reference
    from isal import isal_zlib as _isal_zlib
except ImportError:  # pragma: no cover - depends on the environment
    _isal_zlib = None

#: Guard against a decompression bomb on the hot path: no real stamp comes near this.
MAX_STAMP_BYTES: int = 16 * 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"
#: The accelerated inflater tried first (``isal.isal_zlib`` when installed, else None: zlib only).
#: A module attribute so that tests can force the plain-zlib path.
_fast_inflate: ModuleType | None = _isal_zlib
# Gzip member start (magic, CM=deflate, FLG=0: no optional header field) given to ISA-L. The two
# inflaters differ on headers (zlib rejects reserved FLG bits, ISA-L ignores them), so any member
# with FLG set goes to zlib directly; stamps are written with FLG=0.
_PLAIN_GZIP_START = b"\x1f\x8b\x08\x00"
#: Bound on the parsed-header cache (see :func:`_header_layout`): ZTF needs a handful of entries,
#: Rubin headers differ per alert, so the cache is simply emptied when full.
HEADER_CACHE_MAX: int = 512


# --------------------------------------------------------------------------------------------------
# Decoding single stamps
# --------------------------------------------------------------------------------------------------


def _gunzip(data: bytes) -> bytes:
    """Decompress gzip with a size cap, so a hostile stamp cannot exhaust memory.

    The accelerated inflater (ISA-L) is tried first and its output is used only when it read one
    complete member below the cap; anything else (corrupt, truncated, too big, optional header
    fields) is redone with zlib, so accepted stamps, rejected stamps and error messages are exactly
    zlib's. A deflate stream has one decoding, both reject invalid codes and distances, and both
    check the gzip trailer's CRC-32 and length, so the bytes returned are the same whichever
    inflater produced them (tests compare the two on every real and synthetic stamp).
    """
    fast = _fast_inflate
    if fast is not None and data[:4] == _PLAIN_GZIP_START:
        try:
            d = fast.decompressobj(wbits=31)
            out = d.decompress(data, MAX_STAMP_BYTES)
            # Exactly at the cap is left to zlib too: the one length where "complete" and "cut
            # short by max_length" could be told apart differently.
            if d.eof and not d.unconsumed_tail and len(out) < MAX_STAMP_BYTES:
                return out
        except Exception:  # any failure of the accelerator: let zlib decide and word the error
            pass
    return _gunzip_zlib(data)



def _gunzip_zlib(data: bytes) -> bytes:
    """The reference inflater: zlib, capped at MAX_STAMP_BYTES, truncation is an error."""
    try:
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(data, MAX_STAMP_BYTES)
        if d.unconsumed_tail:
            raise CutoutError(f"gzipped stamp decompresses to more than {MAX_STAMP_BYTES} bytes")
        if not d.eof:
            raise CutoutError("gzipped stamp is truncated")
    except zlib.error as exc:
        raise CutoutError(f"stamp is not valid gzip: {exc}") from exc
    return out


_HEADER_CACHE: dict[bytes, _Layout | None] = {}


def _header_layout(buf: bytes) -> _Layout | None:
    """:func:`_parse_layout`, memoised on the header bytes.

    Parsing the cards costs ~20 us a stamp, and ZTF stamp headers are byte-identical from alert to
    alert (a few variants in all). The key is the first 2880-byte block (the whole buffer if
    shorter), and a result is stored only when the END card lies inside it, so the key holds every
    byte the parse read: a header that differs anywhere (another NAXIS1, say) is another key, never
    a stale entry. Longer headers are parsed every time. At most :data:`HEADER_CACHE_MAX` entries:
    the cache is emptied when full (Rubin headers differ per alert and would otherwise pile up).
    """
    key = buf[:_BLOCK]
    try:
        return _HEADER_CACHE[key]
    except KeyError:
        pass
    layout, cacheable = _parse_layout(buf)
    if cacheable:
        if len(_HEADER_CACHE) >= HEADER_CACHE_MAX:
            _HEADER_CACHE.clear()
        _HEADER_CACHE[key] = layout
    return layout



def _decode_fast(buf: bytes) -> np.ndarray | None:
    """Read a plain primary 2-D image with numpy; None means "unusual, ask astropy"."""
    if not buf.startswith(b"SIMPLE"):
        return None
    layout = _header_layout(buf)
    if layout is None:
        return None
    dtype, bitpix, n1, n2, offset, bscale, bzero, blank = layout
    count = n1 * n2
    if offset + count * dtype.itemsize > len(buf):
        raise CutoutError(f"FITS stamp truncated: {n2}x{n1} BITPIX {bitpix} needs more than {len(buf)} bytes")
    raw = np.frombuffer(buf, dtype=dtype, count=count, offset=offset).reshape(n2, n1)
    if not isinstance(bscale, (int, float)) or not isinstance(bzero, (int, float)):
        return None
    if bitpix < 0:
        out = raw.astype(np.float32)
        if bscale != 1 or bzero != 0:
            out = (out * np.float32(bscale) + np.float32(bzero)).astype(np.float32)
        return out
    # Integer images: physical = raw * BSCALE + BZERO, BLANK marks undefined pixels.
    out64 = raw.astype(np.float64) * float(bscale) + float(bzero)
    if isinstance(blank, int):
        out64[raw == blank] = np.nan
    return out64.astype(np.float32)



def decode_stamp(data: bytes, *, fast: bool = True) -> np.ndarray:
    """Decode one stamp (gzipped or plain FITS) to a 2-D float32 array, NaN where undefined.

    ZTF stamps are gzipped FITS, Rubin cutouts plain FITS (gzip is detected by its magic bytes,
    not assumed per survey). ``fast=False`` forces the astropy reader, for tests and debugging.
    Raises :class:`CutoutError` for anything that is not a readable 2-D image.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CutoutError(f"stamp must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    if not buf:
        raise CutoutError("stamp is empty")
    if buf[:2] == _GZIP_MAGIC:
        buf = _gunzip(buf)
    if len(buf) < _BLOCK or not buf.startswith(b"SIMPLE"):
        raise CutoutError(f"stamp is not FITS ({len(buf)} bytes, starts {buf[:8]!r})")
    if fast:
        arr = _decode_fast(buf)
        if arr is not None:
            return arr
    return _decode_astropy(buf)


# --------------------------------------------------------------------------------------------------
# Alerts -> tensors
# --------------------------------------------------------------------------------------------------


def _decode_stamps(cutouts: Mapping[str, bytes | None]) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """An alert's decoded images (None where missing or undecodable) and the flags saying why."""
    images: dict[str, np.ndarray | None] = {}
    flags: list[str] = []
    for kind in CUTOUT_KINDS:
        data = cutouts.get(kind)
        if not data:
            images[kind] = None
            flags.append(f"cutout_missing_{kind}")
            continue
        try:
            images[kind] = decode_stamp(data)
        except CutoutError:
            images[kind] = None
            flags.append(f"cutout_bad_{kind}")
    return images, flags



def cutout_tensor(
    cutouts: Mapping[str, bytes | None], size: int = SIZE, norm: Norm = "global"
) -> tuple[np.ndarray, list[str]]:
    """Decode an alert's stamps and build its ``(CHANNELS, size, size)`` float32 tensor.

    ``cutouts`` is :attr:`Alert.cutouts <broker_plugin.alert.Alert.cutouts>` (science, template,
    difference -> raw stamp bytes or None). Never raises for bad data: a missing stamp gives
    ``cutout_missing_<kind>``, an undecodable one ``cutout_bad_<kind>``, and a zero channel.
    """
    images, flags = _decode_stamps(cutouts)
    tensor, more = stack_stamps(images, size=size, norm=norm)
    return tensor, flags + more



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



def cutout_batch(
    cutouts_list: Sequence[Mapping[str, bytes | None]], size: int = SIZE, norm: Norm = "global"
) -> tuple[np.ndarray, list[list[str]]]:
    """Tensors of many alerts, ``(n, CHANNELS, size, size)``, and each alert's flags.

    Bit-identical to :func:`cutout_tensor` alert by alert (same arrays, same flags in the same
    order), but the common case is done for the whole batch at once: with ``norm="global"``,
    alerts whose three stamps all decode to one shape are normalised together by
    :func:`_stack_global_group`, grouped by shape; every other alert, and any the group step
    declines (NaN pixels, flat images), goes through :func:`stack_stamps` as before.
    """
    n = len(cutouts_list)
    if n and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    out = np.zeros((n, CHANNELS, size, size), dtype=np.float32)
    decoded = [_decode_stamps(cutouts) for cutouts in cutouts_list]
    all_flags = [flags for _, flags in decoded]
    groups: dict[tuple[int, ...], list[int]] = {}
    rest: list[int] = []
    for i, (images, flags) in enumerate(decoded):
        if norm == "global" and not flags:  # no flag: all three stamps are there and decoded
            shapes = {img.shape for img in images.values()}  # type: ignore[union-attr]
            if len(shapes) == 1:
                groups.setdefault(shapes.pop(), []).append(i)
                continue
        rest.append(i)
    for idx in groups.values():
        rows = np.asarray(idx)
        imgs = [[decoded[i][0][kind] for kind in CUTOUT_KINDS] for i in idx]
        left = _stack_global_group(imgs, rows, out)  # type: ignore[arg-type]
        rest.extend(int(i) for i in rows[left])
    for i in sorted(rest):
        images, flags = decoded[i]
        out[i], more = stack_stamps(images, size=size, norm=norm)
        all_flags[i] = flags + more
    return out, all_flags
