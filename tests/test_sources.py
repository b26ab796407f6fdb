"""Input discovery for replay: order, tarball streaming, and that nothing unreadable is dropped."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from broker_plugin.errors import ConfigError
from broker_plugin.files.sources import InputItem, iter_inputs, tarball_mode


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _tarball(path: Path, members: list[tuple[str, bytes | None]], mode: str = "w:gz") -> Path:
    """A tarball with (name, data) members; data None makes a directory member."""
    with tarfile.open(path, mode) as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def test_directory_is_recursive_sorted_and_ignores_other_files(tmp_path: Path) -> None:
    root = tmp_path / "night"
    _write(root / "b.avro", b"B")
    _write(root / "a.avro", b"A")
    _write(root / "sub" / "c.AVRO", b"C")
    _write(root / "a0" / "z.avro", b"Z")
    _write(root / "README.txt", b"not an alert")
    _write(root / "._a.avro", b"macOS resource fork")
    skipped: list[str] = []
    items = list(iter_inputs([root], on_skip=skipped.append))
    assert [Path(i.origin).relative_to(root).as_posix() for i in items] == [
        "a.avro", "a0/z.avro", "b.avro", "sub/c.AVRO",
    ]
    assert [i.data for i in items] == [b"A", b"Z", b"B", b"C"]
    assert all(i.ok for i in items)
    assert skipped == [str(root / "README.txt")]


def test_explicit_file_is_read_whatever_its_name_and_inputs_keep_command_line_order(tmp_path: Path) -> None:
    f1 = _write(tmp_path / "x.bin", b"X")
    d = tmp_path / "d"
    _write(d / "a.avro", b"A")
    items = list(iter_inputs([f1, d, str(f1)]))
    assert [i.data for i in items] == [b"X", b"A", b"X"]


def test_missing_input_is_a_config_error_before_anything_is_read(tmp_path: Path) -> None:
    good = _write(tmp_path / "a.avro", b"A")
    with pytest.raises(ConfigError, match="input not found"):
        iter_inputs([good, tmp_path / "nope.avro"])  # no iteration needed: checked eagerly
    with pytest.raises(ConfigError):
        iter_inputs([])


def test_dangling_file_in_directory_becomes_an_error_item(tmp_path: Path) -> None:
    d = tmp_path / "d"
    _write(d / "a.avro", b"A")
    (d / "b.avro").symlink_to(tmp_path / "gone.avro")
    items = list(iter_inputs([d]))
    assert [i.error for i in items] == [None, "unreadable"]
    assert items[1].origin.endswith("b.avro") and items[1].message


@pytest.mark.parametrize(("name", "mode"), [("n.tar.gz", "w:gz"), ("n.tgz", "w:gz"), ("n.tar", "w")])
def test_tarball_members_in_archive_order(tmp_path: Path, name: str, mode: str) -> None:
    tb = _tarball(
        tmp_path / name,
        [("night", None), ("night/2.avro", b"two"), ("night/1.avro", b"one"), ("night/notes.txt", b"n")],
        mode,
    )
    skipped: list[str] = []
    items = list(iter_inputs([tb], on_skip=skipped.append))
    assert items == [InputItem(f"{tb}:night/2.avro", b"two"), InputItem(f"{tb}:night/1.avro", b"one")]
    assert skipped == [f"{tb}:night/notes.txt"]


def test_tarball_is_streamed_not_extracted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    tb = _tarball(tmp_path / "n.tar.gz", [("1.avro", b"one")])
    modes: list[str] = []
    real_open = tarfile.open

    def spy(name: object, mode: str = "r", *args: object, **kwargs: object) -> tarfile.TarFile:
        modes.append(mode)
        return real_open(name, mode, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(tarfile, "open", spy)
    assert [i.data for i in iter_inputs([tb])] == [b"one"]
    assert modes == ["r|gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n.tar.gz"]
    assert tarball_mode(Path("X.TGZ")) == "r|gz" and tarball_mode(Path("x.avro")) is None


def test_truncated_tarball_yields_good_members_then_one_error(tmp_path: Path) -> None:
    payload = bytes(range(256)) * 400  # incompressible enough that the cut lands in member 2
    tb = _tarball(tmp_path / "n.tar.gz", [("1.avro", b"one"), ("2.avro", payload), ("3.avro", b"three")])
    data = tb.read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(data[: len(data) // 2])
    items = list(iter_inputs([cut]))
    assert items[0] == InputItem(f"{cut}:1.avro", b"one")
    assert [i.error for i in items[1:]] == ["unreadable_archive"]
    assert items[-1].origin.startswith(str(cut))


def test_file_that_is_not_a_tarball_yields_an_error_item(tmp_path: Path) -> None:
    bad = _write(tmp_path / "n.tar.gz", b"this is not gzip")
    items = list(iter_inputs([bad]))
    assert len(items) == 1 and items[0].error == "unreadable_archive" and items[0].origin == str(bad)
