"""Prometheus metrics of the streaming service.

Why these: an operator must see at a glance whether alerts flow (``bal_alerts_in_total`` vs
``bal_alerts_out_total``), whether the input is rotten (``bal_alerts_rejected_total`` by reason),
whether science comes out (``bal_candidates_total``), where time goes (per-stage latency) and
whether the service keeps up (``bal_consumer_lag``, from librdkafka's own statistics, so it costs a
JSON parse every ``statistics.interval.ms`` and nothing per message).

Cheapness: counters are incremented once per batch by the batch's count, and stage latencies are
observed once per batch as *seconds per alert* (stage time divided by the batch size), never once
per alert; a batch of 500 costs a handful of metric updates.

Each :class:`Metrics` owns its own :class:`prometheus_client.CollectorRegistry` (not the global
one), so that several services in one process (tests, ``--workers`` in threads) never collide.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = logging.getLogger(__name__)

#: Stages whose per-alert latency is observed (DESIGN.md data flow).
STAGES: tuple[str, ...] = ("decode", "features", "inference", "encode", "produce")

#: ``bal_stalled`` reasons (:mod:`broker_plugin.stream.stall`), exported as 0 from the start.
STALL_REASONS: tuple[str, ...] = ("unacknowledged", "cluster_changed", "no_assignment")

#: ``(HTTP status, JSON body)`` of ``/healthz``.
HealthReport = Callable[[], tuple[int, dict[str, Any]]]

#: Seconds per alert: 10 us (encode fast path) .. 1 s (a stalled broker).
LATENCY_BUCKETS: tuple[float, ...] = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 0.1, 0.3, 1.0)


class Metrics:
    """The service's metric set; ``serve(port)`` exposes it over HTTP at ``/metrics``."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.alerts_in = Counter("bal_alerts_in", "Input messages consumed.", registry=r)
        self.alerts_out = Counter("bal_alerts_out", "Annotated alerts produced to the output topic.", registry=r)
        self.alerts_rejected = Counter("bal_alerts_rejected", "Input messages sent to the dead-letter topic.",
                                       ["reason"], registry=r)
        self.candidates = Counter("bal_candidates", "Alerts produced to the BAL-candidate topic.", registry=r)
        self.batches = Counter("bal_batches", "Micro-batches processed.", registry=r)
        self.stage_seconds = Histogram("bal_stage_seconds_per_alert",
                                       "Stage time per alert, observed once per batch (batch time / batch size).",
                                       ["stage"], buckets=LATENCY_BUCKETS, registry=r)
        self.consumer_lag = Gauge("bal_consumer_lag",
                                  "Messages behind the end of the assigned partitions (librdkafka statistics).",
                                  registry=r)
        self.kafka_errors = Counter("bal_kafka_errors", "Client-level Kafka errors reported by librdkafka.",
                                    ["code"], registry=r)
        self.history_errors = Counter("bal_history_store_errors",
                                      "Batches put back because the history store could not be read or written.",
                                      registry=r)
        self.stalled = Gauge("bal_stalled", "1 while a stall condition holds (reason: unacknowledged outputs, "
                             "cluster id changed, no partition assigned).", ["reason"], registry=r)
        for reason in STALL_REASONS:
            self.stalled.labels(reason).set(0)
        self.subscription_unmatched = Gauge("bal_subscription_unmatched",
                                            "Subscribed topics or patterns that match no topic in the metadata.",
                                            registry=r)
        #: What ``/healthz`` answers (set by the service's stall watcher); None: 200 while serving.
        self.health: HealthReport | None = None
        self._server: Any = None
        self._thread: Any = None

    # -- updates ---------------------------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float, n: int) -> None:
        """One observation of ``seconds`` spent in ``stage`` for a batch of ``n`` alerts."""
        if n > 0:
            self.stage_seconds.labels(stage).observe(seconds / n)

    def reject(self, reason: str, n: int = 1) -> None:
        self.alerts_rejected.labels(reason).inc(n)

    def on_stats(self, stats_json: str) -> None:
        """librdkafka ``stats_cb``: set :attr:`consumer_lag` to the summed lag of assigned partitions."""
        lag = consumer_lag(stats_json)
        if lag is not None:
            self.consumer_lag.set(lag)

    # -- exposition ------------------------------------------------------------------------------

    def serve(self, port: int, addr: str = "0.0.0.0") -> int:
        """Start the HTTP endpoint on ``port`` (a daemon thread): ``/metrics`` (prometheus-client's
        WSGI app) and ``/healthz`` (:attr:`health`); returns the bound port."""
        from wsgiref.simple_server import WSGIRequestHandler, make_server

        from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app

        metrics_app = make_wsgi_app(self.registry)

        def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
            if environ.get("PATH_INFO", "").rstrip("/") == "/healthz":
                status, body = self.health() if self.health is not None else (200, {"status": "ok"})
                data = json.dumps(body).encode("utf-8")
                start_response(f"{status} {'OK' if status == 200 else 'Service Unavailable'}",
                               [("Content-Type", "application/json"), ("Content-Length", str(len(data)))])
                return [data]
            return metrics_app(environ, start_response)

        class Quiet(WSGIRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # probes every few seconds: no log line
                pass

        self._server = make_server(addr, port, app, ThreadingWSGIServer, handler_class=Quiet)
        self._thread = threading.Thread(target=self._server.serve_forever, name="metrics-http", daemon=True)
        self._thread.start()
        return int(self._server.server_port)

    def close(self) -> None:
        """Stop the HTTP endpoint (if started); idempotent."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def text(self) -> str:
        """The exposition text (what ``/metrics`` serves), for logs and tests."""
        return generate_latest(self.registry).decode("utf-8")


def consumer_lag(stats_json: str) -> int | None:
    """Sum of ``consumer_lag`` over the real partitions of every topic in a librdkafka statistics
    JSON document; None when it cannot be parsed or holds no consumer partition.

    librdkafka reports -1 for partitions it does not consume (or before the first fetch) and an
    internal partition ``-1`` per topic; both are skipped.
    """
    try:
        stats = json.loads(stats_json)
    except (TypeError, ValueError):
        log.debug("unparsable librdkafka statistics")
        return None
    topics = stats.get("topics") if isinstance(stats, Mapping) else None
    if not isinstance(topics, Mapping):
        return None
    total = 0
    seen = False
    for topic in topics.values():
        partitions = topic.get("partitions") if isinstance(topic, Mapping) else None
        if not isinstance(partitions, Mapping):
            continue
        for pid, part in partitions.items():
            if str(pid) == "-1" or not isinstance(part, Mapping):
                continue
            lag = part.get("consumer_lag")
            if isinstance(lag, int) and lag >= 0:
                total += lag
                seen = True
    return total if seen else None
