"""SDSS spec-lite spectra (``spec-PLATE-MJD-FIBER.fits``): file naming, lookup and the ``COADD`` reader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from .spectrum_preprocessing import Spectrum


def spec_lite_name(plate: int, mjd: int, fiber: int) -> str:
    """``spec-PPPP-MMMMM-FFFF.fits``, the SDSS spec-lite file name."""
    return f"spec-{int(plate):04d}-{int(mjd):05d}-{int(fiber):04d}.fits"


def spec_lite_path(directory: str | Path, plate: int, mjd: int, fiber: int) -> Path:
    """Path of a spec-lite file under ``directory``, flat (``dir/spec-...``) or nested by plate
    (``dir/PPPP/spec-...`` as on the SDSS SAS, or ``dir/P/spec-...``); ``.gz`` accepted.

    Returns the first that exists, else the flat path (so the caller's "missing" message names it).
    """
    d = Path(directory)
    name = spec_lite_name(plate, mjd, fiber)
    for sub in ("", f"{int(plate):04d}", str(int(plate))):
        for suffix in ("", ".gz"):
            p = (d / sub / name) if sub else (d / name)
            p = p.with_name(p.name + suffix)
            if p.is_file():
                return p
    return d / name


def load_spec_lite(path: str | Path) -> Spectrum:
    """Read an SDSS spec-lite file: the ``COADD`` table (HDU 1) -> :class:`~training.spectra.Spectrum`.

    ``flux`` in 1e-17 erg/s/cm2/A, ``loglam`` log10(A, vacuum, observed), ``ivar``; ``ivar`` is set to
    0 where ``and_mask != 0`` (SCIENCE.md) and where flux or ivar is not finite. A missing
    ``and_mask`` column means no mask. ``meta`` gets PLATEID/MJD/FIBERID from the primary header and
    Z from the ``SPALL``/``SPZBEST`` HDU when present.
    """
    from astropy.io import fits

    with fits.open(path, memmap=False) as hdul:
        try:
            coadd = hdul["COADD"]
        except KeyError:
            coadd = hdul[1]
        data = coadd.data
        cols = {c.lower(): c for c in coadd.columns.names}
        for need in ("loglam", "flux", "ivar"):
            if need not in cols:
                raise ValueError(f"{path}: COADD table has no '{need}' column")
        loglam = np.asarray(data[cols["loglam"]], dtype=np.float64)
        flux = np.asarray(data[cols["flux"]], dtype=np.float64)
        ivar = np.asarray(data[cols["ivar"]], dtype=np.float64)
        and_mask = (np.asarray(data[cols["and_mask"]]).astype(np.int64) if "and_mask" in cols
                    else np.zeros(loglam.size, dtype=np.int64))
        meta: dict[str, Any] = {"path": str(path)}
        hdr = hdul[0].header
        for key, out in (("PLATEID", "plate"), ("PLATE", "plate"), ("MJD", "mjd"), ("FIBERID", "fiberid")):
            if key in hdr and out not in meta:
                meta[out] = int(hdr[key])
        for ext in ("SPALL", "SPZBEST"):
            if ext in hdul and "Z" in (hdul[ext].columns.names or []):
                meta["z_pipe"] = float(hdul[ext].data["Z"][0])
                break
    with np.errstate(invalid="ignore"):
        bad = (and_mask != 0) | ~np.isfinite(flux) | ~np.isfinite(ivar) | (ivar < 0)
    ivar = np.where(bad, 0.0, ivar)
    return Spectrum(loglam=loglam, flux=flux, ivar=ivar, and_mask=and_mask, meta=meta)
