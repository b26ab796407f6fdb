"""The fast paths of broker_plugin.photometry.cutouts against the reference ones, bit for bit.

``cutout_batch`` normalises most alerts of a batch in bulk, stamp headers are parsed once per
distinct header, and gzip is inflated with ISA-L when installed. None of that may change a number
or a flag: the encoder was trained on tensors of the per-alert path, so every test here compares
with :func:`cutout_tensor` (or with zlib) on the same input, byte for byte, and checks that the
fast path really ran (otherwise equality would prove nothing).
"""

from __future__ import annotations

import gzip
import struct
import zlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import broker_plugin.photometry.cutouts as C
from broker_plugin.photometry.cutouts import (
    CHANNELS,
    SIZE,
    CutoutError,
    cutout_batch,
    cutout_tensor,
    decode_stamp,
    encode_stamp,
)

Cutouts = Mapping[str, Any]
KINDS = ("science", "template", "difference")


# ---------------------------------------------------------------------------------------------
# Helpers and fixtures
# ---------------------------------------------------------------------------------------------


def _per_alert(cutouts_list: Sequence[Cutouts], **kw: Any) -> tuple[np.ndarray, list[list[str]]]:
    """The reference: cutout_tensor alert by alert."""
    size = kw.get("size", SIZE)
    results = [cutout_tensor(c, **kw) for c in cutouts_list]
    tensors = np.stack([t for t, _ in results]) if results else np.zeros((0, CHANNELS, size, size), np.float32)
    return tensors, [f for _, f in results]


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    """Same shape, dtype and bytes (np.array_equal alone would accept -0.0 for +0.0; NaN occurs in
    stamps, and in the tensor of an image near float32's limit, so it must compare equal to itself)."""
    return (a.shape == b.shape and a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)
            and a.tobytes() == b.tobytes())


class _BulkSpy:
    """Counts the alerts that cutout_batch's bulk path handled (and the shapes it saw)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.done = 0
        self.shapes: set[tuple[int, ...]] = set()
        real = C._stack_global_group

        def spy(images: Any, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
            left = real(images, rows, out)
            self.done += len(rows) - len(left)
            self.shapes.add(images[0][0].shape)
            return left

        monkeypatch.setattr(C, "_stack_global_group", spy)


def _check_batch(cutouts_list: Sequence[Cutouts], **kw: Any) -> None:
    batch, flags = cutout_batch(cutouts_list, **kw)
    ref, ref_flags = _per_alert(cutouts_list, **kw)
    assert batch.dtype == np.float32 and batch.shape == (len(cutouts_list), CHANNELS, kw.get("size", SIZE),
                                                          kw.get("size", SIZE))
    bad = [i for i in range(len(cutouts_list)) if not _identical(batch[i], ref[i])]
    assert not bad, f"{len(bad)} alerts differ from cutout_tensor, first {bad[:5]}"
    assert flags == ref_flags


def _alert_files(shared_data: Path) -> list[Path]:
    subdirs = ("ztf/alerts", "ztf/alerts_rewritten", "lsst/alerts", "lsst/alerts_rewritten")
    return [f for d in subdirs for f in sorted((shared_data / d).glob("*.avro"))]


@pytest.fixture(scope="module")
def real_cutouts(shared_data: Path) -> dict[str, list[dict[str, bytes | None]]]:
    """Cutouts of every real public alert, per survey, through the runtime's own decoder."""
    from broker_plugin.decode import decode_alert

    out: dict[str, list[dict[str, bytes | None]]] = {"ztf": [], "lsst": []}
    for f in _alert_files(shared_data):
        alert = decode_alert(f.read_bytes())
        out[alert.survey].append(dict(alert.cutouts))
    assert len(out["ztf"]) >= 100 and out["lsst"], "real ZTF and Rubin alerts expected in the shared data"
    return out


@pytest.fixture(scope="module")
def synthetic_cutouts() -> list[dict[str, bytes | None]]:
    """Synthetic ZTF (63 px) and Rubin (31 px) alerts from the training packet writer."""
    from broker_plugin.decode import decode_alert
    from training.synthetic import iter_night

    return [dict(decode_alert(data).cutouts)
            for data, _ in iter_night(150, survey_mix={"ztf": 0.6, "lsst": 0.4}, seed=11)]


def _noise(seed: int, shape: tuple[int, int] = (63, 63), sigma: float = 5.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, sigma, shape).astype(np.float32)
    img[shape[0] // 2, shape[1] // 2] += 50 * sigma
    return img


def _alert(*imgs: np.ndarray | bytes | None, compress: bool = True) -> dict[str, Any]:
    """An alert from three images (encoded as stamps), raw bytes, or None."""
    out: dict[str, Any] = {}
    for kind, img in zip(KINDS, imgs, strict=True):
        out[kind] = encode_stamp(img, compress=compress) if isinstance(img, np.ndarray) else img
    return out


def _signed_zero_image(seed: int) -> np.ndarray:
    """Median exactly zero with +0.0 and -0.0 both present, and a non-zero IQR: the pixel - bg
    subtraction then shows which zero the median was."""
    rng = np.random.default_rng(seed)
    img = rng.normal(0.0, 3.0, (63, 63)).astype(np.float32)
    zero = rng.random((63, 63)) < 0.4
    img[zero] = np.where(rng.random(int(zero.sum())) < 0.5, np.float32(0.0), np.float32(-0.0))
    return img


def _edge_cases() -> list[dict[str, Any]]:
    """Hand-made alerts covering every branch of the per-alert path, in one list."""
    good = [_noise(s) for s in range(3)]
    nan_in_crop = good[0].copy()
    nan_in_crop[25:35, 30] = np.nan
    inf_outside_crop = good[1].copy()
    inf_outside_crop[0, 0] = np.inf  # outside the kept 32x32: the alert stays on the bulk path
    flat = np.full((63, 63), 7.0, dtype=np.float32)
    quantised = np.random.default_rng(9).choice(np.float32([10.0, 11.0]), size=(63, 63), p=[0.9, 0.1])
    tiny = (_noise(4) - 100.0) * np.float32(1e-38)  # subnormal noise: the float32 1/scale overflows
    rng = np.random.default_rng(6)  # near float32's limit: pixel - bg and the quartile gap overflow
    huge = (rng.choice(np.float32([-3e38, 3e38]), size=(63, 63)) * rng.uniform(0.9, 1.0, (63, 63))).astype(np.float32)
    stamp_bytes = encode_stamp(good[2])
    return [
        {},
        {"science": None, "template": None, "difference": None},
        _alert(*good),
        {"science": b"garbage", "template": stamp_bytes[:60], "difference": b"\x1f\x8bnot gzip at all"},
        _alert(good[0], None, good[2]),
        _alert(nan_in_crop, good[1], good[2]),
        _alert(inf_outside_crop, good[0], good[2]),
        _alert(*[_noise(s, (31, 31)) for s in range(3)]),
        _alert(*[_noise(s, (50, 63)) for s in range(3)]),
        _alert(*[_noise(s, (36, 30)) for s in range(3)]),
        _alert(good[0], _noise(1, (31, 31)), good[2]),  # mixed shapes within one alert
        _alert(flat, flat, flat),
        _alert(flat, good[1], good[2]),  # one image flat: its std fallback
        _alert(quantised, quantised, good[0]),  # quartiles coincide without being flat
        _alert(*good, compress=False),  # plain FITS, as Rubin sends
        {"science": bytearray(stamp_bytes), "template": stamp_bytes, "difference": "not bytes"},
        _alert(tiny, tiny, tiny),
        _alert(huge, good[0], huge),
        _alert(_signed_zero_image(1), _signed_zero_image(2), _signed_zero_image(3)),
        _alert(*reversed(good)),
    ]


# ---------------------------------------------------------------------------------------------
# cutout_batch == cutout_tensor, alert by alert
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("survey", ["ztf", "lsst"])
def test_batch_equals_per_alert_on_real_alerts(
    survey: str, real_cutouts: dict[str, list[dict[str, bytes | None]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    alerts = real_cutouts[survey]
    spy = _BulkSpy(monkeypatch)
    _check_batch(alerts)
    full = sum(all(c.get(k) for k in KINDS) for c in alerts)
    assert spy.done >= 0.9 * full > 0, "the bulk path must do (nearly) every alert with three stamps"


def test_batch_equals_per_alert_on_synthetic_alerts(
    synthetic_cutouts: list[dict[str, bytes | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    spy = _BulkSpy(monkeypatch)
    _check_batch(synthetic_cutouts)
    assert spy.shapes >= {(SIZE, SIZE), (31, 31)} and spy.done >= 0.9 * len(synthetic_cutouts)


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the near-float32-max case
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
@pytest.mark.parametrize(("norm", "size"), [("global", SIZE), ("global", 20), ("global", 48), ("per_image", SIZE)])
def test_batch_equals_per_alert_on_mixed_edge_cases(
    norm: str, size: int, real_cutouts: dict[str, list[dict[str, bytes | None]]],
    synthetic_cutouts: list[dict[str, bytes | None]], monkeypatch: pytest.MonkeyPatch,
) -> None:
    edge = _edge_cases()
    # Edge cases interleaved with ordinary alerts, so that rows of one shape group are not contiguous.
    ordinary = real_cutouts["ztf"][:10] + real_cutouts["lsst"][:4] + synthetic_cutouts[:10]
    mixed: list[Cutouts] = []
    for i in range(max(len(edge), len(ordinary))):
        mixed.extend(x[i] for x in (edge, ordinary) if i < len(x))
    spy = _BulkSpy(monkeypatch)
    _check_batch(mixed, norm=norm, size=size)
    if norm == "global":
        assert spy.done > len(ordinary)
    _, flags = cutout_batch(edge, norm=norm, size=size)
    for prefix in ("cutout_missing_", "cutout_bad_", "cutout_nan_", "cutout_flat"):
        assert any(f.startswith(prefix) for fl in flags for f in fl), f"no edge case raised {prefix}*"


def test_signed_zero_median_matches_per_alert(monkeypatch: pytest.MonkeyPatch) -> None:
    """The bulk path sorts where the per-alert path partitions: a zero median must keep its sign."""
    alerts = [_alert(_signed_zero_image(3 * s), _signed_zero_image(3 * s + 1), _signed_zero_image(3 * s + 2))
              for s in range(40)]
    tensors, _ = _per_alert(alerts)
    assert np.signbit(tensors[:, :3]).any() and (tensors[:, :3] == 0).any()
    spy = _BulkSpy(monkeypatch)
    _check_batch(alerts)
    assert spy.done == len(alerts)


def test_empty_batch_and_bad_norm() -> None:
    batch, flags = cutout_batch([])
    assert batch.shape == (0, CHANNELS, SIZE, SIZE) and batch.dtype == np.float32 and flags == []
    with pytest.raises(ValueError):
        cutout_batch([{}], norm="nope")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        cutout_tensor({}, norm="nope")  # type: ignore[arg-type]


def test_the_identity_check_sees_a_one_ulp_change(
    real_cutouts: dict[str, list[dict[str, bytes | None]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison above is not vacuous: nudge one bulk-path pixel by one ulp and it fails."""
    real = C._stack_global_group

    def off_by_one_ulp(images: Any, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
        left = real(images, rows, out)
        done = np.setdiff1d(np.arange(len(rows)), left)
        i = rows[done[0]]
        out[i, 0, SIZE // 2, SIZE // 2] = np.nextafter(out[i, 0, SIZE // 2, SIZE // 2], np.float32(np.inf))
        return left

    monkeypatch.setattr(C, "_stack_global_group", off_by_one_ulp)
    with pytest.raises(AssertionError, match="differ from cutout_tensor"):
        _check_batch(real_cutouts["ztf"][:20])


# ---------------------------------------------------------------------------------------------
# The parsed-header cache
# ---------------------------------------------------------------------------------------------


def _fits(img: np.ndarray, cards: Sequence[str], naxis: tuple[int, int] | None = None) -> bytes:
    """Plain BITPIX -32 FITS with extra header cards; ``naxis`` overrides the written NAXIS1/2."""
    n1, n2 = naxis or (img.shape[1], img.shape[0])
    lines = ["SIMPLE  =                    T", "BITPIX  =                  -32", "NAXIS   =                    2",
             f"NAXIS1  = {n1:>20}", f"NAXIS2  = {n2:>20}", *cards, "END"]
    header = b"".join(line.ljust(80).encode("ascii") for line in lines)
    header += b" " * (-len(header) % 2880)
    body = np.ascontiguousarray(img, dtype=">f4").tobytes()
    return header + body + b"\0" * (-len(body) % 2880)


@pytest.fixture
def empty_cache(monkeypatch: pytest.MonkeyPatch) -> dict[bytes, Any]:
    """A fresh, private header cache for one test."""
    cache: dict[bytes, Any] = {}
    monkeypatch.setattr(C, "_HEADER_CACHE", cache)
    return cache


def test_header_cache_is_bounded(empty_cache: dict[bytes, Any]) -> None:
    img = _noise(0, (8, 8))
    peak = 0
    for i in range(3 * C.HEADER_CACHE_MAX):
        data = _fits(img, [f"OBSID   = {i:>20}"])  # a distinct header each time, as Rubin's are
        assert np.array_equal(decode_stamp(data), img)
        peak = max(peak, len(empty_cache))
    assert 0 < peak <= C.HEADER_CACHE_MAX and len(empty_cache) <= C.HEADER_CACHE_MAX


def test_header_cache_serves_repeated_headers(
    empty_cache: dict[bytes, Any], real_cutouts: dict[str, list[dict[str, bytes | None]]]
) -> None:
    stamps = [v for c in real_cutouts["ztf"] for v in c.values() if v]
    cached = [decode_stamp(s) for s in stamps]
    assert 0 < len(empty_cache) <= 8, "ZTF stamp headers repeat: a handful of entries for all of them"
    for s, arr in zip(stamps, cached, strict=True):
        empty_cache.clear()  # every stamp parsed from scratch gives the array the cache hits gave
        assert _identical(decode_stamp(s), arr)


def test_tampered_header_is_not_served_from_a_stale_entry(empty_cache: dict[bytes, Any]) -> None:
    img = _noise(1, (63, 63))
    assert _identical(decode_stamp(_fits(img, [])), img)
    assert len(empty_cache) == 1
    # The same header bytes but NAXIS1 = 62 (and data to match): a different image, not a cache hit.
    narrow = img[:, :62]
    assert _identical(decode_stamp(_fits(narrow, [])), narrow)
    # A header the fast reader declines is cached as such, and the very next variant is not.
    cube = _fits(img, [], naxis=(63, 63)).replace(b"NAXIS   =                    2",
                                                   b"NAXIS   =                    3", 1)
    assert C._decode_fast(cube) is None and C._decode_fast(_fits(img, [])) is not None
    # Truncated data behind a cached header is still caught: the length check is not cached.
    whole = _fits(img, [])
    with pytest.raises(CutoutError, match="truncated"):
        decode_stamp(whole[: 2880 + 100])
    # Gzipped, as ZTF sends it, the same.
    assert _identical(decode_stamp(gzip.compress(_fits(narrow, []))), narrow)
    # A change in the last card before END, at the end of the first block, is seen too.
    filler = [f"COMMENT filler card {i}" for i in range(29)]
    a = _fits(img, [*filler, "BZERO   =                  0.0"])
    b = _fits(img, [*filler, "BZERO   =                 10.0"])
    assert a.index(b"END     ") == b.index(b"END     ") == 2800 and a[:2740] == b[:2740]
    assert _identical(decode_stamp(a), img)
    assert _identical(decode_stamp(b), (img + np.float32(10.0)).astype(np.float32))


def test_headers_longer_than_one_block_are_parsed_every_time(empty_cache: dict[bytes, Any]) -> None:
    img = _noise(2, (16, 16))
    comments = [f"COMMENT filler card {i}" for i in range(40)]  # END falls in the second block
    data = _fits(img, comments)
    assert _identical(decode_stamp(data), img) and not empty_cache
    # Same first block, different second block (NAXIS2 is in the first, BZERO in the second).
    shifted = _fits(img, [*comments, "BZERO   =                 10.0"])
    assert shifted[:2880] == data[:2880]
    assert _identical(decode_stamp(shifted), (img + np.float32(10.0)).astype(np.float32))


# ---------------------------------------------------------------------------------------------
# ISA-L inflate vs zlib
# ---------------------------------------------------------------------------------------------


def _isal() -> Any:
    """isal.isal_zlib, or skip: without it the module runs on zlib alone and there is nothing to compare."""
    return pytest.importorskip("isal.isal_zlib")


class _CountingInflater:
    """Wraps isal_zlib to count the stamps it was asked to inflate."""

    def __init__(self, lib: Any) -> None:
        self.lib, self.calls, self.error = lib, 0, lib.error

    def decompressobj(self, **kw: Any) -> Any:
        self.calls += 1
        return self.lib.decompressobj(**kw)


def _all_gzip_stamps(real: dict[str, list[dict[str, bytes | None]]], syn: list[dict[str, bytes | None]]) -> list[bytes]:
    return [v for c in [*real["ztf"], *real["lsst"], *syn] for v in c.values() if v and v[:2] == b"\x1f\x8b"]


def test_isal_and_zlib_inflate_every_stamp_identically(
    real_cutouts: dict[str, list[dict[str, bytes | None]]], synthetic_cutouts: list[dict[str, bytes | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    counting = _CountingInflater(_isal())
    monkeypatch.setattr(C, "_fast_inflate", counting)
    stamps = _all_gzip_stamps(real_cutouts, synthetic_cutouts)
    fast = [C._gunzip(s) for s in stamps]
    assert counting.calls == len(stamps) > 300
    monkeypatch.setattr(C, "_fast_inflate", None)
    assert [C._gunzip(s) for s in stamps] == fast == [zlib.decompress(s, 31) for s in stamps]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")  # the near-float32-max case
@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_batch_is_the_same_with_and_without_isal(
    real_cutouts: dict[str, list[dict[str, bytes | None]]], synthetic_cutouts: list[dict[str, bytes | None]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    alerts = [*real_cutouts["ztf"], *synthetic_cutouts, *_edge_cases()]
    monkeypatch.setattr(C, "_fast_inflate", _isal())
    with_isal, flags_isal = cutout_batch(alerts)
    monkeypatch.setattr(C, "_fast_inflate", None)
    with_zlib, flags_zlib = cutout_batch(alerts)
    assert _identical(with_isal, with_zlib) and flags_isal == flags_zlib


def _regzip(member: bytes, *, flg: int | None = None, crc: int | None = None, isize: int | None = None,
            extra: bytes = b"") -> bytes:
    """A gzip member with some header or trailer field replaced."""
    out = bytearray(member)
    if flg is not None:
        out[3] = flg
    if crc is not None:
        out[-8:-4] = struct.pack("<I", crc)
    if isize is not None:
        out[-4:] = struct.pack("<I", isize)
    return bytes(out[:10]) + extra + bytes(out[10:])


_STAMP = encode_stamp(_noise(7))
_BAD_GZIP: dict[str, Callable[[], bytes]] = {
    "truncated": lambda: _STAMP[: len(_STAMP) // 2],
    "truncated-trailer": lambda: _STAMP[:-3],
    "not-deflate": lambda: b"\x1f\x8b\x08\x00garbage-garbage-garbage",
    "bad-method": lambda: b"\x1f\x8b\x07" + _STAMP[3:],
    "bad-crc": lambda: _regzip(_STAMP, crc=0x12345678),
    "bad-isize": lambda: _regzip(_STAMP, isize=7),
    "reserved-flags": lambda: _regzip(_STAMP, flg=0xE0),  # ISA-L ignores these bits, zlib refuses
    "bad-header-crc": lambda: _regzip(_STAMP, flg=0x02, extra=b"\x00\x00"),  # FHCRC set, wrong CRC16
    "bomb": lambda: gzip.compress(b"\0" * (20 * 1024 * 1024)),
    "exactly-the-cap": lambda: gzip.compress(b"\0" * C.MAX_STAMP_BYTES),
    "not-fits": lambda: gzip.compress(b"x" * 5000),
}


@pytest.mark.parametrize("name", list(_BAD_GZIP))
def test_isal_and_zlib_reject_the_same_stamps_with_the_same_error(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    data = _BAD_GZIP[name]()
    messages = []
    for lib in (_isal(), None):
        monkeypatch.setattr(C, "_fast_inflate", lib)
        with pytest.raises(CutoutError) as info:
            decode_stamp(data)
        assert info.value.reason == "bad_cutout"
        messages.append(str(info.value))
    assert messages[0] == messages[1]


def test_optional_gzip_header_fields_still_decode(monkeypatch: pytest.MonkeyPatch) -> None:
    """FNAME is legal: such a stamp goes to zlib directly and decodes the same."""
    named = _regzip(_STAMP, flg=0x08, extra=b"stamp.fits\x00")
    for lib in (_isal(), None):
        monkeypatch.setattr(C, "_fast_inflate", lib)
        assert _identical(decode_stamp(named), decode_stamp(_STAMP))
