"""Inline runs (`TaskRunner.run` / `arun`): enqueue a job and run it here, now, returning its
result, or wait for the worker that already runs it."""

from __future__ import annotations

import contextlib
import time
from typing import Any

from ._ops import finished_result
from .attempt_runner import AttemptRunner
from .attempts import AttemptEnd
from .errors import WaitTimeoutError


async def run_inline(attempts: AttemptRunner, type: str, payload: Any, *,
                     idempotency_key: str | None, request_id: str | None,
                     timeout: float | None) -> Any:
    state = attempts.state
    calls = state.calls
    deadline = None if timeout is None else time.monotonic() + timeout
    job_id: int = await calls.enqueue(
        type, payload, idempotency_key=idempotency_key, request_id=request_id)
    while True:
        done = await calls.outcome(job_id)
        if done.finished:
            return finished_result(job_id, done)
        task = state.tasks[type]
        lease_ms = task.lease_ms or state.lease_ms
        if task.limits is not None:  # its claim keeps them, as a runner's would
            await calls.register_limits({type: task.limits}, by=state.worker_name)
        sent = time.monotonic()
        job = await calls.claim_by_id(job_id, lease_ms=lease_ms, worker=state.worker_name)
        if job is not None:
            outcome, value = await attempts.run(attempts.begin(job, lease_ms, sent),
                                                batch_ack=False)
            if outcome == AttemptEnd.COMPLETED:
                return value
            if outcome == AttemptEnd.FAILED and isinstance(value, BaseException):
                raise value
            continue
        wait = 1.0 if deadline is None else deadline - time.monotonic()
        if wait <= 0:
            raise WaitTimeoutError(f"job {job_id} did not finish in time")
        with contextlib.suppress(WaitTimeoutError):
            return await calls.wait(job_id, timeout=min(wait, 1.0))
