"""The object history store: merge semantics on real alerts, idempotence, order independence, faults.

Real bytes only: the 128 public ZTF alerts of ../shared/data (34 of them ZTF21abiuvdk) and the Rubin
samples, decoded by the runtime's decoder; real SQLite files and (where the binaries exist) a real
PostgreSQL server. No mock of either database.
"""

from __future__ import annotations

import json
import random
import sqlite3
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from broker_plugin.alert import Alert, LightCurve
from broker_plugin.decode import default_decoder
from broker_plugin.history import HistoryStage, StoreError, StoreVersionError, open_store
from broker_plugin.history.merge import KIND_MISMATCH_FLAG, merge_alert
from broker_plugin.history.points import (
    KIND_DC,
    KIND_DIFF,
    ORIGIN_ZTF_ALERT,
    ORIGIN_ZTF_DR,
    Points,
    lightcurve_points,
)
from broker_plugin.history.schema import SCHEMA_VERSION
from broker_plugin.history.sky import cone_ranges, separation_arcsec, zone_of
from broker_plugin.models.annotate import Annotator
from broker_plugin.pipeline import process_batch

OBJECT = "ZTF21abiuvdk"


@pytest.fixture(scope="module")
def ztf_payloads(ztf_alert_files: list[Path]) -> list[bytes]:
    return [p.read_bytes() for p in ztf_alert_files]


def _decode(payloads: list[bytes]) -> list[Alert]:
    out = [a for a in default_decoder().decode_batch(payloads) if not isinstance(a, Exception)]
    assert out
    return out


def _in_time_order(payloads: list[bytes]) -> list[bytes]:
    alerts = default_decoder().decode_batch(payloads)
    keyed = sorted((a.mjd, i) for i, a in enumerate(alerts) if not isinstance(a, Exception))
    return [payloads[i] for _, i in keyed]


def _run(payloads: list[bytes], stage: HistoryStage, batch_size: int = 500) -> list[dict[str, Any]]:
    annotator = Annotator(None)
    records: list[dict[str, Any]] = []
    for k in range(0, len(payloads), batch_size):
        records += process_batch(annotator, payloads[k:k + batch_size], history=stage).records
    return records


def _distinct_epochs(payloads: list[bytes], object_id: str) -> dict[str, set[float]]:
    """Every distinct detection time per band over all packets of one object (the packets alone)."""
    out: dict[str, set[float]] = {}
    for a in _decode(payloads):
        if a.object_id == object_id:
            for band, lc in a.lightcurves.items():
                out.setdefault(band, set()).update(np.round(lc.mjd, 6).tolist())
    return out


def _dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(path)
    try:
        return {t: sorted(conn.execute(f"SELECT * FROM {t}").fetchall())
                for t in ("objects", "aliases", "points", "limits", "aggregates")}
    finally:
        conn.close()


def _by_source(records: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {r["source_id"]: r for r in records}


# ----------------------------------------------------------------------------- merge semantics


def test_last_alert_of_an_object_holds_every_distinct_detection_once(ztf_payloads: list[bytes]) -> None:
    """Replayed in time order, the last alert of ZTF21abiuvdk has all 34 alerts' points, each once."""
    ordered = _in_time_order(ztf_payloads)
    stage = HistoryStage(open_store(None))
    annotator = Annotator(None)
    last: Alert | None = None
    for k in range(0, len(ordered), 7):
        out = process_batch(annotator, ordered[k:k + 7], history=stage)
        for a in out.alerts:
            if a.object_id == OBJECT:
                last = a
    assert last is not None
    want = _distinct_epochs(ztf_payloads, OBJECT)
    packet_only = max((a for a in _decode(ztf_payloads) if a.object_id == OBJECT), key=lambda a: a.mjd)
    for band, epochs in want.items():
        got = np.round(last.lightcurves[band].mjd, 6)
        assert sorted(got.tolist()) == sorted(epochs), band  # all of them, each exactly once
        assert np.all(np.diff(last.lightcurves[band].mjd) > 0)
    assert sum(len(v) for v in want.values()) > sum(packet_only.n_points().values())  # the store added points
    hist = last.history
    assert hist is not None and hist["store"] and hist["span_days"] > 30.0


def test_every_object_of_a_mixed_directory_gets_its_points(ztf_payloads: list[bytes]) -> None:
    stage = HistoryStage(open_store(None))
    records = _run(_in_time_order(ztf_payloads), stage, batch_size=16)
    last: dict[str, dict[str, Any]] = {}
    for r in records:
        if r["object_id"] not in last or r["mjd"] >= last[r["object_id"]]["mjd"]:
            last[r["object_id"]] = r
    several = [o for o in last if sum(1 for r in records if r["object_id"] == o) > 1]
    assert len(several) >= 3
    for obj in several:
        want = _distinct_epochs(ztf_payloads, obj)
        assert last[obj]["n_points"] == {b: len(v) for b, v in sorted(want.items())}, obj


def test_replaying_again_changes_nothing_in_the_store_or_the_output(tmp_path: Path,
                                                                     ztf_payloads: list[bytes]) -> None:
    path = tmp_path / "history.sqlite"
    ordered = _in_time_order(ztf_payloads)
    first = _run(ordered, HistoryStage(open_store(str(path))), batch_size=20)
    before = _dump(path)
    second = _run(ordered, HistoryStage(open_store(str(path))), batch_size=20)
    assert _dump(path) == before
    assert second == first


def test_records_do_not_depend_on_batching_or_redelivery(ztf_payloads: list[bytes]) -> None:
    """An alert sees the points seen by its own time: batch size, order within a batch and a
    redelivery after later alerts were stored all give the same record."""
    ordered = _in_time_order(ztf_payloads)
    stage = HistoryStage(open_store(None))
    reference = _by_source(_run(ordered, stage, batch_size=500))
    for payloads, size in ((ordered, 1), (ordered, 9), (list(reversed(ordered)), 500)):
        assert _by_source(_run(payloads, HistoryStage(open_store(None)), batch_size=size)) == reference
    redelivered = random.Random(7).sample(ordered, 40)  # at-least-once: again, any order, any grouping
    assert _by_source(_run(redelivered, stage, batch_size=6)) == {k: reference[k] for k in
                                                                 _by_source(_run(redelivered, stage, 40))}


def test_without_a_store_nothing_changes(ztf_payloads: list[bytes]) -> None:
    plain = process_batch(Annotator(None), ztf_payloads).records
    for r in plain:
        assert r["history"]["store"] == {} and r["history"]["packet"] == r["n_points"]


def test_rubin_alerts_keep_the_dia_object_aggregates(lsst_alert_files: list[Path], tmp_path: Path) -> None:
    payloads = [p.read_bytes() for p in lsst_alert_files]
    store = open_store(str(tmp_path / "h.sqlite"))
    out = process_batch(Annotator(None), payloads, history=HistoryStage(store))
    with_aggs = [a for a in out.alerts if a.aggregates]
    assert any(k.endswith("_psfFluxMean") for a in with_aggs for k in a.aggregates), "v7+ carry per-band means"
    assert store.stats()["aggregates"] == len({a.object_id for a in with_aggs})
    for a in with_aggs:  # the store keeps each object's latest alert's aggregates
        latest = max((b for b in with_aggs if b.object_id == a.object_id),
                     key=lambda b: (b.mjd, json.dumps(b.aggregates, sort_keys=True)))
        oid = store.find(a.object_id)
        assert oid is not None
        assert store.describe(oid)[2].aggregates["lsst"] == (latest.mjd, latest.aggregates)


# ----------------------------------------------------------------------------- the merge rule


def _lc(band: str, mjd: list[float], flux: list[float], kind: str = "dc") -> LightCurve:
    m = np.array(mjd)
    f = np.array(flux)
    e = f * 0.05
    return LightCurve(band, m, 31.4 - 2.5 * np.log10(f), np.full(m.size, 0.054), f, e, kind)


def _alert(lcs: dict[str, LightCurve], mjd: float) -> Alert:
    return Alert("ztf", "ZTFtest", "1", 10.0, 20.0, mjd, "g", "4.02", {}, lightcurves=dict(lcs))


def test_merge_adds_points_seen_by_the_alert_time_and_leaves_the_packet_first() -> None:
    packet = {"g": _lc("g", [100.0, 101.0], [1000.0, 1100.0])}
    stored = lightcurve_points({"g": _lc("g", [50.0, 101.0, 150.0], [900.0, 1.0, 1200.0])}, ORIGIN_ZTF_ALERT, 60.0)
    stored.seen[2] = 150.0  # the 150 point comes from a later alert
    a = _alert(packet, 101.0)
    merge_alert(a, stored)
    g = a.lightcurves["g"]
    assert g.mjd.tolist() == [50.0, 100.0, 101.0]
    assert g.flux.tolist() == [900.0, 1000.0, 1100.0]  # the packet's 101 point won its epoch
    assert a.history == {"packet": {"g": 2}, "store": {"g": 1}, "data_release": {}, "other_survey": {},
                         "span_days": 51.0}


def test_merge_keeps_one_kind_per_band_and_flags_the_rest() -> None:
    packet = {"g": _lc("g", [100.0], [1000.0], kind="dc")}
    diff = lightcurve_points({"g": _lc("g", [10.0, 20.0], [5.0, 6.0], kind="diff")}, ORIGIN_ZTF_ALERT, 30.0)
    dr = lightcurve_points({"g": _lc("g", [1.0], [990.0]), "r": _lc("r", [2.0], [800.0])}, ORIGIN_ZTF_DR, None)
    a = _alert(packet, 100.0)
    merge_alert(a, Points.concat([diff, dr]))
    assert a.lightcurves["g"].mjd.tolist() == [1.0, 100.0]
    assert a.lightcurves["r"].kind == "dc" and a.lightcurves["r"].mjd.tolist() == [2.0]
    assert KIND_MISMATCH_FLAG in a.flags
    assert a.history["data_release"] == {"g": 1, "r": 1}
    assert diff.kind.tolist() == [KIND_DIFF, KIND_DIFF] and dr.kind[0] == KIND_DC


def test_a_packet_only_merge_is_bit_identical(ztf_payloads: list[bytes]) -> None:
    """With nothing stored, the merged light curves are the builder's arrays, bit for bit."""
    for a in _decode(ztf_payloads)[:20]:
        before = {b: (lc.mjd.copy(), lc.mag.copy(), lc.flux.copy()) for b, lc in a.lightcurves.items()}
        pts = lightcurve_points(a.lightcurves, ORIGIN_ZTF_ALERT, a.mjd)
        merge_alert(a, pts)  # its own points again: dedup leaves the packet's
        for b, (m, mag, f) in before.items():
            assert np.array_equal(a.lightcurves[b].mjd, m)
            assert np.array_equal(a.lightcurves[b].flux, f)
            assert np.array_equal(a.lightcurves[b].mag, mag, equal_nan=True)


# ----------------------------------------------------------------------------- sky index


@pytest.mark.parametrize(("ra", "dec"), [(0.0001, 10.0), (359.9999, -30.0), (180.0, 89.9995), (12.0, -89.9999),
                                         (200.0, 0.0)])
def test_cone_ranges_hold_every_neighbour(ra: float, dec: float) -> None:
    rng = np.random.default_rng(1)
    for _ in range(200):
        d = rng.uniform(0, 1.5 / 3600.0)
        ang = rng.uniform(0, 2 * np.pi)
        dec2 = float(np.clip(dec + d * np.sin(ang), -90, 90))
        ra2 = float((ra + d * np.cos(ang) / max(np.cos(np.radians(dec2)), 1e-6)) % 360.0)
        if separation_arcsec(ra, dec, ra2, dec2) > 1.5:
            continue
        assert any(z == zone_of(dec2) and lo <= ra2 <= hi for z, lo, hi in cone_ranges(ra, dec, 1.5))


def test_objects_are_associated_by_position_within_the_radius() -> None:
    store = open_store(None, radius_arcsec=1.5)
    stage = HistoryStage(store)
    base = _alert({"g": _lc("g", [100.0], [1000.0])}, 100.0)
    stage.write(stage.merge([base]))
    near = _alert({"g": _lc("g", [110.0], [1010.0])}, 110.0)
    near.object_id, near.dec = "ZTFother", 20.0 + 1.0 / 3600.0  # 1 arcsec away: the same object
    far = _alert({"g": _lc("g", [111.0], [1010.0])}, 111.0)
    far.object_id, far.dec = "ZTFfar", 20.0 + 2.0 / 3600.0
    stage.write(stage.merge([near, far]))
    assert near.history["store"] == {"g": 1}
    assert far.history["store"] == {}
    assert store.find("ZTFother") == store.find("ZTFtest") != store.find("ZTFfar")


# ----------------------------------------------------------------------------- schema and faults


def test_the_schema_version_is_recorded_and_a_newer_store_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "h.sqlite"
    open_store(str(path)).close()
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT value FROM meta WHERE key='schema_version'").fetchone() == (str(SCHEMA_VERSION),)
    conn.execute("UPDATE meta SET value='99' WHERE key='schema_version'")
    conn.commit()
    conn.close()
    with pytest.raises(StoreVersionError, match="schema version 99"):
        open_store(str(path))


def test_a_locked_store_is_a_store_error_and_the_batch_writes_once_it_is_free(tmp_path: Path,
                                                                              ztf_payloads: list[bytes]) -> None:
    path = tmp_path / "h.sqlite"
    store = open_store(str(path))
    import broker_plugin.history.sqlite_store as sq

    store.conn.raw.execute("PRAGMA busy_timeout=100")
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    stage = HistoryStage(store)
    with pytest.raises(StoreError, match="locked"):
        process_batch(Annotator(None), ztf_payloads[:10], history=stage)
    holder.execute("ROLLBACK")
    holder.close()
    out = process_batch(Annotator(None), ztf_payloads[:10], history=stage)
    assert len(out.records) == 10 and store.stats()["points"] > 0
    assert sq.BUSY_TIMEOUT_MS >= 1000


def test_history_config_is_validated() -> None:
    from broker_plugin.config import load_config
    from broker_plugin.errors import ConfigError

    base = {"kafka": {"input_topics": ["t"]}}
    for bad, msg in (({"backend": "mongo"}, "history.backend"), ({"backend": "sqlite"}, "history.path"),
                     ({"backend": "postgresql", "url": "mysql://x"}, "history.url"),
                     ({"radius_arcsec": 120}, "radius_arcsec"), ({"window_days": -1}, "window_days")):
        with pytest.raises(ConfigError, match=msg):
            load_config(overrides={**base, "history": bad}, environ={})
    cfg = load_config(overrides={**base, "history": {"backend": "postgresql", "url": "postgresql://u@h/db"}},
                      environ={"BAL_BROKER__HISTORY__URL": "postgresql://u:pa:ss@h/db"})
    assert cfg.history.url == "postgresql://u:pa:ss@h/db"


def test_store_contents_are_json_free_of_nan(tmp_path: Path, lsst_alert_files: list[Path]) -> None:
    store = open_store(str(tmp_path / "h.sqlite"))
    process_batch(Annotator(None), [p.read_bytes() for p in lsst_alert_files], history=HistoryStage(store))
    conn = sqlite3.connect(tmp_path / "h.sqlite")
    for (data,) in conn.execute("SELECT data FROM aggregates"):
        assert all(np.isfinite(v) for v in json.loads(data).values())


def test_the_retention_window_limits_what_an_alert_reads() -> None:
    packet = {"g": _lc("g", [1000.0], [1000.0])}
    stored = lightcurve_points({"g": _lc("g", [100.0, 700.0, 990.0], [900.0, 950.0, 980.0])}, ORIGIN_ZTF_ALERT, 995.0)
    a = _alert(packet, 1000.0)
    merge_alert(a, stored, window_days=365.0)
    assert a.lightcurves["g"].mjd.tolist() == [700.0, 990.0, 1000.0]
    b = _alert(packet, 1000.0)
    merge_alert(b, stored)
    assert b.lightcurves["g"].mjd.tolist() == [100.0, 700.0, 990.0, 1000.0]


@pytest.mark.parametrize("cross", [False, True])
def test_cross_survey_joins_a_rubin_alert_to_the_ztf_object_only_when_asked(cross: bool) -> None:
    store = open_store(None, cross_survey=cross)
    stage = HistoryStage(store)
    ztf = _alert({"g": _lc("g", [100.0, 110.0], [1000.0, 1010.0])}, 110.0)
    stage.write(stage.merge([ztf]))
    rubin = Alert("lsst", "170000000001", "2", 10.0, 20.0 + 0.5 / 3600.0, 200.0, "g", "11.0", {},
                  lightcurves={"g": _lc("g", [200.0], [1005.0])})
    stage.write(stage.merge([rubin]))
    if cross:
        assert rubin.history["other_survey"] == {"g": 2} and len(rubin.lightcurves["g"]) == 3
        assert store.find("170000000001") == store.find("ZTFtest")
    else:
        assert rubin.history["other_survey"] == {} and len(rubin.lightcurves["g"]) == 1
        assert store.find("170000000001") != store.find("ZTFtest")
