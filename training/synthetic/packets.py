"""Survey-shaped alert packets from simulated objects: ZTF Avro containers and Rubin wire-format messages.

ZTF (:func:`write_ztf_packet`)
    An Avro Object Container File holding one ``ztf.alert`` record, the writer schema embedded, codec
    null: byte for byte the layout of a real ZTF alert file. Schema 4.02 from
    ``broker_plugin/schemas/ztf/4.02`` (copied from the official repository); the sub-schemas
    (cutout, candidate, prv_candidate, fp_hist) are inlined into alert.avsc where first named, so the
    embedded schema is self-contained like ZTF's (the files are not named after their types, so no
    loader can resolve them by name). Records are encoded with :mod:`training.synthetic.avrofast`
    (byte-identical to fastavro, 4x faster). ``candidate`` is the alert's epoch, ``prv_candidates`` every epoch of
    the previous 30 days (detections with a candid, non-detections with only ``diffmaglim``, oldest
    first), ``fp_hists`` the forced photometry of those epochs (newest first, as ZTF sends them), and
    the three cutouts gzipped FITS 63x63 stamps.

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

Rubin (:func:`write_rubin_packet`)
    Confluent wire format: ``0x00``, the schema id ``major*100 + minor`` as a big-endian uint32, then
    the schemaless Avro record, with the schema shipped in ``lsst-alert-packet`` (default 11.0). Record
    templates are the schema's own defaults plus the required values of the package's sample
    ``alert.json``; the physics then overwrites them: ``psfFlux`` is the difference flux (nJy),
    ``templateFlux`` the template's flux of the source and ``scienceFlux = templateFlux + psfFlux`` the
    total flux, so the total-flux light curve is again exactly the simulated one. ``prvDiaSources``
    are the detections of the previous 365 days, ``prvDiaForcedSources`` every visit from 30 days
    before the first detection on. Cutouts are plain (not gzipped) FITS, as Rubin sends them.

Synthetic markers
    ZTF: ``publisher = "bal-broker synthetic"``, ``programpi = "synthetic"``, and file names under
    ``synthetic/``. Rubin: every id (diaObjectId, diaSourceId, diaForcedSourceId) is at least
    9.0e18, far above real Rubin ids; ``observation_reason = "synthetic"``.

Nights (:func:`generate_night`, :func:`write_night`)
    Each alert comes from its own object. For a DRW or periodic object the alert's epoch is a
    detection chosen at random among all its detections (any band) of a two-year search window, and
    the whole simulated history is moved by a whole number of days so that epoch falls on the night
    (the field's right ascension moves with it, so the observing season stays consistent; the moon
    phase of old epochs and the calendar of the template do not). Objects never detected are drawn
    again. This keeps the selection of alerting objects right (an object is picked in proportion to
    how often it is detected: faint, quiet quasars rarely alert, as in the real stream) at ~2.5
    simulations per ZTF quasar alert instead of ~10 with a fixed night. Supernovae and artefacts
    are placed directly on the night.
"""

from __future__ import annotations

import datetime as _dt
import gzip
import importlib.util
import io
import json
import math
import struct
import zlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
from fastavro.schema import load_schema

from .avrofast import compile_encoder, encode_long
from .lightcurves import (
    MAG_PER_RELFLUX,
    NJY_ZEROPOINT,
    RUBIN_START_MJD,
    ZTF_MIDNIGHT,
    ZTF_START_MJD,
    SurveyData,
    mag_error,
    mag_from_njy,
    opposition_ra,
    simulate_survey,
)
from .population import (
    DEFAULT_BAL_FRACTION,
    DEFAULT_STREAM_MIX,
    BalLightCurveEffect,
    SimObject,
    draw_object,
    normalise_mix,
)

ZTF_SCHEMA_VERSION = "4.02"
RUBIN_SCHEMA_VERSION = "11.0"
ZTF_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "broker_plugin" / "schemas" / "ztf"
SYNTHETIC_PUBLISHER = "bal-broker synthetic"
SYNTHETIC_PI = "synthetic"
#: Synthetic Rubin ids start here (real ids are ~3e17 in 2026); int64 max is 9.22e18.
RUBIN_OBJECT_ID_BASE = 9_000_000_000_000_000_000
RUBIN_SOURCE_ID_BASE = 9_100_000_000_000_000_000
RUBIN_FORCED_ID_BASE = 9_200_000_000_000_000_000
#: Default night: 2026-03-31 (MJD), five months into LSST and eight years into ZTF.
DEFAULT_NIGHT_MJD = 61130
#: History carried by a packet: ZTF prv_candidates/fp_hists 30 days, Rubin 365 days.
ZTF_WINDOW_DAYS = 30.0
RUBIN_WINDOW_DAYS = 365.0
_JD_OFFSET = 2400000.5
_NID_ZERO_MJD = 57754.0  # ZTF night id 0 (nid = floor(MJD - 57754))
_SEARCH_DAYS = 730.0  # how far back an alerting detection is looked for (see module docstring)
#: Simulated history before the alert: enough for ZTF's 30-day window (+ the detection counts
#: ndethist/ncovhist, which therefore cover 90 days, not the whole survey) and Rubin's 12 months.
DEFAULT_HISTORY_DAYS = {"ztf": 90.0, "lsst": 365.0}
_MAX_TRIES = 60

StampRenderer = Callable[..., dict[str, np.ndarray]]


# ------------------------------------------------------------------------------------------------
# Schemas
# ------------------------------------------------------------------------------------------------


def _inline_named(schema: Any, named: dict[str, Any], seen: set[str]) -> Any:
    """Replace references to ``named`` types by their definitions at first use (Avro allows a name
    only after its definition), so that the schema is self-contained, as ZTF's embedded schemas are."""
    if isinstance(schema, str):
        if schema in named and schema not in seen:
            seen.add(schema)
            return _inline_named(named[schema], named, seen)
        return schema
    if isinstance(schema, list):
        return [_inline_named(s, named, seen) for s in schema]
    if isinstance(schema, dict):
        out = dict(schema)
        if "fields" in out:
            out["fields"] = [{**f, "type": _inline_named(f["type"], named, seen)} for f in out["fields"]]
        if "items" in out:
            out["items"] = _inline_named(out["items"], named, seen)
        return out
    return schema


@lru_cache(maxsize=8)
def ztf_schema_json(version: str = ZTF_SCHEMA_VERSION) -> str:
    """The self-contained ZTF alert schema (JSON) from ``broker_plugin/schemas/ztf/<version>``.

    The sub-schemas (cutout, candidate, prv_candidate, fp_hist) are inlined where alert.avsc first
    names them, because their files are not named after their types (SOURCES.md).
    """
    d = ZTF_SCHEMA_DIR / version
    if not (d / "alert.avsc").is_file():
        raise FileNotFoundError(f"ZTF schema {version} not found under {d}")
    named: dict[str, Any] = {}
    for name in ("cutout", "candidate", "prv_candidate", "fp_hist"):
        p = d / f"{name}.avsc"
        if p.is_file():
            sub = json.loads(p.read_text())
            named[f"{sub['namespace']}.{sub['name']}"] = sub
    alert = json.loads((d / "alert.avsc").read_text())
    return json.dumps(_inline_named(alert, named, set()))


@lru_cache(maxsize=8)
def ztf_schema(version: str = ZTF_SCHEMA_VERSION) -> dict[str, Any]:
    """Parsed, self-contained ZTF alert schema (see :func:`ztf_schema_json`)."""
    return fastavro.parse_schema(json.loads(ztf_schema_json(version)))


@lru_cache(maxsize=8)
def _container_header(schema_json: str) -> bytes:
    """Object-container header up to (not including) the sync marker: magic + metadata map."""
    meta = {"avro.codec": b"null", "avro.schema": schema_json.encode()}
    parts = [b"Obj\x01", encode_long(len(meta))]
    for k, v in meta.items():
        parts += [encode_long(len(k)), k.encode(), encode_long(len(v)), v]
    parts.append(encode_long(0))
    return b"".join(parts)


@lru_cache(maxsize=8)
def ztf_encoder(version: str = ZTF_SCHEMA_VERSION) -> Callable[[dict[str, Any]], bytes]:
    """Compiled binary encoder of the ZTF alert record (see :mod:`training.synthetic.avrofast`)."""
    return compile_encoder(json.loads(ztf_schema_json(version)))


@lru_cache(maxsize=8)
def rubin_encoder(version: str = RUBIN_SCHEMA_VERSION) -> Callable[[dict[str, Any]], bytes]:
    """Compiled binary encoder of the Rubin alert record."""
    return compile_encoder(rubin_schema(version))


def avro_container(schema_json: str, data: bytes, sync: bytes) -> bytes:
    """A one-record, codec-null Avro Object Container File around the encoded record ``data``.

    The same bytes ``fastavro.writer`` writes, but framed by hand so that the header (with the 30 kB
    schema JSON) is built once per process; the sync marker comes from the caller's generator, so
    the bytes are deterministic.
    """
    return b"".join([_container_header(schema_json), sync, encode_long(1), encode_long(len(data)), data, sync])


def _lsst_schema_dir(version: str) -> Path:
    spec = importlib.util.find_spec("lsst.alert.packet")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("lsst-alert-packet is not installed: it ships the Rubin alert schemas")
    major, minor = version.split(".")
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "schema" / major / minor
        if d.is_dir():
            return d
    raise FileNotFoundError(f"lsst-alert-packet ships no schema {version}")


@lru_cache(maxsize=8)
def rubin_schema(version: str = RUBIN_SCHEMA_VERSION) -> dict[str, Any]:
    """Parsed Rubin alert schema shipped with lsst-alert-packet (``load_schema`` resolves the parts)."""
    major, minor = version.split(".")
    return load_schema(str(_lsst_schema_dir(version) / f"lsst.v{major}_{minor}.alert.avsc"))


def rubin_schema_id(version: str = RUBIN_SCHEMA_VERSION) -> int:
    """Confluent schema id ``major*100 + minor`` (lsst.alert.packet ``Schema.get_schema_id``)."""
    major, minor = version.split(".")
    return int(major) * 100 + int(minor)


def _record_fields(schema: Any, name: str) -> list[dict[str, Any]]:
    """Fields of the named record type anywhere inside a parsed schema."""
    stack = [schema]
    while stack:
        s = stack.pop()
        if isinstance(s, dict):
            if s.get("type") == "record" and (s.get("name") == name or str(s.get("name", "")).endswith("." + name)):
                return list(s["fields"])
            stack.extend(s.values())
        elif isinstance(s, list):
            stack.extend(s)
    raise KeyError(f"record {name} not in schema")


def _template(fields: list[dict[str, Any]], sample: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """A record with every field: the sample's value, else the schema default, else a typed zero."""
    out: dict[str, Any] = {}
    zero = {"int": 0, "long": 0, "float": 0.0, "double": 0.0, "string": "", "boolean": False, "bytes": b""}
    for f in fields:
        name = f["name"]
        if sample is not None and name in sample:
            out[name] = sample[name]
        elif "default" in f:
            out[name] = f["default"]
        else:
            t = f["type"]
            out[name] = zero.get(t) if isinstance(t, str) else None
    return out


@lru_cache(maxsize=8)
def _rubin_templates(version: str) -> dict[str, dict[str, Any]]:
    schema = rubin_schema(version)
    sample_path = _lsst_schema_dir(version) / "sample_data" / "alert.json"
    sample = json.loads(sample_path.read_text()) if sample_path.is_file() else {}
    return {
        "diaSource": _template(_record_fields(schema, "diaSource"), sample.get("diaSource")),
        "diaForcedSource": _template(_record_fields(schema, "diaForcedSource")),
        "diaObject": _template(_record_fields(schema, "diaObject"), sample.get("diaObject")),
    }


@lru_cache(maxsize=8)
def _ztf_templates(version: str) -> dict[str, dict[str, Any]]:
    schema = ztf_schema(version)
    out = {n: _template(_record_fields(schema, n)) for n in ("candidate", "prv_candidate", "fp_hist")}
    out["candidate"].update(_ZTF_CONST)
    out["candidate"].update(_ZTF_DET_CONST)
    out["prv_detection"] = {**out["prv_candidate"], **_ZTF_CONST, **_ZTF_DET_CONST}
    out["prv_candidate"].update(_ZTF_CONST)
    out["fp_hist"].update(_ZTF_FP_CONST)
    return out


# ------------------------------------------------------------------------------------------------
# Stamps (lazy: training.synthetic.stamps and broker_plugin.photometry.cutouts, with small fallbacks)
# ------------------------------------------------------------------------------------------------


def fallback_render_triplet(kind: str, mag: float, rng: np.random.Generator, size: int = 63,
                            ref_mag: float | None = None) -> dict[str, np.ndarray]:
    """Minimal stand-in for ``stamps.render_triplet``: Gaussian PSFs on a noisy sky (used only if it is absent)."""
    y, x = np.mgrid[0:size, 0:size].astype(np.float64)
    c = size // 2
    fwhm = float(rng.uniform(1.5, 3.0))
    s = fwhm / 2.3548
    psf = np.exp(-0.5 * ((x - c) ** 2 + (y - c) ** 2) / s**2) / (2 * np.pi * s * s)
    zp = 26.2
    f_sci = 10 ** (-0.4 * (mag - zp))
    f_ref = 10 ** (-0.4 * (ref_mag - zp)) if ref_mag is not None and np.isfinite(ref_mag) else 0.0
    sky = float(rng.uniform(60, 350))
    sci = sky + f_sci * psf + rng.normal(0, math.sqrt(sky), (size, size))
    ref = sky + f_ref * psf + rng.normal(0, math.sqrt(sky) / 4, (size, size))
    return {"science": sci.astype(np.float32), "template": ref.astype(np.float32),
            "difference": (sci - ref).astype(np.float32)}


def fallback_encode_stamp(arr: np.ndarray, *, compress: bool = True) -> bytes:
    """Minimal stand-in for ``broker_plugin.photometry.cutouts.encode_stamp`` (astropy FITS, optionally gzipped)."""
    from astropy.io import fits

    buf = io.BytesIO()
    fits.PrimaryHDU(np.asarray(arr, dtype=np.float32)).writeto(buf)
    raw = buf.getvalue()
    return gzip.compress(raw, compresslevel=6, mtime=0) if compress else raw


@lru_cache(maxsize=1)
def _stamp_functions() -> tuple[StampRenderer, Callable[..., bytes], bool]:
    """(render_triplet, encode_stamp, using_fallback)."""
    fallback = False
    try:
        from .stamps import render_triplet as render
    except ImportError:
        render, fallback = fallback_render_triplet, True
    try:
        from broker_plugin.photometry.cutouts import encode_stamp as encode
    except ImportError:
        encode, fallback = fallback_encode_stamp, True
    return render, encode, fallback


def render_cutouts(kind: str, mag: float, rng: np.random.Generator, *, size: int, ref_mag: float | None,
                   compress: bool) -> dict[str, bytes]:
    """Encoded science/template/difference stamps for one detection."""
    render, encode, _ = _stamp_functions()
    mag = float(mag) if np.isfinite(mag) else 22.0
    ref = float(ref_mag) if ref_mag is not None and np.isfinite(ref_mag) else None
    imgs = render(kind, mag, rng, size=size, ref_mag=ref)
    out = {}
    for k in ("science", "template", "difference"):
        raw = encode(imgs[k], compress=False)
        out[k] = gzip_rle(raw) if compress else raw
    return out


def gzip_rle(raw: bytes) -> bytes:
    """gzip with zlib's Z_RLE strategy: an ordinary .gz stream, as small as level 6 on noisy float
    stamps (run-length matches are all that LZ77 finds in them) and ~3.5x faster; header mtime 0."""
    c = zlib.compressobj(6, zlib.DEFLATED, 31, 8, zlib.Z_RLE)
    return c.compress(raw) + c.flush()


# ------------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------------

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


def _mag(flux: float) -> float:
    return float(NJY_ZEROPOINT - 2.5 * math.log10(flux)) if flux > 0 else math.nan


def _f32(x: float | None) -> float | None:
    """A float for an Avro float/double field, None for a missing or non-finite value."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


@dataclass(slots=True)
class AlertContext:
    """What the packet writers need besides the object: its survey data and the alert's epoch."""

    obj: SimObject
    data: SurveyData
    band: str
    index: int  # index of the alert epoch in data.phot[band]
    serial: int  # unique per object within a night (ids, candids)

    @property
    def mjd(self) -> float:
        return float(self.data.phot[self.band].mjd[self.index])


def _stamp_kind(obj: SimObject) -> str:
    return obj.morphology if obj.morphology in ("point", "extended", "nuclear", "artifact") else "point"


# ------------------------------------------------------------------------------------------------
# ZTF
# ------------------------------------------------------------------------------------------------

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


@lru_cache(maxsize=4096)
def _date_str(day: int) -> str:
    """YYYYMMDD of an integer MJD."""
    return f"{_dt.date(1858, 11, 17) + _dt.timedelta(days=day):%Y%m%d}"


def _ztf_filename(mjd: float, field: int, band: str, rcid: int, suffix: str) -> str:
    ccd, q = rcid // 4 + 1, rcid % 4 + 1
    day = math.floor(mjd)
    return f"synthetic/ztf_{_date_str(day)}{int((mjd - day) * 1e6):06d}_{field:06d}_z{band}_c{ccd:02d}_o_q{q}_{suffix}"


#: Values every synthetic ZTF row of a kind shares, merged into the schema templates once.
_ZTF_CONST = {
    "programpi": SYNTHETIC_PI, "programid": 1, "rbversion": "t17_f5_c3", "magzpsciunc": 4e-6,
    "magzpscirms": 0.03, "clrcounc": 1.5e-5,
}
_ZTF_DET_CONST = {"nbad": 0, "ssdistnr": -999.0, "ssmagnr": -999.0, "ssnamenr": "null"}
_ZTF_FP_CONST = {"programid": 1, "magzpsciunc": 4e-6, "magzpscirms": 0.03, "clrcounc": 1.5e-5, "exptime": 30.0,
                 "procstatus": "0"}
#: Uniform and normal draws used per detection row (pre-drawn in one call per alert).
_DET_U, _DET_N, _FP_U = 14, 4, 6


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


def _epoch_truth(ctx: AlertContext, t0: float, t1: float) -> dict[str, np.ndarray]:
    """Per-epoch truth inside [t0, t1], time ordered: band, observed DC (total) magnitude and flux
    (NaN magnitude where the flux is not positive), true magnitude, detected, difference flux and
    its error (fluxes in nJy)."""
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("mjd", "band", "dc_mag", "dc_flux", "true_mag", "detected",
                                                          "diff_flux", "flux_err")}
    for b, p in ctx.data.phot.items():
        sel = (p.mjd >= t0) & (p.mjd <= t1 + 1e-9)
        cols["mjd"].append(p.mjd[sel])
        cols["band"].append(np.full(int(sel.sum()), b, dtype=object))
        cols["dc_mag"].append(mag_from_njy(p.ref_flux + p.diff_flux[sel]))
        cols["dc_flux"].append(p.ref_flux + p.diff_flux[sel])
        cols["true_mag"].append(p.true_mag[sel])
        cols["detected"].append(p.detected[sel])
        cols["diff_flux"].append(p.diff_flux[sel])
        cols["flux_err"].append(p.flux_err[sel])
    out = {k: np.concatenate(v) if v else np.empty(0) for k, v in cols.items()}
    order = np.argsort(out["mjd"], kind="stable")
    return {k: v[order] for k, v in out.items()}


def _base_truth(ctx: AlertContext, survey: str) -> dict[str, Any]:
    o = ctx.obj
    p = ctx.data.phot[ctx.band]
    truth: dict[str, Any] = {
        "survey": survey, "label": o.label, "is_bal": o.is_bal, "z": o.z, "ra": o.ra, "dec": o.dec,
        "mjd": ctx.mjd, "band": ctx.band, "morphology": o.morphology, "variability": o.variability,
        "ebv": o.ebv, "mean_mag": {b: o.mag(survey, b) for b in o.bands(survey)},
        "ref_mag": {b: _mag(q.ref_flux) for b, q in ctx.data.phot.items()},
        "dc_mag": float(mag_from_njy(p.ref_flux + p.diff_flux[ctx.index])),
        "diff_snr": float(p.diff_flux[ctx.index] / p.flux_err[ctx.index]),
    }
    if o.variability == "drw":
        truth["tau_obs"] = o.params["tau_obs"]
        truth["tau_rest"] = o.params["tau_rest"]
        truth["sf_inf"] = {b: o.params["sf_inf"][f"{survey}:{b}"] for b in o.bands(survey)}
    truth.update({k: v for k, v in o.truth.items() if k not in truth})
    return truth


def write_ztf_packet(ctx: AlertContext, rng: np.random.Generator, *, schema_version: str = ZTF_SCHEMA_VERSION,
                     stamps: bool = True, window_days: float = ZTF_WINDOW_DAYS) -> tuple[bytes, dict[str, Any]]:
    """One ZTF alert (Avro container bytes) for the detection ``ctx.index`` of ``ctx.band``, and its truth."""
    tpl = _ztf_templates(schema_version)
    obj, data = ctx.obj, ctx.data
    st = _ztf_static(obj, data, rng)
    zps = _zero_points(ctx, rng)
    t_alert = ctx.mjd
    real = obj.label != "bogus"

    # History: every epoch of the previous window (detections and upper limits), and forced photometry.
    rows: list[tuple[str, int]] = []
    n_det = n_cov = 0
    first_det = t_alert
    for b, p in data.phot.items():
        past = p.mjd < t_alert - 1e-9
        n_cov += int(past.sum())
        det = past & p.detected
        n_det += int(det.sum())
        if det.any():
            first_det = min(first_det, float(p.mjd[det].min()))
        rows += [(b, int(j)) for j in np.flatnonzero(past & (p.mjd >= t_alert - window_days))]
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

    cand.update(st.ps1)
    cand.update(st.gaia)
    cand.update({
        "ndethist": n_det + 1, "ncovhist": n_cov + 1,
        "jdstarthist": first_det + _JD_OFFSET, "jdendhist": t_alert + _JD_OFFSET,
        "tooflag": 0, "rfid": st.rfid[ctx.band],
        "jdstartref": data.ref_window[0] + _JD_OFFSET, "jdendref": data.ref_window[1] + _JD_OFFSET,
        "nframesref": data.n_ref_frames, "dsnrms": _f32(float(rng.uniform(10, 60))),
        "ssnrms": _f32(float(rng.uniform(20, 130))), "nmatches": int(rng.integers(150, 3000)),
        "zpclrcov": _f32(-6e-6), "zpmed": _f32(float(zps[ctx.band][ctx.index]) - 0.02),
        "clrmed": _f32(float(rng.uniform(0.4, 0.8))), "clrrms": _f32(float(rng.uniform(0.1, 0.25))),
        "exptime": _f32(30.0), "drbversion": "d6_m7",
        "drb": _f32(float(rng.beta(30, 1)) if real else float(rng.beta(1, 4))),
    })
    cand["dsdiff"] = _f32(cand["dsnrms"] - cand["ssnrms"])

    object_id = ztf_object_id(ctx.serial + 26**5, _year(first_det))
    cutouts: dict[str, Any] = {"cutoutScience": None, "cutoutTemplate": None, "cutoutDifference": None}
    if stamps:
        p = data.phot[ctx.band]
        total = p.ref_flux + float(p.diff_flux[ctx.index])
        if obj.morphology in ("extended", "nuclear"):
            host = data.host_flux.get(ctx.band, 0.0)
            mag = _mag(max(total - host, 1e-3))  # the nucleus / transient only
            ref_mag = obj.host_mag
        elif obj.morphology == "artifact":
            mag, ref_mag = _mag(abs(float(p.diff_flux[ctx.index]))), None
        else:
            mag, ref_mag = _mag(max(total, 1e-3)), _mag(p.ref_flux)
        enc = render_cutouts(_stamp_kind(obj), mag, rng, size=63, ref_mag=ref_mag, compress=True)
        base = f"candid{cand['candid']}_pid{cand['pid']}_targ"
        cutouts = {
            "cutoutScience": {"fileName": f"{base}_sci.fits.gz", "stampData": enc["science"]},
            "cutoutTemplate": {"fileName": f"{base}_ref.fits.gz", "stampData": enc["template"]},
            "cutoutDifference": {"fileName": f"{base}_diff.fits.gz", "stampData": enc["difference"]},
        }
    record = {
        "schemavsn": schema_version, "publisher": SYNTHETIC_PUBLISHER, "objectId": object_id,
        "candid": cand["candid"], "candidate": cand,
        "prv_candidates": [r for _, r in prv] or None,
        "fp_hists": [r for _, r in fps] or None,
        **cutouts,
    }
    packet = avro_container(ztf_schema_json(schema_version), ztf_encoder(schema_version)(record), rng.bytes(16))
    truth = _base_truth(ctx, "ztf")
    truth.update({"object_id": object_id, "source_id": str(cand["candid"]), "n_prv": len(prv),
                  "ndethist": n_det + 1, "epochs": _epoch_truth(ctx, t_alert - window_days, t_alert)})
    return packet, truth


# ------------------------------------------------------------------------------------------------
# Rubin
# ------------------------------------------------------------------------------------------------


def _rubin_visit(mjd: float) -> int:
    """Visit id like Rubin's ``YYYYMMDDNNNNN`` (day_obs, then a sequence number ~ seconds / 40)."""
    seq = int((mjd % 1.0) * 86400.0 / 40.0)
    return int(_date_str(math.floor(mjd - 0.5))) * 100_000 + seq


def _rubin_source(ctx: AlertContext, band: str, j: int, rng: np.random.Generator,
                  tpl: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    obj = ctx.obj
    mjd = float(p.mjd[j])
    d, sig = float(p.diff_flux[j]), float(p.flux_err[j])
    snr = abs(d) / sig
    pos_err = min(0.7 / 2.3548 / max(snr, 1.0), 0.5) / 3600.0
    cosd = max(math.cos(math.radians(obj.dec)), 1e-3)
    point = obj.morphology in ("point", "nuclear")
    real = obj.label != "bogus"
    row = dict(tpl)
    row.update({
        "diaSourceId": RUBIN_SOURCE_ID_BASE + ctx.serial * 10_000 + _epoch_number(ctx, band, j),
        "visit": _rubin_visit(mjd), "detector": int(rng.integers(0, 189)),
        "diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "ssObjectId": None, "parentDiaSourceId": None,
        "midpointMjdTai": mjd, "ra": obj.ra + rng.normal(0, pos_err) / cosd, "raErr": _f32(pos_err),
        "dec": obj.dec + rng.normal(0, pos_err), "decErr": _f32(pos_err), "ra_dec_Cov": _f32(0.0),
        "x": _f32(float(rng.uniform(20, 4050))), "xErr": _f32(0.05), "y": _f32(float(rng.uniform(20, 4050))),
        "yErr": _f32(0.05), "centroid_flag": False,
        "apFlux": _f32(d + float(rng.normal(0, 1.2 * sig))), "apFluxErr": _f32(1.2 * sig), "apFlux_flag": False,
        "apFlux_flag_apertureTruncated": False, "isNegative": d < 0, "snr": _f32(snr),
        "psfFlux": _f32(d), "psfFluxErr": _f32(sig), "psfLnL": _f32(float(-rng.uniform(50, 500))),
        "psfChi2": _f32(float(rng.uniform(0.5, 2.0) if real else rng.uniform(3, 40)) * 400),
        "psfNdata": 400, "psfFlux_flag": False, "psfFlux_flag_edge": False, "psfFlux_flag_noGoodPixels": False,
        "trailNdata": 0, "dipoleNdata": 0,
        "scienceFlux": _f32(p.ref_flux + d), "scienceFluxErr": _f32(sig),
        "templateFlux": _f32(p.ref_flux), "templateFluxErr": _f32(0.3 * sig),
        "forced_PsfFlux_flag": False, "forced_PsfFlux_flag_edge": False, "forced_PsfFlux_flag_noGoodPixels": False,
        "extendedness": _f32(float(rng.uniform(0.0, 0.2)) if point else float(rng.uniform(0.6, 1.0))),
        "reliability": _f32(float(rng.beta(20, 1.5)) if real else float(rng.beta(1.5, 6))),
        "band": band, "isDipole": False, "dipoleFitAttempted": True,
        "timeProcessedMjdTai": mjd + 0.002, "bboxSize": int(rng.integers(17, 61)),
        "shape_flag": False, "pixelFlags": False, "pixelFlags_bad": False, "pixelFlags_cr": False,
        "pixelFlags_edge": False, "pixelFlags_saturated": False, "pixelFlags_suspect": False,
        "pixelFlags_streak": False, "pixelFlags_interpolated": False,
    })
    return row


def _epoch_number(ctx: AlertContext, band: str, j: int) -> int:
    """A per-object epoch number, unique across bands (for ids)."""
    offset = 0
    for b in sorted(ctx.data.phot):
        if b == band:
            return (offset + j) % 10_000
        offset += ctx.data.phot[b].mjd.size
    return j % 10_000


def _rubin_forced(ctx: AlertContext, band: str, j: int, rng: np.random.Generator,
                  tpl: dict[str, Any]) -> dict[str, Any]:
    p = ctx.data.phot[band]
    mjd = float(p.mjd[j])
    d, sig = float(p.diff_flux[j]), float(p.flux_err[j])
    row = dict(tpl)
    row.update({
        "diaForcedSourceId": RUBIN_FORCED_ID_BASE + ctx.serial * 10_000 + _epoch_number(ctx, band, j),
        "diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "ra": ctx.obj.ra, "dec": ctx.obj.dec,
        "visit": _rubin_visit(mjd), "detector": int(rng.integers(0, 189)),
        "psfFlux": _f32(d), "psfFluxErr": _f32(sig), "midpointMjdTai": mjd,
        "scienceFlux": _f32(p.ref_flux + d), "scienceFluxErr": _f32(sig), "band": band,
        "timeProcessedMjdTai": mjd + 0.002,
    })
    return row


def _rubin_object(ctx: AlertContext, sources: list[dict[str, Any]], forced: list[dict[str, Any]],
                  tpl: dict[str, Any]) -> dict[str, Any]:
    obj = ctx.obj
    row = dict(tpl)
    row.update({"diaObjectId": RUBIN_OBJECT_ID_BASE + ctx.serial, "validityStartMjdTai": ctx.mjd,
                "ra": obj.ra, "dec": obj.dec, "raErr": _f32(2e-5), "decErr": _f32(2e-5), "ra_dec_Cov": _f32(0.0)})
    for b in ("u", "g", "r", "i", "z", "y"):
        fl = np.array([s["psfFlux"] for s in sources if s["band"] == b], dtype=np.float64)
        er = np.array([s["psfFluxErr"] for s in sources if s["band"] == b], dtype=np.float64)
        sc = np.array([s["scienceFlux"] for s in sources if s["band"] == b], dtype=np.float64)
        ff = np.array([s["psfFlux"] for s in forced if s["band"] == b], dtype=np.float64)
        fe = np.array([s["psfFluxErr"] for s in forced if s["band"] == b], dtype=np.float64)
        row[f"{b}_psfFluxNdata"] = int(fl.size)
        if fl.size:
            row.update({
                f"{b}_psfFluxMean": _f32(fl.mean()), f"{b}_psfFluxMeanErr": _f32(math.sqrt((er**2).sum()) / fl.size),
                f"{b}_psfFluxSigma": _f32(fl.std()) if fl.size > 1 else None,
                f"{b}_psfFluxMin": _f32(fl.min()), f"{b}_psfFluxMax": _f32(fl.max()),
                f"{b}_psfFluxErrMean": _f32(er.mean()),
                f"{b}_scienceFluxMean": _f32(sc.mean()),
                f"{b}_scienceFluxMeanErr": _f32(er.mean() / math.sqrt(sc.size)),
            })
        if ff.size:
            row.update({f"{b}_fpFluxMean": _f32(ff.mean()),
                        f"{b}_fpFluxMeanErr": _f32(math.sqrt((fe**2).sum()) / ff.size)})
    times = [s["midpointMjdTai"] for s in sources]
    row.update({"firstDiaSourceMjdTai": min(times), "lastDiaSourceMjdTai": max(times), "nDiaSources": len(sources)})
    return row


def write_rubin_packet(ctx: AlertContext, rng: np.random.Generator, *, schema_version: str = RUBIN_SCHEMA_VERSION,
                       stamps: bool = True, window_days: float = RUBIN_WINDOW_DAYS) -> tuple[bytes, dict[str, Any]]:
    """One Rubin alert in Confluent wire format for the detection ``ctx.index`` of ``ctx.band``, and its truth."""
    tpls = _rubin_templates(schema_version)
    data = ctx.data
    t_alert = ctx.mjd
    src = _rubin_source(ctx, ctx.band, ctx.index, rng, tpls["diaSource"])
    prv: list[dict[str, Any]] = []
    first_det = t_alert
    for b, p in data.phot.items():
        for j in np.flatnonzero(p.detected & (p.mjd < t_alert)):
            first_det = min(first_det, float(p.mjd[j]))
            if p.mjd[j] >= t_alert - window_days:
                prv.append(_rubin_source(ctx, b, int(j), rng, tpls["diaSource"]))
    forced: list[dict[str, Any]] = []
    f0 = max(first_det - 30.0, t_alert - window_days)
    for b, p in data.phot.items():
        for j in np.flatnonzero((p.mjd >= f0) & (p.mjd < t_alert)):
            forced.append(_rubin_forced(ctx, b, int(j), rng, tpls["diaForcedSource"]))
    prv.sort(key=lambda r: r["midpointMjdTai"])
    forced.sort(key=lambda r: r["midpointMjdTai"])
    dia_object = _rubin_object(ctx, [*prv, src], forced, tpls["diaObject"])
    record: dict[str, Any] = {
        "diaSourceId": src["diaSourceId"], "observation_reason": "synthetic", "target_name": None,
        "diaSource": src, "prvDiaSources": prv or None, "prvDiaForcedSources": forced or None,
        "diaObject": dia_object, "ssSource": None, "mpc_orbits": None,
        "cutoutDifference": None, "cutoutScience": None, "cutoutTemplate": None,
    }
    if stamps:
        p = data.phot[ctx.band]
        total = p.ref_flux + float(p.diff_flux[ctx.index])
        obj = ctx.obj
        if obj.morphology in ("extended", "nuclear"):
            mag = _mag(max(total - data.host_flux.get(ctx.band, 0.0), 1e-3))
            ref_mag = obj.host_mag
        elif obj.morphology == "artifact":
            mag, ref_mag = _mag(abs(float(p.diff_flux[ctx.index]))), None
        else:
            mag, ref_mag = _mag(max(total, 1e-3)), _mag(p.ref_flux)
        enc = render_cutouts(_stamp_kind(obj), mag, rng, size=31, ref_mag=ref_mag, compress=False)
        record.update({"cutoutDifference": enc["difference"], "cutoutScience": enc["science"],
                       "cutoutTemplate": enc["template"]})
    packet = b"\x00" + struct.pack(">I", rubin_schema_id(schema_version)) + rubin_encoder(schema_version)(record)
    truth = _base_truth(ctx, "lsst")
    truth.update({"object_id": str(RUBIN_OBJECT_ID_BASE + ctx.serial), "source_id": str(src["diaSourceId"]),
                  "n_prv": len(prv), "n_forced": len(forced),
                  "epochs": _epoch_truth(ctx, t_alert - window_days, t_alert)})
    return packet, truth


# ------------------------------------------------------------------------------------------------
# Choosing the alerting epoch
# ------------------------------------------------------------------------------------------------


def _shift(data: SurveyData, obj: SimObject, days: float) -> None:
    """Move every epoch of ``data`` by ``days`` (whole days) and the field's RA with the Sun."""
    for p in data.phot.values():
        p.mjd = p.mjd + days
    for b in data.cadence.mjd:
        data.cadence.mjd[b] = data.cadence.mjd[b] + days
    data.ref_window = (data.ref_window[0] + days, data.ref_window[1] + days)
    obj.ra = float((obj.ra + days * 360.0 / 365.2422) % 360.0)


def _truncate(data: SurveyData, t_max: float, t_min: float) -> None:
    """Drop epochs after ``t_max`` (the future) and before ``t_min``."""
    for b, p in data.phot.items():
        keep = (p.mjd <= t_max + 1e-9) & (p.mjd >= t_min)
        p.mjd, p.m5, p.true_mag = p.mjd[keep], p.m5[keep], p.true_mag[keep]
        p.diff_flux, p.flux_err, p.detected = p.diff_flux[keep], p.flux_err[keep], p.detected[keep]
        data.cadence.mjd[b] = p.mjd
        data.cadence.m5[b] = p.m5


def simulate_alert(
    obj: SimObject,
    survey: str,
    band: str | None,
    night_mjd: int,
    rng: np.random.Generator,
    *,
    history_days: float,
) -> tuple[SurveyData, str, int] | None:
    """Simulate ``obj`` so that it is detected on ``night_mjd``: (data, band, epoch index), or None.

    Supernovae and artefacts are observed on the night in ``band`` (drawn if None). Other objects
    are simulated over ``history_days`` + 730 days; one of their detections (any band, or ``band``
    if given) in the last 730 days is picked at random and the history shifted onto the night (see
    the module docstring). None means the object was not detected.
    """
    midnight = ZTF_MIDNIGHT if survey == "ztf" else 0.167
    start = ZTF_START_MJD if survey == "ztf" else RUBIN_START_MJD
    if obj.variability in ("sn", "bogus"):
        if band is None:
            band = _pick_band(rng, survey)
        t_alert = night_mjd + midnight + float(rng.uniform(-0.14, 0.10))
        if obj.variability == "sn":
            obj.params["t0"] = t_alert - float(rng.uniform(-8.0, 45.0))
        data = simulate_survey(obj, survey, t_alert, rng, baseline_days=history_days, force=(band, t_alert))
        p = data.phot[band]
        j = int(np.argmin(np.abs(p.mjd - t_alert)))
        return (data, band, j) if p.detected[j] else None
    t_end = night_mjd + 1.0
    baseline = min(history_days + _SEARCH_DAYS, t_end - start)
    search_from = t_end - min(_SEARCH_DAYS, baseline)
    data = simulate_survey(obj, survey, t_end, rng, baseline_days=baseline)
    cands = [(b, int(j)) for b, p in data.phot.items() if band is None or b == band
             for j in np.flatnonzero(p.detected & (p.mjd >= search_from))]
    if not cands:
        return None
    band, j = cands[int(rng.integers(len(cands)))]
    t_det = float(data.phot[band].mjd[j])
    shift = float(night_mjd - math.floor(t_det))
    _shift(data, obj, shift)
    t_alert = t_det + shift
    _truncate(data, t_alert, max(t_alert - history_days, start))
    p = data.phot[band]
    j = int(np.argmin(np.abs(p.mjd - t_alert)))
    return data, band, j


_BAND_P = {
    "ztf": (("g", "r"), np.array([0.5, 0.5])),
    "lsst": (("u", "g", "r", "i", "z", "y"), np.array([0.068, 0.097, 0.223, 0.223, 0.195, 0.195]) / 1.001),
}


def _pick_band(rng: np.random.Generator, survey: str) -> str:
    bands, p = _BAND_P[survey]
    return _pick(rng, list(bands), p / p.sum())


# ------------------------------------------------------------------------------------------------
# Nights
# ------------------------------------------------------------------------------------------------


def _pick(rng: np.random.Generator, kinds: list[str], probs: np.ndarray) -> str:
    """One of ``kinds`` with probabilities ``probs`` (inverse CDF of one uniform draw)."""
    k = int(np.searchsorted(np.cumsum(probs), rng.random() * float(np.sum(probs)), side="right"))
    return kinds[min(k, len(kinds) - 1)]


def generate_alert(
    index: int,
    rng: np.random.Generator,
    *,
    survey: str,
    kind: str,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
    serial_offset: int = 0,
) -> tuple[bytes, dict[str, Any]]:
    """One alert of an object of ``kind`` (see :func:`population.draw_object`) on ``night_mjd``."""
    hist = history_days if history_days is not None else DEFAULT_HISTORY_DAYS[survey]
    ra0 = opposition_ra(night_mjd)
    result = None
    obj: SimObject | None = None
    fallback = False
    for attempt in range(_MAX_TRIES):
        k = kind if attempt < _MAX_TRIES - 1 else "bogus"
        fallback = k != kind
        # Constant stars would only alert on 5-sigma noise: in a stream, stars are the variable ones.
        obj = draw_object(rng, index, k, bal_fraction=bal_fraction, effect=effect, survey=survey,
                          ra_center=ra0, ra_halfwidth=60.0, star_constant_fraction=0.0)
        result = simulate_alert(obj, survey, None, night_mjd, rng, history_days=hist)
        if result is not None:
            break
    if result is None or obj is None:  # pragma: no cover - the bogus fallback always detects
        raise RuntimeError("could not simulate an alerting object")
    data, band, j = result
    ctx = AlertContext(obj, data, band, j, serial_offset + index)
    if survey == "ztf":
        packet, truth = write_ztf_packet(ctx, rng, stamps=stamps)
    else:
        packet, truth = write_rubin_packet(ctx, rng, stamps=stamps)
    truth["attempts"] = attempt + 1
    truth["fallback_bogus"] = fallback
    return packet, truth


def iter_night(
    n_alerts: int,
    survey_mix: Mapping[str, float] | None = None,
    seed: int = 0,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    *,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    class_mix: Mapping[str, float] | None = None,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
) -> Iterator[tuple[bytes, dict[str, Any]]]:
    """Yield the alerts of :func:`generate_night` one at a time, in generation order (constant memory)."""
    s_kinds, s_p = normalise_mix(survey_mix or {"ztf": 0.7, "lsst": 0.3})
    c_kinds, c_p = normalise_mix(class_mix or DEFAULT_STREAM_MIX)
    for s in s_kinds:
        if s not in ("ztf", "lsst"):
            raise ValueError(f"unknown survey {s!r} in survey_mix")
    root = np.random.SeedSequence(seed)
    serial_offset = int(np.random.default_rng(root).integers(0, 10**8))
    for i, child in enumerate(root.spawn(n_alerts)):
        rng = np.random.default_rng(child)
        survey = _pick(rng, s_kinds, s_p)
        kind = _pick(rng, c_kinds, c_p)
        yield generate_alert(i, rng, survey=survey, kind=kind, night_mjd=night_mjd, bal_fraction=bal_fraction,
                             effect=effect, stamps=stamps, history_days=history_days, serial_offset=serial_offset)


def generate_night(
    n_alerts: int,
    survey_mix: Mapping[str, float] | None = None,
    seed: int = 0,
    bal_fraction: float = DEFAULT_BAL_FRACTION,
    *,
    night_mjd: int = DEFAULT_NIGHT_MJD,
    class_mix: Mapping[str, float] | None = None,
    effect: BalLightCurveEffect | None = None,
    stamps: bool = True,
    history_days: float | None = None,
    sort_by_time: bool = True,
) -> list[tuple[bytes, dict[str, Any]]]:
    """``n_alerts`` synthetic alerts of one night: (packet bytes, truth) pairs, deterministic in ``seed``.

    ``survey_mix`` weights ZTF and Rubin (default 70/30), ``class_mix`` the object kinds (default
    :data:`population.DEFAULT_STREAM_MIX`; ``qso`` splits into BAL/non-BAL with ``bal_fraction``).
    Each alert has its own random stream (``SeedSequence(seed).spawn``), so alert ``i`` does not
    depend on how many alerts are generated. Sorted by alert time unless ``sort_by_time=False``.
    ~60 kB per alert in memory: use :func:`iter_night` / :func:`write_night` for large nights.
    """
    out = list(iter_night(n_alerts, survey_mix, seed, bal_fraction, night_mjd=night_mjd, class_mix=class_mix,
                          effect=effect, stamps=stamps, history_days=history_days))
    if sort_by_time:
        out.sort(key=lambda pt: (pt[1]["mjd"], pt[1]["source_id"]))
    return out


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {k: _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.bool_, bool)):
        return bool(v)
    if isinstance(v, (np.integer,)):
        return int(v)
    if isinstance(v, (float, np.floating)):
        return float(v) if math.isfinite(v) else None
    return v


def write_night(directory: str | Path, n_alerts: int, *, truth_epochs: bool = False, **kwargs: Any) -> list[Path]:
    """Write the alerts of :func:`iter_night` as ``.avro`` files plus ``truth.jsonl`` into ``directory``.

    ZTF files are named ``ztf_<candid>.avro`` (Avro containers), Rubin ones ``lsst_<diaSourceId>.avro``
    (Confluent wire-format message values, like the Kafka payloads archived by brokers). Each line of
    ``truth.jsonl`` is one alert's truth with its ``file``; per-epoch arrays only if ``truth_epochs``.
    Alerts are written as they are generated (constant memory), in generation order; keyword
    arguments are those of :func:`iter_night`.
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    paths = []
    with (d / "truth.jsonl").open("w") as fh:
        for packet, truth in iter_night(n_alerts, **kwargs):
            name = f"{truth['survey']}_{truth['source_id']}.avro"
            (d / name).write_bytes(packet)
            paths.append(d / name)
            row = {k: v for k, v in truth.items() if truth_epochs or k != "epochs"}
            row["file"] = name
            fh.write(json.dumps(_jsonable(row), sort_keys=True) + "\n")
    return paths
