"""Which light curves the light-curve models are trained on: ``bal-broker train --lc-history``.

The problem (train/serve mismatch)
----------------------------------
The reference study classified ZTF *data-release* light curves: ~4 years, hundreds of points per
band. An alert carries much less: ZTF sends 30 days of history (``prv_candidates``, plus forced
photometry ``fp_hists`` in schema 4.x only -- most archived alerts have none), Rubin 12 months
(``prvDiaSources`` / ``prvDiaForcedSources``). The variability features (DRW time scale and
amplitude, structure function, time span, excess variance, ...) of a 30-day light curve have a
very different distribution from those of a 4-year one, so a forest trained only on data-release
light curves is asked, at run time, about objects it has never seen.

The choice (``--lc-history``)
-----------------------------
``dr``
    Data-release light curves only (ZTF g/r, ~4 years): the reference study's setting, and the
    previous default. Best figures on data-release test curves; on alert light curves the model
    extrapolates.
``alert``
    Alert light curves only: ZTF 30-day windows (:data:`ALERT_MIX` 70%) and Rubin 12-month windows
    (30%), each ending at a random detection of the object (an alert is triggered by a detection).
``mixed`` (default)
    Both (:data:`HISTORY_MIXES`): 40% data-release, 40% ZTF alert, 20% Rubin alert. The served
    population is alerts, but a bundle is also used on archival (long) light curves; a mixed
    training set covers both, and the report shows each part separately.

How alert light curves are made
-------------------------------
Synthetic data (the single data path, preferred): each object is simulated as a survey would see it
and written as a real alert packet (:func:`training.synthetic.generate_training_set` with
``photometry="packet"``), which is decoded by :mod:`broker_plugin.decode` into ``Alert.lightcurves``
-- the very code the service runs. Half of the ZTF alerts lose their forced photometry before
normalisation (what every alert of schemas before 4.x, most of the archive, looks like). Measured
cost: ~4 ms per object against ~1.5 ms for a data-release light curve, ~25 s for the default
bundle's 6000 objects.

Real data (DR16Q + IRSA light curves): there is no alert for these objects, so the light curves are
cut to alert-length windows with :func:`truncate_lightcurves` (30 days for the ZTF share, 365 days
for the Rubin share; ZTF photometry in a Rubin-length window is the closest stand-in for a Rubin
history). That reproduces the window but not the difference-imaging selection of alert points.

Evaluation: the report gives the light-curve model's test metrics for every kind separately
(``dr``, ``ztf_alert``, ``lsst_alert``), including kinds left out of training (then on a separately
simulated set, or on cut copies of the held-out real light curves), so a reader sees what
alert-only light curves can do.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import Alert, LightCurve

LC_HISTORIES: tuple[str, ...] = ("dr", "alert", "mixed")
DEFAULT_LC_HISTORY = "mixed"
#: Light-curve kinds, in report order.
KINDS: tuple[str, ...] = ("dr", "ztf_alert", "lsst_alert")
KIND_TITLES: dict[str, str] = {
    "dr": "ZTF data release (~4 yr, g/r)",
    "ztf_alert": "ZTF alert (30-day history)",
    "lsst_alert": "Rubin alert (12-month history)",
}
ALERT_MIX: dict[str, float] = {"ztf_alert": 0.7, "lsst_alert": 0.3}
HISTORY_MIXES: dict[str, dict[str, float]] = {
    "dr": {"dr": 1.0},
    "alert": dict(ALERT_MIX),
    "mixed": {"dr": 0.4, "ztf_alert": 0.4, "lsst_alert": 0.2},
}
#: History windows of the alert kinds (ZTF prv_candidates / fp_hists; Rubin prvDiaSources).
WINDOW_DAYS: dict[str, float] = {"ztf_alert": 30.0, "lsst_alert": 365.0}
#: Share of synthetic ZTF alerts without forced photometry (pre-4.x schemas; see the docstring).
ZTF_NO_FORCED_FRACTION = 0.5


def check_mode(mode: str) -> str:
    if mode not in LC_HISTORIES:
        raise ValueError(f"lc_history must be one of {', '.join(LC_HISTORIES)}, got {mode!r}")
    return mode


def kind_counts(n: int, mode: str) -> dict[str, int]:
    """How many of ``n`` objects get each light-curve kind (largest remainder; sums to ``n``)."""
    mix = HISTORY_MIXES[check_mode(mode)]
    raw = {k: n * f for k, f in mix.items()}
    counts = {k: int(np.floor(v)) for k, v in raw.items()}
    for k in sorted(raw, key=lambda k: -(raw[k] - counts[k]))[: n - sum(counts.values())]:
        counts[k] += 1
    return counts


def sub_seed(seed: int, kind: str) -> int:
    """The seed of one kind's part of a synthetic set (``dr`` keeps ``seed`` itself, so
    ``--lc-history dr`` reproduces the data of earlier bundles)."""
    if kind == "dr":
        return int(seed)
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 1 + KINDS.index(kind)]).generate_state(1)[0])


def eval_seed(seed: int, kind: str) -> int:
    """The seed of an evaluation-only set of ``kind`` (disjoint from every training part)."""
    return int(np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 51 + KINDS.index(kind)]).generate_state(1)[0])


def synthetic_kind_set(kind: str, n: int, seed: int, **kwargs: Any) -> Any:
    """``n`` synthetic objects whose light curves are of ``kind`` (a :class:`TrainingSet`).

    ``dr``: data-release light curves; ``ztf_alert`` / ``lsst_alert``: decoded synthetic alert
    packets (``photometry="packet"``). ``kwargs`` go to ``generate_training_set``.
    """
    from training.synthetic import generate_training_set

    if kind == "dr":
        return generate_training_set(n, seed, photometry="dr", survey="ztf", **kwargs)
    survey = "ztf" if kind == "ztf_alert" else "lsst"
    extra = {"ztf_no_forced_fraction": ZTF_NO_FORCED_FRACTION} if survey == "ztf" else {}
    return generate_training_set(n, seed, photometry="packet", survey=survey, **extra, **kwargs)


def truncate_lightcurves(lcs: Mapping[str, LightCurve], window_days: float,
                         rng: np.random.Generator) -> dict[str, LightCurve]:
    """An alert-length cut of ``lcs``: the points in ``(end - window_days, end]``, where ``end`` is
    one of the object's points (any band) drawn at random -- an alert is triggered by a detection.
    Bands left empty are dropped (an alert has no band without a point)."""
    times = [lc.mjd for lc in lcs.values() if len(lc)]
    if not times:
        return {}
    all_t = np.concatenate(times)
    end = float(all_t[int(rng.integers(all_t.size))])
    out: dict[str, LightCurve] = {}
    for band, lc in lcs.items():
        m = (lc.mjd > end - window_days) & (lc.mjd <= end)
        if m.any():
            out[band] = LightCurve(lc.band, lc.mjd[m], lc.mag[m], lc.mag_err[m], lc.flux[m], lc.flux_err[m],
                                   lc.kind)
    return out


def window_copies(lightcurves: Sequence[Mapping[str, LightCurve]], kind: str,
                  seed: int) -> list[dict[str, LightCurve]]:
    """Every object's light curves as ``kind`` would show them (``dr``: unchanged), for real data."""
    if kind == "dr":
        return [dict(lc) for lc in lightcurves]
    root = np.random.SeedSequence([int(seed) & 0xFFFFFFFF, 101 + KINDS.index(kind)])
    return [truncate_lightcurves(lc, WINDOW_DAYS[kind], np.random.default_rng(child))
            for lc, child in zip(lightcurves, root.spawn(len(lightcurves)), strict=True)]


def assign_kinds(n: int, mode: str, seed: int) -> np.ndarray:
    """A light-curve kind per object (real data): the mix's counts in a seeded random order."""
    counts = kind_counts(n, mode)
    kinds = np.array([k for k in KINDS for _ in range(counts.get(k, 0))], dtype=object)
    np.random.default_rng([int(seed) & 0xFFFFFFFF, 97]).shuffle(kinds)
    return kinds.astype(str)


def describe(mode: str, *, method: str, counts: Mapping[str, int], forced_fraction: bool = True) -> dict[str, Any]:
    """The ``lc_history`` entry of the manifest's training data (``forced_fraction``: whether ZTF
    alerts were stripped of forced photometry, i.e. synthetic packets)."""
    alert = "ztf_alert" in HISTORY_MIXES[mode]
    return {
        "mode": mode, "mix": dict(HISTORY_MIXES[mode]), "counts": {k: int(v) for k, v in counts.items()},
        "window_days": {k: v for k, v in WINDOW_DAYS.items() if k in HISTORY_MIXES[mode]},
        "ztf_no_forced_fraction": ZTF_NO_FORCED_FRACTION if alert and forced_fraction else None,
        "method": method,
    }


def history_lightcurves(alert: Alert, data_release: Mapping[str, LightCurve] | None = None,
                        earlier: Sequence[Alert] = ()) -> dict[str, LightCurve]:
    """The light curves serving gives ``alert`` when the history store holds ``data_release`` (an
    imported data-release light curve of its object) and the packets of ``earlier`` alerts.

    Why here and not a copy of the rule: training that wants store-length histories must build them
    with the very merge the service runs (:func:`broker_plugin.history.merge.merge_alert`, the same
    points, seen times and kinds as :mod:`broker_plugin.history.dr_import` and the stage write), so a
    feature computed in training and at serving time from the same points is the same number
    (``tests/test_history_training.py`` pins it). ``alert`` itself is not changed.
    """
    from broker_plugin.history.merge import merge_alert
    from broker_plugin.history.points import ORIGIN_ZTF_DR, Points, alert_points, lightcurve_points

    stored = Points.concat([lightcurve_points(dict(data_release or {}), ORIGIN_ZTF_DR, None),
                            *(alert_points(e) for e in earlier)])
    copy = dataclasses.replace(alert, lightcurves=dict(alert.lightcurves), flags=list(alert.flags))
    merge_alert(copy, stored)
    return copy.lightcurves
