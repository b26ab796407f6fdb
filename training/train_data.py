"""Training data for ``bal-broker train``: synthetic or DR16Q + spec-lite + IRSA, spectra preprocessed.

Step 1 ("data") of :mod:`training.train`, in a module of its own because loading real catalogues is
a story by itself (input checks, spectra read one by one, light curves matched by position, alert
windows cut) and the trainer only needs the resulting :class:`Dataset`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from broker_plugin.errors import ConfigError
from training.train_progress import Progress


@dataclass
class Dataset:
    """Training objects: position, redshift, label, light curves, preprocessed spectra.

    ``spectra`` is (n, N_GRID) from :func:`training.spectra.preprocess_batch` with NaN rows where an
    object has no usable spectrum (``spec_ok`` False; ``spec_reasons`` says why: ``missing`` or a
    :class:`training.spectra.SpectrumError` reason). Spectra are preprocessed at load time so a real
    catalogue of 10^5 spectra never holds its raw pixels in memory at once.
    """

    kind: str  # "synthetic" | "real"
    ids: np.ndarray
    ra: np.ndarray
    dec: np.ndarray
    z: np.ndarray
    labels: np.ndarray
    lightcurves: list[dict[str, Any]]
    spectra: np.ndarray
    spec_ok: np.ndarray
    spec_reasons: list[str]
    description: dict[str, Any] = field(default_factory=dict)
    #: Light-curve kind of each object (:data:`training.lc_history.KINDS`); None = all ``dr``.
    history: np.ndarray | None = None
    #: Evaluation-only light curves of kinds left out of training (see :class:`EvalSet`).
    lc_eval: dict[str, EvalSet] = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.labels.size)

    def kinds(self) -> np.ndarray:
        return self.history if self.history is not None else np.full(len(self), "dr")


@dataclass
class EvalSet:
    """Light curves of one kind used only to evaluate the light-curve model, never to fit.

    ``rows`` given: the i-th light curve is a copy (cut to the kind's window) of Dataset object
    ``rows[i]``, and only held-out test objects are scored. ``rows`` None: separate objects (a
    separately simulated set), all scored.
    """

    kind: str
    lightcurves: list[dict[str, Any]]
    labels: np.ndarray
    rows: np.ndarray | None = None
    description: str = ""


def _preprocess(spectra: Sequence[Any | None], z: np.ndarray) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from training.spectra import N_GRID, preprocess_batch

    n = len(spectra)
    out = np.full((n, N_GRID), np.nan)
    ok = np.zeros(n, dtype=bool)
    reasons = ["missing"] * n
    have = [i for i, s in enumerate(spectra) if s is not None]
    if have:
        X, good, quals = preprocess_batch([spectra[i] for i in have], z[have])
        for j, i in enumerate(have):
            if good[j]:
                out[i], ok[i], reasons[i] = X[j], True, "ok"
            else:
                reasons[i] = str(quals[j].get("reason", "spectrum_error"))
    return out, ok, reasons


def synthetic_dataset(n: int, seed: int, *, bal_fraction: float | None = None, lc_history: str = "mixed",
                      effect: Any = None, n_eval: int | None = None) -> Dataset:
    """``n`` synthetic quasars (see :mod:`training.synthetic.dataset`), spectra preprocessed.

    Light curves: the kinds of ``lc_history`` in its proportions (:mod:`training.lc_history`), each
    kind simulated with its own seed. Kinds left out get an evaluation-only set of ``n_eval``
    objects (default a quarter of ``n``, at least 100, at most 3000; no spectra).
    """
    from training import lc_history as lh

    kwargs: dict[str, Any] = {}
    if bal_fraction is not None:
        kwargs["bal_fraction"] = bal_fraction
    if effect is not None:
        kwargs["effect"] = effect
    counts = lh.kind_counts(n, lc_history)
    parts = [(k, lh.synthetic_kind_set(k, counts[k], lh.sub_seed(seed, k), **kwargs))
             for k in lh.KINDS if counts.get(k, 0) > 0]
    lightcurves = [lc for _, ts in parts for lc in ts.lightcurves]
    spectra_raw = [sp for _, ts in parts for sp in ts.spectra]
    truth = [t for _, ts in parts for t in ts.truth]
    z = np.concatenate([np.asarray(ts.z, dtype=np.float64) for _, ts in parts])
    labels = np.concatenate([np.asarray(ts.labels) for _, ts in parts]).astype(np.int64)
    history = np.array([k for k, ts in parts for _ in range(len(ts))], dtype=str)
    spectra, ok, reasons = _preprocess(spectra_raw, z)
    ids = np.array([f"synth-{seed}-{i:06d}" for i in range(len(labels))])
    meta0 = dict(parts[0][1].meta)
    per_part = ("seed", "n", "survey", "photometry", "baseline_days", "ztf_no_forced_fraction")
    generator = {k: v for k, v in meta0.items() if k not in per_part}
    generator.update(seed=seed, n=n, parts={k: {key: ts.meta.get(key) for key in per_part} for k, ts in parts})
    history_desc = lh.describe(lc_history, counts=counts, method="data-release light curves (photometry='dr'); "
                               "alert kinds: synthetic alert packets decoded by broker_plugin.decode "
                               "(photometry='packet')")
    lc_eval: dict[str, EvalSet] = {}
    m = n_eval if n_eval is not None else int(min(3000, max(100, round(0.25 * n))))
    for k in lh.KINDS:
        if counts.get(k, 0) == 0 and m > 0:
            ts = lh.synthetic_kind_set(k, m, lh.eval_seed(seed, k), with_spectra=False, **kwargs)
            lc_eval[k] = EvalSet(k, list(ts.lightcurves), np.asarray(ts.labels).astype(np.int64), None,
                                 f"{m} separately simulated objects (seed {lh.eval_seed(seed, k)}), not in training")
    return Dataset(
        kind="synthetic", ids=ids, ra=np.array([t["ra"] for t in truth], dtype=np.float64),
        dec=np.array([t["dec"] for t in truth], dtype=np.float64), z=z, labels=labels, lightcurves=lightcurves,
        spectra=spectra, spec_ok=ok, spec_reasons=reasons,
        description={"generator": generator, "lc_history": history_desc},
        history=history, lc_eval=lc_eval,
    )


def real_dataset(dr16q: str | Path, spectra_dir: str | Path, lightcurves: str | Path, *,
                 label_column: str | None = None, labels_csv: str | Path | None = None,
                 progress: Progress | None = None, lc_history: str = "mixed", seed: int = 0) -> Dataset:
    """DR16Q (labelled rows) + spec-lite spectra + IRSA ZTF light curves matched by position.

    ``lc_history`` (:mod:`training.lc_history`): that share of the light curves is cut to ZTF 30-day
    / 365-day windows ending at a random point (seeded by ``seed``); kinds left out of training are
    evaluated on cut copies of the held-out objects' light curves."""
    from training import lc_history as lh

    _check_real_inputs(dr16q, spectra_dir, lightcurves)
    cat, n_rows = _labelled_catalogue(dr16q, label_column, labels_csv)
    n = len(cat)
    spectra, ok, reasons = _read_spectra(cat, spectra_dir, progress)
    curves, n_sources, n_matched = _matched_lightcurves(cat, lightcurves)
    history = lh.assign_kinds(n, lc_history, seed)
    train_curves = _windowed_curves(curves, history, seed)
    labels = cat.label.astype(np.int64)
    lc_eval = {k: EvalSet(k, lh.window_copies(curves, k, seed), labels, np.arange(n),
                          "held-out objects' light curves cut to this kind's window, not in training")
               for k in lh.KINDS if not (history == k).any()}
    counts = {k: int((history == k).sum()) for k in lh.KINDS if (history == k).any()}
    desc = {"sources": {"dr16q": str(dr16q), "spectra": str(spectra_dir), "lightcurves": str(lightcurves),
                        "label_source": cat.label_source, "catalogue_rows_in_z_range": n_rows,
                        "labelled": n, "lightcurve_sources": n_sources, "matched_lightcurves": n_matched},
            "lc_history": lh.describe(lc_history, counts=counts, method="IRSA light curves; alert kinds cut to "
                                      "windows ending at a random point (training.lc_history.truncate_lightcurves)",
                                      forced_fraction=False)}
    return Dataset(kind="real", ids=np.asarray(cat.name).astype(str), ra=cat.ra.astype(np.float64),
                   dec=cat.dec.astype(np.float64), z=cat.z.astype(np.float64),
                   labels=labels, lightcurves=train_curves, spectra=spectra, spec_ok=ok,
                   spec_reasons=reasons, description=desc, history=history, lc_eval=lc_eval)


def _check_real_inputs(dr16q: str | Path, spectra_dir: str | Path, lightcurves: str | Path) -> None:
    """Fail with the option's name before any reading starts."""
    for label, p, want_dir in (("--dr16q", dr16q, False), ("--spectra", spectra_dir, True),
                               ("--lightcurves", lightcurves, None)):
        path = Path(p)
        if not path.exists():
            raise ConfigError(f"{label} {path}: not found")
        if want_dir is True and not path.is_dir():
            raise ConfigError(f"{label} {path}: not a directory")
        if want_dir is False and not path.is_file():
            raise ConfigError(f"{label} {path}: not a file")


def _labelled_catalogue(dr16q: str | Path, label_column: str | None,
                        labels_csv: str | Path | None) -> tuple[Any, int]:
    """The labelled rows of the catalogue, and how many rows it had in the redshift range."""
    from training.catalogues import load_dr16q

    try:
        cat = load_dr16q(dr16q, label_column=label_column, labels_csv=labels_csv)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"--dr16q {dr16q}: cannot read the catalogue: {exc}") from None
    n_rows = len(cat)
    cat = cat.labelled()
    if len(cat) == 0:
        raise ConfigError(f"--dr16q {dr16q}: no labelled quasars in 1.67 <= z <= 3.6 (label source "
                          f"{cat.label_source})")
    return cat, n_rows


def _read_spectra(cat: Any, spectra_dir: str | Path,
                  progress: Progress | None) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read and preprocess one spec-lite file at a time (a real catalogue's raw pixels never all in
    memory); a spectrum that cannot be used keeps a NaN row and the reason."""
    from training.catalogues import load_spec_lite, spec_lite_path
    from training.spectra import N_GRID, SpectrumError, preprocess_spectrum

    n = len(cat)
    spectra = np.full((n, N_GRID), np.nan)
    ok = np.zeros(n, dtype=bool)
    reasons = ["missing"] * n
    for i in range(n):
        plate, mjd, fiber = int(cat.plate[i]), int(cat.mjd[i]), int(cat.fiberid[i])
        if plate < 0 or mjd < 0 or fiber < 0:
            reasons[i] = "no_spectrum_id"
            continue
        path = spec_lite_path(spectra_dir, plate, mjd, fiber)
        if not path.is_file():
            continue
        try:
            spec = load_spec_lite(path)
            spectra[i], _ = preprocess_spectrum(spec.loglam, spec.flux, spec.ivar, spec.and_mask, float(cat.z[i]))
            ok[i], reasons[i] = True, "ok"
        except SpectrumError as exc:
            reasons[i] = exc.reason
        except (OSError, ValueError, KeyError) as exc:
            reasons[i] = f"unreadable:{type(exc).__name__}"
        if progress is not None and (i + 1) % 5000 == 0:
            progress.log(f"  spectra: {i + 1}/{n} read")
    return spectra, ok, reasons


def _matched_lightcurves(cat: Any, lightcurves: str | Path) -> tuple[list[dict[str, Any]], int, int]:
    """One light curve per catalogue row (empty where none matched), the sources read, the matches."""
    from training.catalogues import load_ztf_lightcurves, match_lightcurves

    try:
        lcs = load_ztf_lightcurves(lightcurves)
    except (OSError, ValueError, KeyError) as exc:
        raise ConfigError(f"--lightcurves {lightcurves}: cannot read the light curves: {exc}") from None
    matches = match_lightcurves(cat, lcs)
    curves: list[dict[str, Any]] = [{} for _ in range(len(cat))]
    for key, row in matches.items():
        curves[int(row)] = {b: lc for b, lc in lcs[key].items()}
    return curves, len(lcs), len(matches)


def _windowed_curves(curves: list[dict[str, Any]], history: np.ndarray, seed: int) -> list[dict[str, Any]]:
    """The training light curves: those assigned an alert kind cut to that kind's window."""
    from training import lc_history as lh

    train_curves: list[dict[str, Any]] = list(curves)
    for k in lh.KINDS:
        rows = np.flatnonzero(history == k)
        if k != "dr" and rows.size:
            for i, lc in zip(rows, lh.window_copies([curves[i] for i in rows], k, seed), strict=True):
                train_curves[int(i)] = lc
    return train_curves
