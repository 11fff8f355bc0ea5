"""`jobq-tui`: the live operations console.

One poll loop refreshes whichever screen is on top, and only after the previous refresh has
finished, so a slow query can never pile up. All database work goes through
`jobq_core.admin.AsyncAdmin`, the same calls the `jobq` command line makes; the console
holds no SQL of its own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Annotated, Any, ClassVar

import psycopg
import typer
from textual import work
from textual.app import App, ScreenStackError, SystemCommand
from textual.binding import Binding, BindingType
from textual.css.query import NoMatches
from textual.markup import escape
from textual.screen import Screen

from jobq_cli.safe import redact, visible
from jobq_cli.usage import READ_DSN_HELP, OneLineCommand
from jobq_core import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    ReplicaError,
    parse_duration,
)
from jobq_core.admin import Replication, validate_trace
from jobq_core.filters import JobFilter, parse_filter
from jobq_core.models import parse_id

from .connection import ConsoleDB
from .messages import Act, Acted, Open, Refresh, Unmark
from .operator import Operator
from .screens.base import MUTATING, READ_ONLY_REASON, LiveScreen
from .screens.detail import DetailScreen
from .screens.dialogs import HelpScreen, PromptScreen
from .screens.jobs import JobsScreen
from .screens.overview import OverviewScreen
from .screens.schedules import SchedulesScreen
from .screens.trace import TraceScreen
from .screens.workers import WorkersScreen
from .widgets.status import Banner, Crumbs, Freshness, StatusBar

#: Refresh intervals that `+` and `-` step through, in seconds.
INTERVALS = (0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0)
#: The longest wait between reconnection attempts, in seconds.
MAX_BACKOFF = 30.0
#: After an action, how long a refresh waits for the read replica to replay it, in seconds;
#: while it still has not, the console refreshes every `BEHIND_POLL` seconds.
CATCH_UP, BEHIND_POLL = 2.0, 0.5
COMMANDS_HELP = ("commands: trace <request-id> · job <id> · jobs [filter] · failed · "
                 "overview · workers · schedules · clear <age> · refresh <seconds> · quit")


class JobqApp(App[None]):
    """The console. `clock` and `perf` can be fixed for reproducible snapshots."""

    CSS_PATH = "jobq.tcss"
    TITLE = "jobq"
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("question_mark", "help", "Help"),
        Binding("colon", "command_line", "Command"),
        Binding("space", "toggle_pause", "Pause"),
        Binding("plus", "faster", "Faster", show=False),
        Binding("minus", "slower", "Slower", show=False),
        Binding("r", "refresh_now", "Refresh", show=False),
        Binding("escape", "back", "Back", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, dsn: str | None = None, *, table: str = "svti_jobs",
                 read_only: bool = False, interval: float = 2.0,
                 clock: Callable[[], datetime] | None = None,
                 perf: Callable[[], float] | None = None, label: str | None = None,
                 start: Callable[[JobqApp], Screen[Any]] | None = None,
                 read_dsn: str | None = None) -> None:
        super().__init__()
        self.db = ConsoleDB(dsn, table, read_only=read_only, read_dsn=read_dsn)
        self.admin = self.db.admin
        self.read_only = read_only
        self.interval = interval
        self.paused = False
        self.operator = Operator(self, self.db)
        self._clock = clock or (lambda: datetime.now(UTC))
        self._perf = perf or time.perf_counter
        self._start = start
        self._wake = asyncio.Event()
        self._refreshed_at: float | None = None
        self._query_ms: float | None = None
        self._down: str | None = None
        self._last_error: str | None = None
        self.refreshes = 0
        #: Where the read replica stood at the last refresh (None without one).
        self.replica: Replication | None = None
        self._acted = False
        self.target = visible(label or self.db.describe()) + f" · {table}"
        if (reads := self.db.describe_reads()) is not None:
            self.target += f" · reads {visible(reads)}"

    # -- life cycle -------------------------------------------------------------------------

    def now(self) -> datetime:
        return self._clock()

    async def on_mount(self) -> None:
        if self.read_only:
            self.sub_title = "read-only"
        await self.db.open()
        await self.push_screen(OverviewScreen())
        if self._start is not None:
            await self.push_screen(self._start(self))
        self.set_interval(1.0, self._tick)
        self._poll()

    async def on_unmount(self) -> None:
        with contextlib.suppress(Exception):
            await self.db.close()

    # -- the poll loop ----------------------------------------------------------------------

    def poke(self) -> None:
        """Refresh now (after a new screen or filter), without a second loop."""
        self._wake.set()

    def acted(self) -> None:
        """Refresh now, after an action: with a read replica, the refresh first gives it
        `CATCH_UP` seconds to replay the action, so that the screen does not show the rows
        as they were before it; the status bar says so while it still lags behind."""
        self._acted = True
        self.poke()

    @work(exclusive=True, group="poll")
    async def _poll(self) -> None:
        backoff = 1.0
        while True:
            self._wake.clear()
            screen = self._top()
            wait = self.interval
            if isinstance(screen, LiveScreen) and not self.paused:
                try:
                    if self.db.read_dsn is not None:
                        self.replica = await self.admin.catch_up(
                            CATCH_UP if self._acted else 0)
                        self._acted = False
                    started = self._perf()
                    data = await screen.fetch(self.admin)
                except (DatabaseUnavailableError, psycopg.OperationalError) as exc:
                    # The cause once: the error's own text already says what is unavailable.
                    cause = str(exc)
                    if not cause.startswith(("database unavailable", "read replica")):
                        cause = f"database unavailable: {cause}"
                    self._set_down(f"⚠ {cause} · retrying in {backoff:g}s")
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
                except ReplicaError as exc:  # the read DSN needs fixing: said until it is
                    self._set_down(f"⚠ {exc} · checking again in {backoff:g}s")
                    wait, backoff = backoff, min(backoff * 2, MAX_BACKOFF)
                except (JobqError, psycopg.Error) as exc:
                    self._report(str(exc))
                except Exception as exc:  # the console keeps running whatever happens
                    self._report(f"internal error: {type(exc).__name__}: {exc}")
                else:
                    self._query_ms = (self._perf() - started) * 1000
                    self._refreshed_at = self._perf()
                    self._last_error = None
                    backoff = 1.0
                    self._set_down(None)
                    self.refreshes += 1
                    self._show(screen, data)
                    if self.replica is not None and not self.replica.has_own_writes:
                        wait = min(wait, BEHIND_POLL)
                self._tick()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), wait)

    def _show(self, screen: LiveScreen, data: Any) -> None:
        try:
            screen.show(data)
        except NoMatches:
            pass  # the screen is still composing, or already gone: the next refresh shows
        except Exception as exc:  # a rendering bug must not take the console down
            self._report(f"internal error: {type(exc).__name__}: {exc}")

    def _set_down(self, message: str | None) -> None:
        """What the banner says at the next tick; None hides it."""
        self._down = None if message is None else self.db.redact(" ".join(message.split()))

    def _report(self, message: str) -> None:
        """A failed refresh shows once, not at every poll."""
        message = self.db.redact(message)
        if message != self._last_error:
            self._last_error = message
            self.notify(visible(message), title="refresh failed", severity="error",
                        markup=False)

    def _top(self) -> Screen[Any] | None:
        """The screen on top; None while the app is shutting down (a refresh can finish
        after the last screen is gone)."""
        try:
            return self.screen
        except ScreenStackError:
            return None

    def _tick(self) -> None:
        screen = self._top()
        if not isinstance(screen, LiveScreen):
            return
        age = None if self._refreshed_at is None else self._perf() - self._refreshed_at
        info = Freshness(age, self._query_ms, self.interval, self.paused, self.read_only,
                         self.target, self.replica)
        for bar in screen.query(StatusBar):
            bar.show(info)
        for banner in screen.query(Banner):
            banner.show(self._down)
        for crumbs in screen.query(Crumbs):
            crumbs.show([s.crumb for s in self.screen_stack if isinstance(s, LiveScreen)])
        with contextlib.suppress(NoMatches):
            screen.tick()

    # -- app-wide actions -------------------------------------------------------------------

    def action_toggle_pause(self) -> None:
        self.paused = not self.paused
        self.notify("refresh paused" if self.paused else "refresh resumed", timeout=2)
        self.poke()

    def action_faster(self) -> None:
        self.set_refresh_interval(max([i for i in INTERVALS if i < self.interval],
                                      default=INTERVALS[0]))

    def action_slower(self) -> None:
        self.set_refresh_interval(min([i for i in INTERVALS if i > self.interval],
                                      default=INTERVALS[-1]))

    def set_refresh_interval(self, seconds: float) -> None:
        self.interval = seconds
        self.notify(f"refresh every {seconds:g}s", timeout=2)
        self.poke()

    def action_refresh_now(self) -> None:
        self.poke()

    async def action_back(self) -> None:
        if len(self.screen_stack) > 2:  # the overview stays
            self.pop_screen()
            self.poke()

    def open(self, screen: LiveScreen) -> None:
        self.push_screen(screen)
        self.poke()

    # -- what the components ask for (jobq_tui.messages) ------------------------------------

    def on_console_refresh(self, _: Refresh) -> None:
        self.poke()

    def on_console_open(self, message: Open) -> None:
        self.push_screen(message.screen)
        self.poke()

    def on_console_acted(self, _: Acted) -> None:
        self.acted()

    def on_console_unmark(self, message: Unmark) -> None:
        for screen in self.screen_stack:
            if isinstance(screen, JobsScreen):
                screen.unmark(message.ids)

    def on_console_act(self, message: Act) -> None:
        op, ids = self.operator, message.ids
        match message.action:
            case "retry":
                op.start_retry(ids, marked=message.marked)
            case "retry_matching":
                op.start_retry_matching(message.filter or JobFilter())
            case "extend":
                op.start_extend(ids, marked=message.marked)
            case "extend_by":
                op.start_extend_by(ids, message.subject, marked=message.marked)
            case "cancel":
                op.start_cancel(ids, message.subject)
            case "delete":
                op.start_delete(ids)
            case "clear":
                op.start_clear()
            case "pause":
                op.start_pause(message.job_type)
            case "resume":
                op.start_resume(message.job_type)
            case "drain":
                if message.worker is not None:
                    op.start_drain(message.worker)

    def action_help(self) -> None:
        screen = self.screen
        ours: list[tuple[str, str, str]] = []
        widgets: list[tuple[str, str, str]] = []
        seen: set[str] = set()
        for active in screen.active_bindings.values():
            binding = active.binding
            if not binding.description or binding.action in seen:
                continue
            seen.add(binding.action)
            state = "" if active.enabled else (
                "disabled: read-only" if binding.action in MUTATING else "disabled")
            # jobq's own keys first; Textual's generic ones (focus, copy, a table's cursor
            # movement) after them.
            (ours if binding.action in _jobq_actions(active.node) else widgets).append((
                binding.key_display or self.get_key_display(binding), binding.description,
                state))
        rows = ours + widgets
        notes = ["ctrl+p: command palette (every screen and action) · " + COMMANDS_HELP]
        if note := getattr(screen, "help_note", ""):
            notes.insert(0, note)
        if self.read_only:
            notes.append(READ_ONLY_REASON)
        title = getattr(screen, "crumb", "") or "jobq"
        self.push_screen(HelpScreen(f"Keys: {visible(title, 40)}", rows, notes))

    @work(group="prompt")
    async def action_command_line(self) -> None:
        line = await self.push_screen_wait(PromptScreen(
            ":", placeholder="trace <request-id>", hint=COMMANDS_HELP,
            validate=self.check_command))
        if line:
            self.run_command(line)

    def check_command(self, line: str) -> None:
        """Raises `JobqError` with the reason if `line` is not a command."""
        self._command(line)

    def run_command(self, line: str) -> None:
        self._command(line)()

    def _command(self, line: str) -> Callable[[], object]:
        """What `line` asks for, checked but not yet done."""
        word, _, rest = line.strip().partition(" ")
        rest = rest.strip()
        match word.lower():
            case "trace" | "t" if rest:
                validate_trace(rest, 0)
                return lambda: self.open(TraceScreen(rest))
            case "job" | "show" if rest:
                job_id = parse_id(rest)
                return lambda: self.open(DetailScreen(job_id))
            case "jobs" | "list":
                flt = parse_filter(rest)
                return lambda: self.open(JobsScreen(flt))
            case "failed":
                return lambda: self.open(JobsScreen(parse_filter("state:failed")))
            case "overview" | "o":
                return self._to_overview
            case "workers" | "w":
                return lambda: self.open(WorkersScreen())
            case "schedules":
                return lambda: self.open(SchedulesScreen())
            case "clear" if rest:
                parse_duration(rest)
                return lambda: self.operator.start_clear(rest)
            case "refresh" if rest:
                seconds = parse_duration(rest if rest[-1:].isalpha() else f"{rest}s")
                return lambda: self.set_refresh_interval(seconds.total_seconds())
            case "help":
                return self.action_help
            case "quit" | "q":
                return self.exit
            case _:
                raise InvalidInputError(f"unknown command {line!r}; {COMMANDS_HELP}")

    def _to_overview(self) -> None:
        while len(self.screen_stack) > 2:
            self.pop_screen()
        self.poke()

    # -- the command palette ----------------------------------------------------------------

    def get_system_commands(self, screen: Screen[Any]) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Overview", "Per-type counts, late and expired leases, pauses, "
                            "rates", lambda: self.run_command("overview"))
        yield SystemCommand("Workers", "Every runner: host, in flight, last heartbeat; drain",
                            lambda: self.run_command("workers"))
        yield SystemCommand("Schedules", "Every periodic job: its next slot, its last slot "
                            "and job", lambda: self.run_command("schedules"))
        for state in ("pending", "claimed", "failed", "completed"):
            yield SystemCommand(f"Jobs: {state}", f"List {state} jobs",
                                lambda s=state: self.open(JobsScreen(parse_filter(f"state:{s}"))))
        yield SystemCommand("Jobs: all live", "Pending, claimed and failed jobs together",
                            lambda: self.open(JobsScreen(parse_filter(""))))
        yield SystemCommand("Filter jobs…", "state: type: req: error: age: attempts:",
                            lambda: self.open(JobsScreen(parse_filter(""), edit_filter=True)))
        yield SystemCommand("Trace a request id…", "Every event under one request id, live",
                            lambda: self.prompt_then("trace"))
        yield SystemCommand("Show a job…", "A job's payload, lease and timeline",
                            lambda: self.prompt_then("job"))
        # The palette reads help as markup: "[filter]" must stay text.
        yield SystemCommand("Command line (:)", escape(COMMANDS_HELP), self.action_command_line)
        disabled = f" — disabled: {READ_ONLY_REASON}" if self.read_only else ""
        yield SystemCommand("Clear old rows…",
                            "Delete failed jobs and history older than an age" + disabled,
                            lambda: self.prompt_then("clear"))
        if isinstance(screen, JobsScreen | DetailScreen):
            for action, title in screen.ACTION_TITLES.items():
                scope = ("Every failed job the filter matches, after a preview"
                         if action == "retry_all" else "This job"
                         if isinstance(screen, DetailScreen)
                         else "The highlighted job, or the marked ones")
                yield SystemCommand(title, (disabled or scope).lstrip(" —"),
                                    lambda a=action: self.run_screen_action(a))
        if isinstance(screen, OverviewScreen):
            yield SystemCommand("Pause or resume the highlighted type",
                                (disabled or "p; a pause asks for how long and why").lstrip(" —"),
                                lambda: self.run_screen_action("pause_type"))
        if isinstance(screen, WorkersScreen):
            yield SystemCommand("Drain the highlighted worker…",
                                (disabled or "d; it finishes its jobs, then exits").lstrip(" —"),
                                lambda: self.run_screen_action("drain"))
        yield SystemCommand("Pause or resume refresh", "space",
                            self.action_toggle_pause)
        yield SystemCommand("Refresh faster", "+", self.action_faster)
        yield SystemCommand("Refresh slower", "-", self.action_slower)
        yield SystemCommand("Help: keys of this screen", "?", self.action_help)

    def run_screen_action(self, action: str) -> None:
        if action in MUTATING and self.read_only:
            self.notify(READ_ONLY_REASON, title="disabled", severity="warning", markup=False)
            return
        self.call_later(self.screen.run_action, action)

    @work(group="prompt")
    async def prompt_then(self, command: str) -> None:
        if command == "clear" and self.read_only:
            self.notify(READ_ONLY_REASON, title="disabled", severity="warning", markup=False)
            return
        titles = {"trace": "Trace which request id?", "job": "Show which job id?",
                  "clear": "Clear failed jobs and history older than (e.g. 7d)?"}
        value = await self.push_screen_wait(PromptScreen(
            titles[command], validate=lambda v: self.check_command(f"{command} {v}")))
        if value:
            self.run_command(f"{command} {value}")



def _jobq_actions(node: object) -> set[str]:
    """The actions that jobq's own classes bind, as opposed to those Textual's define."""
    return {b.action if isinstance(b, Binding) else b[1]
            for cls in type(node).__mro__ if cls.__module__.startswith("jobq_tui")
            for b in vars(cls).get("BINDINGS", [])}


# -- the `jobq-tui` command -------------------------------------------------------------------

cli = typer.Typer(name="jobq-tui", add_completion=False, pretty_exceptions_enable=False,
                  rich_markup_mode=None)


@cli.command(cls=OneLineCommand,
             help="The live operations console for a jobq queue. Connection: --dsn, else "
             "JOBQ_DSN, else DATABASE_URL, else libpq's PG* variables. Exit codes: 0 quit, "
             "2 bad input, 130 interrupted.")
def console(
    dsn: Annotated[str | None, typer.Option("--dsn", help="libpq connection string or URL")
                   ] = None,
    table: Annotated[str, typer.Option("--table", envvar="JOBQ_TABLE", help="queue table")
                     ] = "svti_jobs",
    read_only: Annotated[bool, typer.Option(
        "--read-only", help="a read-only database session: every action is disabled")] = False,
    refresh: Annotated[float, typer.Option(
        "--refresh", min=0.5, max=60, help="seconds between refreshes (+ and - change it)")
                       ] = 2.0,
    label: Annotated[str | None, typer.Option(
        "--label", help="what the status bar calls this database, e.g. PROD")] = None,
    trace: Annotated[str | None, typer.Option(
        "--trace", help="open the trace tail of this request id")] = None,
    demo: Annotated[bool, typer.Option(
        "--demo", help="run the demo workload (on an embedded Postgres unless --dsn)")] = False,
    read_dsn: Annotated[str | None, typer.Option(
        "--read-dsn", envvar="JOBQ_READ_DSN", help=READ_DSN_HELP)] = None,
) -> None:
    if trace:
        try:
            validate_trace(trace, 0)
        except JobqError as exc:
            print(f"jobq-tui: {visible(str(exc))}", file=sys.stderr)
            raise typer.Exit(2) from None
    start = (lambda app: TraceScreen(trace)) if trace else None

    def run(conninfo: str | None) -> None:
        JobqApp(conninfo, table=table, read_only=read_only, interval=refresh, label=label,
                start=start, read_dsn=read_dsn).run()
    try:
        if demo:
            from jobq_cli.demo import running_demo

            with running_demo(dsn, notice=lambda m: print(m, file=sys.stderr)) as conninfo:
                run(conninfo)
        else:
            run(dsn)
    except JobqError as exc:
        print(f"jobq-tui: {visible(redact(redact(str(exc), read_dsn), dsn))}",
              file=sys.stderr)
        raise typer.Exit(2) from None


def main() -> None:
    try:
        cli()
    except KeyboardInterrupt:
        print("jobq-tui: interrupted", file=sys.stderr)
        sys.exit(130)
