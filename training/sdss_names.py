"""SDSS designations and column-alias lookup shared by the catalogue and label-list readers.

Both readers match quasars by name (``hhmmss.ss+ddmmss.s``) and accept several spellings of a column,
so the canonical name form and the alias rule live here, once.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from typing import Any


def sdss_name(ra: float, dec: float) -> str:
    """SDSS designation ``hhmmss.ss+ddmmss.s`` of a J2000 position (truncated, not rounded, as SDSS does)."""
    cs = math.floor((ra % 360.0) / 15.0 * 3600.0 * 100.0 + 1e-6)  # centiseconds of time
    hh, rem = divmod(cs, 360000)
    mm, rem = divmod(rem, 6000)
    sign = "-" if dec < 0 else "+"
    ds = math.floor(abs(dec) * 3600.0 * 10.0 + 1e-6)  # deciseconds of arc
    dd, drem = divmod(ds, 36000)
    dm, drem = divmod(drem, 600)
    return f"{hh:02d}{mm:02d}{rem // 100:02d}.{rem % 100:02d}{sign}{dd:02d}{dm:02d}{drem // 10:02d}.{drem % 10:d}"


def normalise_name(name: Any) -> str:
    """Canonical form of an SDSS designation for matching: no 'SDSS', no 'J', no spaces, upper case."""
    s = name.decode() if isinstance(name, bytes) else str(name)
    s = s.strip().upper().replace(" ", "")
    if s.startswith("SDSS"):
        s = s[4:]
    return s.removeprefix("J")


def first_column(names: Iterable[str], available: Mapping[str, str]) -> str | None:
    """The actual column name of the first alias present (case-insensitive)."""
    for n in names:
        if n.upper() in available:
            return available[n.upper()]
    return None

