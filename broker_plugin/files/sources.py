"""Archive inputs for ``bal-broker replay`` and ``publish``: files, directories and nightly tarballs.

Every input is flattened into a stream of :class:`InputItem`, one message per item, so the rest of
the pipeline never cares where the bytes came from. The rules, which the README repeats:

* An ``.avro`` (or any other regular) file named on the command line is one message, whatever its
  extension: the user asked for it explicitly, so a wrong file must show up in the rejects.
* A directory is searched **recursively** for ``*.avro`` files (case-insensitive, dot-files such as
  macOS ``._x.avro`` excluded). Other files are *ignored* (a README or a ``.json`` sample beside
  the alerts is not a broken alert) and reported through ``on_skip`` so the summary can count them.
  Order: depth-first, entries sorted by name, so the same tree always replays in the same order.
* A ``.tar.gz``/``.tgz``/``.tar`` is a ZTF nightly tarball. It is read as a *stream*
  (``tarfile`` mode ``r|gz``): nothing is extracted to disk and only one member is in memory at a
  time, which matters for nightly tarballs of tens of GB. Regular ``*.avro`` members are messages,
  in archive order; other members are skipped like non-Avro files in a directory.

Nothing readable is dropped silently: a file or member that cannot be read is yielded as an item
with ``error`` set (``unreadable``, ``unreadable_archive``, ``too_large``) so that it lands in the
rejects file with a reason. A corrupt archive stops at the first structural error (a gzip stream
cannot be resynchronised), after yielding one error item naming where it stopped.

A path that does not exist is a usage error (:class:`ConfigError`, exit 2); it is checked for all
paths *before* the first item is produced, so a typo never leaves a half-written output.
"""

from __future__ import annotations

import os
import tarfile
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from broker_plugin.errors import ConfigError

#: File-name endings treated as tarballs, with the streaming tarfile mode for each.
TARBALL_MODES: dict[str, str] = {".tar.gz": "r|gz", ".tgz": "r|gz", ".tar": "r|"}

#: Messages bigger than this are refused without being read: a ZTF alert is ~50-150 kB and a Rubin
#: one a few hundred kB, so anything near this limit is a wrong file, not an alert, and reading it
#: whole could exhaust memory.
MAX_MESSAGE_BYTES = 256 * 1024 * 1024

#: Suffix of files (and tarball members) that a directory or tarball contributes.
ALERT_SUFFIX = ".avro"


@dataclass(frozen=True, slots=True)
class InputItem:
    """One message from an input, or the reason it could not be read.

    ``origin`` is where it came from, for rejects and logs: the file path, or
    ``"night.tar.gz:member/name.avro"`` for a tarball member. When ``error`` is set (a short reason
    code) ``data`` is empty or partial and ``message`` says what went wrong.
    """

    origin: str
    data: bytes
    error: str | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.error is None


SkipCallback = Callable[[str], None]


def tarball_mode(path: Path) -> str | None:
    """The streaming tarfile mode for ``path``, or None when its name is not a tarball's."""
    name = path.name.lower()
    for suffix, mode in TARBALL_MODES.items():
        if name.endswith(suffix):
            return mode
    return None


def check_inputs(paths: Sequence[str | Path]) -> list[Path]:
    """Validate input paths up front; raise :class:`ConfigError` naming the first bad one."""
    if not paths:
        raise ConfigError("no input given: name at least one .avro file, directory or .tar.gz")
    checked: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if not path.exists():
            raise ConfigError(f"input not found: {raw}")
        if not (path.is_file() or path.is_dir()):
            raise ConfigError(f"input is neither a file nor a directory: {raw}")
        checked.append(path)
    return checked


def iter_inputs(paths: Sequence[str | Path], on_skip: SkipCallback | None = None) -> Iterator[InputItem]:
    """All messages of ``paths``, in command-line order, then the deterministic order above.

    Paths are validated eagerly (this is a plain function returning a generator), so a missing
    input raises :class:`ConfigError` at call time rather than after earlier inputs were processed.
    ``on_skip`` is called with the origin of every file/member ignored because it is not ``*.avro``.
    """
    checked = check_inputs(paths)
    return _iter_checked(checked, on_skip)


def _iter_checked(paths: list[Path], on_skip: SkipCallback | None) -> Iterator[InputItem]:
    for path in paths:
        if path.is_dir():
            yield from _iter_directory(path, on_skip)
        elif (mode := tarball_mode(path)) is not None:
            yield from _iter_tarball(path, mode, on_skip)
        else:
            yield _read_file(path)


def _iter_directory(root: Path, on_skip: SkipCallback | None) -> Iterator[InputItem]:
    """Depth-first walk, entries sorted by name; directories and files interleave by name."""
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        yield InputItem(str(root), b"", "unreadable", f"cannot list directory: {exc.strerror or exc}")
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue
        path = Path(entry.path)
        if entry.is_dir():
            yield from _iter_directory(path, on_skip)
        elif entry.name.lower().endswith(ALERT_SUFFIX):
            yield _read_file(path)
        elif on_skip is not None:
            on_skip(str(path))


def _read_file(path: Path) -> InputItem:
    origin = str(path)
    try:
        size = path.stat().st_size
        if size > MAX_MESSAGE_BYTES:
            return InputItem(origin, b"", "too_large", f"{size} bytes exceeds {MAX_MESSAGE_BYTES}")
        return InputItem(origin, path.read_bytes())
    except OSError as exc:
        return InputItem(origin, b"", "unreadable", f"{type(exc).__name__}: {exc.strerror or exc}")


def _iter_tarball(path: Path, mode: str, on_skip: SkipCallback | None) -> Iterator[InputItem]:
    """Stream the members of one tarball; a structural error ends it with one error item."""
    where = str(path)
    try:
        # Stream mode: members must be read in order, right when they are reached.
        with tarfile.open(path, mode) as tar:  # type: ignore[call-overload]
            for member in tar:
                where = f"{path}:{member.name}"
                if not member.isfile():
                    continue  # directories, links, devices: not messages
                base = member.name.rsplit("/", 1)[-1]
                if base.startswith(".") or not base.lower().endswith(ALERT_SUFFIX):
                    if on_skip is not None:
                        on_skip(where)
                    continue
                if member.size > MAX_MESSAGE_BYTES:
                    yield InputItem(where, b"", "too_large", f"{member.size} bytes exceeds {MAX_MESSAGE_BYTES}")
                    continue
                fobj = tar.extractfile(member)
                if fobj is None:  # pragma: no cover - isfile() members always have data
                    yield InputItem(where, b"", "unreadable", "tar member has no data")
                    continue
                data = fobj.read()
                if len(data) != member.size:
                    yield InputItem(where, data, "unreadable_archive", "tar member truncated")
                    return
                yield InputItem(where, data)
    except (tarfile.TarError, EOFError, zlib.error, OSError) as exc:
        yield InputItem(where, b"", "unreadable_archive", f"{type(exc).__name__}: {exc}")
