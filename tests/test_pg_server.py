"""The throwaway PostgreSQL server of tests/pg_server.py: it starts, makes databases, and they are separate.

Skips, saying why, when the PostgreSQL server binaries (Debian's ``postgresql``; ``.ci/run`` installs
it) or psycopg 3 (the ``postgres`` extra) are missing.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pg_server import PostgresServer, find_postgres_bin

psycopg = pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install -e '.[postgres]')")

pytestmark = pytest.mark.timeout(120)


@pytest.fixture(scope="module")
def server() -> Iterator[PostgresServer]:
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin "
                    "(apt-get install -y postgresql)")
    with PostgresServer() as pg:
        yield pg


def test_create_database_insert_select(server: PostgresServer) -> None:
    url = server.create_database("pg_server_roundtrip")
    assert url == f"postgresql://{server.user}@127.0.0.1:{server.port}/pg_server_roundtrip"
    with psycopg.connect(url) as conn:
        conn.execute("CREATE TABLE history (id serial PRIMARY KEY, object_id text NOT NULL, mag double precision)")
        conn.execute("INSERT INTO history (object_id, mag) VALUES (%s, %s), (%s, %s)",
                     ("ZTF21aaaaaaa", 18.5, "ZTF21bbbbbbb", 19.25))
        conn.commit()
    with psycopg.connect(url) as conn:  # a new connection sees the committed rows
        rows = conn.execute("SELECT object_id, mag FROM history ORDER BY id").fetchall()
        assert rows == [("ZTF21aaaaaaa", 18.5), ("ZTF21bbbbbbb", 19.25)]
        assert conn.execute("SHOW server_encoding").fetchone() == ("UTF8",)
        assert conn.execute("SHOW fsync").fetchone() == ("off",)


def test_databases_are_independent(server: PostgresServer) -> None:
    url_a = server.create_database("pg_server_a")
    url_b = server.create_database("pg_server_b")
    with psycopg.connect(url_a) as conn:
        conn.execute("CREATE TABLE only_in_a (x int)")
        conn.execute("INSERT INTO only_in_a VALUES (1)")
    with psycopg.connect(url_b) as conn:
        found = conn.execute("SELECT count(*) FROM pg_tables WHERE tablename = 'only_in_a'").fetchone()
        assert found == (0,)
        conn.execute("CREATE TABLE only_in_a (x int)")  # the same name is free here
        assert conn.execute("SELECT count(*) FROM only_in_a").fetchone() == (0,)
    with psycopg.connect(url_a) as conn:
        assert conn.execute("SELECT x FROM only_in_a").fetchall() == [(1,)]


def test_duplicate_database_name_fails(server: PostgresServer) -> None:
    server.create_database("pg_server_dup")
    with pytest.raises(psycopg.errors.DuplicateDatabase):
        server.create_database("pg_server_dup")


def test_listens_on_loopback_only_and_stops_cleanly() -> None:
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found (apt-get install -y postgresql)")
    with PostgresServer() as pg:
        base, port = pg.base, pg.port
        assert base is not None and (pg.data_dir / "PG_VERSION").is_file()
        with psycopg.connect(pg.url()) as conn:
            assert conn.execute("SHOW listen_addresses").fetchone() == ("127.0.0.1",)
            assert conn.execute("SELECT inet_server_port()").fetchone() == (port,)
    assert not base.exists()
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(f"postgresql://{pg.user}@127.0.0.1:{port}/postgres", connect_timeout=3)
