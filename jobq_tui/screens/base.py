"""What every console screen shares: the app's single poll loop refreshes it, and mutating
actions are disabled, with the reason, on a read-only session."""

from __future__ import annotations

from typing import Any, cast

from textual import events
from textual.screen import Screen
from textual.widget import Widget

from jobq_core.admin import AsyncAdmin

from ..messages import Console

#: Actions that change the database; a read-only console shows them disabled.
MUTATING = frozenset({"retry", "retry_all", "extend", "extend_by", "delete", "clear",
                      "cancel", "pause_type", "drain"})
READ_ONLY_REASON = "read-only session (--read-only): the database refuses writes"


class LiveScreen(Screen[None]):
    """A screen the app's poll loop refreshes: `fetch` reads (in the loop's worker, never on
    the UI's own path), `show` renders the result."""

    #: What the breadcrumb calls this screen.
    crumb = ""

    @property
    def jobq(self) -> Console:
        """The app this screen runs in, as much of it as a screen may read."""
        return cast(Console, self.app)

    async def fetch(self, admin: AsyncAdmin) -> Any:
        return None

    def show(self, data: Any) -> None:
        """Render what `fetch` returned."""

    def tick(self) -> None:
        """Called every second, for countdowns that move between refreshes."""

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        if action in MUTATING and self.jobq.read_only:
            return None  # shown, dimmed, in the footer and in help
        return True

    def hide_field_or_back(self, field: Widget, then_focus: Widget) -> None:
        """escape: close an open input line (filter, search), else go back a screen."""
        if field.display:
            field.display = False
            then_focus.focus()
        else:
            self.app.call_later(self.app.run_action, "back")

    def on_key(self, event: events.Key) -> None:
        """A key of a disabled action says why, instead of doing nothing."""
        if not self.jobq.read_only:
            return
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if binding.action in MUTATING:
                self.notify(f"{binding.description}: {READ_ONLY_REASON}",
                            title="disabled", severity="warning", markup=False)
                event.stop()
                return
