"""Merging an alert's packet light curves with what the history store knows of its object.

Why one function for every path: the service, ``replay`` and training must see the same merged light
curve for the same points, so this is the only code that combines points. Its rules:

* **What an alert may see.** Points seen (first carried by an alert, or taken, for data-release
  rows) at or before the alert's own time. The record of an alert then does not depend on what was
  stored after it: a redelivered batch, a replay in another order or a second worker gives the same
  light curve. Points of the other survey are used only with ``history.cross_survey``.
* **One magnitude kind per band.** A band keeps the kind (``dc`` or ``diff``) the packet's builder
  chose for it, or, for a band the packet lacks, the kind most of its stored points have (``dc`` on a
  tie). Points of the other kind cannot be converted without the reference flux and are left out
  (flag ``history_kind_mismatch``).
* **One point per epoch**, by the builders' own rule
  (:func:`~broker_plugin.photometry.lightcurve_core.sorted_unique_epochs`): the packet's points
  win, then stored alert points, then data-release points; among equals the smaller error, then the
  smaller flux, which is also the rule the store applies when the same key is written twice.
* Magnitudes come from fluxes by the builders' rule
  (:func:`~broker_plugin.photometry.lightcurve_core.flux_to_mag`), so a packet-only band is
  bit-identical to the builder's.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from broker_plugin.alert import HISTORY_ORIGINS, Alert, LightCurve, UpperLimits, lightcurve_span_days, packet_history
from broker_plugin.history.points import (
    ALERT_ORIGIN,
    BANDS,
    DATA_RELEASE_ORIGINS,
    KIND_DC,
    ORIGIN_OF_SURVEY,
    ORIGIN_PRIO,
    ORIGIN_SURVEY,
    PRIO_PACKET,
    Limits,
    Points,
    alert_points,
    limit_points,
)
from broker_plugin.photometry.lightcurve_core import DUPLICATE_TOL_DAYS, flux_to_mag, sorted_unique_epochs

#: Flag: stored points of a band were of the other magnitude kind and could not be used.
KIND_MISMATCH_FLAG = "history_kind_mismatch"
#: Source codes of merged points, indexing :data:`~broker_plugin.alert.HISTORY_ORIGINS`.
_SRC_PACKET, _SRC_STORE, _SRC_DR, _SRC_OTHER = 0, 1, 2, 3
#: Per alert survey, the source code of a stored point by its origin code.
_SOURCE_OF: dict[str, np.ndarray] = {
    survey: np.array([_SRC_OTHER if ORIGIN_SURVEY[o] != survey else _SRC_DR if o in DATA_RELEASE_ORIGINS
                      else _SRC_STORE for o in range(len(ORIGIN_SURVEY))], dtype=np.int8)
    for survey in ("ztf", "lsst")}


def visible(points: Points, survey: str, mjd: float, *, cross_survey: bool,
            window_days: float | None = None) -> np.ndarray:
    """Mask of the stored ``points`` an alert of ``survey`` at time ``mjd`` may use."""
    ok = points.seen <= mjd + DUPLICATE_TOL_DAYS
    if not cross_survey:
        ok &= ORIGIN_OF_SURVEY[survey][points.origin]
    if window_days is not None:
        ok &= points.mjd >= mjd - window_days
    return ok


def _sources(origin: np.ndarray, survey: str) -> np.ndarray:
    """The history origin (store / data release / other survey) of each stored point."""
    return _SOURCE_OF[survey][origin]


def _chosen_kinds(packet: Mapping[str, LightCurve], cand: Points) -> np.ndarray:
    """Per band code: the magnitude kind the merged band uses (-1: no points at all)."""
    kinds = np.full(len(BANDS), -1, dtype=np.int8)
    if len(cand):
        n_dc = np.bincount(cand.band[cand.kind == KIND_DC], minlength=len(BANDS))
        n_all = np.bincount(cand.band, minlength=len(BANDS))
        has = n_all > 0
        kinds[has] = np.where(n_dc[has] * 2 >= n_all[has], KIND_DC, 0)
    for name, lc in packet.items():
        if name in BANDS:
            kinds[BANDS.index(name)] = KIND_DC if lc.kind == "dc" else 0
    return kinds


def merge_points(packet: Mapping[str, LightCurve], packet_pts: Points, cand: Points,
                 survey: str) -> tuple[dict[str, LightCurve], dict[str, Any], int]:
    """Light curves of the packet's points plus ``cand`` (stored points the alert may see).

    Returns the merged light curves (bands in :data:`BANDS` order, the builders' order for both
    surveys), the output record's ``history`` and the number of points left out for their kind.
    """
    cand_prio = ORIGIN_PRIO[cand.origin]
    order = np.lexsort((cand.flux, cand.flux_err, cand_prio))
    cand, cand_prio = cand.take(order), cand_prio[order]
    allp = Points.concat([packet_pts, cand])
    prio = np.concatenate((np.full(len(packet_pts), PRIO_PACKET, dtype=np.int8), cand_prio))
    src = np.concatenate((np.full(len(packet_pts), _SRC_PACKET, dtype=np.int8), _sources(cand.origin, survey)))
    kinds = _chosen_kinds(packet, cand)
    keep = (kinds[allp.band] == allp.kind) & np.isfinite(allp.mjd) & np.isfinite(allp.flux) \
        & np.isfinite(allp.flux_err) & (allp.flux_err > 0)
    mismatched = int(np.count_nonzero(kinds[cand.band] != cand.kind)) if len(cand) else 0
    idx = np.flatnonzero(keep)
    idx = idx[sorted_unique_epochs(allp.band[idx].astype(np.intp), allp.mjd[idx], prio[idx], allp.flux_err[idx])]
    band, mjd, flux, err, src = allp.band[idx], allp.mjd[idx], allp.flux[idx], allp.flux_err[idx], src[idx]
    mag, mag_err = flux_to_mag(flux, err)
    lcs: dict[str, LightCurve] = {}
    history: dict[str, Any] = {o: {} for o in HISTORY_ORIGINS}
    if band.size:
        cuts = np.flatnonzero(np.r_[True, band[1:] != band[:-1], True])
        for a, b in zip(cuts[:-1].tolist(), cuts[1:].tolist(), strict=True):
            name = BANDS[int(band[a])]
            kind = "dc" if kinds[band[a]] == KIND_DC else "diff"
            lcs[name] = LightCurve(name, mjd[a:b], mag[a:b], mag_err[a:b], flux[a:b], err[a:b], kind)
            counts = np.bincount(src[a:b], minlength=len(HISTORY_ORIGINS))
            for s, origin in enumerate(HISTORY_ORIGINS):
                if counts[s]:
                    history[origin][name] = int(counts[s])
    history["span_days"] = lightcurve_span_days(lcs)
    return lcs, history, mismatched


def merge_limits(packet: Mapping[str, UpperLimits], stored: Limits, mjd: float) -> dict[str, UpperLimits]:
    """The packet's upper limits plus the stored ones seen by ``mjd``, one per band and epoch."""
    cand = stored.take(np.flatnonzero(stored.seen <= mjd + DUPLICATE_TOL_DAYS))
    if not len(cand):
        return dict(packet)
    own = limit_points(dict(packet), mjd)
    allp = Limits.concat([own, cand])
    prio = np.concatenate((np.zeros(len(own), dtype=np.int8), np.ones(len(cand), dtype=np.int8)))
    ok = np.flatnonzero(np.isfinite(allp.mjd) & np.isfinite(allp.limit_mag))
    ok = ok[sorted_unique_epochs(allp.band[ok].astype(np.intp), allp.mjd[ok], prio[ok])]
    out: dict[str, UpperLimits] = {}
    band = allp.band[ok]
    for code in np.unique(band).tolist():
        sel = ok[band == code]
        out[BANDS[code]] = UpperLimits(BANDS[code], allp.mjd[sel], allp.limit_mag[sel])
    return out


def merge_alert(alert: Alert, stored: Points, limits: Limits | None = None, *, cross_survey: bool = False,
                window_days: float | None = None, aggregates: Mapping[str, float] | None = None,
                packet: Points | None = None) -> None:
    """Replace ``alert``'s light curves by their merge with ``stored`` (its object's points), in place.

    Sets ``alert.history``; adds :data:`KIND_MISMATCH_FLAG` where stored points had to be left out.
    ``aggregates``: the store's latest survey aggregates of the object, used when the packet has none.
    ``packet``: :func:`~broker_plugin.history.points.alert_points` of the alert, when the caller has it.
    With nothing stored that the alert may see, its light curves are left exactly as the packet's.
    """
    if aggregates and not alert.aggregates:
        alert.aggregates = dict(aggregates)
    if limits is not None and len(limits):
        alert.upper_limits = merge_limits(alert.upper_limits, limits, float(alert.mjd))
    mask = visible(stored, alert.survey, float(alert.mjd), cross_survey=cross_survey,
                   window_days=window_days) if len(stored) else None
    if mask is None or not mask.any():
        alert.history = packet_history(alert.lightcurves)
        return
    own = packet if packet is not None else alert_points(alert)  # the stage has it already
    lcs, history, mismatched = merge_points(alert.lightcurves, own, stored.take(mask),
                                            alert.survey)
    alert.lightcurves = lcs
    alert.history = history
    if mismatched and KIND_MISMATCH_FLAG not in alert.flags:
        alert.flags.append(KIND_MISMATCH_FLAG)


__all__ = ["ALERT_ORIGIN", "KIND_MISMATCH_FLAG", "merge_alert", "merge_limits", "merge_points", "visible"]
