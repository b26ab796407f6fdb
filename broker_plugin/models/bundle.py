"""The model bundle: a directory of ONNX files plus ``manifest.yaml``, verified before use.

Why verify at start-up: a bundle trained against another feature list, or a file corrupted in a
copy, would otherwise produce plausible-looking but wrong probabilities for every alert of the
night. The plugin refuses to start, with one line naming the problem, when a checksum, a feature
name or the feature-code version disagrees with this code (DESIGN.md, "Model bundle").

Manifest layout (written by ``training/bundle_writer.py``; ``bal-broker train`` makes bundles)::

    bundle: {name, version, created, description, trained_on,   # trained_on: synthetic | real
             candidate_threshold,      # default decision threshold of is_candidate (overridable)
             feature_version, decision_rule, training_command, training_config, package_version}
    models:
      <role>:                      # bal_lc, spectral, fusion_late, fusion_attention, cutout_encoder, ranking_head
        file, sha256, version, created, description
        inputs:  [{name, shape, dtype}]   # read from the graph; shape null = any size (the batch axis)
        outputs: [{name, shape, dtype}]
        feature_names: [...]       # only for models that read the light-curve feature vector
        feature_version: "1.0"     #   (bal_lc, fusion_attention)
        min_points: 5              # bal_lc only: points in g or r needed for a light-curve probability
        training_data: {kind, seed, sizes, class balance, generator params incl. the BAL light-curve effect}
        metrics: {threshold, test_common, test_all_applicable, cv, onnx_parity_max_abs}
    catalogue: {file, sha256, n_objects, embedding_dim, match_radius_arcsec, description}
                                   # optional: known spectra (ids, ra, dec, z, embedding, spec_prob) for fusion

I/O names per role are fixed in :mod:`broker_plugin.models.inference` (``bal_lc``: ``features`` ->
``label``, ``probabilities``; ``fusion_late``: ``p_lc``, ``p_spec`` -> ``probability``;
``fusion_attention``: ``lc_features``, ``spec_embedding`` -> ``probability``, ``attention``;
``spectral``: ``flux`` -> ``embedding``, ``label``, ``probabilities``).

ONNX sessions are created here, once per process, and reused for every batch.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from broker_plugin.errors import BundleError
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION

MANIFEST = "manifest.yaml"
#: Roles the plugin knows how to use; ``bal_lc`` is the one every bundle must have.
REQUIRED_ROLES = ("bal_lc",)
KNOWN_ROLES = ("bal_lc", "spectral", "fusion_late", "fusion_attention", "cutout_encoder", "ranking_head")


def default_bundle_path() -> Path:
    """The small synthetic-data bundle that ships inside the package so a fresh install runs."""
    return Path(str(resources.files("broker_plugin") / "bundle"))


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass(frozen=True)
class ModelSpec:
    """One model's manifest entry."""

    role: str
    file: str
    sha256: str
    version: str
    inputs: tuple[dict[str, Any], ...]
    outputs: tuple[dict[str, Any], ...]
    feature_names: tuple[str, ...] | None = None
    feature_version: str | None = None
    info: dict[str, Any] = field(default_factory=dict)


@dataclass
class SpectralCatalogue:
    """Objects with a known spectrum: position, redshift, spectral embedding (for fusion).

    Matching is by position within ``radius_arcsec``; the table is sorted by declination so a
    batch of alerts is matched with two ``searchsorted`` calls and a small vectorised check,
    with no per-alert Python loop over the catalogue.
    """

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    embedding: np.ndarray
    spec_prob: np.ndarray | None = None
    radius_arcsec: float = 1.5

    def __post_init__(self) -> None:
        order = np.argsort(self.dec, kind="stable")
        for name in ("ids", "ra", "dec", "z", "embedding"):
            setattr(self, name, getattr(self, name)[order])
        if self.spec_prob is not None:
            self.spec_prob = self.spec_prob[order]
        r, d = np.radians(self.ra), np.radians(self.dec)
        self._xyz = np.stack([np.cos(d) * np.cos(r), np.cos(d) * np.sin(r), np.sin(d)], axis=1)

    def __len__(self) -> int:
        return int(self.ids.shape[0])

    def match(self, ra: np.ndarray, dec: np.ndarray) -> np.ndarray:
        """Index of the nearest catalogue object within the radius for each position, or -1."""
        ra = np.asarray(ra, dtype=np.float64)
        dec = np.asarray(dec, dtype=np.float64)
        out = np.full(ra.shape[0], -1, dtype=np.int64)
        if len(self) == 0 or ra.shape[0] == 0:
            return out
        rad_deg = self.radius_arcsec / 3600.0
        lo = np.searchsorted(self.dec, dec - rad_deg, side="left")
        hi = np.searchsorted(self.dec, dec + rad_deg, side="right")
        cos_max = np.cos(np.radians(rad_deg))
        rr, dd = np.radians(ra), np.radians(dec)
        pts = np.stack([np.cos(dd) * np.cos(rr), np.cos(dd) * np.sin(rr), np.sin(dd)], axis=1)
        for i in np.nonzero(hi > lo)[0]:  # only alerts with a declination-band neighbour
            cand = self._xyz[lo[i]:hi[i]] @ pts[i]
            j = int(np.argmax(cand))
            if cand[j] >= cos_max:
                out[i] = lo[i] + j
        return out

    @classmethod
    def load(cls, path: Path) -> SpectralCatalogue:
        with np.load(path, allow_pickle=False) as data:
            return cls(
                ids=data["ids"].astype(str),
                ra=data["ra"].astype(np.float64),
                dec=data["dec"].astype(np.float64),
                z=data["z"].astype(np.float64),
                embedding=data["embedding"].astype(np.float32),
                spec_prob=data["spec_prob"].astype(np.float32) if "spec_prob" in data.files else None,
            )


@dataclass
class ModelBundle:
    """A verified bundle with one ONNX session per model."""

    path: Path
    name: str
    version: str
    manifest: dict[str, Any]
    specs: dict[str, ModelSpec]
    sessions: dict[str, Any]
    catalogue: SpectralCatalogue | None

    @property
    def model_version(self) -> str:
        """The output record's ``model_version``: bundle name and version."""
        return f"{self.name}-{self.version}"

    def has(self, role: str) -> bool:
        return role in self.sessions

    @classmethod
    def load(cls, path: str | Path | None = None, *, threads: int = 1) -> ModelBundle:
        """Load and verify a bundle; ``None`` loads the default one shipped in the package.

        ``threads`` is onnxruntime's intra-op thread count: one per worker process, since
        scale-out is by processes in a consumer group, not by threads inside one.
        """
        root = Path(path) if path is not None else default_bundle_path()
        manifest_path = root / MANIFEST
        if not manifest_path.is_file():
            raise BundleError(f"model bundle {root}: {MANIFEST} not found")
        try:
            manifest = yaml.safe_load(manifest_path.read_text(encoding="utf-8"))
        except yaml.YAMLError:
            raise BundleError(f"model bundle {root}: {MANIFEST} is not valid YAML") from None
        if not isinstance(manifest, dict) or not isinstance(manifest.get("models"), dict):
            raise BundleError(f"model bundle {root}: {MANIFEST} has no 'models' mapping")
        head = manifest.get("bundle") or {}
        specs = {role: _spec(root, role, entry) for role, entry in manifest["models"].items()}
        for role in REQUIRED_ROLES:
            if role not in specs:
                raise BundleError(f"model bundle {root}: required model '{role}' missing from {MANIFEST}")
        for spec in specs.values():
            _verify(root, spec)
        sessions = {role: _session(root / spec.file, spec, threads) for role, spec in specs.items()}
        catalogue = None
        cat = manifest.get("catalogue")
        if cat:
            cat_path = root / str(cat.get("file", ""))
            if not cat_path.is_file():
                raise BundleError(f"model bundle {root}: catalogue file {cat_path.name} not found")
            if sha256_file(cat_path) != cat.get("sha256"):
                raise BundleError(f"model bundle {root}: checksum mismatch for {cat_path.name} (file altered?)")
            try:
                catalogue = SpectralCatalogue.load(cat_path)
            except (OSError, ValueError, KeyError) as exc:
                raise BundleError(f"model bundle {root}: catalogue {cat_path.name} cannot be read: {exc}") from None
            catalogue.radius_arcsec = float(cat.get("match_radius_arcsec", 1.5))
            dim = cat.get("embedding_dim")
            if dim is not None and catalogue.embedding.shape[1] != int(dim):
                raise BundleError(f"model bundle {root}: catalogue embedding has {catalogue.embedding.shape[1]} "
                                  f"dimensions, the manifest says {dim}")
        return cls(root, str(head.get("name", root.name)), str(head.get("version", "0")), manifest, specs,
                   sessions, catalogue)


def _spec(root: Path, role: str, entry: Any) -> ModelSpec:
    if role not in KNOWN_ROLES:
        raise BundleError(f"model bundle {root}: unknown model role '{role}' (known: {', '.join(KNOWN_ROLES)})")
    if not isinstance(entry, dict):
        raise BundleError(f"model bundle {root}: entry for '{role}' is not a mapping")
    for key in ("file", "sha256", "inputs", "outputs"):
        if key not in entry:
            raise BundleError(f"model bundle {root}: model '{role}' lacks '{key}' in {MANIFEST}")
    names = entry.get("feature_names")
    info = {k: v for k, v in entry.items() if k not in ("file", "sha256", "inputs", "outputs", "feature_names",
                                                         "feature_version", "version")}
    return ModelSpec(role, str(entry["file"]), str(entry["sha256"]), str(entry.get("version", "0")),
                     tuple(entry["inputs"]), tuple(entry["outputs"]),
                     tuple(names) if names is not None else None,
                     str(entry["feature_version"]) if "feature_version" in entry else None, info)


def _verify(root: Path, spec: ModelSpec) -> None:
    path = root / spec.file
    if not path.is_file():
        raise BundleError(f"model bundle {root}: file {spec.file} for model '{spec.role}' not found")
    digest = sha256_file(path)
    if digest != spec.sha256:
        raise BundleError(f"model bundle {root}: checksum mismatch for {spec.file} "
                          f"(expected {spec.sha256[:12]}..., found {digest[:12]}...): file altered or corrupt")
    if spec.feature_names is not None:
        if spec.feature_version != FEATURE_VERSION:
            raise BundleError(f"model bundle {root}: model '{spec.role}' was trained with feature version "
                              f"{spec.feature_version}, this plugin computes version {FEATURE_VERSION}")
        if spec.feature_names != FEATURE_NAMES:
            diff = _first_difference(spec.feature_names, FEATURE_NAMES)
            raise BundleError(f"model bundle {root}: model '{spec.role}' feature names differ from the plugin's "
                              f"({diff})")


def _first_difference(a: tuple[str, ...], b: tuple[str, ...]) -> str:
    for i, (x, y) in enumerate(zip(a, b, strict=False)):
        if x != y:
            return f"position {i}: bundle has '{x}', plugin has '{y}'"
    return f"bundle has {len(a)} features, plugin has {len(b)}"


def _session(path: Path, spec: ModelSpec, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # No memory patterns: onnxruntime then plans one block for all intermediate tensors of each input
    # shape it sees, and the service's batches vary in size (adaptive batching), so it keeps planning
    # and holding blocks. Measured on the cutout encoder with mixed batch sizes (benchmarks/): 10% less
    # time per alert and ~45 MB less peak memory without them. (The arena stays: without it every
    # run maps fresh pages, +45% time.)
    opts.enable_mem_pattern = False
    try:
        sess = ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types for malformed graphs
        raise BundleError(f"model bundle: {spec.file} for model '{spec.role}' cannot be loaded by onnxruntime: "
                          f"{str(exc).splitlines()[0][:200]}") from None
    declared = [i["name"] for i in spec.inputs]
    actual = [i.name for i in sess.get_inputs()]
    if declared != actual:
        raise BundleError(f"model bundle: {spec.file} inputs {actual} differ from the manifest's {declared}")
    return sess
