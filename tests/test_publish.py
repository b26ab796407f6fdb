"""``publish``: archived alerts reach the topic byte for byte, paced, with every failure counted.

Why these checks: the streaming tests and the demo trust that what ``publish`` sends is exactly
what the real ZTF/Rubin streams would deliver (one alert per message, unchanged bytes), and a
replay tool that silently drops messages would make every downstream count meaningless.
"""

from __future__ import annotations

import hashlib
import io
import tarfile
import time
from pathlib import Path

import pytest

from broker_plugin.broker.embedded import EmbeddedBroker, find_free_port
from broker_plugin.broker.publish import PublishError, PublishStats, TokenBucket, object_id_key, publish
from broker_plugin.errors import ConfigError
from tests.kafka_helpers import TopicFactory, read_topic

pytest_plugins = ["tests.kafka_fixtures"]


def _fake_alerts(folder: Path, n: int, size: int = 2000) -> list[Path]:
    """Files with distinct, arbitrary bytes: publish must not care what is inside."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        path = folder / f"alert_{i:03d}.avro"
        path.write_bytes(hashlib.sha256(str(i).encode()).digest() * (size // 32) + bytes([i % 256]))
        paths.append(path)
    return paths


# -- no broker needed ----------------------------------------------------------------------------


class _FakeClock:
    def __init__(self, overshoot: float) -> None:
        self.now = 100.0
        self.overshoot = overshoot

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds * (1 + self.overshoot)


@pytest.mark.parametrize("overshoot", [0.0, 0.3, 0.9])
def test_token_bucket_does_not_drift_when_sleeps_overshoot(overshoot: float) -> None:
    """100 events at 10/s take ~9.9 s of clock time even if every sleep runs long."""
    clock = _FakeClock(overshoot)
    bucket = TokenBucket(10, clock=clock)
    start = clock.now
    for _ in range(100):
        bucket.acquire(clock.sleep)
    assert 9.9 - 1e-6 <= clock.now - start <= 9.9 + 0.1 * (1 + overshoot)


def test_token_bucket_reaches_high_rates_with_coarse_sleeps() -> None:
    """At 5000/s the interval (0.2 ms) is shorter than a real sleep (here always >= 1 ms)."""
    clock = _FakeClock(0.0)
    bucket = TokenBucket(5000, clock=clock)

    def coarse_sleep(seconds: float) -> None:
        clock.now += max(seconds, 0.001)

    start = clock.now
    for _ in range(5000):
        bucket.acquire(coarse_sleep)
    assert 0.99 <= clock.now - start <= 1.01


def test_token_bucket_burst_after_a_stall_is_bounded() -> None:
    clock = _FakeClock(0.0)
    bucket = TokenBucket(10, burst=3, clock=clock)
    bucket.acquire(clock.sleep)
    clock.now += 60  # a slow tarball read
    sent_without_waiting = 0
    while bucket.delay() == 0:
        bucket.acquire(clock.sleep)
        sent_without_waiting += 1
    assert sent_without_waiting <= 4


def test_rate_must_be_positive() -> None:
    with pytest.raises(ConfigError):
        TokenBucket(0)


def test_missing_input_is_a_usage_error_before_connecting(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        publish([tmp_path / "nope.avro"], "t", f"127.0.0.1:{find_free_port()}")


def test_unreachable_broker_fails_fast_with_one_line(tmp_path: Path) -> None:
    paths = _fake_alerts(tmp_path, 1)
    t0 = time.monotonic()
    with pytest.raises(PublishError, match="cannot reach Kafka"):
        publish(paths, "t", f"127.0.0.1:{find_free_port()}", connect_timeout=1)
    assert time.monotonic() - t0 < 5


def test_object_id_key_never_raises() -> None:
    assert object_id_key(b"definitely not an alert") is None


def test_summary_line() -> None:
    stats = PublishStats(read=3, produced=3, delivered=2, failed=1, elapsed_s=2.0, bytes_delivered=2_000_000)
    assert stats.summary().startswith("2/3 messages delivered, 1 failed")
    assert not stats.ok


# -- against the session broker ------------------------------------------------------------------


@pytest.mark.kafka
def test_publish_files_arrive_byte_for_byte_in_order(tmp_path: Path, kafka_broker: EmbeddedBroker,
                                                     topic_factory: TopicFactory) -> None:
    topic = topic_factory("pub")
    paths = _fake_alerts(tmp_path / "in", 12)
    stats = publish(paths, topic, kafka_broker.bootstrap, key_fn=None)
    assert stats.ok and (stats.read, stats.produced, stats.delivered, stats.failed) == (12, 12, 12, 0)
    got = read_topic(kafka_broker.bootstrap, topic, 12)
    assert [m.value() for m in got] == [p.read_bytes() for p in paths]
    assert all(m.key() is None for m in got)


@pytest.mark.kafka
def test_publish_directory_and_tarball_with_keys(tmp_path: Path, kafka_broker: EmbeddedBroker,
                                                 topic_factory: TopicFactory) -> None:
    """Directories (non-.avro files skipped and counted) and tarballs go through sources.iter_inputs;
    keys come from key_fn."""
    topic = topic_factory("pubdir")
    folder = tmp_path / "night"
    dir_files = _fake_alerts(folder, 4)
    (folder / "README.txt").write_text("not an alert")
    tar_path = tmp_path / "ztf_public_20240101.tar.gz"
    tar_payloads = [b"tar-alert-%d" % i * 100 for i in range(3)]
    with tarfile.open(tar_path, "w:gz") as tar:
        for i, payload in enumerate(tar_payloads):
            info = tarfile.TarInfo(f"{i}.avro")
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))

    def key(value: bytes) -> str:
        return hashlib.sha1(value).hexdigest()[:8]

    stats = publish([folder, tar_path], topic, kafka_broker.bootstrap, key_fn=key)
    assert stats.ok and stats.delivered == 7 and stats.skipped == 1
    expected = [p.read_bytes() for p in dir_files] + tar_payloads
    got = read_topic(kafka_broker.bootstrap, topic, 7)
    assert [m.value() for m in got] == expected
    assert [m.key() for m in got] == [key(v).encode() for v in expected]


@pytest.mark.kafka
def test_publish_real_alerts_keyed_by_object_id(kafka_broker: EmbeddedBroker, topic_factory: TopicFactory,
                                                ztf_alert_files: list[Path], lsst_alert_files: list[Path]) -> None:
    """Real ZTF containers and Rubin wire-format files, unchanged; key = object id when it decodes."""
    topic = topic_factory("pubreal")
    paths = ztf_alert_files[:5] + lsst_alert_files[:3]
    if not paths:
        pytest.skip("no real alert files in the shared data folder")
    stats = publish(paths, topic, kafka_broker.bootstrap)
    assert stats.ok and stats.delivered == len(paths)
    got = read_topic(kafka_broker.bootstrap, topic, len(paths))
    assert [m.value() for m in got] == [p.read_bytes() for p in paths]
    for msg, path in zip(got, paths, strict=True):
        expected = object_id_key(path.read_bytes())
        assert msg.key() == (expected.encode() if expected is not None else None)


@pytest.mark.kafka
def test_publish_rate_paces_the_stream(tmp_path: Path, kafka_broker: EmbeddedBroker,
                                       topic_factory: TopicFactory) -> None:
    """25 messages at 50/s: the 25th may leave at 24/50 = 0.48 s. A correctness check on the
    limiter, with a loose upper bound only to catch a limiter that stalls."""
    topic = topic_factory("rate")
    paths = _fake_alerts(tmp_path, 25, size=500)
    t0 = time.monotonic()
    stats = publish(paths, topic, kafka_broker.bootstrap, rate=50, key_fn=None)
    elapsed = time.monotonic() - t0
    assert stats.delivered == 25
    assert 0.4 <= elapsed < 5.0


@pytest.mark.kafka
def test_delivery_errors_are_counted_not_lost(tmp_path: Path, kafka_broker: EmbeddedBroker) -> None:
    """A topic the broker rejects: every message comes back as a counted failure with the reason."""
    paths = _fake_alerts(tmp_path, 3)
    stats = publish(paths, "not a valid topic!", kafka_broker.bootstrap, key_fn=None, flush_timeout=10)
    assert (stats.produced, stats.delivered, stats.failed) == (3, 0, 3)
    assert not stats.ok and len(stats.errors) == 3 and "alert_000.avro" in stats.errors[0]


@pytest.mark.kafka
def test_oversized_message_is_refused_and_counted(tmp_path: Path, kafka_broker: EmbeddedBroker,
                                                  topic_factory: TopicFactory) -> None:
    topic = topic_factory("big")
    small = _fake_alerts(tmp_path / "small", 2, size=500)
    big = tmp_path / "big.avro"
    big.write_bytes(b"x" * 50_000)
    progress_calls: list[int] = []
    stats = publish([small[0], big, small[1]], topic, kafka_broker.bootstrap, key_fn=None,
                    settings={"message.max.bytes": 10_000},
                    progress=lambda s: progress_calls.append(s.delivered))
    assert (stats.delivered, stats.refused, stats.failed) == (2, 1, 1)
    assert "big.avro" in stats.errors[0]
    assert progress_calls and progress_calls[-1] == 2  # the final report is always made
    assert [m.value() for m in read_topic(kafka_broker.bootstrap, topic, 2)] == [p.read_bytes() for p in small]


@pytest.mark.kafka
def test_publish_command_line(tmp_path: Path, kafka_broker: EmbeddedBroker, topic_factory: TopicFactory,
                              monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    """``bal-broker publish INPUT... --topic T --bootstrap HOST:PORT``: summary on stdout, exit 0."""
    from broker_plugin import cli

    monkeypatch.setitem(cli.SUBCOMMANDS, "publish", "broker_plugin.broker.publish:add_parser")
    topic = topic_factory("cli")
    folder = tmp_path / "alerts"
    _fake_alerts(folder, 3)
    code = cli.main(["publish", str(folder), "--topic", topic, "--bootstrap", kafka_broker.bootstrap, "--no-key"])
    assert code == 0
    assert capsys.readouterr().out.startswith("3/3 messages delivered, 0 failed")
    assert cli.main(["publish", str(tmp_path / "missing"), "--topic", topic]) == 2
