"""How a task runner's background loop is doing, and when it is failing for good."""

from __future__ import annotations

import random
import time
from dataclasses import dataclass, field

from .errors import TransientError

#: A background loop that fails with errors that retrying will not fix (a bug, a missing
#: table, a refused permission) this many times in a row, for at least this many seconds,
#: stops the runner. Transient errors (an outage, timeouts) are retried for as long as they
#: last.
PERMANENT_FAILURES, PERMANENT_SECONDS = 5, 30.0
#: Backoff of a failing loop: from this many seconds, doubling, jittered, up to the cap.
BACKOFF_BASE, BACKOFF_CAP = 0.1, 5.0


@dataclass
class LoopHealth:
    """How one background loop is doing: `failures` counts its failed iterations in a row,
    `permanent` those of them in a row that retrying cannot fix, since `permanent_since`."""

    failures: int = 0
    permanent: int = 0
    permanent_since: float | None = None
    last_ok: float | None = None
    last_error: str | None = None
    _delay: float = field(default=BACKOFF_BASE, repr=False)

    def ok(self) -> None:
        self.failures = self.permanent = 0
        self.permanent_since = None
        self.last_ok = time.time()
        self._delay = BACKOFF_BASE

    def failed(self, exc: BaseException) -> float:
        """Count a failure; returns the jittered pause before the next try."""
        self.failures += 1
        if isinstance(exc, TransientError):
            self.permanent, self.permanent_since = 0, None
        else:
            self.permanent += 1
            if self.permanent_since is None:
                self.permanent_since = time.monotonic()
        self.last_error = f"{type(exc).__name__}: {exc}"
        pause = self._delay / 2 + random.uniform(0, self._delay / 2)
        self._delay = min(self._delay * 2, BACKOFF_CAP)
        return pause

    @property
    def hopeless(self) -> bool:
        """Failing for good: permanent errors only, often enough and for long enough."""
        return (self.permanent >= PERMANENT_FAILURES and self.permanent_since is not None
                and time.monotonic() - self.permanent_since >= PERMANENT_SECONDS)

    def reset_backoff(self) -> None:
        self._delay = BACKOFF_BASE
