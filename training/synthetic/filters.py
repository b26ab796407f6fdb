"""Survey bands and filter effective wavelengths, shared by the population, dust and light curves."""

from __future__ import annotations

from typing import Literal

from broker_plugin.alert import LSST_BANDS

#: Stamp morphology hints understood by ``training.synthetic.stamps.render_triplet``.
MORPHOLOGIES: tuple[str, ...] = ("point", "extended", "nuclear", "artifact")

Survey = Literal["ztf", "lsst"]
SURVEY_BANDS: dict[str, tuple[str, ...]] = {"ztf": ("g", "r"), "lsst": LSST_BANDS}

#: Effective wavelengths (Angstrom) of the survey filters. ZTF: Bellm+2019 (g 4746, r 6366);
#: Rubin: LSST filter throughputs (u 3671, g 4827, r 6223, i 7546, z 8691, y 9712).
EFF_WAVELENGTH: dict[str, dict[str, float]] = {
    "ztf": {"g": 4746.0, "r": 6366.0},
    "lsst": {"u": 3671.0, "g": 4827.0, "r": 6223.0, "i": 7546.0, "z": 8691.0, "y": 9712.0},
}
