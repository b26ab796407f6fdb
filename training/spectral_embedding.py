"""RBF kernel PCA on the preprocessed spectra and its hand-written ONNX graph (the spectral embedding).

:func:`fit_spectral_embedding`: RBF kernel PCA on at most ``n_landmarks`` (500) training
spectra, class-balanced when labels are given; gamma from the median heuristic (1 / median
squared distance between landmarks) so the kernel is neither ~1 everywhere nor ~0 off the
diagonal. The transform is exported as an ONNX graph written with
``onnx.helper`` (RBF via ``|x|^2 - 2 x L^T + |L|^2``, kernel centring with the fit-time column
means, projection on ``alphas / sqrt(lambdas)``): float32 input and output, double arithmetic
inside, landmarks stored as float32 (500 x 256 x 4 B = 512 kB). The numpy reference
(:meth:`SpectralEmbedding.transform`) rounds its input to float32 and uses the same float32-exact
landmarks, so it and onnxruntime agree to float32 output rounding (~1e-7), and it equals
sklearn's ``KernelPCA(kernel="rbf").fit(landmarks).transform`` to ~1e-12 (tested). The fit is the
same algorithm as sklearn's (centred kernel, top eigenpairs, sklearn's sign convention) done
directly with LAPACK's bisection eigensolver, because sklearn's dense path uses the MRRR driver,
which takes seconds on a centred RBF kernel's cluster of near-zero eigenvalues. skl2onnx 1.20
does convert ``KernelPCA`` (checked: a float32 graph is within ~3e-7 of sklearn on the toy
spectra, a float64 one within 1e-13 at twice the size); the hand-written graph is kept because
it computes the kernel in double whatever the input precision (``|x|^2 - 2 x.L + |L|^2`` cancels
for near neighbours, the one place float32 could break the 1e-5 parity), stores the landmarks
in float32 (half the file), carries the preprocessing version in its metadata, and needs no
sklearn object to export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from .spectrum_preprocessing import NORM_WINDOW, PREPROCESS_VERSION, REST_GRID, REST_WINDOW

#: ONNX opset of the hand-written embedding graph (ReduceSum/ReduceMean take axes as an input).
ONNX_OPSET = 18
#: IR version written into the models; onnxruntime >= 1.16 reads it.
ONNX_IR_VERSION = 9
#: Names of the embedding graph's input and output.
EMBED_INPUT, EMBED_OUTPUT = "flux", "embedding"


def _sq_dists(X: np.ndarray, L: np.ndarray, l_sq: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances, in the operation order of the ONNX graph, clamped at 0."""
    xx = np.sum(X * X, axis=1, keepdims=True)
    return np.maximum(xx + (-2.0) * (X @ L.T) + l_sq[None, :], 0.0)


def median_heuristic_gamma(L: np.ndarray) -> float:
    """RBF gamma = 1 / median squared distance between distinct landmarks (1/n_features if degenerate)."""
    d2 = _sq_dists(L, L, np.sum(L * L, axis=1))
    iu = np.triu_indices(L.shape[0], k=1)
    med = float(np.median(d2[iu])) if iu[0].size else 0.0
    return 1.0 / med if med > 0 else 1.0 / L.shape[1]


@dataclass
class SpectralEmbedding:
    """A fitted RBF kernel PCA, stored as the arrays its transform needs (no sklearn at use time).

    ``transform(x) = centre(exp(-gamma |x - L|^2)) @ scaled_alphas`` where ``L`` are the landmarks,
    centring uses the fit-time column means ``k_col_mean`` and their mean ``k_all_mean``, and
    ``scaled_alphas = eigenvectors / sqrt(eigenvalues)`` (sklearn's KernelPCA.transform).
    """

    landmarks: np.ndarray  # (M, D) float64 holding float32-exact values
    gamma: float
    scaled_alphas: np.ndarray  # (M, k)
    eigenvalues: np.ndarray  # (k,)
    k_col_mean: np.ndarray  # (M,)
    k_all_mean: float
    landmark_index: np.ndarray  # (M,) rows of the fitting X used as landmarks
    seed: int = 0
    version: str = PREPROCESS_VERSION
    grid: np.ndarray = field(default_factory=lambda: REST_GRID.copy())

    @property
    def n_components(self) -> int:
        return int(self.scaled_alphas.shape[1])

    @property
    def n_features(self) -> int:
        return int(self.landmarks.shape[1])

    @property
    def landmark_sq(self) -> np.ndarray:
        return np.sum(self.landmarks * self.landmarks, axis=1)

    def kernel(self, X: np.ndarray) -> np.ndarray:
        """RBF kernel between ``X`` (rounded to float32, as the ONNX input is) and the landmarks."""
        X = np.asarray(X, dtype=np.float32).astype(np.float64)
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"expected (n, {self.n_features}) spectra, got {X.shape}")
        return np.exp(_sq_dists(X, self.landmarks, self.landmark_sq) * (-self.gamma))

    def transform(self, X: np.ndarray) -> np.ndarray:
        """The numpy reference transform (float64 output); the ONNX graph matches it to ~1e-7."""
        K = self.kernel(X)
        Kc = K - self.k_col_mean[None, :] - np.mean(K, axis=1, keepdims=True) + self.k_all_mean
        return Kc @ self.scaled_alphas

    # ---- ONNX
    def to_onnx(self, path: str | Path | None = None) -> Any:
        """The transform as an ONNX model (input ``flux`` float32 [N, D] -> ``embedding`` float32 [N, k]).

        Written with ``onnx.helper``: the graph casts to double, computes the RBF kernel against the
        float32-stored landmarks, centres it with the fit-time means and projects. Saved to ``path``
        (a single file, no external data) when given; the ``ModelProto`` is returned either way.
        """
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        M, D = self.landmarks.shape
        k = self.n_components
        inits = [
            numpy_helper.from_array(np.ascontiguousarray(self.landmarks.T.astype(np.float32)), "landmarks_T_f32"),
            numpy_helper.from_array(self.landmark_sq.reshape(1, M).astype(np.float64), "landmark_sq"),
            numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1"),
            numpy_helper.from_array(np.array(-2.0, dtype=np.float64), "minus_two"),
            numpy_helper.from_array(np.array(0.0, dtype=np.float64), "zero"),
            numpy_helper.from_array(np.array(-self.gamma, dtype=np.float64), "neg_gamma"),
            numpy_helper.from_array(self.k_col_mean.reshape(1, M).astype(np.float64), "k_col_mean"),
            numpy_helper.from_array(np.array(self.k_all_mean, dtype=np.float64), "k_all_mean"),
            numpy_helper.from_array(self.scaled_alphas.astype(np.float64), "scaled_alphas"),
        ]
        n = helper.make_node
        nodes = [
            n("Cast", [EMBED_INPUT], ["x"], to=TensorProto.DOUBLE),
            n("Cast", ["landmarks_T_f32"], ["landmarks_T"], to=TensorProto.DOUBLE),
            n("Mul", ["x", "x"], ["x_sq"]),
            n("ReduceSum", ["x_sq", "axis1"], ["xx"], keepdims=1),
            n("MatMul", ["x", "landmarks_T"], ["xl"]),
            n("Mul", ["xl", "minus_two"], ["m2xl"]),
            n("Add", ["xx", "m2xl"], ["d2a"]),
            n("Add", ["d2a", "landmark_sq"], ["d2b"]),
            n("Max", ["d2b", "zero"], ["d2"]),
            n("Mul", ["d2", "neg_gamma"], ["arg"]),
            n("Exp", ["arg"], ["K"]),
            n("Sub", ["K", "k_col_mean"], ["Kc1"]),
            n("ReduceMean", ["K", "axis1"], ["k_row_mean"], keepdims=1),
            n("Sub", ["Kc1", "k_row_mean"], ["Kc2"]),
            n("Add", ["Kc2", "k_all_mean"], ["Kc"]),
            n("MatMul", ["Kc", "scaled_alphas"], ["emb64"]),
            n("Cast", ["emb64"], [EMBED_OUTPUT], to=TensorProto.FLOAT),
        ]
        graph = helper.make_graph(
            nodes, "spectral_kernel_pca",
            [helper.make_tensor_value_info(EMBED_INPUT, TensorProto.FLOAT, ["N", D])],
            [helper.make_tensor_value_info(EMBED_OUTPUT, TensorProto.FLOAT, ["N", k])],
            initializer=inits,
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", ONNX_OPSET)],
                                  producer_name="bal-broker.training.spectra")
        model.ir_version = ONNX_IR_VERSION
        model.doc_string = (f"RBF kernel PCA of C IV-window spectra ({self.version}); "
                            f"{M} landmarks, gamma={self.gamma:.6g}, {k} components")
        helper.set_model_props(model, {
            "preprocess_version": self.version,
            "rest_window_A": f"{REST_WINDOW[0]},{REST_WINDOW[1]}",
            "n_grid": str(D),
            "norm_window_A": f"{NORM_WINDOW[0]},{NORM_WINDOW[1]}",
            "gamma": repr(self.gamma),
            "n_landmarks": str(M),
            "n_components": str(k),
            "embedding_seed": str(self.seed),
        })
        onnx.checker.check_model(model)
        if path is not None:
            onnx.save_model(model, str(path))
        return model

    # ---- persistence (numpy only, for training pipelines)
    def save(self, path: str | Path) -> None:
        """Write the arrays to an ``.npz`` file (see :meth:`load`)."""
        np.savez(path, landmarks=self.landmarks, gamma=self.gamma, scaled_alphas=self.scaled_alphas,
                 eigenvalues=self.eigenvalues, k_col_mean=self.k_col_mean, k_all_mean=self.k_all_mean,
                 landmark_index=self.landmark_index, seed=self.seed, version=self.version, grid=self.grid)

    @classmethod
    def load(cls, path: str | Path) -> SpectralEmbedding:
        with np.load(path, allow_pickle=False) as d:
            return cls(landmarks=d["landmarks"], gamma=float(d["gamma"]), scaled_alphas=d["scaled_alphas"],
                       eigenvalues=d["eigenvalues"], k_col_mean=d["k_col_mean"], k_all_mean=float(d["k_all_mean"]),
                       landmark_index=d["landmark_index"], seed=int(d["seed"]), version=str(d["version"]),
                       grid=d["grid"])


def _choose_landmarks(n: int, n_landmarks: int, y: np.ndarray | None, rng: np.random.Generator) -> np.ndarray:
    """Row indices of at most ``n_landmarks`` rows; with labels, as class-balanced as the classes allow.

    BALs are ~13% of quasars (SCIENCE.md): a uniform subsample would describe the kernel space mostly
    with non-BALs, so the minority class gets an equal share of the landmarks when it has enough rows.
    """
    if n <= n_landmarks:
        return np.arange(n)
    if y is None:
        return np.sort(rng.choice(n, size=n_landmarks, replace=False))
    y = np.asarray(y)
    classes = np.unique(y)
    per = n_landmarks // len(classes)
    chosen: list[np.ndarray] = []
    for c in classes:
        rows = np.flatnonzero(y == c)
        chosen.append(rng.choice(rows, size=min(per, rows.size), replace=False))
    picked = np.concatenate(chosen)
    rest = np.setdiff1d(np.arange(n), picked)
    extra = n_landmarks - picked.size
    if extra > 0:
        picked = np.concatenate((picked, rng.choice(rest, size=extra, replace=False)))
    return np.sort(picked)


def fit_spectral_embedding(
    X: np.ndarray,
    n_components: int = 16,
    seed: int = 0,
    *,
    y: np.ndarray | None = None,
    n_landmarks: int = 500,
    gamma: float | None = None,
) -> SpectralEmbedding:
    """Fit RBF kernel PCA on at most ``n_landmarks`` preprocessed spectra (equivalent to sklearn's
    ``KernelPCA(n_components, kernel="rbf", gamma=gamma).fit(landmarks)``).

    ``X``: (n, D) rows from :func:`preprocess_spectrum` (finite). ``y`` (optional labels) makes the
    landmark subsample class-balanced. ``gamma`` defaults to the median heuristic. The landmarks are
    rounded to float32 before the fit, so the exported graph (which stores them as float32) is the
    fitted model exactly.
    """
    from scipy.linalg import eigh

    X = np.asarray(X, dtype=np.float64)
    if X.ndim != 2 or not np.isfinite(X).all():
        raise ValueError("fit_spectral_embedding needs a finite 2-D array (drop failed rows first)")
    if n_components < 1 or n_components >= min(n_landmarks, X.shape[0]):
        raise ValueError(f"n_components={n_components} must be in [1, min(n_landmarks, n_rows) - 1]")
    rng = np.random.default_rng(seed)
    idx = _choose_landmarks(X.shape[0], n_landmarks, y, rng)
    L = X[idx].astype(np.float32).astype(np.float64)
    M = L.shape[0]
    g = median_heuristic_gamma(L) if gamma is None else float(gamma)
    l_sq = np.sum(L * L, axis=1)
    K_fit = np.exp(_sq_dists(L, L, l_sq) * (-g))
    col_mean = K_fit.mean(axis=0)
    all_mean = float(col_mean.mean())
    Kc = K_fit - col_mean[None, :] - col_mean[:, None] + all_mean  # K is symmetric: row means = col means
    # top eigenpairs of the centred kernel (LAPACK's bisection driver: fast for a few of many
    # near-degenerate eigenvalues, where the default MRRR driver is ~50x slower)
    lambdas, alphas = eigh(Kc, subset_by_index=[M - n_components, M - 1], driver="evx")
    lambdas, alphas = lambdas[::-1].copy(), alphas[:, ::-1].copy()
    lambdas[lambdas < 0] = 0.0  # round-off on a PSD matrix
    # deterministic signs: the largest-|.| entry of each eigenvector positive (sklearn's convention)
    signs = np.sign(alphas[np.argmax(np.abs(alphas), axis=0), np.arange(n_components)])
    alphas *= np.where(signs == 0, 1.0, signs)
    scaled = np.zeros_like(alphas)
    nz = lambdas > 0
    scaled[:, nz] = alphas[:, nz] / np.sqrt(lambdas[nz])
    return SpectralEmbedding(landmarks=L, gamma=g, scaled_alphas=scaled, eigenvalues=lambdas, k_col_mean=col_mean,
                             k_all_mean=all_mean, landmark_index=idx, seed=seed)
