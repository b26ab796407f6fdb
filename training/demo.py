"""``bal-broker demo``: the whole system end to end on the embedded broker, for a newcomer.

What it does, in the order a broker operator would: start the embedded Kafka-compatible broker
(Tansu, memory-only), create the topics, generate a realistic synthetic night of ZTF- and
Rubin-shaped alerts (``training.synthetic``: DRW quasar light curves, BAL and non-BAL quasars,
stars, supernovae, blazars, artefacts, with cutouts) together with a small synthetic multi-year
ZTF data-release archive of part of the night's objects (``training.synthetic.dr_archive``),
bootstrap a SQLite history store from that archive as an operator would (``broker_plugin.history``),
publish the alerts, run the streaming service (the very ``bal-broker run`` code, with the history
store) until every alert has been annotated, then read the output topics as an astronomer would:
how many alerts were annotated on long histories, and the top candidates, with a PNG of their
light curves. Nothing outside the installed package is needed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from broker_plugin.errors import ConfigError

log = logging.getLogger(__name__)

TOPICS = {"ztf": "ztf_demo_programid1", "lsst": "lsst-alerts-demo"}
OUTPUT, CANDIDATES, DLQ = "bal-annotated", "bal-candidates", "bal-dlq"
#: Default share of the ZTF alerts of DRW/periodic objects with a data-release light curve.
DR_FRACTION = 0.3
#: The archive's file in the output folder.
DR_FILE = "ztf_dr_lightcurves.csv"


def add_parser(subparsers: Any) -> None:
    p = subparsers.add_parser("demo", help="run everything end to end on the embedded broker",
                              description=__doc__.splitlines()[0])
    p.add_argument("--alerts", type=int, default=2000, help="synthetic alerts to generate (default 2000)")
    p.add_argument("--seed", type=int, default=20261122, help="random seed of the synthetic night")
    p.add_argument("--out", type=Path, default=Path("demo-output"),
                   help="folder for the candidate list and the light-curve PNG (default ./demo-output)")
    p.add_argument("--partitions", type=int, default=2, help="partitions per input topic")
    p.add_argument("--top", type=int, default=10, help="candidates to show")
    p.add_argument("--dr-fraction", type=float, default=DR_FRACTION, metavar="F",
                   help="fraction of the ZTF quasars, stars and blazars given a synthetic data-release light "
                        f"curve in the history store before the night (default {DR_FRACTION}; 0: none)")
    p.set_defaults(handler=run)


def _say(text: str = "") -> None:
    print(text, flush=True)


def run(args: argparse.Namespace) -> int:
    if args.alerts < 1:
        raise ConfigError("--alerts must be at least 1")
    if not 0.0 <= args.dr_fraction <= 1.0:
        raise ConfigError("--dr-fraction must be within [0, 1]")
    from broker_plugin.broker.embedded import EmbeddedBroker

    try:
        from training.synthetic import write_night
    except ImportError as exc:  # the training package ships in the wheel; numpy/astropy are runtime deps
        raise ConfigError(f"the synthetic generator cannot be imported ({exc})") from None

    args.out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    _say("bal-broker demo: BAL quasar candidates from a synthetic ZTF + Rubin night\n")
    with tempfile.TemporaryDirectory(prefix="bal-demo-") as tmp, EmbeddedBroker() as broker:
        _say(f"1. embedded broker (Tansu, memory-only) on {broker.bootstrap}, started in {broker.start_seconds:.2f} s")
        broker.create_topics(TOPICS.values(), partitions=args.partitions)
        broker.create_topics([OUTPUT, CANDIDATES, DLQ], partitions=args.partitions)

        night = Path(tmp) / "night"
        dr_path = args.out / DR_FILE if args.dr_fraction > 0 else None  # kept: `bal-broker history import` reads it
        t0 = time.perf_counter()
        write_night(night, args.alerts, seed=args.seed, dr_fraction=args.dr_fraction, dr_path=dr_path)
        files = sorted(night.glob("*.avro"))
        by_survey = {s: [f for f in files if f.name.startswith(s + "_")] for s in TOPICS}
        _say(f"2. generated {len(files)} synthetic alerts in {time.perf_counter() - t0:.1f} s "
             f"({len(by_survey['ztf'])} ZTF Avro containers, {len(by_survey['lsst'])} Rubin wire-format messages)")

        store_path = Path(tmp) / "history.sqlite"
        _import_archive(dr_path, store_path)
        published = _publish(by_survey, broker.bootstrap)
        _say(f"4. published {published} alerts to {', '.join(TOPICS.values())}")

        code = _serve(broker.bootstrap, published, store_path)
        if code != 0:
            return code
        _history_report(_read_topic(broker.bootstrap, OUTPUT))
        candidates = _read_candidates(broker.bootstrap)
        truth = _truth(night / "truth.jsonl")
        _report(candidates, truth, args)
    _say(f"\ndone in {time.perf_counter() - t_start:.0f} s. Where to look next:")
    _say("  bal-broker replay ALERTS --output out.jsonl   annotate archived alerts into a file")
    _say("  bal-broker run --config deploy/compose/config.yaml   the service against a real Kafka")
    _say("  broker_plugin/bundle/README.md and report/   what the default models are (and are not) good for")
    _say("  README.md   architecture, contracts, deployment, benchmarks")
    return 0


def _import_archive(dr_path: Path | None, store_path: Path) -> None:
    """Bootstrap the SQLite history store from the night's data-release archive (step 3)."""
    from broker_plugin.files.dr_lightcurves import load_ztf_lightcurves
    from broker_plugin.history import open_store
    from broker_plugin.history.dr_import import import_lightcurves

    t0 = time.perf_counter()
    store = open_store(str(store_path))
    try:
        if dr_path is None:
            _say(f"3. no data-release archive (--dr-fraction 0): an empty history store {store_path}")
            return
        lcset = load_ztf_lightcurves(dr_path)
        counts = import_lightcurves(store, lcset)
    finally:
        store.close()
    _say(f"3. imported the data-release archive {dr_path}: {counts.sources} objects, {counts.points} points "
         f"(synthetic, multi-year) into the history store {store_path} in {time.perf_counter() - t0:.1f} s")


def _publish(by_survey: dict[str, list[Path]], bootstrap: str) -> int:
    from broker_plugin.broker.publish import publish

    published = 0
    for survey, paths in by_survey.items():
        if paths:
            stats = publish(paths, TOPICS[survey], bootstrap)
            if not stats.ok:
                _say(f"   publish to {TOPICS[survey]}: {stats.summary()}")
            published += stats.delivered
    return published


def _serve(bootstrap: str, published: int, store_path: Path) -> int:
    """Run the service (step 5) until every published alert is annotated; its exit status."""
    from broker_plugin.config import load_config
    from broker_plugin.stream.service import Service

    cfg = load_config(overrides={
        "kafka": {"bootstrap_servers": bootstrap, "group_id": "bal-broker-demo",
                  "input_topics": list(TOPICS.values()), "output_topic": OUTPUT,
                  "candidate_topic": CANDIDATES, "dlq_topic": DLQ},
        "processing": {"batch_size": 500},
        "history": {"backend": "sqlite", "path": str(store_path)},
        "observability": {"metrics_port": 0, "log_level": "WARNING", "log_format": "text"},
    }, environ={})
    service = Service(cfg)
    stop = threading.Event()
    result: dict[str, int] = {}
    thread = threading.Thread(target=lambda: result.setdefault("code", service.run(stop)), daemon=True)
    t0 = time.perf_counter()
    thread.start()
    deadline = t0 + 300.0
    while thread.is_alive() and time.perf_counter() < deadline:
        s = service.stats
        if s.consumed >= published and s.produced_out + s.produced_dlq >= s.annotated + s.rejected:
            break
        time.sleep(0.2)
    elapsed = time.perf_counter() - t0
    stop.set()
    thread.join(30.0)
    s = service.stats
    rate = s.consumed / elapsed if elapsed > 0 else 0.0
    _say(f"5. the service (bal-broker run) consumed {s.consumed}, annotated {s.annotated}, "
         f"rejected {s.rejected} to {DLQ}, candidates {s.produced_candidates} -> {CANDIDATES}")
    _say(f"   {elapsed:.1f} s including the consumer-group join: {rate:.0f} alerts/s; "
         f"model bundle {service.annotator.model_version}; history store {store_path.name}")
    if result.get("code", 0) != 0:
        _say(f"   the service stopped with status {result['code']}: {getattr(service, 'stop_reason', '')}")
    return int(result.get("code", 0))


def _history_report(records: list[tuple[dict[str, Any], Any]]) -> None:
    """How many alerts were annotated on data release + packet, and how many on their packet alone."""
    import statistics

    long_, short = [], []
    for bal, _ in records:
        h = bal.get("history") or {}
        span = float(h.get("span_days") or 0.0)
        (long_ if sum((h.get("data_release") or {}).values()) > 0 else short).append(span)

    def med(xs: list[float]) -> str:
        return f"{statistics.median(xs):.0f} d" if xs else "-"

    _say(f"   history: {len(long_)} alerts annotated on long histories (data release + packet, median span "
         f"{med(long_)}) vs {len(short)} on their packet alone (median span {med(short)})")


def _read_candidates(bootstrap: str) -> list[tuple[dict[str, Any], Any]]:
    """Read the candidate topic back as a subscriber would, decoding with the plugin's own decoder."""
    return _read_topic(bootstrap, CANDIDATES)


def _read_topic(bootstrap: str, topic: str) -> list[tuple[dict[str, Any], Any]]:
    """Every message of ``topic`` as (its ``bal`` record, the decoded alert)."""
    from confluent_kafka import Consumer, TopicPartition

    from broker_plugin.decode import decode_alert

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "demo-reader", "enable.auto.commit": False})
    out: list[tuple[dict[str, Any], Any]] = []
    try:
        meta = consumer.list_topics(topic, timeout=10)
        parts = [TopicPartition(topic, p, 0) for p in meta.topics[topic].partitions]
        ends = {p.partition: consumer.get_watermark_offsets(p, timeout=10)[1] for p in parts}
        consumer.assign(parts)
        remaining = sum(ends.values())
        deadline = time.monotonic() + 30
        while remaining > 0 and time.monotonic() < deadline:
            for msg in consumer.consume(500, timeout=1.0):
                if msg.error():
                    continue
                remaining -= 1
                alert = decode_alert(msg.value())
                out.append((alert.record.get("bal") or {}, alert))
    finally:
        consumer.close()
    return out


def _truth(path: Path) -> dict[str, dict[str, Any]]:
    truth: dict[str, dict[str, Any]] = {}
    if path.is_file():
        for line in path.read_text().splitlines():
            row = json.loads(line)
            for key in ("source_id", "candid", "diaSourceId"):
                if key in row:
                    truth[str(row[key])] = row
                    break
    return truth


def _report(candidates: list[tuple[dict[str, Any], Any]], truth: dict[str, dict[str, Any]],
            args: argparse.Namespace) -> None:
    def score(item: tuple[dict[str, Any], Any]) -> float:
        bal = item[0]
        value = bal.get("candidate_score")
        if value is None:
            value = bal.get("bal_fusion_prob") if bal.get("bal_fusion_prob") is not None else bal.get("bal_lc_prob")
        return float(value or 0.0)

    best: dict[str, tuple[dict[str, Any], Any]] = {}
    for item in candidates:  # one line per object: its best-scoring alert
        oid = item[1].object_id
        if oid not in best or score(item) > score(best[oid]):
            best[oid] = item
    top = sorted(best.values(), key=score, reverse=True)[: args.top]
    _say(f"\n6. top {len(top)} of {len(best)} candidate objects ({len(candidates)} candidate alerts):")
    _say(f"   {'object':<22}{'survey':<7}{'score':>7}{'p_BAL(lc)':>11}{'p_BAL(fus)':>11}  truth")
    for bal, alert in top:
        t = truth.get(alert.source_id, {})
        _say(f"   {alert.object_id:<22}{alert.survey:<7}{_fmt(bal.get('candidate_score')):>7}"
             f"{_fmt(bal.get('bal_lc_prob')):>11}{_fmt(bal.get('bal_fusion_prob')):>11}  {t.get('label', '?')}")
    if truth and best:
        classes = [truth.get(a.source_id, {}).get("label", "?") for _, a in best.values()]
        quasars = sum(c.startswith("qso") for c in classes)
        bals = sum(c == "qso_bal" for c in classes)
        _say(f"   of the {len(best)} candidate objects, {quasars} are quasars and {bals} BAL quasars (synthetic truth)")
    fused = sum(bal.get("bal_fusion_prob") is not None for bal, _ in candidates)
    _say(f"   {fused} candidate alerts matched an object with a known spectrum (bal_fusion_prob); the others rely on"
         " the light curve alone, as most of a real stream will")
    listing = args.out / "candidates.jsonl"
    with listing.open("w") as fh:
        for bal, alert in top:
            fh.write(json.dumps({"object_id": alert.object_id, "survey": alert.survey, **bal}) + "\n")
    png = _plot(top, args.out / "candidates_lightcurves.png")
    _say(f"   list: {listing}" + (f"\n   light curves: {png}" if png else ""))


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.2f}"


def _plot(top: list[tuple[dict[str, Any], Any]], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        _say("   (install matplotlib for the light-curve PNG: pip install 'bal-broker[demo]')")
        return None
    if not top:
        return None
    n = len(top)
    cols = min(n, 3)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4.2 * cols, 2.8 * rows), squeeze=False)
    colours = {"u": "purple", "g": "tab:green", "r": "tab:red", "i": "tab:orange", "z": "tab:brown", "y": "k"}
    for ax, (bal, alert) in zip(axes.flat, top, strict=False):
        for band, lc in sorted(alert.lightcurves.items()):
            if len(lc):
                ax.errorbar(lc.mjd, lc.mag, yerr=lc.mag_err, fmt="o", ms=3, color=colours.get(band, "grey"),
                            label=f"{band} ({lc.kind})")
        ax.invert_yaxis()
        ax.set_title(f"{alert.object_id}  score {_fmt(bal.get('candidate_score'))}", fontsize=9)
        ax.set_xlabel("MJD", fontsize=8)
        ax.set_ylabel("mag", fontsize=8)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[n:]:
        ax.axis("off")
    fig.tight_layout()
    with contextlib.suppress(OSError):
        fig.savefig(path, dpi=90)
    plt.close(fig)
    return path if path.is_file() else None

