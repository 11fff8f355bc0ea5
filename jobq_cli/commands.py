"""`jobq`: the command line for scripts and operators.

Every command is one `jobq_core.admin` (or queue) call, the same one the TUI makes. Data goes
to stdout (tables for people, one JSON document with ``--json``), messages to stderr.
Commands that change jobs take ``--dry-run``. One rule for asking, the console's too:
destructive actions (delete, cancel, clear, drain, migrate) and any action on jobs a filter
chose ask for confirmation with the count unless ``--yes``; the others (retry or extend of
given ids, pause, resume) do not ask. Without a terminal to ask on, they refuse rather than
hang. ``jobq --read-only`` (or JOBQ_READ_ONLY) refuses writes before connecting and opens
read-only sessions. The commands that only read (status, metrics, list, show, trace, workers
and pause without arguments) read a hot standby given by ``--read-dsn`` (or JOBQ_READ_DSN);
every other command uses the primary.

Exit codes: 0 success, 1 failure, 2 usage or bad input, 3 not found, 4 lease lost or conflict,
5 database unreachable, 130 interrupted. Errors are one line on stderr, usage errors included.
"""

from __future__ import annotations

import importlib
import json
import logging
import os
import signal
import sys
import time
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, is_dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated, Any, NoReturn, TypeVar
from uuid import UUID

import psycopg
import typer
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool
from rich.console import Console
from rich.table import Table
from rich.text import Text

import jobq_core
from jobq_core import (
    DatabaseUnavailableError,
    InvalidInputError,
    JobqError,
    JobQueue,
    JobStateError,
    LeaseLostError,
    MissingExtraError,
    NotFoundError,
    ReplicaError,
    TaskRunner,
    parse_duration,
)
from jobq_core.admin import (
    NOT_IN_QUEUE,
    TRACE_PAGE,
    Admin,
    Event,
    JobRow,
    LimitRow,
    Pause,
    Preview,
    RepairResult,
    Replication,
    ScheduleRow,
    TraceTail,
    TypeStats,
    Worker,
)
from jobq_core.dsn import check as check_dsn
from jobq_core.dsn import check_read as check_read_dsn
from jobq_core.dsn import refused_option
from jobq_core.dsn import resolve as resolve_dsn
from jobq_core.durations import ACCEPTED
from jobq_core.filters import parse_filter
from jobq_core.logs import LOG_FORMATS, JsonFormatter, log_to_stderr
from jobq_core.models import parse_id
from jobq_core.sql import Names

from .format import lag
from .safe import redact, visible
from .usage import READ_DSN_HELP, OneLineGroup, error_line

if TYPE_CHECKING:
    from jobq_tui.app import JobqApp

EXIT_FAILURE, EXIT_USAGE, EXIT_NOT_FOUND, EXIT_CONFLICT, EXIT_UNREACHABLE = 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
EXIT_CODES_HELP = (
    "Exit codes: 0 success, 1 failure, 2 usage or bad input, 3 not found, "
    "4 lease lost or conflict, 5 database unreachable, 130 interrupted."
)
CONNECTION_HELP = (
    "Connection: --dsn, else JOBQ_DSN, else DATABASE_URL, else libpq's PG* variables. "
    "Table: --table, else JOBQ_TABLE, else svti_jobs. The commands that only read (status, "
    "metrics, list, show, trace, workers, pause without types) read a hot standby given by "
    "--read-dsn or JOBQ_READ_DSN."
)

#: `ctx.meta` key of the global --read-only flag.
READ_ONLY = "jobq.read_only"
#: Appended to the session's own server options under --read-only.
READ_ONLY_OPTION = "-c default_transaction_read_only=on"


app = typer.Typer(
    name="jobq",
    cls=OneLineGroup,
    help=f"Operate a jobq queue on Postgres. {CONNECTION_HELP} {EXIT_CODES_HELP}",
    add_completion=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
out = Console(highlight=False, soft_wrap=False)
err = Console(stderr=True, highlight=False)

Dsn = Annotated[str | None, typer.Option("--dsn", help="libpq connection string or URL")]
TableName = Annotated[str, typer.Option("--table", envvar="JOBQ_TABLE", help="queue table")]
AsJson = Annotated[bool, typer.Option("--json", help="one JSON document on stdout")]
DryRun = Annotated[bool, typer.Option("--dry-run", help="show what would change, change nothing")]
Yes = Annotated[bool, typer.Option("--yes", "-y", help="do not ask for confirmation")]
ReadDsn = Annotated[str | None, typer.Option("--read-dsn", envvar="JOBQ_READ_DSN",
                                             help=READ_DSN_HELP)]


@app.callback(invoke_without_command=True)
def session(
    ctx: typer.Context,
    read_only: Annotated[bool, typer.Option(
        "--read-only", envvar="JOBQ_READ_ONLY",
        help="refuse every command that writes (before connecting; --dry-run previews run) "
        "and open read-only sessions (default_transaction_read_only)")] = False,
    version: Annotated[bool, typer.Option(
        "--version", is_eager=True, help="print jobq's version and exit")] = False,
) -> None:
    if version:
        typer.echo(f"jobq {jobq_core.__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:  # `jobq` alone: the help, as a usage error
        typer.echo(ctx.get_help(), err=True)
        raise typer.Exit(EXIT_USAGE)
    ctx.meta[READ_ONLY] = read_only


# -- plumbing ---------------------------------------------------------------------------------

def job_id_arg(text: str) -> int:
    """A job id as typed: ASCII digits only. Typer alone would take "1.0" as job 1."""
    try:
        return parse_id(text)
    except InvalidInputError as exc:
        raise typer.BadParameter(str(exc)) from None


def fail(message: str, code: int, dsn: str | None = None,
         read_dsn: str | None = None) -> NoReturn:
    """One line on stderr, without either DSN's password; then exit with `code`."""
    typer.echo(error_line(redact(message, read_dsn), dsn), err=True)
    raise typer.Exit(code)


def refuse_if_read_only(ctx: typer.Context, what: str | None = None) -> None:
    """Under --read-only, the command (one that writes; `what` when only some of its forms
    do) stops here, before connecting."""
    if ctx.meta.get(READ_ONLY):
        previews = any(p.name == "dry_run" for p in ctx.command.params)
        fail(f"refusing to run `{what or ctx.info_name}`: it writes to the database, and "
             "--read-only (or JOBQ_READ_ONLY) is set"
             + ("; --dry-run previews it" if previews else ""), EXIT_USAGE)


def session_conninfo(conninfo: str, read_only: bool) -> str:
    """The conninfo the CLI connects with: under --read-only, every transaction defaults to
    read-only, after the DSN's own server options (or PGOPTIONS, which an `options` keyword
    would otherwise replace). A malformed DSN is refused here, without its password."""
    check_dsn(conninfo)
    if not read_only:
        return conninfo
    theirs = str(conninfo_to_dict(conninfo).get("options") or os.environ.get("PGOPTIONS", ""))
    return make_conninfo(conninfo, options=f"{theirs} {READ_ONLY_OPTION}".strip())


def exit_code_for(exc: BaseException) -> int:
    if isinstance(exc, InvalidInputError | ReplicaError):
        return EXIT_USAGE
    if isinstance(exc, NotFoundError):
        return EXIT_NOT_FOUND
    if isinstance(exc, LeaseLostError | JobStateError):
        return EXIT_CONFLICT
    if isinstance(exc, DatabaseUnavailableError):
        return EXIT_UNREACHABLE
    return EXIT_FAILURE


def _connect(conninfo: str, read_only: bool, *, replica: bool = False
             ) -> psycopg.Connection[Any]:
    """A dedicated connection; a failure to connect is a typed error, which names the read
    replica when it is its."""
    if replica:
        check_read_dsn(conninfo)
    # Redaction knows the DSN as given, not as --read-only rewrites it.
    session = session_conninfo(conninfo, read_only)
    whose = "read " if replica else ""
    try:
        return psycopg.connect(session, autocommit=True, connect_timeout=5,
                               application_name="jobq-cli")
    except psycopg.OperationalError as exc:
        if refused_option(str(exc)):
            raise InvalidInputError(f"invalid {whose}connection string: {exc}") from None
        raise DatabaseUnavailableError(
            f"{'read replica' if replica else 'database'} unavailable: {exc}") from None
    except psycopg.ProgrammingError as exc:
        raise InvalidInputError(f"invalid {whose}connection string: {exc}") from None


@contextmanager
def connected(ctx: typer.Context, dsn: str | None, table: str, *, writes: bool,
              read_dsn: str | None = None) -> Iterator[Admin]:
    """An `Admin` on one dedicated connection (and, with `read_dsn`, one to that replica for
    its reads); every failure becomes one line and a code. `writes`: the command changes the
    database, so --read-only refuses it, and it reads the primary alone."""
    if writes:
        refuse_if_read_only(ctx)
        read_dsn = None
    conninfo = resolve_dsn(dsn)
    read_dsn = read_dsn or None
    read_only = bool(ctx.meta.get(READ_ONLY))
    try:
        Names.parse(table)  # a bad table name is refused before connecting
        with ExitStack() as stack:
            conn = stack.enter_context(_connect(conninfo, read_only))
            queue = stack.enter_context(JobQueue(conn, table=table, auto_migrate=False))
            reads = None
            if read_dsn is not None:
                replica = stack.enter_context(_connect(read_dsn, read_only, replica=True))
                reads = stack.enter_context(JobQueue(replica, table=table, auto_migrate=False))
            yield Admin(queue, reads=reads)
    except JobqError as exc:
        fail(str(exc), exit_code_for(exc), conninfo, read_dsn)
    except psycopg.OperationalError as exc:
        fail(f"database unavailable: {exc}", EXIT_UNREACHABLE, conninfo, read_dsn)
    except psycopg.Error as exc:
        fail(f"database error: {exc}", EXIT_FAILURE, conninfo, read_dsn)


def _plain(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, timedelta):
        return value.total_seconds()
    if isinstance(value, UUID):
        return str(value)
    if is_dataclass(value) and not isinstance(value, type):
        return {k: _plain(v) for k, v in asdict(value).items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


#: Characters a terminal may act on or that hide text: C0 and C1 controls, format
#: characters (bidi overrides, zero-width), and line and paragraph separators.
_UNSAFE_CATEGORIES = frozenset({"Cc", "Cf", "Zl", "Zp"})


def json_text(value: Any) -> str:
    """JSON for stdout: readable UTF-8, except that every unsafe character is a \\u escape,
    so `--json` output piped to a terminal is shown literally and decodes to the same data."""
    return "".join(json.dumps(ch)[1:-1] if unicodedata.category(ch) in _UNSAFE_CATEGORIES
                   else ch for ch in json.dumps(_plain(value), ensure_ascii=False))


def emit_json(value: Any) -> None:
    sys.stdout.write(json_text(value) + "\n")
    sys.stdout.flush()


def cell(value: Any, limit: int = 60) -> Text:
    """A table cell: untrusted text shown literally (no markup, no escapes)."""
    if value is None:
        return Text("-", style="dim")
    if isinstance(value, datetime):
        return Text(at(value))
    if isinstance(value, timedelta):
        return Text(jobq_core.format_duration(value) or "0s")
    if not isinstance(value, str):
        value = json.dumps(value, ensure_ascii=False) if isinstance(value, dict | list) else value
    first_line = str(value).split("\n", 1)[0]
    return Text(visible(first_line, limit))


def at(value: datetime) -> str:
    """A point in time as printed: with its zone, since a server's local time is no guess."""
    return value.isoformat(sep=" ", timespec="seconds")


def coarse(value: timedelta) -> str:
    """A duration in its largest unit and the next one ("3d4h", "5m12s", "2h"): enough to
    read at a glance."""
    seconds = int(value.total_seconds())
    for size, next_size in ((86400, 3600), (3600, 60), (60, 1)):
        if seconds >= size:
            return jobq_core.format_duration(timedelta(
                seconds=seconds - seconds % next_size))
    return f"{max(seconds, 0)}s"


def ago(seconds: float) -> str:
    return f"{coarse(timedelta(seconds=seconds))} ago"


def stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


#: Actions that destroy, stop or cannot be taken back: they ask even for one given id.
DESTRUCTIVE = frozenset({"delete", "delete-force", "cancel", "clear", "drain", "migrate"})


def confirm(what: str, yes: bool) -> None:
    """Ask "`what`?" (default No) unless --yes; with no terminal to ask on, refuse."""
    if yes:
        return
    if not stdin_is_terminal():
        fail(f"refusing to {what} without --yes: no terminal to confirm on", EXIT_USAGE)
    if not typer.confirm(f"{what}?", default=False, err=True):
        fail("aborted", EXIT_FAILURE)


def show_preview(preview: Preview) -> None:
    err.print(Text(f"{preview.action}: {preview.eligible} eligible"
                   + (f", e.g. {', '.join(map(str, preview.sample_ids))}"
                      if preview.sample_ids else "")))
    for job_id, reason in preview.ineligible[:20]:
        err.print(Text(f"  not {job_id}: {reason}"))
    if len(preview.ineligible) > 20:
        err.print(Text(f"  … and {len(preview.ineligible) - 20} more not eligible"))


def parse_when(text: str | None) -> datetime | None:
    if text is None:
        return None
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise InvalidInputError(
            f"invalid time {text!r}: use ISO 8601 with a zone, e.g. 2026-12-01T09:00:00+00:00"
        ) from None
    if value.tzinfo is None:
        raise InvalidInputError(f"time {text!r} has no time zone; add +00:00 or Z")
    return value


def progress_line(done: int, total: int | None = None) -> None:
    err.print(Text(f"  {done}" + (f"/{total}" if total else "") + " done"))


def job_rows_table(rows: list[JobRow]) -> Table:
    table = Table(show_edge=False, header_style="bold")
    for name in ("ID", "TYPE", "STATE", "ATT", "WHEN", "REQUEST", "ERROR / RESULT"):
        table.add_column(name, overflow="fold" if name == "ERROR / RESULT" else "ellipsis")
    for row in rows:
        when = row.lease_until if row.state == "claimed" else row.failed_at or row.run_at
        detail = row.last_error if row.state != "completed" else row.result
        table.add_row(Text(str(row.id)), cell(row.type, 40), cell(row.state),
                      Text(str(row.attempts)), cell(when or row.created_at),
                      cell(row.request_id, 24), cell(detail, 80))
    return table


def _ids_or_filter(ids: list[int] | None, filter_text: str | None, admin: Admin,
                   states: Sequence[str] = (), *, need_filter: bool = True) -> list[int]:
    """The ids given, or those the filter selects; a filter that names no state selects the
    jobs in `states` (every live job when there are none)."""
    if ids and filter_text:
        raise InvalidInputError("give job ids or a filter, not both")
    if ids:
        return ids
    if filter_text is None and need_filter:
        raise InvalidInputError("give job ids or a filter")
    chosen = parse_filter(filter_text or "")
    if chosen.state is not None or not states:
        return admin.matching_ids(chosen)
    return sorted({i for state in states for i in admin.matching_ids(replace(chosen, state=state))})


# -- reading ----------------------------------------------------------------------------------

@app.command()
def status(ctx: typer.Context, dsn: Dsn = None, table: TableName = "svti_jobs",
           as_json: AsJson = False, read_dsn: ReadDsn = None) -> None:
    """Per job type: ready, scheduled, claimed, late (less than half of its lease left: a
    heartbeat was missed), expired, failed, cancelled, oldest ready age, and completed/failed
    in the last minute (~ marks an estimate). Under the table: paused types (who, why, until
    when), and expired leases that no live worker will take back. With --read-dsn, how far
    the replica is behind (and --json is {"types": [...], "replica": {...}})."""
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        replica = admin.replication()  # first: the counts are at least this fresh
        stats = admin.stats()
    if as_json:
        emit_json(stats if replica is None else {"types": stats, "replica": replica})
        return
    if not stats:
        out.print(Text("no jobs"))
    else:
        status_table(stats)
    if replica is not None:
        out.print(Text(replica_line(replica)))


def replica_line(replica: Replication) -> str:
    """How far behind the replica is: 0 s while it streams and has replayed all it received,
    else the age of the last transaction it replayed (see the README)."""
    where = f"replica {visible(replica.where)}: "
    if not replica.streaming:
        return (where + "NOT streaming (no WAL receiver runs); its last replayed transaction "
                f"is {lag(replica.lag)} old")
    if replica.lag is None:
        return where + "lag unknown: no transaction replayed since it started"
    if replica.caught_up:
        return where + "0 s behind (it has replayed all the WAL it received)"
    return where + f"{lag(replica.lag)} behind ({replica.replay_pending} bytes of WAL to replay)"


def status_table(stats: list[TypeStats]) -> None:
    """The table, then what needs saying of single types: pauses, leases nobody takes back.
    """
    # Fits 80 columns, a pipe's width: one space between columns, headers that are never
    # cut (numbers do not wrap), and a type name that folds onto further lines rather than
    # being cut short. `--json` is the form for scripts.
    grid = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), pad_edge=False)
    # CANCL as the console writes it: the four columns it saves let common type names
    # ("send-email", "long-report") fit on one line at 80.
    grid.add_column("TYPE", overflow="fold", min_width=13, ratio=1)
    for name in ("READY", "SCHED", "CLAIMED", "LATE", "EXPIRED", "FAILED", "CANCL",
                 "OLDEST", "DONE/M", "FAIL/M"):
        grid.add_column(name, justify="right", no_wrap=True, min_width=len(name))
    for s in stats:
        grid.add_row(cell(s.type, 40), *(Text(str(c)) for c in (
            s.ready, s.scheduled, s.claimed, s.late, s.expired, s.failed, s.cancelled)),
            cell(None) if s.oldest_ready_age is None else Text(coarse(s.oldest_ready_age)),
            *(Text(str(rate[-1] if rate else 0))
              for rate in (s.completed_per_min, s.failed_per_min)))
    out.print(grid)
    for s in stats:
        if s.limits is not None:
            out.print(Text(visible(f"{s.type}: limits {s.limits.summary}; "
                                   f"{s.limits.usage}")))
    for s in stats:
        if s.paused is not None:
            out.print(pause_line(s.paused))
        elif s.expired.value and not s.served:
            leases = f"{s.expired} expired lease" + ("" if str(s.expired) == "1" else "s")
            out.print(Text(visible(s.type) + f": no live worker serves it, so nothing takes "
                           f"back its {leases} (start one: jobq worker)"))


def pause_line(pause: Pause) -> Text:
    """Who paused a type, why, and until when."""
    until = f"until {at(pause.until)}" if pause.until else "until resumed"
    return Text(visible(f"{pause.type}: paused by {pause.paused_by} {until}"
                        + (f": {pause.reason}" if pause.reason else "")))


@app.command("list")
def list_cmd(
    ctx: typer.Context,
    filter_words: Annotated[list[str] | None, typer.Argument(
        metavar="[FILTER]...", help="e.g. state:failed type:send-email req:abc error:Timeout "
        "age:>1h attempts:>=3")] = None,
    limit: Annotated[int, typer.Option(min=1, max=1000)] = 50,
    after: Annotated[str | None, typer.Option(help="the cursor a previous page printed")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
    read_dsn: ReadDsn = None,
) -> None:
    """Jobs matching a filter, one page at a time (keyset: no limit on how far you page)."""
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        page = admin.list_jobs(" ".join(filter_words or []), after=after, limit=limit)
    if as_json:
        emit_json({"rows": page.rows, "next_cursor": page.next_cursor})
        return
    out.print(job_rows_table(page.rows) if page.rows else Text("no jobs match"))
    if page.next_cursor:
        err.print(Text(f"more: --after {page.next_cursor}"))


@app.command()
def show(ctx: typer.Context,
         job_id: Annotated[int, typer.Argument(help="job id", parser=job_id_arg)],
         dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
         read_dsn: ReadDsn = None) -> None:
    """A job (live or finished) and its full history."""
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        detail = admin.show(job_id)
    if as_json:
        emit_json({"job": detail.job, "state": detail.state, "events": detail.events,
                   "limits": detail.limits, "schedule": detail.schedule})
        return
    if detail.job is not None:
        job = detail.job
        for label, value in (("id", job.id), ("type", job.type), ("state", job.state),
                             ("attempts", job.attempts), ("priority", job.priority),
                             ("run at", job.run_at), ("request id", job.request_id),
                             ("idempotency key", job.idempotency_key),
                             ("lease until", job.lease_until), ("claimed by", job.claimed_by),
                             ("created", job.created_at),
                             ("concurrency key", job.concurrency_key)):
            out.print(Text(f"{label:>16}: ") + cell(value, 200))
        for label, value in (("traceparent", job.traceparent), ("tracestate", job.tracestate)):
            if value is not None:  # only for a job enqueued inside a span
                out.print(Text(f"{label:>16}: ") + cell(value, 200))
        out.print(Text("         payload:"))
        out.print(Text("\n".join(  # its own line breaks kept, anything else made visible
            visible(line) for line in json.dumps(job.payload, indent=2, ensure_ascii=False)
            .split("\n"))))
        if job.last_error:
            out.print(Text("      last error:"))
            out.print(Text(visible(job.last_error).replace("\\n", "\n")))
    else:
        out.print(Text(f"job {job_id}: {detail.state} (no longer in the queue)"))
    if detail.limits is not None:
        out.print(Text(f"{'limits':>16}: " + visible(
            f"{detail.limits.summary} ({detail.limits.usage})")))
    if detail.schedule is not None:
        out.print(Text(f"{'schedule':>16}: " + visible(detail.schedule.spec)))
    out.print(_events_table(detail.events))


EVENT_COLUMNS = ("AT", "JOB", "EVENT", "ATT", "WORKER", "REQUEST", "REASON / RESULT")


def _event_cells(e: Event) -> list[Text]:
    return [cell(e.occurred_at), Text(str(e.job_id)), cell(e.event), Text(str(e.attempt)),
            cell(e.worker, 30), cell(e.request_id, 24),
            cell(e.reason if e.reason is not None else e.result, 80)]


def _events_table(events: list[Event], widths: Sequence[int] = (),
                  header: bool = True) -> Table:
    """Events as a table; `widths` are the least widths of the first columns."""
    grid = Table(show_edge=False, header_style="bold", show_header=header)
    for i, name in enumerate(EVENT_COLUMNS):
        grid.add_column(name, min_width=widths[i] if i < len(widths) else None)
    for e in events:
        grid.add_row(*_event_cells(e))
    return grid


class TraceOutput:
    """A trace printed as it is read, page by page: one JSON array, or one table. The first
    page sets the table's column widths and later pages keep them, so the pages line up (a
    wider value later widens its column rather than being cut)."""

    def __init__(self, as_json: bool) -> None:
        self.as_json = as_json
        self.count = 0
        self._widths: list[int] = []

    def page(self, events: list[Event]) -> None:
        if self.as_json:
            sys.stdout.write("".join(("[" if self.count + i == 0 else ", ") + json_text(e)
                                     for i, e in enumerate(events)))
            sys.stdout.flush()
        elif events:
            if not self._widths:
                rows = [_event_cells(e) for e in events]
                self._widths = [max(len(name), *(row[i].cell_len for row in rows))
                                for i, name in enumerate(EVENT_COLUMNS[:-1])]
            out.print(_events_table(events, self._widths, header=self.count == 0))
        self.count += len(events)

    def end(self) -> None:
        if self.as_json:
            sys.stdout.write(("[" if self.count == 0 else "") + "]\n")
            sys.stdout.flush()
        elif self.count == 0:
            out.print(Text("no events for that request id"))


@app.command()
def trace(
    ctx: typer.Context,
    request_id: Annotated[str, typer.Argument(help="the request id to follow")],
    follow: Annotated[bool, typer.Option("--follow", "-f", help="keep printing new events")]
    = False,
    after: Annotated[int, typer.Option(min=0, help="only the events after this event id")]
    = 0,
    limit: Annotated[int | None, typer.Option(
        min=1, help="at most this many events, then the --after that goes on (default: all)")]
    = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
    read_dsn: ReadDsn = None,
) -> None:
    """Everything that happened under one request id, in time order: every event, however
    many, streamed page by page (JSON lines with --follow --json). --follow reads the
    primary, even with --read-dsn: its gap-free delivery rests on the primary's order of
    transaction ids, and it is woken by the primary's NOTIFY."""
    if follow:
        if limit is not None:
            fail("--limit does not apply to --follow", EXIT_USAGE)
        _follow(ctx, request_id, after, dsn, table, as_json)
        return
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        output = TraceOutput(as_json)
        # One event past --limit tells whether there are more.
        size = TRACE_PAGE if limit is None else min(TRACE_PAGE, limit + 1)
        last, more = after, False
        for page in admin.trace_pages(request_id, after=after, page=size):
            shown = page
            if limit is not None and output.count + len(page) > limit:
                shown, more = page[:limit - output.count], True
            output.page(shown)
            last = shown[-1].id if shown else last
            if more:
                break
        output.end()
    if more:
        err.print(Text(f"more: --after {last}"))


#: Seconds a poll of `trace --follow` waits for a connection before counting as an outage.
FOLLOW_CONNECT_WAIT = 3.0


def _follow(ctx: typer.Context, request_id: str, after: int, dsn: str | None, table: str,
            as_json: bool) -> None:
    """Follow until interrupted. Outages (a restart, a dead server) are waited out with
    backoff and reported as one line when they begin and one when they end; the follower's
    state stays in memory, so no event is lost or printed twice."""
    conninfo = resolve_dsn(dsn)

    def outage(error: JobqError | None) -> None:
        if error is None:
            typer.echo("jobq: database reachable again, following", err=True)
        else:
            line = error_line(str(error), conninfo)
            typer.echo(f"{line}; retrying with backoff (up to every 10 s)", err=True)

    def interrupted(signum: int, frame: object) -> None:
        # Exit here, not by KeyboardInterrupt, which can be lost while the follower's
        # connections open or wait (under load, a follower sent SIGINT kept following past
        # 20 s). It holds nothing that a hard exit could lose.
        typer.echo(error_line("interrupted", conninfo), err=True)
        os._exit(EXIT_INTERRUPTED)

    signal.signal(signal.SIGINT, interrupted)
    try:
        Names.parse(table)
        tail = TraceTail(request_id, after)
        session = session_conninfo(conninfo, bool(ctx.meta.get(READ_ONLY)))
        # The follower retries and reports outages itself: the pool makes one attempt per
        # poll (reconnect_timeout=0) and its per-attempt warnings would only repeat that.
        logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
        with ConnectionPool(session, min_size=1, max_size=1, open=False,
                            timeout=FOLLOW_CONNECT_WAIT, reconnect_timeout=0,
                            name="jobq-follow",
                            kwargs={"autocommit": True, "application_name": "jobq-cli",
                                    "connect_timeout": 5}) as pool, \
                JobQueue(pool, table=table, auto_migrate=False) as queue:
            for event in Admin(queue).follow(request_id, tail=tail, on_outage=outage):
                if as_json:
                    emit_json(event)
                else:
                    out.print(Text("  ").join([
                        cell(event.occurred_at), Text(f"job {event.job_id}"),
                        cell(event.event), cell(event.reason or event.result, 100)]))
    except JobqError as exc:
        fail(str(exc), exit_code_for(exc), conninfo)
    except psycopg.Error as exc:
        fail(f"database unavailable: {exc}", EXIT_UNREACHABLE, conninfo)


@app.command()
def doctor(ctx: typer.Context, dsn: Dsn = None, table: TableName = "svti_jobs",
           as_json: AsJson = False) -> None:
    """Health of the queue's tables, each finding with its fix. Exits 1 if any is an error."""
    with connected(ctx, dsn, table, writes=False) as admin:
        findings = admin.doctor()
    if as_json:
        emit_json(findings)
    else:
        for f in findings:
            mark = {"ok": "ok  ", "warn": "WARN", "error": "ERR "}[f.status]
            out.print(Text(f"{mark} {f.check}: ") + Text(visible(f.detail)))
            if f.fix:
                out.print(Text(f"     fix: {visible(f.fix)}"))
    if any(f.status == "error" for f in findings):
        raise typer.Exit(EXIT_FAILURE)


# -- changing ---------------------------------------------------------------------------------

@app.command()
def enqueue(
    ctx: typer.Context,
    job_type: Annotated[str, typer.Argument(metavar="TYPE")],
    payload: Annotated[str | None, typer.Option(
        "--payload", "-p", help="JSON, @file to read it from, or - for stdin")] = None,
    run_at: Annotated[str | None, typer.Option(help="ISO 8601 time with a zone")] = None,
    delay: Annotated[str | None, typer.Option(help="e.g. 30s, 5m, 1h")] = None,
    priority: int = 0,
    idempotency_key: str | None = None,
    request_id: str | None = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
) -> None:
    """Add a job; prints its id (an existing one for a known idempotency key)."""
    with connected(ctx, dsn, table, writes=True) as admin:
        if run_at and delay:
            raise InvalidInputError("give --run-at or --delay, not both")
        value = _read_payload(payload)
        when: datetime | timedelta | None = parse_when(run_at)
        if delay is not None:  # "" is a bad duration, not "no delay"
            when = parse_duration(delay)
        job_id = admin.queue.enqueue(job_type, value, run_at=when, priority=priority,
                                     idempotency_key=idempotency_key, request_id=request_id)
    if as_json:
        emit_json({"id": job_id})
    else:
        out.print(str(job_id))


def _read_payload(text: str | None) -> Any:
    if text is None:
        return None
    try:
        if text == "-":
            text = sys.stdin.buffer.read().decode("utf-8")
        elif text.startswith("@"):
            with open(text[1:], encoding="utf-8") as handle:
                text = handle.read()
    except OSError as exc:
        raise InvalidInputError(f"cannot read payload file: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        raise InvalidInputError(
            f"payload is not UTF-8 text (byte {exc.start}: {exc.reason})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise InvalidInputError(f"payload is not valid JSON: {exc.msg} at line {exc.lineno} "
                                f"column {exc.colno}") from None
    except RecursionError:
        raise InvalidInputError("payload is nested too deeply to store") from None
    except ValueError as exc:  # an integer longer than Python converts (4,300 digits)
        raise InvalidInputError(f"payload is not usable JSON: {exc}") from None


@app.command()
def retry(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...", parser=job_id_arg)] = None,
    failed: Annotated[bool, typer.Option("--failed", help="every failed job (and --filter)")]
    = False,
    filter_text: Annotated[str | None, typer.Option("--filter", help="narrow --failed")] = None,
    at: Annotated[str | None, typer.Option("--at", help="ISO time; default now")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", dry_run: DryRun = False, yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Put failed or cancelled jobs back in the queue with a fresh attempt budget: by id,
    or --failed [--filter …]."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        if not ids and not failed:
            raise InvalidInputError("give job ids, or --failed to retry every failed job")
        chosen = _ids_or_filter(ids, filter_text, admin, ("failed",) if failed else (),
                                need_filter=not failed)
        when = parse_when(at)
        _repair(admin, "retry", chosen, dry_run, yes, as_json,
                lambda: admin.retry(chosen, run_at=when, progress=progress_line),
                by_filter=not ids)


@app.command()
def extend(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...", parser=job_id_arg)] = None,
    by: Annotated[str, typer.Option("--by", help=f"how much longer: {ACCEPTED}")] = "5m",
    filter_text: Annotated[str | None, typer.Option(
        "--filter", help="claimed jobs to extend, e.g. type:report")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", dry_run: DryRun = False, yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Lengthen claimed jobs' leases (default by 5m): by id, or --filter."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        amount = parse_duration(by)
        chosen = _ids_or_filter(ids, filter_text, admin, ("claimed",))
        _repair(admin, "extend", chosen, dry_run, yes, as_json,
                lambda: admin.extend(chosen, amount, progress=progress_line),
                by_filter=not ids)


@app.command()
def delete(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...", parser=job_id_arg)] = None,
    filter_text: Annotated[str | None, typer.Option("--filter", help="jobs to delete")] = None,
    force: Annotated[bool, typer.Option(help="also delete claimed jobs")] = False,
    dsn: Dsn = None, table: TableName = "svti_jobs", dry_run: DryRun = False, yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Delete pending, failed or cancelled jobs (claimed ones only with --force)."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        chosen = _ids_or_filter(ids, filter_text, admin)
        action = "delete-force" if force else "delete"
        _repair(admin, action, chosen, dry_run, yes, as_json,
                lambda: admin.delete(chosen, force=force, progress=progress_line),
                by_filter=not ids)


@app.command()
def cancel(
    ctx: typer.Context,
    ids: Annotated[list[int] | None, typer.Argument(metavar="[ID]...", parser=job_id_arg)] = None,
    filter_text: Annotated[str | None, typer.Option(
        "--filter", help="jobs to cancel, e.g. type:report (pending and claimed ones unless "
        "it names a state)")] = None,
    reason: Annotated[str | None, typer.Option(help="why, kept with who cancelled")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", dry_run: DryRun = False, yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """End pending and running jobs as `cancelled` (kept, and retryable with `jobq retry`):
    by id, or --filter. A running job's worker stops it at its next heartbeat."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        chosen = _ids_or_filter(ids, filter_text, admin, ("pending", "claimed"))
        _repair(admin, "cancel", chosen, dry_run, yes, as_json,
                lambda: admin.cancel(chosen, reason=reason, progress=progress_line),
                by_filter=not ids)


#: How each repair's summary names what it did.
DONE = {"retry": "retried", "extend": "extended", "delete": "deleted",
        "delete-force": "deleted", "cancel": "cancelled"}
#: At most this many ids are named in a line.
NAMED_IDS = 20


def _jobs(count: int) -> str:
    return f"{count} job" + ("" if count == 1 else "s")


def _id_list(ids: Sequence[int]) -> str:
    return ", ".join(map(str, ids[:NAMED_IDS])) + (" …" if len(ids) > NAMED_IDS else "")


def _repair(admin: Admin, action: str, ids: list[int], dry_run: bool, yes: bool,
            as_json: bool, apply: Callable[[], RepairResult], *, by_filter: bool) -> None:
    """Preview, ask when the rule says so (`DESTRUCTIVE`, or jobs chosen `by_filter`), apply.
    When nothing is eligible, the error line alone says why."""
    if not ids:
        raise NotFoundError("no job matches")
    preview = admin.preview(action, ids)
    if dry_run:
        if as_json:
            emit_json({"dry_run": True, "preview": preview})
        else:
            show_preview(preview)
        return
    if preview.eligible == 0:
        if all(reason == NOT_IN_QUEUE for _, reason in preview.ineligible):
            raise NotFoundError(f"no live job has id {_id_list(ids)}")
        raise JobStateError(f"no job is eligible to {action}: " + "; ".join(
            f"{job_id} {reason}" for job_id, reason in preview.ineligible[:3])
            + (" …" if len(preview.ineligible) > 3 else ""))
    if not as_json:
        show_preview(preview)
    if action in DESTRUCTIVE or by_filter:
        confirm(f"{action.replace('-force', ' (forced)')} {_jobs(preview.eligible)}", yes)
    result = apply()
    if as_json:
        emit_json({"dry_run": False, "result": result})
        return
    line = f"{DONE[action]} {_jobs(result.changed)}"
    if result.running:
        line += (f", {len(result.running)} of them running (their workers stop them at their "
                 "next heartbeat)")
    if result.skipped:
        line += f"; skipped {_id_list(result.skipped)}"
    out.print(Text(line))


@app.command()
def clear(
    ctx: typer.Context,
    older_than: Annotated[str, typer.Option("--older-than", help=f"age cutoff: {ACCEPTED}")],
    dsn: Dsn = None, table: TableName = "svti_jobs", dry_run: DryRun = False, yes: Yes = False,
    as_json: AsJson = False,
) -> None:
    """Delete failed and cancelled jobs and history older than the cutoff, in small batches
    (no lock is held between them, so workers keep claiming). Pending, scheduled and claimed
    jobs, and their whole history, are never touched."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        age = parse_duration(older_than)
        preview = admin.preview_clear(age)
        if dry_run:
            if as_json:
                emit_json({"dry_run": True, "preview": preview})
            else:
                err.print(Text(f"clear before {at(preview.cutoff)}: "
                               f"{preview.failed_jobs} failed or cancelled jobs, "
                               f"{preview.history_rows} "
                               "history rows"))
            return
        if preview.total:
            confirm(f"clear {preview.total} rows", yes)
        removed = admin.clear(preview, progress=None if as_json else progress_line)
    if as_json:
        emit_json({"dry_run": False, "removed": removed})
    else:
        out.print(Text(f"clear: {removed} rows removed"))


@app.command()
def pause(
    ctx: typer.Context,
    types: Annotated[list[str] | None, typer.Argument(
        metavar="[TYPE]...", help="job types to pause; none: list the pauses in force")] = None,
    for_: Annotated[str | None, typer.Option(
        "--for", help=f"resume by itself after this long: {ACCEPTED} (default: until "
        "`jobq resume`)")] = None,
    reason: Annotated[str | None, typer.Option(help="why, shown with the pause")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
    read_dsn: ReadDsn = None,
) -> None:
    """Stop claims of job types (running jobs go on), until `jobq resume` or for --for.
    Without types, list the pauses in force (`jobq status` shows them too; --read-dsn reads
    them from a replica)."""
    with connected(ctx, dsn, table, writes=bool(types), read_dsn=read_dsn) as admin:
        if not types:
            if for_ is not None or reason is not None:
                raise InvalidInputError("--for and --reason need the types to pause")
            pauses = admin.pauses()
        else:
            until = None if for_ is None else parse_duration(for_)
            pauses = admin.pause(types, until=until, reason=reason)
    if as_json:
        emit_json({"paused": pauses})
    elif pauses:
        for p in pauses:
            out.print(pause_line(p))
    else:
        out.print(Text("no type is paused"))


@app.command()
def resume(
    ctx: typer.Context,
    types: Annotated[list[str], typer.Argument(metavar="TYPE...", help="job types to resume")],
    dsn: Dsn = None, table: TableName = "svti_jobs", as_json: AsJson = False,
) -> None:
    """Let workers claim paused job types again."""
    with connected(ctx, dsn, table, writes=True) as admin:
        resumed = admin.resume(types)
    not_paused = sorted(set(types) - set(resumed))
    if as_json:
        emit_json({"resumed": resumed, "not_paused": not_paused})
        return
    if resumed:
        out.print(Text(visible(f"resumed {', '.join(resumed)}")))
    if not_paused:
        err.print(Text(visible(f"not paused: {', '.join(not_paused)}")))


def workers_table(found: list[Worker]) -> Table:
    """Fits 80 columns: ids, hosts and types fold (a type a line); times are ages on the
    server's clock (`--json` has them with their zone)."""
    grid = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), pad_edge=False)
    for name in ("ID", "HOST"):
        grid.add_column(name, overflow="fold", min_width=8, ratio=1)
    grid.add_column("PID", justify="right", no_wrap=True)
    grid.add_column("TYPES", overflow="fold", min_width=8, ratio=1)
    for name in ("RUNNING", "STARTED", "LAST BEAT", "STATUS"):
        grid.add_column(name, justify="right" if name == "RUNNING" else "left",
                        no_wrap=True, min_width=len(name))
    for w in found:
        grid.add_row(cell(w.id, 200), cell(w.host, 200), Text(str(w.pid)),
                     # One type a line: a long name folds without mixing with the next.
                     Text("\n".join(visible(t) for t in w.types)) if w.types else cell(None),
                     Text(f"{w.in_flight}/{w.concurrency}"),
                     Text(ago(w.silent_for + (w.last_seen - w.started_at).total_seconds())),
                     Text(ago(w.silent_for)),
                     Text(w.status, style="red" if w.status == "lost" else ""))
    return grid


@app.command()
def workers(
    ctx: typer.Context,
    drain: Annotated[str | None, typer.Option(
        "--drain", metavar="ID", help="ask this worker to stop claiming and exit once its "
        "running jobs finish")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", yes: Yes = False,
    as_json: AsJson = False, read_dsn: ReadDsn = None,
) -> None:
    """Registered workers and their health; --drain ID asks one to finish and exit.

    Per worker: host, pid, types, running/concurrency, started, last heartbeat and status
    (running, draining, or lost after three missed beats; lost ones are forgotten after a
    day). A drain reads and writes the primary, even with --read-dsn."""
    if drain is not None:
        refuse_if_read_only(ctx, "workers --drain")
        read_dsn = None
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        found = admin.workers()
        if drain is not None:
            target = next((w for w in found if w.id == drain), None)
            if target is None:
                raise NotFoundError(f"no worker with id {drain!r} (see `jobq workers`)")
            confirm(visible(f"drain worker {drain} ({target.host} pid {target.pid}, "
                            f"{target.in_flight} running)"), yes)
            admin.drain(drain)
            found = [next((w for w in admin.workers() if w.id == drain), target)]
    if as_json:
        shown = [{**_plain(w), "status": w.status} for w in found]
        emit_json({"drained": shown[0]} if drain is not None else shown)
    elif drain is not None:
        out.print(Text(visible(f"asked worker {drain} to drain: it stops claiming and exits "
                               "once its running jobs finish" + (
                                   "" if found[0].alive else " (it is lost: only if it "
                                   "comes back)"))))
    else:
        out.print(workers_table(found) if found else Text("no worker has registered"))
        for w in found:
            if w.drain_requested_at is not None:
                out.print(Text(visible(f"{w.id}: drain asked by {w.drain_requested_by} at "
                                       f"{at(w.drain_requested_at)}")))


def slot_at(when: datetime, now: datetime) -> str:
    """A slot to the second, in UTC (the columns say so), with its date unless it is
    today's."""
    utc = when.astimezone(UTC)
    return utc.strftime("%H:%M:%S" if utc.date() == now.date() else "%Y-%m-%d %H:%M:%S")


def schedules_table(found: list[ScheduleRow]) -> Table:
    """Fits 80 columns: names and expressions fold; slots in UTC, the date only when it is
    not today (`--json` has every field in full)."""
    now = datetime.now(UTC)
    grid = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), pad_edge=False)
    grid.add_column("NAME", overflow="fold", min_width=6, ratio=1)
    grid.add_column("SCHEDULE", overflow="fold", min_width=8, ratio=2)
    for name in ("NEXT SLOT UTC", "LAST SLOT UTC"):  # "2026-12-06 02:00:00" on one line
        grid.add_column(name, no_wrap=True, min_width=8)
    for name in ("LAST JOB", "MISSED"):
        grid.add_column(name, overflow="fold", min_width=len(name))
    for s in found:
        job = (f"{s.last_job_id} {s.last_state or 'cleared'}" if s.last_job_id is not None
               else "—")
        grid.add_row(cell(s.name, 200), cell(s.spec, 200),
                     Text(slot_at(s.next_slot, now) if s.next_slot is not None else "none"),
                     Text(slot_at(s.last_slot, now)), Text(visible(job)), Text(visible(s.missed)))
    return grid


@app.command()
def schedules(
    ctx: typer.Context,
    remove: Annotated[str | None, typer.Option(
        "--remove", metavar="NAME", help="forget a schedule that no runner serves any more "
        "(one that still does registers it again at its next tick)")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", yes: Yes = False,
    as_json: AsJson = False, read_dsn: ReadDsn = None,
) -> None:
    """Periodic jobs' schedules, as their runners registered them; --remove NAME forgets one.

    Per schedule: its cron expression and time zone or its interval, what it does with
    missed slots, the newest slot handled, that slot's job and its state, and the next
    slot. A removal reads and writes the primary, even with --read-dsn."""
    _list_or_remove(
        ctx, "schedules", remove, (dsn, table, read_dsn), yes, as_json,
        Admin.schedules, lambda row: row.name, Admin.remove_schedule,
        missing=f"no schedule named {remove!r} (see `jobq schedules`)",
        removal=f"schedule {remove}", render=schedules_table,
        empty="no schedule is registered: a runner registers its periodic jobs as it starts")


#: A row of what runners registered (a schedule, a type's limits).
RowT = TypeVar("RowT")


def _list_or_remove(
    ctx: typer.Context, command: str, remove: str | None,
    where: tuple[str | None, str, str | None], yes: bool, as_json: bool,
    read: Callable[[Admin], list[RowT]], key: Callable[[RowT], str],
    forget: Callable[[Admin, str], None], *, missing: str, removal: str,
    render: Callable[[list[RowT]], Table], empty: str,
) -> None:
    """What runners registered (`jobq schedules`, `jobq limits`), listed, or with --remove
    one row of it forgotten after a confirmation. A removal reads and writes the primary."""
    dsn, table, read_dsn = where
    if remove is not None:
        refuse_if_read_only(ctx, f"{command} --remove")
        read_dsn = None
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        found = read(admin)
        if remove is not None:
            if not any(key(row) == remove for row in found):
                raise NotFoundError(missing)
            confirm(visible(f"remove {removal}"), yes)
            forget(admin, remove)
            found = [row for row in found if key(row) != remove]
    if remove is not None:
        if as_json:
            emit_json({"removed": remove})
        else:
            out.print(Text(visible(f"removed {removal}")))
    elif as_json:
        emit_json([_plain(row) for row in found])
    else:
        out.print(render(found) if found else Text(empty))


def limits_table(found: list[LimitRow]) -> Table:
    """Fits 80 columns; `--json` has every field."""
    grid = Table(box=None, header_style="bold", padding=(0, 1, 0, 0), pad_edge=False)
    grid.add_column("TYPE", overflow="fold", min_width=6, ratio=1)
    grid.add_column("LIMITS", overflow="fold", min_width=10, ratio=2)
    grid.add_column("IN USE", overflow="fold", min_width=10, ratio=2)
    grid.add_column("BY", overflow="fold", min_width=4, ratio=1)
    for row in found:
        grid.add_row(cell(row.type, 200), Text(visible(row.summary)), Text(row.usage),
                     cell(row.registered_by, 80))
    return grid


@app.command()
def limits(
    ctx: typer.Context,
    remove: Annotated[str | None, typer.Option(
        "--remove", metavar="TYPE", help="forget a type's limits (a runner serving it with "
        "limits records them again when it starts)")] = None,
    dsn: Dsn = None, table: TableName = "svti_jobs", yes: Yes = False,
    as_json: AsJson = False, read_dsn: ReadDsn = None,
) -> None:
    """Fleet-wide limits, as their runners registered them; --remove TYPE forgets one.

    Per type: its concurrency limit, its per-key limit (and the payload field its key comes
    from), its rate and burst; the slots in use, the busiest key's, and the rate's tokens
    now. A removal reads and writes the primary, even with --read-dsn."""
    _list_or_remove(
        ctx, "limits", remove, (dsn, table, read_dsn), yes, as_json,
        Admin.limits, lambda row: row.type, Admin.remove_limit,
        missing=f"type {remove!r} has no limits (see `jobq limits`)",
        removal=f"the limits of {remove}", render=limits_table,
        empty="no type has limits: a runner registers its tasks' limits as it starts")


@app.command()
def migrate(
    ctx: typer.Context,
    dry_run: DryRun = False, yes: Yes = False, dsn: Dsn = None,
    table: TableName = "svti_jobs", as_json: AsJson = False,
) -> None:
    """Create or migrate the queue's tables; --dry-run prints the SQL it would run."""
    with connected(ctx, dsn, table, writes=not dry_run) as admin:
        plan = admin.migrate(dry_run=True)
        if not dry_run and plan:
            confirm(f"apply {len(plan)} migration statements", yes)
            # On a queue with a DSN of its own: an upgrade then builds its indexes
            # CONCURRENTLY, as a worker's first use would.
            with JobQueue(resolve_dsn(dsn), table=table, auto_migrate=False) as queue:
                plan = Admin(queue).migrate(dry_run=False)
    if as_json:
        emit_json({"dry_run": dry_run, "statements": plan})
    elif plan:
        out.print(Text(";\n\n".join(plan) + ";"))
    else:
        err.print(Text("up to date"))


@app.command()
def metrics(ctx: typer.Context, dsn: Dsn = None, table: TableName = "svti_jobs",
            read_dsn: ReadDsn = None) -> None:
    """Print the queue's gauges once in Prometheus' text format, for a cron job that pushes
    them to a pushgateway: jobq_queue_jobs{type,state} (ready, scheduled, claimed, failed,
    cancelled) and jobq_queue_oldest_ready_age_seconds{type}. Needs the [metrics] extra."""
    try:
        from jobq_core.metrics import queue_exposition
    except MissingExtraError as exc:
        fail(str(exc), EXIT_FAILURE)
    with connected(ctx, dsn, table, writes=False, read_dsn=read_dsn) as admin:
        stats = admin.stats(fold=False)  # the counts need no fold of the rates
    sys.stdout.write(queue_exposition(stats).decode())


# -- running ----------------------------------------------------------------------------------

def load_runner(target: str) -> TaskRunner:
    """`module:attribute`, where the attribute is a TaskRunner or a function returning one."""
    module_name, _, attribute = target.partition(":")
    if not module_name or not attribute:
        raise InvalidInputError(f"expected module:attribute, got {target!r}")
    sys.path.insert(0, os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InvalidInputError(f"cannot import {module_name!r}: {exc}") from None
    try:
        found: Any = getattr(module, attribute)
    except AttributeError:
        raise InvalidInputError(f"{module_name!r} has no attribute {attribute!r}") from None
    if callable(found) and not isinstance(found, TaskRunner):
        found = found()
    if not isinstance(found, TaskRunner):
        raise InvalidInputError(f"{target} is not a TaskRunner (got {type(found).__name__})")
    return found


LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR")


@app.command()
def worker(
    ctx: typer.Context,
    target: Annotated[str, typer.Argument(help="module:attribute of a TaskRunner (or factory)")],
    concurrency: Annotated[int | None, typer.Option(min=1, help="override the runner's")] = None,
    health_file: Annotated[str | None, typer.Option(
        help="rewrite this file with the runner's health (JSON) at every heartbeat")] = None,
    log_level: Annotated[str, typer.Option(
        envvar="JOBQ_LOG_LEVEL", show_default=True,
        help="DEBUG, INFO, WARNING or ERROR: the runner's and handlers' (ctx.logger) records "
        "from this level go to stderr, one line each")] = "INFO",
    log_format: Annotated[str, typer.Option(
        envvar="JOBQ_LOG_FORMAT", show_default=True,
        help="plain (a line a person reads) or json (one object per line; a handler's "
        "ctx.logger records carry job_id, type, attempt, request_id and worker, and every "
        "record the runner's worker_id)")] = "plain",
    metrics_port: Annotated[int | None, typer.Option(
        envvar="JOBQ_METRICS_PORT", min=0, max=65535,
        help="serve Prometheus metrics on http://ADDR:PORT/metrics (needs the [metrics] "
        "extra); one port per worker process")] = None,
    metrics_addr: Annotated[str, typer.Option(
        envvar="JOBQ_METRICS_ADDR", show_default=True,
        help="the address --metrics-port listens on")] = "0.0.0.0",
) -> None:
    """Run a task runner until SIGTERM or SIGINT, or until an operator drains it.

    Running jobs may finish within the runner's shutdown timeout; the rest are handed back
    to the queue at no attempt cost. A second signal stops at once. A drain (`jobq workers
    --drain`) stops claiming and exits with status 0 once the running jobs finish. If a loop
    of the runner cannot go on, the worker stops and exits with status 1: it never hangs
    silently. The log starts with a banner (types, concurrency, worker id, database without
    its password) and ends with a summary of what the worker did.
    """
    refuse_if_read_only(ctx)
    if log_level.upper() not in LOG_LEVELS:
        fail(f"--log-level must be one of {', '.join(LOG_LEVELS)}, got {visible(log_level)!r}",
             EXIT_USAGE)
    if log_format not in LOG_FORMATS:
        fail(f"--log-format must be one of {', '.join(LOG_FORMATS)}, got "
             f"{visible(log_format)!r}", EXIT_USAGE)
    formatter = log_to_stderr(log_level.upper(), log_format)
    try:
        runner = load_runner(target)
        if isinstance(formatter, JsonFormatter):
            formatter.worker_id = runner.worker_id
        if concurrency is not None:
            runner.concurrency = concurrency
        if health_file is not None:
            runner.health_file = health_file
        if metrics_port is not None:
            runner.metrics_port, runner.metrics_addr = metrics_port, metrics_addr
        runner.serve_forever()
    except JobqError as exc:
        fail(str(exc), exit_code_for(exc))


@app.command()
def demo(
    ctx: typer.Context,
    dsn: Annotated[str | None, typer.Option(
        "--dsn", help="use this database; by default a private embedded Postgres")] = None,
    seconds: Annotated[float | None, typer.Option(
        min=0.1, help="headless: stop after this long (default: until Ctrl-C)")] = None,
    rate: Annotated[float, typer.Option(min=0.1, help="bursts of jobs per second")] = 4.0,
    headless: Annotated[bool, typer.Option(
        "--headless", help="print the status every two seconds instead of opening the "
        "console (the default without a terminal)")] = False,
    read_only: Annotated[bool, typer.Option("--read-only", help="open the console read-only")
                         ] = False,
) -> None:
    """A live queue to look at: producers and a task runner with fast, slow, flaky, poison
    and scheduled jobs under request ids, with the jobq-tui console on top."""
    refuse_if_read_only(ctx)  # its producers and runner write, whatever the console does
    from .demo import running_demo

    interactive = not headless and seconds is None and sys.stdout.isatty() and \
        stdin_is_terminal()
    console = console_app("jobq demo --headless") if interactive else None
    try:
        with running_demo(dsn or os.environ.get("JOBQ_DSN"), rate=rate,
                          notice=lambda m: err.print(Text(m))) as conninfo:
            if console is not None:
                console(conninfo, read_only=read_only, interval=1.0).run()
                return
            err.print(Text(f"demo database: {redact(conninfo)}  (try: jobq-tui --dsn "
                           f"'{redact(conninfo)}')"))
            with connected(ctx, conninfo, "svti_jobs", writes=False) as admin:
                started = time.monotonic()
                while seconds is None or time.monotonic() - started < seconds:
                    time.sleep(min(2.0, seconds or 2.0))
                    line = "  ".join(f"{s.type}: {s.ready} ready, {s.claimed} claimed, "
                                     f"{s.failed} failed" for s in admin.stats())
                    out.print(Text(visible(line) or "no jobs yet"))
    except KeyboardInterrupt:
        fail("interrupted", EXIT_INTERRUPTED)
    except JobqError as exc:
        fail(str(exc), exit_code_for(exc))


@app.command()
def version() -> None:
    """Print jobq's version."""
    typer.echo(jobq_core.__version__)


def _console_missing(exc: ModuleNotFoundError) -> bool:
    return (exc.name or "").partition(".")[0] == "textual"


#: The one line for a console without its extra.
NO_CONSOLE = "the console needs the [tui] extra: pip install 'jobq[tui]'"


def console_app(instead: str) -> type[JobqApp]:
    """The console's app; without the [tui] extra, one line saying so (and what to run
    `instead`), exit code 1."""
    try:
        from jobq_tui.app import JobqApp
    except ModuleNotFoundError as exc:
        if not _console_missing(exc):
            raise
        fail(f"{NO_CONSOLE}, or run `{instead}`", EXIT_FAILURE)
    return JobqApp


def console_main() -> None:
    """`jobq-tui`: the console, which a worker-only install (no [tui] extra) does not have."""
    try:
        from jobq_tui.app import main as run_console
    except ModuleNotFoundError as exc:
        if not _console_missing(exc):
            raise
        typer.echo(error_line(NO_CONSOLE, prog="jobq-tui"), err=True)
        sys.exit(EXIT_FAILURE)
    run_console()


def main() -> None:
    try:
        app()
    except KeyboardInterrupt:
        typer.echo("jobq: interrupted", err=True)
        sys.exit(EXIT_INTERRUPTED)
