"""Batched ONNX inference on a verified :class:`~broker_plugin.models.bundle.ModelBundle`: the model stage.

:class:`BundleStage` implements :class:`broker_plugin.models.annotate.ModelStage`. For a batch of n alerts it
makes at most one ``session.run`` per model (never one per alert), so the cost per alert falls with
the batch size; the sessions were created once, when the bundle was loaded.

What each output field means, and when it is null (each rule adds a flag so a null is explained):

``bal_lc_prob``
    P(BAL | light-curve features) from the ``bal_lc`` forest, for alerts with at least ``min_points``
    points (manifest, ``models.bal_lc.min_points``; default 5, the ``light-curve`` statistics' own
    minimum, :data:`broker_plugin.photometry.features.MIN_POINTS_LC`) in g or in r. Fewer: null, flag
    ``too_few_points`` -- a probability from a vector of mostly imputed medians would look like
    information and is not.
``bal_fusion_prob``
    For alerts whose position matches an object of the bundle's spectral catalogue (within its
    ``match_radius_arcsec``, 1.5" by default), the fusion of the light-curve features with that
    object's spectral embedding (``fusion_attention``; ``fusion_late`` on ``p_lc`` and the catalogue's
    ``spec_prob`` if the bundle has no attention model). Flag ``spectrum_matched``; otherwise null and
    ``no_known_spectrum``. The fusion is computed even with too few light-curve points: the graph
    imputes missing features and the spectrum carries most of the weight (SCIENCE.md: the spectral
    modality is the more reliable one).
``candidate_score``
    When the bundle has the candidate scorer (roles ``cutout_encoder`` and ``ranking_head``): the
    alert's cutouts go through the encoder and, with the feature vector and the alert metadata,
    through the ranking head (:func:`broker_plugin.models.scoring.head_probability`), and
    :func:`broker_plugin.models.scoring.combine` turns the head's probability and the BAL probability into
    ``candidate_score = head_prob * p_bal`` (``p_bal`` = ``bal_fusion_prob`` if known, else
    ``bal_lc_prob``). Null with a flag when it cannot be computed: ``no_cutouts`` (all three stamps
    missing, undecodable or flat, or not used: ``cutouts_dropped_size`` for a stamp over the pixel
    cap, ``cutouts_dropped_budget`` past the batch's inflated-bytes budget), ``no_bal_probability``,
    ``no_ranking_head``; per-stamp problems add the cutout flags (``cutout_missing_<kind>``,
    ``cutout_bad_<kind>``, ``cutout_nan_<kind>``).
    Without the scorer in the bundle: null and ``no_candidate_scorer``.
``is_candidate``
    With the scorer: ``candidate_score >= threshold`` (false when the score is null), the rule
    documented in :mod:`broker_plugin.models.scoring`. Without it: ``decision >= threshold`` where
    ``decision`` is ``bal_fusion_prob`` when known, else ``bal_lc_prob`` (the spectrum-informed
    probability is preferred because it is the better one); false when both are null.
    ``threshold`` is the manifest's ``bundle.candidate_threshold`` unless overridden
    (``BundleStage(bundle, candidate_threshold=...)``, the service's
    ``processing.candidate_threshold``).

Start-up checks of the scorer (:class:`~broker_plugin.errors.BundleError`, one line, on any
mismatch): both roles or neither; the ranking head's manifest ``meta_names`` equal the columns
:func:`broker_plugin.models.scoring.meta_matrix` assembles (``META_FIELDS`` + ``survey_lsst``); its
``encoder_sha256`` equals the SHA-256 of the encoder file in the bundle (a head is only valid on the
embedding of the encoder it was trained on); input / output names, the encoder's tensor shape
(:mod:`broker_plugin.photometry.cutouts`) and the embedding width agree between the graphs and the plugin.

Cost: one ``session.run`` per model per batch, except the cutout encoder, which runs in chunks of
:data:`ENCODER_MAX_BATCH` alerts: its activations for a 500-alert batch cost ~66 MB of peak memory,
for 64 alerts ~9 MB, and the chunked runs are also faster per alert (71 vs 89 us, benchmarks/).

The I/O names below are the contract between ``training/`` (which writes the graphs) and this module
(which feeds them); training imports them from here.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import FEATURE_BANDS, Alert, LightCurve
from broker_plugin.errors import BundleError
from broker_plugin.models import scoring
from broker_plugin.models.bundle import ModelBundle, sha256_file
from broker_plugin.models.predictions import Predictions
from broker_plugin.photometry.cutouts import CHANNELS, SIZE
from broker_plugin.photometry.features import FEATURE_NAMES, MIN_POINTS_LC

#: ``bal_lc``: float32 [N, F] in FEATURE_NAMES order (NaN = missing) -> int64 [N], float32 [N, 2].
LC_INPUT, LC_LABEL, LC_PROBA = "features", "label", "probabilities"
#: ``fusion_late``: float32 [N] P(BAL) from each modality (NaN p_lc allowed) -> float32 [N].
LATE_LC_INPUT, LATE_SPEC_INPUT, LATE_OUTPUT = "p_lc", "p_spec", "probability"
#: ``fusion_attention``: raw features float32 [N, F] and spectral embedding float32 [N, K] ->
#: probability float32 [N, 1] and modality attention weights float32 [N, 2] (light curve, spectrum).
ATT_LC_INPUT, ATT_SPEC_INPUT, ATT_OUTPUT, ATT_WEIGHTS = "lc_features", "spec_embedding", "probability", "attention"

#: Default minimum points in g or r for a light-curve probability (overridden by the manifest).
DEFAULT_MIN_POINTS: int = MIN_POINTS_LC
#: Default decision threshold when a manifest has none.
DEFAULT_CANDIDATE_THRESHOLD: float = 0.5
#: Prior BAL fraction when the manifest does not record one (DR16Q automated flags: 99,856 / 750,414).
DEFAULT_BAL_PRIOR: float = 0.13

FLAG_TOO_FEW_POINTS = "too_few_points"
FLAG_SPECTRUM_MATCHED = "spectrum_matched"
FLAG_NO_KNOWN_SPECTRUM = "no_known_spectrum"
FLAG_NO_FUSION_MODEL = "no_fusion_model"
FLAG_NO_CANDIDATE_SCORER = "no_candidate_scorer"
#: Scorer roles: both or neither in a bundle.
SCORER_ROLES = ("cutout_encoder", "ranking_head")
#: Largest batch the cutout encoder runs in one ``session.run`` (measured: lower peak RSS and
#: faster per alert than whole-batch runs; see the module docstring).
ENCODER_MAX_BATCH = 64


def points_per_alert(lightcurves: Sequence[Mapping[str, LightCurve]], bands: Sequence[str] = FEATURE_BANDS,
                     ) -> np.ndarray:
    """Most points in any of ``bands`` per object (the quantity the ``min_points`` rule tests)."""
    return np.array([max((len(lc[b]) for b in bands if b in lc), default=0) for lc in lightcurves],
                    dtype=np.int64)


def enough_points(lightcurves: Sequence[Mapping[str, LightCurve]], min_points: int = DEFAULT_MIN_POINTS,
                  bands: Sequence[str] = FEATURE_BANDS) -> np.ndarray:
    """Boolean mask: at least ``min_points`` points in g or in r. Training selects its rows with the
    same function, so the forest is only ever asked about the kind of object it was trained on."""
    return points_per_alert(lightcurves, bands) >= int(min_points)


def _output_names(spec: Any) -> list[str]:
    return [str(o.get("name")) for o in spec.outputs]


def _bal_prior(info: dict[str, Any]) -> float:
    """The BAL fraction of the light-curve classifier's training data (the prior of scoring.combine)."""
    data = info.get("training_data") or {}
    for value in (data.get("bal_fraction"), (data.get("generator") or {}).get("bal_fraction")):
        if isinstance(value, int | float) and 0.0 <= float(value) <= 1.0:
            return float(value)
    return DEFAULT_BAL_PRIOR


class BundleStage:
    """The model stage on a verified bundle (see the module docstring for the rules)."""

    def __init__(self, bundle: ModelBundle, candidate_threshold: float | None = None) -> None:
        self.bundle = bundle
        head = bundle.manifest.get("bundle") or {}
        thr = candidate_threshold if candidate_threshold is not None else head.get(
            "candidate_threshold", DEFAULT_CANDIDATE_THRESHOLD)
        try:
            self.threshold = float(thr)
        except (TypeError, ValueError):
            raise BundleError(f"model bundle {bundle.path}: candidate_threshold {thr!r} is not a number") from None
        if not (math.isfinite(self.threshold) and 0.0 <= self.threshold <= 1.0):
            raise BundleError(f"model bundle {bundle.path}: candidate_threshold {self.threshold} is not in [0, 1]")
        lc = bundle.specs["bal_lc"]
        self.bal_prior = _bal_prior(lc.info)
        self.min_points = int(lc.info.get("min_points", DEFAULT_MIN_POINTS))
        if LC_PROBA not in _output_names(lc):
            raise BundleError(f"model bundle {bundle.path}: bal_lc has no '{LC_PROBA}' output")
        self.catalogue = bundle.catalogue
        self.fusion_role: str | None = None
        if self.catalogue is not None:
            if bundle.has("fusion_attention"):
                self.fusion_role = "fusion_attention"
                self._check_attention_dims()
            elif bundle.has("fusion_late"):
                if self.catalogue.spec_prob is None:
                    raise BundleError(f"model bundle {bundle.path}: fusion_late needs the catalogue's spec_prob")
                self.fusion_role = "fusion_late"
        self.has_candidate_scorer = self._check_scorer()

    def _check_attention_dims(self) -> None:
        spec = self.bundle.specs["fusion_attention"]
        shapes = {str(i["name"]): i.get("shape") for i in spec.inputs}
        k = (shapes.get(ATT_SPEC_INPUT) or [None, None])[-1]
        f = (shapes.get(ATT_LC_INPUT) or [None, None])[-1]
        emb = self.catalogue.embedding if self.catalogue is not None else None
        if emb is not None and isinstance(k, int) and emb.shape[1] != k:
            raise BundleError(f"model bundle {self.bundle.path}: catalogue embedding has {emb.shape[1]} "
                              f"dimensions, fusion_attention expects {k}")
        if isinstance(f, int) and f != len(FEATURE_NAMES):
            raise BundleError(f"model bundle {self.bundle.path}: fusion_attention expects {f} features, "
                              f"the plugin computes {len(FEATURE_NAMES)}")

    def _check_scorer(self) -> bool:
        """True when the bundle carries a usable candidate scorer (checks in the module docstring)."""
        b = self.bundle
        present = [r for r in SCORER_ROLES if b.has(r)]
        if not present:
            return False
        if len(present) == 1:
            missing = next(r for r in SCORER_ROLES if r not in present)
            raise BundleError(f"model bundle {b.path}: '{present[0]}' without '{missing}': the candidate scorer "
                              "needs both")
        enc, head = b.specs["cutout_encoder"], b.specs["ranking_head"]
        meta = head.info.get("meta_names")
        if meta is None or [str(m) for m in meta] != list(scoring.HEAD_META_NAMES):
            raise BundleError(f"model bundle {b.path}: ranking_head meta_names {meta} differ from the plugin's "
                              f"{list(scoring.HEAD_META_NAMES)} (META_FIELDS + {scoring.SURVEY_INDICATOR})")
        want = head.info.get("encoder_sha256")
        have = sha256_file(b.path / enc.file)
        if want != have:
            raise BundleError(f"model bundle {b.path}: ranking_head was trained on another cutout encoder "
                              f"(encoder_sha256 {str(want)[:12]}..., {enc.file} is {have[:12]}...)")
        head_in = [str(i.get("name")) for i in head.inputs]
        if head_in != list(scoring.HEAD_INPUTS) or scoring.HEAD_OUTPUT not in _output_names(head):
            raise BundleError(f"model bundle {b.path}: ranking_head inputs {head_in} / outputs "
                              f"{_output_names(head)} are not {list(scoring.HEAD_INPUTS)} -> {scoring.HEAD_OUTPUT}")
        if [str(i.get("name")) for i in enc.inputs] != [scoring.ENCODER_INPUT] or \
                scoring.ENCODER_OUTPUT not in _output_names(enc):
            raise BundleError(f"model bundle {b.path}: cutout_encoder must map '{scoring.ENCODER_INPUT}' to "
                              f"'{scoring.ENCODER_OUTPUT}'")
        shape = list((enc.inputs[0].get("shape") or [])[1:])
        if shape and shape != [CHANNELS, SIZE, SIZE]:
            raise BundleError(f"model bundle {b.path}: cutout_encoder reads tensors of shape {shape}, the plugin "
                              f"builds {[CHANNELS, SIZE, SIZE]} (broker_plugin.photometry.cutouts)")
        emb_out = next((o.get("shape") for o in enc.outputs if o.get("name") == scoring.ENCODER_OUTPUT), None)
        emb_in = next((i.get("shape") for i in head.inputs if i.get("name") == "embedding"), None)
        e_out, e_in = (emb_out or [None, None])[-1], (emb_in or [None, None])[-1]
        if isinstance(e_out, int) and isinstance(e_in, int) and e_out != e_in:
            raise BundleError(f"model bundle {b.path}: cutout_encoder embeds in {e_out} dimensions, ranking_head "
                              f"reads {e_in}")
        return True

    @property
    def version(self) -> str:
        return self.bundle.model_version

    # ------------------------------------------------------------------------------ predict
    def predict(self, features: np.ndarray, alerts: Sequence[Alert]) -> Predictions:
        """Probabilities and flags for a batch (one ONNX run per model; see the module docstring)."""
        X = np.asarray(features, dtype=np.float64)
        n = len(alerts)
        if X.shape != (n, len(FEATURE_NAMES)):
            raise ValueError(f"features: expected shape {(n, len(FEATURE_NAMES))}, got {X.shape}")
        X32 = X.astype(np.float32)
        flags: list[list[str]] = [[] for _ in range(n)]

        enough = enough_points([a.lightcurves for a in alerts], self.min_points)
        p_lc = np.full(n, np.nan)
        if enough.any():
            p_lc[enough] = self._run_lc(X32[enough])
        for i in np.flatnonzero(~enough).tolist():
            flags[i].append(FLAG_TOO_FEW_POINTS)

        p_fusion = np.full(n, np.nan)
        if self.catalogue is not None and n:
            ra = np.fromiter((a.ra for a in alerts), dtype=np.float64, count=n)
            dec = np.fromiter((a.dec for a in alerts), dtype=np.float64, count=n)
            idx = self.catalogue.match(ra, dec)
        else:
            idx = np.full(n, -1, dtype=np.int64)
        matched = idx >= 0
        if matched.any() and self.fusion_role is not None:
            p_fusion[matched] = self._run_fusion(X32[matched], idx[matched], p_lc[matched])
        for i, m in enumerate(matched.tolist()):
            if not m:
                flags[i].append(FLAG_NO_KNOWN_SPECTRUM)
            else:
                flags[i].append(FLAG_SPECTRUM_MATCHED if self.fusion_role is not None else FLAG_NO_FUSION_MODEL)

        score, is_candidate, score_flags = self._candidate_scores(X, alerts, p_lc, p_fusion)
        for i, f in enumerate(score_flags):
            flags[i].extend(f)
        return Predictions(bal_lc_prob=p_lc, bal_fusion_prob=p_fusion, candidate_score=score,
                           is_candidate=is_candidate, flags=flags)

    def _run_lc(self, X32: np.ndarray) -> np.ndarray:
        out = self.bundle.sessions["bal_lc"].run([LC_PROBA], {LC_INPUT: X32})[0]
        return np.clip(np.asarray(out, dtype=np.float64)[:, 1], 0.0, 1.0)

    def _run_fusion(self, X32: np.ndarray, rows: np.ndarray, p_lc: np.ndarray) -> np.ndarray:
        assert self.catalogue is not None
        sess = self.bundle.sessions[self.fusion_role]
        if self.fusion_role == "fusion_attention":
            emb = np.ascontiguousarray(self.catalogue.embedding[rows], dtype=np.float32)
            out = sess.run([ATT_OUTPUT], {ATT_LC_INPUT: X32, ATT_SPEC_INPUT: emb})[0]
        else:
            spec_prob = self.catalogue.spec_prob
            assert spec_prob is not None
            out = sess.run([LATE_OUTPUT], {LATE_LC_INPUT: p_lc.astype(np.float32),
                                           LATE_SPEC_INPUT: np.asarray(spec_prob[rows], dtype=np.float32)})[0]
        return np.clip(np.asarray(out, dtype=np.float64).reshape(-1), 0.0, 1.0)

    # ------------------------------------------------------------------------ candidate score
    def _candidate_scores(self, features: np.ndarray, alerts: Sequence[Alert], p_lc: np.ndarray,
                          p_fusion: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
        """``(candidate_score [n] with NaN = null, is_candidate [n], per-alert flags)``.

        With the scorer: :func:`broker_plugin.models.scoring.head_probability` (one encoder run and one
        head run for the batch) and :func:`broker_plugin.models.scoring.combine`. Without it: no score
        (flag ``no_candidate_scorer``) and ``is_candidate`` from the BAL probability alone.
        """
        n = len(alerts)
        if not self.has_candidate_scorer:
            decision = np.where(np.isfinite(p_fusion), p_fusion, p_lc)
            with np.errstate(invalid="ignore"):
                is_candidate = np.isfinite(decision) & (decision >= self.threshold)
            return np.full(n, np.nan), is_candidate, [[FLAG_NO_CANDIDATE_SCORER] for _ in range(n)]
        if n == 0:
            return np.zeros(0), np.zeros(0, dtype=bool), []
        head_prob, cutout_ok, cutout_flags = scoring.head_probability(
            self.bundle.sessions["cutout_encoder"], self.bundle.sessions["ranking_head"], features, alerts,
            batch_size=ENCODER_MAX_BATCH)
        score, is_candidate, flags = scoring.combine(p_lc, p_fusion, head_prob, self.threshold, cutout_ok=cutout_ok,
                                                      bal_prior=self.bal_prior)
        return score, is_candidate, [[*cf, *f] for cf, f in zip(cutout_flags, flags, strict=True)]

    def describe(self) -> dict[str, Any]:
        """What this stage will do, for start-up logs and the demo."""
        return {"model_version": self.version, "threshold": self.threshold, "min_points": self.min_points,
                "fusion": self.fusion_role, "catalogue_objects": len(self.catalogue) if self.catalogue else 0,
                "candidate_scorer": self.has_candidate_scorer}
