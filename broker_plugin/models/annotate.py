"""The annotation stage: decoded alerts in, DESIGN.md output records out, one batch at a time.

Why a batch API: features and ONNX inference are vectorised, so the per-alert Python work is kept
to building the output dict. Replay and the streaming service both call
:meth:`Annotator.annotate_batch`, so a file replay and the Kafka service produce identical records.

The model stage plugs in through :class:`~broker_plugin.models.predictions.ModelStage`
(``predict(features, alerts) -> Predictions``, both defined in :mod:`broker_plugin.models.predictions`
and re-exported here; :class:`broker_plugin.models.inference.BundleStage` on a model bundle, wired by
:func:`load_model_stage`); without one every record says so (``model_version: "none"``, flag
``no_model_bundle``, null probabilities, ``is_candidate: false``) instead of inventing scores.

Timings are accumulated per batch with :func:`time.perf_counter` (never per alert, which would cost
more than some stages) and exposed as :attr:`Annotator.timings` for the summary and benchmarks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.alert import HISTORY_ORIGINS, Alert
from broker_plugin.errors import ConfigError
from broker_plugin.models.bundle import MANIFEST, ModelBundle, default_bundle_path
from broker_plugin.models.inference import BundleStage
from broker_plugin.models.predictions import ModelStage, Predictions
from broker_plugin.photometry.features import FEATURE_NAMES, compute_features_batch, features_to_dict

__all__ = ["NO_MODEL_FLAG", "NO_MODEL_VERSION", "Annotator", "ModelStage", "Predictions", "StageTimings",
           "check_alert", "load_model_stage"]

#: ``model_version`` of records annotated without a model bundle.
NO_MODEL_VERSION = "none"
#: Flag added to every record annotated without a model bundle.
NO_MODEL_FLAG = "no_model_bundle"


def load_model_stage(path: str | Path | None, *, candidate_threshold: float | None = None) -> ModelStage | None:
    """The model stage for ``--models DIR``: the single place where bundles are wired in.

    Rule: an explicit ``path`` must be a bundle directory (ConfigError otherwise); ``None`` means the
    default bundle shipped in ``broker_plugin/bundle/`` when it is present (a fresh install runs with
    models), and no model stage at all only when the package has no default bundle. Either way the
    bundle is verified (checksums, feature names and version) by
    :meth:`~broker_plugin.models.bundle.ModelBundle.load`, which raises BundleError -- one line, exit 2 in
    the CLI -- rather than annotate with a model that does not fit this code.
    ``candidate_threshold`` overrides the manifest's default decision threshold.
    """
    if path is None:
        default = default_bundle_path()
        if not (default / MANIFEST).is_file():
            return None
        root = default
    else:
        root = Path(path)
        if not root.is_dir():
            raise ConfigError(f"model bundle directory not found: {path}")
    return BundleStage(ModelBundle.load(root), candidate_threshold=candidate_threshold)


@dataclass
class StageTimings:
    """Seconds spent per stage, summed over batches; cheap enough to always keep on."""

    seconds: dict[str, float] = field(default_factory=dict)

    def add(self, stage: str, dt: float) -> None:
        self.seconds[stage] = self.seconds.get(stage, 0.0) + dt

    def as_dict(self) -> dict[str, float]:
        return dict(self.seconds)


def _opt_float(v: Any) -> float | None:
    """A finite Python float or None: NaN/inf become null so every output format agrees."""
    if v is None:
        return None
    f = float(v)
    return f if math.isfinite(f) else None


def _history(alert: Alert) -> dict[str, Any]:
    """The record's ``history``: a fresh copy of :meth:`Alert.history_summary` (plain ``str -> int``
    maps per origin, in :data:`~broker_plugin.alert.HISTORY_ORIGINS` order, then ``span_days`` as a
    float), so a record never aliases the alert's state and every output format gets the same types."""
    h = alert.history_summary()
    out: dict[str, Any] = {o: {str(b): int(k) for b, k in h[o].items()} for o in HISTORY_ORIGINS}
    out["span_days"] = float(h["span_days"])
    return out


def _merge_flags(*groups: Sequence[str] | None) -> list[str]:
    """Concatenate flag lists, keeping first occurrences in order (stable, duplicate-free output)."""
    seen: dict[str, None] = {}
    for g in groups:
        if g:
            for f in g:
                seen.setdefault(f, None)
    return list(seen)


class Annotator:
    """Turns decoded alerts into output records; one per process, reused for every batch.

    ``bundle`` is the model stage (None: annotate features only). Records follow DESIGN.md's JSONL
    record exactly; :data:`broker_plugin.files.output.RECORD_FIELDS` lists the keys in order.
    """

    def __init__(self, bundle: ModelStage | None = None) -> None:
        self.bundle = bundle
        self.model_version = bundle.version if bundle is not None else NO_MODEL_VERSION
        self.feature_names: tuple[str, ...] = tuple(FEATURE_NAMES)
        self.timings = StageTimings()
        self.alerts_annotated = 0
        self.candidates = 0

    def annotate_batch(self, alerts: Sequence[Alert]) -> list[dict[str, Any]]:
        """Output records for ``alerts``, in the same order. Raises on internal errors; callers that
        must not lose a batch to one bad alert retry alert by alert (see replay)."""
        n = len(alerts)
        if n == 0:
            return []
        t0 = time.perf_counter()
        values, feature_flags = compute_features_batch([a.lightcurves for a in alerts])
        values = np.asarray(values, dtype=np.float64)
        if values.shape != (n, len(self.feature_names)):
            raise ValueError(f"features: expected shape {(n, len(self.feature_names))}, got {values.shape}")
        t1 = time.perf_counter()
        self.timings.add("features", t1 - t0)

        preds: Predictions | None = None
        if self.bundle is not None:
            preds = self.bundle.predict(values, alerts)
            if len(preds) != n:
                raise ValueError(f"model stage returned {len(preds)} predictions for {n} alerts")
        t2 = time.perf_counter()
        if preds is not None:
            self.timings.add("models", t2 - t1)

        records = self._records(alerts, values, feature_flags, preds)
        self.timings.add("records", time.perf_counter() - t2)
        self.alerts_annotated += n
        self.candidates += sum(1 for r in records if r["is_candidate"])
        return records

    def _records(
        self,
        alerts: Sequence[Alert],
        values: np.ndarray,
        feature_flags: Sequence[Sequence[str]],
        preds: Predictions | None,
    ) -> list[dict[str, Any]]:
        # Convert prediction arrays to Python lists once per batch (tolist is far cheaper than
        # per-element numpy scalar access), NaN -> None per element below.
        if preds is not None:
            lc = preds.bal_lc_prob.tolist()
            fusion = preds.bal_fusion_prob.tolist()
            score = preds.candidate_score.tolist()
            cand = [bool(c) for c in np.asarray(preds.is_candidate).tolist()]
            pflags = preds.flags
        none_flag = [NO_MODEL_FLAG] if preds is None else None
        out: list[dict[str, Any]] = []
        for i, a in enumerate(alerts):
            rec: dict[str, Any] = {
                "survey": a.survey,
                "object_id": str(a.object_id),
                "source_id": str(a.source_id),
                "ra": float(a.ra),
                "dec": float(a.dec),
                "mjd": float(a.mjd),
                "n_points": {str(b): int(k) for b, k in a.n_points().items()},
                "features": {k: _opt_float(v) for k, v in features_to_dict(values[i]).items()},
            }
            if preds is None:
                rec.update(bal_lc_prob=None, bal_fusion_prob=None, candidate_score=None, is_candidate=False)
                flags = _merge_flags(a.flags, feature_flags[i], none_flag)
            else:
                rec.update(
                    bal_lc_prob=_opt_float(lc[i]),
                    bal_fusion_prob=_opt_float(fusion[i]),
                    candidate_score=_opt_float(score[i]),
                    is_candidate=cand[i],
                )
                flags = _merge_flags(a.flags, feature_flags[i], pflags[i] if pflags else None)
            rec["history"] = _history(a)
            rec["flags"] = flags
            rec["model_version"] = self.model_version
            out.append(rec)
        return out


def check_alert(alert: Alert) -> str | None:
    """Why ``alert`` cannot become an output record, or None. The decoder should already refuse
    these (reason ``bad_value``); this guard keeps a decoder gap from crashing a whole night's
    writer, since the Avro/Parquet schemas require finite ra/dec/mjd and non-empty ids."""
    for name in ("ra", "dec", "mjd"):
        v = getattr(alert, name)
        try:
            if not math.isfinite(float(v)):
                return f"non-finite {name}: {v!r}"
        except (TypeError, ValueError):
            return f"{name} is not a number: {v!r}"
    if not str(alert.object_id) or not str(alert.source_id):
        return "empty object_id or source_id"
    return None
