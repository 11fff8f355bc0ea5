"""What the console's actions do: the same `AsyncAdmin` calls as `jobq retry`, `extend`,
`cancel`, `delete` and `clear`, with a preview and a confirmation by one rule (the `jobq`
command line follows it too):

- a destructive action confirms: cancel asks y/N naming the job(s), with an optional
  reason; delete and clear show the preview and make you type the count;
- a non-destructive one (retry, extend) on the one highlighted job runs at once, with a
  toast; on marked jobs, or on all matching the filter, it shows the preview and asks y/N
  with the count.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from typing import Any, cast

import psycopg
from rich.text import Text
from textual.app import App

from jobq_cli.format import stamp, zoned
from jobq_cli.safe import visible
from jobq_core import DatabaseUnavailableError, JobqError, parse_duration
from jobq_core.admin import SAMPLE, AsyncAdmin, ClearPreview, Preview, RepairResult, Worker
from jobq_core.durations import ACCEPTED, format_duration
from jobq_core.errors import DatabaseError
from jobq_core.filters import JobFilter
from jobq_core.models import optional_text

from .connection import ConsoleDB
from .messages import Acted, Console, Unmark
from .screens.base import READ_ONLY_REASON
from .screens.dialogs import (
    ConfirmScreen,
    PromptScreen,
    ReasonConfirmScreen,
    TypeToConfirmScreen,
)

#: What `e` adds to a lease.
DEFAULT_EXTEND = "5m"
_VERBS = {"retry": "re-enqueued", "extend": "extended", "delete": "deleted",
          "cancel": "cancelled"}


def preview_text(preview: Preview, noun: str) -> Text:
    """The count, sample ids and the ineligible rows with their reasons."""
    text = Text()
    text.append(f"{preview.eligible} {noun}{'s' if preview.eligible != 1 else ''} will change.\n",
                style="bold")
    if preview.sample_ids:
        more = " …" if preview.eligible > len(preview.sample_ids) else ""
        text.append("ids: " + ", ".join(map(str, preview.sample_ids)) + more + "\n")
    if preview.ineligible:
        text.append(f"{len(preview.ineligible)} not eligible, left alone:\n", style="yellow")
        for job_id, reason in preview.ineligible[:SAMPLE]:
            text.append(f"  {job_id}: {visible(reason, 60)}\n")
        if len(preview.ineligible) > SAMPLE:
            text.append(f"  … and {len(preview.ineligible) - SAMPLE} more\n")
    return text


#: read_only_sql_transaction: a write in a read-only session.
READ_ONLY_SQLSTATE = "25006"

class Operator:
    """Runs the console's actions as workers of `app`, so the UI never waits on the database;
    tells the app what changed by messages (`Acted`, `Unmark`)."""

    def __init__(self, app: App[Any], db: ConsoleDB) -> None:
        self.app = app
        self.db = db

    @property
    def console(self) -> Console:
        """The app, as much of it as the operator reads, read at each use."""
        return cast(Console, self.app)

    @property
    def admin(self) -> AsyncAdmin:
        return self.console.admin

    def _start(self, flow: Callable[[], Awaitable[None]]) -> None:
        if self.console.read_only:
            self.app.notify(READ_ONLY_REASON, title="disabled", severity="warning",
                            markup=False)
            return
        self.app.run_worker(self._guarded(flow), group="action")

    async def _guarded(self, flow: Callable[[], Awaitable[None]]) -> None:
        try:
            await flow()
        except DatabaseError as exc:
            if exc.sqlstate == READ_ONLY_SQLSTATE:
                self._error("the database refused the write: this session is read-only")
            else:
                self._error(str(exc))
        except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
            self._error(f"database unavailable, nothing was changed: {exc}")
        except (JobqError, psycopg.Error) as exc:
            self._error(str(exc))
        finally:
            self.app.post_message(Acted())

    def _error(self, message: str) -> None:
        self.app.notify(visible(self.db.redact(message)), title="action failed",
                        severity="error", markup=False, timeout=8)

    def _done(self, result: RepairResult, what: str, ids: Sequence[int]) -> None:
        verb = _VERBS[result.action.removesuffix("-force")]
        message = f"{result.changed} {what}{'s' if result.changed != 1 else ''} {verb}"
        if result.skipped:
            message += f"; {len(result.skipped)} skipped (their state moved on)"
        self.app.notify(message, title=result.action, markup=False,
                        severity="information" if result.changed else "warning")
        self.app.post_message(Unmark(ids))

    # -- retry ------------------------------------------------------------------------------

    def start_retry(self, ids: Sequence[int], *, marked: bool = False) -> None:
        self._start(lambda: self._retry(list(ids), bulk=marked))

    def start_retry_matching(self, flt: JobFilter) -> None:
        async def flow() -> None:
            ids = await self.admin.matching_ids(replace(flt, state="failed"))
            if not ids:
                self.app.notify("no failed jobs match " + (visible(flt.describe()) or "—"),
                                severity="warning", markup=False)
                return
            await self._retry(ids, bulk=True, matching=flt)
        self._start(flow)

    async def _retry(self, ids: list[int], *, bulk: bool = False,
                     matching: JobFilter | None = None) -> None:
        await self._one_or_confirmed(
            "retry", ids, lambda: self.admin.retry(ids), done=f"job {ids[0]} re-enqueued",
            bulk=bulk, noun="failed job", label="Retry", what="job", matching=matching)

    # -- extend -----------------------------------------------------------------------------

    def start_extend(self, ids: Sequence[int], by: str = DEFAULT_EXTEND, *,
                     marked: bool = False) -> None:
        self._start(lambda: self._extend(list(ids), by, bulk=marked))

    def start_extend_by(self, ids: Sequence[int], subject: str, *, marked: bool = False
                        ) -> None:
        """`subject` names the jobs in the prompt: "job 4242 (email)", "3 marked jobs"."""
        async def flow() -> None:
            by = await self.app.push_screen_wait(PromptScreen(
                f"Extend {visible(subject)} by how long?", value=DEFAULT_EXTEND,
                validate=parse_duration, hint=ACCEPTED))
            if by:
                await self._extend(list(ids), by, bulk=marked)
        self._start(flow)

    async def _extend(self, ids: list[int], by: str, *, bulk: bool = False) -> None:
        amount = format_duration(parse_duration(by))
        await self._one_or_confirmed(
            "extend", ids, lambda: self.admin.extend(ids, by),
            done=f"lease of job {ids[0]} extended by {amount}", bulk=bulk,
            noun="lease", label=f"Extend by {amount}", what="lease")

    # -- cancel -----------------------------------------------------------------------------

    def start_cancel(self, ids: Sequence[int], subject: str) -> None:
        """Cancel, after a y/N that names the jobs and takes an optional reason (CLI twin:
        `jobq cancel`)."""
        async def flow() -> None:
            preview = await self.admin.preview("cancel", list(ids))
            if preview.eligible == 0:
                await self._explain("cancel", list(ids), preview)
                return
            body = preview_text(preview, "job")
            body.append("A running job's handler is stopped at its next heartbeat. Cancelled "
                        "jobs are kept, and can be retried (R) or deleted.", style="dim")
            what = visible(subject) if len(ids) == 1 else \
                f"{preview.eligible} job{'s' if preview.eligible != 1 else ''}"
            reason = await self.app.push_screen_wait(ReasonConfirmScreen(
                f"Cancel {what}?", body, "Cancel " + ("job" if len(ids) == 1 else what)))
            if reason is not None:
                self._done(await self.admin.cancel(list(ids), reason=reason or None), "job",
                           ids)
        self._start(flow)

    # -- delete and clear -------------------------------------------------------------------

    def start_delete(self, ids: Sequence[int]) -> None:
        async def flow() -> None:
            preview = await self.admin.preview("delete", list(ids))
            if preview.eligible == 0:
                await self._explain("delete", list(ids))
                return
            body = preview_text(preview, "job")
            body.append("Deleted jobs are gone for good: their payloads cannot be recovered.",
                        style="bold red")
            ok = await self.app.push_screen_wait(TypeToConfirmScreen(
                f"Delete {preview.eligible} job{'s' if preview.eligible != 1 else ''}?", body,
                str(preview.eligible), "Delete"))
            if ok:
                self._done(await self.admin.delete(list(ids)), "job", ids)
        self._start(flow)

    def start_clear(self, older_than: str | None = None) -> None:
        async def flow() -> None:
            age = older_than or await self.app.push_screen_wait(PromptScreen(
                "Clear failed and cancelled jobs, and history, older than?", value="7d",
                validate=parse_duration, hint=ACCEPTED))
            if not age:
                return
            preview: ClearPreview = await self.admin.preview_clear(age)
            if preview.total == 0:
                self.app.notify(f"nothing is older than {visible(age)}", markup=False)
                return
            body = Text()
            body.append(f"{preview.failed_jobs} failed or cancelled jobs and "
                        f"{preview.history_rows} history rows finished before "
                        f"{stamp(preview.cutoff)}.\n", style="bold")
            if preview.sample_ids:
                body.append("job ids: " + ", ".join(map(str, preview.sample_ids)) + "\n")
            body.append("Pending, scheduled and claimed jobs and their whole history are "
                        "never cleared. ", style="dim")
            body.append("This cannot be undone.", style="bold red")
            ok = await self.app.push_screen_wait(TypeToConfirmScreen(
                f"Clear {preview.total} rows older than {visible(age)}?", body,
                str(preview.total), "Clear"))
            if ok:
                removed = await self.admin.clear(preview)
                self.app.notify(f"cleared {removed} rows older than {visible(age)}",
                                title="clear", markup=False)
        self._start(flow)

    # -- pause, resume and drain: `jobq pause`, `resume` and `workers --drain` -------------
    # Pause and resume delete nothing: they run at once (a pause after asking how long and
    # why). A drain stops a worker: it asks y/N, naming the worker and its host.

    def start_pause(self, job_type: str) -> None:
        async def flow() -> None:
            shown = visible(job_type, 40)
            duration = await self.app.push_screen_wait(PromptScreen(
                f"Pause {shown} for how long? (empty: until resumed)", placeholder="30m",
                validate=lambda v: v and parse_duration(v),
                hint=f"{ACCEPTED}; empty: until someone resumes it (p, or jobq resume)"))
            if duration is None:
                return
            reason = await self.app.push_screen_wait(PromptScreen(
                f"Why is {shown} paused? (optional; other operators see it)",
                placeholder="deploy in progress",
                validate=lambda v: optional_text(v, "reason")))
            if reason is None:
                return
            [pause] = await self.admin.pause([job_type], until=duration or None,
                                             reason=reason or None)
            until = "until resumed" if pause.until is None else \
                f"until {zoned(pause.until, self.console.now())}"
            self.app.notify(f"{job_type} paused {until}: claims skip it", title="pause",
                            markup=False)
        self._start(flow)

    def start_resume(self, job_type: str) -> None:
        async def flow() -> None:
            if await self.admin.resume([job_type]):
                self.app.notify(f"{job_type} resumed: runners claim it again", title="resume",
                                markup=False)
            else:
                self.app.notify(f"{job_type} was not paused (its pause may have run out)",
                                title="nothing changed", severity="warning", markup=False)
        self._start(flow)

    def start_drain(self, worker: Worker) -> None:
        async def flow() -> None:
            body = Text()
            body.append(f"Worker {visible(worker.id, 60)} on {visible(worker.host, 60)} "
                        f"(pid {worker.pid}) stops claiming, finishes its {worker.in_flight} "
                        "running jobs, then exits.\n", style="bold")
            body.append("Its types stay served only if other workers run them.", style="dim")
            ok = await self.app.push_screen_wait(ConfirmScreen(
                f"Drain worker {visible(worker.id, 40)} on {visible(worker.host, 30)}?", body,
                "Drain"))
            if ok:
                await self.admin.drain(worker.id)
                self.app.notify(f"worker {worker.id} on {worker.host} asked to drain",
                                title="drain", markup=False)
        self._start(flow)

    # -- shared -----------------------------------------------------------------------------

    async def _one_or_confirmed(
        self, action: str, ids: list[int], run: Callable[[], Awaitable[RepairResult]], *,
        done: str, noun: str, label: str, what: str, bulk: bool = False,
        matching: JobFilter | None = None,
    ) -> None:
        """One job: at once, with a toast. Several (or `bulk`): preview, then y/N."""
        if len(ids) == 1 and not bulk:
            if (await run()).changed:
                self.app.notify(done, title=action, markup=False)
            else:
                await self._explain(action, ids)
            return
        preview = await self.admin.preview(action, ids)
        if await self._confirm_bulk(action, preview, noun, label, matching):
            self._done(await run(), what, ids)

    async def _confirm_bulk(self, action: str, preview: Preview, noun: str, label: str,
                            matching: JobFilter | None = None) -> bool:
        if preview.eligible == 0:
            await self._explain(action, [i for i, _ in preview.ineligible], preview)
            return False
        body = preview_text(preview, noun)
        if matching is not None:
            body.append("matching: " + (visible(matching.describe()) or "all failed jobs"),
                        style="dim")
        plural = "s" if preview.eligible != 1 else ""
        answer: bool = await self.app.push_screen_wait(ConfirmScreen(
            f"{label} {preview.eligible} {noun}{plural}?", body, label))
        return answer

    async def _explain(self, action: str, ids: list[int], preview: Preview | None = None
                       ) -> None:
        """Why nothing changed: the preview's reason for each id."""
        preview = preview or await self.admin.preview(action, ids)
        reasons = "; ".join(f"job {i}: {r}" for i, r in preview.ineligible[:3]) or \
            "nothing was eligible"
        self.app.notify(visible(f"{action}: {reasons}"), title="nothing changed",
                        severity="warning", markup=False)
