"""The object history store: one small interface, SQL shared by its SQLite and PostgreSQL backends.

What a batch needs from a store is two calls, never one per alert (the hot path):

* :meth:`HistoryStore.read`: for every alert of the batch, its object (by survey id, else by position
  within the association radius) and everything stored about it: points, upper limits, aggregates;
* :meth:`HistoryStore.write`: the batch's new objects, aliases, points, limits and aggregates, in one
  transaction, so a process killed in the middle of a batch leaves none of it behind.

Writes are idempotent and order-independent: a point's key is (object, band and kind, exposure), and
a second write of a key keeps the earliest ``seen`` and the better measurement (lower priority, then
smaller error, then smaller flux), whichever order writers come in. Two workers that store the same
alerts in any interleaving therefore leave the same rows as one worker.

The backends (:mod:`~broker_plugin.history.sqlite_store`, :mod:`~broker_plugin.history.postgres_store`)
supply a connection, the dialect's cone query and bulk write; everything else is here.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from broker_plugin.history.rows import (
    IN_CHUNK,
    OBJECT_SURVEY,
    SURVEY_CODE,
    SURVEY_NAME,
    Batch,
    Probe,
    StoredObject,
    StoreError,
    StoreVersionError,
    _first_line,
    _limits_of,
    _points_of,
    _remapped,
    _split,
    new_object_row,
)
from broker_plugin.history.schema import SCHEMA_VERSION, Dialect, migration_steps, statements
from broker_plugin.history.sky import ZONE_HEIGHT_DEG, cone_ranges, object_key, separation_arcsec


class HistoryStore:
    """The backend-independent part of a store; subclasses open ``self.conn`` and the dialect hooks."""

    dialect: Dialect = "sqlite"
    #: The backend's exceptions that mean "unavailable now" (locked, unreachable, full, deadlock):
    #: they become :class:`StoreError` and the batch is retried; anything else is a bug.
    transient: tuple[type[BaseException], ...] = ()
    #: Placeholder of the DB-API paramstyle (``?`` for sqlite3, ``%s`` for psycopg).
    ph = "?"

    def __init__(self, conn: Any, *, radius_arcsec: float = 1.5, cross_survey: bool = False) -> None:
        self.conn = conn
        self.radius_arcsec = radius_arcsec
        self.cross_survey = cross_survey
        self.url = ""

    # -- schema ----------------------------------------------------------------------------------

    def migrate(self) -> int:
        """Create or upgrade the tables (one transaction); returns the store's schema version.

        A store already at this version is only read (no write lock taken at start-up).
        """
        try:
            return self._migrate()
        except self.transient as exc:
            self._rollback()
            raise StoreError(f"history store {self.url}: cannot open: {_first_line(exc)}") from exc

    def _migrate(self) -> int:
        cur = self.conn.cursor()
        self._migration_lock(cur)
        current = 0
        cur.execute("SELECT count(*) FROM " + self._tables_query())
        if int(cur.fetchone()[0]):
            cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
            row = cur.fetchone()
            current = int(row[0]) if row else 0
        if current > SCHEMA_VERSION:
            self.conn.rollback()
            raise StoreVersionError(f"history store {self.url} has schema version {current}; this bal-broker writes "
                                    f"{SCHEMA_VERSION}: upgrade bal-broker or use another store")
        steps = migration_steps(current)
        if not steps:
            self.conn.commit()
            return current
        for version in steps:
            for stmt in statements(version, self.dialect):
                cur.execute(stmt)
        p = self.ph
        for key, value in (("schema_version", str(SCHEMA_VERSION)), ("zone_height_deg", repr(ZONE_HEIGHT_DEG))):
            cur.execute(f"INSERT INTO meta (key, value) VALUES ({p}, {p}) ON CONFLICT (key) DO UPDATE SET value = "
                        "excluded.value", (key, value))
        self.conn.commit()
        return SCHEMA_VERSION

    def _migration_lock(self, cur: Any) -> None:
        """Serialise start-up migrations of several processes (a backend hook; SQLite's write lock
        does it already)."""

    def _tables_query(self) -> str:
        """A FROM clause listing the ``meta`` table if it exists (the catalogue differs by dialect)."""
        return "sqlite_master WHERE type = 'table' AND name = 'meta'"

    # -- reading ---------------------------------------------------------------------------------

    def read(self, probes: Sequence[Probe]) -> tuple[list[int | None], dict[int, StoredObject]]:
        """The stored object of each probe (None: none yet) and what is stored about each found object.

        Raises :class:`StoreError` when the store cannot be read (the batch is then retried).
        """
        try:
            self.ensure_connected()
            return self._read(probes)
        except self.transient as exc:
            self._rollback()
            raise StoreError(f"history store {self.url}: cannot read: {_first_line(exc)}") from exc

    def _read(self, probes: Sequence[Probe]) -> tuple[list[int | None], dict[int, StoredObject]]:
        by_name = self._aliases(probes)
        oids: list[int | None] = [by_name.get((SURVEY_CODE[p.survey], p.name)) for p in probes]
        missing = [i for i, o in enumerate(oids) if o is None]
        if missing:
            for i, oid in self._nearest([probes[i] for i in missing]).items():
                oids[missing[i]] = oid
        found = {o: StoredObject(o) for o in oids if o is not None}
        if found:
            self._read_objects(found)
        self.conn.commit()  # end the read transaction: a long-lived snapshot would pin old rows
        return oids, found

    def _aliases(self, probes: Sequence[Probe]) -> dict[tuple[int, str], int]:
        names = sorted({p.name for p in probes})
        out: dict[tuple[int, str], int] = {}
        cur = self.conn.cursor()
        for k in range(0, len(names), IN_CHUNK):
            chunk = names[k:k + IN_CHUNK]
            cur.execute(f"SELECT survey, name, oid FROM aliases WHERE name IN ({', '.join([self.ph] * len(chunk))})",
                        chunk)
            out.update(((int(s), str(n)), int(o)) for s, n, o in cur.fetchall())
        return out

    def _nearest(self, probes: Sequence[Probe]) -> dict[int, int]:
        """Index in ``probes`` -> oid of the nearest stored object within the radius (same survey
        unless cross_survey)."""
        ranges = [(i, z, lo, hi) for i, p in enumerate(probes) for z, lo, hi in cone_ranges(p.ra, p.dec,
                                                                                             self.radius_arcsec)]
        best: dict[int, tuple[float, int]] = {}
        for i, oid, survey, ra, dec in self._cone_rows(ranges):
            p = probes[i]
            if not self.cross_survey and SURVEY_NAME.get(int(survey)) != OBJECT_SURVEY[p.survey]:
                continue
            d = separation_arcsec(p.ra, p.dec, float(ra), float(dec))
            if d <= self.radius_arcsec and (i not in best or (d, int(oid)) < best[i]):
                best[i] = (d, int(oid))
        return {i: oid for i, (_, oid) in best.items()}

    def _cone_rows(self, ranges: Sequence[tuple[int, int, float, float]]) -> Iterable[tuple[Any, ...]]:
        """(probe index, oid, survey, ra, dec) of the objects in each (probe, zone, ra_lo, ra_hi)."""
        raise NotImplementedError

    def _read_objects(self, found: dict[int, StoredObject]) -> None:
        keys = sorted(found)
        cur = self.conn.cursor()
        prow, lrow, arow = [], [], []
        for k in range(0, len(keys), IN_CHUNK):
            chunk = keys[k:k + IN_CHUNK]
            marks = ", ".join([self.ph] * len(chunk))
            cur.execute("SELECT oid, bk, origin, mjd, flux, flux_err, seen FROM points WHERE oid IN "
                        f"({marks}) ORDER BY oid, bk, tkey", chunk)
            prow += cur.fetchall()
            cur.execute(f"SELECT oid, band, mjd, limit_mag, seen FROM limits WHERE oid IN ({marks}) ORDER BY oid, "
                        "band, tkey", chunk)
            lrow += cur.fetchall()
            cur.execute(f"SELECT oid, survey, mjd, data FROM aggregates WHERE oid IN ({marks})", chunk)
            arow += cur.fetchall()
        if prow:
            oids, pts = _points_of(prow)
            _split(oids, pts, found, "points")
        if lrow:
            oids, lim = _limits_of(lrow)
            _split(oids, lim, found, "limits")
        for oid, survey, mjd, data in arow:
            found[int(oid)].aggregates[SURVEY_NAME[int(survey)]] = (float(mjd), json.loads(data))

    # -- writing ---------------------------------------------------------------------------------

    def write(self, batch: Batch) -> dict[tuple[int, str], int]:
        """Store ``batch`` in one transaction. Returns the oid each new alias ended up with (another
        writer may have created the same object first; its rows then go to that object)."""
        if batch.is_empty():
            return {}
        try:
            self.ensure_connected()
            placed = self._write(batch)
            self.conn.commit()
        except self.transient as exc:
            self._rollback()
            raise StoreError(f"history store {self.url}: cannot write: {_first_line(exc)}") from exc
        except BaseException:
            self._rollback()
            raise
        return placed

    def ensure_connected(self) -> None:
        """Reconnect after a lost connection (a backend hook; SQLite files need none)."""

    def _rollback(self) -> None:
        with contextlib.suppress(Exception):  # a dead connection has nothing to roll back
            self.conn.rollback()

    def _write(self, batch: Batch) -> dict[tuple[int, str], int]:
        cur = self.conn.cursor()
        p = self.ph
        placed: dict[tuple[int, str], int] = {}
        if batch.objects:
            # the position of the earliest sighting, whichever writer stores it first (order-independent)
            cur.executemany(f"INSERT INTO objects (oid, survey, ra, dec, zone, first_mjd) VALUES ({p}, {p}, {p}, {p}, "
                            f"{p}, {p}) ON CONFLICT (oid) DO UPDATE SET ra = excluded.ra, dec = excluded.dec, zone = "
                            "excluded.zone, first_mjd = excluded.first_mjd WHERE (excluded.first_mjd, excluded.ra, "
                            "excluded.dec) < (objects.first_mjd, objects.ra, objects.dec)", sorted(batch.objects))
        if batch.aliases:
            cur.executemany(f"INSERT INTO aliases (survey, name, oid) VALUES ({p}, {p}, {p}) "
                            "ON CONFLICT (survey, name) DO NOTHING", sorted(batch.aliases))
            placed = self._placed(cur, batch.aliases)
        remap = {o: placed[(s, n)] for s, n, o in batch.aliases if placed.get((s, n), o) != o}
        if batch.point_cols is not None and len(batch.point_cols[0]):
            self._write_points(cur, _remapped(batch.point_cols, remap))
        if batch.limit_cols is not None and len(batch.limit_cols[0]):
            self._write_limits(cur, _remapped(batch.limit_cols, remap))
        if batch.aggregates:
            rows = [(remap.get(o, o), s, m, d) for o, s, m, d in batch.aggregates]
            cur.executemany(f"INSERT INTO aggregates (oid, survey, mjd, data) VALUES ({p}, {p}, {p}, {p}) ON CONFLICT "
                            "(oid, survey) DO UPDATE SET mjd = excluded.mjd, data = excluded.data WHERE "
                            "(excluded.mjd, excluded.data) > (aggregates.mjd, aggregates.data)", rows)
        return placed

    def _placed(self, cur: Any, aliases: Sequence[tuple[int, str, int]]) -> dict[tuple[int, str], int]:
        names = sorted({n for _, n, _ in aliases})
        wanted = {(s, n) for s, n, _ in aliases}
        out: dict[tuple[int, str], int] = {}
        for k in range(0, len(names), IN_CHUNK):
            chunk = names[k:k + IN_CHUNK]
            cur.execute(f"SELECT survey, name, oid FROM aliases WHERE name IN ({', '.join([self.ph] * len(chunk))})",
                        chunk)
            out.update(((int(s), str(n)), int(o)) for s, n, o in cur.fetchall() if (int(s), str(n)) in wanted)
        return out

    def _least(self, a: str, b: str) -> str:
        return f"min({a}, {b})"

    def _greatest(self, a: str, b: str) -> str:
        return f"max({a}, {b})"

    def points_upsert_tail(self) -> str:
        """The ON CONFLICT clause of a points write: earliest seen, better measurement."""
        better = "(excluded.prio, excluded.flux_err, excluded.flux) < (points.prio, points.flux_err, points.flux)"
        cols = ", ".join(f"{c} = CASE WHEN {better} THEN excluded.{c} ELSE points.{c} END"
                         for c in ("origin", "prio", "mjd", "flux", "flux_err"))
        seen = self._least("points.seen", "excluded.seen")
        return (f"ON CONFLICT (oid, bk, tkey) DO UPDATE SET {cols}, seen = {seen} "
                f"WHERE {better} OR excluded.seen < points.seen")

    def limits_upsert_tail(self) -> str:
        return ("ON CONFLICT (oid, band, tkey) DO UPDATE SET "
                f"limit_mag = {self._greatest('limits.limit_mag', 'excluded.limit_mag')}, "
                f"seen = {self._least('limits.seen', 'excluded.seen')} "
                "WHERE excluded.limit_mag > limits.limit_mag OR excluded.seen < limits.seen")

    def _write_points(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        raise NotImplementedError

    def _write_limits(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        raise NotImplementedError

    # -- looking around --------------------------------------------------------------------------

    def find(self, name: str) -> int | None:
        """The oid of an object given any of its names (a survey id or data-release id)."""
        return self._guard("read", self._find, name)

    def describe(self, oid: int) -> tuple[list[tuple[str, str]], tuple[float, float] | None, StoredObject]:
        """Names (survey, name), position and stored data of one object (for ``history show``)."""
        return self._guard("read", self._describe, oid)

    def stats(self) -> dict[str, Any]:
        """Objects, aliases, points, limits, aggregates, bytes on disk and the stored schema version."""
        return self._guard("read", self._stats)

    def _guard(self, op: str, fn: Any, *args: Any) -> Any:
        """``fn(*args)`` with the backend's transient errors turned into :class:`StoreError`."""
        try:
            self.ensure_connected()
            return fn(*args)
        except self.transient as exc:
            self._rollback()
            raise StoreError(f"history store {self.url}: cannot {op}: {_first_line(exc)}") from exc

    def _find(self, name: str) -> int | None:
        """The oid of an object given any of its names (a survey id or data-release id)."""
        cur = self.conn.cursor()
        cur.execute(f"SELECT oid FROM aliases WHERE name = {self.ph} ORDER BY survey", (name,))
        row = cur.fetchone()
        self.conn.commit()
        return int(row[0]) if row else None

    def _describe(self, oid: int) -> tuple[list[tuple[str, str]], tuple[float, float] | None, StoredObject]:
        """Names (survey, name), position and stored data of one object (for ``history show``)."""
        cur = self.conn.cursor()
        cur.execute(f"SELECT survey, name FROM aliases WHERE oid = {self.ph} ORDER BY survey, name", (oid,))
        names = [(SURVEY_NAME.get(int(s), str(s)), str(n)) for s, n in cur.fetchall()]
        cur.execute(f"SELECT ra, dec FROM objects WHERE oid = {self.ph}", (oid,))
        row = cur.fetchone()
        obj = StoredObject(oid)
        self._read_objects({oid: obj})
        self.conn.commit()
        return names, ((float(row[0]), float(row[1])) if row else None), obj

    def _stats(self) -> dict[str, Any]:
        """Objects, aliases, points, limits and bytes on disk."""
        cur = self.conn.cursor()
        cur.execute("SELECT value FROM meta WHERE key = 'schema_version'")
        row = cur.fetchone()
        out: dict[str, Any] = {"backend": self.dialect, "schema_version": int(row[0]) if row else 0}
        for table in ("objects", "aliases", "points", "limits", "aggregates"):
            cur.execute(f"SELECT count(*) FROM {table}")
            out[table] = int(cur.fetchone()[0])
        out["bytes"] = self.size_bytes(cur)
        self.conn.commit()
        return out

    def size_bytes(self, cur: Any) -> int:
        raise NotImplementedError

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.conn.close()


__all__ = ["OBJECT_SURVEY", "SURVEY_CODE", "Batch", "HistoryStore", "Probe", "StoreError", "StoreVersionError",
           "StoredObject", "new_object_row", "object_key"]
