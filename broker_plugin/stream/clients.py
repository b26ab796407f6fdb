"""Building and starting the service's librdkafka clients from ``cfg.kafka`` (the ``start`` phase).

Why apart from the loop: what the clients are configured with (callbacks, statistics, manual
commits under exactly_once, partition-EOF events in a closed time range, a unique transactional id)
follows from the configuration alone, as does subscribing or assigning; the loop only uses the
clients. :class:`KafkaClients` is
mixed into the service.
"""

from __future__ import annotations

import dataclasses
import logging
import os
from collections.abc import Callable
from typing import Any

from broker_plugin import __version__
from broker_plugin.config import ServiceConfig
from broker_plugin.pipeline import settle_heap
from broker_plugin.redact import url_secrets
from broker_plugin.stream.kafka_errors import is_fatal
from broker_plugin.stream.logs import rate_limit
from broker_plugin.stream.stop import EXIT_INPUT, EXIT_OK, ServiceStop

#: The service's logger: these lines are the service's, whichever module holds the code.
log = logging.getLogger("broker_plugin.stream.service")
_rdkafka_log = logging.getLogger("broker_plugin.stream.service.librdkafka")
rate_limit(_rdkafka_log)  # librdkafka logs every reconnection attempt while a broker is down

#: librdkafka statistics interval when metrics are on (consumer lag gauge).
STATS_INTERVAL_MS = 5000

#: Room above the ``kafka.*_max_bytes`` limits (which count value, key and headers) for the record
#: and batch framing librdkafka adds when it checks ``message.max.bytes``, and fetch responses carry.
SIZE_HEADROOM = 64 * 1024
#: librdkafka's defaults, kept when the configured limits need no more.
DEFAULT_FETCH_MAX_BYTES = 52_428_800
DEFAULT_RECEIVE_MAX_BYTES = 100_000_000
#: librdkafka's ceiling for message.max.bytes and fetch.max.bytes.
RDKAFKA_MAX_BYTES = 1_000_000_000


class KafkaClients:
    """Client configuration of the service, and retrying client calls until a broker answers.

    Expects of the service: ``cfg``, ``group_id``, ``exactly_once``, ``range``, ``metrics``,
    ``annotator``, ``encoder``, ``worker``, ``stop_event``, the partition callbacks and ``_assign_range``.
    """

    cfg: ServiceConfig

    def client_settings(self) -> dict[str, Any]:
        """KafkaConfig as the settings mapping :mod:`broker_plugin.stream.kafka_config` understands."""
        k = self.cfg.kafka
        return {f.name: getattr(k, f.name) for f in dataclasses.fields(k)}

    def consumer_conf(self) -> dict[str, Any]:
        from broker_plugin.stream.kafka_config import consumer_config

        conf = consumer_config(self.client_settings(), group_id=self.group_id)
        conf["logger"] = _rdkafka_log
        conf["error_cb"] = self._on_kafka_error
        fetch_limits(conf, self.cfg.kafka.input_max_bytes)
        if self.cfg.observability.metrics_port:
            conf.setdefault("statistics.interval.ms", STATS_INTERVAL_MS)
        if "statistics.interval.ms" in conf:
            conf["stats_cb"] = self.metrics.on_stats
        if self.exactly_once:
            conf["enable.auto.commit"] = False  # offsets go through the transaction
        if self.range is not None and self.range.closed():
            # The end of a closed window's partition is where the consumer catches up with it:
            # librdkafka's partition-EOF event (not the ListOffsets high watermark, which Tansu
            # under-reports).
            conf["enable.partition.eof"] = True
        return conf

    def producer_conf(self) -> dict[str, Any]:
        from broker_plugin.stream.kafka_config import producer_config

        txn = None
        if self.exactly_once:
            txn = f"bal-broker-{self.group_id}-{os.getpid()}-{os.urandom(4).hex()}"
        conf = producer_config(self.client_settings(), transactional_id=txn)
        k = self.cfg.kafka
        conf.setdefault("message.max.bytes", min(max(k.output_max_bytes, k.dlq_max_bytes) + SIZE_HEADROOM,
                                                 RDKAFKA_MAX_BYTES))
        conf["logger"] = _rdkafka_log
        conf["error_cb"] = self._on_kafka_error
        return conf

    def _retry_until_stopped(self, what: str, fn: Callable[[], Any]) -> Any:
        """Call ``fn`` until it succeeds, backing off (broker unreachable at start), until stopped."""
        from confluent_kafka import KafkaException

        delay = 0.5
        while True:
            try:
                return fn()
            except KafkaException as exc:
                err = exc.args[0] if exc.args else exc
                if is_fatal(err):
                    raise ServiceStop(f"{what} failed fatally: {err}") from None
                log.warning("%s failed (%s); retrying in %.1f s", what, err, delay)
            if self._stopping():
                raise ServiceStop(f"stopped while waiting for {what}", EXIT_OK)
            self._sleep(delay)
            delay = min(delay * 2, 10.0)

    def _stopping(self) -> bool:
        return self.stop_event.is_set()

    def _sleep(self, seconds: float) -> None:
        """Sleep, but wake up at once on a stop request."""
        self.stop_event.wait(seconds)



    def start(self) -> None:
        """Create the clients (unless handed in), subscribe or assign, start the metrics endpoint."""
        from confluent_kafka import Consumer, Producer

        from broker_plugin.stream.kafka_config import redact

        cfg = self.cfg
        log.info("bal-broker %s service starting", __version__, extra={
            "event": "start", "group_id": self.group_id, "worker": f"{self.worker[0]}/{self.worker[1]}",
            "mode": "exactly_once" if self.exactly_once else "at_least_once",
            "model_version": self.annotator.model_version,
            "output_format": "wire" if self.encoder.wire_format else "container",
            "config": {s.name: redact(dataclasses.asdict(getattr(cfg, s.name))) for s in dataclasses.fields(cfg)},
        })
        if self.producer is None:
            self.producer = Producer(self.producer_conf())
        settle_heap()  # models and clients are loaded: keep the collector off them (pipeline.settle_heap)
        if self.exactly_once:
            self._retry_until_stopped("init_transactions", lambda: self.producer.init_transactions(10.0))
        if self.consumer is None:
            self.consumer = Consumer(self.consumer_conf())
        if cfg.observability.metrics_port:
            try:
                self.metrics_port = self.metrics.serve(cfg.observability.metrics_port)
            except OSError as exc:
                raise ServiceStop(f"observability.metrics_port {cfg.observability.metrics_port}: cannot serve "
                                  f"metrics there ({exc.strerror or exc})", EXIT_INPUT) from None
            log.info("metrics on port %d", self.metrics_port, extra={"event": "metrics", "port": self.metrics_port})
        if self.range is None:
            topics = list(cfg.kafka.input_topics)
            if cfg.kafka.input_pattern:
                pat = cfg.kafka.input_pattern
                topics.append(pat if pat.startswith("^") else "^" + pat)
            self.consumer.subscribe(topics, on_assign=self._on_assign, on_revoke=self._on_revoke,
                                    on_lost=self._on_lost)
            log.info("subscribed to %s in group %s", ", ".join(topics), self.group_id)
        else:
            self._assign_range()
        self._started = True


def secrets_of(cfg: ServiceConfig) -> list[str]:
    """Secret values in the configuration, for the log scrubber."""
    from broker_plugin.stream.kafka_config import is_secret_key

    k = cfg.kafka
    out = [v for v in (k.sasl_password, k.ssl_key_password) if v]
    out += url_secrets(cfg.history.url) + url_secrets(k.schema_registry_url)  # user:password@ in URLs
    for extra in (k.consumer_extra, k.producer_extra):
        out += [str(v) for key, v in extra.items() if v is not None and is_secret_key(str(key))]
    return out


def fetch_limits(conf: dict[str, Any], input_max_bytes: int) -> None:
    """Let a consumer fetch an input of ``input_max_bytes`` (``fetch.max.bytes`` and
    ``receive.message.max.bytes``, which librdkafka wants at least 512 bytes larger); settings from
    ``consumer_extra`` win, but the pair is kept consistent."""
    want = min(input_max_bytes + SIZE_HEADROOM, RDKAFKA_MAX_BYTES)
    conf.setdefault("fetch.max.bytes", max(DEFAULT_FETCH_MAX_BYTES, want))
    conf.setdefault("receive.message.max.bytes", max(DEFAULT_RECEIVE_MAX_BYTES, int(conf["fetch.max.bytes"]) + 512))
    if int(conf["receive.message.max.bytes"]) < int(conf["fetch.max.bytes"]) + 512:
        conf["fetch.max.bytes"] = int(conf["receive.message.max.bytes"]) - 512
