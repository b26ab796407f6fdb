"""The feature definitions: ordered names, their descriptions, the flags, and :data:`FEATURE_VERSION`.

Why a module of its own: bundles, training, reports and the model stage need the names and the
version (to check that a model fits this code) without the extractors' dependencies
(``light-curve``, scipy); and the definition a model is tied to reads in one place. The extractors
that fill these columns, and the bump rule for :data:`FEATURE_VERSION`, are in
:mod:`broker_plugin.photometry.features`, which re-exports every name here.
"""

from __future__ import annotations

from broker_plugin.alert import FEATURE_BANDS

#: Version of the feature definitions (see the module docstring for the bump rule).
FEATURE_VERSION: str = "1.0"

#: Per-band features, in order, with what each measures (units: mag, days).
BAND_FEATURE_DESCRIPTIONS: dict[str, str] = {
    "mean_mag": "error-weighted mean magnitude (light-curve WeightedMean)",
    "amplitude": "half of max - min magnitude",
    "std": "standard deviation of the magnitudes (N-1)",
    "mad": "median absolute deviation from the median magnitude",
    "ipr_10_90": "inter-percentile range, 90th minus 10th percentile magnitude",
    "skew": "sample skewness G1 of the magnitudes",
    "kurtosis": "sample excess kurtosis G2 of the magnitudes",
    "beyond_1_std": "fraction of points more than 1 std from the mean",
    "excess_variance": "(std^2 - mean(err^2)) / mean(mag)^2 (light-curve ExcessVariance, Sanchez+2017 form)",
    "reduced_chi2": "chi2 / (N-1) about the weighted mean",
    "pvar": "probability of variability: P((N-1)/2, chi2/2), the regularised lower incomplete gamma "
    "function (1 minus the chi2 false-alarm probability; McLaughlin+1996)",
    "eta_e": "von Neumann eta for uneven sampling (light-curve EtaE; cadence dependent)",
    "stetson_k": "Stetson K kurtosis-like shape index",
    "linear_trend": "slope of a least-squares straight line, mag/day",
    "time_span": "last minus first time of the band, days",
    "drw_tau": "damped-random-walk time scale, days, observed frame, clipped to [1, 1e4]",
    "drw_sf_inf": "damped-random-walk asymptotic structure function SF_inf, mag",
    "sf_amp": "structure-function power-law amplitude A: SF at a lag of 1 yr (observed frame), mag",
    "sf_slope": "structure-function power-law index gamma in SF = A (dt / 1 yr)^gamma",
}
BAND_FEATURES: tuple[str, ...] = tuple(BAND_FEATURE_DESCRIPTIONS)

#: Colour features (from the first two FEATURE_BANDS, g - r).
COLOR_FEATURE_DESCRIPTIONS: dict[str, str] = {
    "mean_color": "difference of the error-weighted mean magnitudes",
    "max_color": "difference of the brightest (minimum) magnitudes (colour at maximum, ALeRCE g-r_max)",
}

_C1, _C2 = FEATURE_BANDS[0], FEATURE_BANDS[1]
COLOR_FEATURES: tuple[str, ...] = tuple(f"{_C1}_{_C2}_{name}" for name in COLOR_FEATURE_DESCRIPTIONS)

#: The ordered feature names: the single definition every consumer uses.
FEATURE_NAMES: tuple[str, ...] = (
    *(f"{band}_{name}" for band in FEATURE_BANDS for name in BAND_FEATURES),
    *COLOR_FEATURES,
)

#: Human-readable description of every feature, by name (for manifests, reports and docs).
FEATURE_DESCRIPTIONS: dict[str, str] = {
    **{f"{band}_{k}": v for band in FEATURE_BANDS for k, v in BAND_FEATURE_DESCRIPTIONS.items()},
    **{f"{_C1}_{_C2}_{k}": f"{_C1} - {_C2}: {v}" for k, v in COLOR_FEATURE_DESCRIPTIONS.items()},
}

#: Minimum usable points for the light-curve statistics other than mean_mag and time_span.
MIN_POINTS_LC: int = 5

FLAG_DESCRIPTIONS: dict[str, str] = {
    "{b}_missing": "no usable point in band b: all its features are null",
    "{b}_too_few_points": f"fewer than {MIN_POINTS_LC} usable points: variability statistics null",
    "{b}_too_short_for_drw": "too few points or too short a span for the DRW/SF features",
    "{b}_drw_fit_failed": "too few populated lag bins for the DRW fit",
    "{b}_drw_no_variability": "no variance above the noise: drw_sf_inf = 0, drw_tau null",
    "{b}_drw_tau_at_bound": "best DRW tau at the edge of [1, 1e4] days: unconstrained",
    "{b}_sf_fit_failed": "too few lag bins with SF above noise for the power law",
    "{b}_points_dropped": "points with non-finite or absurd time/magnitude were skipped",
    "{b}_unsorted": "times were not sorted (sorted here)",
    "{b}_duplicate_times": "repeated times: the first point of each was kept",
    "{b}_errors_imputed": "some errors invalid: replaced by the band's median valid error",
    "{b}_no_errors": "no valid error: error-weighted statistics null",
    "{b}_bad_input": "arrays not numeric or of unequal length (truncated to the shortest)",
    "{b}_mags_diff": "magnitudes are difference-image photometry, not apparent magnitudes",
    "{b}_mags_mixed": "magnitudes mix apparent and difference-image photometry",
    "{b}_nonfinite_features": "a computed value overflowed and was set to null",
    "color_kind_mismatch": "the bands hold different kinds of magnitudes: colours null",
}
