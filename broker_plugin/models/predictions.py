"""The contract between the annotation stage and a model stage: :class:`Predictions` and :class:`ModelStage`.

Why a module of its own: :mod:`broker_plugin.models.annotate` consumes predictions and wires the
bundle's stage (:func:`~broker_plugin.models.annotate.load_model_stage`), while
:mod:`broker_plugin.models.inference` produces them. With the contract here both depend on it and
``annotate -> inference -> predictions`` runs one way, instead of the two modules importing each
other inside functions.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from broker_plugin.alert import Alert


@dataclass
class Predictions:
    """What a model stage returns for a batch of n alerts, aligned with the input order.

    Probabilities and scores are float arrays of shape (n,) with NaN meaning null (too few points,
    no known spectrum, ...); ``flags`` optionally adds per-alert reason flags.
    """

    bal_lc_prob: np.ndarray
    bal_fusion_prob: np.ndarray
    candidate_score: np.ndarray
    is_candidate: np.ndarray
    flags: list[list[str]] | None = None

    def __len__(self) -> int:
        return int(self.bal_lc_prob.shape[0])


class ModelStage(Protocol):
    """The interface the model bundle's inference side implements (wired by the bundle owner).

    ``features`` is the (n, len(FEATURE_NAMES)) float64 matrix in FEATURE_NAMES order with NaN
    for missing values; ``alerts`` gives the context (position for spectral cross-match, meta for
    the ranking head, cutouts). ``version`` becomes each record's ``model_version``.
    """

    @property
    def version(self) -> str: ...

    def predict(self, features: np.ndarray, alerts: Sequence[Alert]) -> Predictions: ...
