"""``make bench`` = ``python -m benchmarks.run``: every benchmark in one run, written to benchmarks/results/.

Options: ``--quick`` (a ~1 minute smoke run: small corpus, fewer repeats, short latency run),
``--alerts N`` (burst size, default 10,000), ``--repeats R`` (burst runs; the median is reported),
``--stage-alerts N`` (alerts per group for the per-stage table), ``--models DIR`` (a bundle other
than the shipped one), ``--no-real`` (synthetic alerts only), ``--skip-e2e`` (in-process part only:
no broker), ``--out DIR`` and ``--name NAME`` (default ``benchmarks/results/latest.{json,md}``); the history store
(:mod:`benchmarks.bench_history`): ``--skip-history``, ``--only-history`` (that section alone),
``--history-alerts N`` (per survey), ``--history-repeats R``, ``--history-sizes 10000,100000`` (stored
objects for the scaling curve; 10^6 objects of 200 points is 2x10^8 points: about 30 min to build on
SQLite and over an hour on PostgreSQL on the 2-core machine, so it is not in the default); the hostile
cutouts (:mod:`benchmarks.bench_hostile`, peak RSS with a batch of cutout bombs, runs in ``--quick`` too):
``--skip-hostile``, ``--hostile-alerts N`` (alerts per batch, default 500).

Order of work, and why: the corpus is built first (outside any timing); the in-process stage costs
and the floor are measured pinned to the core the service worker will use, so that ratios between
them and the end-to-end figures compare like with like; then the end-to-end runs, each on a fresh
broker. Everything runs in one invocation so that a busy machine disturbs all figures alike; the
load average at start and end is recorded.
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import fastavro

from . import bench_history, bench_hostile, e2e, machine, report, stages
from . import corpus as corpus_mod

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SCHEMA_VERSION = 1


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run of about a minute (small corpus, few repeats)")
    p.add_argument("--alerts", type=int, default=None, help="burst size (default 10000; quick 1500)")
    p.add_argument("--repeats", type=int, default=None, help="burst runs, median reported (default 3; quick 1)")
    p.add_argument("--stage-alerts", type=int, default=None,
                   help="alerts per group for the per-stage table (default 600; quick 60)")
    p.add_argument("--stage-repeats", type=int, default=None, help="passes per stage (default 5; quick 2)")
    p.add_argument("--latency-rate", type=float, default=250.0, help="offered alerts/s for the latency run")
    p.add_argument("--latency-seconds", type=float, default=None, help="length of the latency run (default 20)")
    p.add_argument("--scale-alerts", type=int, default=None, help="alerts for the two-worker run (default 1.5x burst)")
    p.add_argument("--models", default=None, help="model bundle directory (default: the shipped bundle)")
    p.add_argument("--no-real", action="store_true", help="synthetic alerts only")
    p.add_argument("--skip-e2e", action="store_true", help="in-process measurements only (no broker)")
    p.add_argument("--out", type=Path, default=RESULTS_DIR, help="results directory")
    p.add_argument("--name", default="latest", help="results file stem (default latest)")
    p.add_argument("--skip-history", action="store_true", help="no history store measurements")
    p.add_argument("--only-history", action="store_true", help="the history store measurements alone")
    p.add_argument("--history-alerts", type=int, default=None, help="alerts per survey (default 2000; quick 500)")
    p.add_argument("--history-repeats", type=int, default=None, help="interleaved passes (default 5; quick 2)")
    p.add_argument("--history-sizes", default=None,
                   help="stored objects for the scaling curve, comma-separated (default 10000,100000; quick "
                        "1000,10000)")
    p.add_argument("--skip-hostile", action="store_true", help="no peak-RSS run with a batch of cutout bombs")
    p.add_argument("--hostile-alerts", type=int, default=500, help="alerts per batch of the hostile section")
    a = p.parse_args(argv)
    q = a.quick
    a.alerts = a.alerts or (1500 if q else 10_000)
    a.repeats = a.repeats or (1 if q else 3)
    a.stage_alerts = a.stage_alerts or (60 if q else 600)
    a.stage_repeats = a.stage_repeats or (2 if q else 5)
    a.latency_seconds = a.latency_seconds or (6.0 if q else 20.0)
    a.scale_alerts = a.scale_alerts or int(a.alerts * 1.5)
    a.history_alerts = a.history_alerts or (500 if q else 2000)
    a.history_repeats = a.history_repeats or (2 if q else 5)
    sizes = a.history_sizes or ("1000,10000" if q else "10000,100000")
    a.history_sizes = sorted({int(float(x)) for x in sizes.split(",") if x.strip()})
    if a.skip_history and a.only_history:
        p.error("--skip-history and --only-history exclude each other")
    return a


def _bundle_info(annotator: Any) -> dict[str, Any]:
    stage = annotator.bundle
    if stage is None:
        return {"model_version": annotator.model_version, "roles": [], "candidate_scorer": False}
    return {"model_version": annotator.model_version, "roles": sorted(stage.bundle.sessions),
            "candidate_scorer": bool(getattr(stage, "has_candidate_scorer", False)),
            "path": corpus_mod.relative_path(stage.bundle.path)}


def measure_floor(packets: list[corpus_mod.Packet], repeats: int) -> dict[str, Any]:
    """Bare fastavro decoding of exactly the burst packets, one core, median of ``repeats`` passes."""
    from broker_plugin.decode import decode_alert

    prepared = [stages._body_and_schema(p.data) for p in packets]
    containers = [p.data for p in packets if p.data.startswith(b"Obj\x01")]
    n = len(packets)
    s_runs, r_runs, d_runs = [], [], []
    for _ in range(repeats):
        s_runs.append(stages._timed(lambda: [fastavro.schemaless_reader(io.BytesIO(b), s, None) for b, s in prepared]))
        if containers:
            r_runs.append(stages._timed(lambda: [list(fastavro.reader(io.BytesIO(d))) for d in containers]))
        d_runs.append(stages._timed(lambda: [decode_alert(p.data) for p in packets]))
    return {
        "alerts": n,
        "method": "fastavro.schemaless_reader(BytesIO(record body), pre-parsed writer schema, None)",
        "alerts_per_s": round(n / statistics.median(s_runs), 1),
        "runs_alerts_per_s": [round(n / t, 1) for t in s_runs],
        "reader_alerts_per_s": round(len(containers) / statistics.median(r_runs), 1) if r_runs else None,
        "plugin_decode_alerts_per_s": round(n / statistics.median(d_runs), 1),
    }


def main(argv: list[str] | None = None) -> int:
    """Run everything (see the module docstring); the process's CPU affinity is restored at the end."""
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    try:
        return _main(argv)
    finally:
        if affinity is not None:
            os.sched_setaffinity(0, affinity)


def _main(argv: list[str] | None) -> int:
    args = parse_args(argv)
    t_start = time.time()
    mine, other = e2e.core_plan()
    results: dict[str, Any] = dict.fromkeys(report.TOP_KEYS)
    results.update(schema=SCHEMA_VERSION, command="python -m benchmarks.run " + " ".join(argv or sys.argv[1:]),
                   mode="quick" if args.quick else "full", started=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                   machine=machine.describe())
    results["layout"] = {"worker_cpus": mine, "other_cpus": other,
                         "pinning": "os.sched_setaffinity: the worker process on worker_cpus (before its imports, "
                                    "so librdkafka and onnxruntime threads inherit it); every thread of the broker "
                                    "and this process (load generator, output reader) on other_cpus"}
    print(f"machine: {results['machine']['cpu_model']}, {results['machine']['logical_cpus']} cpus; "
          f"worker cores {mine}, broker/load cores {other}", flush=True)

    n_ztf = max(args.alerts, args.scale_alerts if not args.skip_e2e else 0, 2 * args.stage_alerts)
    n_lsst = max(2 * args.stage_alerts, 0 if args.quick or args.skip_e2e else args.alerts // 2)
    hist = 0 if args.skip_history else args.history_alerts
    n_ztf, n_lsst = (hist, hist) if args.only_history else (max(n_ztf, hist), max(n_lsst, hist))
    t0 = time.time()
    corpus = corpus_mod.build(n_ztf, n_lsst, use_real=not args.no_real)
    results["corpus"] = corpus.describe() | {"build_s": round(time.time() - t0, 1)}
    print(f"corpus: {results['corpus']['groups']} in {results['corpus']['build_s']} s", flush=True)

    os.sched_setaffinity(0, set(mine))
    annotator, timed = stages.load_annotator(args.models)
    results["bundle"] = _bundle_info(annotator)
    if args.only_history:
        results["history"] = run_history(args, annotator, corpus, mine, other)
        return _finish(args, results, t_start, ["Only the history store was measured (--only-history)."])
    results["stages"] = {}
    for survey in ("ztf", "lsst"):
        for source in ("real", "synthetic"):
            pk = corpus.group(survey, source)[: args.stage_alerts]
            if pk:
                results["stages"][f"{survey}/{source}"] = stages.measure_group(pk, annotator, timed,
                                                                               repeats=args.stage_repeats)
                print(f"stages {survey}/{source}: {results['stages'][f'{survey}/{source}']['us_per_alert']}",
                      flush=True)
    results["gzip"] = stages.gzip_comparison(corpus.group("ztf")[: args.stage_alerts], args.stage_repeats)
    burst_packets = corpus.group("ztf")[: args.alerts]
    results["floor"] = measure_floor(burst_packets, 3 if not args.quick else 1)
    print(f"floor: {results['floor']}", flush=True)
    if not args.skip_history:
        results["history"] = run_history(args, annotator, corpus, mine, other)
    if not args.skip_hostile:
        results["hostile"] = bench_hostile.run(args.hostile_alerts, corpus,
                                               peak_goal_mb=report.target_value("peak_rss_mb"))
        h = results["hostile"]
        print(f"hostile: peak RSS ordinary {h['ordinary']['peak_rss_mb']} MB, hostile {h['hostile']['peak_rss_mb']} MB "
              f"({h['peak_rss_diff_mb']:+} MB), {h['hostile']['flagged']} flagged", flush=True)

    notes = [
        "The floor and the stage costs were measured in the benchmark process pinned to the worker's core, on the "
        "same packets, in the same run as the end-to-end figures.",
        "Burst: the clock starts at the consumer group's partition assignment (Tansu's group join, about half of "
        "session.timeout.ms = 6000, is excluded and reported as group_join_s) and stops at the delivery report of "
        "the last output; clear time from process start is reported too.",
        "Throughput counts consumed messages (Tansu under-reports high watermarks, so they are not used).",
        "Latency: input produce time and output receive time on the benchmark's clock, matched through the "
        "output's bal_source header; the first second is warm-up; service defaults (batch_size 500, "
        "batch_timeout_s 0.5).",
        "This is a shared 2-core machine: figures are medians of repeated runs; see the load averages.",
    ]
    if not args.skip_e2e:
        results["kafka_clients"] = stages.kafka_client_costs(burst_packets[: min(3000, len(burst_packets))], mine,
                                                             other)
        print(f"kafka clients: {results['kafka_clients']}", flush=True)
        results["e2e"] = run_e2e(args, corpus, burst_packets, results["floor"])
    else:
        results["e2e"] = {"burst": None, "latency": None, "scaling": None}
        notes.append("End-to-end runs skipped (--skip-e2e).")
    if args.skip_history:
        notes.append("History store measurements skipped (--skip-history).")
    if args.skip_hostile:
        notes.append("Hostile cutouts (peak RSS with cutout bombs) skipped (--skip-hostile).")
    return _finish(args, results, t_start, notes)


def _finish(args: argparse.Namespace, results: dict[str, Any], t_start: float, notes: list[str]) -> int:
    results["notes"] = notes
    results["layout"]["load_average_end"] = machine.load_average()
    results["duration_s"] = round(time.time() - t_start, 1)
    results["targets"] = report.evaluate(results)
    jp, mp = report.write(results, args.out, args.name)
    print(report.markdown(results))
    print(f"wrote {jp} and {mp}")
    return 0


def run_history(args: argparse.Namespace, annotator: Any, corpus: corpus_mod.Corpus, mine: list[int],
                other: list[int]) -> dict[str, Any]:
    """The history store section (:mod:`benchmarks.bench_history`): throughput with the stage off,
    on SQLite and on PostgreSQL (its server on the other cores), and the scaling curve."""
    t0 = time.time()
    out = bench_history.run(annotator, corpus, alerts=args.history_alerts, repeats=args.history_repeats,
                            sizes=args.history_sizes, scale_repeats=3 if args.quick else 7, worker_cpus=mine,
                            server_cpus=other)
    out["duration_s"] = round(time.time() - t0, 1)
    return out


def run_e2e(args: argparse.Namespace, corpus: corpus_mod.Corpus, burst_packets: list[corpus_mod.Packet],
            floor: dict[str, Any]) -> dict[str, Any]:
    """The broker runs: bursts (median of ``args.repeats``), latency, two workers, a Rubin burst."""
    out: dict[str, Any] = {}
    runs = []
    for i in range(args.repeats):
        r = e2e.run_burst(burst_packets, models=args.models)
        runs.append(r)
        print(f"burst {i + 1}/{args.repeats}: {r['alerts_per_s']} alerts/s, clear {r['clear_s_from_assignment']} s, "
              f"{r['alerts_per_cpu_s']} alerts/cpu-s, rss {r['peak_rss_mb']} MB", flush=True)
    rates = [r["alerts_per_s"] for r in runs]
    med = statistics.median(rates)
    best = min(runs, key=lambda r: abs(r["alerts_per_s"] - med))
    out["burst"] = {**best,
                    "alerts_per_s": round(med, 1),
                    "clear_s_from_assignment": round(statistics.median(r["clear_s_from_assignment"] for r in runs), 3),
                    "alerts_per_cpu_s": round(statistics.median(r["alerts_per_cpu_s"] or 0 for r in runs), 1),
                    "peak_rss_mb": max(r["peak_rss_mb"] for r in runs),
                    "runs_alerts_per_s": rates,
                    "runs": runs,
                    "vs_floor": round(med / floor["alerts_per_s"], 3),
                    "cpu_vs_floor": round(statistics.median(r["alerts_per_cpu_s"] or 0 for r in runs)
                                          / floor["alerts_per_s"], 3)}
    out["latency"] = e2e.run_latency(burst_packets, args.latency_rate, args.latency_seconds, models=args.models)
    print(f"latency: {out['latency']}", flush=True)
    if not args.quick:
        out["latency_low_timeout"] = e2e.run_latency(burst_packets, args.latency_rate, args.latency_seconds / 2,
                                                     models=args.models, processing={"batch_timeout_s": 0.05})
        print(f"latency (batch_timeout_s 0.05): {out['latency_low_timeout']}", flush=True)
        lsst = corpus.group("lsst")
        if len(lsst) >= 1000:
            out["burst_lsst"] = e2e.run_burst(lsst, models=args.models)
            print(f"burst lsst: {out['burst_lsst']['alerts_per_s']} alerts/s", flush=True)
    scale_packets = corpus.group("ztf")[: args.scale_alerts]
    scale = e2e.run_scaling(scale_packets, 2, models=args.models)
    scale["speedup"] = round(scale["alerts_per_s"] / med, 3)
    out["scaling"] = scale
    print(f"scaling: {scale}", flush=True)
    return out


if __name__ == "__main__":
    sys.exit(main())
