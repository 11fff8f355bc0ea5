"""What the job list and a job's detail share: which actions apply to the jobs in hand.

An action that cannot apply to them is hidden from the footer and from help (as k9s does),
and its key says why in one line instead of opening a dialog that could only refuse."""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from textual import events
from textual.dom import DOMNode

from jobq_cli.format import literal
from jobq_core.admin import ELIGIBLE

from .base import LiveScreen

#: The states each action of the job screens applies to: those its admin call changes.
APPLIES = {"retry": ELIGIBLE["retry"], "extend": ELIGIBLE["extend"],
           "extend_by": ELIGIBLE["extend"], "delete": ELIGIBLE["delete"],
           "cancel": ELIGIBLE["cancel"]}
_DONE = {"retry": "retried", "extend": "extended", "extend_by": "extended",
         "delete": "deleted", "cancel": "cancelled"}
#: What to do instead, where there is something.
_INSTEAD = {("delete", "claimed"): " (cancel it first: c)",
            ("retry", "pending"): " (it is waiting to run)"}


class JobActionsScreen(LiveScreen):
    """A screen whose actions act on some jobs: the highlighted one, the marked ones, or the
    one shown."""

    #: What the command palette calls each action.
    ACTION_TITLES: ClassVar[dict[str, str]] = {}

    def in_hand(self) -> dict[int, str]:
        """The jobs an action would act on, with their states as last shown."""
        return {}

    def job_types(self) -> dict[int, str]:
        """The types of the jobs in hand, as far as the screen knows them."""
        return {}

    def subject(self) -> str:
        """The jobs in hand as a prompt names them: "job 4242 (email)" or "3 marked jobs"."""
        jobs = self.in_hand()
        if len(jobs) != 1:
            return f"{len(jobs)} marked jobs"
        [job_id] = jobs
        job_type = self.job_types().get(job_id)
        return f"job {job_id}" + (f" ({literal(job_type, 40).plain})" if job_type else "")

    def refusal(self, action: str) -> str | None:
        """Why `action` cannot apply to the jobs in hand; None when it applies to one of
        them at least (a bulk action's preview names the others)."""
        needs = APPLIES.get(action)
        if needs is None:
            return None
        jobs = self.in_hand()
        if not jobs:
            return "no job selected"
        if any(state in needs for state in jobs.values()):
            return None
        wanted = " or ".join(needs)
        if len(jobs) > 1:
            return f"none of the {len(jobs)} marked jobs is {wanted}"
        [(job_id, state)] = jobs.items()
        return (f"job {job_id} is {state}; only {wanted} jobs can be {_DONE[action]}"
                + _INSTEAD.get((action, state), ""))

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        allowed = super().check_action(action, parameters)
        if allowed is True and self.refusal(action) is not None:
            return False
        return allowed

    def _say_why(self, action: str, what: str) -> bool:
        """Whether `action` cannot apply, after saying why in one line (a read-only
        session's keys are answered by `LiveScreen.on_key`)."""
        reason = None if self.jobq.read_only else self.refusal(action)
        if reason is not None:
            self.notify(f"{what}: {reason}", title="not applicable", severity="warning",
                        markup=False)
        return reason is not None

    def on_key(self, event: events.Key) -> None:
        for binding in self._bindings.key_to_bindings.get(event.key, ()):
            if self._say_why(binding.action, binding.description):
                event.stop()
                return

    async def run_action(self, action: str,
                         namespaces: Mapping[str, DOMNode] | None = None) -> None:
        """The command palette's way in answers as the key does."""
        if not self._say_why(action, self.ACTION_TITLES.get(action, action)):
            await super().run_action(action, namespaces)
