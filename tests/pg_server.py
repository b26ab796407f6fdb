"""A throwaway PostgreSQL server for the tests: ``initdb`` + ``pg_ctl`` in a temporary directory.

The binaries come from Debian's ``postgresql`` package (``.ci/run`` installs it), which puts them in
``/usr/lib/postgresql/<version>/bin`` and not on ``PATH``; :func:`find_postgres_bin` looks on
``PATH`` first, then there (newest version first). ``initdb`` and ``pg_ctl`` refuse to run as root,
so under root (CI often is) the server runs as the ``postgres`` system user (``nobody`` when there
is none), with the temporary directory handed to it. The server listens on 127.0.0.1 only, on a
free port, with trust authentication and durability off (``fsync=off``): a test database, not a
store. Databases are made on demand (:meth:`PostgresServer.create_database`, which needs psycopg 3).

    with PostgresServer() as pg:
        url = pg.create_database("history_test")   # postgresql://USER@127.0.0.1:PORT/history_test
"""

from __future__ import annotations

import atexit
import os
import pwd
import re
import shlex
import shutil
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType

#: Debian's layout: one folder per major version.
DEBIAN_PG_ROOT = Path("/usr/lib/postgresql")
#: The system users the server may run as when this process is root (initdb refuses root).
SERVER_USERS = ("postgres", "nobody")
LOG_TAIL = 3000


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path.parent.name)) or (-1,)


def find_postgres_bin() -> Path | None:
    """The folder holding ``initdb``, ``pg_ctl`` and ``postgres``, or None when PostgreSQL is absent.

    ``$BAL_PG_BIN`` wins when set; then ``PATH`` (a symlinked ``initdb`` is followed to its real
    folder, where ``postgres`` lives); then ``/usr/lib/postgresql/*/bin``, newest version first.
    """
    candidates: list[Path] = []
    if os.environ.get("BAL_PG_BIN"):
        candidates.append(Path(os.environ["BAL_PG_BIN"]))
    on_path = shutil.which("initdb")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted((p.parent for p in DEBIAN_PG_ROOT.glob("*/bin/initdb")), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(folder / exe, os.X_OK) for exe in ("initdb", "pg_ctl", "postgres")):
            return folder
    return None


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _server_user() -> pwd.struct_passwd | None:
    """The unprivileged account to run the server as, or None to run it as this process's user."""
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        try:
            return pwd.getpwnam(name)
        except KeyError:
            continue
    raise RuntimeError(f"running as root and none of the users {SERVER_USERS} exists to run PostgreSQL as")


def _world_traversable(folder: Path) -> bool:
    return all(p.stat().st_mode & stat.S_IXOTH for p in (folder, *folder.parents))


class PostgresServer:
    """A PostgreSQL server of its own (a context manager; also stopped at interpreter exit)."""

    def __init__(self, bin_dir: Path | None = None, start_timeout: float = 60.0) -> None:
        found = bin_dir or find_postgres_bin()
        if found is None:
            raise FileNotFoundError("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in "
                                    f"{DEBIAN_PG_ROOT}/*/bin: apt-get install -y postgresql")
        self.bin_dir = found
        self.start_timeout = start_timeout
        self.account = _server_user()
        self.user = self.account.pw_name if self.account else pwd.getpwuid(os.geteuid()).pw_name
        self.port = 0
        self.base: Path | None = None
        self.running = False
        self.start_seconds = 0.0

    # --- paths -------------------------------------------------------------------------------------

    @property
    def data_dir(self) -> Path:
        assert self.base is not None
        return self.base / "data"

    @property
    def socket_dir(self) -> Path:
        assert self.base is not None
        return self.base / "sock"

    @property
    def log_file(self) -> Path:
        assert self.base is not None
        return self.base / "server.log"

    def url(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    # --- running the binaries ----------------------------------------------------------------------

    def _run(self, exe: str, *args: str, timeout: float) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        extra: dict = {}
        if self.account is not None:  # root: drop to the server user (what runuser -u postgres does)
            env.update(HOME=str(self.base), USER=self.user, LOGNAME=self.user)
            extra = {"user": self.account.pw_uid, "group": self.account.pw_gid, "extra_groups": []}
        return subprocess.run([str(self.bin_dir / exe), *args], cwd=self.base, env=env, stdin=subprocess.DEVNULL,
                              capture_output=True, text=True, timeout=timeout, check=False, **extra)

    def _log_tail(self) -> str:
        try:
            return self.log_file.read_text(errors="replace")[-LOG_TAIL:]
        except OSError:
            return "(no server log)"

    def _make_base(self) -> Path:
        parent = Path(tempfile.gettempdir())
        if self.account is not None and not _world_traversable(parent):
            parent = Path("/tmp")  # the server user must reach its folder; TMPDIR may be private to root
        base = Path(tempfile.mkdtemp(prefix="bal-pg-", dir=parent))
        if self.account is not None:
            os.chown(base, self.account.pw_uid, self.account.pw_gid)
        return base

    # --- lifecycle ---------------------------------------------------------------------------------

    def start(self) -> PostgresServer:
        if self.running:
            return self
        self.base = self._make_base()
        atexit.register(self.stop)
        try:
            self._initdb()
            self._start_server()
        except BaseException:
            self.stop()
            raise
        return self

    def _initdb(self) -> None:
        done = self._run("initdb", "-D", str(self.data_dir), "-U", self.user, "-A", "trust", "-E", "UTF8",
                         "--locale=C", "--no-sync", "--no-instructions", timeout=self.start_timeout)
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed ({done.returncode}):\n{(done.stdout + done.stderr)[-LOG_TAIL:]}")
        self.socket_dir.mkdir()
        if self.account is not None:
            os.chown(self.socket_dir, self.account.pw_uid, self.account.pw_gid)

    def _start_server(self, attempts: int = 3) -> None:
        for attempt in range(attempts):
            self.port = free_port()
            self.log_file.unlink(missing_ok=True)  # each attempt's log alone
            options = (f"-p {self.port} -k {shlex.quote(str(self.socket_dir))} -c listen_addresses=127.0.0.1 "
                       "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
            began = time.monotonic()
            done = self._run("pg_ctl", "-D", str(self.data_dir), "-l", str(self.log_file), "-w",
                             "-t", str(int(self.start_timeout)), "-o", options, "start",
                             timeout=self.start_timeout + 10)
            if done.returncode == 0:
                self.running = True
                self.start_seconds = time.monotonic() - began
                return
            log = self._log_tail()
            if "could not bind" in log and attempt + 1 < attempts:  # the free port was taken meanwhile
                continue
            raise RuntimeError(f"PostgreSQL did not start ({done.returncode}): {done.stderr.strip()}\n"
                               f"--- {self.log_file} (tail) ---\n{log}")

    def stop(self) -> None:
        """Stop the server (immediate mode: nothing to keep) and remove its folder."""
        atexit.unregister(self.stop)
        if self.running or (self.base is not None and (self.data_dir / "postmaster.pid").exists()):
            self.running = False  # also a server a timed-out pg_ctl start left behind
            self._run("pg_ctl", "-D", str(self.data_dir), "-m", "immediate", "-w", "stop", timeout=60)
        if self.base is not None:
            shutil.rmtree(self.base, ignore_errors=True)
            self.base = None

    def __enter__(self) -> PostgresServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    # --- databases ---------------------------------------------------------------------------------

    def create_database(self, name: str) -> str:
        """Create an empty database ``name`` and return its URL (``postgresql://USER@127.0.0.1:PORT/name``)."""
        import psycopg
        from psycopg import sql

        if not self.running:
            raise RuntimeError("the PostgreSQL server is not running")
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
        return self.url(name)

    def drop_database(self, name: str) -> None:
        """Drop database ``name`` if it exists, closing any connection still open to it."""
        import psycopg
        from psycopg import sql

        if not self.running:
            return
        with psycopg.connect(self.url("postgres"), autocommit=True, connect_timeout=10) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
