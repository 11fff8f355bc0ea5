"""Handlers and worker entry points for the runner tests. They live in a module of their own
because process executors and spawned workers must import them by name."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Any

from jobq_core import JobQueue, TaskRunner, create_task_runner


def noop(payload: Any, ctx: Any) -> Any:
    return {"n": payload.get("n") if isinstance(payload, dict) else None}


def slow_first_attempt(payload: Any, ctx: Any) -> Any:
    """Sleeps on its first attempt only, so a recovered job finishes at once."""
    if ctx.attempt == 1:
        deadline = time.monotonic() + payload.get("sleep", 0)
        while time.monotonic() < deadline and not ctx.cancelled.is_set():
            time.sleep(0.01)
    return {"n": payload.get("n"), "attempt": ctx.attempt}


def die(payload: Any, ctx: Any) -> Any:
    os._exit(3)  # takes the whole worker down, like a segfault would


def boom(payload: Any, ctx: Any) -> Any:
    raise ValueError(f"boom {payload}")


def report(payload: Any, ctx: Any) -> Any:
    """Process handler: shows what a child sees, and enqueues a follow-up from the child."""
    child = ctx.enqueue("noop", {"n": "from-process"}) if payload.get("spawn") else None
    return {"request_id": ctx.request_id, "attempt": ctx.attempt, "pid": os.getpid(),
            "child": child}


def sleepy(payload: Any, ctx: Any) -> Any:
    time.sleep(payload.get("sleep", 5))
    return "woke"


async def async_sleepy(payload: Any, ctx: Any) -> Any:
    await asyncio.sleep(payload.get("sleep", 5))
    return "woke"


def make_runner(dsn: str, *, fast: bool = False, **options: Any) -> TaskRunner:
    """The standard test runner; `fast` makes "slow" jobs finish at once."""
    runner = create_task_runner(JobQueue(dsn), **options)
    runner.register("noop", noop)
    runner.register("slow", noop if fast else slow_first_attempt, max_attempts=3)
    runner.register("die", die, max_attempts=2)
    return runner


def serve(dsn: str, options: dict[str, Any]) -> None:
    """A worker process: serve until SIGTERM (or idle, if asked)."""
    until_idle = options.pop("until_idle", False)
    make_runner(dsn, **options).serve_forever(until_idle=until_idle)
