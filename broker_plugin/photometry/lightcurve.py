"""Per-band light curves from a decoded alert record (ZTF or Rubin), built with numpy.

This is the only place where survey photometry is turned into the :class:`~broker_plugin.alert.LightCurve`
that the feature code sees, so streaming, replay and training all share one set of choices. They are:

Common to both surveys
    * time is MJD; flux is in nJy (AB zero point 31.4: ``mag = 31.4 - 2.5 log10(flux_nJy)``);
    * **flux is signed and mag always agrees with it**: ``mag = 31.4 - 2.5 log10(flux)`` where
      ``flux > 0`` and NaN otherwise, ``mag_err = 2.5/ln10 * flux_err/flux`` (NaN where ``flux <= 0``).
      A point is kept when its time, flux and flux error are finite and the error is positive, so
      arrays stay aligned and a difference-flux light curve keeps its negative epochs;
    * points closer in time than :data:`DUPLICATE_TOL_DAYS` are one epoch: the alert's own
      detection wins over history, detections win over forced photometry;
    * arrays are sorted by time.

ZTF (``kind`` ``"dc"`` or ``"diff"`` per band)
    * detections: ``candidate`` plus ``prv_candidates`` entries with a magpsf; entries without one
      are non-detections and go to :class:`~broker_plugin.alert.UpperLimits` (``diffmaglim``);
    * a detection is dropped when ``sigmapsf`` is not positive, magpsf is implausible, or
      ``nbad > 0`` (bad pixels inside the 5x5 stamp core bias the PSF fit; this costs ~0.2% of the
      detections in the shared sample);
    * a band is **DC** (apparent magnitude of the whole source) when at least half of its points
      (detections and usable forced-photometry rows, which carry their own distnr/magnr) sit on a
      reference-image source (``distnr <= 1.5"`` with a valid ``magnr``/``sigmagnr``):
      ``f = 10^(-0.4 magnr) + s 10^(-0.4 magpsf)`` with ``s = +1`` for ``isdiffpos`` in
      ('t', '1', True) else -1, ``mag = -2.5 log10 f``, ``sigma = sqrt((10^(-0.4 magnr) sigmagnr)^2 +
      (10^(-0.4 magpsf) sigmapsf)^2) / f`` (first-order propagation: dF = 0.4 ln10 F dm for each
      term, and dm = dF / (0.4 ln10 F) for the sum, so the 0.4 ln10 factors cancel).
      Points in a DC band without their own valid reference use the band's median reference
      (flag ``dc_ref_borrowed``); points with ``f <= 0`` are dropped (flag ``dc_nonpositive_dropped``);
    * otherwise the band is **diff**: flux ``= s 10^(-0.4 (magpsf - 31.4))`` (negative for
      ``isdiffpos`` false, with mag NaN per the common rule);
    * forced photometry (schema 4.x ``fp_hists``): rows with ``procstatus == '0'`` and a finite
      flux, positive uncertainty and valid zero point; ``forcediffimflux`` [DN] is converted with
      ``magzpsci`` (flux_nJy = DN * 10^(0.4 (31.4 - magzpsci))). In a DC band every such row is used
      with the reference added (its own reference if valid, else the band's); low-S/N epochs are
      exactly the "quiet" epochs a variability measure needs, and dropping them would bias it. In a
      diff band only |S/N| >= :data:`FP_MIN_SNR` rows are used, as non-detections of a difference
      flux carry no magnitude. Flag ``fp_hists_used`` when any row was kept.

Rubin (``kind`` ``"dc"`` or ``"diff"`` per band)
    * points: ``diaSource`` + ``prvDiaSources`` (detections) + ``prvDiaForcedSources`` (forced
      photometry at the object's position, which carries the quiet epochs);
    * ``psfFlux`` is the difference-image flux; ``scienceFlux`` (forced PSF flux on the science
      image, v5 and v8+) is the total flux of the source and is the analogue of the ZTF DC
      magnitude. A band is **DC** when at least half of its points carry a finite ``scienceFlux``
      with positive error; its points without one are dropped (flag ``dc_points_missing``).
      Otherwise the band uses ``psfFlux`` (``diff``);
    * field names of every schema version 3.0-11.x are handled (``midPointTai``/``midpointMjdTai``,
      ``filterName``/``band``, ``psFlux``/``psfFlux``).

Batches
    An alert carries tens of points, so the cost of building its light curves one alert at a time
    is numpy's per-call overhead (~0.3 us a call, ~100 calls an alert), not arithmetic.
    :func:`ztf_lightcurves_batch` and :func:`rubin_lightcurves_batch` therefore build the light
    curves of a whole batch of alerts with one set of numpy calls over the rows of all of them: each
    row carries its alert's index, bands become groups ``alert * n_bands + band``, one sort orders
    every point by (alert, band, time, priority), and the per-band counts and per-alert flags are
    bincounts over those groups. Their results are **bit-identical** to calling
    :func:`ztf_lightcurves` / :func:`rubin_lightcurves` on each record (same keys in the same order,
    same kinds, same arrays, same flags in the same order; ``tests/test_lightcurve_batch.py``):
    every element goes through the same numpy expressions in the same order, and only the grouping
    is shared. The one-alert functions *are* the batch functions on a one-record batch, so there is
    one implementation of the rules. A record that makes the one-alert function raise may make the
    batch function raise for the whole batch; a caller then redoes the batch alert by alert
    (:meth:`broker_plugin.decode.Decoder.decode_batch`). Anything less (a non-numeric value, a
    missing field, another schema version) changes no other alert's result.

Layout: this module is the public entry point and re-exports the names other code uses; the ZTF
builder lives in :mod:`~broker_plugin.photometry.lightcurve_ztf`, the Rubin builder in
:mod:`~broker_plugin.photometry.lightcurve_rubin`, and the grouping/sorting/assembly steps and
constants both share in :mod:`~broker_plugin.photometry.lightcurve_core`.
"""

from __future__ import annotations

from broker_plugin.photometry.lightcurve_core import (
    DUPLICATE_TOL_DAYS,
    MAG_PER_RELFLUX,
    NJY_ZEROPOINT,
    LightCurveResult,
    mag_to_njy,
)
from broker_plugin.photometry.lightcurve_rubin import RUBIN_SOURCE_FIELDS, rubin_lightcurves, rubin_lightcurves_batch
from broker_plugin.photometry.lightcurve_ztf import (
    DC_MAX_DISTNR,
    FP_MIN_SNR,
    ZTF_DETECTION_FIELDS,
    ZTF_FORCED_FIELDS,
    ztf_lightcurves,
    ztf_lightcurves_batch,
)

__all__ = [
    "DC_MAX_DISTNR",
    "DUPLICATE_TOL_DAYS",
    "FP_MIN_SNR",
    "MAG_PER_RELFLUX",
    "NJY_ZEROPOINT",
    "RUBIN_SOURCE_FIELDS",
    "ZTF_DETECTION_FIELDS",
    "ZTF_FORCED_FIELDS",
    "LightCurveResult",
    "mag_to_njy",
    "rubin_lightcurves",
    "rubin_lightcurves_batch",
    "ztf_lightcurves",
    "ztf_lightcurves_batch",
]
