"""Model-bundle manifest entries of the candidate scorer (``cutout_encoder``, ``ranking_head``).

Kept apart from training so what the bundle records about each model (inputs, preprocessing, training
data, metrics) can be read in one place; values are made YAML/JSON-safe by :func:`plain`.
"""

from __future__ import annotations

import datetime as _dt
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.models.bundle import sha256_file
from broker_plugin.models.scoring import ENCODER_INPUT, ENCODER_OUTPUT, HEAD_META_NAMES, HEAD_OUTPUT
from broker_plugin.photometry.cutouts import CHANNEL_NAMES, CHANNELS, SIZE
from broker_plugin.photometry.features import FEATURE_NAMES, FEATURE_VERSION
from training.ranking_head import HeadConfig
from training.scorer_data import HEAD_CLASS_MIX, HEAD_SURVEY_MIX, POSITIVE_CLASSES, RUBIN_STAMP_SHARE, AlertSet
from training.scorer_encoder import ENCODER_FILE, EncoderStage

#: File name of the exported head inside ``out_dir`` (the bundle directory, typically).
HEAD_FILE = "ranking_head.onnx"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).replace(microsecond=0).isoformat()


def plain(v: Any) -> Any:
    """YAML/JSON-safe copy: numpy scalars to Python, non-finite floats to None, tuples to lists."""
    if isinstance(v, Mapping):
        return {str(k): plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x) for x in v]
    if isinstance(v, np.ndarray):
        return plain(v.tolist())
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, (int, np.integer)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if np.isfinite(f) else None
    return v


def counts(a: np.ndarray) -> dict[str, int]:
    vals, cnt = np.unique(a, return_counts=True)
    return {str(v): int(c) for v, c in zip(vals, cnt, strict=True)}


def alerts_training_data(data: AlertSet, n_train: int, n_test: int, *, seed: int,
                          class_mix: Mapping[str, float] | None, survey_mix: Mapping[str, float] | None,
                          ztf_no_forced_fraction: float) -> dict[str, Any]:
    """The head's ``training_data`` manifest block: how the synthetic alerts were made and split."""
    survey_counts = counts(np.array([a.survey for a in data.alerts], dtype=str))
    return {
        "kind": "synthetic", "generator": "training.synthetic.packets.iter_night -> broker_plugin.decode",
        "seed": seed, "n_alerts": len(data), "n_train": n_train, "n_test": n_test,
        "class_mix": dict(class_mix or HEAD_CLASS_MIX), "survey_mix": dict(survey_mix or HEAD_SURVEY_MIX),
        "class_counts": counts(data.classes), "survey_counts": survey_counts,
        "ztf_no_forced_fraction": ztf_no_forced_fraction, "n_ztf_no_forced": int(data.no_forced.sum()),
        "positive_classes": list(POSITIVE_CLASSES), "positive_fraction": float(data.labels.mean()),
    }


def encoder_manifest_entry(enc: EncoderStage, em: dict[str, Any], *, version: str, created: str, seed: int,
                   real_stamp_dirs: Sequence[str | Path] | None) -> dict[str, Any]:
    """The ``cutout_encoder`` model-bundle manifest entry."""
    return {
        "file": ENCODER_FILE, "sha256": sha256_file(enc.path), "version": version, "created": created,
        "inputs": [{"name": ENCODER_INPUT, "shape": ["batch", CHANNELS, SIZE, SIZE], "dtype": "float32"}],
        "outputs": [{"name": ENCODER_OUTPUT, "shape": ["batch", enc.cfg.embed_dim], "dtype": "float32"}],
        "description": "SimCLR-style contrastive encoder of the alert cutouts (science, template, difference, "
                       "invalid-pixel fraction); the ranking head reads its embedding",
        "preprocessing": {"function": "broker_plugin.photometry.cutouts.cutout_batch", "size": SIZE,
                          "channels": list(CHANNEL_NAMES), "norm": "global"},
        "config": asdict(enc.cfg),
        "training_data": {
            "kind": "synthetic" if not len(enc.x_real) else "synthetic+real",
            "n_stamps": enc.n_stamps, "n_rendered": len(enc.x_syn),
            "n_training_alert_stamps": enc.n_alert_stamps, "n_real_stamps": len(enc.x_real),
            "real_stamp_dirs": [str(d) for d in (real_stamp_dirs or [])], "n_real_files": enc.n_real_files,
            "rendered_kind_counts": counts(enc.y_syn), "rubin_size_share": RUBIN_STAMP_SHARE,
            "n_test_stamps": len(enc.x_syn_test), "seed": seed,
        },
        "metrics": em,
    }


def head_manifest_entry(head_path: Path, hcfg: HeadConfig, hm: dict[str, Any], alerts_td: dict[str, Any], *,
                embedding_dim: int, encoder_sha256: str, version: str, created: str) -> dict[str, Any]:
    """The ``ranking_head`` model-bundle manifest entry (pinned to the encoder it was fitted on)."""
    return {
        "file": HEAD_FILE, "sha256": sha256_file(head_path), "version": version, "created": created,
        "inputs": [
            {"name": "embedding", "shape": ["batch", embedding_dim], "dtype": "float32"},
            {"name": "lc_features", "shape": ["batch", len(FEATURE_NAMES)], "dtype": "float32"},
            {"name": "meta", "shape": ["batch", len(HEAD_META_NAMES)], "dtype": "float32"},
        ],
        "outputs": [{"name": HEAD_OUTPUT, "shape": ["batch", 1], "dtype": "float32"}],
        "description": "P(alert is a quasar worth following up) from cutout embedding, light-curve features and "
                       "alert metadata; combined with the BAL probability by broker_plugin.models.scoring.combine",
        "feature_names": list(FEATURE_NAMES),
        "feature_version": FEATURE_VERSION,
        "meta_names": list(HEAD_META_NAMES),
        "meta_ignored": list(hcfg.ignore_meta),
        "embedding_dim": embedding_dim,
        "encoder_sha256": encoder_sha256,
        "input_assembly": "broker_plugin.models.scoring.assemble_head_inputs",
        "combination_rule": "broker_plugin.models.scoring.combine",
        "positive_classes": list(POSITIVE_CLASSES),
        "config": asdict(hcfg),
        "training_data": alerts_td,
        "metrics": hm,
    }
