"""The synthetic training set behind ``bal-broker train --synthetic N``.

:func:`generate_training_set` draws quasars (BAL with probability ``bal_fraction``; optionally
contaminants too), gives each a light curve per band as the plugin's own
:class:`broker_plugin.alert.LightCurve` (so training features go through the plugin's feature code)
and, for quasars, an SDSS-like spectrum of the C IV window labelled by its balnicity index.

Two kinds of light curve (``photometry``):

``"dr"`` (default)
    Data-release photometry: every epoch of a ``baseline_days`` survey (ZTF g/r by default) where
    the source is detected on the science image (``m_obs < m5``), magnitudes of the whole source
    (``kind = "dc"``). This is what the reference study used (ZTF light curves from IRSA); with
    ~4 years of ZTF data a quasar has ~100-300 points per band.
``"packet"``
    Exactly what the plugin itself extracts from an alert: a synthetic alert packet is written for
    the object (:mod:`training.synthetic.packets`) and decoded with ``broker_plugin.decode``; the light
    curves are the decoded ``Alert.lightcurves`` (ZTF: 30 days of history plus forced photometry;
    Rubin: 12 months). Slower, and needs ``broker_plugin.decode``.

Labels: ``labels[i] = 1`` for BAL (``qso_bal``, BI > 0 on the noiseless spectrum), 0 otherwise;
``classes[i]`` is the full class name. Deterministic in ``seed``: object ``i`` has its own child
generator (``SeedSequence(seed).spawn``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from broker_plugin.alert import LightCurve

from .lightcurves import (
    RUBIN_SIGMA_SYS,
    ZTF_SIGMA_SYS,
    observe_direct,
    rubin_cadence,
    to_lightcurve,
    true_magnitudes,
    ztf_cadence,
)
from .population import (
    CIV_Z_RANGE,
    DEFAULT_BAL_FRACTION,
    BalLightCurveEffect,
    SimObject,
    draw_object,
    normalise_mix,
)
from .spectra import Spectrum, generate_spectrum

Photometry = Literal["dr", "packet"]

#: Default end of the simulated surveys (MJD 61130, 2026-03-31) and ZTF DR baseline (~4 years).
DEFAULT_END_MJD: float = 61130.0
DEFAULT_BASELINE_DAYS: float = 1500.0


@dataclass(slots=True)
class TrainingSet:
    """Per-object light curves, spectra, labels and truth; index ``i`` is one object throughout."""

    lightcurves: list[dict[str, LightCurve]]
    spectra: list[Spectrum | None]
    labels: np.ndarray  # int8, 1 = BAL
    classes: np.ndarray  # str, see population.CLASSES
    z: np.ndarray  # float64, NaN for non-quasars without a redshift
    truth: list[dict[str, Any]]
    meta: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def bal_fraction(self) -> float:
        return float(self.labels.mean()) if len(self) else math.nan

    def subset(self, index: np.ndarray | list[int]) -> TrainingSet:
        """The objects at ``index`` (a new TrainingSet sharing the arrays' contents)."""
        idx = np.asarray(index, dtype=np.int64)
        return TrainingSet(
            [self.lightcurves[i] for i in idx], [self.spectra[i] for i in idx], self.labels[idx],
            self.classes[idx], self.z[idx], [self.truth[i] for i in idx], dict(self.meta),
        )


def dr_lightcurves(obj: SimObject, rng: np.random.Generator, *, survey: str = "ztf",
                   end_mjd: float = DEFAULT_END_MJD, baseline_days: float = DEFAULT_BASELINE_DAYS,
                   bands: tuple[str, ...] | None = None) -> dict[str, LightCurve]:
    """Data-release light curves (science-image photometry, detections only) of ``obj``."""
    if survey == "ztf":
        cad = ztf_cadence(rng, obj.ra, end_mjd - baseline_days, end_mjd)
        sig_sys = ZTF_SIGMA_SYS
    else:
        # A Rubin-like cadence over the whole baseline, even if it begins before LSST did: a
        # training set may want multi-year Rubin light curves before they exist.
        cad = rubin_cadence(rng, obj.ra, end_mjd - baseline_days, end_mjd)
        sig_sys = RUBIN_SIGMA_SYS
    times = {b: t for b, t in cad.mjd.items() if bands is None or b in bands}
    if obj.variability == "sn" and not np.isfinite(obj.params.get("t0", math.nan)):
        obj.params["t0"] = float(rng.uniform(end_mjd - baseline_days + 30.0, end_mjd - 10.0))
    true = true_magnitudes(obj, survey, times, rng)
    out = {}
    for b, t in times.items():
        obs, err, det = observe_direct(true[b], cad.m5[b], rng, sig_sys)
        out[b] = to_lightcurve(b, t[det], obs[det], err[det], "dc")
    return out


def _packet_lightcurves(obj: SimObject, rng: np.random.Generator, survey: str, index: int,
                        end_mjd: float, no_forced_fraction: float = 0.0,
                        ) -> tuple[dict[str, LightCurve] | None, dict[str, Any]]:
    """Light curves the plugin decodes from a synthetic alert of ``obj`` (None if it never alerts).

    A ZTF alert loses its forced photometry with probability ``no_forced_fraction`` (through
    :func:`broker_plugin.decode.alert_from_record`, the runtime's path for decoded records): what
    alerts of ZTF schemas before 4.x, most of the archive, look like."""
    from broker_plugin.decode import alert_from_record, decode_alert

    from .night import DEFAULT_HISTORY_DAYS, simulate_alert
    from .packet_common import AlertContext
    from .rubin_packets import write_rubin_packet
    from .ztf_packets import write_ztf_packet

    res = simulate_alert(obj, survey, None, int(end_mjd), rng, history_days=DEFAULT_HISTORY_DAYS[survey])
    if res is None:
        return None, {}
    data, band, j = res
    ctx = AlertContext(obj, data, band, j, index)
    writer = write_ztf_packet if survey == "ztf" else write_rubin_packet
    packet, truth = writer(ctx, rng, stamps=False)
    alert = decode_alert(packet)
    strip = survey == "ztf" and no_forced_fraction > 0 and rng.random() < no_forced_fraction
    if strip:
        alert = alert_from_record({**alert.record, "fp_hists": None}, schema_version=alert.schema_version,
                                  raw=packet)
    return dict(alert.lightcurves), {"alert_mjd": truth["mjd"], "alert_band": band, "n_prv": truth["n_prv"],
                                     "no_forced": strip}


def _observed_object(rng: np.random.Generator, i: int, kind: str, *, bal_fraction: float,
                     effect: BalLightCurveEffect, survey: str, photometry: Photometry, baseline_days: float,
                     end_mjd: float, z_range: tuple[float, float], min_points: int,
                     ztf_no_forced_fraction: float) -> tuple[SimObject, dict[str, LightCurve], dict[str, Any]]:
    """Object ``i`` of ``kind`` and its light curves, redrawn (up to 50 times) while it has fewer than
    ``min_points`` points or, for packet photometry, never alerts; also the packet truth extras."""
    lc: dict[str, LightCurve] = {}
    for _attempt in range(50):
        obj = draw_object(rng, i, kind, bal_fraction=bal_fraction, effect=effect, survey=survey, z_range=z_range,
                          star_constant_fraction=0.2)
        extra: dict[str, Any] = {}
        if photometry == "dr":
            lc = dr_lightcurves(obj, rng, survey=survey, end_mjd=end_mjd, baseline_days=baseline_days)
        elif photometry == "packet":
            got, extra = _packet_lightcurves(obj, rng, survey, i, end_mjd, ztf_no_forced_fraction)
            if got is None:
                lc = {}  # never alerted: draw again (an object that never alerts keeps no light curve)
                continue
            lc = got
        else:
            raise ValueError(f"photometry must be 'dr' or 'packet', got {photometry!r}")
        if sum(len(v) for v in lc.values()) >= min_points:
            break
    return obj, lc, extra


def _object_truth(obj: SimObject, survey: str, spec: Spectrum | None, extra: dict[str, Any]) -> dict[str, Any]:
    """What a report or test may want to know about one training object (never a feature)."""
    t = {"label": obj.label, "is_bal": obj.is_bal, "z": obj.z, "ebv": obj.ebv, "ra": obj.ra, "dec": obj.dec,
         "mean_mag": {b: obj.mag(survey, b) for b in obj.bands(survey)}, "variability": obj.variability,
         "morphology": obj.morphology, **obj.truth, **extra}
    if obj.variability == "drw":
        t.update({"tau_rest": obj.params["tau_rest"], "tau_obs": obj.params["tau_obs"],
                  "sf_inf": {b: obj.params["sf_inf"][f"{survey}:{b}"] for b in obj.bands(survey)}})
    if spec is not None:
        t["bi_civ"] = spec.bi_civ
        t["bi_civ_observed"] = spec.truth["bi_civ_observed"]
    return t


def generate_training_set(
    n: int,
    seed: int = 0,
    *,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    effect: BalLightCurveEffect | None = None,
    survey: str = "ztf",
    photometry: Photometry = "dr",
    baseline_days: float = DEFAULT_BASELINE_DAYS,
    end_mjd: float = DEFAULT_END_MJD,
    z_range: tuple[float, float] = CIV_Z_RANGE,
    class_mix: Mapping[str, float] | None = None,
    with_spectra: bool = True,
    spectrum_fraction: float = 1.0,
    keep_spectrum_models: bool = False,
    min_points: int = 0,
    ztf_no_forced_fraction: float = 0.0,
) -> TrainingSet:
    """``n`` synthetic objects for training (see the module docstring).

    ``class_mix`` defaults to quasars only (``{"qso": 1}``); add e.g. ``{"star": 0.2, "sn": 0.1}`` for
    contaminants (they get light curves but no spectrum). ``spectrum_fraction`` of the quasars get a
    spectrum (the others ``None``, as objects without SDSS spectroscopy). ``min_points`` redraws
    objects whose light curves have fewer points in total (0: keep everything, as a survey would).
    ``ztf_no_forced_fraction`` (``photometry="packet"``, ZTF): share of alerts stripped of their
    forced photometry, as alerts of ZTF schemas before 4.x are.
    """
    effect = effect or BalLightCurveEffect()
    kinds, probs = normalise_mix(class_mix or {"qso": 1.0})
    root = np.random.SeedSequence(seed)
    lcs: list[dict[str, LightCurve]] = []
    spectra: list[Spectrum | None] = []
    labels = np.zeros(n, dtype=np.int8)
    classes = np.empty(n, dtype=object)
    zs = np.full(n, np.nan)
    truth: list[dict[str, Any]] = []
    for i, child in enumerate(root.spawn(n)):
        rng = np.random.default_rng(child)
        kind = kinds[int(rng.choice(len(kinds), p=probs))]
        obj, lc, extra = _observed_object(
            rng, i, kind, bal_fraction=bal_fraction, effect=effect, survey=survey, photometry=photometry,
            baseline_days=baseline_days, end_mjd=end_mjd, z_range=z_range, min_points=min_points,
            ztf_no_forced_fraction=ztf_no_forced_fraction)
        spec = None
        if obj.is_quasar and with_spectra and rng.random() < spectrum_fraction:
            spec = generate_spectrum(obj.z, obj.is_bal, rng, r_mag=obj.mag("lsst", "r"), ebv=obj.ebv,
                                     keep_model=keep_spectrum_models)
        lcs.append(lc)
        spectra.append(spec)
        labels[i] = 1 if obj.label == "qso_bal" else 0
        classes[i] = obj.label
        zs[i] = obj.z
        truth.append(_object_truth(obj, survey, spec, extra))
    meta = {
        "generator": "training.synthetic", "seed": seed, "n": n, "survey": survey, "photometry": photometry,
        "baseline_days": baseline_days, "end_mjd": end_mjd, "bal_fraction": bal_fraction,
        "ztf_no_forced_fraction": ztf_no_forced_fraction if photometry == "packet" and survey == "ztf" else None,
        "z_range": list(z_range), "class_mix": dict(zip(kinds, probs.tolist(), strict=True)),
        "bal_effect": {"ebv_mean": effect.ebv_mean, "ebv_distribution": effect.ebv_distribution,
                       "color_shift_gr": effect.color_shift_gr, "sf_scale": effect.sf_scale,
                       "tau_scale": effect.tau_scale},
    }
    return TrainingSet(lcs, spectra, labels, classes.astype(str), zs, truth, meta)
