"""Benchmark of ``bal-broker train --synthetic N``: wall time per stage and the test-split metrics.

Run: ``.venv/bin/python benchmarks/bench_train.py [--n 20000] [--seed 20261122] [--out DIR]``

Why N = 20000 by default: with ~13% BALs it leaves ~650 BALs in the held-out test split, so BAL
precision/recall/F1 move by about +-2 points between seeds (enough to rank the four models); the
default bundle uses 6000 to stay small. The target is under 10 minutes on a two-core machine. The
run goes through the CLI entry point, so it times exactly what a user runs (data generation,
features, 5-fold CV of every model, final fits, ONNX export with parity checks, bundle, report).
Prints one table of timings and one of the headline metrics (threshold 0.5, common test objects).
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import sys
import tempfile
import time
from contextlib import redirect_stderr
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from broker_plugin.cli import main as cli_main

ROLES = ("bal_lc", "spectral", "fusion_late", "fusion_attention")


def run(n: int, seed: int, out: Path) -> float:
    t0 = time.perf_counter()
    log = io.StringIO()
    with redirect_stderr(log):
        status = cli_main(["train", "--synthetic", str(n), "--seed", str(seed), "--out", str(out)])
    elapsed = time.perf_counter() - t0
    if status != 0:
        sys.stderr.write(log.getvalue())
        raise SystemExit(f"train failed with status {status}")
    sys.stderr.write(log.getvalue())
    return elapsed


def report(out: Path, elapsed: float, n: int) -> None:
    import json

    m = yaml.safe_load((out / "manifest.yaml").read_text())
    metrics = json.loads((out / "report" / "metrics.json").read_text())
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"\nbal-broker train --synthetic {n}: {elapsed:.1f} s wall on {os.cpu_count()} CPUs "
          f"({platform.processor() or platform.machine()}, Python {platform.python_version()}); "
          f"bundle {size / 1e6:.2f} MB")
    print("\n| step | seconds |\n|---|---|")
    for k, v in metrics["timings"].items():
        print(f"| {k} | {v:.1f} |")
    print("\n| model | BAL P | BAL R | BAL F1 | non-BAL P | non-BAL R | non-BAL F1 | ROC AUC | CV BAL F1 |")
    print("|---|---|---|---|---|---|---|---|---|")
    for role in (*ROLES, "fusion_attention_spec_only"):
        t = metrics["test"].get(role)
        if not t:
            continue
        cv = metrics["cv"].get(role, {})
        cvs = (f"{100 * cv['bal_f1_mean']:.1f} +- {100 * cv['bal_f1_std']:.1f}" if cv.get("bal_f1_mean") is not None
               else "-")
        b, nb = t["bal"], t["nonbal"]
        print(f"| {role} | {100 * b['precision']:.2f} | {100 * b['recall']:.2f} | {100 * b['f1']:.2f} | "
              f"{100 * nb['precision']:.2f} | {100 * nb['recall']:.2f} | {100 * nb['f1']:.2f} | "
              f"{t['roc_auc']:.3f} | {cvs} |")
    w = m["models"]["fusion_late"]["weights"]
    print(f"\nlate fusion weights: w_lc {w['w_lc']:.3f}, w_spec {w['w_spec']:.3f}; parity: "
          + ", ".join(f"{r} {m['models'][r]['metrics']['onnx_parity_max_abs']:.1e}" for r in ROLES))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--seed", type=int, default=20261122)
    ap.add_argument("--out", type=Path, default=None, help="keep the bundle here (default: a temp dir)")
    args = ap.parse_args()
    if args.out is not None:
        elapsed = run(args.n, args.seed, args.out)
        report(args.out, elapsed, args.n)
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "bundle"
        elapsed = run(args.n, args.seed, out)
        report(out, elapsed, args.n)


if __name__ == "__main__":
    main()
