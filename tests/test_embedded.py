"""The private throwaway Postgres that the tests and the demo start when no DSN is given."""

from __future__ import annotations

import asyncio

import pytest

from jobq_core import DatabaseUnavailableError, create_async_job_queue, create_job_queue
from jobq_core.embedded import EmbeddedPostgres, pgserver_binaries


@pytest.mark.parametrize("source", ["default", "pgserver"])
def test_embedded_server_starts_serves_and_cleans_up(source: str) -> None:
    binaries = None
    if source == "pgserver":
        binaries = pgserver_binaries()
        assert binaries is not None, "pgserver is a dependency; its binaries must be there"
    with EmbeddedPostgres(binaries=binaries) as server:
        root = server.root
        assert server.dsn.startswith("postgresql://postgres@127.0.0.1:")
        with create_job_queue(server.dsn, max_connections=4) as queue:
            queue.enqueue_many([{"type": "t", "payload": i} for i in range(8)])
            jobs = queue.claim_many(8)
            server.restart()
            # An outage costs exactly one failed call, however many connections were pooled.
            with pytest.raises(DatabaseUnavailableError):
                queue.pending()
            assert queue.pending() == 0
            assert len(queue.complete_many(jobs)) == 8
        assert root.exists()
    assert not root.exists()


def test_async_queue_recovers_after_a_restart(embedded_server: EmbeddedPostgres) -> None:
    async def scenario() -> None:
        queue = await create_async_job_queue(embedded_server.dsn, table="async_restart")
        try:
            job_id = await queue.enqueue("t")
            embedded_server.restart()
            with pytest.raises(DatabaseUnavailableError):
                await queue.pending()
            job = await queue.claim()
            assert job is not None and job.id == job_id
            await queue.complete(job)
        finally:
            await queue.close()

    asyncio.run(scenario())


def test_a_failed_start_leaves_nothing_behind(tmp_path: object) -> None:
    from pathlib import Path

    from jobq_core import JobqError

    server = EmbeddedPostgres(binaries=Path("/nonexistent/bin"))
    root = server.root
    with pytest.raises((JobqError, OSError)), server:
        pass
    assert not root.exists()
