"""What a task is: a handler registered under a job type, and how its jobs are run
(attempts, backoff, timeout, executor, which errors retry, lease)."""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, TypedDict

from .executors import ProcessCrashedError
from .limits import KeyOf, Limits

#: Where a handler runs: a thread of the runner's pool, a child process, or the event loop.
Executor = Literal["thread", "process", "async"]
#: Seconds before retry number n (1, 2, ...).
Backoff = Callable[[int], float]
#: Which errors retry: these exception types, or a predicate (None: every error).
RetryOn = tuple[type[BaseException], ...] | Callable[[BaseException], bool]


def exponential_backoff(base: float = 1.0, cap: float = 300.0) -> Backoff:
    """Seconds before retry number `attempt`: base * 2^(attempt-1), capped, with equal jitter
    (between half and all of it), so a burst of failures does not retry in lockstep."""

    def backoff(attempt: int) -> float:
        delay: float = min(cap, base * 2.0 ** max(attempt - 1, 0))
        return delay / 2 + random.uniform(0, delay / 2)

    return backoff


class TaskOptions(TypedDict, total=False):
    """How a task is run; see `TaskRunner.register`."""

    max_attempts: int
    backoff: Backoff | None
    timeout: float | None
    executor: Executor | None
    retry_on: RetryOn | None
    lease_ms: int | None
    global_concurrency: int | None
    key_concurrency: int | None
    concurrency_key: KeyOf | None
    rate_limit: str | None
    rate_burst: int | None
    key_rate_limit: str | None
    key_rate_burst: int | None


@dataclass(frozen=True)
class Task:
    """A handler registered under a job type, with how its jobs run."""

    name: str
    fn: Callable[..., Any]
    max_attempts: int
    backoff: Backoff
    timeout: float | None
    executor: Executor
    retry_on: RetryOn | None
    lease_ms: int | None
    #: Fleet-wide limits, kept by every claim of the type (`jobq_core.limits`).
    limits: Limits | None = None

    def retryable(self, exc: BaseException) -> bool:
        """Whether `exc` may retry; timeouts and crashed child processes always may."""
        if self.retry_on is None or isinstance(exc, TimeoutError | ProcessCrashedError):
            return True
        if isinstance(self.retry_on, tuple):
            return isinstance(exc, self.retry_on)
        return bool(self.retry_on(exc))
