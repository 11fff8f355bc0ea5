"""Fixtures of the fault suite, and the `chaos` marker for its long variants.

Long variants run only with ``--run-chaos`` (declared in the root conftest) or
``JOBQ_CHAOS=1``."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from jobq_core.embedded import EmbeddedPostgres

from ..conftest import new_database
from .harness import PGBOUNCER, PgBouncer, WorkerSet, prepare_database


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "chaos: a long fault run (minutes); runs with JOBQ_CHAOS=1 or --run-chaos")


def _chaos_enabled(config: pytest.Config) -> bool:
    if os.environ.get("JOBQ_CHAOS", "").strip() in ("1", "true", "yes"):
        return True
    try:
        return bool(config.getoption("--run-chaos"))
    except ValueError:  # the option is not declared
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _chaos_enabled(config):
        return
    skip = pytest.mark.skip(reason="a long chaos run: set JOBQ_CHAOS=1 (or --run-chaos)")
    for item in items:
        if "chaos" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def rdsn(dsn: str) -> str:
    """A fresh database with the queue's tables and the handlers' execution log."""
    prepare_database(dsn)
    return dsn


@pytest.fixture(scope="session")
def restart_server() -> Iterator[EmbeddedPostgres]:
    """A private, durable server of the suite's own, to stop and restart."""
    with EmbeddedPostgres(create_user=True) as server:
        yield server


@pytest.fixture
def restart_dsn(restart_server: EmbeddedPostgres) -> Iterator[str]:
    """A fresh database on the restartable server, prepared like `rdsn`."""
    url, drop = new_database(restart_server.dsn)
    prepare_database(url)
    yield url
    with contextlib.suppress(psycopg.Error):  # a scenario may have left the server down
        drop()


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[WorkerSet]:
    group = WorkerSet(tmp_path)
    try:
        yield group
    finally:
        group.close()


@pytest.fixture
def pgbouncer(rdsn: str) -> Iterator[PgBouncer]:
    if PGBOUNCER is None:
        pytest.skip("pgbouncer is not installed (apt-get install -y pgbouncer)")
    bouncer = PgBouncer(rdsn)
    try:
        bouncer.start()
        yield bouncer
    finally:
        bouncer.stop()
