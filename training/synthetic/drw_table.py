"""The Stripe 82 DRW parameter table quasar variability is drawn from (rows of MacLeod+2010 fits).

Pairs (tau, SF_inf) are drawn *jointly*, as whole rows of the MacLeod+2010 Stripe 82 DRW fits
(``training/data/s82_drw_params.csv``, built from ``../shared/data/quasars/macleod2010_s82drw_{g,r}.csv``
by :func:`build_drw_table`), so the tau-SF_inf, colour-amplitude and redshift correlations of real
quasars are kept. A row carries the g and r fits *of the same quasar* (the two tables share their
row order, SDR5ID and position), its redshift, its mean magnitudes and its SDSS colours.

How the table columns are read (checked against the fitted relations quoted in SCIENCE.md; see
``training/data/README.md`` for the regression): ``log10_tau_days`` is the best-fit DRW time scale
in **observed-frame** days, ``log10_sigma`` the Kelly+2009 amplitude sigma-hat in mag / yr^(1/2),
also observed frame, so ``SF_inf = sigma_hat * sqrt(tau_obs / 365 d)``, which is frame
independent, and ``tau_rest = tau_obs / (1 + z)``. With that reading a joint g+r fit of
log SF_inf against log(lambda_RF/4000 A), M_i, log M_BH and log(1+z) gives A = -0.55 and
E = +0.04 (MacLeod+2010: A = -0.51, E ~ 0); reading tau as rest frame instead gives rest-frame
time scales of ~500 d (SCIENCE.md: typical ~250 d) and an SF_inf trend with redshift the paper
does not find. Rows failing MacLeod's own quality cuts in g or r (fewer than 10 epochs,
DRW not preferred over white noise by Delta lnL > 2, tau unconstrained (Delta lnL vs tau=inf
< 0.05), tau at the grid edge), and the ~25 absurd fits that survive them (SF_inf > 1.5 mag or
tau_rest outside 1-10^4 d), are dropped: 6,501 of 9,258 quasars remain.

The simulated quasar keeps the row's redshift when it is inside the requested range (default
1.67 <= z <= 3.6, the C IV window of the reference study), so tau_obs = tau_rest (1 + z) is the
row's own observed time scale. g and r share one time scale (the geometric mean of the two fits:
one physical process, two noisy estimates) and their own SF_inf; other Rubin bands scale SF_inf
with rest wavelength as lambda^-0.479 (MacLeod+2010 coefficient B).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

DATA_DIR = Path(__file__).resolve().parent.parent / "data"
DRW_TABLE_PATH = DATA_DIR / "s82_drw_params.csv"


#: Columns of ``s82_drw_params.csv``, in file order.
DRW_COLUMNS: tuple[str, ...] = (
    "z", "M_i", "mu_g", "mu_r", "u_g", "r_i", "i_z",
    "log_tau_rest_g", "log_sf_inf_g", "log_tau_rest_r", "log_sf_inf_r",
)


@dataclass(frozen=True)
class DrwTable:
    """The compact Stripe 82 DRW parameter table, one array per column (see :data:`DRW_COLUMNS`)."""

    columns: Mapping[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.columns["z"].shape[0])

    def __getitem__(self, key: str) -> np.ndarray:
        return self.columns[key]

    def rows_in_z(self, z_range: tuple[float, float]) -> np.ndarray:
        z = self.columns["z"]
        return np.flatnonzero((z >= z_range[0]) & (z <= z_range[1]))


def _read_float_csv(path: Path) -> dict[str, np.ndarray]:
    with path.open(newline="") as fh:
        rows = [r for r in csv.reader(line for line in fh if not line.startswith("#"))]
    header, body = rows[0], rows[1:]
    arr = np.array([[float(v) if v != "" else math.nan for v in r] for r in body], dtype=np.float64)
    return {name: arr[:, i].copy() for i, name in enumerate(header)}


@lru_cache(maxsize=4)
def load_drw_table(path: str | None = None) -> DrwTable:
    """Load (once) the compact S82 DRW table shipped in ``training/data``."""
    p = Path(path) if path else DRW_TABLE_PATH
    if not p.is_file():
        raise FileNotFoundError(f"DRW parameter table not found at {p}; rebuild it with build_drw_table()")
    cols = _read_float_csv(p)
    missing = [c for c in DRW_COLUMNS if c not in cols]
    if missing:
        raise ValueError(f"{p} lacks columns {missing}")
    return DrwTable({k: cols[k] for k in DRW_COLUMNS})


def build_drw_table(shared_quasars: str | Path, out: str | Path = DRW_TABLE_PATH) -> int:
    """Rebuild ``s82_drw_params.csv`` from the MacLeod+2010 tables in ``../shared/data/quasars``.

    Keeps the rows passing MacLeod's quality cuts in both g and r, converts tau to the rest frame
    and sigma-hat to SF_inf (see the module docstring), and adds SDSS colours from
    ``macleod2010_s82_quasars_DB_QSO_S82.csv`` (same row order). Returns the number of rows written.
    """
    src = Path(shared_quasars)
    g = _read_float_csv(src / "macleod2010_s82drw_g.csv")
    r = _read_float_csv(src / "macleod2010_s82drw_r.csv")
    db = _read_float_csv(src / "macleod2010_s82_quasars_DB_QSO_S82.csv")
    if not (np.array_equal(g["ra"], r["ra"]) and np.allclose(db["ra"], g["ra"], atol=1e-6)):
        raise ValueError("the g, r and DB_QSO_S82 tables are not in the same row order")

    def good(d: dict[str, np.ndarray]) -> np.ndarray:
        return (
            (d["npts"] >= 10) & (d["Plike"] - d["Pnoise"] > 2.0) & (d["Plike"] - d["Pinf"] > 0.05)
            & (d["edge_flag"] == 0) & (d["log10_tau_days"] > -5) & (d["log10_sigma"] > -5)
        )

    z = g["redshift"]
    log1pz = np.log10(1.0 + z)

    def sf(d: dict[str, np.ndarray]) -> np.ndarray:
        return d["log10_sigma"] + 0.5 * (d["log10_tau_days"] - np.log10(365.0))

    def sane(d: dict[str, np.ndarray]) -> np.ndarray:
        # ~25 fits pass the cuts with absurd values (SF_inf up to 30 mag, tau up to 1e7 d); keep
        # 0.01 <= SF_inf <= 1.5 mag and 1 <= tau_rest <= 1e4 d (S82 spans ~3,000 observed days).
        log_tau_rest = d["log10_tau_days"] - log1pz
        return (sf(d) >= -2.0) & (sf(d) <= np.log10(1.5)) & (log_tau_rest >= 0.0) & (log_tau_rest <= 4.0)

    keep = good(g) & good(r) & sane(g) & sane(r)

    def colour(a: str, b: str) -> np.ndarray:
        ok = (db[a] > 0) & (db[b] > 0)
        return np.where(ok, db[a] - db[b], math.nan)

    cols = {
        "z": z, "M_i": g["M_i"], "mu_g": g["mu"], "mu_r": r["mu"],
        "u_g": colour("u", "g"), "r_i": colour("r", "i"), "i_z": colour("i", "z"),
        "log_tau_rest_g": g["log10_tau_days"] - log1pz, "log_sf_inf_g": sf(g),
        "log_tau_rest_r": r["log10_tau_days"] - log1pz, "log_sf_inf_r": sf(r),
    }
    fmt = {"z": "{:.4f}", "M_i": "{:.2f}", "u_g": "{:.2f}", "r_i": "{:.2f}", "i_z": "{:.2f}"}
    out_p = Path(out)
    out_p.parent.mkdir(parents=True, exist_ok=True)
    with out_p.open("w", newline="") as fh:
        fh.write(f"# MacLeod+2010 Stripe 82 DRW fits (g, r) of {int(keep.sum()):,} quasars passing the quality cuts "
                 "in both bands.\n")
        fh.write("# Source: jiwoncpark/magnificat (MIT) s82drw_{g,r}.dat + DB_QSO_S82.dat; "
                 "see training/data/README.md.\n")
        fh.write("# tau in rest-frame days (log10), SF_inf in mag (log10); mu = DRW mean mag; "
                 "colours SDSS, empty = missing.\n")
        fh.write(",".join(DRW_COLUMNS) + "\n")
        for i in np.flatnonzero(keep):
            vals = []
            for c in DRW_COLUMNS:
                v = cols[c][i]
                vals.append("" if not np.isfinite(v) else fmt.get(c, "{:.3f}").format(v))
            fh.write(",".join(vals) + "\n")
    load_drw_table.cache_clear()
    return int(keep.sum())
