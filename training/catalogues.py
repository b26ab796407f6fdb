"""Loaders for the real training inputs, in their real formats (SCIENCE.md, "Real catalogues").

* SDSS DR16Q (Lyke+2020) quasar catalogue, FITS binary table in HDU 1: :func:`load_dr16q` ->
  :class:`QuasarCatalogue`. Also reads the smaller DR16Q-like tables used by picca's tests (SDSS
  ``THING_ID, RA, DEC, PLATE, MJD, FIBERID, Z, BI_CIV``; DESI ``TARGETID, TARGET_RA, TARGET_DEC, Z``
  + BAL columns): every column except a position and a redshift is optional.
* BAL labels from a separate CSV (e.g. a visually inspected list in the style of Naddaf+2023):
  :func:`read_label_csv`, merged by :func:`load_dr16q` (``labels_csv=``).
* SDSS spec-lite spectra ``spec-PLATE-MJD-FIBER.fits``: :func:`load_spec_lite`, :func:`spec_lite_path`.
* ZTF light curves from IRSA (CSV from the light-curve API, IPAC tables, or Parquet - flat with the
  API's columns, or the data-release layout with one row per object and list columns):
  :func:`load_ztf_lightcurves` -> ``{source_key: {band: LightCurve}}``; :func:`match_lightcurves`
  cross-matches sources to the catalogue by position.

Labels: 1 = BAL, 0 = non-BAL, -1 = unknown. DR16Q writes -1 (and some tables NaN) in its BAL
columns where no measurement was made; those rows must stay unknown rather than become non-BALs,
or the 10-20% minority class (SCIENCE.md) would be diluted with unmeasured BALs.

The readers live in one module per format; this module is the stable import point for all of them.
"""

from __future__ import annotations

from .crossmatch import match_lightcurves
from .dr16q import DR16Q_Z_RANGE, QuasarCatalogue, load_dr16q
from .label_csv import (
    LABEL_FIBER_COLS,
    LABEL_FLAG_COLS,
    LABEL_MJD_COLS,
    LABEL_NAME_COLS,
    LABEL_PLATE_COLS,
    LabelTable,
    read_label_csv,
)
from .sdss_names import normalise_name, sdss_name
from .spec_lite import load_spec_lite, spec_lite_name, spec_lite_path
from .ztf_lightcurves import (
    OID_GROUP_RADIUS_ARCSEC,
    SOURCE_KEY_COLS,
    ZTF_FILTERCODES,
    ZTF_FILTERIDS,
    LightCurveSet,
    load_ztf_lightcurves,
)

__all__ = [
    "DR16Q_Z_RANGE", "LABEL_FIBER_COLS", "LABEL_FLAG_COLS", "LABEL_MJD_COLS", "LABEL_NAME_COLS",
    "LABEL_PLATE_COLS", "OID_GROUP_RADIUS_ARCSEC", "SOURCE_KEY_COLS", "ZTF_FILTERCODES", "ZTF_FILTERIDS",
    "LabelTable", "LightCurveSet", "QuasarCatalogue", "load_dr16q", "load_spec_lite", "load_ztf_lightcurves",
    "match_lightcurves", "normalise_name", "read_label_csv", "sdss_name", "spec_lite_name", "spec_lite_path",
]
