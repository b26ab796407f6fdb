"""``settle_heap``: start-up objects frozen out of the garbage collector's passes, young collections rarer."""

from __future__ import annotations

import gc
from collections.abc import Iterator

import pytest

from broker_plugin.pipeline import GC_GEN0_THRESHOLD, settle_heap


@pytest.fixture
def restore_gc() -> Iterator[None]:
    before = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*before)


def test_settle_heap_freezes_start_up_objects_and_raises_the_young_threshold(restore_gc: None) -> None:
    gc.unfreeze()
    gc.set_threshold(700, 10, 10)
    start_up = [{"model": i} for i in range(100)]  # stands for the loaded models and schemas
    settle_heap()
    assert gc.get_freeze_count() >= len(start_up)
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD, 10, 10)
    assert gc.isenabled()  # rarer, not off: reference cycles are still collected


def test_settle_heap_never_lowers_a_higher_threshold(restore_gc: None) -> None:
    gc.set_threshold(GC_GEN0_THRESHOLD * 3, 5, 5)
    settle_heap()
    assert gc.get_threshold() == (GC_GEN0_THRESHOLD * 3, 5, 5)
