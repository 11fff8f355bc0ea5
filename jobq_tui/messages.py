"""What the console's components ask of the app. Screens and the operator post these, and
only the app handles them (`on_console_<name>`), so no component imports the app (as
Harlequin's components do)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any, Literal, Protocol

from textual.message import Message
from textual.screen import Screen

from jobq_core.admin import AsyncAdmin, Worker
from jobq_core.filters import JobFilter


class Console(Protocol):
    """What a component may read of the app it runs in."""

    read_only: bool
    admin: AsyncAdmin

    def now(self) -> datetime: ...


class Refresh(Message, namespace="console"):
    """Refresh the screen on top now (a new filter, page or search), in the one poll loop."""


class Open(Message, namespace="console"):
    """Push `screen` and refresh it at once."""

    def __init__(self, screen: Screen[Any]) -> None:
        super().__init__()
        self.screen = screen


class Acted(Message, namespace="console"):
    """An action changed the database: refresh, after a read replica has caught up with it."""


class Unmark(Message, namespace="console"):
    """Forget the marks on jobs an action has dealt with."""

    def __init__(self, ids: Iterable[int]) -> None:
        super().__init__()
        self.ids = frozenset(ids)


#: The console's actions (`jobq_tui.operator`), each the same admin call as a `jobq` command.
Action = Literal["retry", "retry_matching", "extend", "extend_by", "cancel", "delete", "clear",
                 "pause", "resume", "drain"]


class Act(Message, namespace="console"):
    """Run `action` on `ids` (`marked` when they are the user's marks), or on what `filter`
    matches, on `job_type`, or on `worker`; `subject` names the jobs in a prompt."""

    def __init__(self, action: Action, ids: Iterable[int] = (), *, marked: bool = False,
                 subject: str = "", filter: JobFilter | None = None, job_type: str = "",
                 worker: Worker | None = None) -> None:
        super().__init__()
        self.action = action
        self.ids = list(ids)
        self.marked = marked
        self.subject = subject
        self.filter = filter
        self.job_type = job_type
        self.worker = worker
