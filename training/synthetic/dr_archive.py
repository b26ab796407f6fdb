"""A synthetic ZTF data-release archive: the multi-year light curves of some of a night's objects.

What it simulates
    For a ZTF alert of a DRW (quasar, blazar) or periodic (star) object chosen for the archive,
    :func:`training.synthetic.night.simulate_alert` simulates the object over
    :data:`DR_BASELINE_DAYS` (at most from ``ZTF_START_MJD``) instead of its packet and search
    windows alone; once the history is shifted onto the night, the archive covers the 3 to 5 years
    before the alert (a real ZTF data release starts in March 2018: this keeps the demo's archive
    small). The archive then holds science-image PSF
    photometry (:func:`~training.synthetic.lightcurves.observe_direct`: DC magnitudes of the whole
    source, i.e. the simulated true light curve plus the host light under the PSF, with the
    Ivezic+2019 error at each epoch's depth) of the SAME true light curve, at the same ZTF g and r
    epochs, from the start of the simulation up to a data-release cutoff :data:`DR_LAG_DAYS`
    before the alert (a data release always ends before today's alert). Only detections
    (``m_obs < m5``) are kept, as in IRSA's epochal PSF catalogues; every row has ``catflags`` 0.
    One IRSA-style ``oid`` per object and band (IRSA gives one per field, CCD quadrant and filter;
    here each object sits on one field), every row at the object's exact simulated position.
    The CSV layout is that of the IRSA light-curve API (``oid, expid, hjd, mjd, mag, magerr,
    catflags, filtercode, ra, dec, limitmag, field, ccdid, qid, exptime, programid``), so
    :func:`broker_plugin.files.dr_lightcurves.load_ztf_lightcurves` reads it as it reads IRSA's.

What it does not simulate
    No calibration offsets between fields or CCDs (one oid per band), no photometric-system
    offset between the data release and the alert stream's DC magnitudes, no astrometric scatter
    of the per-epoch positions, no flagged (``catflags != 0``) epochs, no correlation between an
    epoch's data-release noise and its difference-image noise (in reality both come from one
    exposure; here they are drawn independently), no i band, no ``hjd`` light-travel correction
    (``hjd`` = ``mjd`` + 2400000.5), and no data-release schedule other than one fixed lag.
    Objects not chosen for the archive, Rubin objects, supernovae and artefacts get no light curve.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import numpy as np

from .lightcurves import ZTF_SIGMA_SYS, SurveyData, mag_from_njy, njy, observe_direct

#: The data release ends this many days before the alert.
DR_LAG_DAYS = 30.0
#: Simulated span of an archived object: three years, plus the two-year window the alert is picked
#: in (the history is shifted by 0-730 days onto the night, so 3-5 years precede the alert).
DR_BASELINE_DAYS = 3 * 365.25 + 730.0
#: Variability models whose objects can have an archive light curve (not supernovae, not artefacts).
DR_VARIABILITY = ("drw", "periodic")
#: IRSA's filter codes of the archived bands.
DR_FILTERCODES = {"g": "zg", "r": "zr"}
#: Column order of the CSV (the IRSA light-curve API's, less the columns nothing here simulates).
DR_COLUMNS = ("oid", "expid", "hjd", "mjd", "mag", "magerr", "catflags", "filtercode", "ra", "dec",
              "limitmag", "field", "ccdid", "qid", "exptime", "programid")
_JD_MJD = 2400000.5
_OID_BASE = 600_000_000_000_000  # IRSA oids are 15-digit numbers (field, quadrant, filter, source)


@dataclass(slots=True)
class DrEpochs:
    """The epochs of one object's history up to the data-release cutoff, per band, before the
    history is cut to the packet window: time, depth, true magnitude and host light under the PSF."""

    mjd: dict[str, np.ndarray]
    m5: dict[str, np.ndarray]
    true_mag: dict[str, np.ndarray]
    host_flux: dict[str, float]
    t_alert: float


def dr_epochs(data: SurveyData, t_alert: float, lag_days: float = DR_LAG_DAYS) -> DrEpochs:
    """The archive's epochs of ``data`` (shifted onto the night, not yet truncated): g and r up to
    ``t_alert - lag_days``. Arrays are copies, so the caller may truncate ``data`` afterwards."""
    cutoff = t_alert - lag_days
    out = DrEpochs({}, {}, {}, {}, float(t_alert))
    for band in DR_FILTERCODES:
        p = data.phot.get(band)
        if p is None:
            continue
        keep = p.mjd <= cutoff
        out.mjd[band], out.m5[band] = p.mjd[keep].copy(), p.m5[keep].copy()
        out.true_mag[band] = p.true_mag[keep].copy()
        out.host_flux[band] = float(data.host_flux.get(band, 0.0))
    return out


def observe_archive(ep: DrEpochs, rng: np.random.Generator,
                    sigma_sys: float = ZTF_SIGMA_SYS) -> dict[str, tuple[np.ndarray, ...]]:
    """PSF photometry of the whole source at the archive's epochs: ``{band: (mjd, mag, magerr, m5)}``,
    detections only (see the module docstring)."""
    out: dict[str, tuple[np.ndarray, ...]] = {}
    for band, t in ep.mjd.items():
        true = ep.true_mag[band]
        f_tot = np.where(np.isfinite(true), njy(np.where(np.isfinite(true), true, 99.0)), 0.0) + ep.host_flux[band]
        total_mag = mag_from_njy(f_tot) if f_tot.size else np.zeros(0)
        obs, err, det = observe_direct(total_mag, ep.m5[band], rng, sigma_sys)
        ok = det & np.isfinite(err) & (err > 0)
        out[band] = (t[ok], obs[ok], err[ok], ep.m5[band][ok])
    return out


class DrArchiveWriter:
    """One night's archive: an IRSA-style CSV at ``path``, one object at a time (:meth:`add`)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fh = self.path.open("w", newline="")
        self._csv = csv.writer(self._fh)
        self._csv.writerow(DR_COLUMNS)
        self.objects = 0
        self.rows = 0

    def add(self, index: int, ra: float, dec: float, ep: DrEpochs, rng: np.random.Generator) -> int:
        """Observe ``ep`` and write the object's rows (oid ``_OID_BASE + 10 index + band``); the rows written."""
        field = 250 + index % 600
        n = 0
        for k, (band, (t, mag, err, m5)) in enumerate(observe_archive(ep, rng).items(), start=1):
            oid = _OID_BASE + 10 * index + k
            for i in range(t.size):
                mjd = float(t[i])
                self._csv.writerow((oid, int(mjd * 1440.0), f"{mjd + _JD_MJD:.6f}", f"{mjd:.6f}",
                                    f"{mag[i]:.4f}", f"{err[i]:.4f}", 0, DR_FILTERCODES[band], f"{ra:.10f}",
                                    f"{dec:.10f}", f"{m5[i]:.3f}", field, 1 + index % 16, 1 + index % 4, 30.0, 1))
            n += t.size
        self.objects += 1
        self.rows += n
        return n

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()

    def __enter__(self) -> DrArchiveWriter:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


__all__ = ["DR_BASELINE_DAYS", "DR_COLUMNS", "DR_FILTERCODES", "DR_LAG_DAYS", "DR_VARIABILITY", "DrArchiveWriter",
           "DrEpochs", "dr_epochs", "observe_archive"]
