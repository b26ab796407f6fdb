"""The ``bal-broker`` command line: exit statuses, one-line errors, the summary line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from broker_plugin import cli
from broker_plugin.cli import main, register_subcommand

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def few_alerts(ztf_alert_files: list[Path], tmp_path: Path) -> Path:
    d = tmp_path / "alerts"
    d.mkdir()
    for f in ztf_alert_files[:4]:
        shutil.copy(f, d / f.name)
    return d


def _one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("bal-broker: error: ")
    return lines[0]


def test_replay_success_prints_the_summary_line(
    few_alerts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "o.jsonl"
    assert main(["replay", str(few_alerts), "--output", str(out), "--batch-size", "3"]) == 0
    captured = capsys.readouterr()
    assert captured.err == ""
    (line,) = captured.out.strip().splitlines()
    assert line.startswith("replay: 4 alerts read, 4 annotated, 0 rejected, 0 candidates in ")
    assert "alerts/s" in line
    assert len(out.read_text().splitlines()) == 4


def test_missing_input_exits_2_with_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["replay", str(tmp_path / "nope.avro"), "-o", str(tmp_path / "o.jsonl")]) == 2
    assert "input not found" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("output", "message"),
    [("o.csv", "output format"), ("missing/o.jsonl", "does not exist")],
)
def test_bad_output_exits_2_with_one_line(
    few_alerts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], output: str, message: str
) -> None:
    assert main(["replay", str(few_alerts), "-o", str(tmp_path / output)]) == 2
    assert message in _one_error_line(capsys.readouterr().err)


def test_models_option_refuses_a_directory_that_is_not_a_bundle(
    few_alerts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["replay", str(few_alerts), "-o", str(tmp_path / "o.jsonl"), "--models", str(few_alerts)]) == 2
    assert "manifest.yaml not found" in _one_error_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "argv",
    [[], ["replay"], ["replay", "x.avro"], ["replay", "x.avro", "-o", "o.jsonl", "--batch-size", "0"], ["nope"]],
)
def test_usage_errors_exit_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert capsys.readouterr().err


def test_help_and_version_exit_0(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--version"]) == 0
    assert "bal-broker" in capsys.readouterr().out
    assert main(["replay", "--help"]) == 0
    assert "--output" in capsys.readouterr().out


def test_internal_error_exits_1_and_interrupt_130(
    few_alerts: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(*_a: object, **_k: object) -> None:
        raise RuntimeError("something broke")

    monkeypatch.setattr("broker_plugin.files.replay.replay", boom)
    assert main(["replay", str(few_alerts), "-o", str(tmp_path / "o.jsonl")]) == 1
    err = capsys.readouterr().err
    assert err.strip().splitlines()[-1] == "bal-broker: internal error: RuntimeError: something broke"

    def interrupt(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr("broker_plugin.files.replay.replay", interrupt)
    assert main(["replay", str(few_alerts), "-o", str(tmp_path / "o.jsonl")]) == 130


def test_subcommands_register_lazily_and_a_missing_module_does_not_break_the_cli(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli, "SUBCOMMANDS", dict(cli.SUBCOMMANDS))

    def add_hello(subparsers: object) -> None:
        p = subparsers.add_parser("hello")  # type: ignore[attr-defined]
        p.set_defaults(handler=lambda _args: 0)

    register_subcommand("hello", add_hello)
    register_subcommand("ghost", "broker_plugin.no_such_module:add_parser")
    assert main(["hello"]) == 0
    assert main(["ghost", "--anything"]) == 2
    assert "'ghost' command is unavailable" in _one_error_line(capsys.readouterr().err)


def _run_module(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "broker_plugin", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=120, check=False)


def test_python_dash_m_end_to_end(few_alerts: Path, tmp_path: Path) -> None:
    """The real process: exit codes, stdout/stderr split, and no traceback on a usage error."""
    proc = _run_module("replay", str(few_alerts), "--output", "o.parquet", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("replay: 4 alerts read, 4 annotated, 0 rejected")
    assert (tmp_path / "o.parquet").is_file() and (tmp_path / "o.parquet.rejects.jsonl").read_text() == ""

    proc = _run_module("replay", "missing_dir", "--output", "o.jsonl", cwd=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert _one_error_line(proc.stderr) == "bal-broker: error: input not found: missing_dir"
    assert not (tmp_path / "o.jsonl").exists()
