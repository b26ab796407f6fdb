"""Configuration, result and cross-validation helpers shared by the steps of ``bal-broker train``.

Kept apart from the steps so each step module (:mod:`training.train_steps`, :mod:`training.train_eval`,
:mod:`training.train_report`) can use them without importing the orchestrator (no import cycles).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from broker_plugin.models.inference import DEFAULT_CANDIDATE_THRESHOLD, DEFAULT_MIN_POINTS

#: Seed and size of the default bundle (``make bundle``).
DEFAULT_BUNDLE_SEED = 20261122
DEFAULT_BUNDLE_N = 6000
#: Smallest synthetic set that leaves a few BALs in every CV fold and in the test split.
MIN_SYNTHETIC = 60


@dataclass
class TrainConfig:
    """Everything that shapes a training run; recorded in the manifest."""

    seed: int = 0
    test_fraction: float = 0.25
    cv_folds: int = 5
    min_points: int = DEFAULT_MIN_POINTS
    n_components: int = 16
    n_landmarks: int = 500
    downsample_ratio: float | None = None
    candidate_threshold: float = DEFAULT_CANDIDATE_THRESHOLD
    lc: Any = None  # LCClassifierConfig
    attention: Any = None  # AttentionConfig
    name: str | None = None
    version: str = "0.1.0"
    figures: bool = True
    command: str | None = None
    lc_history: str = "mixed"

    def __post_init__(self) -> None:
        from training.fusion import AttentionConfig
        from training.lc_classifier import LCClassifierConfig

        self.lc = self.lc or LCClassifierConfig()
        self.attention = self.attention or AttentionConfig()
        if not 0.05 <= self.test_fraction <= 0.5:
            raise ConfigError(f"--test-fraction must be in [0.05, 0.5], got {self.test_fraction}")
        if self.cv_folds < 2:
            raise ConfigError(f"--cv-folds must be at least 2, got {self.cv_folds}")
        if not 0.0 <= self.candidate_threshold <= 1.0:
            raise ConfigError(f"--candidate-threshold must be in [0, 1], got {self.candidate_threshold}")
        if self.downsample_ratio is not None and self.downsample_ratio <= 0:
            raise ConfigError(f"--downsample-ratio must be positive, got {self.downsample_ratio}")
        from training.lc_history import LC_HISTORIES

        if self.lc_history not in LC_HISTORIES:
            raise ConfigError(f"--lc-history must be one of {', '.join(LC_HISTORIES)}, got {self.lc_history!r}")

    def as_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k not in ("lc", "attention", "command")}
        d["lc_classifier"] = self.lc.as_dict()
        d["attention"] = self.attention.as_dict()
        return d


@dataclass
class TrainResult:
    out: Path
    manifest: dict[str, Any]
    test: dict[str, Any]
    cv: dict[str, Any]
    parity: dict[str, Any]
    timings: dict[str, float]
    elapsed_s: float

    def summary_line(self) -> str:
        parts = []
        for role in ("bal_lc", "spectral", "fusion_late", "fusion_attention"):
            m = self.test.get(role)
            if m and m["n"]:
                f1 = m["bal"]["f1"]
                parts.append(f"{role} BAL F1 {100 * f1:.1f}%" if f1 == f1 else f"{role} BAL F1 n/a")
        head = (self.manifest.get("models", {}).get("ranking_head") or {}).get("metrics") or {}
        if head.get("test_roc_auc") is not None:
            parts.append(f"candidate scorer head ROC AUC {head['test_roc_auc']:.3f}")
        return (f"train: bundle written to {self.out} in {self.elapsed_s:.1f} s; test split: " + ", ".join(parts))


# ======================================================================================= CV


def _folds(y: np.ndarray, k: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified k-fold (k capped by the minority count; [] when fewer than 2 per class)."""
    from sklearn.model_selection import StratifiedKFold

    counts = np.bincount(y.astype(np.int64), minlength=2)
    k = int(min(k, counts.min()))
    if k < 2:
        return []
    return list(StratifiedKFold(n_splits=k, shuffle=True, random_state=seed).split(np.zeros(y.size), y))


def _oof(rows: np.ndarray, y: np.ndarray, folds: list[tuple[np.ndarray, np.ndarray]],
         fit_predict: Callable[[np.ndarray, np.ndarray], np.ndarray]) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Out-of-fold predictions for ``rows`` and per-fold metrics; ``fit_predict(train_rows, val_rows)``."""
    from training.report import class_metrics

    p = np.full(rows.size, np.nan)
    per_fold = []
    for tr, va in folds:
        p[va] = fit_predict(rows[tr], rows[va])
        per_fold.append(class_metrics(y[va], p[va]))
    return p, per_fold


def _both_classes(y: np.ndarray, what: str) -> None:
    counts = np.bincount(np.asarray(y).astype(np.int64), minlength=2)
    if counts.min() < 2:
        raise ConfigError(f"{what}: need at least 2 BALs and 2 non-BALs, have {counts[1]} and {counts[0]}")

