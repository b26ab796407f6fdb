"""Positions on the sky: the zone index the history store associates objects by, and stable object ids.

Why zones and not HEALPix: the store must find every object within ~1.5 arcsec of a position with
an index lookup in both SQLite and PostgreSQL, neither of which has a spherical index built in. The
zones scheme (Gray, Szalay et al. 2006, used by SDSS SkyServer) cuts the sky into declination strips
of fixed height; a B-tree on (zone, ra) then answers a cone search as a few range scans: the
probe's zone and its neighbours, each over ``ra +- r / cos(dec)``. The strip height
(:data:`ZONE_HEIGHT_DEG`) is fixed in the store's schema and must be at least the search radius, so
a match can only lie in the probe's zone or the two beside it.

Object ids are a 63-bit hash of the first name an object was seen under (``"ztf:ZTF21abiuvdk"``),
so two workers that meet the same new object at once create the same row instead of two objects.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator

#: Height of one declination zone, degrees (60 arcsec). Part of the stored data: changing it needs
#: a schema migration that recomputes every object's zone.
ZONE_HEIGHT_DEG = 1.0 / 60.0
#: The largest association radius the zones allow (arcsec).
MAX_RADIUS_ARCSEC = ZONE_HEIGHT_DEG * 3600.0
#: |dec| from which a cone search covers every right ascension (cos(dec) too small to scale by).
_POLAR_DEC = 89.9


def zone_of(dec: float) -> int:
    """The zone of a declination (degrees): 0 at the south pole, increasing northwards."""
    return math.floor((dec + 90.0) / ZONE_HEIGHT_DEG)


def cone_ranges(ra: float, dec: float, radius_arcsec: float) -> Iterator[tuple[int, float, float]]:
    """(zone, ra_min, ra_max) ranges that together hold every position within ``radius_arcsec``.

    Right ascension wraps at 0/360: a range crossing it is split in two. Near a pole the whole
    circle is searched (the strips there are tiny).
    """
    r = radius_arcsec / 3600.0
    z = zone_of(dec)
    top = min(90.0, abs(dec) + r)
    half = 180.0 if top >= _POLAR_DEC else min(180.0, r / math.cos(math.radians(top)))
    for zone in (z - 1, z, z + 1):
        if half >= 180.0:
            yield zone, 0.0, 360.0
            continue
        lo, hi = ra - half, ra + half
        if lo < 0.0:
            yield zone, lo + 360.0, 360.0
            yield zone, 0.0, hi
        elif hi > 360.0:
            yield zone, lo, 360.0
            yield zone, 0.0, hi - 360.0
        else:
            yield zone, lo, hi


def separation_arcsec(ra1: float, dec1: float, ra2: float, dec2: float) -> float:
    """Great-circle distance in arcsec (haversine: accurate at arcsec scales, unlike the cosine rule)."""
    p1, p2 = math.radians(dec1), math.radians(dec2)
    dp = p2 - p1
    dl = math.radians(ra2 - ra1)
    h = math.sin(dp / 2.0) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2.0) ** 2
    return math.degrees(2.0 * math.asin(min(1.0, math.sqrt(h)))) * 3600.0


def object_key(survey: str, name: str) -> int:
    """A stable signed 63-bit id for the object first seen as ``name`` in ``survey``.

    BLAKE2b of ``"survey:name"``; two different names collide with probability ~n^2 / 2^64 (about
    5e-6 for ten million objects).
    """
    digest = hashlib.blake2b(f"{survey}:{name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") >> 1
