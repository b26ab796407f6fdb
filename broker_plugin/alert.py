"""The normalised alert and its per-band light curves.

Every input (ZTF Avro container, Rubin wire-format message, archive file, synthetic packet) is
turned into one :class:`Alert` by :mod:`broker_plugin.decode`; everything downstream (features,
models, output, training) sees only this type, never a survey's raw record layout. That is what
keeps streaming, replay and training on one data path.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

Survey = Literal["ztf", "lsst"]

#: Bands used by the feature vector. g and r are observed by both ZTF and Rubin, so one feature
#: list serves both surveys; other bands are kept on the Alert for output but not featurised.
FEATURE_BANDS: tuple[str, ...] = ("g", "r")

#: Rubin's six bands, and ZTF's fid -> band name.
LSST_BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
ZTF_FID_BANDS: dict[int, str] = {1: "g", 2: "r", 3: "i"}

#: Cutout roles, the same names for both surveys.
CUTOUT_KINDS: tuple[str, ...] = ("science", "template", "difference")


@dataclass(slots=True)
class LightCurve:
    """One band's detections, cleaned: finite, sorted by time, one point per time.

    ``mag``/``mag_err`` are AB (Rubin) or ZTF-calibrated magnitudes; ``flux``/``flux_err`` are in
    nJy (Rubin psfFlux natively; ZTF converted from the magnitude). ``kind`` says what the
    magnitudes measure: ``"dc"`` (apparent magnitude of the whole source, reference + difference),
    ``"diff"`` (difference-image photometry only) or ``"mixed"``.
    """

    band: str
    mjd: np.ndarray
    mag: np.ndarray
    mag_err: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    kind: str = "diff"

    def __len__(self) -> int:
        return int(self.mjd.shape[0])

    @classmethod
    def empty(cls, band: str, kind: str = "diff") -> LightCurve:
        z = np.empty(0, dtype=np.float64)
        return cls(band, z, z, z, z, z, kind)


@dataclass(slots=True)
class UpperLimits:
    """Non-detections of one band (ZTF prv_candidates with no magpsf): time and limiting mag."""

    band: str
    mjd: np.ndarray
    limit_mag: np.ndarray


@dataclass(slots=True)
class Alert:
    """A decoded alert, normalised across surveys.

    ``record`` is the decoded Avro record exactly as the survey sent it (a read-only mapping: from
    :func:`broker_plugin.decode.decode_alert` a :class:`~broker_plugin.decode.decoder.LazyRecord`, decoded
    in full on first access, since building the Alert needs only a few of its fields);
    ``raw`` the message bytes as received, so that the output can carry the original bytes without
    re-encoding. ``meta`` holds the few scalar context values the ranking head uses (ZTF sgscore1,
    distpsnr1, distnr, drb...; Rubin extendedness, reliability...), NaN where absent.
    """

    survey: Survey
    object_id: str
    source_id: str
    ra: float
    dec: float
    mjd: float
    band: str
    schema_version: str
    record: Mapping[str, Any]
    raw: bytes = b""
    lightcurves: dict[str, LightCurve] = field(default_factory=dict)
    upper_limits: dict[str, UpperLimits] = field(default_factory=dict)
    cutouts: dict[str, bytes | None] = field(default_factory=dict)
    meta: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)
    #: Per-band aggregates the survey computed over the object's whole history (Rubin ``diaObject``:
    #: ``g_psfFluxMean``, ``g_psfFluxSigma``, ``g_psfFluxNdata``, ...; ``firstDiaSourceMjdTai``...),
    #: merged with the history store's latest values where a store is used; empty for ZTF.
    aggregates: dict[str, float] = field(default_factory=dict)
    #: What the light curves rest on, as the output record's ``history`` (:func:`history_summary`);
    #: None until the history stage ran (the packet alone then).
    history: dict[str, Any] | None = None

    def n_points(self) -> dict[str, int]:
        """Points per band actually used, as the output record's ``n_points``."""
        return {b: len(lc) for b, lc in sorted(self.lightcurves.items())}

    def history_summary(self) -> dict[str, Any]:
        """The output record's ``history``: points per band by origin and the span in days.

        Origins: ``packet`` (the alert itself), ``store`` (earlier alerts of the object, from the
        history store), ``data_release`` (imported survey light curves), ``other_survey`` (the same
        object seen by the other survey, with ``history.cross_survey``). Without a history stage
        every point is the packet's.
        """
        if self.history is not None:
            return self.history
        return packet_history(self.lightcurves)


#: The origins of light-curve points in the output record's ``history``, in record order.
HISTORY_ORIGINS: tuple[str, ...] = ("packet", "store", "data_release", "other_survey")


def lightcurve_span_days(lightcurves: Mapping[str, LightCurve]) -> float:
    """Days between the first and last point of any band (0.0 with fewer than two points)."""
    lo, hi = math.inf, -math.inf
    for lc in lightcurves.values():
        if len(lc):
            lo = min(lo, float(lc.mjd[0]))
            hi = max(hi, float(lc.mjd[-1]))
    return hi - lo if hi > lo else 0.0


def packet_history(lightcurves: Mapping[str, LightCurve]) -> dict[str, Any]:
    """The ``history`` of light curves that hold the packet's points only."""
    out: dict[str, Any] = {o: {} for o in HISTORY_ORIGINS}
    out["packet"] = {b: len(lc) for b, lc in sorted(lightcurves.items())}
    out["span_days"] = lightcurve_span_days(lightcurves)
    return out
