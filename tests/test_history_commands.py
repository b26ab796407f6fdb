"""``bal-broker history import|show|stats`` on the real ZTF alerts and a small IRSA-like light curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from broker_plugin.cli import main
from broker_plugin.decode import default_decoder
from broker_plugin.files.dr_lightcurves import load_ztf_lightcurves
from broker_plugin.history import open_store
from broker_plugin.history.dr_import import import_lightcurves

OBJECT = "ZTF21abiuvdk"


@pytest.fixture(scope="module")
def object_position(ztf_alert_files: list[Path]) -> tuple[float, float]:
    for f in ztf_alert_files:
        alert = default_decoder().decode_batch([f.read_bytes()])[0]
        if not isinstance(alert, Exception) and alert.object_id == OBJECT:
            return alert.ra, alert.dec
    pytest.skip(f"{OBJECT} is not among the shared alerts")


def write_dr_csv(path: Path, ra: float, dec: float, *, oids: tuple[int, int] = (683101200000001, 683201200000002),
                 t0: float = 58300.2) -> Path:
    """An IRSA light-curve API table: two oids (g and r) 0.3 arcsec from ``ra, dec``, 15 epochs each,
    one flagged row that the reader drops."""
    lines = ["oid,ra,dec,mjd,mag,magerr,filtercode,catflags"]
    for oid, code, base in ((oids[0], "zg", 17.2), (oids[1], "zr", 16.9)):
        for k in range(15):
            t = t0 + 7.0 * k + (0.01 if code == "zr" else 0.0)
            lines.append(f"{oid},{ra + 0.3 / 3600.0:.8f},{dec:.8f},{t:.6f},{base + 0.02 * (k % 3):.4f},0.03,{code},0")
    lines.append(f"{oids[0]},{ra:.8f},{dec:.8f},{t0 + 200.3:.6f},17.0,0.03,zg,32768")
    path.write_text("\n".join(lines) + "\n")
    return path


def stats(store: str, capsys: pytest.CaptureFixture[str]) -> dict:
    capsys.readouterr()
    assert main(["history", "stats", "--history", store, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


def counts(s: dict) -> tuple[int, ...]:
    return s["objects"], s["aliases"], s["points"], s["limits"], s["aggregates"]


def test_import_alerts_stats_and_show(tmp_path: Path, ztf_alert_dir: Path, capsys: pytest.CaptureFixture[str],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "h.db")
    assert main(["history", "import", str(ztf_alert_dir), "--history", store, "--batch-size", "50"]) == 0
    out = capsys.readouterr().out
    assert "128 alerts read" in out and "0 alerts rejected" in out
    s = stats(store, capsys)
    assert s["backend"] == "sqlite" and s["schema_version"] >= 1
    assert 0 < s["objects"] <= 128 and s["aliases"] == s["objects"]
    assert s["points"] > s["objects"] and s["limits"] > 0 and s["bytes"] > 0 and s["bytes_per_point"] > 0
    assert main(["history", "stats", "--history", store]) == 0
    assert "bytes_per_point" in capsys.readouterr().out

    monkeypatch.chdir(tmp_path)
    assert main(["history", "show", OBJECT, "--history", store]) == 0
    out = capsys.readouterr().out
    assert "ztf:" + OBJECT in out and "band g:" in out and "band r:" in out and "data release" not in out
    pytest.importorskip("matplotlib")
    assert (tmp_path / f"{OBJECT}.png").stat().st_size > 1000


def test_data_release_joins_the_alert_object_and_imports_are_idempotent(
        tmp_path: Path, ztf_alert_dir: Path, object_position: tuple[float, float],
        capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_dr_csv(tmp_path / "lc.csv", *object_position)
    store = str(tmp_path / "h.db")
    assert main(["history", "import", str(ztf_alert_dir), "--history", store]) == 0
    before = stats(store, capsys)
    assert main(["history", "import", str(csv), "--history", store]) == 0
    assert "1 data-release sources" in capsys.readouterr().out
    after = stats(store, capsys)
    assert after["objects"] == before["objects"]  # associated by position: no new object
    assert after["aliases"] == before["aliases"] + 1
    assert after["points"] == before["points"] + 30

    png = tmp_path / "plot.png"
    assert main(["history", "show", OBJECT, "--history", store, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert "ztf_dr:683101200000001" in out
    assert "15 data release points (dc)" in out and "band g:" in out and "band r:" in out
    # the data-release id names the same object
    assert main(["history", "show", "683101200000001", "--history", store, "--png", str(png)]) == 0
    assert "ztf:" + OBJECT in capsys.readouterr().out

    assert main(["history", "import", str(ztf_alert_dir), str(csv), "--history", store]) == 0
    assert "0 new objects, 0 points written" in capsys.readouterr().out
    assert counts(stats(store, capsys)) == counts(after)


def test_import_order_does_not_matter(tmp_path: Path, ztf_alert_dir: Path, object_position: tuple[float, float],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_dr_csv(tmp_path / "lc.csv", *object_position)
    a, b = str(tmp_path / "a.db"), str(tmp_path / "b.db")
    assert main(["history", "import", str(ztf_alert_dir), str(csv), "--history", a]) == 0
    assert main(["history", "import", str(csv), str(ztf_alert_dir), "--history", b]) == 0
    assert counts(stats(a, capsys)) == counts(stats(b, capsys))


def test_import_lightcurves_api_and_split_sources(tmp_path: Path) -> None:
    """A source read from two files (two LightCurveSets) becomes one object by position."""
    first = write_dr_csv(tmp_path / "one.csv", 150.0, 2.0)
    second = write_dr_csv(tmp_path / "two.csv", 150.0 + 0.5 / 3600.0, 2.0, oids=(683101200000009, 683201200000008),
                          t0=59300.2)
    store = open_store(str(tmp_path / "h.db"))
    try:
        c1 = import_lightcurves(store, load_ztf_lightcurves(first))
        c2 = import_lightcurves(store, load_ztf_lightcurves(second))
        assert (c1.sources, c1.objects_new, c1.points) == (1, 1, 30)
        assert (c2.sources, c2.objects_new, c2.associated, c2.points) == (1, 0, 1, 30)
        assert store.find("683101200000001") == store.find("683101200000009") is not None
        again = import_lightcurves(store, load_ztf_lightcurves(first))
        assert (again.objects_new, again.associated, again.points) == (0, 0, 0)
        assert store.stats()["objects"] == 1
    finally:
        store.close()


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_bad_usage_is_one_line_exit_2(tmp_path: Path, ztf_alert_files: list[Path],
                                      capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["history", "import", str(ztf_alert_files[0])]) == 2
    assert "--history" in _one_line_error(capsys)
    missing = tmp_path / "nope.db"
    for cmd in (["history", "stats", "--history", str(missing)],
                ["history", "show", OBJECT, "--history", str(missing)]):
        assert main(cmd) == 2
        assert "not found" in _one_line_error(capsys)
    assert not missing.exists()
    assert main(["history", "stats"]) == 2
    assert "--history" in _one_line_error(capsys)
    (tmp_path / "junk.db").write_text("not a database")
    assert main(["history", "stats", "--history", str(tmp_path / "junk.db")]) == 2
    _one_line_error(capsys)
    assert main(["history", "stats"]) == 2
    assert "--history" in _one_line_error(capsys)
    store = str(tmp_path / "h.db")
    assert main(["history", "import", str(ztf_alert_files[0]), "--history", store]) == 0
    capsys.readouterr()
    assert main(["history", "show", "ZTF99nothere", "--history", store]) == 2
    assert "ZTF99nothere" in _one_line_error(capsys)
    (tmp_path / "notes.txt").write_text("x")
    assert main(["history", "import", str(tmp_path / "notes.txt"), "--history", store]) == 2
    _one_line_error(capsys)
    assert main(["history", "import", str(tmp_path / "absent.csv"), "--history", store]) == 2
    _one_line_error(capsys)
    assert main(["history", "import", str(ztf_alert_files[0]), "--history", store, "--radius", "0"]) == 2
    _one_line_error(capsys)


def test_postgres_import(postgres_url: str, tmp_path: Path, ztf_alert_dir: Path,
                         object_position: tuple[float, float], capsys: pytest.CaptureFixture[str]) -> None:
    csv = write_dr_csv(tmp_path / "lc.csv", *object_position)
    assert main(["history", "import", str(ztf_alert_dir), str(csv), "--history", postgres_url]) == 0
    s = stats(postgres_url, capsys)
    assert s["backend"] == "postgresql"
    sqlite = str(tmp_path / "h.db")
    assert main(["history", "import", str(ztf_alert_dir), str(csv), "--history", sqlite]) == 0
    assert counts(s) == counts(stats(sqlite, capsys))
    assert main(["history", "import", str(csv), "--history", postgres_url]) == 0
    assert counts(stats(postgres_url, capsys)) == counts(s)
    assert main(["history", "show", OBJECT, "--history", postgres_url, "--png", str(tmp_path / "p.png")]) == 0
    assert "data release points" in capsys.readouterr().out


def test_show_without_matplotlib_prints_a_note(tmp_path: Path, ztf_alert_files: list[Path],
                                               capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    store = str(tmp_path / "h.db")
    assert main(["history", "import", *map(str, ztf_alert_files[:5]), "--history", store]) == 0
    name = default_decoder().decode_batch([ztf_alert_files[0].read_bytes()])[0].object_id
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    capsys.readouterr()
    assert main(["history", "show", name, "--history", store, "--png", str(tmp_path / "x.png")]) == 0
    assert "matplotlib is not installed" in capsys.readouterr().out
    assert not (tmp_path / "x.png").exists()
