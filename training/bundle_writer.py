"""Writing a model bundle: ONNX files, ``catalogue.npz``, ``manifest.yaml`` and ``README.md``.

The layout is the contract in :mod:`broker_plugin.models.bundle` (its docstring); this module is its only
writer, and :func:`training.train.train` re-loads every bundle it writes with
:meth:`~broker_plugin.models.bundle.ModelBundle.load` (checksums, feature names, feature version, ONNX
inputs) before reporting success, so a bundle that the plugin would refuse is never left behind
as if it were good.

Why a staging directory: the bundle is assembled in a hidden sibling directory and swapped into
place at the end (:func:`replace_dir`), so an interrupted or failed run leaves the previous bundle
(e.g. the default one shipped in ``broker_plugin/bundle``) intact rather than half-overwritten.

Determinism: ONNX files, the catalogue and the figures depend only on the data and the seed; the
manifest's ``created`` time stamps and the report's timings are the only things that change between
two identical runs.
"""

from __future__ import annotations

import datetime as _dt
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from broker_plugin.errors import ConfigError
from broker_plugin.models.bundle import MANIFEST, sha256_file

from .export import io_spec, save
from .report_metrics import rounded

CATALOGUE_FILE = "catalogue.npz"
#: File name of each role's ONNX model.
MODEL_FILES = {
    "bal_lc": "bal_lc.onnx",
    "spectral": "spectral.onnx",
    "fusion_late": "fusion_late.onnx",
    "fusion_attention": "fusion_attention.onnx",
}


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class ModelArtifact:
    """One model to write: its ONNX proto and everything the manifest says about it."""

    role: str
    model: Any  # onnx.ModelProto
    version: str
    description: str
    training_data: dict[str, Any]
    metrics: dict[str, Any]
    feature_names: Sequence[str] | None = None
    feature_version: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass
class CatalogueArtifact:
    """Objects with a known spectrum, for fusion at run time (positions matched within the radius)."""

    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    embedding: np.ndarray
    spec_prob: np.ndarray
    match_radius_arcsec: float = 1.5
    description: str = ""

    def write(self, path: Path) -> None:
        np.savez_compressed(
            path, ids=np.asarray(self.ids).astype(str), ra=np.asarray(self.ra, dtype=np.float64),
            dec=np.asarray(self.dec, dtype=np.float64), z=np.asarray(self.z, dtype=np.float32),
            embedding=np.asarray(self.embedding, dtype=np.float32),
            spec_prob=np.asarray(self.spec_prob, dtype=np.float32),
        )


def check_output_dir(out: str | Path) -> Path:
    """Where a bundle may be written: a new or empty directory, or one holding a previous bundle.

    Refuses (ConfigError, exit 2) a non-empty directory without ``manifest.yaml``, so that a typo in
    ``--out`` cannot replace an unrelated folder.
    """
    p = Path(out)
    if p.exists() and not p.is_dir():
        raise ConfigError(f"--out {p}: exists and is not a directory")
    if p.is_dir() and any(p.iterdir()) and not (p / MANIFEST).is_file():
        raise ConfigError(f"--out {p}: directory is not empty and holds no {MANIFEST}; "
                          "choose a new directory or an existing bundle to replace")
    if not p.parent.exists():
        raise ConfigError(f"--out {p}: parent directory {p.parent} does not exist")
    return p


def staging_dir(out: Path) -> Path:
    """A hidden sibling of ``out`` to assemble the bundle in (same filesystem: the swap is a rename).

    mkdtemp creates it 0700; a bundle is package data that other users (a container's service user)
    must read, so it is opened up to the usual 0755."""
    p = Path(tempfile.mkdtemp(prefix=f".{out.name}.staging-", dir=out.parent))
    p.chmod(0o755)
    return p


def replace_dir(staging: Path, out: Path) -> None:
    """Move ``staging`` to ``out``, replacing a previous bundle there."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        out.rename(old / out.name)
    staging.rename(out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_bundle(
    directory: Path,
    *,
    name: str,
    version: str,
    description: str,
    trained_on: str,
    candidate_threshold: float,
    models: Sequence[ModelArtifact],
    catalogue: CatalogueArtifact | None,
    bundle_extra: Mapping[str, Any] | None = None,
    readme: str | None = None,
    extra_entries: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Write ONNX files, the catalogue, ``manifest.yaml`` (and ``README.md``) into ``directory``.

    Returns the manifest as written. Per model: file, sha256, version, created, description,
    inputs/outputs read from the graph itself (so they cannot drift from the file), feature names and
    version where the model reads the feature vector, training data, metrics, and ``extra`` keys
    (e.g. ``min_points`` for ``bal_lc``).

    ``extra_entries``: manifest entries made elsewhere (the candidate scorer's ``cutout_encoder`` and
    ``ranking_head``, :mod:`training.scorer`) whose files are already in ``directory``; their sha256
    is (re)computed here from the file, so an entry can never disagree with what was written.
    """
    directory.mkdir(parents=True, exist_ok=True)
    created = utc_now()
    entries: dict[str, Any] = {}
    for art in models:
        fname = MODEL_FILES.get(art.role, f"{art.role}.onnx")
        # skl2onnx names graphs with a random uuid (and merge_models quotes them in the doc string):
        # fixed names keep two runs with the same seed byte-identical
        art.model.graph.name = art.role
        art.model.graph.doc_string = art.description
        # merged graphs list their opsets in set order (it varies with PYTHONHASHSEED): sort them
        opsets = sorted((o.domain, o.version) for o in art.model.opset_import)
        del art.model.opset_import[:]
        for domain, op_version in opsets:
            art.model.opset_import.add(domain=domain, version=op_version)
        digest = save(art.model, directory / fname)
        inputs, outputs = io_spec(art.model)
        entry: dict[str, Any] = {
            "file": fname, "sha256": digest, "version": art.version, "created": created,
            "description": art.description, "inputs": inputs, "outputs": outputs,
        }
        if art.feature_names is not None:
            entry["feature_names"] = list(art.feature_names)
            entry["feature_version"] = str(art.feature_version)
        entry.update(rounded(dict(art.extra), 6))
        entry["training_data"] = rounded(art.training_data, 6)
        entry["metrics"] = rounded(art.metrics, 4)
        entries[art.role] = entry
    for role, given in (extra_entries or {}).items():
        if role in entries:
            raise ValueError(f"model role {role!r} given twice")
        entry = dict(given)
        path = directory / str(entry.get("file", ""))
        if not path.is_file():
            raise FileNotFoundError(f"{role}: {path} is not in the bundle directory")
        entry["sha256"] = sha256_file(path)
        entries[role] = rounded(entry, 6)
    head: dict[str, Any] = {"name": name, "version": version, "created": created, "description": description,
                            "trained_on": trained_on, "candidate_threshold": float(candidate_threshold)}
    head.update(rounded(dict(bundle_extra or {}), 6))
    manifest: dict[str, Any] = {"bundle": head, "models": entries}
    if catalogue is not None:
        path = directory / CATALOGUE_FILE
        catalogue.write(path)
        manifest["catalogue"] = {
            "file": CATALOGUE_FILE, "sha256": sha256_file(path), "n_objects": len(catalogue.ids),
            "embedding_dim": int(np.asarray(catalogue.embedding).shape[1]),
            "match_radius_arcsec": float(catalogue.match_radius_arcsec), "description": catalogue.description,
        }
    text = "# bal-broker model bundle: see broker_plugin/models/bundle.py for the layout and README.md here.\n"
    text += yaml.safe_dump(manifest, sort_keys=False, default_flow_style=None, width=120, allow_unicode=True)
    (directory / MANIFEST).write_text(text, encoding="utf-8")
    if readme is not None:
        (directory / "README.md").write_text(readme, encoding="utf-8")
    return manifest
