"""Real Postgres for every test: `JOBQ_TEST_DSN` or `DATABASE_URL` when set, otherwise a private
throwaway server (`jobq_core.embedded`) started for the session. Each test gets its own database,
cloned from a template that is migrated once."""

from __future__ import annotations

import asyncio
import itertools
import os
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import make_conninfo

from jobq_core import AsyncJobQueue, JobQueue, create_job_queue
from jobq_core.embedded import EmbeddedPostgres

_counter = itertools.count()


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-chaos", action="store_true", default=False,
                     help="also run the long chaos variants of tests/reliability")


def _server_dsn() -> tuple[str, EmbeddedPostgres | None]:
    dsn = os.environ.get("JOBQ_TEST_DSN") or os.environ.get("DATABASE_URL")
    if dsn:
        return dsn, None
    server = EmbeddedPostgres(unsafe_fast=True, create_user=True)
    return server.start(), server


@pytest.fixture(scope="session")
def server_dsn() -> Iterator[str]:
    dsn, server = _server_dsn()
    try:
        yield dsn
    finally:
        if server is not None:
            server.cleanup()


@pytest.fixture(scope="session")
def embedded_server() -> Iterator[EmbeddedPostgres]:
    """A private server of the test's own, for tests that stop, kill or restart it."""
    with EmbeddedPostgres(unsafe_fast=True, create_user=True) as server:
        yield server


def _admin(dsn: str) -> psycopg.Connection[Any]:
    return psycopg.connect(dsn, autocommit=True)


@pytest.fixture(scope="session")
def template_db(server_dsn: str) -> Iterator[str]:
    name = f"jobq_tpl_{os.getpid()}"
    with _admin(server_dsn) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}"')
        admin.execute(f'CREATE DATABASE "{name}"')
    create_job_queue(make_conninfo(server_dsn, dbname=name)).close()
    try:
        yield name
    finally:
        with _admin(server_dsn) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def new_database(server_dsn: str, template: str = "template1") -> tuple[str, Callable[[], None]]:
    name = f"jobq_t_{os.getpid()}_{next(_counter)}"
    with _admin(server_dsn) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')

    def drop() -> None:
        with _admin(server_dsn) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    return make_conninfo(server_dsn, dbname=name), drop


@pytest.fixture
def dsn(server_dsn: str, template_db: str) -> Iterator[str]:
    """A fresh database whose `svti_jobs` tables already exist."""
    url, drop = new_database(server_dsn, template_db)
    yield url
    drop()


@pytest.fixture
def empty_dsn(server_dsn: str) -> Iterator[str]:
    """A fresh database with no jobq tables at all."""
    url, drop = new_database(server_dsn)
    yield url
    drop()


@pytest.fixture
def db(dsn: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for checking what is really in the database."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        yield conn


class SyncView:
    """Calls an `AsyncJobQueue` as if it were sync, so one test body checks both twins."""

    def __init__(self, queue: AsyncJobQueue, runner: asyncio.Runner) -> None:
        self._queue = queue
        self._runner = runner

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._queue, name)
        if not callable(attr):
            return attr

        def call(*args: Any, **kwargs: Any) -> Any:
            result = attr(*args, **kwargs)
            if isinstance(result, Coroutine):
                return self._runner.run(result)
            return result

        return call


@pytest.fixture(params=["sync", "async"])
def q(request: pytest.FixtureRequest, dsn: str) -> Iterator[Any]:
    """The queue under test, once as `JobQueue` and once as `AsyncJobQueue`."""
    if request.param == "sync":
        with JobQueue(dsn) as queue:
            yield queue
        return
    with asyncio.Runner() as runner:
        aqueue = AsyncJobQueue(dsn)
        yield SyncView(aqueue, runner)
        runner.run(aqueue.close())
