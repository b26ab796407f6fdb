"""ZTF alert packets (:func:`write_ztf_packet`): Avro Object Container Files holding one ``ztf.alert``
record, the writer schema embedded, codec null: byte for byte the layout of a real ZTF alert file.

``candidate`` is the alert's epoch, ``prv_candidates`` every epoch of the previous 30 days
(detections with a candid, non-detections with only ``diffmaglim``, oldest first), ``fp_hists`` the
forced photometry of those epochs (newest first, as ZTF sends them), and the three cutouts gzipped
FITS 63x63 stamps. Synthetic markers: ``publisher = "bal-broker synthetic"``, ``programpi =
"synthetic"``, and file names under ``synthetic/``.

DC magnitudes. A quasar sits on its own reference-image source, so a consumer recovers its
apparent magnitude from the difference photometry (SCIENCE.md). The packet is built so that this
reconstruction is *exact*: with ``f_ref`` the template flux of the source and ``d`` the observed
difference flux (nJy),

* ``magnr = 31.4 - 2.5 log10 f_ref`` (the reference source; ``distnr`` < 0.6" for point sources),
* ``magpsf = 31.4 - 2.5 log10 |d|``, ``isdiffpos = 't'`` if ``d > 0`` else ``'f'``,
* so ``10^(-0.4 magnr) + s 10^(-0.4 magpsf) = (f_ref + d) 10^(-12.56)`` and the DC magnitude
  ``-2.5 log10(...)`` is exactly ``31.4 - 2.5 log10(f_ref + d)``, the simulated observed total
  magnitude (``truth["epochs"]["dc_mag"]``), up to the float32 rounding of the Avro fields
  (measured worst case 5e-5 mag through ``broker_plugin.decode``).

``fp_hists`` carry ``forcediffimflux = d 10^(0.4 (magzpsci - 31.4))`` in DN with the same
``magnr``, so forced points reconstruct the same way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from .avro_schemas import (
    SYNTHETIC_PUBLISHER,
    ZTF_SCHEMA_VERSION,
    _ztf_templates,
    avro_container,
    ztf_encoder,
    ztf_schema_json,
)
from .lightcurves import MAG_PER_RELFLUX, NJY_ZEROPOINT, SurveyData, mag_error
from .packet_common import AlertContext, _base_truth, _date_str, _epoch_truth, _f32, _mag, stamp_cutouts
from .population import SimObject

#: History carried by a packet: prv_candidates/fp_hists of the previous 30 days.
ZTF_WINDOW_DAYS = 30.0
_JD_OFFSET = 2400000.5
_NID_ZERO_MJD = 57754.0  # ZTF night id 0 (nid = floor(MJD - 57754))
#: Uniform and normal draws used per detection row (pre-drawn in one call per alert).
_DET_U, _DET_N, _FP_U = 14, 4, 6


_LETTERS = "abcdefghijklmnopqrstuvwxyz"


def ztf_object_id(serial: int, year: int) -> str:
    """``ZTF<yy><7 letters>``: the letters spell ``serial`` in base 26, like ZTF's own sequence."""
    s = serial % 26**7
    letters = []
    for _ in range(7):
        s, r = divmod(s, 26)
        letters.append(_LETTERS[r])
    return f"ZTF{year % 100:02d}{''.join(reversed(letters))}"


def _year(mjd: float) -> int:
    return int(2000 + (mjd - 51544.5) / 365.25)


def _ztf_pid(mjd: float, rcid: int) -> int:
    nid = math.floor(mjd - _NID_ZERO_MJD)
    frac = int((mjd - math.floor(mjd)) * 1e6)
    return nid * 10**9 + frac * 10**3 + (rcid % 1000)



_ZTF_FID = {"g": 1, "r": 2, "i": 3}


@dataclass(slots=True)
class _ZtfStatic:
    """Per-object quantities constant over epochs (reference source, PS1/Gaia neighbours, field)."""

    field: int
    rcid: int
    rfid: dict[str, int]
    magnr: dict[str, float | None]
    sigmagnr: dict[str, float | None]
    ranr: float
    decnr: float
    distnr_scale: float
    host_offset: float
    ps1: dict[str, Any]
    gaia: dict[str, Any]
    sharpnr: float
    chinr: float
    classtar: float


def _ztf_static(obj: SimObject, data: SurveyData, rng: np.random.Generator) -> _ZtfStatic:
    field = int(rng.integers(245, 881))
    rcid = int(rng.integers(0, 64))
    magnr: dict[str, float | None] = {}
    sigmagnr: dict[str, float | None] = {}
    for b, p in data.phot.items():
        if p.ref_flux > 0:
            m = _mag(p.ref_flux)
            magnr[b] = _f32(m)
            sigmagnr[b] = _f32(float(mag_error(m, 22.0, 0.008)))  # deep coadd: m5 ~ 22
        else:
            magnr[b] = sigmagnr[b] = None
    off = obj.host_offset_arcsec if obj.morphology == "extended" else 0.0
    pa = rng.uniform(0, 2 * np.pi)
    ranr = obj.ra + off * math.cos(pa) / 3600.0 / max(math.cos(math.radians(obj.dec)), 1e-3)
    decnr = obj.dec + off * math.sin(pa) / 3600.0
    # PS1 nearest source: the object itself (point-like) or its host (SN, BL Lac), then two neighbours.
    g_mag, r_mag = obj.mag("lsst", "g"), obj.mag("lsst", "r")
    if obj.label in ("qso_bal", "qso_nonbal"):
        # Quasars at these magnitudes are mostly classified point-like, faint ones less surely.
        sg1 = float(np.clip(rng.beta(6, 1.5) if r_mag < 20 else rng.beta(3, 2), 0, 1))
    elif obj.label == "star":
        sg1 = float(np.clip(rng.beta(20, 1), 0, 1))
    elif obj.morphology in ("extended", "nuclear"):
        sg1 = float(np.clip(rng.beta(1, 6), 0, 1))
        g_mag = r_mag = obj.host_mag if obj.host_mag is not None else r_mag
    elif obj.label == "bogus":
        sg1 = float(rng.uniform(0, 1))
    else:
        sg1 = float(np.clip(rng.beta(4, 2), 0, 1))
    d1 = off + abs(float(rng.normal(0, 0.15))) if obj.label != "bogus" else float(rng.uniform(1.0, 10.0))
    ps1 = {
        "objectidps1": int(rng.integers(10**16, 2 * 10**17)),
        "sgmag1": _f32(g_mag + rng.normal(0, 0.03)), "srmag1": _f32(r_mag + rng.normal(0, 0.03)),
        "simag1": _f32(obj.mag("lsst", "i") if obj.host_mag is None else r_mag - 0.3),
        "szmag1": _f32(obj.mag("lsst", "z") if obj.host_mag is None else r_mag - 0.45),
        "sgscore1": _f32(sg1), "distpsnr1": _f32(d1),
        "objectidps2": int(rng.integers(10**16, 2 * 10**17)), "objectidps3": int(rng.integers(10**16, 2 * 10**17)),
        "nmtchps": int(rng.integers(2, 30)),
    }
    for k in (2, 3):
        m = float(rng.uniform(15.0, 22.5))
        ps1.update({f"sgmag{k}": _f32(m + 0.6), f"srmag{k}": _f32(m), f"simag{k}": _f32(m - 0.2),
                    f"szmag{k}": _f32(m - 0.3), f"sgscore{k}": _f32(float(rng.uniform(0.3, 1.0))),
                    f"distpsnr{k}": _f32(float(rng.uniform(3.0 * k, 12.0 * k)))})
    on_gaia = obj.label in ("star", "qso_bal", "qso_nonbal", "blazar") and r_mag < 20.7
    gaia = {
        "neargaia": _f32(abs(float(rng.normal(0, 0.1))) if on_gaia else float(rng.uniform(3.0, 60.0))),
        "maggaia": _f32(r_mag - 0.1 if on_gaia else float(rng.uniform(14.0, 20.5))),
        "neargaiabright": _f32(float(rng.uniform(20.0, 600.0))),
        "maggaiabright": _f32(float(rng.uniform(9.0, 14.0))),
    }
    point = obj.morphology in ("point", "nuclear")
    return _ZtfStatic(
        field=field, rcid=rcid,
        rfid={b: field * 10**6 + rcid * 10**4 + 100 + j * 100 for j, b in enumerate(("g", "r", "i"))},
        magnr=magnr, sigmagnr=sigmagnr, ranr=ranr, decnr=decnr,
        distnr_scale=0.15 if point else 0.3, host_offset=off,
        ps1=ps1, gaia=gaia,
        sharpnr=float(rng.normal(0.0, 0.02)) if point else float(rng.uniform(0.1, 0.6)),
        chinr=float(rng.uniform(0.5, 1.5)) if point else float(rng.uniform(1.5, 8.0)),
        classtar=float(rng.uniform(0.9, 1.0)) if point else float(rng.uniform(0.3, 0.9)),
    )



def _ztf_filename(mjd: float, field: int, band: str, rcid: int, suffix: str) -> str:
    ccd, q = rcid // 4 + 1, rcid % 4 + 1
    day = math.floor(mjd)
    return f"synthetic/ztf_{_date_str(day)}{int((mjd - day) * 1e6):06d}_{field:06d}_z{band}_c{ccd:02d}_o_q{q}_{suffix}"


#: Values every synthetic ZTF row of a kind shares, merged into the schema templates once.

def _ztf_epoch_common(st: _ZtfStatic, band: str, mjd: float, m5: float, zp: float, pid: int) -> dict[str, Any]:
    return {
        "jd": mjd + _JD_OFFSET, "fid": _ZTF_FID[band], "pid": pid, "diffmaglim": m5,
        "pdiffimfilename": _ztf_filename(mjd, st.field, band, st.rcid, "scimrefdiffimg.fits.fz"),
        "nid": math.floor(mjd - _NID_ZERO_MJD), "rcid": st.rcid, "field": st.field, "magzpsci": zp,
        "clrcoeff": -0.05 if band == "g" else 0.07,
    }


def _ztf_detection(ctx: AlertContext, st: _ZtfStatic, band: str, j: int, zp: float, u: list[float],
                   nz: list[float], template: dict[str, Any], real: bool) -> dict[str, Any]:
    """A candidate / prv_candidate detection row for epoch ``j`` of ``band``.

    ``u`` (uniform) and ``nz`` (standard normal) are this row's pre-drawn random numbers.
    """
    p = ctx.data.phot[band]
    mjd, m5 = float(p.mjd[j]), float(p.m5[j])
    d, sig = float(p.diff_flux[j]), float(p.flux_err[j])
    ad = abs(d)
    magpsf = NJY_ZEROPOINT - 2.5 * math.log10(ad)
    sigmapsf = MAG_PER_RELFLUX * sig / ad
    snr = ad / sig
    pid = _ztf_pid(mjd, st.rcid)
    fwhm = 1.6 + 1.6 * u[0]
    pos_err = min(fwhm / 2.3548 / max(snr, 1.0), 1.0)
    cosd = max(math.cos(math.radians(ctx.obj.dec)), 1e-3)
    ra = ctx.obj.ra + nz[0] * pos_err / 3600.0 / cosd
    dec = ctx.obj.dec + nz[1] * pos_err / 3600.0
    if st.magnr.get(band) is not None:
        distnr = math.hypot((ra - st.ranr) * cosd * 3600.0, (dec - st.decnr) * 3600.0)
    else:
        distnr = 2.0 + 13.0 * u[1]
    magap = magpsf + nz[2] * (0.5 * sigmapsf + 0.01)
    a_img = fwhm / 2.3548 * (0.95 + 0.25 * u[2])
    b_img = a_img / (1.0 + (0.25 if real else 2.0) * u[3])
    row = dict(template)
    row.update(_ztf_epoch_common(st, band, mjd, m5, zp, pid))
    row.update({
        "candid": pid * 10**6 + ctx.serial % 10**6,
        "isdiffpos": "t" if d > 0 else "f",
        "tblid": int(50 * u[4]), "xpos": 10 + 3060 * u[5], "ypos": 10 + 3060 * u[6],
        "ra": ra, "dec": dec, "magpsf": magpsf, "sigmapsf": sigmapsf,
        "chipsf": 0.5 + 2.5 * u[7] if real else 3 + 27 * u[7],
        "magap": magap, "sigmagap": sigmapsf * 1.2 + 0.005,
        "distnr": distnr, "magnr": st.magnr.get(band), "sigmagnr": st.sigmagnr.get(band),
        "chinr": st.chinr, "sharpnr": st.sharpnr,
        "sky": nz[3], "magdiff": magap - magpsf, "fwhm": fwhm,
        "classtar": st.classtar if real else u[8],
        "mindtoedge": 20 + 1480 * u[9], "magfromlim": m5 - magap, "seeratio": 0.7 + 0.9 * u[10],
        "aimage": a_img, "bimage": b_img,
        "aimagerat": a_img / fwhm, "bimagerat": b_img / fwhm, "elong": a_img / b_img,
        "nneg": int(4 * u[11]) if real else 3 + int(12 * u[11]),
        "rb": 0.55 + 0.45 * u[12] if real else 0.05 + 0.45 * u[12],
        "sumrat": 0.85 + 0.15 * u[13] if real else 0.3 + 0.6 * u[13],
        "magapbig": magap + 0.02 * nz[3], "sigmagapbig": sigmapsf * 1.3 + 0.005,
        "ranr": st.ranr, "decnr": st.decnr, "scorr": snr,
    })
    return row


def _ztf_nondetection(ctx: AlertContext, st: _ZtfStatic, band: str, j: int, zp: float,
                      template: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    mjd = float(p.mjd[j])
    row = dict(template)
    row.update(_ztf_epoch_common(st, band, mjd, float(p.m5[j]), zp, _ztf_pid(mjd, st.rcid)))
    return row


def _ztf_forced(ctx: AlertContext, st: _ZtfStatic, band: str, j: int, zp: float, u: list[float],
                template: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    mjd = float(p.mjd[j])
    to_dn = 10.0 ** (0.4 * (zp - NJY_ZEROPOINT))
    distnr = None
    if st.magnr.get(band) is not None:
        # |N(0, scale)| from a uniform, via the half-normal quantile approximation sqrt(-2 ln(1 - u)) * 0.8
        distnr = st.host_offset + st.distnr_scale * 0.8 * math.sqrt(-2.0 * math.log(1.0 - 0.999 * u[5]))
    row = dict(template)
    row.update({
        "field": st.field, "rcid": st.rcid, "fid": _ZTF_FID[band], "pid": _ztf_pid(mjd, st.rcid),
        "rfid": st.rfid[band], "sciinpseeing": 1.5 + 1.7 * u[0], "scibckgnd": 60 + 290 * u[1],
        "scisigpix": 6 + 14 * u[2], "magzpsci": zp, "clrcoeff": -0.05 if band == "g" else 0.07,
        "adpctdif1": 0.02 + 0.06 * u[3], "adpctdif2": 0.03 + 0.07 * u[4],
        "diffmaglim": float(p.m5[j]), "jd": mjd + _JD_OFFSET,
        "forcediffimflux": float(p.diff_flux[j]) * to_dn, "forcediffimfluxunc": float(p.flux_err[j]) * to_dn,
        "distnr": distnr, "ranr": st.ranr, "decnr": st.decnr,
        "magnr": st.magnr.get(band), "sigmagnr": st.sigmagnr.get(band), "chinr": st.chinr, "sharpnr": st.sharpnr,
    })
    return row


def _zero_points(ctx: AlertContext, rng: np.random.Generator) -> dict[str, np.ndarray]:
    return {b: rng.uniform(25.9, 26.4, p.mjd.size) for b, p in ctx.data.phot.items()}



def _history_rows(ctx: AlertContext, window_days: float) -> tuple[list[tuple[str, int]], int, int, float]:
    """The (band, epoch) rows of the previous ``window_days``, and the counts over the whole
    simulated history: detections, covering epochs, and the first detection's MJD."""
    t_alert = ctx.mjd
    rows: list[tuple[str, int]] = []
    n_det = n_cov = 0
    first_det = t_alert
    for b, p in ctx.data.phot.items():
        past = p.mjd < t_alert - 1e-9
        n_cov += int(past.sum())
        det = past & p.detected
        n_det += int(det.sum())
        if det.any():
            first_det = min(first_det, float(p.mjd[det].min()))
        rows += [(b, int(j)) for j in np.flatnonzero(past & (p.mjd >= t_alert - window_days))]
    return rows, n_det, n_cov, first_det


def _candidate_extras(ctx: AlertContext, st: _ZtfStatic, zps: dict[str, np.ndarray], rng: np.random.Generator,
                      n_det: int, n_cov: int, first_det: float, real: bool) -> dict[str, Any]:
    """Fields only the alert's own candidate carries: history counts, reference-image and
    zero-point calibration, the deep real-bogus score (drawn in this order from ``rng``)."""
    data = ctx.data
    extras: dict[str, Any] = {**st.ps1, **st.gaia}
    extras.update({
        "ndethist": n_det + 1, "ncovhist": n_cov + 1,
        "jdstarthist": first_det + _JD_OFFSET, "jdendhist": ctx.mjd + _JD_OFFSET,
        "tooflag": 0, "rfid": st.rfid[ctx.band],
        "jdstartref": data.ref_window[0] + _JD_OFFSET, "jdendref": data.ref_window[1] + _JD_OFFSET,
        "nframesref": data.n_ref_frames, "dsnrms": _f32(float(rng.uniform(10, 60))),
        "ssnrms": _f32(float(rng.uniform(20, 130))), "nmatches": int(rng.integers(150, 3000)),
        "zpclrcov": _f32(-6e-6), "zpmed": _f32(float(zps[ctx.band][ctx.index]) - 0.02),
        "clrmed": _f32(float(rng.uniform(0.4, 0.8))), "clrrms": _f32(float(rng.uniform(0.1, 0.25))),
        "exptime": _f32(30.0), "drbversion": "d6_m7",
        "drb": _f32(float(rng.beta(30, 1)) if real else float(rng.beta(1, 4))),
    })
    extras["dsdiff"] = _f32(extras["dsnrms"] - extras["ssnrms"])
    return extras


def _ztf_cutouts(ctx: AlertContext, cand: dict[str, Any], rng: np.random.Generator, stamps: bool) -> dict[str, Any]:
    """The three cutout fields: gzipped 63x63 FITS named after the candidate as ZTF names them, or None."""
    if not stamps:
        return {"cutoutScience": None, "cutoutTemplate": None, "cutoutDifference": None}
    enc = stamp_cutouts(ctx, rng, size=63, compress=True)
    base = f"candid{cand['candid']}_pid{cand['pid']}_targ"
    return {
        "cutoutScience": {"fileName": f"{base}_sci.fits.gz", "stampData": enc["science"]},
        "cutoutTemplate": {"fileName": f"{base}_ref.fits.gz", "stampData": enc["template"]},
        "cutoutDifference": {"fileName": f"{base}_diff.fits.gz", "stampData": enc["difference"]},
    }


def write_ztf_packet(ctx: AlertContext, rng: np.random.Generator, *, schema_version: str = ZTF_SCHEMA_VERSION,
                     stamps: bool = True, window_days: float = ZTF_WINDOW_DAYS) -> tuple[bytes, dict[str, Any]]:
    """One ZTF alert (Avro container bytes) for the detection ``ctx.index`` of ``ctx.band``, and its truth.

    The random draws happen in a fixed order (static quantities, zero points, pre-drawn row
    numbers, candidate extras, stamps, sync marker), which is what makes a night byte-reproducible.
    """
    tpl = _ztf_templates(schema_version)
    obj, data = ctx.obj, ctx.data
    st = _ztf_static(obj, data, rng)
    zps = _zero_points(ctx, rng)
    t_alert = ctx.mjd
    real = obj.label != "bogus"

    # History: every epoch of the previous window (detections and upper limits), and forced photometry.
    rows, n_det, n_cov, first_det = _history_rows(ctx, window_days)
    u_det = rng.random((len(rows) + 1, _DET_U)).tolist()
    n_det_draws = rng.standard_normal((len(rows) + 1, _DET_N)).tolist()
    u_fp = rng.random((len(rows), _FP_U)).tolist()
    cand = _ztf_detection(ctx, st, ctx.band, ctx.index, float(zps[ctx.band][ctx.index]), u_det[-1],
                          n_det_draws[-1], tpl["candidate"], real)
    prv: list[tuple[float, dict[str, Any]]] = []
    fps: list[tuple[float, dict[str, Any]]] = []
    for i, (b, j) in enumerate(rows):
        p = data.phot[b]
        zp = float(zps[b][j])
        t = float(p.mjd[j])
        if p.detected[j]:
            prv.append((t, _ztf_detection(ctx, st, b, j, zp, u_det[i], n_det_draws[i], tpl["prv_detection"], real)))
        else:
            prv.append((t, _ztf_nondetection(ctx, st, b, j, zp, tpl["prv_candidate"])))
        fps.append((t, _ztf_forced(ctx, st, b, j, zp, u_fp[i], tpl["fp_hist"])))
    prv.sort(key=lambda r: r[0])
    fps.sort(key=lambda r: -r[0])
    cand.update(_candidate_extras(ctx, st, zps, rng, n_det, n_cov, first_det, real))

    object_id = ztf_object_id(ctx.serial + 26**5, _year(first_det))
    record = {
        "schemavsn": schema_version, "publisher": SYNTHETIC_PUBLISHER, "objectId": object_id,
        "candid": cand["candid"], "candidate": cand,
        "prv_candidates": [r for _, r in prv] or None,
        "fp_hists": [r for _, r in fps] or None,
        **_ztf_cutouts(ctx, cand, rng, stamps),
    }
    packet = avro_container(ztf_schema_json(schema_version), ztf_encoder(schema_version)(record), rng.bytes(16))
    truth = _base_truth(ctx, "ztf")
    truth.update({"object_id": object_id, "source_id": str(cand["candid"]), "n_prv": len(prv),
                  "ndethist": n_det + 1, "epochs": _epoch_truth(ctx, t_alert - window_days, t_alert)})
    return packet, truth
