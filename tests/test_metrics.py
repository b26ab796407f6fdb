"""Prometheus metrics and structured logging of the service (no Kafka needed)."""

from __future__ import annotations

import io
import json
import logging
import urllib.request

import pytest

from broker_plugin.broker.embedded import find_free_port
from broker_plugin.stream.logs import JsonFormatter, RateLimitFilter, TextFormatter, register_secret, setup_logging
from broker_plugin.stream.metrics import Metrics, consumer_lag

# A trimmed librdkafka statistics document (STATISTICS.md layout): two topics, the internal
# partition -1, an unconsumed partition reporting -1.
STATS = json.dumps({
    "name": "bal-broker#consumer-1", "type": "consumer",
    "topics": {
        "ztf": {"partitions": {"0": {"consumer_lag": 5}, "1": {"consumer_lag": 7}, "-1": {"consumer_lag": -1}}},
        "lsst": {"partitions": {"0": {"consumer_lag": 0}, "1": {"consumer_lag": -1}}},
    },
})


def test_consumer_lag_sums_real_partitions() -> None:
    assert consumer_lag(STATS) == 12
    assert consumer_lag(json.dumps({"topics": {}})) is None
    assert consumer_lag("not json") is None


def test_metrics_are_served_over_http() -> None:
    m = Metrics()
    m.alerts_in.inc(10)
    m.alerts_out.inc(8)
    m.reject("corrupt_avro", 2)
    m.candidates.inc(3)
    m.observe_stage("decode", 0.5, 500)
    m.on_stats(STATS)
    port = m.serve(find_free_port(), addr="127.0.0.1")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        m.close()
    assert "bal_alerts_in_total 10.0" in text
    assert "bal_alerts_out_total 8.0" in text
    assert 'bal_alerts_rejected_total{reason="corrupt_avro"} 2.0' in text
    assert "bal_candidates_total 3.0" in text
    assert 'bal_stage_seconds_per_alert_count{stage="decode"} 1.0' in text
    assert 'bal_stage_seconds_per_alert_sum{stage="decode"} 0.001' in text
    assert "bal_consumer_lag 12.0" in text


def test_two_metric_sets_in_one_process_do_not_collide() -> None:
    a, b = Metrics(), Metrics()
    a.alerts_in.inc()
    assert "bal_alerts_in_total 1.0" in a.text() and "bal_alerts_in_total 0.0" in b.text()


def _record(msg: str, *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord("broker_plugin.stream.service", logging.INFO, __file__, 1, msg, args, None)
    for k, v in extra.items():
        setattr(rec, k, v)
    return rec


def test_json_lines_carry_the_structured_fields() -> None:
    line = JsonFormatter().format(_record("%d alerts", 5, event="progress", alerts_per_s=12.5))
    entry = json.loads(line)
    assert entry["msg"] == "5 alerts" and entry["level"] == "INFO" and entry["logger"] == "broker_plugin.stream.service"
    assert entry["event"] == "progress" and entry["alerts_per_s"] == 12.5
    assert entry["ts"].endswith("+00:00")
    assert "\n" not in line


def test_registered_secrets_never_reach_a_line() -> None:
    register_secret("hunter2-password")
    rec = _record("connecting with %s", "hunter2-password", config={"sasl.password": "hunter2-password"})
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(rec)
        assert "hunter2-password" not in line and "***" in line


@pytest.mark.parametrize("secret", ['pa"ss-word', "back\\slash-pw", 'both"\\-é-pw', "tab\tnew\nline-pw"])
def test_secrets_that_json_escapes_are_still_scrubbed(secret: str) -> None:
    """The scrub runs before serialisation: JSON would escape these characters and hide the secret
    from a scrub of the finished line."""
    register_secret(secret)
    rec = _record("login %s failed", secret, config={"sasl.password": secret, "list": [secret]}, err=ValueError(secret))
    for fmt in (JsonFormatter(), TextFormatter()):
        line = fmt.format(rec)
        assert secret not in line and json.dumps(secret)[1:-1] not in line, line
    assert json.loads(JsonFormatter().format(rec))["config"] == {"sasl.password": "***", "list": ["***"]}


def test_setup_logging_is_idempotent_and_text_format_works() -> None:
    stream = io.StringIO()
    root = logging.getLogger()
    before = list(root.handlers), root.level
    try:
        setup_logging("INFO", "text", stream)
        setup_logging("INFO", "text", stream)
        logging.getLogger("broker_plugin.test").info("hello", extra={"event": "x"})
        assert stream.getvalue().count("hello") == 1
        assert "event=x" in stream.getvalue()
    finally:
        for h in list(root.handlers):
            if h not in before[0]:
                root.removeHandler(h)
        root.setLevel(before[1])


def test_librdkafka_log_flood_is_rate_limited() -> None:
    f = RateLimitFilter(interval_s=10)
    passed = []
    for i in range(100):
        rec = _record("%s [%s] %s", "FAIL", "bal-broker#consumer-1", f"connect refused {i}")
        rec.created = 1000.0 + i * 0.05  # 5 s of reconnection attempts
        passed.append(f.filter(rec))
    assert sum(passed) == 1
    later = _record("%s [%s] %s", "FAIL", "bal-broker#consumer-1", "connect refused again")
    later.created = 1011.0
    assert f.filter(later) and later.suppressed == 99
