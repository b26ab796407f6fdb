"""The object history store: every alert's light curve merged with what is known of its object.

Layout: :mod:`~broker_plugin.history.points` (what a stored point is), :mod:`~broker_plugin.history.sky`
(association by position), :mod:`~broker_plugin.history.merge` (the one merge rule),
:mod:`~broker_plugin.history.schema` (tables and migrations), :mod:`~broker_plugin.history.store` with
its SQLite and PostgreSQL backends, and :mod:`~broker_plugin.history.stage` (one read and one write
per batch). :func:`open_store` is the single place a store is chosen from a path or URL.
"""

from __future__ import annotations

from typing import Any

from broker_plugin.history.stage import HistoryStage
from broker_plugin.history.store import HistoryStore, StoreError, StoreVersionError

#: URL schemes that select the PostgreSQL backend.
POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres(spec: str) -> bool:
    return spec.startswith(POSTGRES_SCHEMES)


def open_store(spec: str | None, *, radius_arcsec: float = 1.5, cross_survey: bool = False) -> HistoryStore:
    """The store named by ``spec``: a ``postgresql://`` URL, a SQLite file path, or None (in memory)."""
    kwargs: dict[str, Any] = {"radius_arcsec": radius_arcsec, "cross_survey": cross_survey}
    if spec is not None and is_postgres(spec):
        from broker_plugin.history.postgres_store import PostgresHistoryStore

        return PostgresHistoryStore(spec, **kwargs)
    from broker_plugin.history.sqlite_store import MEMORY, SqliteHistoryStore

    return SqliteHistoryStore(spec or MEMORY, **kwargs)


__all__ = ["HistoryStage", "HistoryStore", "StoreError", "StoreVersionError", "is_postgres", "open_store"]
