"""Hostile cutouts: memory is bounded per stamp and per batch, and no alert is lost for it.

A real ZTF alert whose stamps are replaced by a *gzip bomb* (a FITS header declaring 2000x2000
float32 pixels and then zeros: ~16 kB of gzip that inflates to ~15 MiB) must be annotated without
cutouts, flag ``cutouts_dropped_size``, without inflating past the pixel cap's bound; a batch of
eight such alerts must stay far below the ~1.6 GB the unbounded code needed; a batch past its
budget of inflated bytes flags the later alerts ``cutouts_dropped_budget`` and still annotates
them. Real stamps give the same tensors, bit for bit, as decoding them in full.
"""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import fastavro
import numpy as np
import pytest

from broker_plugin.decode import decode_alert
from broker_plugin.photometry import cutouts as C
from broker_plugin.photometry.cutouts import (
    FLAG_DROPPED_BUDGET,
    FLAG_DROPPED_SIZE,
    CutoutBudgetError,
    CutoutSizeError,
    InflateBudget,
    cutout_batch,
    cutout_limits,
    decode_stamp,
    stack_stamps,
)
from broker_plugin.photometry.stamp_fits import DEFAULT_MAX_STAMP_PIXELS, inflate_bound

REPO_ROOT = Path(__file__).resolve().parent.parent
KINDS = ("cutoutScience", "cutoutTemplate", "cutoutDifference")
BOMB_SIDE = 2000  # 2000 x 2000 float32 = 15.3 MiB inflated, below the old 16 MiB guard


def _header(n1: int, n2: int, bitpix: int = -32) -> bytes:
    cards = [f"SIMPLE  = {'T':>20}", f"BITPIX  = {bitpix:>20}", f"NAXIS   = {2:>20}",
             f"NAXIS1  = {n1:>20}", f"NAXIS2  = {n2:>20}", "END"]
    head = b"".join(c.ljust(80).encode("ascii") for c in cards)
    return head + b" " * (-len(head) % 2880)


def _bomb(side: int = BOMB_SIDE) -> bytes:
    """A valid gzipped FITS stamp of ``side`` x ``side`` zeros: a few kB that inflate to 4 * side^2."""
    body = bytes(4 * side * side)
    return gzip.compress(_header(side, side) + body + bytes(-len(body) % 2880), compresslevel=9, mtime=0)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    return _bomb()


def _rewrite(path: Path, stamp: bytes | None, kinds: tuple[str, ...] = KINDS) -> bytes:
    """The alert file re-encoded with its own schema, the given cutouts' stampData replaced."""
    with path.open("rb") as f:
        reader = fastavro.reader(f)
        schema, records = reader.writer_schema, list(reader)
    for rec in records:
        for kind in kinds:
            rec[kind]["stampData"] = stamp
    out = io.BytesIO()
    fastavro.writer(out, schema, records)
    return out.getvalue()


@pytest.fixture(scope="module")
def annotator() -> Any:
    from broker_plugin.models.annotate import Annotator, load_model_stage

    stage = load_model_stage(None)
    if stage is None:
        pytest.skip("no default model bundle")
    return Annotator(stage)


def _process(annotator: Any, payloads: list[bytes], budget: int | None = None) -> Any:
    """process_batch, as the service calls it: with the configured budget (the defaults when None)."""
    from broker_plugin.config import ProcessingConfig
    from broker_plugin.pipeline import process_batch

    processing = ProcessingConfig() if budget is None else ProcessingConfig(batch_inflated_bytes=budget)
    out = process_batch(annotator, payloads, processing=processing)
    assert not out.rejects, out.rejects
    return out


# --------------------------------------------------------------------------------------------------
# One stamp
# --------------------------------------------------------------------------------------------------


def test_bomb_is_refused_within_the_inflate_bound(bomb: bytes) -> None:
    assert len(bomb) < 20_000 and len(gzip.decompress(bomb)) > 15 * 2**20  # it is a bomb
    budget = InflateBudget(1 << 30)
    with pytest.raises(CutoutSizeError):
        decode_stamp(bomb, max_pixels=DEFAULT_MAX_STAMP_PIXELS, budget=budget)
    assert budget.used_bytes <= inflate_bound(DEFAULT_MAX_STAMP_PIXELS) < 200_000


def test_a_header_over_the_cap_is_refused_before_the_pixels_are_read() -> None:
    small_gzip = gzip.compress(_header(129, 128) + bytes(4 * 129 * 128 + 2880))
    with pytest.raises(CutoutSizeError, match="more than the cap"):
        decode_stamp(small_gzip, max_pixels=128 * 128)
    plain = _header(4000, 4000) + bytes(2880)  # plain FITS (Rubin-like), header lies about the size
    with pytest.raises(CutoutSizeError):
        decode_stamp(plain, max_pixels=DEFAULT_MAX_STAMP_PIXELS)
    # A small header followed by megabytes of padding inflates past the bound: refused too.
    padded = gzip.compress(_header(63, 63) + bytes(4 * 2**20))
    with pytest.raises(CutoutSizeError, match="decompresses to more than"):
        decode_stamp(padded, max_pixels=DEFAULT_MAX_STAMP_PIXELS)


def test_budget_bounds_the_inflate(ztf_alert_files: list[Path]) -> None:
    stamp = decode_alert(ztf_alert_files[0].read_bytes()).cutouts["science"]
    assert stamp
    need = len(gzip.decompress(stamp))
    budget = InflateBudget(need - 1)
    with pytest.raises(CutoutBudgetError):
        decode_stamp(stamp, max_pixels=DEFAULT_MAX_STAMP_PIXELS, budget=budget)
    budget = InflateBudget(need)
    decode_stamp(stamp, max_pixels=DEFAULT_MAX_STAMP_PIXELS, budget=budget)
    assert budget.used_bytes == need and budget.remaining == 0
    with pytest.raises(CutoutBudgetError):
        decode_stamp(stamp, budget=budget)


# --------------------------------------------------------------------------------------------------
# Real stamps are unaffected, bit for bit
# --------------------------------------------------------------------------------------------------


def test_real_tensors_equal_decoding_stamps_in_full(ztf_alert_files: list[Path], lsst_alert_files: list[Path]) -> None:
    cut = [decode_alert(p.read_bytes()).cutouts for p in [*ztf_alert_files[:60], *lsst_alert_files]]
    batch, flags = cutout_batch(cut)
    for i, c in enumerate(cut):
        full = {k: (decode_stamp(v) if v else None) for k, v in c.items()}
        ref, more = stack_stamps(full)
        assert np.array_equal(batch[i].view(np.uint32), ref.view(np.uint32)), i
        assert not any(f.startswith("cutouts_dropped") for f in flags[i])
        assert [f for f in flags[i] if not f.startswith("cutout_missing")] == more


# --------------------------------------------------------------------------------------------------
# Through the pipeline
# --------------------------------------------------------------------------------------------------


def test_bomb_alert_is_annotated_without_cutouts(ztf_alert_files: list[Path], bomb: bytes, annotator: Any) -> None:
    real = [p.read_bytes() for p in ztf_alert_files[:3]]
    hostile = _rewrite(ztf_alert_files[1], bomb, ("cutoutScience",))
    assert len(hostile) < 100_000
    plain = _process(annotator, real)
    mixed = _process(annotator, [real[0], hostile, real[2]])
    assert len(mixed.records) == 3
    rec = mixed.records[1]
    assert FLAG_DROPPED_SIZE in rec["flags"] and "no_cutouts" in rec["flags"]
    assert rec["candidate_score"] is None
    assert rec["source_id"] == plain.records[1]["source_id"]
    for i in (0, 2):  # the neighbours are untouched
        assert json.dumps(mixed.records[i], sort_keys=True, default=str) == json.dumps(
            plain.records[i], sort_keys=True, default=str)


def test_budget_spent_flags_the_later_alerts_and_still_annotates_them(
    ztf_alert_files: list[Path], annotator: Any
) -> None:
    payloads = [p.read_bytes() for p in ztf_alert_files[:6]]
    per_alert = [sum(len(gzip.decompress(s)) for s in decode_alert(b).cutouts.values() if s) for b in payloads]
    plain = _process(annotator, payloads)
    tight = _process(annotator, payloads, budget=sum(per_alert[:2]))
    assert len(tight.records) == len(payloads)
    for i, rec in enumerate(tight.records):
        if i < 2:
            assert json.dumps(rec, sort_keys=True, default=str) == json.dumps(
                plain.records[i], sort_keys=True, default=str)
        else:
            assert FLAG_DROPPED_BUDGET in rec["flags"] and rec["candidate_score"] is None
            assert rec["features"] == plain.records[i]["features"]
    # The next batch has a budget of its own.
    again = _process(annotator, payloads[:2], budget=sum(per_alert[:2]))
    assert not any(FLAG_DROPPED_BUDGET in r["flags"] for r in again.records)


def test_cutout_limits_nest_and_restore() -> None:
    assert C.active_limits().max_pixels == DEFAULT_MAX_STAMP_PIXELS
    with cutout_limits(max_stamp_pixels=64 * 64, batch_inflated_bytes=1 << 20) as lim:
        assert C.active_limits() is lim and lim.budget().limit_bytes == 1 << 20
        with cutout_limits() as inner:
            assert inner.max_pixels == DEFAULT_MAX_STAMP_PIXELS
        assert C.active_limits() is lim
    assert C.active_limits().max_pixels == DEFAULT_MAX_STAMP_PIXELS


_MEMORY_SCRIPT = textwrap.dedent("""
    import json, resource, sys
    from pathlib import Path
    from broker_plugin.models.annotate import Annotator, load_model_stage
    from broker_plugin.pipeline import process_batch
    real, *bombs = [Path(p).read_bytes() for p in sys.argv[1:]]
    annotator = Annotator(load_model_stage(None))
    for _ in range(3):  # warm up: models, arenas, the cutout and encoder paths
        process_batch(annotator, [real] * 8)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = process_batch(annotator, bombs)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"growth_kb": after - before, "records": len(out.records),
                      "flags": [r["flags"] for r in out.records]}))
""")


def test_a_batch_of_eight_bombs_stays_small(ztf_alert_files: list[Path], bomb: bytes, tmp_path: Path) -> None:
    paths = [str(ztf_alert_files[0])]
    for i, src in enumerate(ztf_alert_files[:8]):
        p = tmp_path / f"bomb{i}.avro"
        p.write_bytes(_rewrite(src, bomb))  # all three stamps: ~45 MiB inflated per alert
        paths.append(str(p))
    res = subprocess.run([sys.executable, "-c", _MEMORY_SCRIPT, *paths], capture_output=True, text=True,
                         cwd=REPO_ROOT, timeout=300, check=False)
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout.strip().splitlines()[-1])
    assert report["records"] == 8
    assert all(FLAG_DROPPED_SIZE in f for f in report["flags"])
    assert report["growth_kb"] < 200 * 1024, f"peak RSS grew {report['growth_kb'] / 1024:.0f} MiB"


def test_bombs_do_not_spend_the_budget_of_the_real_alerts_after_them(
    ztf_alert_files: list[Path], bomb: bytes, annotator: Any
) -> None:
    """Twenty bombs, then real alerts, under a budget that holds only the real alerts' stamps: the
    bombs are refused at the pixel bound without being charged, so the real alerts keep their cutouts."""
    real = [p.read_bytes() for p in ztf_alert_files[:3]]
    per_alert = [sum(len(gzip.decompress(s)) for s in decode_alert(b).cutouts.values() if s) for b in real]
    bombs = [_rewrite(ztf_alert_files[0], bomb)] * 20
    out = _process(annotator, bombs + real, budget=sum(per_alert) + 1024)
    assert all(FLAG_DROPPED_SIZE in r["flags"] for r in out.records[:20])
    for rec in out.records[20:]:
        assert FLAG_DROPPED_BUDGET not in rec["flags"] and FLAG_DROPPED_SIZE not in rec["flags"]
