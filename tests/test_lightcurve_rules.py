"""Two light-curve rules on real records: a triggering detection that cannot be used is flagged,
not silently dropped; an exposure measured twice keeps the measurement with the smaller error."""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_plugin.decode import decode_container_records
from broker_plugin.photometry.lightcurve import rubin_lightcurves, ztf_lightcurves

_JD_TO_MJD = 2400000.5


@pytest.fixture(scope="module")
def ztf_record(ztf_alert_files: list[Path]) -> dict[str, Any]:
    """A real ZTF alert with detections in its history."""
    for p in ztf_alert_files:
        (rec,) = decode_container_records(p.read_bytes())
        if sum(1 for c in rec.get("prv_candidates") or [] if c.get("magpsf") is not None) >= 3:
            return rec
    raise AssertionError("no ZTF alert with history in the shared sample")


@pytest.mark.parametrize("bad", [math.nan, -3.0, math.inf])
def test_an_unusable_ztf_trigger_is_flagged(ztf_record: dict[str, Any], bad: float) -> None:
    rec = copy.deepcopy(ztf_record)
    good_flags = ztf_lightcurves(rec)[2]
    assert "trigger_point_dropped" not in good_flags
    rec["candidate"]["magpsf"] = bad
    lcs, _, flags = ztf_lightcurves(rec)
    assert "trigger_point_dropped" in flags
    t = rec["candidate"]["jd"] - _JD_TO_MJD
    assert all(not np.any(np.abs(lc.mjd - t) < 1e-6) for lc in lcs.values())


def test_an_unusable_rubin_trigger_is_flagged(lsst_alert_files: list[Path]) -> None:
    seen = 0
    for p in lsst_alert_files:
        try:
            (rec,) = decode_container_records(p.read_bytes())
        except Exception:
            continue  # wire-format samples: the containers are enough here
        src = rec.get("diaSource")
        key = "psfFlux" if src and "psfFlux" in src else "psFlux"
        if not src or key not in src:
            continue
        assert "trigger_point_dropped" not in rubin_lightcurves(rec)[2]
        bad = copy.deepcopy(rec)
        bad["diaSource"][key] = math.nan
        bad["diaSource"].pop("scienceFlux", None)
        assert "trigger_point_dropped" in rubin_lightcurves(bad)[2], p.name
        seen += 1
    assert seen


def test_the_same_exposure_twice_keeps_the_smaller_error(ztf_record: dict[str, Any]) -> None:
    rec = copy.deepcopy(ztf_record)
    prv = rec["prv_candidates"]
    reference_lcs = ztf_lightcurves(ztf_record)[0]
    fids = {1: "g", 2: "r", 3: "i"}

    def used(c: dict[str, Any]) -> bool:
        lc = reference_lcs.get(fids.get(c.get("fid"), ""))
        return c.get("magpsf") is not None and lc is not None and bool(
            np.any(np.abs(lc.mjd - (c["jd"] - _JD_TO_MJD)) < 1e-6))

    i = next(k for k, c in enumerate(prv) if used(c))
    worse = dict(prv[i], sigmapsf=prv[i]["sigmapsf"] * 3.0, magpsf=prv[i]["magpsf"] + 0.5)
    for placed in ([*prv[:i], worse, *prv[i:]], [*prv[:i + 1], worse, *prv[i + 1:]]):  # before and after
        rec["prv_candidates"] = placed
        lcs, _, _ = ztf_lightcurves(rec)
        fid = fids[prv[i]["fid"]]
        lc = lcs[fid]
        j = int(np.argmin(np.abs(lc.mjd - (prv[i]["jd"] - _JD_TO_MJD))))
        assert abs(lc.mjd[j] - (prv[i]["jd"] - _JD_TO_MJD)) < 1e-6
        reference = reference_lcs[fid]
        assert lc.flux_err[j] == reference.flux_err[j] and len(lc) == len(reference)
