"""The console's connections: a small pool that identifies itself, and can be read-only, and
with a read DSN a second one, on a hot standby, for everything the console only reads.

A read-only console sets `default_transaction_read_only` on the session itself, so even a
bug in the console could not write; the server refuses."""

from __future__ import annotations

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from jobq_core import AsyncJobQueue
from jobq_core.admin import AsyncAdmin
from jobq_core.dsn import check as check_dsn
from jobq_core.dsn import check_read, describe, redact, resolve
from jobq_core.sql import Names

APPLICATION_NAME = "jobq-tui"
#: A console query that runs longer than this is cancelled rather than left to pile up.
STATEMENT_TIMEOUT = "15s"
#: How long a query waits for a free or fresh connection before "database unavailable".
CONNECT_WAIT = 4.0


def session_options(conninfo: str, read_only: bool) -> str:
    """The server options for the console's sessions, kept after any the DSN already sets."""
    check_dsn(conninfo)
    existing = conninfo_to_dict(conninfo).get("options") or ""
    options = [str(existing)] if existing else []
    options.append(f"-c statement_timeout={STATEMENT_TIMEOUT}")
    if read_only:
        options.append("-c default_transaction_read_only=on")
    return " ".join(options)


class ConsoleDB:
    """An `AsyncAdmin` over a pool of up to three connections that reconnects by itself;
    with `read_dsn`, its reads (see `AsyncAdmin`) go to a second such pool, on a standby.

    Nothing connects until `open`, and `open` does not wait: an unreachable server shows as a
    banner in the console rather than a failed start."""

    def __init__(self, dsn: str | None, table: str, *, read_only: bool = False,
                 read_dsn: str | None = None) -> None:
        Names.parse(table)  # a bad table name is refused before connecting
        conninfo = resolve(dsn)
        options = session_options(conninfo, read_only)
        self.conninfo = conninfo
        self.read_dsn = read_dsn or None
        self.read_only = read_only
        self.pool = self._pool(conninfo, options)
        self.read_pool = None
        reads = None
        if self.read_dsn is not None:
            check_read(self.read_dsn)
            self.read_pool = self._pool(self.read_dsn, session_options(self.read_dsn,
                                                                       read_only))
            reads = AsyncJobQueue(self.read_pool, table=table, auto_migrate=False)
        self.admin = AsyncAdmin(AsyncJobQueue(self.pool, table=table, auto_migrate=False),
                                reads=reads)

    @staticmethod
    def _pool(conninfo: str, options: str) -> AsyncConnectionPool:
        return AsyncConnectionPool(
            conninfo,
            min_size=1, max_size=3, open=False, timeout=CONNECT_WAIT, name=APPLICATION_NAME,
            # No background reconnection schedule of the pool's own (its backoff grows without
            # bound): a failed connection is dropped at once, and the console's poll loop,
            # with its capped backoff, decides when the next attempt is made.
            reconnect_timeout=0,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME,
                    "connect_timeout": 5, "options": options},
        )

    def describe(self) -> str:
        """user@host:port/dbname of the primary, never the password."""
        return describe(self.conninfo)

    def describe_reads(self) -> str | None:
        """The same of the replica, if reads go to one."""
        return None if self.read_dsn is None else describe(self.read_dsn)

    def redact(self, message: str) -> str:
        """`message` without the password of either DSN."""
        return redact(redact(message, self.read_dsn), self.conninfo)

    async def open(self) -> None:
        await self.pool.open(wait=False)
        if self.read_pool is not None:
            await self.read_pool.open(wait=False)

    async def close(self) -> None:
        await self.admin.queue.close()
        await self.pool.close(timeout=1.0)
        if self.read_pool is not None:
            await self.read_pool.close(timeout=1.0)
