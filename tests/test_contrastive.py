"""Contrastive image encoder (training/contrastive.py) and the synthetic stamps it trains on
(training/synthetic/stamps.py). Tiny sizes and epochs: the whole file runs in well under a minute."""

from __future__ import annotations

import math
import time
from pathlib import Path

import fastavro
import numpy as np
import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("onnxruntime")

from broker_plugin.photometry.cutouts import CHANNELS, SIZE, cutout_batch, stack_stamps  # noqa: E402
from training.contrastive import (  # noqa: E402
    ONNX_INPUT,
    ONNX_OUTPUT,
    AugmentConfig,
    ContrastiveConfig,
    Encoder,
    ProjectionHead,
    augment,
    embed,
    export_encoder_onnx,
    nt_xent_loss,
    onnx_parity,
    synthetic_tensors,
    train_and_evaluate,
    train_encoder,
)
from training.synthetic.stamps import ARTIFACT_SUBTYPES, KINDS, render_dataset, render_triplet  # noqa: E402

TINY = ContrastiveConfig(epochs=2, batch_size=16, width=8, embed_dim=8, proj_dim=8, seed=3)


# ---------------------------------------------------------------------------------------------
# NT-Xent
# ---------------------------------------------------------------------------------------------


def _naive_nt_xent(z1: np.ndarray, z2: np.ndarray, tau: float) -> float:
    """NT-Xent written out with loops, straight from the SimCLR definition."""
    views = [*z1, *z2]
    n2 = len(views)
    n = n2 // 2

    def cos(a: np.ndarray, b: np.ndarray) -> float:
        return float(np.dot(a, b) / (math.sqrt(np.dot(a, a)) * math.sqrt(np.dot(b, b))))

    total = 0.0
    for i in range(n2):
        pos = (i + n) % n2
        denom = 0.0
        for k in range(n2):
            if k != i:
                denom += math.exp(cos(views[i], views[k]) / tau)
        total += -math.log(math.exp(cos(views[i], views[pos]) / tau) / denom)
    return total / n2


@pytest.mark.parametrize("tau", [0.1, 0.5, 1.0])
def test_nt_xent_matches_the_naive_definition(tau: float) -> None:
    rng = np.random.default_rng(0)
    z1, z2 = rng.normal(size=(3, 4)), rng.normal(size=(3, 4))
    got = float(nt_xent_loss(torch.tensor(z1), torch.tensor(z2), tau))
    assert abs(got - _naive_nt_xent(z1, z2, tau)) < 1e-6


def test_nt_xent_is_lower_for_aligned_views() -> None:
    g = torch.Generator().manual_seed(0)
    z1 = torch.randn(32, 16, generator=g)
    aligned = nt_xent_loss(z1, z1 + 0.05 * torch.randn(32, 16, generator=g), 0.2)
    unrelated = nt_xent_loss(z1, torch.randn(32, 16, generator=g), 0.2)
    assert float(aligned) < float(unrelated) - 1.0
    with pytest.raises(ValueError):
        nt_xent_loss(z1, z1[:5], 0.2)


# ---------------------------------------------------------------------------------------------
# Augmentations
# ---------------------------------------------------------------------------------------------


def test_augment_keeps_shape_is_seeded_and_masks_consistently() -> None:
    x = torch.randn(12, CHANNELS, SIZE, SIZE)
    x[:, 3] = 0.0
    cfg = AugmentConfig(pixel_mask_max=0.2, block_prob=1.0)
    a = augment(x, cfg, torch.Generator().manual_seed(1))
    b = augment(x, cfg, torch.Generator().manual_seed(1))
    c = augment(x, cfg, torch.Generator().manual_seed(2))
    assert a.shape == x.shape and torch.equal(a, b) and not torch.equal(a, c)
    mask = a[:, 3]
    assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0 and float(mask.mean()) > 0.0
    # Runtime convention: a fully invalid pixel holds 0 in every image channel.
    assert float(a[:, :3][(mask == 1.0)[:, None].expand(-1, 3, -1, -1)].abs().max()) == 0.0


def test_geometric_augment_is_a_dihedral_transform() -> None:
    x = torch.randn(20, CHANNELS, SIZE, SIZE)
    cfg = AugmentConfig(max_shift=0, pixel_mask_max=0.0, block_prob=0.0, noise_max=0.0)
    out = augment(x, cfg, torch.Generator().manual_seed(0))
    seen = set()
    for i in range(len(x)):
        matches = [
            (r, flip)
            for r in range(4)
            for flip in (False, True)
            if torch.equal(
                out[i], torch.rot90(x[i], r, dims=(1, 2)).flip(2) if flip else torch.rot90(x[i], r, dims=(1, 2))
            )
        ]
        assert matches, f"sample {i} is not a rotation/flip of its input"
        seen.add(matches[0])
    assert len(seen) > 2


# ---------------------------------------------------------------------------------------------
# Training, embedding, ONNX
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_data() -> tuple[np.ndarray, np.ndarray]:
    return synthetic_tensors(48, np.random.default_rng(0))


@pytest.fixture(scope="module")
def tiny_encoder(tiny_data: tuple[np.ndarray, np.ndarray]) -> Encoder:
    calls: list[tuple[int, int, float]] = []
    enc, hist = train_encoder(tiny_data[0], TINY, progress=lambda e, n, loss: calls.append((e, n, loss)))
    assert [c[0] for c in calls] == [1, 2] and all(math.isfinite(c[2]) for c in calls)
    assert len(hist["loss"]) == 2 and hist["seconds"] > 0
    return enc


def test_training_is_deterministic(tiny_data: tuple[np.ndarray, np.ndarray], tiny_encoder: Encoder) -> None:
    again, _ = train_encoder(tiny_data[0], TINY)
    for p, q in zip(tiny_encoder.state_dict().values(), again.state_dict().values(), strict=True):
        assert torch.equal(p, q)
    other, _ = train_encoder(tiny_data[0], ContrastiveConfig(**{**TINY.__dict__, "seed": 4}))
    assert not torch.equal(next(iter(other.parameters())), next(iter(tiny_encoder.parameters())))


def test_encoder_and_head_shapes(tiny_encoder: Encoder) -> None:
    x = torch.randn(5, CHANNELS, SIZE, SIZE)
    h = tiny_encoder(x)
    assert h.shape == (5, TINY.embed_dim)
    assert ProjectionHead(TINY.embed_dim, 16, 4)(h).shape == (5, 4)
    assert embed(tiny_encoder, x.numpy()).shape == (5, TINY.embed_dim)


def _real_tensors(files: list[Path], limit: int = 40) -> np.ndarray:
    cut = []
    for f in files[:limit]:
        with f.open("rb") as fh:
            for r in fastavro.reader(fh):
                cut.append(
                    {
                        k: (r.get(n) or {}).get("stampData")
                        for k, n in (
                            ("science", "cutoutScience"),
                            ("template", "cutoutTemplate"),
                            ("difference", "cutoutDifference"),
                        )
                    }
                )
    return cutout_batch(cut)[0]


def test_onnx_export_matches_torch(
    tiny_encoder: Encoder, tiny_data: tuple[np.ndarray, np.ndarray], tmp_path: Path, ztf_alert_files: list[Path]
) -> None:
    import onnx
    import onnxruntime as ort

    path = export_encoder_onnx(tiny_encoder, tmp_path / "encoder.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["encoder.onnx"], "must be one self-contained file"
    model = onnx.load(str(path))
    assert [i.name for i in model.graph.input] == [ONNX_INPUT]
    assert [o.name for o in model.graph.output] == [ONNX_OUTPUT]
    rng = np.random.default_rng(1)
    random_in = rng.normal(0.0, 2.0, (7, CHANNELS, SIZE, SIZE)).astype(np.float32)
    assert onnx_parity(tiny_encoder, path, random_in) <= 1e-4
    assert onnx_parity(tiny_encoder, path, tiny_data[0]) <= 1e-4
    real = _real_tensors(ztf_alert_files)
    assert len(real) > 10 and onnx_parity(tiny_encoder, path, real) <= 1e-4
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for n in (1, 3):  # dynamic batch axis
        assert sess.run([ONNX_OUTPUT], {ONNX_INPUT: random_in[:n]})[0].shape == (n, TINY.embed_dim)


def test_train_and_evaluate_reports_metrics(tmp_path: Path) -> None:
    cfg = ContrastiveConfig(batch_size=16, width=8, embed_dim=8, proj_dim=8)
    m = train_and_evaluate(n_train=48, n_test=24, epochs=1, seed=1, config=cfg, onnx_path=tmp_path / "f.onnx")
    for key in ("knn_acc_trained", "knn_acc_random", "knn_acc_raw_pixels", "train_seconds", "loss_last_epoch"):
        assert key in m
    assert 0.0 <= m["knn_acc_trained"] <= 1.0 and 0.0 <= m["knn_acc_random"] <= 1.0
    assert m["onnx_max_abs_diff"] <= 1e-4
    assert all(isinstance(v, (int, float, str, type(None))) for v in m.values()), "metrics must be JSON-able"


# ---------------------------------------------------------------------------------------------
# Synthetic stamps
# ---------------------------------------------------------------------------------------------


def _peak(a: np.ndarray) -> tuple[int, int]:
    return tuple(int(i) for i in np.unravel_index(np.nanargmax(a), a.shape))  # type: ignore[return-value]


def _near_centre(p: tuple[int, int], size: int = 63, tol: int = 1) -> bool:
    return abs(p[0] - size // 2) <= tol and abs(p[1] - size // 2) <= tol


def _sharpness(a: np.ndarray, p: tuple[int, int]) -> float:
    """Peak over the mean of its 8 neighbours: ~1.3-3 for a PSF at 1.5-3" seeing, large for a CR."""
    y, x = p
    nb = a[y - 1 : y + 2, x - 1 : x + 2].sum() - a[y, x]
    return float(a[y, x] / (nb / 8.0))


def test_render_is_deterministic_and_well_formed() -> None:
    for kind in KINDS:
        a = render_triplet(kind, 18.0, np.random.default_rng(11))
        b = render_triplet(kind, 18.0, np.random.default_rng(11))
        c = render_triplet(kind, 18.0, np.random.default_rng(12))
        assert set(a) == {"science", "template", "difference"}
        for k in a:
            assert a[k].shape == (63, 63) and a[k].dtype == np.float32
            assert np.array_equal(a[k], b[k], equal_nan=True)
        assert not np.array_equal(a["science"], c["science"], equal_nan=True)
    assert render_triplet("point", 18.0, np.random.default_rng(0), size=41)["science"].shape == (41, 41)
    for bad in ("galaxy", "point:cosmic", "artifact:satellite"):
        with pytest.raises(ValueError):
            render_triplet(bad, 18.0, np.random.default_rng(0))


def test_noise_and_background_look_like_ztf() -> None:
    t = render_triplet("point", 21.5, np.random.default_rng(2))  # faint: the stamp is mostly sky
    sci, tmpl, diff = t["science"], t["template"], t["difference"]
    mad = [1.4826 * np.median(np.abs(a - np.median(a))) for a in (sci, tmpl, diff)]
    assert 50.0 < np.median(sci) < 400.0 and abs(np.median(tmpl) - np.median(sci)) < 10.0
    assert abs(np.median(diff)) < 2.0
    assert 2.0 < mad[0] < 15.0 and mad[1] < mad[0] / 2.0 and 2.0 < mad[2] < 15.0


def test_point_source_peaks_at_centre_and_is_psf_like() -> None:
    for seed in range(5):
        t = render_triplet("point", 16.0, np.random.default_rng(seed), ref_mag=17.5)
        # Field stars may be brighter than the target, but stay >= 6 px away and cancel in the
        # difference image: look in the central 9x9 of the science image, anywhere in the difference.
        core = t["science"][27:36, 27:36]
        p = _peak(core)
        assert _near_centre(p, size=9) and _near_centre(_peak(t["difference"]))
        assert _sharpness(core - np.median(t["science"]), p) < 4.0


def _ring_to_core(img: np.ndarray, c: int = 31) -> float:
    """Flux at 3-6 px from the centre over flux within 2 px: small for a PSF, large for a galaxy."""
    a = img - np.median(img)
    core = a[c - 2 : c + 3, c - 2 : c + 3].sum()
    return float((a[c - 6 : c + 7, c - 6 : c + 7].sum() - core) / core)


def test_nuclear_residual_has_either_sign_on_an_extended_host() -> None:
    signs, nuclear_rc, point_rc = set(), [], []
    for seed in range(12):
        t = render_triplet("nuclear", 17.0, np.random.default_rng(seed), ref_mag=15.0)
        d = t["difference"]
        signs.add(np.sign(float(d[30:33, 30:33].sum())))
        assert _near_centre(_peak(np.abs(d)))
        nuclear_rc.append(_ring_to_core(t["template"]))
        point_rc.append(
            _ring_to_core(render_triplet("point", 17.0, np.random.default_rng(seed), ref_mag=16.0)["template"])
        )
    assert signs >= {-1.0, 1.0}
    # The host is extended: the template has far more flux outside the PSF core than a star's.
    assert np.median(nuclear_rc) > 2.0 * np.median(point_rc)


def test_extended_transient_is_offset_from_the_host_nucleus() -> None:
    for seed in range(5):
        t = render_triplet("extended", 17.0, np.random.default_rng(seed), ref_mag=14.5)
        assert _near_centre(_peak(t["difference"]))
        # Field stars stay >= 6 px from the centre: look for the host nucleus within 7 px.
        win = t["template"][24:39, 24:39]
        host = _peak(win)
        dist = math.hypot(host[0] - 7, host[1] - 7)
        assert 1.0 <= dist <= 7.5, dist


def test_artifacts_have_their_signatures() -> None:
    rng = np.random.default_rng(4)
    for _ in range(4):
        t = render_triplet("artifact:cosmic", 17.0, rng)
        d = t["difference"]
        p = _peak(d)
        assert _near_centre(p, tol=2) and _sharpness(d, p) > 4.0  # sharper than any PSF
        assert t["template"][p] < np.median(t["template"]) + 10 * 1.4826 * np.median(
            np.abs(t["template"] - np.median(t["template"]))
        )
    t = render_triplet("artifact:edge", 17.0, rng)
    nan = [np.isnan(a) for a in t.values()]
    assert nan[0].any() and all(np.array_equal(nan[0], m) for m in nan)
    t = render_triplet("artifact:column", 15.0, rng)
    d = t["difference"]
    col_med = np.median(d, axis=0)
    assert np.argmax(np.abs(col_med)) in range(29, 34) and np.abs(col_med).max() > 5 * np.median(np.abs(col_med))
    t = render_triplet("artifact:dipole", 14.0, rng)
    d = t["difference"][25:38, 25:38]
    assert d.max() > 20 * 5.0 and d.min() < -20 * 5.0  # +/- lobes from the misaligned star
    assert {render_triplet("artifact", 18.0, np.random.default_rng(s))["science"].shape for s in range(3)} == {(63, 63)}
    assert len(ARTIFACT_SUBTYPES) == 4


def test_rendering_is_fast_and_stackable() -> None:
    t0 = time.perf_counter()
    triplets, labels = render_dataset(300, np.random.default_rng(0))
    elapsed = time.perf_counter() - t0
    assert elapsed < 10.0, f"300 triplets took {elapsed:.1f} s"  # ~1 ms each; generous for CI
    assert set(labels.tolist()) == set(KINDS)
    x = np.stack([stack_stamps(t)[0] for t in triplets[:20]])
    assert x.shape == (20, CHANNELS, SIZE, SIZE) and np.isfinite(x).all()


def test_synthetic_stamps_survive_the_fits_codec() -> None:
    from broker_plugin.photometry.cutouts import cutout_tensor, encode_stamp

    t = render_triplet("artifact:edge", 18.0, np.random.default_rng(9))
    via_bytes, flags = cutout_tensor({k: encode_stamp(v) for k, v in t.items()})
    direct, _ = stack_stamps(t)
    assert np.array_equal(via_bytes, direct) and "cutout_nan_science" in flags
