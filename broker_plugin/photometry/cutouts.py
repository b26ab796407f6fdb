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
  the per-alert arithmetic in the same dtypes (see
  :func:`~broker_plugin.photometry.cutout_stack._stack_global_group`), and tests check that the
  tensors and flags equal :func:`cutout_tensor`'s bit for bit on real, synthetic and hand-made
  edge-case alerts: the encoder sees the same numbers whichever path built them.

* **Bounded memory on hostile stamps.** On the cutout path (:func:`cutout_batch`,
  :func:`cutout_tensor`) a stamp may hold at most ``max_stamp_pixels`` pixels (default 128x128 =
  16,384, 4x a 63x63 ZTF stamp; Rubin's are ~30 to 60 px): gzip is never inflated past
  :func:`~broker_plugin.photometry.stamp_fits.inflate_bound` (177 kB), a header declaring more is
  refused, and the alert is annotated without cutouts, flag ``cutouts_dropped_size``. Each decoded
  stamp is cropped to the tensor size at once (the inflated buffer and the full-size array are freed
  per stamp), and a batch may inflate ``batch_inflated_bytes`` in all (an
  :class:`~broker_plugin.photometry.stamp_fits.InflateBudget`): past it the batch's remaining alerts
  get no cutouts and flag ``cutouts_dropped_budget``. Settings from
  :func:`~broker_plugin.photometry.stamp_fits.cutout_limits` (the pipeline, from ``cfg.processing``).

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
    _stack_global_group,
    crop_to,
    stack_stamps,
)
from broker_plugin.photometry.stamp_fits import (
    _BLOCK,
    CutoutBudgetError,
    CutoutError,
    CutoutLimits,
    CutoutSizeError,
    InflateBudget,
    _decode_astropy,
    _Layout,
    _parse_layout,
    active_limits,
    cutout_limits,
    encode_stamp,
    inflate_bound,
)

__all__ = [
    "ASINH_SOFTENING",
    "CHANNELS",
    "CHANNEL_NAMES",
    "FLAG_DROPPED_BUDGET",
    "FLAG_DROPPED_SIZE",
    "HEADER_CACHE_MAX",
    "MAX_STAMP_BYTES",
    "NORMS",
    "SIZE",
    "CutoutBudgetError",
    "CutoutError",
    "CutoutLimits",
    "CutoutSizeError",
    "InflateBudget",
    "Norm",
    "cutout_batch",
    "cutout_limits",
    "cutout_tensor",
    "decode_stamp",
    "encode_stamp",
    "stack_stamps",
]

#: Alert flags: cutouts not used because a stamp is over the pixel cap / the batch budget is spent.
FLAG_DROPPED_SIZE = "cutouts_dropped_size"
FLAG_DROPPED_BUDGET = "cutouts_dropped_budget"

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


def _gunzip(data: bytes, cap: int = MAX_STAMP_BYTES) -> bytes:
    """Decompress gzip with a size cap (``cap`` > 0 bytes), so a hostile stamp cannot exhaust memory.

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
            out = d.decompress(data, cap)
            # Exactly at the cap is left to zlib too: the one length where "complete" and "cut
            # short by max_length" could be told apart differently.
            if d.eof and not d.unconsumed_tail and len(out) < cap:
                return out
        except Exception:  # any failure of the accelerator: let zlib decide and word the error
            pass
    return _gunzip_zlib(data, cap)



def _gunzip_zlib(data: bytes, cap: int = MAX_STAMP_BYTES) -> bytes:
    """The reference inflater: zlib, capped at ``cap`` bytes (CutoutSizeError past it), truncation is an error."""
    try:
        d = zlib.decompressobj(wbits=31)
        out = d.decompress(data, cap)
        if d.unconsumed_tail:
            raise CutoutSizeError(f"gzipped stamp decompresses to more than {cap} bytes")
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



def _inflate(buf: bytes, max_pixels: int | None, budget: InflateBudget | None) -> bytes:
    """:func:`_gunzip` within the pixel cap's :func:`inflate_bound` and what ``budget`` has left.

    Over the pixel bound: :class:`CutoutSizeError`; over the budget (when it is the tighter bound):
    :class:`CutoutBudgetError`. The bytes of a stamp that is kept are charged; a stamp refused at the
    pixel bound is not: its buffer is freed at once and the bound already limits each one, so a batch
    full of bombs cannot spend the budget and take the cutouts of the real alerts after them.
    """
    cap = MAX_STAMP_BYTES if max_pixels is None else min(MAX_STAMP_BYTES, inflate_bound(max_pixels))
    if budget is None or budget.remaining >= cap:
        out = _gunzip(buf, cap)  # a CutoutSizeError (a bomb) is not charged: see the docstring
    else:
        left = budget.remaining
        if left <= 0:  # zlib reads max_length 0 as "no limit": never pass it
            raise CutoutBudgetError("the batch's inflated-bytes budget is spent")
        try:
            out = _gunzip(buf, left)
        except CutoutSizeError:
            budget.charge(left)
            raise CutoutBudgetError(f"stamp inflates past the batch's remaining budget ({left} bytes)") from None
    if budget is not None:
        budget.charge(len(out))
    return out



def decode_stamp(data: bytes, *, fast: bool = True, max_pixels: int | None = None,
                 budget: InflateBudget | None = None) -> np.ndarray:
    """Decode one stamp (gzipped or plain FITS) to a 2-D float32 array, NaN where undefined.

    ZTF stamps are gzipped FITS, Rubin cutouts plain FITS (gzip is detected by its magic bytes,
    not assumed per survey). ``fast=False`` forces the astropy reader, for tests and debugging.
    Raises :class:`CutoutError` for anything that is not a readable 2-D image.

    ``max_pixels`` (None: only the :data:`MAX_STAMP_BYTES` guard) caps the image: gzip is not
    inflated past :func:`inflate_bound`, and a header declaring more pixels is refused before any
    pixel is read (:class:`CutoutSizeError`). ``budget``: gzip inflates within what it has left
    (:class:`CutoutBudgetError` past it) and is charged the inflated bytes.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise CutoutError(f"stamp must be bytes, not {type(data).__name__}")
    buf = bytes(data)
    if not buf:
        raise CutoutError("stamp is empty")
    if buf[:2] == _GZIP_MAGIC:
        buf = _inflate(buf, max_pixels, budget)
    if len(buf) < _BLOCK or not buf.startswith(b"SIMPLE"):
        raise CutoutError(f"stamp is not FITS ({len(buf)} bytes, starts {buf[:8]!r})")
    if max_pixels is not None:
        layout = _header_layout(buf)
        if layout is not None and layout.n1 * layout.n2 > max_pixels:
            raise CutoutSizeError(f"stamp declares {layout.n2}x{layout.n1} pixels, more than the cap of {max_pixels}")
    if fast:
        arr = _decode_fast(buf)
        if arr is not None:
            return arr
    return _decode_astropy(buf, max_pixels)


# --------------------------------------------------------------------------------------------------
# Alerts -> tensors
# --------------------------------------------------------------------------------------------------


def _decode_stamps(cutouts: Mapping[str, bytes | None], size: int, max_pixels: int, budget: InflateBudget
                   ) -> tuple[dict[str, np.ndarray | None], list[str]]:
    """An alert's decoded images, each cropped to ``size`` (None where missing or undecodable), and
    the flags saying why. A stamp over the pixel cap, or a spent budget, drops all three images:
    the only flag is then ``cutouts_dropped_size`` / ``cutouts_dropped_budget``."""
    none: dict[str, np.ndarray | None] = dict.fromkeys(CUTOUT_KINDS)
    if budget.spent:
        return none, [FLAG_DROPPED_BUDGET]
    images: dict[str, np.ndarray | None] = {}
    flags: list[str] = []
    for kind in CUTOUT_KINDS:
        data = cutouts.get(kind)
        if not data:
            images[kind] = None
            flags.append(f"cutout_missing_{kind}")
            continue
        try:
            images[kind] = crop_to(decode_stamp(data, max_pixels=max_pixels, budget=budget), size)
        except CutoutSizeError:
            return none, [FLAG_DROPPED_SIZE]
        except CutoutBudgetError:
            budget.spent = True
            return none, [FLAG_DROPPED_BUDGET]
        except CutoutError:
            images[kind] = None
            flags.append(f"cutout_bad_{kind}")
    return images, flags



def _limits(max_pixels: int | None, budget: InflateBudget | None) -> tuple[int, InflateBudget]:
    """Explicit limits, else those of the active :func:`cutout_limits` block (a fresh budget)."""
    active = active_limits()
    return (active.max_pixels if max_pixels is None else max_pixels), (budget or active.budget())



def cutout_tensor(
    cutouts: Mapping[str, bytes | None], size: int = SIZE, norm: Norm = "global", *,
    max_pixels: int | None = None, budget: InflateBudget | None = None,
) -> tuple[np.ndarray, list[str]]:
    """Decode an alert's stamps and build its ``(CHANNELS, size, size)`` float32 tensor.

    ``cutouts`` is :attr:`Alert.cutouts <broker_plugin.alert.Alert.cutouts>` (science, template,
    difference -> raw stamp bytes or None). Never raises for bad data: a missing stamp gives
    ``cutout_missing_<kind>``, an undecodable one ``cutout_bad_<kind>``, and a zero channel; a stamp
    over ``max_pixels`` or a spent ``budget`` (defaults: :func:`cutout_limits`) gives a zero tensor
    and ``cutouts_dropped_size`` / ``cutouts_dropped_budget``.
    """
    images, flags = _decode_stamps(cutouts, size, *_limits(max_pixels, budget))
    tensor, more = stack_stamps(images, size=size, norm=norm)
    return tensor, flags + more



def cutout_batch(
    cutouts_list: Sequence[Mapping[str, bytes | None]], size: int = SIZE, norm: Norm = "global", *,
    max_pixels: int | None = None, budget: InflateBudget | None = None,
) -> tuple[np.ndarray, list[list[str]]]:
    """Tensors of many alerts, ``(n, CHANNELS, size, size)``, and each alert's flags.

    Bit-identical to :func:`cutout_tensor` alert by alert (same arrays, same flags in the same
    order), but the common case is done for the whole batch at once: with ``norm="global"``,
    alerts whose three stamps all decode to one shape are normalised together by
    :func:`_stack_global_group`, grouped by shape; every other alert, and any the group step
    declines (NaN pixels, flat images), goes through :func:`stack_stamps` as before.

    Memory: stamps are decoded one at a time and cropped to ``size`` at once, so the batch holds
    ``3 * size * size`` floats per alert, whatever the stamps inflate to. ``max_pixels`` and
    ``budget`` default to the active :func:`cutout_limits` (one fresh budget per call, i.e. per
    batch); alerts past them get a zero tensor and ``cutouts_dropped_size`` /
    ``cutouts_dropped_budget`` (see :func:`cutout_tensor`).
    """
    n = len(cutouts_list)
    if n and norm not in NORMS:
        raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
    out = np.zeros((n, CHANNELS, size, size), dtype=np.float32)
    max_px, bud = _limits(max_pixels, budget)
    decoded = [_decode_stamps(cutouts, size, max_px, bud) for cutouts in cutouts_list]
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
