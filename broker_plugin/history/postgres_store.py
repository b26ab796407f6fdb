"""The shared history store: PostgreSQL through psycopg 3, for several workers or pods.

Why PostgreSQL for sharing: every worker of a consumer group may see alerts of the same object (ZTF
topics are not keyed by object), so the store must take concurrent writes of the same keys; the
``INSERT ... ON CONFLICT`` rules of :mod:`~broker_plugin.history.store` make those order-independent,
which is how ALeRCE's ingestion keeps its PostgreSQL detections table consistent across workers.

Bulk writes go through ``COPY`` into a temporary table and one ``INSERT ... SELECT ... ON CONFLICT``:
a batch of a fresh night writes tens of thousands of points, and row-by-row statements would cost a
round trip each. The cone query takes its probes as arrays (``unnest``): one statement per batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from broker_plugin.history.rows import _first_line
from broker_plugin.history.store import HistoryStore, StoreError
from broker_plugin.redact import redact_url

#: Advisory-lock key that serialises schema migrations ("balhist" as an int).
MIGRATION_LOCK_KEY = 0x62616C68697374
#: Seconds to wait for the server when connecting.
CONNECT_TIMEOUT_S = 10

_TMP_POINTS = ("CREATE TEMP TABLE IF NOT EXISTS tmp_points (oid BIGINT, bk SMALLINT, tkey BIGINT, origin SMALLINT, "
               "prio SMALLINT, mjd DOUBLE PRECISION, flux DOUBLE PRECISION, flux_err DOUBLE PRECISION, seen DOUBLE "
               "PRECISION) ON COMMIT DELETE ROWS")
_TMP_LIMITS = ("CREATE TEMP TABLE IF NOT EXISTS tmp_limits (oid BIGINT, band SMALLINT, tkey BIGINT, mjd DOUBLE "
               "PRECISION, limit_mag DOUBLE PRECISION, seen DOUBLE PRECISION) ON COMMIT DELETE ROWS")


def _psycopg() -> Any:
    try:
        import psycopg
    except ImportError:
        raise ConfigError("a postgresql:// history store needs psycopg 3: pip install 'bal-broker[postgres]'") from None
    return psycopg


class PostgresHistoryStore(HistoryStore):
    """:class:`~broker_plugin.history.store.HistoryStore` on a PostgreSQL database."""

    dialect = "postgresql"
    ph = "%s"

    def __init__(self, url: str, **kwargs: Any) -> None:
        psycopg = _psycopg()
        try:
            conn = psycopg.connect(url, connect_timeout=CONNECT_TIMEOUT_S, autocommit=False)
        except psycopg.Error as exc:
            raise StoreError(f"cannot connect to the history store {redact_url(url)}: {_first_line(exc)}") from None
        super().__init__(conn, **kwargs)
        self._dsn = url
        self.url = redact_url(url)
        # unreachable, restarted, deadlock/serialisation (TransactionRollback is an OperationalError),
        # or the connection object already closed (InterfaceError)
        self.transient = (psycopg.OperationalError, psycopg.InterfaceError)
        try:
            self.migrate()
        except psycopg.Error as exc:
            raise StoreError(f"history store {self.url}: {_first_line(exc)}") from None

    def ensure_connected(self) -> None:
        """Open a new connection when the last one broke (a server restart, a network cut)."""
        if not (self.conn.closed or self.conn.broken):
            return
        psycopg = _psycopg()
        with contextlib.suppress(Exception):
            self.conn.close()
        self.conn = psycopg.connect(self._dsn, connect_timeout=CONNECT_TIMEOUT_S, autocommit=False)

    def _migration_lock(self, cur: Any) -> None:
        # Two pods starting at once on an empty database would race in CREATE TABLE IF NOT EXISTS
        # (PostgreSQL raises a unique violation in pg_type): the first takes this transaction-scoped
        # lock and migrates, the second waits, then finds the store current.
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK_KEY,))

    def _tables_query(self) -> str:
        return "information_schema.tables WHERE table_schema = current_schema() AND table_name = 'meta'"

    def _least(self, a: str, b: str) -> str:
        return f"LEAST({a}, {b})"

    def _greatest(self, a: str, b: str) -> str:
        return f"GREATEST({a}, {b})"

    def _cone_rows(self, ranges: Sequence[tuple[int, int, float, float]]) -> Iterable[tuple[Any, ...]]:
        cols = list(zip(*ranges, strict=True)) if ranges else [(), (), (), ()]
        cur = self.conn.cursor()
        cur.execute("SELECT p.i, o.oid, o.survey, o.ra, o.dec FROM unnest(%s::int[], %s::int[], %s::float8[], "
                    "%s::float8[]) AS p(i, z, lo, hi) JOIN objects o ON o.zone = p.z AND o.ra BETWEEN p.lo AND p.hi",
                    [list(c) for c in cols])
        return cur.fetchall()

    def _copy(self, cur: Any, table: str, columns: str, cols: tuple[np.ndarray, ...], types: str) -> None:
        """COPY the columns in PostgreSQL's binary format, built by numpy in one go (row-by-row
        ``write_row`` cost ~10 us a point from Python). ``types``: one character per column,
        ``q`` BIGINT, ``h`` SMALLINT, ``d`` DOUBLE PRECISION."""
        with cur.copy(f"COPY {table} ({columns}) FROM STDIN (FORMAT BINARY)") as copy:
            copy.write(binary_copy(cols, types))

    def _write_points(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        cur.execute(_TMP_POINTS)
        names = "oid, bk, tkey, origin, prio, mjd, flux, flux_err, seen"
        self._copy(cur, "tmp_points", names, cols, "qhqhhdddd")
        # DISTINCT ON: one row per key (the best), as one INSERT may not touch a row twice
        cur.execute(f"INSERT INTO points ({names}) SELECT DISTINCT ON (oid, bk, tkey) {names} FROM tmp_points ORDER BY "
                    f"oid, bk, tkey, prio, flux_err, flux {self.points_upsert_tail()}")

    def _write_limits(self, cur: Any, cols: tuple[np.ndarray, ...]) -> None:
        cur.execute(_TMP_LIMITS)
        names = "oid, band, tkey, mjd, limit_mag, seen"
        self._copy(cur, "tmp_limits", names, cols, "qhqddd")
        cur.execute(f"INSERT INTO limits ({names}) SELECT DISTINCT ON (oid, band, tkey) {names} FROM tmp_limits ORDER "
                    f"BY oid, band, tkey, limit_mag DESC {self.limits_upsert_tail()}")

    def size_bytes(self, cur: Any) -> int:
        cur.execute("SELECT sum(pg_total_relation_size(c.oid)) FROM pg_class c JOIN pg_namespace n ON n.oid = "
                    "c.relnamespace WHERE n.nspname = current_schema() AND c.relkind = 'r'")
        return int(cur.fetchone()[0] or 0)


_PG_TYPES = {"q": (">i8", 8), "h": (">i2", 2), "d": (">f8", 8)}
#: PostgreSQL's binary COPY signature, flags and header-extension length; the trailer.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + b"\x00\x00\x00\x00" + b"\x00\x00\x00\x00"
_COPY_TRAILER = b"\xff\xff"


def binary_copy(cols: tuple[np.ndarray, ...], types: str) -> bytes:
    """Rows of ``cols`` in PostgreSQL's binary COPY format: per row a 16-bit field count, then per
    field a 32-bit length and the big-endian value (no NULLs here)."""
    n = len(cols[0])
    fields: list[tuple[str, str]] = [("count", ">i2")]
    for i, t in enumerate(types):
        fields += [(f"len{i}", ">i4"), (f"v{i}", _PG_TYPES[t][0])]
    rows = np.empty(n, dtype=np.dtype(fields))
    rows["count"] = len(types)
    for i, (t, col) in enumerate(zip(types, cols, strict=True)):
        rows[f"len{i}"] = _PG_TYPES[t][1]
        rows[f"v{i}"] = col
    return _COPY_HEADER + rows.tobytes() + _COPY_TRAILER
