"""What the console tests share: waiting on a running app, and reading what it shows."""

from __future__ import annotations

import io
import time
from collections.abc import Callable
from typing import Any

from rich.console import Console
from textual.css.query import NoMatches
from textual.pilot import Pilot
from textual.widgets import Static

from jobq_tui.app import JobqApp


async def until(pilot: Pilot[Any], check: Callable[[], Any], timeout: float = 10.0,
                settle: float = 0.0) -> Any:
    """Wait, letting the app run, until `check()` is truthy; fail after `timeout`. `settle`
    lets the app run a little longer before returning (for screenshots)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = check()
        except NoMatches:  # the screen it looks at is not up yet
            value = None
        if value:
            if settle:
                await pilot.pause(settle)
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {check}")
        await pilot.pause(0.05)


def text_of(app: JobqApp, selector: str, width: int = 200) -> str:
    """The plain text a Static shows, whatever it renders (Text, a Rich table…)."""
    content = app.screen.query_one(selector, Static).content
    console = Console(width=width, file=io.StringIO(), color_system=None)
    with console.capture() as capture:
        console.print(content)
    return capture.get()
