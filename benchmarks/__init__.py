"""Benchmarks of bal-broker: throughput, latency and memory against the physical floor.

``make bench`` (``python -m benchmarks.run``) measures, in one run so that ratios are stable on a
noisy machine: the floor (bare fastavro decoding of the same packets), the cost of every pipeline
stage per alert, and the service end to end through the embedded broker (sustained alerts/s on one
core, latency at an offered rate, a 10,000-alert burst, peak RSS, one worker versus two). Results go
to ``benchmarks/results/latest.json`` and ``latest.md``; the README quotes the committed ones.

Modules: :mod:`.corpus` (the input alerts), :mod:`.machine` (what it ran on), :mod:`.stages`
(floor and per-stage costs, in process), :mod:`.e2e` (service runs through the broker) with
:mod:`.worker` (the pinned service process), :mod:`.report` (JSON and Markdown), :mod:`.run` (CLI).
"""
