"""The explicit BAL light-curve effect: SMC-like dust and the tunable differences from non-BALs.

SCIENCE.md: "no distinctive variability of their own ... BALs are redder on average ... do not
assume [a light-curve signal]". The *only* differences are the fields of
:class:`BalLightCurveEffect`, explicit and tunable. The default is SMC-like dust at the quasar
with E(B-V) drawn from an exponential of mean 0.023, the HiBAL-vs-non-BAL value of Reichard+2003;
at z ~ 2 that reddens g-r by ~0.07 mag (ZTF bands) and dims g by ~0.3 mag. Variability amplitude
and time scale are unchanged (``sf_scale = tau_scale = 1``). :meth:`BalLightCurveEffect.none`
switches every difference off, for null tests.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from .filters import EFF_WAVELENGTH, Survey

#: SMC bar extinction curve, power-law approximation A_lambda / E(B-V) = R_V (lambda / 5500 A)^-1.2
#: with R_V = 2.74 (Gordon+2003); within ~10% of the tabulated curve from 1250 to 9000 A.
SMC_RV: float = 2.74
SMC_SLOPE: float = -1.2


def smc_extinction(wave_rest: np.ndarray | float, ebv: float) -> np.ndarray | float:
    """A_lambda (mag) of SMC-like dust with colour excess ``ebv`` at rest wavelength(s) in Angstrom.

    SMC-like dust is what reddened BAL composites need (Reichard+2003); the power law stands in for
    the tabulated curve (see :data:`SMC_RV`), adequate for a 0.02-0.1 mag effect.
    """
    return ebv * SMC_RV * (np.asarray(wave_rest, dtype=np.float64) / 5500.0) ** SMC_SLOPE


@dataclass(frozen=True, slots=True)
class BalLightCurveEffect:
    """Every way a BAL quasar's light curve differs from a non-BAL one in the simulation. Nothing else does.

    Defaults reflect SCIENCE.md: BALs are redder on average (Reichard+2003, Gibson+2009) and have
    no distinctive variability (so ``sf_scale = tau_scale = 1``).

    ``ebv_mean``
        Mean E(B-V) of SMC-like dust at the quasar redshift, added to BALs only (the Stripe 82
        colours of non-BALs already carry the ordinary quasar dust). 0.023 is Reichard+2003's
        HiBAL-vs-non-BAL value; their LoBALs need 0.077. The reddening in observed g-r depends on
        redshift, ~0.07 mag at z = 2 (see :meth:`expected_color_shift`), inside the 0.05-0.1 mag
        range usually quoted; it also dims the quasar (~0.3 mag in g at z = 2), applied too.
    ``ebv_distribution``
        ``"exponential"`` (default: most BALs are barely reddened, a tail is dusty) or ``"fixed"``.
    ``color_shift_gr``
        An extra, purely empirical g-r shift (mag) on top of the dust, applied as a linear tilt in
        wavelength that is zero at r (+shift at g). Default 0: the dust already gives the colour.
    ``sf_scale``, ``tau_scale``
        Multipliers of the DRW SF_inf and tau for BALs. Default 1: no distinctive variability.
    """

    ebv_mean: float = 0.023
    ebv_distribution: Literal["exponential", "fixed"] = "exponential"
    color_shift_gr: float = 0.0
    sf_scale: float = 1.0
    tau_scale: float = 1.0

    @classmethod
    def none(cls) -> BalLightCurveEffect:
        """No difference at all between BAL and non-BAL light curves (for null tests)."""
        return cls(ebv_mean=0.0, ebv_distribution="fixed", color_shift_gr=0.0, sf_scale=1.0, tau_scale=1.0)

    def draw_ebv(self, rng: np.random.Generator) -> float:
        """E(B-V) of one BAL quasar."""
        if self.ebv_mean <= 0:
            return 0.0
        if self.ebv_distribution == "fixed":
            return float(self.ebv_mean)
        return float(rng.exponential(self.ebv_mean))

    def magnitude_offsets(self, z: float, ebv: float, survey: Survey) -> dict[str, float]:
        """Per-band magnitude change of a BAL (dust extinction at rest wavelength + colour tilt)."""
        waves = EFF_WAVELENGTH[survey]
        lam_g, lam_r = EFF_WAVELENGTH["lsst"]["g"], EFF_WAVELENGTH["lsst"]["r"]
        out = {}
        for band, lam in waves.items():
            a = float(smc_extinction(lam / (1.0 + z), ebv)) if ebv > 0 else 0.0
            tilt = self.color_shift_gr * (lam_r - lam) / (lam_r - lam_g)
            out[band] = a + tilt
        return out

    def expected_color_shift(self, z: float = 2.0, survey: Survey = "ztf") -> float:
        """Mean reddening E(g-r) of BALs at redshift ``z`` implied by these settings (for reports)."""
        off = self.magnitude_offsets(z, self.ebv_mean, survey)
        return off["g"] - off["r"]
