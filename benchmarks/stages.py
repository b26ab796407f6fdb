"""The floor and the cost of every pipeline stage, per alert, in one process on one core.

Why in process: the end-to-end figure says *how fast*, this says *where the time goes*. Each stage
is timed on the real code path, batch by batch (the service's batch size), over the same packets:

``floor_fastavro_schemaless``
    ``fastavro.schemaless_reader`` with the pre-parsed writer schema on the record body (container
    block or wire-format payload, extracted beforehand): the least any Python consumer that
    materialises the alert must spend. The issue's "physical floor".
``floor_fastavro_reader``
    ``fastavro.reader`` on the whole container (it parses the embedded schema every time: what a
    naive consumer pays), for reference. Containers only.
``avro`` / ``lightcurves`` / ``decode``
    The plugin's framing + Avro read (:meth:`Decoder.records`), the light-curve building on the
    decoded record, and the whole decode stage of :func:`broker_plugin.pipeline.process_batch`
    (Avro + normalisation + light curves + checks).
``features`` / ``models`` / ``records``
    From :class:`~broker_plugin.models.annotate.Annotator`'s own per-batch timings during the same
    ``process_batch`` call; ``models`` is the whole model stage (``BundleStage.predict``: cross-match,
    every session, flags). Each ONNX session is wrapped to time its ``run`` calls as the stage made
    them (``models_as_run``), and, separately, run on *every* alert of the batch
    (``models_every_alert``), which is what a model costs when nothing gates it.
``cutouts``
    :func:`broker_plugin.photometry.cutouts.cutout_batch` (three stamps -> one tensor per alert). On the
    service path only when the bundle has the candidate scorer; measured always.
``output_encoding``
    :meth:`broker_plugin.stream.kafka_output.OutputEncoder.encode` (input bytes + the ``bal`` field).
``in_process_total``
    ``process_batch`` + output encoding, wall time: the pipeline without Kafka.

The Kafka client costs (produce with the service's producer settings; consume with its consumer
settings) need a broker and are measured by :func:`kafka_client_costs`, the broker on another core.
"""

from __future__ import annotations

import gzip
import io
import statistics
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import fastavro
import numpy as np

from broker_plugin.decode import decode_alert, default_decoder
from broker_plugin.decode.avro import CONTAINER_MAGIC, container_blocks, decompress, read_container_header
from broker_plugin.decode.schemas import embedded_schema, packaged_lsst_schema
from broker_plugin.photometry.features import compute_features_batch
from broker_plugin.photometry.lightcurve import rubin_lightcurves_batch, ztf_lightcurves_batch

from .corpus import Packet

#: The service's default micro-batch (processing.batch_size).
BATCH = 500


class TimedSession:
    """Wraps an onnxruntime session to add up the time of its ``run`` calls (and the rows fed)."""

    def __init__(self, session: Any) -> None:
        self._session = session
        self.seconds = 0.0
        self.calls = 0
        self.rows = 0

    def run(self, output_names: Any, feed: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
        t0 = time.perf_counter()
        out = self._session.run(output_names, feed, *args, **kwargs)
        self.seconds += time.perf_counter() - t0
        self.calls += 1
        first = next(iter(feed.values()), None)
        self.rows += int(getattr(first, "shape", (0,))[0]) if first is not None else 0
        return out

    def reset(self) -> None:
        self.seconds = 0.0
        self.calls = self.rows = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._session, name)


def load_annotator(models: str | None) -> tuple[Any, dict[str, TimedSession]]:
    """An Annotator on the bundle (default: the shipped one), its sessions wrapped in TimedSession."""
    from broker_plugin.models.annotate import Annotator, load_model_stage

    stage = load_model_stage(models)
    timed: dict[str, TimedSession] = {}
    if stage is not None:
        sessions = stage.bundle.sessions
        for role in list(sessions):
            timed[role] = TimedSession(sessions[role])
            sessions[role] = timed[role]
    return Annotator(stage), timed


def _body_and_schema(data: bytes) -> tuple[bytes, Any]:
    """The record body and pre-parsed writer schema of one message (outside the timed loop)."""
    if data.startswith(CONTAINER_MAGIC):
        header = read_container_header(data)
        ws = embedded_schema(header.meta_key)
        (_count, body), = [b for b in container_blocks(data, header) if b[0]]
        return decompress(ws.codec, body, 1 << 26), ws.parsed
    sid = int.from_bytes(data[1:5], "big")
    ws = packaged_lsst_schema(sid)
    assert ws is not None
    return data[5:], ws.parsed


def _batches(items: Sequence[Any], size: int) -> list[Sequence[Any]]:
    return [items[i:i + size] for i in range(0, len(items), size)]


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _every_alert_feed(session: Any, n: int, features: np.ndarray, tensors: np.ndarray | None,
                      rng: np.random.Generator) -> dict[str, np.ndarray] | None:
    """Inputs for running ``session`` on all ``n`` alerts: the real feature matrix / cutout tensors
    where the shapes say so, seeded random values of the declared shape otherwise."""
    feed: dict[str, np.ndarray] = {}
    for inp in session.get_inputs():
        shape = [d if isinstance(d, int) else n for d in inp.shape]
        if not shape:
            return None
        shape[0] = n
        if len(shape) == 2 and shape[1] == features.shape[1]:
            feed[inp.name] = features.astype(np.float32)
        elif len(shape) == 4 and tensors is not None and list(tensors.shape[1:]) == shape[1:]:
            feed[inp.name] = tensors
        elif "float" in inp.type:
            feed[inp.name] = rng.random(shape, dtype=np.float32)
        else:
            return None
    return feed


def measure_group(packets: Sequence[Packet], annotator: Any, timed: dict[str, TimedSession], *,
                  repeats: int, batch: int = BATCH) -> dict[str, Any]:
    """Median per-alert microseconds of every stage over ``repeats`` passes (module docstring)."""
    from broker_plugin.photometry.cutouts import cutout_batch
    from broker_plugin.pipeline import process_batch
    from broker_plugin.stream.kafka_output import OutputEncoder

    data = [p.data for p in packets]
    n = len(data)
    prepared = [_body_and_schema(d) for d in data]
    containers = [d for d in data if d.startswith(CONTAINER_MAGIC)]
    decoder = default_decoder()
    records = [decoder.records(d)[0] for d in data]
    surveys = [p.survey for p in packets]
    alerts = [decode_alert(d) for d in data]
    encoder = OutputEncoder()
    rng = np.random.default_rng(0)
    runs: dict[str, list[float]] = {}
    # warm-up, untimed: schema caches, compiled readers (built on a schema's second use), ONNX first runs
    for _ in range(2):
        for d in data:
            decoder.records(d)
            decode_alert(d)
    for chunk in _batches(data, batch):
        process_batch(annotator, chunk)

    def add(stage: str, seconds: float, count: int) -> None:
        runs.setdefault(stage, []).append(seconds / count * 1e6)

    for _ in range(repeats):
        add("floor_fastavro_schemaless", _timed(
            lambda: [fastavro.schemaless_reader(io.BytesIO(b), s, None) for b, s in prepared]), n)
        if containers:
            add("floor_fastavro_reader", _timed(
                lambda: [list(fastavro.reader(io.BytesIO(d))) for d in containers]), len(containers))
        add("avro", _timed(lambda: [decoder.records(d) for d in data]), n)
        add("lightcurves", _timed(lambda: [  # per batch and survey, as Decoder.decode_batch builds them
            (ztf_lightcurves_batch if s == "ztf" else rubin_lightcurves_batch)([r for r, _ in grp])
            for b in _batches(list(zip(records, surveys, strict=True)), batch)
            for s in ("ztf", "lsst") if (grp := [x for x in b if x[1] == s])
        ]), n)
        add("cutouts", _timed(lambda: [cutout_batch([a.cutouts for a in b]) for b in _batches(alerts, batch)]), n)

        for t in timed.values():
            t.reset()
        before = dict(annotator.timings.seconds)
        decode_s = encode_s = total_s = 0.0
        for chunk in _batches(data, batch):
            t0 = time.perf_counter()
            pb = process_batch(annotator, chunk)
            t1 = time.perf_counter()
            for a, rec, j in zip(pb.alerts, pb.records, pb.indices, strict=True):
                encoder.encode(chunk[j], a, rec)
            t2 = time.perf_counter()
            decode_s += pb.decode_s
            encode_s += t2 - t1
            total_s += t2 - t0
        after = annotator.timings.seconds
        add("decode", decode_s, n)
        for stage in ("features", "models", "records"):
            add(stage, after.get(stage, 0.0) - before.get(stage, 0.0), n)
        for role, t in timed.items():
            add(f"model_as_run:{role}", t.seconds, n)
        add("output_encoding", encode_s, n)
        add("in_process_total", total_s, n)

        # every model on every alert (what a model costs when nothing gates it)
        if timed:
            secs: dict[str, float] = dict.fromkeys(timed, 0.0)
            needs_tensors = any(len(t.get_inputs()[0].shape) == 4 for t in timed.values())
            for chunk in _batches(alerts, batch):
                feats = np.asarray(compute_features_batch([a.lightcurves for a in chunk])[0])
                tensors = cutout_batch([a.cutouts for a in chunk])[0] if needs_tensors else None
                for role, t in timed.items():
                    feed = _every_alert_feed(t, len(chunk), feats, tensors, rng)
                    if feed is None:
                        continue
                    secs[role] += _timed(lambda t=t, feed=feed: t._session.run(None, feed))
            for role, s in secs.items():
                add(f"model_every_alert:{role}", s, n)

    med = {k: round(statistics.median(v), 2) for k, v in runs.items()}
    return {
        "alerts": n,
        "mean_bytes": round(sum(map(len, data)) / n),
        "us_per_alert": med,
        "runs_us_per_alert": {k: [round(x, 2) for x in v] for k, v in runs.items()},
        "floor_alerts_per_s": round(1e6 / med["floor_fastavro_schemaless"], 1),
        "in_process_alerts_per_s": round(1e6 / med["in_process_total"], 1),
        "models_rows_as_run": {role: t.rows for role, t in timed.items()},
    }


def gzip_comparison(packets: Sequence[Packet], repeats: int) -> dict[str, Any] | None:
    """Microseconds per gzipped stamp: the plugin's bounded inflater (ISA-L when installed, zlib as the
    fallback) vs zlib.decompress vs gzip vs ISA-L alone.

    gzip.decompress parses the member header in Python and then calls zlib, so it differs from zlib by
    a few microseconds; the inflate itself (~13 kB of nearly incompressible float32 noise per stamp)
    is the cost, and ISA-L's inflate is the fastest one measured (hence the dependency).
    """
    from broker_plugin.photometry.cutouts import _gunzip

    stamps = [c for p in packets for c in decode_alert(p.data).cutouts.values() if c and c[:2] == b"\x1f\x8b"]
    if not stamps:
        return None
    candidates: list[tuple[str, Callable[[bytes], Any]]] = [
        ("cutouts._gunzip (as the plugin runs it: ISA-L, zlib fallback, bounded)", _gunzip),
        ("zlib.decompress(wbits=31)", lambda s: zlib.decompress(s, 31)),
        ("gzip.decompress", gzip.decompress)]
    try:  # ISA-L's inflate alone (a dependency; the plugin falls back to zlib without it)
        from isal import isal_zlib

        candidates.append(("isal_zlib.decompress(wbits=31)", lambda s: isal_zlib.decompress(s, 31)))
    except ImportError:
        pass
    runs: dict[str, list[float]] = {}
    for _ in range(repeats):
        for name, fn in candidates:
            t = _timed(lambda fn=fn: [fn(s) for s in stamps])
            runs.setdefault(name, []).append(t / len(stamps) * 1e6)
    return {"stamps": len(stamps), "mean_compressed_bytes": round(sum(map(len, stamps)) / len(stamps)),
            "us_per_stamp": {k: round(statistics.median(v), 2) for k, v in runs.items()}}


def kafka_client_costs(packets: Sequence[Packet], mine: Sequence[int], other: Sequence[int]) -> dict[str, Any]:
    """Per-alert CPU of the service's Kafka clients in this process (pinned to ``mine``): producing the
    annotated outputs (service producer settings, key and headers as the service sets them, delivery
    callbacks served) and consuming inputs (service consumer settings). The broker runs on ``other``.
    CPU is the whole process's (librdkafka's threads included: lz4, CRC, sockets)."""
    import os

    from confluent_kafka import Consumer, Producer

    from broker_plugin import __version__
    from broker_plugin.config import load_config
    from broker_plugin.models.annotate import Annotator
    from broker_plugin.pipeline import process_batch
    from broker_plugin.stream.kafka_config import consumer_config, producer_config
    from broker_plugin.stream.kafka_output import OutputEncoder

    from .e2e import _broker, _proc_cpu_s

    os.sched_setaffinity(0, set(mine))
    ann = Annotator(None)
    enc = OutputEncoder()
    values = []
    for chunk in _batches([p.data for p in packets], BATCH):
        pb = process_batch(ann, chunk)
        values += [(str(r["object_id"]), enc.encode(chunk[j], a, r)) for a, r, j in zip(pb.alerts, pb.records,
                                                                                        pb.indices, strict=True)]
    n = len(values)
    broker = _broker(other)
    try:
        cfg = load_config(overrides={"kafka": {"bootstrap_servers": broker.bootstrap, "input_topics": ["x"]}},
                          environ={})
        settings = {f: getattr(cfg.kafka, f) for f in cfg.kafka.__dataclass_fields__}
        broker.create_topics(["kc-out"], partitions=4)
        producer = Producer(producer_config(settings))
        producer.produce("kc-out", b"warm-up")
        producer.flush(10)
        acked = 0

        def on_delivery(err: Any, _msg: Any) -> None:
            nonlocal acked
            acked += err is None

        headers = [("bal_source", "in/0/0"), ("bal_plugin_version", __version__)]
        b0, c0, w0 = _proc_cpu_s(broker.pid), time.process_time(), time.perf_counter()
        for key, value in values:
            while True:
                try:
                    producer.produce("kc-out", value=value, key=key, headers=headers, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.1)
        producer.poll(0)
        producer.flush(60)
        prod = (time.process_time() - c0, time.perf_counter() - w0, (_proc_cpu_s(broker.pid) or 0) - (b0 or 0))

        from confluent_kafka import TopicPartition

        consumer = Consumer(consumer_config(settings, group_id="kc-group"))
        consumer.assign([TopicPartition("kc-out", p, 0) for p in range(4)])
        got = 0
        b0, c0, w0 = _proc_cpu_s(broker.pid), time.process_time(), time.perf_counter()
        deadline = time.monotonic() + 120
        while got < n + 1 and time.monotonic() < deadline:
            got += sum(1 for m in consumer.consume(BATCH, 0.5) if m.error() is None)
        cons = (time.process_time() - c0, time.perf_counter() - w0, (_proc_cpu_s(broker.pid) or 0) - (b0 or 0))
        consumer.close()
    finally:
        broker.stop()
    return {
        "alerts": n,
        "mean_output_bytes": round(sum(len(v) for _k, v in values) / n),
        "produce_cpu_us_per_alert": round(prod[0] / n * 1e6, 2),
        "produce_wall_us_per_alert": round(prod[1] / n * 1e6, 2),
        "produce_broker_cpu_us_per_alert": round(prod[2] / n * 1e6, 2),
        "produce_acked": acked,
        "consume_cpu_us_per_alert": round(cons[0] / got * 1e6, 2) if got else None,
        "consume_wall_us_per_alert": round(cons[1] / got * 1e6, 2) if got else None,
        "consume_broker_cpu_us_per_alert": round(cons[2] / got * 1e6, 2) if got else None,
        "consumed": got,
    }
