"""The FITS side of alert stamps: parsing a primary header, the astropy fallback, and writing stamps.

Why a module of its own: :mod:`broker_plugin.photometry.cutouts` is about getting stamps into the
encoder's tensor; the format details (80-character cards, 2880-byte blocks, which headers we read
ourselves and which we leave to astropy, see the "numpy FITS reader" point of its docstring) are a
separate concern with no state, kept here. The memoised header cache and the gzip inflaters stay in
:mod:`~broker_plugin.photometry.cutouts` with :func:`~broker_plugin.photometry.cutouts.decode_stamp`,
the entry point they serve. The limits of the cutout path (the pixel cap, the per-batch budget of
inflated bytes, :func:`cutout_limits`) are here too: they are facts about a stamp's bytes, not
about tensors.
"""

from __future__ import annotations

import gzip
import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np

from broker_plugin.config.sections import ProcessingConfig
from broker_plugin.errors import BalBrokerError

_BLOCK = 2880
_CARD = 80
_BITPIX_DTYPES: dict[int, str] = {8: "u1", 16: ">i2", 32: ">i4", 64: ">i8", -32: ">f4", -64: ">f8"}
# Header keywords whose presence means the primary HDU is not a plain image we can read ourselves.
_UNUSUAL_KEYS = frozenset({"GROUPS", "ZIMAGE", "ZBITPIX", "PCOUNT", "GCOUNT", "XTENSION"})


class CutoutError(BalBrokerError):
    """A stamp's bytes are not a readable 2-D FITS image (not gzip/FITS, truncated, no image)."""

    reason = "bad_cutout"


class CutoutSizeError(CutoutError):
    """A stamp over the pixel cap: its header declares more pixels than allowed, or it inflates past
    :func:`inflate_bound` (a decompression bomb). The alert gets flag ``cutouts_dropped_size``."""


class CutoutBudgetError(CutoutError):
    """The batch's budget of inflated bytes is spent (flag ``cutouts_dropped_budget``)."""


# --------------------------------------------------------------------------------------------------
# Limits of the cutout path (ProcessingConfig.max_stamp_pixels / batch_inflated_bytes)
# --------------------------------------------------------------------------------------------------

#: Pixel cap of a stamp on the cutout path: 16,384 = 128x128 (ProcessingConfig's default), 4x the
#: pixels of a 63x63 ZTF stamp; the public Rubin cutouts are 30x30 (Rubin stamps run ~30 to 60 px).
DEFAULT_MAX_STAMP_PIXELS: int = ProcessingConfig.max_stamp_pixels
#: Inflated bytes one batch may produce (64 MiB, ProcessingConfig's default): a ZTF alert inflates
#: to ~60 kB (three ~20 kB stamps), so ~1,100 real ZTF alerts fit; plain (Rubin) FITS is not counted,
#: it is the message's own bytes, already bounded by the message size.
DEFAULT_BATCH_INFLATED_BYTES: int = ProcessingConfig.batch_inflated_bytes
#: Header bytes allowed on top of the pixels when bounding an inflate (16 blocks, 576 cards; real
#: ZTF stamps have one block).
HEADER_ALLOWANCE: int = 16 * _BLOCK


def inflate_bound(max_pixels: int) -> int:
    """Most bytes a gzipped stamp may inflate to: the header allowance plus ``max_pixels`` pixels of
    BITPIX -64 (8 bytes), the widest FITS pixel. A 128x128 cap gives 177,152 bytes; a 63x63 ZTF
    stamp inflates to 20,160."""
    return HEADER_ALLOWANCE + 8 * max_pixels


@dataclass
class InflateBudget:
    """Inflated bytes one batch may still produce. :func:`~broker_plugin.photometry.cutouts.decode_stamp`
    never inflates past :attr:`remaining`; once an alert hits the limit the budget is :attr:`spent`
    and the batch's remaining alerts are annotated without cutouts (never dropped)."""

    limit_bytes: int
    used_bytes: int = 0
    spent: bool = False

    @property
    def remaining(self) -> int:
        return max(0, self.limit_bytes - self.used_bytes)

    def charge(self, n: int) -> None:
        self.used_bytes += n


@dataclass(frozen=True)
class CutoutLimits:
    """The pixel cap and the per-batch budget size; :meth:`budget` opens a fresh budget."""

    max_pixels: int = DEFAULT_MAX_STAMP_PIXELS
    batch_inflated_bytes: int = DEFAULT_BATCH_INFLATED_BYTES

    def budget(self) -> InflateBudget:
        return InflateBudget(self.batch_inflated_bytes)


_LIMITS: ContextVar[CutoutLimits | None] = ContextVar("cutout_limits", default=None)


_DEFAULT_LIMITS = CutoutLimits()


@contextmanager
def cutout_limits(max_stamp_pixels: int | None = None, batch_inflated_bytes: int | None = None
                  ) -> Iterator[CutoutLimits]:
    """Limits for the cutout batches built inside the ``with`` block (``None``: the config default).

    The pipeline wraps annotation in it with ``cfg.processing``'s two settings; every
    :func:`~broker_plugin.photometry.cutouts.cutout_batch` call inside (one per annotated batch)
    then opens its own :class:`InflateBudget` of that size, unless one is passed explicitly.
    """
    limits = CutoutLimits(DEFAULT_MAX_STAMP_PIXELS if max_stamp_pixels is None else int(max_stamp_pixels),
                          DEFAULT_BATCH_INFLATED_BYTES if batch_inflated_bytes is None else int(batch_inflated_bytes))
    token = _LIMITS.set(limits)
    try:
        yield limits
    finally:
        _LIMITS.reset(token)


def active_limits() -> CutoutLimits:
    """The limits of the innermost :func:`cutout_limits` block, else the config defaults."""
    return _LIMITS.get() or _DEFAULT_LIMITS


def check_hdu_pixels(header: Any, max_pixels: int) -> None:
    """Raise :class:`CutoutSizeError` when a header declares more than ``max_pixels`` image pixels
    (``NAXISn``, or ``ZNAXISn`` for a tile-compressed image), before any data is read."""
    for prefix in ("NAXIS", "ZNAXIS"):
        n = header.get(prefix)
        if not isinstance(n, int) or n <= 0:
            continue
        count = 1
        for i in range(1, min(n, 999) + 1):
            d = header.get(f"{prefix}{i}")
            count *= d if isinstance(d, int) and d > 0 else 1
        if count > max_pixels:
            raise CutoutSizeError(f"stamp declares {count} pixels, more than the cap of {max_pixels}")



def _parse_value(raw: str) -> str | int | float | bool | None:
    """Value of a fixed- or free-format FITS card (ZTF writes ``SIMPLE  =  T``, not column 30)."""
    raw = raw.strip()
    if raw.startswith("'"):
        end = raw.find("'", 1)
        while end != -1 and raw[end + 1 : end + 2] == "'":  # doubled quote inside a string
            end = raw.find("'", end + 2)
        return raw[1:end].rstrip() if end != -1 else raw[1:].rstrip()
    raw = raw.split("/", 1)[0].strip()
    if raw == "T":
        return True
    if raw == "F":
        return False
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        pass
    try:
        return float(raw.replace("D", "E"))
    except ValueError:
        return raw



def _read_primary_header(buf: bytes) -> tuple[dict[str, str | int | float | bool | None], int] | None:
    """Cards of the primary header and the data offset, or None if there is no END card."""
    header: dict[str, str | int | float | bool | None] = {}
    n = len(buf)
    pos = 0
    while pos + _CARD <= n:
        card = buf[pos : pos + _CARD]
        pos += _CARD
        key = card[:8].rstrip()
        if key == b"END":
            return header, -(-pos // _BLOCK) * _BLOCK
        if card[8:10] == b"= " or (card[8:9] == b"=" and key):
            header[key.decode("ascii", "replace")] = _parse_value(card[10:].decode("ascii", "replace"))
    return None



class _Layout(NamedTuple):
    """What the primary header says about reading the image (everything but the pixel bytes)."""

    dtype: np.dtype
    bitpix: int
    n1: int
    n2: int
    offset: int
    bscale: object  # as parsed: usually int/float; anything else makes the reader defer to astropy
    bzero: object
    blank: object



def _parse_layout(buf: bytes) -> tuple[_Layout | None, bool]:
    """Parse the primary header: its layout (None: "unusual, ask astropy"), and whether the END
    card lies within the first 2880 bytes (so that the result depends on those bytes only)."""
    parsed = _read_primary_header(buf)
    if parsed is None:
        return None, False  # no END card: the answer depends on the whole buffer
    header, offset = parsed
    in_first_block = offset <= _BLOCK
    if header.get("SIMPLE") is not True or header.get("NAXIS") != 2 or _UNUSUAL_KEYS & header.keys():
        return None, in_first_block
    bitpix, n1, n2 = header.get("BITPIX"), header.get("NAXIS1"), header.get("NAXIS2")
    if bitpix not in _BITPIX_DTYPES or not isinstance(n1, int) or not isinstance(n2, int):
        return None, in_first_block
    if n1 <= 0 or n2 <= 0:
        return None, in_first_block
    dtype = np.dtype(_BITPIX_DTYPES[bitpix])  # type: ignore[index]
    layout = _Layout(dtype, bitpix, n1, n2, offset,  # type: ignore[arg-type]
                     header.get("BSCALE", 1.0), header.get("BZERO", 0.0), header.get("BLANK"))
    return layout, in_first_block



def _decode_astropy(buf: bytes, max_pixels: int | None = None) -> np.ndarray:
    """The general reader: first HDU holding a 2-D image (compressed and extension images too).

    With ``max_pixels``, each image HDU's header is checked (:func:`check_hdu_pixels`) before its
    data is read, so a tile-compressed bomb is refused before astropy inflates it; tables are
    skipped unread (their data was never an image)."""
    from astropy.io import fits  # imported lazily: the fast path never needs it

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # ZTF's free-format SIMPLE card triggers a VerifyWarning
            with fits.open(io.BytesIO(buf), memmap=False, lazy_load_hdus=True) as hdul:
                for hdu in hdul:
                    if max_pixels is not None:
                        if hdu.header.get("XTENSION") in ("BINTABLE", "TABLE") and not hdu.header.get("ZIMAGE"):
                            continue
                        check_hdu_pixels(hdu.header, max_pixels)
                    data = hdu.data
                    if data is None or not hasattr(data, "ndim"):
                        continue
                    arr = np.asarray(data)
                    while arr.ndim > 2 and arr.shape[0] == 1:
                        arr = arr[0]
                    if arr.ndim == 2 and arr.size and arr.dtype.kind in "uif":
                        return np.array(arr, dtype=np.float32)
    except CutoutError:
        raise
    except Exception as exc:  # astropy raises many types (OSError, ValueError, TypeError...)
        raise CutoutError(f"stamp is not a readable FITS image: {exc}") from exc
    raise CutoutError("FITS stamp holds no 2-D image")



def _card(key: str, value: str) -> bytes:
    return f"{key:<8}= {value:>20}".ljust(_CARD).encode("ascii")



def encode_stamp(arr: np.ndarray, *, compress: bool = True) -> bytes:
    """Encode a 2-D image as a (gzipped) single-HDU BITPIX -32 FITS file, like a ZTF stamp.

    Written by hand (standard fixed-format cards, big-endian float32, 2880-byte blocks) because
    the synthetic packet writer calls it thousands of times; ``mtime=0`` keeps the bytes
    deterministic for a given array.
    """
    a = np.asarray(arr)
    if a.ndim != 2 or a.size == 0:
        raise ValueError(f"encode_stamp needs a non-empty 2-D array, got shape {a.shape}")
    cards = [
        _card("SIMPLE", "T"),
        _card("BITPIX", "-32"),
        _card("NAXIS", "2"),
        _card("NAXIS1", str(a.shape[1])),
        _card("NAXIS2", str(a.shape[0])),
        "BUNIT   = 'DN      '".ljust(_CARD).encode("ascii"),
        b"END".ljust(_CARD),
    ]
    header = b"".join(cards)
    header += b" " * (-len(header) % _BLOCK)
    body = np.ascontiguousarray(a, dtype=">f4").tobytes()
    body += b"\x00" * (-len(body) % _BLOCK)
    out = header + body
    return gzip.compress(out, compresslevel=6, mtime=0) if compress else out
