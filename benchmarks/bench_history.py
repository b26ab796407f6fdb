"""The object history store in the benchmark: its cost on the batch path, and how a merge scales.

Two measurements, in the same run as the rest of ``make bench``:

* throughput of :func:`broker_plugin.pipeline.process_batch` over the corpus (ZTF and Rubin apart)
  with the history stage off, on a SQLite file (in a temporary folder) and on a local PostgreSQL
  (:class:`tests.pg_server.PostgresServer`), repeats interleaved (off, sqlite, postgresql, off, ...)
  so a busy machine slows all alike; medians and ratios to "off". Two variants: stores that hold
  nothing yet (every corpus object is new: its first alert), and stores pre-filled with
  :data:`POINTS_PER_OBJECT` points for every corpus object, so the merges carry long histories. Each
  repeat gets its own copy of the variant's store, so every pass writes what a first pass writes.
* scaling: the latency of one batch (:meth:`HistoryStage.merge` + :meth:`HistoryStage.write`) of
  :data:`BATCH` alerts of objects already stored, with 10^4, 10^5 (10^6 ...) objects of
  :data:`POINTS_PER_OBJECT` points stored, and the bytes on disk per million stored points.

Why the PostgreSQL server runs on the other cores: a shared store is a server of its own, not part
of the worker's core; its CPU is not counted in the worker's figures (the same as the broker's).
The test server runs with ``fsync=off`` (see tests/pg_server.py): its commits are cheaper than a
durable deployment's; the SQLite store uses its shipped settings (WAL, synchronous=NORMAL).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.history import HistoryStage, open_store
from broker_plugin.history.points import (
    BAND_CODE,
    ORIGIN_LSST_ALERT,
    ORIGIN_ZTF_ALERT,
    PRIO_ALERT,
    kind_code,
    time_key,
)
from broker_plugin.history.store import SURVEY_CODE, Batch, HistoryStore, new_object_row, object_key

from .corpus import Packet

#: Stored points of every pre-filled or synthetic object.
POINTS_PER_OBJECT = 200
#: Alerts per batch (the service's default batch_size).
BATCH = 500
#: Goals of the issue: throughput with the stage on, as a share of the stage off.
GOALS: dict[str, float] = {"sqlite": 0.85, "postgresql": 0.70}
#: Objects written per store.write() while building a scaling store.
BUILD_CHUNK = 5000
BACKENDS = ("off", "sqlite", "postgresql")


# ------------------------------------------------------------------------------------- the servers


@contextlib.contextmanager
def postgres(server_cpus: Sequence[int] | None) -> Iterator[tuple[Any, str | None]]:
    """(a running PostgresServer, None), or (None, why it is skipped). The server inherits
    ``server_cpus`` as its CPU affinity (the cores the broker would use)."""
    try:
        import psycopg  # noqa: F401

        from tests.pg_server import PostgresServer, find_postgres_bin
    except ImportError as exc:
        yield None, f"psycopg 3 or tests/pg_server.py not importable ({exc})"
        return
    if find_postgres_bin() is None:
        yield None, "PostgreSQL server binaries (initdb, pg_ctl) not found"
        return
    before = os.sched_getaffinity(0)
    try:
        if server_cpus:
            os.sched_setaffinity(0, set(server_cpus))
        server = PostgresServer().start()
    except Exception as exc:
        yield None, f"PostgreSQL did not start: {str(exc).splitlines()[0]}"
        return
    finally:
        os.sched_setaffinity(0, before)
    try:
        yield server, None
    finally:
        server.stop()


class Stores:
    """Fresh copies of a template store per repeat: a SQLite file copy, a PostgreSQL ``TEMPLATE``."""

    def __init__(self, folder: Path, server: Any) -> None:
        self.folder = folder
        self.server = server
        self.serial = 0

    def template(self, backend: str, name: str) -> str:
        if backend == "sqlite":
            return str(self.folder / f"{name}.sqlite")
        return self.server.create_database(name)

    def copy(self, backend: str, template: str) -> str:
        self.serial += 1
        if backend == "sqlite":
            dest = self.folder / f"copy{self.serial}.sqlite"
            shutil.copyfile(template, dest)
            return str(dest)
        import psycopg
        from psycopg import sql

        name = f"copy{self.serial}"
        with psycopg.connect(self.server.url("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                sql.Identifier(name), sql.Identifier(template.rsplit("/", 1)[1])))
        return self.server.url(name)

    def drop(self, backend: str, spec: str) -> None:
        if backend == "sqlite":
            for suffix in ("", "-wal", "-shm"):
                Path(spec + suffix).unlink(missing_ok=True)
        else:
            self.server.drop_database(spec.rsplit("/", 1)[1])


# ------------------------------------------------------------------------------ synthetic histories


def synthetic_points(oids: np.ndarray, bands: Sequence[tuple[int, int]], t_end: np.ndarray, origin: int,
                     rng: np.random.Generator, n: int = POINTS_PER_OBJECT) -> tuple[np.ndarray, ...]:
    """``point_cols`` of ``n`` points per object: one every 1.5 days up to ``t_end`` (per object),
    bands cycling through ``bands`` ((band code, kind code) pairs), seen when taken."""
    m = oids.size
    oid = np.repeat(oids.astype(np.int64), n)
    step = np.tile(np.arange(n, dtype=np.float64), m)
    mjd = np.repeat(t_end, n) - (n - step) * 1.5 + 0.0123
    pick = np.tile(np.arange(n) % len(bands), m)
    codes = np.array(bands, dtype=np.int16)
    bk = codes[pick, 0] * 2 + codes[pick, 1]
    flux = rng.normal(5000.0, 800.0, oid.size)
    err = np.abs(rng.normal(150.0, 20.0, oid.size)) + 1.0
    return (oid, bk, time_key(mjd), np.full(oid.size, origin, dtype=np.int16),
            np.full(oid.size, PRIO_ALERT, dtype=np.int16), mjd, flux, err, mjd.copy())


def corpus_objects(packets: Sequence[Packet]) -> list[tuple[str, str, float, float, float, list[tuple[int, int]]]]:
    """(survey, name, ra, dec, earliest alert mjd, [(band, kind)]) of every object of ``packets``."""
    from broker_plugin.decode import decode_alert

    out: dict[tuple[str, str], list[Any]] = {}
    for p in packets:
        a = decode_alert(p.data)
        bands = sorted({(BAND_CODE[b], kind_code(lc.kind)) for b, lc in a.lightcurves.items() if b in BAND_CODE})
        bands = bands or [(BAND_CODE.get(a.band, 1), 0)]
        first = min(float(a.mjd), *(float(lc.mjd.min()) for lc in a.lightcurves.values() if len(lc)))
        have = out.get((a.survey, a.object_id))
        if have is None or first < have[4]:
            out[(a.survey, a.object_id)] = [a.survey, a.object_id, float(a.ra), float(a.dec), first, bands]
    return [tuple(v) for v in out.values()]  # type: ignore[misc]


def prefill(store: HistoryStore, packets: Sequence[Packet], seed: int = 7) -> int:
    """Store :data:`POINTS_PER_OBJECT` points, ending a day before its packets' first point, for every
    object of ``packets`` (the objects under the ids and positions the alerts will look them up by)."""
    rng = np.random.default_rng(seed)
    objs = corpus_objects(packets)
    total = 0
    for k in range(0, len(objs), BUILD_CHUNK):
        chunk = objs[k:k + BUILD_CHUNK]
        batch = Batch()
        cols = []
        for survey, name, ra, dec, first, bands in chunk:
            oid = object_key(survey, name)
            batch.objects.append(new_object_row(oid, survey, ra, dec))
            batch.aliases.append((SURVEY_CODE[survey], name, oid))
            origin = ORIGIN_ZTF_ALERT if survey == "ztf" else ORIGIN_LSST_ALERT
            cols.append(synthetic_points(np.array([oid]), bands, np.array([first - 1.0]), origin, rng))
        batch.point_cols = tuple(np.concatenate([c[i] for c in cols]) for i in range(9))
        total += len(batch.point_cols[0])
        store.write(batch)
    return total


# --------------------------------------------------------------------------- throughput (corpus)


def _pass(annotator: Any, packets: Sequence[Packet], stage: HistoryStage | None) -> float:
    from broker_plugin.pipeline import process_batch

    payloads = [p.data for p in packets]
    t0 = time.perf_counter()
    for i in range(0, len(payloads), BATCH):
        process_batch(annotator, payloads[i:i + BATCH], history=stage)
    return time.perf_counter() - t0


def measure_throughput(annotator: Any, groups: dict[str, list[Packet]], stores: Stores, backends: Sequence[str],
                       repeats: int) -> dict[str, Any]:
    """alerts/s per (variant, survey, backend), median of ``repeats`` interleaved passes, and ratios."""
    out: dict[str, Any] = {}
    for variant in ("empty", "prefilled"):
        out[variant] = {}
        for survey, packets in groups.items():
            templates: dict[str, str] = {}
            for backend in backends[1:]:
                templates[backend] = stores.template(backend, f"tpl_{variant}_{survey}")
                store = open_store(templates[backend])
                if variant == "prefilled":
                    prefill(store, packets)
                store.close()
            runs: dict[str, list[float]] = {b: [] for b in backends}
            _pass(annotator, packets[:BATCH], None)  # warm-up
            for _ in range(repeats):
                for backend in backends:
                    spec = None if backend == "off" else stores.copy(backend, templates[backend])
                    store = None if spec is None else open_store(spec)
                    stage = None if store is None else HistoryStage(store)
                    runs[backend].append(len(packets) / _pass(annotator, packets, stage))
                    if store is not None:
                        store.close()
                        stores.drop(backend, spec or "")
            for backend, t in templates.items():
                stores.drop(backend, t)
            out[variant][survey] = _summary(runs, len(packets))
            print(f"history {variant} {survey}: " + ", ".join(
                f"{b} {v['alerts_per_s']:,.0f}/s ({v.get('vs_off', 1.0):.2f})"
                for b, v in out[variant][survey]["backends"].items()), flush=True)
    return out


def _summary(runs: dict[str, list[float]], alerts: int) -> dict[str, Any]:
    off = statistics.median(runs["off"])
    backends: dict[str, Any] = {}
    for b, rates in runs.items():
        med = statistics.median(rates)
        row: dict[str, Any] = {"alerts_per_s": round(med, 1), "runs_alerts_per_s": [round(r, 1) for r in rates]}
        if b != "off":
            row["vs_off"] = round(med / off, 3)
            row["goal"] = GOALS[b]
            row["met"] = med / off >= GOALS[b]
        backends[b] = row
    return {"alerts": alerts, "backends": backends}


# ---------------------------------------------------------------------------------------- scaling


def grow(store: HistoryStore, start: int, stop: int, rng: np.random.Generator, t_end: float) -> None:
    """Add synthetic ZTF objects ``start`` .. ``stop - 1`` (ids and names from their number, positions
    random on the sky), :data:`POINTS_PER_OBJECT` points each, in chunks of :data:`BUILD_CHUNK`."""
    bands = [(BAND_CODE["g"], 0), (BAND_CODE["r"], 0)]
    for k in range(start, stop, BUILD_CHUNK):
        idx = np.arange(k, min(stop, k + BUILD_CHUNK))
        oids = 10**15 + idx
        ra = rng.uniform(0.0, 360.0, idx.size)
        dec = np.degrees(np.arcsin(rng.uniform(-1.0, 1.0, idx.size)))
        batch = Batch(objects=[new_object_row(int(o), "ztf", r, d) for o, r, d in zip(oids, ra, dec, strict=True)],
                      aliases=[(SURVEY_CODE["ztf"], _name(int(i)), int(o)) for i, o in zip(idx, oids, strict=True)])
        batch.point_cols = synthetic_points(oids, bands, np.full(idx.size, t_end), ORIGIN_ZTF_ALERT, rng)
        store.write(batch)


def _name(i: int) -> str:
    return f"ZTFbench{i:010d}"


def _position(store: HistoryStore, name: str) -> tuple[float, float]:
    cur = store.conn.cursor()
    ph = store.ph
    cur.execute(f"SELECT o.ra, o.dec FROM objects o JOIN aliases a ON a.oid = o.oid WHERE a.name = {ph}", (name,))
    ra, dec = cur.fetchone()
    store.conn.commit()
    return float(ra), float(dec)


def _batch_latency(store: HistoryStore, packets: Sequence[Packet], n_objects: int,
                   rng: np.random.Generator) -> tuple[float, float]:
    """(merge s, write s) of one batch: ``packets`` decoded, each turned into an alert of a random
    stored object (its name and position; its packet points then are new points of that object)."""
    from broker_plugin.decode import default_decoder

    alerts = [a for a in default_decoder().decode_batch([p.data for p in packets]) if not isinstance(a, Exception)]
    picks = rng.choice(n_objects, size=len(alerts), replace=False)
    for a, i in zip(alerts, picks.tolist(), strict=True):
        a.object_id = _name(i)
        a.ra, a.dec = _position(store, a.object_id)
    stage = HistoryStage(store)
    t0 = time.perf_counter()
    pending = stage.merge(alerts)
    t1 = time.perf_counter()
    stage.write(pending)
    return t1 - t0, time.perf_counter() - t1


def measure_scaling(backend: str, spec: str, sizes: Sequence[int], packets: Sequence[Packet],
                    repeats: int) -> dict[str, Any]:
    """Per size: build time, batch latency (median of ``repeats`` batches), bytes per million points."""
    from broker_plugin.decode import decode_alert

    rng = np.random.default_rng(11)
    t_end = min(float(decode_alert(p.data).mjd) for p in packets[:BATCH]) - 40.0  # before any packet point
    store = open_store(spec)
    rows: list[dict[str, Any]] = []
    have = 0
    try:
        for size in sorted(sizes):
            t0 = time.perf_counter()
            grow(store, have, size, rng, t_end)
            build_s = time.perf_counter() - t0
            if backend == "postgresql":  # what autovacuum would have done by now
                store.conn.execute("ANALYZE")
                store.conn.commit()
            added = size - have
            have = size
            _batch_latency(store, packets[:BATCH], size, rng)  # warm-up
            lat = [_batch_latency(store, packets[:BATCH], size, rng) for _ in range(repeats)]
            stats = store.stats()
            merge = statistics.median(m for m, _ in lat)
            write = statistics.median(w for _, w in lat)
            total = statistics.median(m + w for m, w in lat)
            rows.append({"objects": size, "points": stats["points"], "bytes": stats["bytes"],
                         "bytes_per_million_points": round(stats["bytes"] / max(stats["points"], 1) * 1e6),
                         "build_s": round(build_s, 1),
                         "build_points_per_s": round(added * POINTS_PER_OBJECT / build_s) if build_s else None,
                         "merge_ms": round(merge * 1e3, 1), "write_ms": round(write * 1e3, 1),
                         "batch_ms": round(total * 1e3, 1),
                         "runs_batch_ms": [round((m + w) * 1e3, 1) for m, w in lat]})
            print(f"history scaling {backend}: {rows[-1]}", flush=True)
    finally:
        store.close()
    return {"batch_alerts": len(packets[:BATCH]), "points_per_object": POINTS_PER_OBJECT, "sizes": rows,
            "flatness": _flatness(rows)}


def _flatness(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Latency at the largest size over the smallest, and a plain verdict (flat: within 1.5x)."""
    if len(rows) < 2:
        return {"ratio_largest_to_smallest": None, "flat": None}
    ratio = rows[-1]["batch_ms"] / rows[0]["batch_ms"]
    return {"ratio_largest_to_smallest": round(ratio, 2), "flat": ratio <= 1.5,
            "objects": [rows[0]["objects"], rows[-1]["objects"]]}


# ------------------------------------------------------------------------------------------- entry


def run(annotator: Any, corpus: Any, *, alerts: int, repeats: int, sizes: Sequence[int], scale_repeats: int,
        worker_cpus: Sequence[int], server_cpus: Sequence[int]) -> dict[str, Any]:
    """Everything above; the benchmark process on ``worker_cpus``, PostgreSQL on ``server_cpus``."""
    groups = {s: corpus.group(s)[:alerts] for s in ("ztf", "lsst") if corpus.group(s)}
    out: dict[str, Any] = {"alerts_per_survey": {s: len(p) for s, p in groups.items()}, "batch": BATCH,
                           "repeats": repeats, "points_per_object": POINTS_PER_OBJECT, "goals": GOALS,
                           "postgresql": None, "throughput": None, "scaling": {}, "sizes_requested": list(sizes)}
    folder = Path(tempfile.mkdtemp(prefix="bal-bench-history-"))
    try:
        with postgres(server_cpus) as (server, skipped):
            out["postgresql"] = {"skipped": skipped} if skipped else {"skipped": None, "server_cpus": list(server_cpus),
                                                                      "settings": "fsync=off, synchronous_commit=off"}
            backends = [b for b in BACKENDS if b != "postgresql" or server is not None]
            os.sched_setaffinity(0, set(worker_cpus))
            stores = Stores(folder, server)
            out["throughput"] = measure_throughput(annotator, groups, stores, backends, repeats)
            for backend in backends[1:]:
                spec = stores.template(backend, "scaling")
                out["scaling"][backend] = measure_scaling(backend, spec, sizes, groups["ztf"], scale_repeats)
                stores.drop(backend, spec)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return out
