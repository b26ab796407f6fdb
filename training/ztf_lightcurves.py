"""ZTF light curves from IRSA, for training: a re-export of :mod:`broker_plugin.files.dr_lightcurves`.

The reader moved into the runtime because ``bal-broker history import`` reads the same data-release
light curves that training does, and the runtime never imports ``training``: one reader for both, so
training and serving clean and merge light curves the same way. This module keeps the old import
point (``training.ztf_lightcurves``, and :mod:`training.catalogues` through it) working.
"""

from __future__ import annotations

from broker_plugin.files.dr_lightcurves import (
    OID_GROUP_RADIUS_ARCSEC,
    SOURCE_KEY_COLS,
    ZTF_FILTERCODES,
    ZTF_FILTERIDS,
    LightCurveSet,
    iter_ztf_lightcurve_files,
    load_ztf_lightcurves,
)

__all__ = [
    "OID_GROUP_RADIUS_ARCSEC", "SOURCE_KEY_COLS", "ZTF_FILTERCODES", "ZTF_FILTERIDS",
    "LightCurveSet", "iter_ztf_lightcurve_files", "load_ztf_lightcurves",
]
