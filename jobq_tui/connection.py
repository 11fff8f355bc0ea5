"""The console's connection: a small pool that identifies itself, and can be read-only.

A read-only console sets `default_transaction_read_only` on the session itself, so even a
bug in the console could not write; the server refuses."""

from __future__ import annotations

import os

from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import AsyncConnectionPool

from jobq_core import AsyncJobQueue
from jobq_core.admin import AsyncAdmin
from jobq_core.dsn import check as check_dsn
from jobq_core.dsn import redact
from jobq_core.sql import Names

APPLICATION_NAME = "jobq-tui"
#: A console query that runs longer than this is cancelled rather than left to pile up.
STATEMENT_TIMEOUT = "15s"
#: How long a query waits for a free or fresh connection before "database unavailable".
CONNECT_WAIT = 4.0


def resolve_dsn(dsn: str | None) -> str:
    """--dsn, else JOBQ_DSN, else DATABASE_URL, else "" (libpq's PG* variables apply)."""
    return dsn or os.environ.get("JOBQ_DSN") or os.environ.get("DATABASE_URL") or ""


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
    """An `AsyncAdmin` over a pool of up to three connections that reconnects by itself.

    Nothing connects until `open`, and `open` does not wait: an unreachable server shows as a
    banner in the console rather than a failed start."""

    def __init__(self, dsn: str | None, table: str, *, read_only: bool = False) -> None:
        Names.parse(table)  # a bad table name is refused before connecting
        conninfo = resolve_dsn(dsn)
        options = session_options(conninfo, read_only)
        self.conninfo = conninfo
        self.read_only = read_only
        self.pool = AsyncConnectionPool(
            conninfo,
            min_size=1, max_size=3, open=False, timeout=CONNECT_WAIT, name=APPLICATION_NAME,
            # No background reconnection schedule of the pool's own (its backoff grows without
            # bound): a failed connection is dropped at once, and the console's poll loop,
            # with its capped backoff, decides when the next attempt is made.
            reconnect_timeout=0,
            kwargs={"autocommit": True, "application_name": APPLICATION_NAME,
                    "connect_timeout": 5, "options": options},
        )
        self.admin = AsyncAdmin(AsyncJobQueue(self.pool, table=table, auto_migrate=False))

    def describe(self) -> str:
        """user@host:port/dbname, never the password."""
        try:
            parts = conninfo_to_dict(self.conninfo)
        except Exception:
            return "?"
        host = str(parts.get("host") or os.environ.get("PGHOST") or "local socket")
        port = parts.get("port") or os.environ.get("PGPORT")
        user = parts.get("user") or os.environ.get("PGUSER")
        dbname = parts.get("dbname") or os.environ.get("PGDATABASE") or user or ""
        where = f"{host}:{port}" if port else host
        shown = f"{user}@{where}/{dbname}" if user else f"{where}/{dbname}"
        return redact(shown, self.conninfo)

    async def open(self) -> None:
        await self.pool.open(wait=False)

    async def close(self) -> None:
        await self.admin.queue.close()
        await self.pool.close(timeout=1.0)
