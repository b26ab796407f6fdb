"""Pure-logic parts of the service (no broker): offset tracking, error budget, worker plumbing."""

from __future__ import annotations

import random

import pytest

from broker_plugin.config import load_config
from broker_plugin.stream.error_budget import ErrorBudget
from broker_plugin.stream.offsets import OffsetTracker
from broker_plugin.stream.outputs import dlq_headers
from broker_plugin.stream.time_range import TimeRange
from broker_plugin.stream.workers import child_env, exit_status, worker_from_env


def test_offsets_advance_only_over_fully_acknowledged_runs() -> None:
    t = OffsetTracker()
    e = [t.begin("in", 0, off, outputs=2 if off == 11 else 1) for off in (10, 11, 12, 13)]
    t.done(e[2])  # 12 acknowledged before 10 and 11: nothing may be stored yet
    assert t.advanced() == []
    t.done(e[0])
    assert t.advanced() == [("in", 0, 11)]
    t.done(e[1])  # one of 11's two outputs
    t.done(e[3])
    assert t.advanced() == []
    t.done(e[1])
    assert t.advanced() == [("in", 0, 14)]
    assert t.pending == 0


def test_random_acknowledgement_order_never_stores_past_a_gap() -> None:
    rng = random.Random(7)
    t = OffsetTracker()
    entries = {}
    for off in range(0, 400, 2):  # offsets with gaps (compaction, transaction markers)
        entries[off] = t.begin("in", 3, off, outputs=rng.choice([1, 2]))
    pending = [(off, k) for off, e in entries.items() for k in range(e.remaining)]
    rng.shuffle(pending)
    stored = -1
    for off, _ in pending:
        t.done(entries[off])
        for topic, part, nxt in t.advanced():
            assert (topic, part) == ("in", 3) and nxt > stored
            stored = nxt
            assert all(e.remaining == 0 for o, e in entries.items() if o < nxt)
    assert stored == 399


def test_messages_without_outputs_are_done_at_once_and_revoked_partitions_forgotten() -> None:
    t = OffsetTracker()
    t.begin("in", 0, 0, outputs=0)
    a = t.begin("in", 1, 5, outputs=1)
    assert t.advanced() == [("in", 0, 1)]
    assert t.forget([("in", 1)]) == 1 and t.pending == 0
    t.done(a)  # a late delivery report of a forgotten partition changes nothing
    assert t.advanced() == [] and t.pending == 0


def test_error_budget_window() -> None:
    b = ErrorBudget(max_errors=2, window_s=10)
    for now in (0.0, 1.0, 2.0):
        b.add(now, "corrupt_avro")
    assert b.exhausted(2.0)
    assert not b.exhausted(10.5)  # the first one left the window: 2 left, not more than 2
    assert b.reasons() == {"corrupt_avro": 2}


def test_time_range_from_config() -> None:
    cfg = load_config(overrides={"kafka": {"input_topics": ["a"]},
                                 "processing": {"time_from": "2020-01-01T00:00:00Z", "time_to": "1577923200000"}},
                      environ={})
    r = TimeRange.from_config(cfg)
    assert r is not None and (r.start_ms, r.end_ms) == (1577836800000, 1577923200000)
    assert r.closed() and r.suffix() == "range-1577836800000-1577923200000"
    assert TimeRange.from_config(load_config(overrides={"kafka": {"input_topics": ["a"]}}, environ={})) is None


class _Msg:
    def topic(self) -> str:
        return "ztf_20240501"

    def partition(self) -> int:
        return 3

    def offset(self) -> int:
        return 42

    def timestamp(self) -> tuple[int, int]:
        return (1, 1714521600000)


def test_dlq_headers_name_the_error_and_the_source() -> None:
    from broker_plugin import __version__

    h = dict(dlq_headers(_Msg(), error_class="DecodeError", reason="truncated", message="ends\nearly", stage="decode"))
    assert h == {
        "bal_error_class": "DecodeError", "bal_error_reason": "truncated", "bal_error_message": "ends early",
        "bal_error_stage": "decode", "bal_source_topic": "ztf_20240501", "bal_source_partition": "3",
        "bal_source_offset": "42", "bal_source_timestamp": "1714521600000", "bal_source": "ztf_20240501/3/42",
        "bal_plugin_version": __version__,
    }


@pytest.mark.parametrize(("raw", "want"), [("1/3", (1, 3)), ("", (0, 1)), ("3/3", (0, 1)), ("x", (0, 1))])
def test_worker_identity_from_environment(raw: str, want: tuple[int, int]) -> None:
    assert worker_from_env({"BAL_BROKER_WORKER": raw}) == want


def test_each_worker_gets_its_own_metrics_port() -> None:
    cfg = load_config(overrides={"kafka": {"input_topics": ["a"]}, "observability": {"metrics_port": 9100}},
                      environ={})
    env = child_env(2, 4, cfg, base={})
    assert env["BAL_BROKER_WORKER"] == "2/4"
    assert env["BAL_BROKER__OBSERVABILITY__METRICS_PORT"] == "9102"
    assert exit_status(-9) == 137 and exit_status(2) == 2
