"""The spectral branch: preprocessing of SDSS-like spectra, kernel-PCA embedding and classifier, and
their ONNX exports (parity with the numpy/sklearn references). Toy spectra are made here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from training.spectra import (
    C_KMS,
    CIV_REST,
    N_GRID,
    REST_GRID,
    REST_WINDOW,
    RedshiftOutOfRangeError,
    Spectrum,
    SpectrumError,
    SpectrumQualityError,
    fit_spectral_classifier,
    fit_spectral_embedding,
    preprocess_batch,
    preprocess_spectrum,
    spectral_pipeline_onnx,
    velocity_to_rest_wavelength,
)

rest_grid = np.asarray(REST_GRID)  # bin centres, A rest
SDSS_LOGLAM = np.arange(np.log10(3800.0), np.log10(9200.0), 1e-4)  # SDSS-I/II: 69 km/s pixels


def toy_spectrum(
    z: float,
    rng: np.random.Generator,
    *,
    trough: tuple[float, float, float] | None = None,
    snr: float = 8.0,
    bad_frac: float = 0.02,
    loglam: np.ndarray = SDSS_LOGLAM,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Power law f_lambda ~ lambda^-1.5 (f_nu ~ nu^-0.5), Gaussian C IV emission (FWHM 5,000 km/s,
    peak = continuum), optional trough (centre km/s, sigma km/s, depth); noise at ``snr``; random
    masked pixels whose flux is set to garbage."""
    lam = 10 ** loglam / (1 + z)
    cont = (lam / 1600.0) ** -1.5
    r2 = (CIV_REST / lam) ** 2
    v = C_KMS * (r2 - 1) / (r2 + 1)  # outflow velocity, positive blueward
    f = cont * (1.0 + np.exp(-0.5 * (v / (5000.0 / 2.355)) ** 2))
    if trough is not None:
        vc, sig, depth = trough
        f = f * (1.0 - depth * np.exp(-0.5 * ((v - vc) / sig) ** 2))
    sigma = cont / snr
    flux = 3.0 * (f + rng.normal(0.0, 1.0, f.size) * sigma)
    ivar = 1.0 / (3.0 * sigma) ** 2
    and_mask = np.zeros(f.size, dtype=np.int32)
    bad = rng.random(f.size) < bad_frac
    and_mask[bad] = 1 << 23
    ivar = np.where(bad, 0.0, ivar)
    flux = np.where(bad, 1e4, flux)  # garbage under the mask must not leak through
    return loglam, flux, ivar, and_mask


def _bins(lo: float, hi: float) -> np.ndarray:
    return (rest_grid >= lo) & (rest_grid <= hi)


# ----------------------------------------------------------------------------- preprocessing


def test_preprocess_shape_normalisation_and_bad_pixels() -> None:
    rng = np.random.default_rng(0)
    z = 2.4
    loglam, flux, ivar, mask = toy_spectrum(z, rng, bad_frac=0.05)
    # a contiguous bad stretch inside the C IV line as well
    lam_rest = 10 ** loglam / (1 + z)
    hole = (lam_rest > 1545) & (lam_rest < 1552)
    ivar[hole] = 0.0
    flux[hole] = -500.0
    x, q = preprocess_spectrum(loglam, flux, ivar, mask, z)
    assert x.shape == (N_GRID,) and np.isfinite(x).all()
    assert q["ok"] and q["n_interpolated"] >= hole.sum() and q["n_filled"] == 0 and q["frac_covered"] == 1.0
    assert q["n_clipped"] == 0  # the 1e4 / -500 garbage never reached the grid
    # continuum ~1 in the normalisation window, and the power law's blue rise elsewhere
    assert abs(np.median(x[_bins(1600, 1650)]) - 1.0) < 0.05
    assert abs(np.median(x[_bins(1270, 1300)]) - (1285 / 1625) ** -1.5) < 0.1
    # the C IV emission peak (interpolated across the hole) is ~2x continuum
    peak = x[_bins(1540, 1558)].max()
    assert 1.6 < peak < 2.6
    # and the same spectrum without bad pixels gives nearly the same vector
    clean = toy_spectrum(z, np.random.default_rng(0), bad_frac=0.0)
    x_clean, _ = preprocess_spectrum(*clean, z)
    assert np.median(np.abs(x - x_clean)) < 0.05


def test_trough_is_depressed() -> None:
    z = 2.0
    non_bal, _ = preprocess_spectrum(*toy_spectrum(z, np.random.default_rng(1)), z)
    bal, _ = preprocess_spectrum(*toy_spectrum(z, np.random.default_rng(1), trough=(10_000.0, 2000.0, 0.8)), z)
    lo, hi = velocity_to_rest_wavelength(12_000.0), velocity_to_rest_wavelength(8_000.0)
    sel = _bins(lo, hi)
    assert sel.sum() >= 8  # a 4,000 km/s stretch spans >= 8 grid bins of ~316 km/s
    assert bal[sel].mean() < 0.45 * non_bal[sel].mean()
    far = _bins(1560, 1650)  # untouched redward of C IV
    assert np.abs(bal[far] - non_bal[far]).mean() < 0.05


def test_redshift_range_and_quality_errors() -> None:
    rng = np.random.default_rng(2)
    arrays = toy_spectrum(2.0, rng)
    for z in (1.5, 3.7, float("nan")):
        with pytest.raises(RedshiftOutOfRangeError) as exc:
            preprocess_spectrum(*arrays, z)
        assert exc.value.reason == "z_out_of_range" and isinstance(exc.value, ValueError)
    lg, fl, iv, am = arrays
    with pytest.raises(SpectrumQualityError) as exc:
        preprocess_spectrum(lg, fl, np.where(np.arange(iv.size) % 3 == 0, iv, 0.0), am, 2.0)
    assert exc.value.reason == "too_few_good_pixels"
    with pytest.raises(SpectrumQualityError) as exc:  # continuum window all negative
        lam_rest = 10 ** lg / 3.0
        preprocess_spectrum(lg, np.where(lam_rest > 1590, -1.0, fl), iv, am, 2.0)
    assert exc.value.reason == "no_continuum"
    with pytest.raises(SpectrumQualityError) as exc:  # the spectrum stops in the middle of C IV
        cut = 10 ** lg / 3.0 < 1500
        preprocess_spectrum(lg[cut], fl[cut], iv[cut], am[cut], 2.0)
    assert exc.value.reason in ("no_continuum", "poor_coverage")
    with pytest.raises(ValueError):
        preprocess_spectrum(lg, fl[:-1], iv, am, 2.0)


def test_low_redshift_blue_fill_and_input_types() -> None:
    """At z = 1.68 an SDSS-I spectrum starts at 1420 A rest: the blue bins are filled flat, and the
    arrays of other producers (float32, no mask, unsorted, BOSS range) are accepted."""
    rng = np.random.default_rng(3)
    z = 1.68
    lg, fl, iv, am = toy_spectrum(z, rng)
    x, q = preprocess_spectrum(lg, fl, iv, am, z)
    n_missing = int((rest_grid < 3800.0 / (1 + z)).sum())
    assert q["n_filled"] >= n_missing - 1 and q["frac_covered"] < 0.6
    assert np.isfinite(x).all() and np.allclose(x[: n_missing - 1], x[0])
    order = rng.permutation(lg.size)
    x2, _ = preprocess_spectrum(lg[order].astype(np.float32), fl[order].astype(np.float32),
                                iv[order].astype(np.float32), None, z)
    assert np.isfinite(x2).all() and np.median(np.abs(x2 - x)) < 0.05
    boss = np.arange(np.log10(3600.0), np.log10(10400.0), 1e-4)
    _, q3 = preprocess_spectrum(*toy_spectrum(z, rng, loglam=boss), z)
    assert q3["n_filled"] < q["n_filled"]


def test_preprocess_batch_mask_and_reasons() -> None:
    rng = np.random.default_rng(4)
    specs = [Spectrum(*toy_spectrum(2.0, rng)), toy_spectrum(2.5, rng), dict(zip(
        ("loglam", "flux", "ivar", "and_mask"), toy_spectrum(3.0, rng), strict=True))]
    X, ok, q = preprocess_batch(specs, [2.0, 4.5, 3.0])
    assert X.shape == (3, N_GRID) and ok.tolist() == [True, False, True]
    assert np.isnan(X[1]).all() and q[1]["reason"] == "z_out_of_range" and q[0]["ok"]


# ---------------------------------------------------------------------------- embedding + ONNX


def _toy_dataset(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n preprocessed toy spectra, half BAL (troughs 4,000-20,000 km/s, sigma 1,000-3,000 km/s, depth
    0.3-0.9) at random z and S/N 3-10."""
    rng = np.random.default_rng(seed)
    y = (np.arange(n) % 2).astype(int)
    zs = rng.uniform(1.7, 3.5, n)
    specs = []
    for z, lab in zip(zs, y, strict=True):
        trough = (rng.uniform(4000, 20000), rng.uniform(1000, 3000), rng.uniform(0.3, 0.9)) if lab else None
        specs.append(toy_spectrum(z, rng, trough=trough, snr=rng.uniform(3, 10)))
    X, ok, _ = preprocess_batch(specs, zs)
    assert ok.all()
    return X, y


@pytest.fixture(scope="module")
def toy_data() -> tuple[np.ndarray, np.ndarray]:
    return _toy_dataset(240, seed=5)


def test_kernel_pca_matches_sklearn_and_onnx(toy_data: tuple[np.ndarray, np.ndarray], tmp_path: Path) -> None:
    import onnxruntime as ort
    from sklearn.decomposition import KernelPCA

    X, y = toy_data
    emb = fit_spectral_embedding(X[:160], n_components=16, seed=0, y=y[:160], n_landmarks=120)
    assert emb.landmarks.shape == (120, N_GRID) and emb.n_components == 16
    assert abs(y[:160][emb.landmark_index].mean() - 0.5) < 1e-9  # class-balanced landmarks
    # the numpy transform is sklearn's KernelPCA.transform
    ref = KernelPCA(16, kernel="rbf", gamma=emb.gamma, eigen_solver="dense").fit(emb.landmarks)
    X32 = X.astype(np.float32).astype(np.float64)
    np.testing.assert_allclose(emb.transform(X), ref.transform(X32), atol=1e-9)
    # ONNX parity (float32 in/out, double inside)
    path = tmp_path / "spectral_embedding.onnx"
    emb.to_onnx(path)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [i.name for i in sess.get_inputs()] == ["flux"] and [o.name for o in sess.get_outputs()] == ["embedding"]
    out = sess.run(None, {"flux": X.astype(np.float32)})[0]
    assert out.shape == (len(X), 16) and out.dtype == np.float32
    assert np.abs(out - emb.transform(X)).max() <= 1e-5
    # save/load round trip
    emb.save(tmp_path / "emb.npz")
    again = type(emb).load(tmp_path / "emb.npz")
    np.testing.assert_array_equal(again.transform(X[:5]), emb.transform(X[:5]))


def test_onnx_size_with_500_landmarks(tmp_path: Path) -> None:
    import onnxruntime as ort

    rng = np.random.default_rng(6)
    X = 1.0 + 0.2 * rng.normal(size=(700, N_GRID))
    emb = fit_spectral_embedding(X, n_components=16, seed=1)
    assert emb.landmarks.shape[0] == 500
    path = tmp_path / "e.onnx"
    emb.to_onnx(path)
    assert path.stat().st_size < 1_000_000
    out = ort.InferenceSession(str(path)).run(None, {"flux": X[:50].astype(np.float32)})[0]
    assert np.abs(out - emb.transform(X[:50])).max() <= 1e-5
    # the joined flux -> p_spec model, with a classifier fitted under another seed
    clf = fit_spectral_classifier(emb.transform(X), (rng.random(len(X)) < 0.3).astype(int), seed=7)
    merged = spectral_pipeline_onnx(emb, clf, tmp_path / "pipeline.onnx")
    props = {p.key: p.value for p in merged.metadata_props}
    assert props["embedding_seed"] == "1" and props["classifier_seed"] == "7"
    assert (tmp_path / "pipeline.onnx").stat().st_size < 1_000_000


def test_classifier_separates_toy_bals_and_onnx_parity(toy_data: tuple[np.ndarray, np.ndarray],
                                                       tmp_path: Path) -> None:
    import onnxruntime as ort
    from sklearn.metrics import roc_auc_score

    X, y = toy_data
    tr, te = slice(0, 160), slice(160, None)
    emb = fit_spectral_embedding(X[tr], n_components=16, seed=0, y=y[tr])
    clf = fit_spectral_classifier(emb.transform(X[tr]), y[tr], seed=0)
    p = clf.predict_proba(emb.transform(X[te]))
    auc = roc_auc_score(y[te], p)
    assert auc > 0.9, auc

    path = tmp_path / "spectral_classifier.onnx"
    clf.to_onnx(path)
    sess = ort.InferenceSession(str(path))
    assert [o.name for o in sess.get_outputs()] == ["label", "probabilities"]
    e32 = emb.transform(X).astype(np.float32)
    label, proba = sess.run(None, {"embedding": e32})
    assert proba.shape == (len(X), 2)
    assert np.abs(proba[:, 1] - clf.predict_proba(e32)).max() <= 1e-5
    assert (label == (clf.pipeline.predict(e32))).all()

    merged = tmp_path / "spectral_pipeline.onnx"
    spectral_pipeline_onnx(emb, clf, merged)
    s2 = ort.InferenceSession(str(merged))
    e_out, _, p_out = s2.run(None, {"flux": X.astype(np.float32)})
    assert np.abs(e_out - emb.transform(X)).max() <= 1e-5
    assert np.abs(p_out[:, 1] - clf.predict_proba(emb.transform(X))).max() <= 1e-5


def test_fit_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        fit_spectral_embedding(np.full((10, N_GRID), np.nan), n_components=3)
    with pytest.raises(ValueError):
        fit_spectral_classifier(np.zeros((4, 2)), np.zeros(4))
    assert issubclass(RedshiftOutOfRangeError, SpectrumError)
    assert REST_WINDOW == (1260.0, 1650.0)
