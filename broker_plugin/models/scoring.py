"""The candidate score: ranking-head inputs, and the one rule that turns three probabilities into a score.

Runtime module (numpy only; ONNX sessions are passed in, never created here). Training imports
:func:`assemble_head_inputs` from here, so the ranking head is fitted on exactly the numbers it is
fed at run time (DESIGN.md, "one data path").

In one paragraph (the README-level description)
-----------------------------------------------
Every annotated alert carries ``candidate_score``: P(the alert is a quasar worth following up),
from a contrastive embedding of its cutouts plus its light-curve features and metadata (the
ranking head), multiplied by its BAL probability (the fusion probability when the object has a
known spectrum, else the light-curve one). ``is_candidate`` is ``candidate_score >= threshold``
(``bundle.candidate_threshold`` in the manifest, 0.5 by default; ``processing.candidate_threshold``
overrides it). When the alert has neither a fusion nor a light-curve BAL probability (too few
points, no known spectrum), the BAL factor is the prior BAL fraction of the bundle's training data
(about 0.13) and the alert is flagged ``bal_prior_used``: its score still ranks it as a quasar
worth watching, but a prior is not evidence, so such an alert is never a candidate. The score is
null, and the alert never a candidate, when it cannot be computed, with a flag saying why:
``no_cutouts`` (no usable stamp), ``no_ranking_head``, ``no_bal_probability`` (no BAL
probability and no prior given). A bundle without the scorer
models (``cutout_encoder`` + ``ranking_head``) gives a null score with ``no_candidate_scorer``
and falls back to ``is_candidate = p_bal >= threshold`` (:mod:`broker_plugin.models.inference`).

What the three probabilities mean
---------------------------------
``head_prob``
    Output of the ranking head (``ranking_head.onnx``): how much this alert looks like a *quasar*
    worth following up, from the cutout embedding, the light-curve feature vector and the alert's
    metadata. Positive class at training: ``qso_bal`` and ``qso_nonbal``. Blazars are a *negative*:
    they are AGN, but the BAL target population is seen at high inclination through the outflow,
    while a blazar is seen down its jet; BAL troughs in blazars are essentially unknown, so a
    blazar is a contaminant for this topic (and its high-amplitude, short-time-scale variability
    would otherwise pull the head away from ordinary quasar variability). The head's probability
    is calibrated to its synthetic training mix (about 40% quasars), not to a real stream where
    quasars are a small minority: use it to *rank*, not as an absolute rate.
``bal_fusion_prob``
    BAL probability from the fusion model, known only when the object has a catalogued spectrum.
``bal_lc_prob``
    BAL probability from the light-curve classifier, null when the light curve is too short.

The rule (:func:`combine`)
--------------------------
::

    p_bal           = bal_fusion_prob   if it is known
                      else bal_lc_prob  if it is known
                      else bal_prior    (the training BAL fraction; flag bal_prior_used)
    candidate_score = head_prob * p_bal                 (null if the head output is missing,
                                                         or if the alert has no usable cutouts)
    is_candidate    = candidate_score is not null and candidate_score >= threshold
                      and p_bal is measured (fusion or light curve, never the prior)

Read it as P(quasar worth following) x P(BAL | quasar): an alert scores high only when it looks
like a quasar *and* its BAL evidence is strong. Why these choices:

* **Fusion preferred over the light curve.** The spectrum is the more reliable modality
  (SCIENCE.md: the reference study trusts it more); the fusion model already includes the
  light-curve information, so averaging it with ``bal_lc_prob`` again would double-count the weaker
  modality.
* **No BAL probability -> the prior, flagged, never a candidate.** A young object (a few
  detections) can already look like a quasar in its cutouts and metadata, and a follow-up ranking
  should still order it; the prior BAL fraction (~13%) is the honest BAL factor when nothing is
  measured. Because a prior is not evidence, the flag ``bal_prior_used`` marks such scores and
  they never make an alert a candidate; the alert becomes one when its light curve grows enough
  for ``bal_lc_prob`` or it matches a known spectrum. Without a prior (``bal_prior=None``) the
  score is null with flag ``no_bal_probability``.
* **No usable cutouts -> null.** When all three stamps are missing or undecodable (or every image
  is flat), the encoder would embed an empty tensor; a score from that is not the ranking head's
  score. Flag ``no_cutouts``. One or two missing stamps are fine: the tensor's invalid-pixel channel
  tells the encoder which pixels are absent and the alert is scored.
* **No head probability for another reason** (the bundle has no ranking head, or it returned a
  non-finite value) -> null with flag ``no_ranking_head``.
* Probabilities outside [0, 1] (never produced by the shipped models) are clipped; infinities are
  treated as null.

Ranking-head inputs (:func:`assemble_head_inputs`)
--------------------------------------------------
Three named float32 arrays, the ONNX input names of ``ranking_head.onnx``:

* ``"embedding"``  ``[N, E]``: the cutout encoder's output (``cutout_encoder.onnx``, input
  ``"cutouts"`` built by :func:`broker_plugin.photometry.cutouts.cutout_batch`).
* ``"lc_features"`` ``[N, len(FEATURE_NAMES)]``: the feature vector in ``FEATURE_NAMES`` order.
* ``"meta"`` ``[N, len(HEAD_META_NAMES)]``: ``Alert.meta`` in :data:`META_FIELDS` order (the other
  survey's fields are NaN) and a survey indicator (``survey_lsst``: 1 for Rubin, 0 for ZTF).

NaN (and any non-finite value) is passed through as NaN: the exported graph imputes (training
median) and adds a missing-value indicator for every feature and metadata column itself, so that
the imputation cannot drift from the one used at training.

Calling sequence for the inference stage::

    head_prob, cutout_ok, cutout_flags = head_probability(encoder_session, head_session, features, alerts)
    score, is_candidate, flags = combine(bal_lc_prob, bal_fusion_prob, head_prob, threshold,
                                         cutout_ok=cutout_ok)
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from broker_plugin.alert import CUTOUT_KINDS, Alert
from broker_plugin.decode import META_FIELDS
from broker_plugin.photometry.cutouts import FLAG_DROPPED_BUDGET, FLAG_DROPPED_SIZE, cutout_batch
from broker_plugin.photometry.features import FEATURE_NAMES

#: Input names of ``ranking_head.onnx``, in the graph's order, and its output name.
HEAD_INPUTS: tuple[str, ...] = ("embedding", "lc_features", "meta")
HEAD_OUTPUT: str = "probability"
#: Input / output names of ``cutout_encoder.onnx`` (the same as training.contrastive.ONNX_INPUT/OUTPUT).
ENCODER_INPUT: str = "cutouts"
ENCODER_OUTPUT: str = "embedding"
#: Columns of the head's ``meta`` input: every Alert.meta field, then the survey indicator.
SURVEY_INDICATOR: str = "survey_lsst"
HEAD_META_NAMES: tuple[str, ...] = (*META_FIELDS, SURVEY_INDICATOR)

#: Flags :func:`combine` can add (each explains a null ``candidate_score``).
FLAG_NO_CUTOUTS = "no_cutouts"
FLAG_NO_BAL_PROB = "no_bal_probability"
FLAG_BAL_PRIOR = "bal_prior_used"
FLAG_NO_HEAD = "no_ranking_head"
FLAG_DESCRIPTIONS: dict[str, str] = {
    FLAG_NO_CUTOUTS: "all three cutouts missing, undecodable or flat: no image embedding, candidate_score null",
    FLAG_NO_BAL_PROB: "neither a fusion nor a light-curve BAL probability: candidate_score null",
    FLAG_NO_HEAD: "no ranking-head probability (no head in the bundle, or a non-finite output): "
    "candidate_score null",
}


class Session(Protocol):
    """The part of ``onnxruntime.InferenceSession`` used here (kept structural: no onnxruntime import)."""

    def run(self, output_names: list[str] | None, input_feed: dict[str, Any]) -> list[Any]: ...


# --------------------------------------------------------------------------------------------------
# Ranking-head inputs
# --------------------------------------------------------------------------------------------------


def _finite_f32(a: np.ndarray) -> np.ndarray:
    """float32 copy with every non-finite value (including float64 values that overflow float32) as NaN."""
    with np.errstate(over="ignore", invalid="ignore"):
        out = np.asarray(a, dtype=np.float64).astype(np.float32)
    out[~np.isfinite(out)] = np.nan
    return out


def meta_matrix(alerts: Sequence[Alert]) -> np.ndarray:
    """``[N, len(HEAD_META_NAMES)]`` float32: each alert's meta in META_FIELDS order, then survey_lsst.

    Reads ``Alert.meta`` by name (a missing key is NaN), so an alert built by hand or by an older
    decoder still gives the right columns.
    """
    n = len(alerts)
    out = np.full((n, len(HEAD_META_NAMES)), np.nan, dtype=np.float64)
    nan = float("nan")
    for i, a in enumerate(alerts):
        m = a.meta
        row = out[i]
        for j, name in enumerate(META_FIELDS):
            v = m.get(name, nan)
            try:
                row[j] = float(v)
            except (TypeError, ValueError):
                row[j] = nan
        row[-1] = 1.0 if a.survey == "lsst" else 0.0
    return _finite_f32(out)


def assemble_head_inputs(
    embeddings: np.ndarray, features: np.ndarray, alerts: Sequence[Alert]
) -> dict[str, np.ndarray]:
    """The ranking head's input feed ``{"embedding", "lc_features", "meta"}`` for N alerts.

    ``embeddings`` is ``[N, E]`` (cutout encoder output), ``features`` ``[N, len(FEATURE_NAMES)]``
    (``compute_features_batch`` output, FEATURE_NAMES order), ``alerts`` the N decoded alerts, all
    in the same order. Training calls this very function, so the head sees identical numbers in
    both places. Raises ValueError on mismatched shapes: a silent misalignment would score every
    alert with another alert's data.
    """
    emb = np.asarray(embeddings)
    feat = np.asarray(features)
    n = len(alerts)
    if emb.ndim != 2 or emb.shape[0] != n:
        raise ValueError(f"embeddings must be [N={n}, E], got shape {emb.shape}")
    if feat.ndim != 2 or feat.shape != (n, len(FEATURE_NAMES)):
        raise ValueError(f"features must be [N={n}, {len(FEATURE_NAMES)}] in FEATURE_NAMES order, got {feat.shape}")
    return {
        "embedding": _finite_f32(emb),
        "lc_features": _finite_f32(feat),
        "meta": meta_matrix(alerts),
    }


# --------------------------------------------------------------------------------------------------
# Running the two models
# --------------------------------------------------------------------------------------------------


def cutouts_usable(cutout_flags: Sequence[Sequence[str]]) -> np.ndarray:
    """Bool ``[N]``: False where no cutout carries information (see the module docstring).

    ``cutout_flags`` are the per-alert flags of :func:`broker_plugin.photometry.cutouts.cutout_batch`: an alert
    is unusable when every kind is ``cutout_missing_<kind>`` or ``cutout_bad_<kind>``, or when the
    images that are present are all flat (``cutout_flat``), or when its cutouts were not used at all
    (``cutouts_dropped_size``: a stamp over the pixel cap; ``cutouts_dropped_budget``: the batch's
    inflated-bytes budget was spent).
    """
    out = np.ones(len(cutout_flags), dtype=bool)
    for i, flags in enumerate(cutout_flags):
        fs = set(flags)
        if "cutout_flat" in fs or FLAG_DROPPED_SIZE in fs or FLAG_DROPPED_BUDGET in fs or all(
            f"cutout_missing_{k}" in fs or f"cutout_bad_{k}" in fs for k in CUTOUT_KINDS
        ):
            out[i] = False
    return out


def embed_cutouts(encoder: Session, tensors: np.ndarray, batch_size: int = 512) -> np.ndarray:
    """Embeddings ``[N, E]`` of cutout tensors ``[N, C, S, S]`` with the encoder session, in batches
    (bounded memory on a large replay batch)."""
    x = np.ascontiguousarray(tensors, dtype=np.float32)
    parts = [
        np.asarray(encoder.run([ENCODER_OUTPUT], {ENCODER_INPUT: x[i : i + batch_size]})[0], dtype=np.float32)
        for i in range(0, x.shape[0], batch_size)
    ]
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(parts, axis=0)


def run_head(head: Session, inputs: dict[str, np.ndarray]) -> np.ndarray:
    """``[N]`` float64 head probabilities for an :func:`assemble_head_inputs` feed (NaN if non-finite)."""
    n = inputs["meta"].shape[0]
    if n == 0:
        return np.zeros(0, dtype=np.float64)
    out = np.asarray(head.run([HEAD_OUTPUT], {k: inputs[k] for k in HEAD_INPUTS})[0], dtype=np.float64)
    out = out.reshape(n)
    out[~np.isfinite(out)] = np.nan
    return out


def head_probability(
    encoder: Session, head: Session, features: np.ndarray, alerts: Sequence[Alert], *, batch_size: int = 512
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Cutouts -> encoder -> head for a batch: ``(head_prob [N], cutout_ok [N], cutout_flags)``.

    One head run for the batch; the encoder runs once per ``batch_size`` alerts (bounded memory:
    the inference stage passes a bound above its batch size, so it is one run there too).

    ``head_prob`` is the raw head output for every alert (finite even without cutouts: the
    encoder then sees an empty tensor); :func:`combine` nulls the score where ``cutout_ok`` is
    False. ``cutout_flags`` are the per-alert flags of :func:`cutout_batch`, for the output record.
    """
    if len(alerts) == 0:
        return np.zeros(0), np.zeros(0, dtype=bool), []
    tensors, cflags = cutout_batch([a.cutouts for a in alerts])
    emb = embed_cutouts(encoder, tensors, batch_size=batch_size)
    prob = run_head(head, assemble_head_inputs(emb, features, alerts))
    return prob, cutouts_usable(cflags), cflags


# --------------------------------------------------------------------------------------------------
# The rule
# --------------------------------------------------------------------------------------------------


def _prob(a: Any, n: int, name: str) -> np.ndarray:
    """A float64 ``[n]`` probability array: non-finite -> NaN, the rest clipped to [0, 1]."""
    arr = np.asarray(a, dtype=np.float64).reshape(-1)
    if arr.shape[0] == 1 and n != 1:
        arr = np.repeat(arr, n)
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} values, expected {n}")
    arr = arr.copy()
    arr[~np.isfinite(arr)] = np.nan
    return np.clip(arr, 0.0, 1.0)


def combine(
    bal_lc_prob: np.ndarray,
    bal_fusion_prob: np.ndarray,
    head_prob: np.ndarray,
    threshold: float,
    *,
    cutout_ok: np.ndarray | None = None,
    bal_prior: float | None = None,
) -> tuple[np.ndarray, np.ndarray, list[list[str]]]:
    """Apply the documented rule (module docstring) to N alerts.

    Returns ``candidate_score`` (float64 ``[N]``, NaN = null), ``is_candidate`` (bool ``[N]``) and
    per-alert flags explaining every null score. ``threshold`` must be in [0, 1] (the service's
    ``processing.candidate_threshold``). ``cutout_ok`` (from :func:`head_probability` /
    :func:`cutouts_usable`) defaults to all True.
    """
    t = float(threshold)
    if not 0.0 <= t <= 1.0:
        raise ValueError(f"threshold must be in [0, 1], got {threshold!r}")
    head = _prob(head_prob, np.asarray(head_prob).size, "head_prob")
    n = head.shape[0]
    lc = _prob(bal_lc_prob, n, "bal_lc_prob")
    fus = _prob(bal_fusion_prob, n, "bal_fusion_prob")
    ok = np.ones(n, dtype=bool) if cutout_ok is None else np.asarray(cutout_ok, dtype=bool).reshape(-1)
    if ok.shape[0] != n:
        raise ValueError(f"cutout_ok has {ok.shape[0]} values, expected {n}")

    if bal_prior is not None and not 0.0 <= float(bal_prior) <= 1.0:
        raise ValueError(f"bal_prior must be in [0, 1], got {bal_prior!r}")
    p_bal = np.where(np.isnan(fus), lc, fus)
    measured = ~np.isnan(p_bal)
    prior_used = ~measured if bal_prior is not None else np.zeros(n, dtype=bool)
    if bal_prior is not None:
        p_bal = np.where(measured, p_bal, float(bal_prior))
    score = head * p_bal
    no_cut = ~ok
    no_head = ok & np.isnan(head)
    no_bal = np.isnan(p_bal)
    score[no_cut] = np.nan
    is_candidate = np.zeros(n, dtype=bool)
    finite = ~np.isnan(score) & measured
    is_candidate[finite] = score[finite] >= t

    flags: list[list[str]] = [[] for _ in range(n)]
    for mask, flag in ((no_cut, FLAG_NO_CUTOUTS), (no_head, FLAG_NO_HEAD), (no_bal, FLAG_NO_BAL_PROB),
                       (prior_used & ok, FLAG_BAL_PRIOR)):
        for i in np.flatnonzero(mask).tolist():
            flags[i].append(flag)
    return score, is_candidate, flags
