"""The step life cycle of ALeRCE's pipeline steps (APF), as a small base the service fills in.

Why: the service is one loop of micro-batches, and naming its phases as separate overridable
methods -- ``start`` (pre-consume), ``consume``, ``execute``, ``produce``, ``post_produce`` (store
and commit offsets, back-pressure, budget), ``tear_down`` -- lets a subclass observe or replace one
phase (the benchmark worker does) and another transport or a test double slot in without touching
the processing. The loop itself, with its exit statuses, is :meth:`broker_plugin.stream.service.Service.run`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class Step:
    """One consume -> execute -> produce -> commit step; every phase is meant to be overridden."""

    def start(self) -> None:
        """Pre-consume: create clients, subscribe or assign, start side services."""

    def consume(self) -> list[Any]:
        """One micro-batch of input messages (possibly empty)."""
        raise NotImplementedError

    def execute(self, messages: Sequence[Any]) -> list[Any]:
        """Process a batch: one unit of outputs per input message."""
        raise NotImplementedError

    def produce(self, works: Sequence[Any]) -> None:
        """Hand the batch's outputs to the transport."""
        raise NotImplementedError

    def post_produce(self) -> None:
        """After each turn of the loop: commit what is done, apply limits, report."""

    def tear_down(self) -> None:
        """Drain and close, whatever ended the loop."""
