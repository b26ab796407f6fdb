"""Light-curve points as the history store keeps them: one row per measurement, small integer codes.

Why rows of cleaned points (nJy flux, error, time) rather than raw survey records: the light-curve
builders (:mod:`broker_plugin.photometry.lightcurve`) already turned each packet into the points the
feature code sees, with every survey's rules applied once; storing those points means a merged light
curve is the packet's light curve plus more points of the same kind, never a second interpretation
of the raw fields.

What identifies a measurement: the object, the band, the magnitude kind (``dc`` total flux or
``diff`` difference flux: the same exposure may be stored once of each kind) and the exposure time
in microdays (:func:`time_key`; :data:`~broker_plugin.photometry.lightcurve.DUPLICATE_TOL_DAYS` is
one microday, the builders' "same epoch" rule). A ZTF candid or a Rubin diaSourceId names exactly
one (object, band, exposure), so the key is that id's equivalent, and it exists for the points that
carry no id (ZTF upper limits and forced photometry, data-release rows). Writing the same point
again (a replay, an at-least-once redelivery, the next alert's ``prv_candidates``) hits the same key.

Each row also records ``seen``: the time (MJD of the triggering detection) of the first alert that
carried it, or the point's own time for data-release rows. An alert at time T is merged only with
points seen at or before T, so its record is the same whether its batch is processed for the first
time or redelivered after later alerts were stored (see :mod:`broker_plugin.history.merge`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from broker_plugin.alert import Alert, LightCurve, UpperLimits

#: Band codes (an index into this tuple): ZTF's g, r, i and Rubin's six share one list.
BANDS: tuple[str, ...] = ("u", "g", "r", "i", "z", "y")
BAND_CODE: dict[str, int] = {b: i for i, b in enumerate(BANDS)}
#: Magnitude kinds: difference flux, or total (DC) flux of the source.
KIND_DIFF, KIND_DC = 0, 1
#: Where a point came from. The survey of an origin decides whether a point is "other survey".
ORIGIN_ZTF_ALERT, ORIGIN_ZTF_DR, ORIGIN_LSST_ALERT = 0, 1, 2
ORIGIN_SURVEY: dict[int, str] = {ORIGIN_ZTF_ALERT: "ztf", ORIGIN_ZTF_DR: "ztf", ORIGIN_LSST_ALERT: "lsst"}
DATA_RELEASE_ORIGINS: frozenset[int] = frozenset((ORIGIN_ZTF_DR,))
ALERT_ORIGIN: dict[str, int] = {"ztf": ORIGIN_ZTF_ALERT, "lsst": ORIGIN_LSST_ALERT}
#: Merge priorities (lower wins an epoch): the alert's own packet 0, stored alert points 1, data release 2.
PRIO_PACKET, PRIO_ALERT, PRIO_DR = 0, 1, 2

#: Lookup tables indexed by origin code (cheaper than np.isin on the small arrays of one alert):
#: the merge priority of a stored point, and whether an origin belongs to each survey.
ORIGIN_PRIO = np.array([PRIO_DR if o in DATA_RELEASE_ORIGINS else PRIO_ALERT for o in range(len(ORIGIN_SURVEY))],
                       dtype=np.int8)
ORIGIN_OF_SURVEY: dict[str, np.ndarray] = {
    survey: np.array([ORIGIN_SURVEY[o] == survey for o in range(len(ORIGIN_SURVEY))]) for survey in ("ztf", "lsst")}


def time_key(mjd: np.ndarray) -> np.ndarray:
    """The exposure part of a point's key: time in integer microdays."""
    return np.rint(np.asarray(mjd, dtype=np.float64) * 1e6).astype(np.int64)


def kind_code(kind: str) -> int:
    """The stored kind of a LightCurve kind (``"mixed"`` is never produced by the builders: diff)."""
    return KIND_DC if kind == "dc" else KIND_DIFF


@dataclass(slots=True)
class Points:
    """Columns of light-curve points of one or more objects (all arrays the same length)."""

    band: np.ndarray  # int8 band code
    kind: np.ndarray  # int8 KIND_*
    origin: np.ndarray  # int8 ORIGIN_*
    mjd: np.ndarray
    flux: np.ndarray
    flux_err: np.ndarray
    seen: np.ndarray

    def __len__(self) -> int:
        return int(self.mjd.shape[0])

    @classmethod
    def empty(cls) -> Points:
        i, f = np.empty(0, dtype=np.int8), np.empty(0, dtype=np.float64)
        return cls(i, i, i, f, f, f, f)

    def take(self, idx: np.ndarray | slice) -> Points:
        return Points(self.band[idx], self.kind[idx], self.origin[idx], self.mjd[idx], self.flux[idx],
                      self.flux_err[idx], self.seen[idx])

    @classmethod
    def concat(cls, parts: list[Points]) -> Points:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        c = np.concatenate
        return cls(c([p.band for p in parts]), c([p.kind for p in parts]), c([p.origin for p in parts]),
                   c([p.mjd for p in parts]), c([p.flux for p in parts]), c([p.flux_err for p in parts]),
                   c([p.seen for p in parts]))


@dataclass(slots=True)
class Limits:
    """Columns of upper limits (non-detections) of one or more objects."""

    band: np.ndarray
    mjd: np.ndarray
    limit_mag: np.ndarray
    seen: np.ndarray

    def __len__(self) -> int:
        return int(self.mjd.shape[0])

    @classmethod
    def empty(cls) -> Limits:
        f = np.empty(0, dtype=np.float64)
        return cls(np.empty(0, dtype=np.int8), f, f, f)

    def take(self, idx: np.ndarray) -> Limits:
        return Limits(self.band[idx], self.mjd[idx], self.limit_mag[idx], self.seen[idx])

    @classmethod
    def concat(cls, parts: list[Limits]) -> Limits:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        if len(parts) == 1:
            return parts[0]
        return cls(*(np.concatenate([getattr(p, f) for p in parts]) for f in cls.__slots__))


def lightcurve_points(lightcurves: dict[str, LightCurve], origin: int, seen: float | None) -> Points:
    """The points of per-band light curves (bands outside :data:`BANDS` are not kept).

    ``seen`` None means each point's own time (data-release rows: known since they were taken).
    One concatenation per column for all bands (this runs once per alert of every batch).
    """
    named = [(BAND_CODE[name], lc) for name, lc in lightcurves.items() if name in BAND_CODE and len(lc)]
    if not named:
        return Points.empty()
    lcs = [lc for _, lc in named]
    counts = [len(lc) for lc in lcs]
    c = np.concatenate
    band = np.repeat(np.array([code for code, _ in named], dtype=np.int8), counts)
    kind = np.repeat(np.array([kind_code(lc.kind) for lc in lcs], dtype=np.int8), counts)
    mjd = lcs[0].mjd if len(lcs) == 1 else c([lc.mjd for lc in lcs])
    n = mjd.shape[0]
    return Points(band, kind, np.full(n, origin, dtype=np.int8), mjd,
                  lcs[0].flux if len(lcs) == 1 else c([lc.flux for lc in lcs]),
                  lcs[0].flux_err if len(lcs) == 1 else c([lc.flux_err for lc in lcs]),
                  mjd if seen is None else np.full(n, seen))


def limit_points(limits: dict[str, UpperLimits], seen: float) -> Limits:
    """The upper limits of an alert, as rows."""
    parts = []
    for name, ul in limits.items():
        code = BAND_CODE.get(name)
        n = int(ul.mjd.shape[0])
        if code is None or n == 0:
            continue
        parts.append(Limits(np.full(n, code, dtype=np.int8), ul.mjd, ul.limit_mag, np.full(n, seen)))
    return Limits.concat(parts)


def alert_points(alert: Alert) -> Points:
    """The packet points of ``alert`` (before any merge), seen at the alert's time."""
    return lightcurve_points(alert.lightcurves, ALERT_ORIGIN[alert.survey], float(alert.mjd))
