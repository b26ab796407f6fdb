"""Shared fixtures. Real alert files live in ../shared/data beside the checkout (CI has it there);
tests that need them skip with a clear reason when it is absent, e.g. on a user's machine."""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.pg_server import PostgresServer, find_postgres_bin

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = Path(os.environ.get("BAL_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The folder of real public alerts, schemas and catalogues (../shared/data)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder not found at {SHARED_DATA}")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ztf_alert_dir(shared_data: Path) -> Path:
    return shared_data / "ztf" / "alerts"


@pytest.fixture(scope="session")
def ztf_alert_files(ztf_alert_dir: Path) -> list[Path]:
    return sorted(ztf_alert_dir.glob("*.avro"))


@pytest.fixture(scope="session")
def lsst_alert_files(shared_data: Path) -> list[Path]:
    return sorted((shared_data / "lsst" / "alerts").glob("*.avro"))


# --- decode / light-curve fixtures (appended by the decoder work) ---------------------------------


@pytest.fixture(scope="session")
def ztf_rewritten_files(shared_data: Path) -> list[Path]:
    """Spark-rewritten ZTF containers (record name topLevelRecord, snappy codec)."""
    return sorted((shared_data / "ztf" / "alerts_rewritten").glob("*.avro"))


@pytest.fixture(scope="session")
def lsst_rewritten_files(shared_data: Path) -> list[Path]:
    """Fink/Spark-rewritten Rubin containers (topLevelRecord, extra Fink columns)."""
    return sorted((shared_data / "lsst" / "alerts_rewritten").glob("*.avro"))


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server (tests/pg_server.py) for the whole session; skips without one."""
    pytest.importorskip("psycopg", reason="psycopg 3 is not installed (pip install -e '.[postgres]')")
    if find_postgres_bin() is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin "
                    "(apt-get install -y postgresql; .ci/run does)")
    with PostgresServer() as server:
        yield server


@pytest.fixture
def postgres_url(postgres_server: PostgresServer, request: pytest.FixtureRequest) -> Iterator[str]:
    """URL of a fresh, empty database of its own for this test (dropped afterwards)."""
    name = f"{re.sub(r'[^a-z0-9]+', '_', request.node.name.lower()).strip('_')[:40]}_{uuid.uuid4().hex[:8]}"
    url = postgres_server.create_database(name)
    yield url
    postgres_server.drop_database(name)
