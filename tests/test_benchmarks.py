"""Smoke test of ``make bench``: the in-process part runs and the results have every key.

Why no timing assertions: a benchmark measures the machine as much as the code, and a shared CI
machine would make any threshold flaky. What can break silently is the harness itself (a renamed
stage, a key the README or the table reads), so that is what is checked, on a handful of alerts.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("training.synthetic", reason="the benchmark corpus uses the synthetic generator")

from benchmarks import report, run


def test_quick_in_process_benchmark_writes_every_key(tmp_path: Path) -> None:
    code = run.main(["--quick", "--skip-e2e", "--skip-history", "--stage-alerts", "4", "--stage-repeats", "1",
                     "--alerts", "8", "--hostile-alerts", "4", "--out", str(tmp_path), "--name", "smoke"])
    assert code == 0
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert set(report.TOP_KEYS) <= set(results)
    assert results["mode"] == "quick"
    assert results["machine"]["cpu_model"] and results["machine"]["python"]
    assert "fastavro" in results["machine"]["libraries"]
    assert results["stages"], "no stage group was measured"
    for group in results["stages"].values():
        assert set(report.STAGE_KEYS) <= set(group["us_per_alert"])
        assert all(v >= 0 for v in group["us_per_alert"].values())
    assert results["floor"]["alerts_per_s"] > 0
    assert set(results["e2e"]) >= {"burst", "latency", "scaling"}  # skipped: present, None
    keys = [row["key"] for row in results["targets"]]
    assert keys == [t[0] for t in report.TARGETS]
    hostile = results["hostile"]
    assert hostile["alerts"] == 4 and set(hostile["limits"]) == {"max_stamp_pixels", "batch_inflated_bytes"}
    for name in ("ordinary", "hostile"):
        assert hostile[name]["records"] == 4 and hostile[name]["rejects"] == 0 and hostile[name]["peak_rss_mb"] > 0
    assert hostile["ordinary"]["flagged"] == 0 and hostile["hostile"]["flagged"] == 4  # every bomb alert flagged
    table = (tmp_path / "smoke.md").read_text()
    assert "## Targets" in table and "## Where the time goes" in table and "## Hostile cutouts" in table


def test_history_section_runs_on_a_handful_of_alerts(tmp_path: Path) -> None:
    code = run.main(["--quick", "--only-history", "--history-alerts", "6", "--history-repeats", "1",
                     "--history-sizes", "20,40", "--out", str(tmp_path), "--name", "hist"])
    assert code == 0
    results = json.loads((tmp_path / "hist.json").read_text())
    assert set(report.TOP_KEYS) <= set(results)
    h = results["history"]
    pg_skipped = h["postgresql"]["skipped"]
    backends = {"off", "sqlite"} | (set() if pg_skipped else {"postgresql"})
    for variant in ("empty", "prefilled"):
        for survey in ("ztf", "lsst"):
            got = h["throughput"][variant][survey]["backends"]
            assert set(got) == backends
            assert all(got[b]["alerts_per_s"] > 0 and got[b]["vs_off"] > 0 for b in backends - {"off"})
    for backend in backends - {"off"}:
        sizes = h["scaling"][backend]["sizes"]
        assert [r["objects"] for r in sizes] == [20, 40]
        assert all(r["points"] >= r["objects"] * h["points_per_object"] and r["bytes"] > 0 for r in sizes)
    assert "## History store" in (tmp_path / "hist.md").read_text()
