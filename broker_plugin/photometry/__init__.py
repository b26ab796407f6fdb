"""Photometry: what the pipeline measures on an alert.

Per-band light curves built from the packet's records (``lightcurve``), the single ordered list of
named features (``features``) with the damped-random-walk and structure-function fits behind some
of them (``variability``), and the cutout tensors the image encoder reads (``cutouts``).
Depends only on :mod:`broker_plugin.alert` and :mod:`broker_plugin.errors`; decoding, models and
the runners sit above it.
"""
