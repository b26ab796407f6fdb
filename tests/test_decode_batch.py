"""``Decoder.decode_batch`` gives, message for message, what ``Decoder.decode`` gives.

Why: the service and replay decode through the batch path (light curves built for the whole batch
in one vectorised call), while training, the examples and every other test decode one alert at a
time. A feature must be the same number in both, so the two paths must build identical Alerts --
light curves bit for bit -- and fail on the same messages with the same errors.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from broker_plugin.alert import Alert
from broker_plugin.decode import Decoder
from broker_plugin.decode import decoder as decoder_module
from broker_plugin.errors import DecodeError
from broker_plugin.photometry import lightcurve
from broker_plugin.pipeline import process_batch
from tests.test_fastread import _assert_same_alert, _messages


@pytest.fixture(scope="module")
def mixed_batch() -> list[bytes]:
    """Real ZTF and Rubin alerts (when ../shared/data is there), synthetic ones of both surveys with
    forced photometry, and damaged messages, shuffled into one batch."""
    from tests.conftest import SHARED_DATA

    msgs = _messages(SHARED_DATA if SHARED_DATA.is_dir() else None)
    try:
        from training.synthetic import packets

        msgs += [d for d, _t in packets.generate_night(150, seed=17, survey_mix={"ztf": 0.5, "lsst": 0.5})]
    except ImportError:
        pass
    if not msgs:
        pytest.skip("no alert messages available")
    rng = random.Random(3)
    damaged = [b"", b"\x00\x00\x00\x27\x0f" + b"\x01" * 20, msgs[0][: len(msgs[0]) // 2], b"Obj\x01garbage"]
    out = msgs + damaged
    rng.shuffle(out)
    return out


def _one_by_one(decoder: Decoder, payloads: list[bytes]) -> list[Alert | Exception]:
    out: list[Alert | Exception] = []
    for data in payloads:
        try:
            out.append(decoder.decode(data))
        except Exception as exc:
            out.append(exc)
    return out


def _assert_same_outcomes(got: list[Any], want: list[Any]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        if isinstance(w, Exception):
            assert type(g) is type(w) and str(g) == str(w)
            assert getattr(g, "reason", None) == getattr(w, "reason", None)
        else:
            assert isinstance(g, Alert), g
            _assert_same_alert(g, w)


def test_batch_decode_equals_decoding_each_message(mixed_batch: list[bytes]) -> None:
    decoder = Decoder()
    want = _one_by_one(decoder, mixed_batch)
    got = decoder.decode_batch(mixed_batch)
    _assert_same_outcomes(got, want)
    surveys = {a.survey for a in got if isinstance(a, Alert)}
    assert surveys == {"ztf", "lsst"}
    assert sum(isinstance(a, DecodeError) for a in got) >= 4
    assert any(a.upper_limits for a in got if isinstance(a, Alert))  # the ZTF limits came through too


def test_a_batch_failure_is_redone_alert_by_alert(mixed_batch: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    # the batch call breaks, and the one-alert call breaks on exactly one record: only its alert is lost
    decoder = Decoder()
    want = _one_by_one(decoder, mixed_batch)
    victim = next(a for a in want if isinstance(a, Alert) and a.survey == "ztf")
    real_one = lightcurve.ztf_lightcurves

    def broken_batch(records: Any) -> Any:
        raise RuntimeError("batch bug")

    def one(record: Any) -> Any:
        if record.get("objectId") == victim.object_id and record.get("candid") == int(victim.source_id):
            raise ZeroDivisionError("bug in one record")
        return real_one(record)

    monkeypatch.setitem(decoder_module._BATCH_LIGHTCURVES, "ztf", broken_batch)
    monkeypatch.setitem(decoder_module._ONE_LIGHTCURVE, "ztf", one)
    got = decoder.decode_batch(mixed_batch)
    lost = [i for i, g in enumerate(got) if isinstance(g, ZeroDivisionError)]
    assert len(lost) == 1 and want[lost[0]] is not None
    _assert_same_outcomes([g for i, g in enumerate(got) if i not in lost],
                          [w for i, w in enumerate(want) if i not in lost])


def test_process_batch_reports_a_light_curve_bug_as_an_internal_error_of_that_alert(
        mixed_batch: list[bytes], monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(records: Any) -> Any:
        raise RuntimeError("batch bug")

    def one(record: Any) -> Any:
        raise KeyError("always")

    monkeypatch.setitem(decoder_module._BATCH_LIGHTCURVES, "lsst", broken)
    monkeypatch.setitem(decoder_module._ONE_LIGHTCURVE, "lsst", one)

    class NoModels:
        def annotate_batch(self, alerts: list[Alert]) -> list[dict[str, Any]]:
            return [{"object_id": a.object_id} for a in alerts]

    pb = process_batch(NoModels(), mixed_batch)
    internal = [r for r in pb.rejects if r.reason == "internal_error"]
    assert internal and all(r.error_class == "KeyError" and r.stage == "decode" for r in internal)
    assert all(a.survey == "ztf" for a in pb.alerts)  # every Rubin alert hit the bug, no ZTF one did
    assert len(pb.records) + len(pb.rejects) == len(mixed_batch)
