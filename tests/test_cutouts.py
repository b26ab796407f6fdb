"""Stamp decoding and the cutout tensor (broker_plugin.photometry.cutouts), on real ZTF/Rubin stamps and on
hand-made corrupt ones. The alerts are read with fastavro directly so these tests do not depend on
the alert decoder."""

from __future__ import annotations

import gzip
import io
import warnings
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from broker_plugin.errors import BalBrokerError
from broker_plugin.photometry.cutouts import (
    CHANNELS,
    SIZE,
    CutoutError,
    _decode_fast,
    cutout_batch,
    cutout_tensor,
    decode_stamp,
    encode_stamp,
    stack_stamps,
)

KIND_FIELDS = {"science": "cutoutScience", "template": "cutoutTemplate", "difference": "cutoutDifference"}


def _stamp_bytes(value: Any) -> bytes | None:
    """ZTF nests the bytes in {fileName, stampData}; Rubin stores bytes directly."""
    if isinstance(value, dict):
        return value.get("stampData")
    return value


def _cutouts(record: dict[str, Any]) -> dict[str, bytes | None]:
    return {kind: _stamp_bytes(record.get(name)) for kind, name in KIND_FIELDS.items()}


def _read_container(path: Path) -> list[dict[str, bytes | None]]:
    with path.open("rb") as fh:
        return [_cutouts(r) for r in fastavro.reader(fh)]


def _read_rubin(path: Path, schema_dir: Path) -> list[dict[str, bytes | None]]:
    """A Rubin file is either an Avro container or one Confluent wire-format message."""
    data = path.read_bytes()
    if data[:4] == b"Obj\x01":
        return _read_container(path)
    assert data[0] == 0, f"{path.name}: neither a container nor wire format"
    major, minor = divmod(int.from_bytes(data[1:5], "big"), 100)
    schema_file = schema_dir / str(major) / str(minor) / f"lsst.v{major}_{minor}.alert.avsc"
    schema = fastavro.schema.load_schema(str(schema_file))
    return [_cutouts(fastavro.schemaless_reader(io.BytesIO(data[5:]), schema))]


@pytest.fixture(scope="module")
def ztf_cutouts(ztf_alert_files: list[Path], shared_data: Path) -> list[dict[str, bytes | None]]:
    files = list(ztf_alert_files) + sorted((shared_data / "ztf" / "alerts_rewritten").glob("*.avro"))
    out = [c for f in files for c in _read_container(f)]
    assert len(out) >= len(ztf_alert_files) > 0
    return out


@pytest.fixture(scope="module")
def lsst_cutouts(lsst_alert_files: list[Path], shared_data: Path) -> list[dict[str, bytes | None]]:
    files = list(lsst_alert_files) + sorted((shared_data / "lsst" / "alerts_rewritten").glob("*.avro"))
    schema_dir = shared_data / "lsst" / "schema"
    out = [c for f in files for c in _read_rubin(f, schema_dir)]
    with_stamps = [c for c in out if any(v for v in c.values())]
    assert with_stamps, "no Rubin alert with cutouts found"
    return with_stamps


def _all_stamps(*sets: list[dict[str, bytes | None]]) -> list[bytes]:
    return [v for s in sets for c in s for v in c.values() if v]


# ---------------------------------------------------------------------------------------------
# Real alerts
# ---------------------------------------------------------------------------------------------


def test_every_real_ztf_alert_gives_a_finite_tensor(ztf_cutouts: list[dict[str, bytes | None]]) -> None:
    for cutouts in ztf_cutouts:
        tensor, flags = cutout_tensor(cutouts)
        assert tensor.shape == (CHANNELS, SIZE, SIZE) and tensor.dtype == np.float32
        assert np.isfinite(tensor).all()
        assert not [f for f in flags if f.startswith(("cutout_bad", "cutout_missing"))], flags
        assert np.abs(tensor[:3]).max() > 0


def test_every_real_rubin_alert_with_cutouts_gives_a_finite_tensor(
    lsst_cutouts: list[dict[str, bytes | None]],
) -> None:
    for cutouts in lsst_cutouts:
        tensor, flags = cutout_tensor(cutouts)
        assert tensor.shape == (CHANNELS, SIZE, SIZE)
        assert np.isfinite(tensor).all()
        assert not [f for f in flags if f.startswith("cutout_bad")], flags
        # Rubin cutouts are 30-36 px: a 30 px one is padded, and the padding is marked invalid.
        sci = decode_stamp(cutouts["science"])  # type: ignore[arg-type]
        if sci.shape[0] < SIZE:
            assert tensor[3, 0, :].min() > 0 and tensor[3, SIZE // 2, SIZE // 2] == 0


def test_fast_reader_equals_astropy_on_all_real_stamps(
    ztf_cutouts: list[dict[str, bytes | None]], lsst_cutouts: list[dict[str, bytes | None]]
) -> None:
    stamps = _all_stamps(ztf_cutouts, lsst_cutouts)
    assert len(stamps) > 300
    for data in stamps:
        raw = gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data
        assert _decode_fast(raw) is not None, "the fast path must handle every real stamp layout"
        fast, slow = decode_stamp(data), decode_stamp(data, fast=False)
        assert fast.shape == slow.shape and fast.dtype == slow.dtype == np.float32
        assert np.array_equal(fast, slow, equal_nan=True)


def test_cutout_batch_stacks_alerts(ztf_cutouts: list[dict[str, bytes | None]]) -> None:
    batch, flags = cutout_batch([*ztf_cutouts[:5], {}])
    assert batch.shape == (6, CHANNELS, SIZE, SIZE)
    assert np.array_equal(batch[0], cutout_tensor(ztf_cutouts[0])[0])
    assert len(flags) == 6 and "cutout_missing_science" in flags[5]
    assert not batch[5, :3].any() and (batch[5, 3] == 1).all()


# ---------------------------------------------------------------------------------------------
# Bad and missing stamps
# ---------------------------------------------------------------------------------------------


def _good_stamp(seed: int = 0, shape: tuple[int, int] = (63, 63)) -> bytes:
    rng = np.random.default_rng(seed)
    img = rng.normal(100.0, 5.0, shape).astype(np.float32)
    img[shape[0] // 2, shape[1] // 2] += 500.0
    return encode_stamp(img)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"not a fits file at all" * 200,
        b"\x1f\x8b\x08\x00garbage",
        _good_stamp()[:100],  # truncated gzip
        gzip.compress(b"x" * 5000),  # gzip of something that is not FITS
        gzip.decompress(_good_stamp())[:4000],  # FITS header complete, data truncated
        gzip.compress(b"\0" * (20 * 1024 * 1024)),  # decompression bomb
    ],
    ids=["empty", "random", "bad-gzip", "truncated-gzip", "gzip-not-fits", "truncated-fits", "bomb"],
)
def test_decode_stamp_raises_typed_error(data: bytes) -> None:
    with pytest.raises(CutoutError) as info:
        decode_stamp(data)
    assert isinstance(info.value, BalBrokerError) and info.value.reason == "bad_cutout"


def test_decode_stamp_rejects_non_bytes() -> None:
    with pytest.raises(CutoutError):
        decode_stamp(None)  # type: ignore[arg-type]


def test_missing_and_corrupt_stamps_give_zeros_and_flags() -> None:
    tensor, flags = cutout_tensor({"science": None, "template": b"garbage", "difference": _good_stamp()[:50]})
    assert set(flags) >= {"cutout_missing_science", "cutout_bad_template", "cutout_bad_difference"}
    assert not tensor[:3].any() and (tensor[3] == 1).all() and np.isfinite(tensor).all()

    tensor, flags = cutout_tensor({"science": _good_stamp(), "template": _good_stamp(1)})
    assert flags == ["cutout_missing_difference"]
    assert tensor[0].any() and tensor[1].any() and not tensor[2].any()
    assert np.allclose(tensor[3], 1 / 3)


def test_nan_pixels_are_zeroed_masked_and_flagged() -> None:
    img = np.random.default_rng(3).normal(50.0, 4.0, (63, 63)).astype(np.float32)
    img[20:40, 25] = np.nan
    img[0, 0] = np.inf  # outside the central crop: not flagged, but still harmless
    stamp = encode_stamp(img)
    tensor, flags = cutout_tensor({"science": stamp, "template": stamp, "difference": stamp})
    assert np.isfinite(tensor).all()
    assert {"cutout_nan_science", "cutout_nan_template", "cutout_nan_difference"} <= set(flags)
    off = SIZE // 2 - 63 // 2  # stamp pixel (y, x) -> tensor (y + off, x + off)
    assert (tensor[:3, 20 + off : 40 + off, 25 + off] == 0).all()
    assert (tensor[3, 20 + off : 40 + off, 25 + off] == 1).all()
    assert (tensor[3, 5, 5] == 0) and (tensor[3, 2, 25 + off] == 0)  # stamp row 17: not NaN


def test_unknown_norm_is_a_programming_error() -> None:
    with pytest.raises(ValueError):
        cutout_tensor({"science": _good_stamp()}, norm="nope")  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Encoding, and the reader's other paths
# ---------------------------------------------------------------------------------------------


def test_encode_roundtrip_is_exact_and_standard() -> None:
    from astropy.io import fits

    img = np.random.default_rng(0).normal(size=(63, 61)).astype(np.float32)
    img[3, 4] = np.nan
    for compress in (True, False):
        data = encode_stamp(img, compress=compress)
        assert (data[:2] == b"\x1f\x8b") == compress
        assert np.array_equal(decode_stamp(data), img, equal_nan=True)
        assert np.array_equal(decode_stamp(data, fast=False), img, equal_nan=True)
        raw = gzip.decompress(data) if compress else data
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # a standard-conforming header: astropy does not complain
            with fits.open(io.BytesIO(raw)) as hdul:
                hdul.verify("exception")
    assert encode_stamp(img) == encode_stamp(img), "encoding must be deterministic"
    with pytest.raises(ValueError):
        encode_stamp(np.zeros(5))


def _fits_bytes(hdus: list[Any]) -> bytes:
    from astropy.io import fits

    buf = io.BytesIO()
    fits.HDUList(hdus).writeto(buf)
    return buf.getvalue()


def test_integer_and_double_images_match_astropy() -> None:
    from astropy.io import fits

    rng = np.random.default_rng(5)
    phys = rng.normal(1000.0, 50.0, (40, 40))
    cases = []
    h16 = fits.PrimaryHDU(phys.copy())
    h16.scale("int16", bscale=0.25, bzero=1000.0)
    cases.append(_fits_bytes([h16]))
    cases.append(_fits_bytes([fits.PrimaryHDU(rng.integers(0, 255, (40, 40)).astype(np.uint8))]))
    cases.append(_fits_bytes([fits.PrimaryHDU(rng.integers(-(2**30), 2**30, (40, 40)).astype(np.int32))]))
    cases.append(_fits_bytes([fits.PrimaryHDU(phys)]))  # BITPIX -64
    for raw in cases:
        assert _decode_fast(raw) is not None
        for data in (raw, gzip.compress(raw)):
            fast, slow = decode_stamp(data), decode_stamp(data, fast=False)
            assert fast.dtype == np.float32 and fast.shape == (40, 40)
            np.testing.assert_allclose(fast, slow, rtol=1e-6)


def test_blank_integer_pixels_become_nan() -> None:
    cards = [
        "SIMPLE  =                    T",
        "BITPIX  =                   16",
        "NAXIS   =                    2",
        "NAXIS1  =                    3",
        "NAXIS2  =                    2",
        "BZERO   =                 10.0",
        "BSCALE  =                  2.0",
        "BLANK   =                -9999 / undefined pixel",
        "END",
    ]
    header = b"".join(c.ljust(80).encode() for c in cards)
    header += b" " * (-len(header) % 2880)
    body = np.array([[1, 2, -9999], [4, 5, 6]], dtype=">i2").tobytes()
    raw = header + body + b"\0" * (-len(body) % 2880)
    out = decode_stamp(raw)
    expected = np.array([[12, 14, np.nan], [18, 20, 22]], dtype=np.float32)
    assert np.array_equal(out, expected, equal_nan=True)
    assert np.array_equal(decode_stamp(raw, fast=False), expected, equal_nan=True)


def test_unusual_layouts_fall_back_to_astropy() -> None:
    from astropy.io import fits

    img = np.arange(24 * 24, dtype=np.int32).reshape(24, 24)
    comp = _fits_bytes([fits.PrimaryHDU(), fits.CompImageHDU(img, compression_type="RICE_1")])
    assert _decode_fast(comp) is None  # image not in the primary HDU
    assert np.array_equal(decode_stamp(comp), img.astype(np.float32))
    cube = _fits_bytes([fits.PrimaryHDU(np.ones((1, 8, 8), dtype=np.float32))])
    assert _decode_fast(cube) is None and decode_stamp(cube).shape == (8, 8)
    with pytest.raises(CutoutError):
        decode_stamp(_fits_bytes([fits.PrimaryHDU(np.ones((2, 8, 8), dtype=np.float32))]))
    with pytest.raises(CutoutError):
        decode_stamp(_fits_bytes([fits.PrimaryHDU()]))  # no image anywhere


# ---------------------------------------------------------------------------------------------
# Geometry and normalisation
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", [63, 45, 36, 33, 32, 30, 29, 21])
def test_detection_pixel_lands_at_the_tensor_centre(side: int) -> None:
    img = np.random.default_rng(side).normal(0.0, 1.0, (side, side)).astype(np.float32)
    img[side // 2, side // 2] = 1000.0
    tensor, _ = stack_stamps({"science": img, "template": img, "difference": img})
    assert np.unravel_index(np.argmax(tensor[0]), tensor[0].shape) == (SIZE // 2, SIZE // 2)
    padded = side < SIZE
    assert bool(tensor[3].any()) == padded


def test_global_norm_is_unit_free_and_keeps_relative_brightness() -> None:
    rng = np.random.default_rng(7)
    y, x = np.mgrid[0:63, 0:63]
    psf = np.exp(-((y - 31) ** 2 + (x - 31) ** 2) / (2 * 1.2**2))
    sci = (200.0 + 800.0 * psf + rng.normal(0, 5.0, (63, 63))).astype(np.float32)
    tmpl = (200.0 + 200.0 * psf + rng.normal(0, 1.5, (63, 63))).astype(np.float32)
    diff = (600.0 * psf + rng.normal(0, 5.0, (63, 63))).astype(np.float32)
    images = {"science": sci, "template": tmpl, "difference": diff}
    g, _ = stack_stamps(images, norm="global")
    # Changing units (DN -> nJy) changes nothing: the tensor is in units of the noise.
    g2, _ = stack_stamps({k: v * 37.5 for k, v in images.items()}, norm="global")
    np.testing.assert_allclose(g, g2, atol=2e-5)
    # One scale for the tensor: the template's fainter source stays fainter than the science one.
    c = SIZE // 2
    assert g[0, c, c] > g[1, c, c] + 1.0
    # A brighter source gives larger values (bright vs faint stays distinguishable).
    bright, _ = stack_stamps({**images, "science": sci + 4000.0 * psf.astype(np.float32)}, norm="global")
    assert bright[0, c, c] > g[0, c, c] + 1.0
    # per_image scales each image by its own noise: the deep template's source is boosted.
    p, _ = stack_stamps(images, norm="per_image")
    assert p[1, c, c] > g[1, c, c] + 1.0
    assert np.isfinite(p).all()


def test_flat_images_do_not_divide_by_zero() -> None:
    flat = np.full((63, 63), 7.0, dtype=np.float32)
    for norm in ("global", "per_image"):
        tensor, flags = stack_stamps({"science": flat, "template": flat, "difference": flat}, norm=norm)
        assert np.isfinite(tensor).all() and not tensor[:3].any()
        assert any(f.startswith("cutout_flat") for f in flags)
