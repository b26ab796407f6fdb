"""Training data of the candidate scorer: synthetic alerts decoded by the plugin, rendered stamps, real stamps.

Every number the head sees is computed by the plugin's own decoder, feature and cutout code, so the
training set is what the runtime computes (no train/serve mismatch).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from broker_plugin.alert import Alert
from broker_plugin.models.scoring import cutouts_usable
from broker_plugin.photometry.cutouts import CHANNELS, SIZE, cutout_batch, stack_stamps
from broker_plugin.photometry.features import compute_features_batch

#: Population of the head's synthetic alerts. Richer in contaminants than the demo stream mix
#: (blazars in particular, the hardest negative) but still far richer in quasars than a real
#: stream: the head learns to separate classes; its probability is not a real-stream rate.
HEAD_CLASS_MIX: dict[str, float] = {"qso": 0.4, "star": 0.2, "sn": 0.15, "blazar": 0.1, "bogus": 0.15}
#: ZTF / Rubin share of the synthetic alerts (as :func:`training.synthetic.packets.iter_night`).
HEAD_SURVEY_MIX: dict[str, float] = {"ztf": 0.7, "lsst": 0.3}
#: Classes the head calls positive (see broker_plugin.models.scoring for why blazars are not).
POSITIVE_CLASSES: tuple[str, ...] = ("qso_bal", "qso_nonbal")
#: Share of rendered training stamps drawn at Rubin's cutout size (31 px) rather than ZTF's 63 px.
RUBIN_STAMP_SHARE = 0.3


@dataclass
class AlertSet:
    """Synthetic alerts decoded by the plugin, with everything the head needs, index-aligned."""

    alerts: list[Alert]
    classes: np.ndarray  # str, population.CLASSES
    labels: np.ndarray  # int8, 1 = quasar (POSITIVE_CLASSES)
    morphology: np.ndarray  # str, the stamp kind the packet writer rendered
    features: np.ndarray  # [N, len(FEATURE_NAMES)] float64
    tensors: np.ndarray  # [N, CHANNELS, SIZE, SIZE] float32
    cutout_flags: list[list[str]]
    no_forced: np.ndarray  # bool, ZTF alerts stripped of forced photometry (old-schema look-alikes)

    def __len__(self) -> int:
        return len(self.alerts)

    def subset(self, idx: np.ndarray) -> AlertSet:
        return AlertSet(
            [self.alerts[i] for i in idx], self.classes[idx], self.labels[idx], self.morphology[idx],
            self.features[idx], self.tensors[idx], [self.cutout_flags[i] for i in idx], self.no_forced[idx],
        )


def synthetic_alert_set(
    n: int,
    seed: int,
    *,
    class_mix: Mapping[str, float] | None = None,
    survey_mix: Mapping[str, float] | None = None,
    ztf_no_forced_fraction: float = 0.0,
) -> AlertSet:
    """``n`` synthetic alerts, packet bytes -> ``decode_alert`` -> features, tensors (the runtime path).

    ``ztf_no_forced_fraction`` of the ZTF alerts lose their forced photometry (``fp_hists``) before
    normalisation, through :func:`broker_plugin.decode.alert_from_record` (the runtime's own path for
    decoded records): that is what every alert of ZTF schemas before 4.x looks like, and most
    archived alerts are of those. Their quasars then have a handful of >= 5 sigma difference
    detections (median 1 point), not ~17 points of forced photometry, and the head must not learn
    "few points = not a quasar" from the generator's schema-4.02-only packets.
    """
    from broker_plugin.decode import alert_from_record, decode_alert
    from training.synthetic.packets import iter_night

    rng = np.random.default_rng([seed, 3])
    alerts: list[Alert] = []
    classes: list[str] = []
    morph: list[str] = []
    no_forced: list[bool] = []
    for packet, truth in iter_night(n, survey_mix or HEAD_SURVEY_MIX, seed, class_mix=class_mix or HEAD_CLASS_MIX,
                                    stamps=True):
        alert = decode_alert(packet)
        strip = alert.survey == "ztf" and rng.random() < ztf_no_forced_fraction
        if strip:
            record = {**alert.record, "fp_hists": None}
            alert = alert_from_record(record, schema_version=alert.schema_version, raw=packet)
        alerts.append(alert)
        classes.append(str(truth["label"]))
        morph.append(str(truth.get("morphology", "point")))
        no_forced.append(strip)
    features, _ = compute_features_batch([a.lightcurves for a in alerts])
    tensors, cflags = cutout_batch([a.cutouts for a in alerts])
    cls = np.asarray(classes, dtype=str)
    return AlertSet(alerts, cls, np.isin(cls, POSITIVE_CLASSES).astype(np.int8), np.asarray(morph, dtype=str),
                    np.asarray(features, dtype=np.float64), tensors, cflags, np.asarray(no_forced, dtype=bool))


def rendered_stamps(n: int, rng: np.random.Generator, rubin_share: float = RUBIN_STAMP_SHARE) -> tuple[np.ndarray,
                                                                                                        np.ndarray]:
    """``n`` rendered triplets of every stamp kind, stacked as the runtime does, and their kinds.

    Part of them at Rubin's 31 px (padded to 32 by :func:`stack_stamps`, as real Rubin cutouts
    are), so the encoder learns both surveys' geometry.
    """
    from training.synthetic.stamps import KINDS, render_dataset

    n_rubin = round(n * rubin_share)
    parts, labels = [], []
    for count, size in ((n - n_rubin, 63), (n_rubin, 31)):
        if count <= 0:
            continue
        trip, lab = render_dataset(count, rng, KINDS, size=size)
        parts.append(np.stack([stack_stamps(t)[0] for t in trip]))
        labels.append(lab)
    if not parts:
        return np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), np.zeros(0, dtype=str)
    x = np.concatenate(parts).astype(np.float32)
    y = np.concatenate(labels)
    order = rng.permutation(len(y))
    return x[order], y[order]


def real_stamp_tensors(dirs: Sequence[str | Path]) -> tuple[np.ndarray, int]:
    """Tensors of every decodable alert file (``*.avro``, recursively) with usable cutouts, and the
    number of files read. Unreadable files are skipped: they are optional extra training images."""
    from broker_plugin.decode import decode_alert
    from broker_plugin.errors import BalBrokerError

    cutouts = []
    n_files = 0
    for d in dirs:
        for path in sorted(Path(d).rglob("*.avro")):
            n_files += 1
            try:
                cutouts.append(decode_alert(path.read_bytes()).cutouts)
            except (BalBrokerError, OSError):
                continue
    if not cutouts:
        return np.zeros((0, CHANNELS, SIZE, SIZE), np.float32), n_files
    x, flags = cutout_batch(cutouts)
    return x[cutouts_usable(flags)], n_files


def split_by_class(classes: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (by class) train / test indices; classes too small to split go to training."""
    rng = np.random.default_rng([seed, 7])
    train, test = [], []
    for c in sorted(set(classes.tolist())):
        idx = np.flatnonzero(classes == c)
        rng.shuffle(idx)
        k = round(len(idx) * test_fraction) if len(idx) >= 2 else 0
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))
