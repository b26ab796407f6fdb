"""The feature step: light curves -> one ordered, named, versioned vector.

This module is the single definition of the features.  The service (per alert) and training (in
batches) both call it, so a feature is the same number at training and at serving time; the model
bundle records :data:`FEATURE_VERSION` and :data:`FEATURE_NAMES` and the plugin refuses a bundle
trained on anything else.

What is computed
----------------
For each band of :data:`~broker_plugin.alert.FEATURE_BANDS` (g, r), on the magnitudes held in the
band's :class:`~broker_plugin.alert.LightCurve` (``mag``/``mag_err``: apparent "DC" magnitudes where
the decoder could build them, difference-image magnitudes otherwise; ``LightCurve.kind`` says which,
and a ``{band}_mags_diff`` / ``{band}_mags_mixed`` flag records it), :data:`BAND_FEATURES` in that
order, named ``"{band}_{feature}"``; then the colours :data:`COLOR_FEATURES`.  The quasar-variability
statistics brokers use (SCIENCE.md) come from the ``light-curve`` package through one combined Rust
extractor (one call per band); the probability of variability is computed here from its reduced
chi2 (``light-curve``'s own Chi2Pvar loops forever on a non-finite chi2); the damped random walk and
structure function come from :mod:`broker_plugin.photometry.variability`.  No scaling or log transform is
applied: that belongs to the models.

Minimum data (fewer give NaN, i.e. null, plus a flag; never an exception)
-------------------------------------------------------------------------
* ``mean_mag`` and the colours: 1 point per band;  ``time_span``: 2 points.
* every other ``light-curve`` statistic: :data:`MIN_POINTS_LC` (5) points.
* ``drw_*`` and ``sf_*``: :data:`~broker_plugin.photometry.variability.MIN_POINTS` (8) points spanning at least
  :data:`~broker_plugin.photometry.variability.MIN_SPAN_DAYS` (10) days, and enough populated lag bins.

Cleaning (the same for every caller)
------------------------------------
Points whose time or magnitude is non-finite or absurd (``|mjd| >= 1e7``, ``|mag| >= 100``) are
skipped (NaN magnitudes are how a non-positive Rubin flux arrives).  Times are sorted and a repeated
time keeps its first point.  Errors that are non-finite or not positive are replaced by the median of
the band's valid errors; if none is valid, the error-weighted statistics (``excess_variance``,
``reduced_chi2``, ``pvar``) are null and the rest use equal weights.  Errors are clipped to
[:data:`ERR_FLOOR`, :data:`ERR_MAX`] so that weights stay finite.  Any value that still comes out
infinite (overflow on absurd input) is nulled with a ``{band}_nonfinite_features`` flag.

Flags (per alert, in a deterministic order: each band's input flags, then each band's feature flags,
then the colour flag)
----------------------------------------------------------------------------------------------------
``{b}_missing`` (no usable point in band b), ``{b}_too_few_points`` (fewer than MIN_POINTS_LC),
``{b}_too_short_for_drw``, ``{b}_drw_fit_failed``, ``{b}_drw_no_variability`` (``drw_sf_inf`` = 0,
``drw_tau`` null), ``{b}_drw_tau_at_bound``, ``{b}_sf_fit_failed``, ``{b}_points_dropped``,
``{b}_unsorted``, ``{b}_duplicate_times``, ``{b}_errors_imputed``, ``{b}_no_errors``,
``{b}_bad_input`` (arrays of unequal length or not numeric), ``{b}_mags_diff``, ``{b}_mags_mixed``,
``{b}_nonfinite_features``, ``color_kind_mismatch`` (bands of different magnitude kinds: colours
null).  See :data:`FLAG_DESCRIPTIONS`.

Batch and speed
---------------
:func:`compute_features_batch` runs the same code with the DRW/SF arithmetic vectorised across all
alerts, and is bit-identical to :func:`compute_features` row by row (tested); it costs about half as
much per alert, so the service should featurise each consumed batch in one call.
``benchmarks/bench_features.py`` measures both.

Versioning rule
---------------
:data:`FEATURE_VERSION` is ``MAJOR.MINOR``.  Bump MAJOR when names or their order change; bump MINOR
for any other change that can alter any value for any input (a definition, a constant, a cleaning
rule, the DRW/SF estimator, or a ``light-curve`` upgrade that changes an extractor's output).  A
change that leaves every output bit-identical (a speed-up, a refactor) keeps the version;
``tests/test_features.py`` pins reference values to catch accidental changes.  A model is valid only
for the exact version it was trained with.

Layout: the names, descriptions, flags and version live in
:mod:`broker_plugin.photometry.feature_names` and the per-band cleaning in
:mod:`broker_plugin.photometry.feature_clean` (both re-exported here); this module holds the
extractors that compute the features.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import light_curve as lc
import numpy as np
from scipy.special import gammainc

from broker_plugin.alert import FEATURE_BANDS, LightCurve
from broker_plugin.photometry.feature_clean import (
    _FLAG,
    ERR_FLOOR,
    ERR_MAX,
    MAG_ABS_MAX,
    MJD_ABS_MAX,
    _Band,
    _clean_band,
)
from broker_plugin.photometry.feature_names import (
    BAND_FEATURE_DESCRIPTIONS,
    BAND_FEATURES,
    COLOR_FEATURE_DESCRIPTIONS,
    COLOR_FEATURES,
    FEATURE_DESCRIPTIONS,
    FEATURE_NAMES,
    FEATURE_VERSION,
    FLAG_DESCRIPTIONS,
    MIN_POINTS_LC,
)
from broker_plugin.photometry.variability import (
    STATUS_DRW_FAILED,
    STATUS_NO_VARIABILITY,
    STATUS_SF_FAILED,
    STATUS_TAU_AT_BOUND,
    STATUS_TOO_SHORT,
    VARIABILITY_COLUMNS,
    variability_features_many,
)

__all__ = [
    "BAND_FEATURES",
    "BAND_FEATURE_DESCRIPTIONS",
    "COLOR_FEATURES",
    "COLOR_FEATURE_DESCRIPTIONS",
    "ERR_FLOOR",
    "ERR_MAX",
    "FEATURE_DESCRIPTIONS",
    "FEATURE_NAMES",
    "FEATURE_VERSION",
    "FLAG_DESCRIPTIONS",
    "MAG_ABS_MAX",
    "MIN_POINTS_LC",
    "MJD_ABS_MAX",
    "FeatureVector",
    "compute_features",
    "compute_features_batch",
    "features_to_dict",
]





class FeatureVector(NamedTuple):
    """One alert's features: ``values`` in :data:`FEATURE_NAMES` order (float64, NaN = null)."""

    values: np.ndarray
    flags: list[str]


# --- the light-curve extractor: built once, one Rust call per band ---------------------------------
_EXTRACTOR = lc.Extractor(
    lc.WeightedMean(),
    lc.Amplitude(),
    lc.StandardDeviation(),
    lc.MedianAbsoluteDeviation(),
    lc.InterPercentileRange(0.1),
    lc.Skew(),
    lc.Kurtosis(),
    lc.BeyondNStd(1.0),
    lc.ExcessVariance(),
    lc.ReducedChi2(),
    lc.EtaE(),
    lc.StetsonK(),
    lc.LinearTrend(),
    lc.Duration(),
)
#: Our per-band name -> the extractor's output name.
_LC_SOURCE: dict[str, str] = {
    "mean_mag": "weighted_mean",
    "amplitude": "amplitude",
    "std": "standard_deviation",
    "mad": "median_absolute_deviation",
    "ipr_10_90": "inter_percentile_range_10",
    "skew": "skew",
    "kurtosis": "kurtosis",
    "beyond_1_std": "beyond_1_std",
    "excess_variance": "excess_variance",
    "reduced_chi2": "chi2",
    "eta_e": "eta_e",
    "stetson_k": "stetson_K",
    "linear_trend": "linear_trend",
    "time_span": "duration",
}
_EXT_NAMES = list(_EXTRACTOR.names)
_missing = [v for v in _LC_SOURCE.values() if v not in _EXT_NAMES]
if _missing:  # pragma: no cover - only on an incompatible light-curve release
    raise ImportError(f"light-curve {lc.__version__} lacks extractor outputs {_missing}")
_N_EXT = len(_EXT_NAMES)
_PER_BAND = len(BAND_FEATURES)
_N_BANDS = len(FEATURE_BANDS)
_N_FEATURES = len(FEATURE_NAMES)
_BI = {name: k for k, name in enumerate(BAND_FEATURES)}  # slot of a feature within a band block
_LC_SLOTS = np.array([_BI[k] for k in _LC_SOURCE], dtype=np.intp)
_LC_COLS = np.array([_EXT_NAMES.index(v) for v in _LC_SOURCE.values()], dtype=np.intp)
_CHI2_COL = _EXT_NAMES.index("chi2")
_VAR_SLOTS = np.array([_BI[k] for k in VARIABILITY_COLUMNS], dtype=np.intp)
_S_PVAR = _BI["pvar"]
_S_MEAN = _BI["mean_mag"]
_S_SPAN = _BI["time_span"]
#: Slots nulled below MIN_POINTS_LC points / below 2 points / without valid errors.
_NEED_MIN_LC = np.array(
    [_BI[k] for k in BAND_FEATURES if k not in ("mean_mag", "time_span", *VARIABILITY_COLUMNS)],
    dtype=np.intp,
)
_NEED_ERRORS = np.array([_BI[k] for k in ("excess_variance", "reduced_chi2", "pvar")], dtype=np.intp)
_I_COLOR = _N_BANDS * _PER_BAND  # first colour column

_STATUS_FLAGS = (
    (STATUS_TOO_SHORT, "too_short_for_drw"),
    (STATUS_DRW_FAILED, "drw_fit_failed"),
    (STATUS_NO_VARIABILITY, "drw_no_variability"),
    (STATUS_TAU_AT_BOUND, "drw_tau_at_bound"),
    (STATUS_SF_FAILED, "sf_fit_failed"),
)
_EMPTY = np.empty(0, dtype=np.float64)
#: Above this many light curves, and with n_jobs != 1, the batch uses light-curve's parallel many().
_MANY_MIN_CURVES = 64




def _extract_lc(curves: list[tuple[np.ndarray, np.ndarray, np.ndarray]], n_jobs: int) -> np.ndarray:
    """light-curve statistics of every curve, (len(curves), extractor outputs).

    Inputs are clean (finite, strictly increasing times, positive errors), so the extractor's own
    checks are skipped; ``fill_value`` makes a statistic that needs more points NaN instead of
    raising, so the hot path never goes through an exception.
    """
    if not curves:
        return np.empty((0, _N_EXT))
    if n_jobs != 1 and len(curves) >= _MANY_MIN_CURVES:
        out = _EXTRACTOR.many(curves, sorted=True, check=False, fill_value=np.nan, n_jobs=n_jobs)
        return np.asarray(out, dtype=np.float64).reshape(len(curves), _N_EXT)
    return np.array(
        [_EXTRACTOR(t, m, e, sorted=True, check=False, fill_value=np.nan) for t, m, e in curves],
        dtype=np.float64,
    ).reshape(len(curves), _N_EXT)


def _compute(alerts: Sequence[Mapping[str, LightCurve]], n_jobs: int) -> tuple[np.ndarray, list[list[str]]]:
    """The one implementation behind both entry points (so they cannot disagree)."""
    n_alerts = len(alerts)
    values = np.full((n_alerts, _N_FEATURES), np.nan)
    flags: list[list[str]] = [[] for _ in range(n_alerts)]
    bands: list[_Band] = []
    rows: list[int] = []  # alert * _N_BANDS + band index of each usable band
    for a, lcs in enumerate(alerts):
        fl = flags[a]
        for bi, band in enumerate(FEATURE_BANDS):
            got = _clean_band(lcs.get(band), band, fl)
            if got is not None:
                bands.append(got)
                rows.append(a * _N_BANDS + bi)
    n_curves = len(bands)
    if n_curves:
        curves = [(b.t, b.m, b.e) for b in bands]
        npts = np.array([b.t.shape[0] for b in bands], dtype=np.float64)
        ext = _extract_lc(curves, n_jobs)
        block = np.full((n_curves, _PER_BAND), np.nan)
        block[:, _LC_SLOTS] = ext[:, _LC_COLS]
        dof = npts - 1.0
        block[:, _S_PVAR] = gammainc(0.5 * dof, 0.5 * dof * ext[:, _CHI2_COL])
        short = npts < MIN_POINTS_LC
        if short.any():
            block[np.ix_(short, _NEED_MIN_LC)] = np.nan
            block[npts < 2, _S_SPAN] = np.nan
        no_err = np.array([not b.errors_ok for b in bands])
        if no_err.any():
            block[np.ix_(no_err, _NEED_ERRORS)] = np.nan
        var, status = variability_features_many(curves)
        block[:, _VAR_SLOTS] = var
        inf = np.isinf(block)
        inf_rows = inf.any(axis=1)
        if inf_rows.any():
            block[inf] = np.nan
        per_band = np.full((n_alerts * _N_BANDS, _PER_BAND), np.nan)
        per_band[rows] = block
        values[:, :_I_COLOR] = per_band.reshape(n_alerts, _I_COLOR)
        for k, row in enumerate(rows):
            a, bi = divmod(row, _N_BANDS)
            band = FEATURE_BANDS[bi]
            fl = flags[a]
            if short[k]:
                fl.append(_FLAG[band, "too_few_points"])
            st = int(status[k])
            if st:
                for bit, key in _STATUS_FLAGS:
                    if st & bit:
                        fl.append(_FLAG[band, key])
            if inf_rows[k]:
                fl.append(_FLAG[band, "nonfinite_features"])
        _colors(values, bands, rows, flags)
    return values, flags


def _colors(values: np.ndarray, bands: list[_Band], rows: list[int], flags: list[list[str]]) -> None:
    """g - r colours of the alerts that have both bands with the same kind of magnitudes."""
    by_row = dict(zip(rows, bands, strict=True))
    for a in range(values.shape[0]):
        b1 = by_row.get(a * _N_BANDS)
        b2 = by_row.get(a * _N_BANDS + 1)
        if b1 is None or b2 is None:
            continue
        if b1.kind != b2.kind:
            flags[a].append("color_kind_mismatch")
            continue
        c_mean = values[a, _S_MEAN] - values[a, _PER_BAND + _S_MEAN]
        c_max = b1.mag_min - b2.mag_min
        values[a, _I_COLOR] = c_mean if math.isfinite(c_mean) else np.nan
        values[a, _I_COLOR + 1] = c_max if math.isfinite(c_max) else np.nan


def compute_features(lightcurves: Mapping[str, LightCurve]) -> FeatureVector:
    """Features of one alert from its per-band light curves (bands other than FEATURE_BANDS ignored).

    Never raises on bad data: what cannot be computed is NaN and the reason is in ``flags``.
    Identical, bit for bit, to the same alert's row of :func:`compute_features_batch`.
    """
    with np.errstate(all="ignore"):
        values, flags = _compute((lightcurves,), 1)
    return FeatureVector(values[0], flags[0])


def compute_features_batch(
    lightcurves: Sequence[Mapping[str, LightCurve]], *, n_jobs: int = 1
) -> tuple[np.ndarray, list[list[str]]]:
    """Features of many alerts: an (n, len(FEATURE_NAMES)) float64 array and each alert's flags.

    The DRW/SF fits are vectorised across the whole batch; ``n_jobs`` (-1: all cores) lets the
    light-curve statistics of large batches run in parallel in light-curve's Rust code.  Results are
    identical to calling :func:`compute_features` on each alert.
    """
    with np.errstate(all="ignore"):
        return _compute(list(lightcurves), n_jobs)


def features_to_dict(values: Sequence[float] | np.ndarray) -> dict[str, float | None]:
    """Name -> value for JSON output; NaN (and any non-finite value) becomes None."""
    arr = np.asarray(values, dtype=np.float64).reshape(-1)
    if arr.shape[0] != _N_FEATURES:
        raise ValueError(f"expected {_N_FEATURES} feature values, got {arr.shape[0]}")
    return {name: (v if math.isfinite(v) else None) for name, v in zip(FEATURE_NAMES, arr.tolist(), strict=True)}
