"""The history store's backends under load and faults: PostgreSQL parity, two writers, kill -9.

PostgreSQL tests run against a real server started by tests/pg_server.py (skipped only where the
Debian ``postgresql`` binaries or psycopg are absent; .ci/run installs both).
"""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

from broker_plugin.cli import main
from broker_plugin.history import HistoryStage, StoreError, open_store
from broker_plugin.models.annotate import Annotator
from broker_plugin.pipeline import process_batch

TABLES = ("objects", "aliases", "points", "limits", "aggregates")


def _rows(store: Any) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table, sorted, floats rounded to what survives both backends exactly."""
    cur = store.conn.cursor()
    out = {}
    for t in TABLES:
        cur.execute(f"SELECT * FROM {t}")
        out[t] = sorted(tuple(round(v, 9) if isinstance(v, float) else v for v in r) for r in cur.fetchall())
    store.conn.commit()
    return out


def _ordered(files: list[Path]) -> list[Path]:
    from broker_plugin.decode import default_decoder

    alerts = default_decoder().decode_batch([p.read_bytes() for p in files])
    return [files[i] for _, i in sorted((a.mjd, i) for i, a in enumerate(alerts) if not isinstance(a, Exception))]


def _fill(spec: str | None, files: list[Path], batch: int = 16) -> Any:
    store = open_store(spec)
    stage = HistoryStage(store)
    payloads = [p.read_bytes() for p in files]
    for k in range(0, len(payloads), batch):
        process_batch(Annotator(None), payloads[k:k + batch], history=stage)
    return store


def test_postgres_and_sqlite_store_the_same_rows(postgres_url: str, ztf_alert_files: list[Path],
                                                 lsst_alert_files: list[Path]) -> None:
    files = _ordered(ztf_alert_files) + list(lsst_alert_files)
    assert _rows(_fill(postgres_url, files)) == _rows(_fill(None, files))


def test_two_workers_on_postgres_leave_what_one_worker_leaves(postgres_url: str, postgres_server: Any,
                                                              ztf_alert_files: list[Path], tmp_path: Path) -> None:
    """Two concurrent replays of interleaved halves (as two consumers of one group would see them)."""
    files = _ordered(ztf_alert_files)
    halves = [tmp_path / "a", tmp_path / "b"]
    for i, d in enumerate(halves):
        d.mkdir()
        for f in files[i::2]:
            (d / f.name).write_bytes(f.read_bytes())
    procs = [subprocess.Popen([sys.executable, "-m", "broker_plugin", "replay", str(d), "--output",
                               str(tmp_path / f"{d.name}.jsonl"), "--history", postgres_url, "--batch-size", "5"],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE) for d in halves]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err.decode()[-2000:]
    one = postgres_server.create_database(f"one_worker_{int(time.time() * 1000) % 10**9}")
    assert _rows(open_store(postgres_url)) == _rows(_fill(one, files, batch=5))


def test_replay_takes_a_postgres_url_and_history_stats_counts_it(postgres_url: str, ztf_alert_dir: Path,
                                                                 tmp_path: Path) -> None:
    assert main(["replay", str(ztf_alert_dir), "-o", str(tmp_path / "o.jsonl"), "--history", postgres_url]) == 0
    stats = open_store(postgres_url).stats()
    assert stats["backend"] == "postgresql" and stats["points"] > 900 and stats["bytes"] > 0


def test_an_unreachable_postgres_is_one_line_and_exit_2(tmp_path: Path, ztf_alert_dir: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("psycopg")
    from tests.pg_server import free_port

    url = f"postgresql://nobody:s3cret@127.0.0.1:{free_port()}/none"
    assert main(["replay", str(ztf_alert_dir), "-o", str(tmp_path / "o.jsonl"), "--history", url]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "history store" in err and "s3cret" not in err
    assert not (tmp_path / "o.jsonl").exists()


_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from broker_plugin.history import open_store
    from broker_plugin.history.store import Batch, new_object_row

    store = open_store(sys.argv[1])
    n = int(sys.argv[2])
    for i in range(1, 10**6):
        oid = 1000 + i
        cols = (np.full(n, oid, dtype=np.int64), np.full(n, 2, dtype=np.int16), np.arange(n, dtype=np.int64) + 10**10,
                np.zeros(n, dtype=np.int16), np.ones(n, dtype=np.int16), np.arange(n) / 1e6 + 1e4, np.ones(n),
                np.ones(n) * 0.1, np.full(n, 1e4))
        store.write(Batch(objects=[new_object_row(oid, "ztf", 10.0, 0.001 * i)], aliases=[(0, f"obj{i}", oid)],
                          point_cols=cols))
        print(i, flush=True)
""")


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_kill_9_in_the_middle_of_a_batch_leaves_no_partial_write(backend: str, tmp_path: Path,
                                                                request: pytest.FixtureRequest) -> None:
    spec = str(tmp_path / "h.sqlite") if backend == "sqlite" else request.getfixturevalue("postgres_url")
    n = 20_000
    proc = subprocess.Popen([sys.executable, "-c", _WRITER, spec, str(n)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    for _ in range(3):  # let a few batches commit, then kill it while the next one is being written
        assert proc.stdout.readline(), proc.stderr.read() if proc.stderr else ""
    time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    store = open_store(spec)
    cur = store.conn.cursor()
    cur.execute("SELECT oid, count(*) FROM points GROUP BY oid")
    counts = dict(cur.fetchall())
    cur.execute("SELECT count(*) FROM objects")
    n_objects = cur.fetchone()[0]
    store.conn.commit()
    assert n_objects >= 3 and len(counts) == n_objects
    assert set(counts.values()) == {n}  # every batch whole, or not there at all
    if backend == "sqlite":
        assert sqlite3.connect(spec).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_store_that_stays_locked_ends_replay_with_one_line(tmp_path: Path, ztf_alert_dir: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from broker_plugin.files.replay import replay

    path = tmp_path / "h.sqlite"
    open_store(str(path)).close()
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError, match="locked"):
            replay([ztf_alert_dir], tmp_path / "o.jsonl", history=str(path), store_retry_s=0.1)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert not (tmp_path / "o.jsonl").exists()
