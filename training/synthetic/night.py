"""Nights of synthetic alerts (:func:`generate_night`, :func:`iter_night`, :func:`write_night`).

Each alert comes from its own object. For a DRW or periodic object the alert's epoch is a
detection chosen at random among all its detections (any band) of a two-year search window, and
the whole simulated history is moved by a whole number of days so that epoch falls on the night
(the field's right ascension moves with it, so the observing season stays consistent; the moon
phase of old epochs and the calendar of the template do not). Objects never detected are drawn
again. This keeps the selection of alerting objects right (an object is picked in proportion to
how often it is detected: faint, quiet quasars rarely alert, as in the real stream) at ~2.5
simulations per ZTF quasar alert instead of ~10 with a fixed night. Supernovae and artefacts
are placed directly on the night.

Data-release archive (:mod:`.dr_archive`, ``write_night(..., dr_fraction=, dr_path=)``): a
fraction of the ZTF alerts of DRW or periodic objects is simulated over several years instead of
the packet window plus the search window; the alert is still a detection of the last 730 days and
the packet is cut to the same window, so the packet's distribution is unchanged, and the archive
gets the object's PSF light curve of the same realisation up to a cutoff before the alert. The
choice of those alerts uses a random stream of its own: with ``dr_fraction=0`` a night is the
same, alert for alert, as without an archive.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .dr_archive import DR_BASELINE_DAYS, DR_VARIABILITY, DrArchiveWriter, DrEpochs, dr_epochs
from .lightcurves import RUBIN_START_MJD, ZTF_MIDNIGHT, ZTF_START_MJD, SurveyData, opposition_ra, simulate_survey
from .packet_common import AlertContext
from .population import (
    DEFAULT_BAL_FRACTION,
    DEFAULT_STREAM_MIX,
    BalLightCurveEffect,
    SimObject,
    draw_object,
    normalise_mix,
)
from .rubin_packets import write_rubin_packet
from .ztf_packets import write_ztf_packet

#: Default night: 2026-03-31 (MJD), five months into LSST and eight years into ZTF.
DEFAULT_NIGHT_MJD = 61130
_SEARCH_DAYS = 730.0  # how far back an alerting detection is looked for (see module docstring)
#: Simulated history before the alert: enough for ZTF's 30-day window (+ the detection counts
#: ndethist/ncovhist, which therefore cover 90 days, not the whole survey) and Rubin's 12 months.
DEFAULT_HISTORY_DAYS = {"ztf": 90.0, "lsst": 365.0}
_MAX_TRIES = 60


# ------------------------------------------------------------------------------------------------
# Choosing the alerting epoch
# ------------------------------------------------------------------------------------------------


def _shift(data: SurveyData, obj: SimObject, days: float) -> None:
    """Move every epoch of ``data`` by ``days`` (whole days) and the field's RA with the Sun."""
    for p in data.phot.values():
        p.mjd = p.mjd + days
    for b in data.cadence.mjd:
        data.cadence.mjd[b] = data.cadence.mjd[b] + days
    data.ref_window = (data.ref_window[0] + days, data.ref_window[1] + days)
    obj.ra = float((obj.ra + days * 360.0 / 365.2422) % 360.0)


def _truncate(data: SurveyData, t_max: float, t_min: float) -> None:
    """Drop epochs after ``t_max`` (the future) and before ``t_min``."""
    for b, p in data.phot.items():
        keep = (p.mjd <= t_max + 1e-9) & (p.mjd >= t_min)
        p.mjd, p.m5, p.true_mag = p.mjd[keep], p.m5[keep], p.true_mag[keep]
        p.diff_flux, p.flux_err, p.detected = p.diff_flux[keep], p.flux_err[keep], p.detected[keep]
        data.cadence.mjd[b] = p.mjd
        data.cadence.m5[b] = p.m5


def simulate_alert(
    obj: SimObject,
    survey: str,
    band: str | None,
    night_mjd: int,
    rng: np.random.Generator,
    *,
    history_days: float,
    keep: Callable[[SurveyData, float], None] | None = None,
) -> tuple[SurveyData, str, int] | None:
    """Simulate ``obj`` so that it is detected on ``night_mjd``: (data, band, epoch index), or None.

    Supernovae and artefacts are observed on the night in ``band`` (drawn if None). Other objects
    are simulated over ``history_days`` + 730 days; one of their detections (any band, or ``band``
    if given) in the last 730 days is picked at random and the history shifted onto the night (see
    the module docstring). None means the object was not detected.

    ``keep(data, t_alert)``, if given, extends the simulation of a DRW/periodic object to
    :data:`.dr_archive.DR_BASELINE_DAYS` and is called with the shifted history before it is cut
    to ``history_days`` (the data-release archive reads its epochs there); supernovae and
    artefacts ignore it.
    """
    midnight = ZTF_MIDNIGHT if survey == "ztf" else 0.167
    start = ZTF_START_MJD if survey == "ztf" else RUBIN_START_MJD
    if obj.variability in ("sn", "bogus"):
        if band is None:
            band = _pick_band(rng, survey)
        t_alert = night_mjd + midnight + float(rng.uniform(-0.14, 0.10))
        if obj.variability == "sn":
            obj.params["t0"] = t_alert - float(rng.uniform(-8.0, 45.0))
        data = simulate_survey(obj, survey, t_alert, rng, baseline_days=history_days, force=(band, t_alert))
        p = data.phot[band]
        j = int(np.argmin(np.abs(p.mjd - t_alert)))
        return (data, band, j) if p.detected[j] else None
    t_end = night_mjd + 1.0
    long = keep is not None and obj.variability in DR_VARIABILITY
    baseline = min(max(DR_BASELINE_DAYS, history_days + _SEARCH_DAYS) if long else history_days + _SEARCH_DAYS,
                   t_end - start)
    search_from = t_end - min(_SEARCH_DAYS, baseline)
    data = simulate_survey(obj, survey, t_end, rng, baseline_days=baseline)
    cands = [(b, int(j)) for b, p in data.phot.items() if band is None or b == band
             for j in np.flatnonzero(p.detected & (p.mjd >= search_from))]
    if not cands:
        return None
    band, j = cands[int(rng.integers(len(cands)))]
    t_det = float(data.phot[band].mjd[j])
    shift = float(night_mjd - math.floor(t_det))
    _shift(data, obj, shift)
    t_alert = t_det + shift
    if long and keep is not None:
        keep(data, t_alert)
    _truncate(data, t_alert, max(t_alert - history_days, start))
    p = data.phot[band]
    j = int(np.argmin(np.abs(p.mjd - t_alert)))
    return data, band, j


_BAND_P = {
    "ztf": (("g", "r"), np.array([0.5, 0.5])),
    "lsst": (("u", "g", "r", "i", "z", "y"), np.array([0.068, 0.097, 0.223, 0.223, 0.195, 0.195]) / 1.001),
}


def _pick_band(rng: np.random.Generator, survey: str) -> str:
    bands, p = _BAND_P[survey]
    return _pick(rng, list(bands), p / p.sum())



# ------------------------------------------------------------------------------------------------
# Nights
# ------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, kinds: list[str], probs: np.ndarray) -> str:
    """One of ``kinds`` with probabilities ``probs`` (inverse CDF of one uniform draw)."""
    k = int(np.searchsorted(np.cumsum(probs), rng.random() * float(np.sum(probs)), side="right"))
    return kinds[min(k, len(kinds) - 1)]


def generate_alert(
    index: int,
    rng: np.random.Generator,
    *,
    survey: str,
    kind: str,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
    serial_offset: int = 0,
    archive: DrArchiveWriter | None = None,
    dr_rng: np.random.Generator | None = None,
) -> tuple[bytes, dict[str, Any]]:
    """One alert of an object of ``kind`` (see :func:`population.draw_object`) on ``night_mjd``.

    With ``archive``, a DRW/periodic object is simulated over the whole survey and its data-release
    light curve written there (photometric noise from ``dr_rng``); ``truth["data_release"]`` says
    whether it was.
    """
    hist = history_days if history_days is not None else DEFAULT_HISTORY_DAYS[survey]
    ra0 = opposition_ra(night_mjd)
    result = None
    obj: SimObject | None = None
    fallback = False
    kept: list[DrEpochs] = []
    keep = (lambda d, t: kept.append(dr_epochs(d, t))) if archive is not None else None
    for attempt in range(_MAX_TRIES):
        k = kind if attempt < _MAX_TRIES - 1 else "bogus"
        fallback = k != kind
        # Constant stars would only alert on 5-sigma noise: in a stream, stars are the variable ones.
        obj = draw_object(rng, index, k, bal_fraction=bal_fraction, effect=effect, survey=survey,
                          ra_center=ra0, ra_halfwidth=60.0, star_constant_fraction=0.0)
        result = simulate_alert(obj, survey, None, night_mjd, rng, history_days=hist, keep=keep)
        if result is not None:
            break
    if result is None or obj is None:  # pragma: no cover - the bogus fallback always detects
        raise RuntimeError("could not simulate an alerting object")
    data, band, j = result
    ctx = AlertContext(obj, data, band, j, serial_offset + index)
    if survey == "ztf":
        packet, truth = write_ztf_packet(ctx, rng, stamps=stamps)
    else:
        packet, truth = write_rubin_packet(ctx, rng, stamps=stamps)
    truth["attempts"] = attempt + 1
    truth["fallback_bogus"] = fallback
    truth["data_release"] = bool(kept) and archive is not None
    if kept and archive is not None:
        archive.add(ctx.serial, obj.ra, obj.dec, kept[-1], dr_rng if dr_rng is not None else rng)
    return packet, truth


def iter_night(
    n_alerts: int,
    survey_mix: Mapping[str, float] | None = None,
    seed: int = 0,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    *,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    class_mix: Mapping[str, float] | None = None,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
    dr_fraction: float = 0.0,
    archive: DrArchiveWriter | None = None,
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield the alerts of :func:`generate_night` one at a time, in generation order (constant memory).

    With ``archive``, each ZTF alert is chosen with probability ``dr_fraction`` (from a random
    stream of its own, so the other alerts do not change) to have its object's data-release light
    curve written there if the object is a DRW or periodic one (see :mod:`.dr_archive`).
    """
    if not 0.0 <= dr_fraction <= 1.0:
        raise ValueError(f"dr_fraction must be within [0, 1], not {dr_fraction}")
    s_kinds, s_p = normalise_mix(survey_mix or {"ztf": 0.7, "lsst": 0.3})
    c_kinds, c_p = normalise_mix(class_mix or DEFAULT_STREAM_MIX)
    for s in s_kinds:
        if s not in ("ztf", "lsst"):
            raise ValueError(f"unknown survey {s!r} in survey_mix")
    root = np.random.SeedSequence(seed)
    serial_offset = int(np.random.default_rng(root).integers(0, 10**8))
    for i, child in enumerate(root.spawn(n_alerts)):
        rng = np.random.default_rng(child)
        survey = _pick(rng, s_kinds, s_p)
        kind = _pick(rng, c_kinds, c_p)
        dr_rng = np.random.default_rng(child.spawn(1)[0]) if archive is not None else None
        use_dr = dr_rng is not None and survey == "ztf" and dr_rng.random() < dr_fraction
        yield generate_alert(i, rng, survey=survey, kind=kind, night_mjd=night_mjd, bal_fraction=bal_fraction,
                             effect=effect, stamps=stamps, history_days=history_days, serial_offset=serial_offset,
                             archive=archive if use_dr else None, dr_rng=dr_rng)


def generate_night(
    n_alerts: int,
    survey_mix: Mapping[str, float] | None = None,
    seed: int = 0,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    *,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    class_mix: Mapping[str, float] | None = None,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
    sort_by_time: bool = True,
) -> list[tuple[bytes, dict[str, Any]]]:
    """``n_alerts`` synthetic alerts of one night: (packet bytes, truth) pairs, deterministic in ``seed``.

    ``survey_mix`` weights ZTF and Rubin (default 70/30), ``class_mix`` the object kinds (default
    :data:`population.DEFAULT_STREAM_MIX`; ``qso`` splits into BAL/non-BAL with ``bal_fraction``).
    Each alert has its own random stream (``SeedSequence(seed).spawn``), so alert ``i`` does not
    depend on how many alerts are generated. Sorted by alert time unless ``sort_by_time=False``.
    ~60 kB per alert in memory: use :func:`iter_night` / :func:`write_night` for large nights.
    """
    out = list(iter_night(n_alerts, survey_mix, seed, bal_fraction, night_mjd=night_mjd, class_mix=class_mix,
                          effect=effect, stamps=stamps, history_days=history_days))
    if sort_by_time:
        out.sort(key=lambda pt: (pt[1]["mjd"], pt[1]["source_id"]))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


#: File name of the data-release archive in a night's directory when no ``dr_path`` is given.
DR_FILE = "ztf_dr_lightcurves.csv"


def write_night(directory: str | Path, n_alerts: int, *, truth_epochs: bool = False, dr_fraction: float = 0.0,
                dr_path: str | Path | None = None, **kwargs: Any) -> list[Path]:
    """Write the alerts of :func:`iter_night` as ``.avro`` files plus ``truth.jsonl`` into ``directory``.

    ZTF files are named ``ztf_<candid>.avro`` (Avro containers), Rubin ones ``lsst_<diaSourceId>.avro``
    (Confluent wire-format message values, like the Kafka payloads archived by brokers). Each line of
    ``truth.jsonl`` is one alert's truth with its ``file``; per-epoch arrays only if ``truth_epochs``.
    Alerts are written as they are generated (constant memory), in generation order; keyword
    arguments are those of :func:`iter_night`.

    ``dr_fraction`` > 0 also writes a data-release archive (:mod:`.dr_archive`: one IRSA-style CSV,
    at ``dr_path``, default ``directory/ztf_dr_lightcurves.csv``) of that fraction of the ZTF alerts'
    DRW/periodic objects; their truth rows say ``"data_release": true``.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    archive = DrArchiveWriter(dr_path if dr_path is not None else d / DR_FILE) if dr_fraction > 0 else None
    with (d / "truth.jsonl").open("w") as fh, archive or contextlib.nullcontext():
        for packet, truth in iter_night(n_alerts, dr_fraction=dr_fraction, archive=archive, **kwargs):
            name = f"{truth['survey']}_{truth['source_id']}.avro"
            (d / name).write_bytes(packet)
            paths.append(d / name)
            row = {k: v for k, v in truth.items() if truth_epochs or k != "epochs"}
            row["file"] = name
            fh.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
    return paths
