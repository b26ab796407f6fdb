"""Rubin (LSST) light curves: DIA sources and forced sources of a Rubin alert, in nJy.

The rules and why are in :mod:`broker_plugin.photometry.lightcurve`, which re-exports this module's
public names; this module holds the Rubin builder only, on the shared steps of
:mod:`~broker_plugin.photometry.lightcurve_core`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from broker_plugin.alert import LSST_BANDS
from broker_plugin.photometry.lightcurve_core import (
    _DC_FRACTION,
    _PRIO_ALERT,
    _PRIO_FORCED,
    _PRIO_HISTORY,
    LightCurveResult,
    _alert_index,
    _any_group,
    _any_row,
    _assemble,
    _batch_table,
    _flag_lists,
    _flag_sets,
    _group,
    _segments,
)

_LSST_INDEX = {b: i for i, b in enumerate(LSST_BANDS)}
#: Every field this module reads from a Rubin diaSource-like row, in all schema spellings (see
#: ZTF_DETECTION_FIELDS for why they are listed).
RUBIN_SOURCE_FIELDS: tuple[str, ...] = ("midpointMjdTai", "midPointTai", "psfFlux", "psFlux", "psfFluxErr",
                                        "psFluxErr", "scienceFlux", "scienceFluxErr", "band", "filterName")
_RUBIN_FLAGS = _flag_sets(("no_history", "dc_magnitudes", "difference_magnitudes", "dc_points_missing",
                           "trigger_point_dropped"))
_RUBIN_KEYS = ("midpointMjdTai", "psfFlux", "psfFluxErr", "scienceFlux", "scienceFluxErr")
_RUBIN_PRIOS = np.array([_PRIO_ALERT, _PRIO_HISTORY, _PRIO_FORCED], dtype=np.int8)
_TRIPLES = np.tile(np.arange(3), 4096)  # 0, 1, 2, 0, 1, 2...: indexes _RUBIN_PRIOS per alert


def _first_key(row: Mapping[str, Any], *names: str) -> str:
    """The first of several version-dependent field names present in a Rubin record."""
    for n in names:
        if n in row:
            return n
    return names[0]


def _rubin_keys(r0: Mapping[str, Any]) -> tuple[tuple[str, ...], str]:
    """The numeric fields (time, psf flux/err, science flux/err) and the band field of an alert's rows.

    Spelt as in the alert's first row: the spelling is the same within one schema version, so it is
    decided once per alert (and a batch may mix schema versions).
    """
    keys = (_first_key(r0, "midpointMjdTai", "midPointTai"), _first_key(r0, "psfFlux", "psFlux"),
            _first_key(r0, "psfFluxErr", "psFluxErr"), "scienceFlux", "scienceFluxErr")
    return keys, _first_key(r0, "band", "filterName")


def rubin_lightcurves(record: Mapping[str, Any]) -> LightCurveResult:
    """Light curves and quality flags of a Rubin alert record (any lsst.alert.packet schema 3.0-11.x).

    Rubin alerts carry no upper limits in the ZTF sense (forced photometry replaces them), so the
    second element is always empty. The batch function on a one-record batch.
    """
    return rubin_lightcurves_batch((record,))[0]


def rubin_lightcurves_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    """:func:`rubin_lightcurves` of every record, computed for the whole batch at once.

    Bit-identical to ``[rubin_lightcurves(r) for r in records]``; records of different schema
    versions (field spellings) may be mixed. If a record would make :func:`rubin_lightcurves`
    raise, this may raise for the whole batch: redo it alert by alert to find the record.
    """
    with np.errstate(all="ignore"):
        return _rubin_batch(records)


def _rubin_batch(records: Sequence[Mapping[str, Any]]) -> list[LightCurveResult]:
    n = len(records)
    if n == 0:
        return []
    # --- rows of every alert, alert after alert: diaSource, prvDiaSources, prvDiaForcedSources
    rows: list[Mapping[str, Any]] = []
    vals: list[tuple[Any, ...]] = []
    bands: list[int] = []
    ends: list[int] = []
    alert_keys: list[tuple[str, ...]] = []
    counts: list[int] = []  # rows per (alert, priority)
    no_history: list[bool] = []
    for record in records:
        src = record.get("diaSource")
        prv = record.get("prvDiaSources") or []
        forced = record.get("prvDiaForcedSources") or []
        no_history.append(not prv and not forced)
        head = [src] if isinstance(src, Mapping) else []
        a_rows = [*head, *prv, *forced]
        keys = _RUBIN_KEYS  # (no rows: only the shape of an empty table matters)
        if a_rows:
            keys, k_b = _rubin_keys(a_rows[0])
            vals += [tuple(map(r.get, keys)) for r in a_rows]
            bands += [_LSST_INDEX.get(b, -1) if isinstance(b := r.get(k_b), str) else -1 for r in a_rows]
            rows += a_rows
        alert_keys.append(keys)
        counts += (len(head), len(prv), len(forced))
        ends.append(len(rows))

    t, f, fe, sf, sfe = _batch_table(vals, 5, lambda: _segments(rows, ends, alert_keys.__getitem__))
    band = np.array(bands, dtype=np.intp)
    prio = np.repeat(_RUBIN_PRIOS[_TRIPLES[:3 * n]] if n <= _TRIPLES.size // 3 else np.tile(_RUBIN_PRIOS, n), counts)
    alert = _alert_index(ends)
    nb = len(LSST_BANDS)
    group = _group(alert, band, n, nb)
    use = (band >= 0) & np.isfinite(t)
    has_sci = np.isfinite(sf) & np.isfinite(sfe) & (sfe > 0)
    n_all = np.bincount(group[use], minlength=n * nb)
    n_sci = np.bincount(group[use & has_sci], minlength=n * nb)
    dc_group = (n_sci > 0) & (n_sci >= _DC_FRACTION * n_all)
    dc = dc_group[group] & use
    missing = dc & ~has_sci
    flux, err = np.where(dc, sf, f), np.where(dc, sfe, fe)
    lcs = _assemble(LSST_BANDS, n, np.where(use & ~missing, group, -1), t, flux, err, prio, dc_group)
    # the alert's own diaSource (its rows' priority _PRIO_ALERT) that no light curve holds
    kept = use & ~missing & np.isfinite(flux) & np.isfinite(err) & (err > 0)
    trigger_lost = (prio == _PRIO_ALERT) & ~kept

    present = n_all > 0
    flags = _flag_lists(_RUBIN_FLAGS, no_history, (
        _any_group(present & dc_group, n, nb),  # dc_magnitudes
        _any_group(present & ~dc_group, n, nb),  # difference_magnitudes
        _any_row(alert, missing, n),  # dc_points_missing
        _any_row(alert, trigger_lost, n)))  # trigger_point_dropped
    return [(lc, {}, fl) for lc, fl in zip(lcs, flags, strict=True)]
