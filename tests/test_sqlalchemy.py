"""Enqueueing in an SQLAlchemy 2 transaction (psycopg 3 driver), on real Postgres: the job
commits or rolls back with the session's rows."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg.conninfo import conninfo_to_dict

pytest.importorskip("sqlalchemy")

from sqlalchemy import URL, Engine, String, create_engine
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from jobq_core import AsyncJobQueue, JobQueue
from jobq_core.contrib.sqlalchemy import aenqueue, enqueue


class Base(DeclarativeBase):
    pass


class Signup(Base):
    __tablename__ = "signups"
    id: Mapped[int] = mapped_column(primary_key=True)
    email: Mapped[str] = mapped_column(String(100))


def url_of(dsn: str, driver: str = "psycopg") -> URL:
    p = conninfo_to_dict(dsn)
    return URL.create(f"postgresql+{driver}", username=p.get("user"), password=p.get("password"),
                      host=p.get("host"), port=int(p["port"]) if p.get("port") else None,
                      database=p.get("dbname"))


@pytest.fixture
def engine(dsn: str) -> Iterator[Engine]:
    engine = create_engine(url_of(dsn))
    Base.metadata.create_all(engine)
    yield engine
    engine.dispose()


def jobs(db: psycopg.Connection[Any]) -> list[tuple[str, Any]]:
    return db.execute("SELECT type, payload FROM svti_jobs ORDER BY id").fetchall()


def test_a_rolled_back_session_enqueues_nothing(
    engine: Engine, dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue, Session(engine) as session:
        session.add(Signup(email="a@example.com"))
        enqueue(queue, session, "welcome", {"email": "a@example.com"})
        assert jobs(db) == []  # not committed yet
        session.rollback()
    assert jobs(db) == []
    assert db.execute("SELECT count(*) FROM signups").fetchone() == (0,)


def test_a_committed_session_enqueues_with_its_rows(
    engine: Engine, dsn: str, db: psycopg.Connection[Any]
) -> None:
    with JobQueue(dsn) as queue:
        with Session(engine) as session, session.begin():
            session.add(Signup(email="b@example.com"))
            job_id = enqueue(queue, session, "welcome", {"email": "b@example.com"},
                             request_id="req-1", priority=3)
            assert jobs(db) == []
        assert jobs(db) == [("welcome", {"email": "b@example.com"})]
        assert db.execute("SELECT id, request_id, priority FROM svti_jobs").fetchone() == (
            job_id, "req-1", 3)
        assert db.execute("SELECT email FROM signups").fetchall() == [("b@example.com",)]
        # A Connection, not a Session, works alike.
        with engine.connect() as conn:
            enqueue(queue, conn, "welcome", {"email": "c@example.com"})
            conn.rollback()
            enqueue(queue, conn, "welcome", {"email": "d@example.com"})
            conn.commit()
        assert [p["email"] for _, p in jobs(db)] == ["b@example.com", "d@example.com"]



async def test_an_async_session_enqueues_only_when_it_commits(
    engine: Engine, dsn: str, db: psycopg.Connection[Any]
) -> None:
    aengine = create_async_engine(url_of(dsn))
    queue = AsyncJobQueue(dsn)
    try:
        async with AsyncSession(aengine) as session:
            session.add(Signup(email="e@example.com"))
            await aenqueue(queue, session, "welcome", {"email": "e@example.com"})
            assert jobs(db) == []
            await session.rollback()
            session.add(Signup(email="f@example.com"))
            await aenqueue(queue, session, "welcome", {"email": "f@example.com"})
            await session.commit()
        assert jobs(db) == [("welcome", {"email": "f@example.com"})]
        assert db.execute("SELECT email FROM signups").fetchall() == [("f@example.com",)]
        async with aengine.connect() as conn:
            await aenqueue(queue, conn, "welcome", {"email": "g@example.com"})
            await conn.commit()
        assert [p["email"] for _, p in jobs(db)] == ["f@example.com", "g@example.com"]
    finally:
        await queue.close()
        await aengine.dispose()
