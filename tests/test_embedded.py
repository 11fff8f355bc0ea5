"""The private throwaway Postgres that the tests and the demo start when no DSN is given."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
from pathlib import Path

import pytest

from jobq_core import (
    DatabaseUnavailableError,
    JobqError,
    create_async_job_queue,
    create_job_queue,
    embedded,
)
from jobq_core.embedded import EmbeddedPostgres, pgserver_binaries


@pytest.mark.parametrize("source", ["default", "pgserver"])
def test_embedded_server_starts_serves_and_cleans_up(source: str) -> None:
    binaries = None
    if source == "pgserver":
        binaries = pgserver_binaries()
        assert binaries is not None, "pgserver is a dependency; its binaries must be there"
    with EmbeddedPostgres(binaries=binaries, create_user=True) as server:
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


def test_a_failed_start_leaves_nothing_behind() -> None:
    server = EmbeddedPostgres(binaries=Path("/nonexistent/bin"), create_user=True)
    root = server.root
    with pytest.raises((JobqError, OSError)), server:
        pass
    assert not root.exists()


root_only = pytest.mark.skipif(os.geteuid() != 0, reason="the server's user is chosen as root")


@root_only
def test_no_system_user_is_created_unless_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_such_user(name: str) -> object:
        raise KeyError(name)

    ran: list[object] = []
    monkeypatch.setattr(embedded.pwd, "getpwnam", no_such_user)
    monkeypatch.setattr(embedded.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(JobqError, match=r"no 'postgres' user .* create_user=True"):
        EmbeddedPostgres()
    assert ran == []


@root_only
def test_unreachable_binaries_are_linked_in_and_no_folder_is_widened(tmp_path: Path) -> None:
    binaries = pgserver_binaries()
    assert binaries is not None
    # pgserver installed under a folder the server's user cannot enter, as under /root:
    # site-packages/pgserver/pginstall, and the libraries its RPATH finds in pgserver.libs.
    private = tmp_path / "private"
    private.mkdir(mode=0o700)
    private.chmod(0o700)
    package = binaries.parent.parent
    shutil.copytree(binaries.parent, private / package.name / "pginstall", symlinks=True)
    shutil.copytree(package.parent / f"{package.name}.libs",
                    private / f"{package.name}.libs", symlinks=True)
    with EmbeddedPostgres(binaries=private / package.name / "pginstall" / "bin",
                          create_user=True) as server:
        assert server.bin.is_relative_to(server.root)
        with create_job_queue(server.dsn, max_connections=1) as queue:
            assert queue.pending() == 0
    assert stat.S_IMODE(private.stat().st_mode) == 0o700
    assert stat.S_IMODE(tmp_path.stat().st_mode) & 0o007 == 0
