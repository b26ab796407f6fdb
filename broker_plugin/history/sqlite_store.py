"""The embedded history store: one SQLite file (or an in-memory database for a one-off replay).

Why these settings: WAL journaling lets ``history show``/``stats`` read while a service writes, and
makes each batch's transaction one append to the log; ``synchronous=NORMAL`` keeps WAL's guarantee
that a committed batch survives a crash of the process (only an OS crash may lose the last
commits, which at-least-once redelivery then rewrites); ``busy_timeout`` turns a briefly locked file
(another writer's transaction) into a wait rather than an error. Several processes may share one
file on a local disk, but a shared deployment (pods, network storage) should use PostgreSQL.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from broker_plugin.history.store import HistoryStore, StoreError

#: Milliseconds a writer waits for another writer's lock before the batch is retried.
BUSY_TIMEOUT_MS = 5000
#: In-memory database name used when no path is given.
MEMORY = ":memory:"


class SqliteHistoryStore(HistoryStore):
    """:class:`~broker_plugin.history.store.HistoryStore` on a SQLite file."""

    dialect = "sqlite"
    ph = "?"
    #: locked beyond busy_timeout, disk full, I/O error: worth retrying (a file that is not a database,
    #: sqlite3.DatabaseError, is not: it is refused with one line when the store is opened)
    transient = (sqlite3.OperationalError,)

    def __init__(self, path: str | Path = MEMORY, **kwargs: Any) -> None:
        self.path = str(path)
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # isolation_level=None: this code issues BEGIN/COMMIT itself, so a batch is one transaction
        # whatever statements it runs (the sqlite3 module's implicit transactions skip DDL).
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000.0, isolation_level=None,
                               check_same_thread=False)
        super().__init__(_Tx(conn), **kwargs)
        self.url = self.path
        try:
            if self.path != MEMORY:
                conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
            self.migrate()
        except sqlite3.OperationalError as exc:
            conn.close()
            raise StoreError(f"history store {self.path}: cannot open: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database, or damaged beyond reading
            conn.close()
            raise ConfigError(f"history store {self.path} is not a usable SQLite database: {exc}") from None

    def _cone_rows(self, ranges: Sequence[tuple[int, int, float, float]]) -> Iterable[tuple[Any, ...]]:
        out: list[tuple[Any, ...]] = []
        cur = self.conn.cursor()
        step = 200  # 4 parameters a range
        for k in range(0, len(ranges), step):
            chunk = ranges[k:k + step]
            values = ", ".join(["(?, ?, ?, ?)"] * len(chunk))
            params = [v for r in chunk for v in r]
            cur.execute(f"WITH p(i, z, lo, hi) AS (VALUES {values}) SELECT p.i, o.oid, o.survey, o.ra, o.dec FROM p "
                        "JOIN objects o ON o.zone = p.z AND o.ra BETWEEN p.lo AND p.hi", params)
            out += cur.fetchall()
        return out

    def _write_points(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        rows = zip(*(c.tolist() for c in cols), strict=True)
        cur.executemany("INSERT INTO points (oid, bk, tkey, origin, prio, mjd, flux, flux_err, seen) VALUES "
                        f"(?, ?, ?, ?, ?, ?, ?, ?, ?) {self.points_upsert_tail()}", rows)

    def _write_limits(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        rows = zip(*(c.tolist() for c in cols), strict=True)
        cur.executemany("INSERT INTO limits (oid, band, tkey, mjd, limit_mag, seen) VALUES (?, ?, ?, ?, ?, ?) "
                        f"{self.limits_upsert_tail()}", rows)

    def size_bytes(self, cur: Any) -> int:
        if self.path == MEMORY:
            cur.execute("PRAGMA page_count")
            pages = int(cur.fetchone()[0])
            cur.execute("PRAGMA page_size")
            return pages * int(cur.fetchone()[0])
        return sum(p.stat().st_size for p in (Path(self.path), Path(self.path + "-wal")) if p.exists())


class _Tx:
    """A sqlite3 connection in autocommit mode that behaves like a DB-API one: the first statement
    after a commit or rollback opens a transaction (BEGIN IMMEDIATE for writes would serialise
    readers too; a deferred BEGIN upgrades on the first write, and busy_timeout covers the wait)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self.raw = conn
        self._open = False

    def cursor(self) -> _Cursor:
        return _Cursor(self)

    def begin(self) -> None:
        if not self._open:
            self.raw.execute("BEGIN")
            self._open = True

    def commit(self) -> None:
        if self._open:
            self.raw.execute("COMMIT")
            self._open = False

    def rollback(self) -> None:
        if self._open:
            self._open = False
            self.raw.execute("ROLLBACK")

    def close(self) -> None:
        self.raw.close()


class _Cursor:
    def __init__(self, tx: _Tx) -> None:
        self.tx = tx
        self.cur = tx.raw.cursor()

    def execute(self, sql: str, params: Sequence[Any] = ()) -> None:
        self.tx.begin()
        self.cur.execute(sql, params)

    def executemany(self, sql: str, rows: Iterable[Sequence[Any]]) -> None:
        self.tx.begin()
        self.cur.executemany(sql, rows)

    def fetchone(self) -> Any:
        return self.cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self.cur.fetchall()
