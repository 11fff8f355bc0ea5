"""Enqueue inside an SQLAlchemy 2 transaction (`pip install 'jobq[sqlalchemy]'`).

With the psycopg 3 driver (`postgresql+psycopg://`) a Session's connection is a psycopg
connection underneath; the job is written on it, in the session's transaction, so it commits
or rolls back with your rows. It is the same path as `JobQueue.enqueue(..., conn=...)`, which
Django's backend (`jobq_core.contrib.django`) takes too.

    queue = JobQueue("postgresql://app@db/app")
    with Session(engine) as session, session.begin():
        session.add(Order(id=7))
        enqueue(queue, session, "ship-order", {"order": 7})

`aenqueue` is the same for an `AsyncSession` or `AsyncConnection` and an `AsyncJobQueue`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Unpack

import psycopg
from sqlalchemy import Connection
from sqlalchemy.orm import Session

from ..errors import InvalidInputError
from ..queue import AsyncJobQueue, EnqueueOptions, JobQueue

if TYPE_CHECKING:  # at run time only for aenqueue: it needs greenlet, enqueue does not
    from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession


def psycopg_connection(bind: Session | Connection) -> psycopg.Connection[Any]:
    """The psycopg connection under a Session or a Connection, whose transaction begins if
    it has not: SQLAlchemy must know of it, or its commit() would commit nothing."""
    conn = bind.connection() if isinstance(bind, Session) else bind
    if not conn.in_transaction():
        conn.begin()
    raw = conn.connection.driver_connection
    if not isinstance(raw, psycopg.Connection):
        raise _not_psycopg(conn.dialect.driver)
    return raw


async def async_psycopg_connection(
    bind: AsyncSession | AsyncConnection,
) -> psycopg.AsyncConnection[Any]:
    """`psycopg_connection`'s async twin."""
    from sqlalchemy.ext.asyncio import AsyncSession

    conn = await bind.connection() if isinstance(bind, AsyncSession) else bind
    if not conn.in_transaction():
        await conn.begin()
    raw = (await conn.get_raw_connection()).driver_connection
    if not isinstance(raw, psycopg.AsyncConnection):
        raise _not_psycopg(conn.dialect.driver)
    return raw


def _not_psycopg(driver: str) -> InvalidInputError:
    return InvalidInputError(f"enqueueing in an SQLAlchemy transaction needs the psycopg 3 "
                             f"driver (postgresql+psycopg://), not {driver!r}")


def enqueue(queue: JobQueue, bind: Session | Connection, type: str, payload: Any = None,
            **options: Unpack[EnqueueOptions]) -> int:
    """Enqueue a job in `bind`'s transaction; returns its id. Nothing is enqueued unless
    that transaction commits."""
    return queue.enqueue(type, payload, conn=psycopg_connection(bind), **options)


async def aenqueue(queue: AsyncJobQueue, bind: AsyncSession | AsyncConnection, type: str,
                   payload: Any = None, **options: Unpack[EnqueueOptions]) -> int:
    """`enqueue`'s async twin."""
    return await queue.enqueue(type, payload, conn=await async_psycopg_connection(bind),
                               **options)
