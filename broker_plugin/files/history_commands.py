"""``bal-broker history import|show|stats``: fill an object history store from files, and look into it.

Why a command of the archive layer: ``import`` reads the same inputs as ``replay`` (archived alerts:
``.avro`` files, directories, nightly tarballs) plus ZTF data-release light curves from IRSA
(``.csv``, ``.csv.gz``, ``.tbl``, ``.parquet``), and stores them with the code the service uses
(:class:`~broker_plugin.history.HistoryStage` for alerts,
:func:`~broker_plugin.history.dr_import.import_lightcurves` for data-release sources). Storing is
idempotent and independent of order (points carry the time they were seen), so importing a file
twice, or alerts before or after the data release, leaves the same store.

``show`` prints what the store holds about one object, under any of its names, and plots it;
``stats`` the store's size. All three need ``--history`` (a SQLite file or a ``postgresql://``
URL): an import into memory would be lost at exit, and ``show``/``stats`` never create a store.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from broker_plugin.args import positive_int
from broker_plugin.errors import ConfigError

#: File endings of data-release light curves, and of alert archives (tarballs and single alerts).
DR_SUFFIXES = (".csv", ".csv.gz", ".tbl", ".parquet", ".pq", ".parq")
ALERT_SUFFIXES = (".avro", ".tar.gz", ".tgz", ".tar")
DEFAULT_BATCH_SIZE = 500
#: Seconds an import retries a batch while the store is unavailable (locked, restarting).
STORE_RETRY_S = 60.0
#: Rows of the point table ``show`` prints (the first and last halves beyond it).
SHOW_MAX_ROWS = 40


@dataclass
class ImportSummary:
    files: int = 0
    sources: int = 0
    alerts: int = 0
    rejected: int = 0
    objects_new: int = 0
    points: int = 0
    elapsed_s: float = 0.0

    def line(self) -> str:
        return (f"history import: {self.files} files, {self.sources} data-release sources and {self.alerts} alerts "
                f"read, {self.rejected} alerts rejected, {self.objects_new} new objects, {self.points} points "
                f"written in {self.elapsed_s:.2f} s")


def _need_history(history: str | None, command: str) -> str:
    if not history:
        raise ConfigError(f"history {command} needs --history PATH_OR_URL (a SQLite file or a postgresql:// URL)")
    return history


def _open_existing(history: str | None, command: str) -> Any:
    """The store for show/stats: a SQLite path must exist (an empty store is never created here)."""
    from broker_plugin.history import is_postgres

    spec = _need_history(history, command)
    if not is_postgres(spec) and not Path(spec).is_file():
        raise ConfigError(f"history store not found: {spec}")
    return _open(spec)


def _open(spec: str, **kwargs: Any) -> Any:
    """open_store, with a file that is not a SQLite database a usage error (exit 2), not a traceback."""
    import sqlite3

    from broker_plugin.history import open_store

    try:
        return open_store(spec, **kwargs)
    except sqlite3.DatabaseError as exc:
        raise ConfigError(f"history store {spec}: {exc}") from None


def classify(path: Path) -> tuple[list[Path], list[Path]]:
    """(data-release files, alert inputs) that ``path`` stands for; ConfigError when it is neither."""
    from broker_plugin.files.dr_lightcurves import iter_ztf_lightcurve_files

    name = path.name.lower()
    if not path.exists():
        raise ConfigError(f"input not found: {path}")
    if path.is_file():
        if name.endswith(DR_SUFFIXES):
            return [path], []
        if name.endswith(ALERT_SUFFIXES):
            return [], [path]
        raise ConfigError(f"{path}: not a light-curve file ({', '.join(DR_SUFFIXES)}) or an alert archive "
                          f"({', '.join(ALERT_SUFFIXES)})")
    if not path.is_dir():
        raise ConfigError(f"input is neither a file nor a directory: {path}")
    has_dr = any(p.is_file() for s in DR_SUFFIXES for p in path.rglob(f"*{s}"))
    has_alerts = any(p.is_file() and not p.name.startswith(".") for p in path.rglob("*.avro"))
    if not (has_dr or has_alerts):
        raise ConfigError(f"{path}: no light-curve files ({', '.join(DR_SUFFIXES)}) or .avro alerts")
    return (iter_ztf_lightcurve_files([path]) if has_dr else []), ([path] if has_alerts else [])


def _bar(total: int | None, unit: str, desc: str) -> Any:
    """A tqdm bar on stderr on a terminal, else None."""
    if not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit=unit, desc=desc, file=sys.stderr, mininterval=0.5, dynamic_ncols=True)


def _retry(fn: Any) -> Any:
    import logging

    from broker_plugin.history.stage import with_retries

    def on_retry(attempt: int, exc: Exception, delay: float) -> None:
        logging.getLogger(__name__).warning("history store unavailable (attempt %d): %s; retrying in %.1f s",
                                            attempt, exc, delay)
    return with_retries(fn, deadline_s=STORE_RETRY_S, on_retry=on_retry)


def import_dr_files(store: Any, files: list[Path], summary: ImportSummary) -> None:
    """Each light-curve file read and written on its own (one transaction per chunk of sources)."""
    from broker_plugin.files.dr_lightcurves import load_ztf_lightcurves
    from broker_plugin.history.dr_import import import_lightcurves

    bar = _bar(len(files), " files", "data release")
    try:
        for f in files:
            try:
                lcset = load_ztf_lightcurves(f)
            except (ValueError, OSError) as exc:
                raise ConfigError(f"{f}: cannot read light curves: {exc}") from None
            counts = _retry(lambda lcset=lcset: import_lightcurves(store, lcset))
            summary.files += 1
            summary.sources += counts.sources
            summary.points += counts.points
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()


def import_alerts(store: Any, inputs: list[Path], summary: ImportSummary, batch_size: int) -> None:
    """Archived alerts decoded and stored a batch at a time, as the service stores them."""
    from broker_plugin.decode import default_decoder
    from broker_plugin.files.sources import iter_inputs, tarball_mode
    from broker_plugin.history import HistoryStage

    stage = HistoryStage(store)
    decoder = default_decoder()
    bar = _bar(None, " alerts", "alerts")
    files: set[str] = set()
    tarballs = {f"{p}:" for p in inputs if tarball_mode(p) is not None}
    batch: list[Any] = []

    def flush() -> None:
        readable = [item.data for item in batch if item.error is None]
        summary.rejected += len(batch) - len(readable)
        decoded = decoder.decode_batch(readable)
        alerts = [a for a in decoded if not isinstance(a, Exception)]
        summary.rejected += len(decoded) - len(alerts)
        summary.alerts += len(batch)

        def store_batch() -> None:
            pending = stage.merge(alerts)
            stage.write(pending)
            if pending.batch.point_cols is not None:
                summary.points += int(pending.batch.point_cols[0].size)
        _retry(store_batch)
        if bar is not None:
            bar.update(len(batch))
        batch.clear()

    try:
        for item in iter_inputs(inputs):
            if not any(item.origin.startswith(t) for t in tarballs):
                files.add(item.origin)
            batch.append(item)
            if len(batch) >= batch_size:
                flush()
        if batch:
            flush()
    finally:
        if bar is not None:
            bar.close()
    summary.files += len(files) + len(tarballs)


def run_import(args: argparse.Namespace) -> int:
    from broker_plugin.history.sky import MAX_RADIUS_ARCSEC

    spec = _need_history(args.history, "import")
    if not 0 < args.radius <= MAX_RADIUS_ARCSEC:
        raise ConfigError(f"--radius must be in (0, {MAX_RADIUS_ARCSEC:g}] arcsec, got {args.radius:g}")
    plan = [classify(Path(p)) for p in args.inputs]  # every input checked before anything is written
    summary = ImportSummary()
    t0 = time.perf_counter()
    store = _open(spec, radius_arcsec=args.radius)
    try:
        objects_before = store.stats()["objects"]
        for dr_files, alert_inputs in plan:
            if dr_files:
                import_dr_files(store, dr_files, summary)
            if alert_inputs:
                import_alerts(store, alert_inputs, summary, args.batch_size)
        # the store's count: alerts name objects that exist by position, and other writers may add some
        summary.objects_new = store.stats()["objects"] - objects_before
    finally:
        store.close()
    summary.elapsed_s = time.perf_counter() - t0
    print(summary.line(), flush=True)
    return 0


def run_stats(args: argparse.Namespace) -> int:
    store = _open_existing(args.history, "stats")
    try:
        stats = store.stats()
    finally:
        store.close()
    stats["bytes_per_point"] = round(stats["bytes"] / stats["points"], 1) if stats["points"] else None
    if args.json:
        print(json.dumps(stats, sort_keys=True))
    else:
        for key in ("backend", "schema_version", "objects", "aliases", "points", "limits", "aggregates", "bytes",
                    "bytes_per_point"):
            print(f"{key:16s} {stats[key]}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    store = _open_existing(args.history, "show")
    try:
        oid = store.find(args.object)
        if oid is None:
            raise ConfigError(f"no object named {args.object!r} in the history store {store.url}")
        names, position, obj = store.describe(oid)
    finally:
        store.close()
    png = Path(args.png) if args.png else Path(f"{args.object}.png")
    plotted = plot_points(obj, png, title=args.object)  # before printing: a closed pipe must not lose it
    print_object(args.object, oid, names, position, obj, max_rows=SHOW_MAX_ROWS)
    print(plotted)
    return 0


def _table(obj: Any) -> list[tuple[float, str, float, float, str, str]]:
    """(mjd, band, mag, mag_err, origin, kind) of every stored point, by time."""
    import numpy as np

    from broker_plugin.history.points import BANDS, DATA_RELEASE_ORIGINS, KIND_DC
    from broker_plugin.photometry.lightcurve_core import flux_to_mag

    pts = obj.points
    mag, mag_err = flux_to_mag(pts.flux, pts.flux_err)
    dr = np.isin(pts.origin, list(DATA_RELEASE_ORIGINS))
    rows = [(float(pts.mjd[i]), BANDS[int(pts.band[i])], float(mag[i]), float(mag_err[i]),
             "data release" if dr[i] else "alert", "dc" if pts.kind[i] == KIND_DC else "diff")
            for i in range(len(pts))]
    return sorted(rows)


def print_object(name: str, oid: int, names: list[tuple[str, str]], position: tuple[float, float] | None,
                 obj: Any, *, max_rows: int = SHOW_MAX_ROWS) -> None:
    """Aliases, position, per band the points by origin and kind with their time span, then the points."""
    print(f"{name}: object {oid}")
    print("  names: " + ", ".join(f"{s}:{n}" for s, n in names))
    if position is not None:
        print(f"  position: ra {position[0]:.6f} dec {position[1]:+.6f}")
    rows = _table(obj)
    print(f"  points: {len(rows)}, upper limits: {len(obj.limits)}"
          + (f", aggregates: {', '.join(sorted(obj.aggregates))}" if obj.aggregates else ""))
    groups: dict[tuple[str, str, str], list[float]] = {}
    for mjd, band, _m, _e, origin, kind in rows:
        groups.setdefault((band, origin, kind), []).append(mjd)
    for (band, origin, kind), mjds in sorted(groups.items()):
        print(f"  band {band}: {len(mjds):5d} {origin} points ({kind}), MJD {min(mjds):.5f} .. {max(mjds):.5f}")
    shown = rows if len(rows) <= max_rows else [*rows[:max_rows // 2], None, *rows[-(max_rows // 2):]]
    print(f"  {'mjd':>14s} {'band':>4s} {'mag':>7s} {'mag_err':>7s}  origin")
    for row in shown:
        if row is None:
            print(f"  ... {len(rows) - 2 * (max_rows // 2)} more points ...")
            continue
        mjd, band, mag, err, origin, kind = row
        print(f"  {mjd:14.6f} {band:>4s} {mag:7.3f} {err:7.3f}  {origin} ({kind})")


def plot_points(obj: Any, png: Path, *, title: str) -> str:
    """Write the stored light curve to ``png``; the line to print (a note when matplotlib is missing)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "note: matplotlib is not installed (pip install 'bal-broker[demo]'): no plot written"
    colours = {"u": "purple", "g": "tab:green", "r": "tab:red", "i": "tab:brown", "z": "black", "y": "grey"}
    groups: dict[tuple[str, str, str], list[tuple[float, float, float]]] = {}
    for mjd, band, mag, err, origin, kind in _table(obj):
        if mag == mag:  # not NaN (flux <= 0 has no magnitude)
            groups.setdefault((band, origin, kind), []).append((mjd, mag, err))
    fig, ax = plt.subplots(figsize=(9, 4.5))
    try:
        for (band, origin, kind), pts in sorted(groups.items()):
            x, y, e = zip(*pts, strict=True)
            ax.errorbar(x, y, yerr=e, fmt="o" if origin == "alert" else ".", ms=5 if origin == "alert" else 3,
                        color=colours.get(band, "blue"), alpha=0.9 if origin == "alert" else 0.5, lw=0.6,
                        label=f"{band} {origin} ({kind})")
        ax.invert_yaxis()
        ax.set_xlabel("MJD")
        ax.set_ylabel("magnitude")
        ax.set_title(title)
        if groups:
            ax.legend(fontsize=8)
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)
    return f"plot: {png}"


def add_parser(subparsers: Any) -> None:
    """Register ``history`` on the ``bal-broker`` command line (see :mod:`broker_plugin.cli`)."""
    p = subparsers.add_parser("history", help="import alerts or data-release light curves into a history store; "
                              "show an object; store statistics",
                              description="The object history store: import, show, stats.")
    sub = p.add_subparsers(dest="history_command", metavar="ACTION")
    store_help = "the history store: a SQLite file or a postgresql:// URL (required)"

    imp = sub.add_parser("import", help="store archived alerts and/or ZTF data-release light curves",
                         description="Store archived alerts (.avro, directories, .tar.gz) and ZTF data-release "
                                     "light curves (.csv, .csv.gz, .tbl, .parquet, or directories of them). "
                                     "Data-release sources join the object at their position when one is stored.")
    imp.add_argument("inputs", nargs="+", metavar="PATH", help="alert archive or light-curve file or directory")
    imp.add_argument("--history", metavar="PATH_OR_URL", default=None, help=store_help)
    imp.add_argument("--batch-size", type=positive_int, default=DEFAULT_BATCH_SIZE, metavar="N",
                     help=f"alerts per batch (default {DEFAULT_BATCH_SIZE})")
    imp.add_argument("--radius", type=float, default=1.5, metavar="ARCSEC",
                     help="association radius for data-release sources (default 1.5)")
    imp.set_defaults(handler=run_import)

    show = sub.add_parser("show", help="print and plot what the store holds about one object",
                          description="OBJECT: any of its names (ZTF objectId, Rubin diaObjectId, data-release id).")
    show.add_argument("object", metavar="OBJECT")
    show.add_argument("--history", metavar="PATH_OR_URL", default=None, help=store_help)
    show.add_argument("--png", metavar="FILE", default=None, help="plot file (default OBJECT.png)")
    show.set_defaults(handler=run_show)

    stats = sub.add_parser("stats", help="counts and size of the store")
    stats.add_argument("--history", metavar="PATH_OR_URL", default=None, help=store_help)
    stats.add_argument("--json", action="store_true", help="one JSON object")
    stats.set_defaults(handler=run_stats)

    def no_action(_args: argparse.Namespace) -> int:
        raise ConfigError("history needs an action: import, show or stats")
    p.set_defaults(handler=no_action)
