"""The fault suite's harness: a ledger read from the database, `jobq worker` processes to
kill and restart, antagonists that break connections or hold locks, and PgBouncer.

Every wait here is bounded, and every loop stops by itself."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from jobq_core import NewJob, create_job_queue

from .worker_app import END, EXEC_LOG, WORK

REPO = Path(__file__).resolve().parents[2]
JOBQ = shutil.which("jobq", path=os.path.dirname(sys.executable)) or "jobq"
LIBFAKETIME = Path("/usr/lib/x86_64-linux-gnu/faketime/libfaketime.so.1")
#: Worker stderr lines worth counting in a report.
NOTABLE = ("Traceback", "loop failed", " loop: ", "gave up acking", "listener lost",
           "runner stopped", "RunnerFailedError")


# -- the database --------------------------------------------------------------------------------

def connect(dsn: str, **kwargs: Any) -> psycopg.Connection[Any]:
    """The harness's own connections: never a target of the antagonists, never timed out."""
    return psycopg.connect(dsn, autocommit=True, application_name="reli-harness",
                           options="-c statement_timeout=0 -c lock_timeout=0", **kwargs)


def dbname_of(dsn: str) -> str:
    return str(conninfo_to_dict(dsn)["dbname"])


def with_dbname(dsn: str, name: str) -> str:
    return make_conninfo(dsn, dbname=name)


def prepare_database(dsn: str) -> None:
    """The queue's tables (if missing) and the execution log the handlers write."""
    create_job_queue(dsn).close()
    with connect(dsn) as conn:
        conn.execute(f"""CREATE TABLE IF NOT EXISTS {EXEC_LOG} (
            id bigint GENERATED ALWAYS AS IDENTITY, job_id bigint NOT NULL,
            attempt integer NOT NULL, pid integer NOT NULL, worker text NOT NULL,
            kind text NOT NULL, at timestamptz NOT NULL DEFAULT clock_timestamp())""")


def set_database(dsn: str, setting: str, value: str) -> None:
    """`ALTER DATABASE ... SET`: sessions opened from now on get it (the database is the
    test's own and is dropped afterwards)."""
    with connect(dsn) as conn:
        conn.execute(f'ALTER DATABASE "{dbname_of(dsn)}" SET {setting} = %s'
                     .replace("%s", "'" + value.replace("'", "''") + "'"))


def enqueue_jobs(dsn: str, count: int, payload: dict[str, Any] | None = None,
                 type: str = WORK, batch: int = 1000) -> list[int]:
    ids: list[int] = []
    with create_job_queue(dsn, max_connections=1) as queue:
        for start in range(0, count, batch):
            n = min(batch, count - start)
            ids += queue.enqueue_many(
                [NewJob(type, {**(payload or {}), "i": start + k}) for k in range(n)])
    return ids


def live_count(dsn: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute(
            "SELECT count(*) FROM svti_jobs WHERE state IN ('pending', 'claimed')").fetchone()
    return int(row[0]) if row else 0


def wait_until(predicate: Callable[[], bool], timeout: float, interval: float = 0.1) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; returns whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(psycopg.Error):
            if predicate():
                return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


def executions_by_worker(dsn: str, job_ids: Sequence[int]) -> dict[str, int]:
    with connect(dsn) as conn:
        rows = conn.execute(f"SELECT worker, count(*) FROM {EXEC_LOG} WHERE job_id = ANY(%s) "
                            "GROUP BY worker", (list(job_ids),)).fetchall()
    return {str(w): int(n) for w, n in rows}


def deadlocks(dsn: str) -> int:
    with connect(dsn) as conn:
        row = conn.execute("SELECT deadlocks FROM pg_stat_database "
                           "WHERE datname = current_database()").fetchone()
    return int(row[0]) if row else 0


# -- the ledger ------------------------------------------------------------------------------------

@dataclass
class Ledger:
    """What the database says happened to every job of a run."""

    title: str
    enqueued: int
    completed: int
    failed: int
    live: int
    double_completions: list[int]
    lost: list[int]
    executions: int
    duplicate_executions: int
    max_executions: int
    recovered_events: int
    drain_seconds: float | None
    recovered_unaided: bool | None
    notes: list[str] = field(default_factory=list)
    workers: list[str] = field(default_factory=list)

    def render(self) -> str:
        def verdict(ok: bool) -> str:
            return "ok" if ok else "VIOLATION"

        drain = ("not drained" if self.drain_seconds is None
                 else f"{self.drain_seconds:.1f} s after the fault ended")
        unaided = {None: "n/a", True: "yes", False: "NO"}[self.recovered_unaided]
        lines = [
            f"===== ledger: {self.title} =====",
            f"  enqueued              {self.enqueued}",
            f"  completed             {self.completed}",
            f"  failed                {self.failed}",
            f"  live                  {self.live} (pending or claimed)",
            f"  balance               enqueued {'==' if self.balanced else '!='} "
            f"completed + failed + live  [{verdict(self.balanced)}]",
            f"  lost                  {len(self.lost)}  [{verdict(not self.lost)}]"
            + (f" ids {self.lost[:10]}" if self.lost else ""),
            f"  double completions    {len(self.double_completions)}  "
            f"[{verdict(not self.double_completions)}]"
            + (f" ids {self.double_completions[:10]}" if self.double_completions else ""),
            f"  executions            {self.executions} (jobs run more than once: "
            f"{self.duplicate_executions}, most runs of one job: {self.max_executions})",
            f"  recovered (events)    {self.recovered_events}",
            f"  drained               {drain}",
            f"  recovered unaided     {unaided}",
        ]
        lines += [f"  worker {w}" for w in self.workers]
        lines += [f"  note: {n}" for n in self.notes]
        lines.append("=" * (len(self.title) + 20))
        return "\n".join(lines)

    @property
    def balanced(self) -> bool:
        return self.enqueued == self.completed + self.failed + self.live

    def print(self) -> None:
        print("\n" + self.render(), flush=True)

    def check(self, *, drained: bool = True, unaided: bool = True, max_failed: int = 0) -> None:
        """The invariants: nothing lost, nothing completed twice, the books balance; and, by
        default, the queue drained with no help after the fault and no job ended failed."""
        report = self.render()
        assert not self.lost, f"jobs lost\n{report}"
        assert not self.double_completions, f"jobs completed twice\n{report}"
        assert self.balanced, f"the ledger does not balance\n{report}"
        if drained:
            assert self.drain_seconds is not None and self.live == 0, f"not drained\n{report}"
        if unaided:
            assert self.recovered_unaided is not False, f"did not recover unaided\n{report}"
        assert self.failed <= max_failed, f"jobs ended failed\n{report}"


def compute_ledger(
    dsn: str, expected: Sequence[int], *, title: str, drain_seconds: float | None = None,
    recovered_unaided: bool | None = None, notes: Sequence[str] = (),
    workers: Sequence[str] = (),
) -> Ledger:
    """The ledger of every job in this database (all of them, follow-ups included), checked
    against the ids the test enqueued itself."""
    with connect(dsn) as conn:
        enqueued = {r[0] for r in conn.execute(
            "SELECT DISTINCT job_id FROM svti_jobs_events WHERE event = 'enqueued'")}
        enqueued |= set(expected)
        completions = dict(conn.execute(
            "SELECT job_id, count(*) FROM svti_jobs_events WHERE event = 'completed' "
            "GROUP BY job_id").fetchall())
        failed = {r[0] for r in conn.execute("SELECT id FROM svti_jobs WHERE state = 'failed'")}
        live = {r[0] for r in conn.execute(
            "SELECT id FROM svti_jobs WHERE state IN ('pending', 'claimed')")}
        runs = [int(r[0]) for r in conn.execute(
            f"SELECT count(*) FROM {EXEC_LOG} WHERE kind <> %s GROUP BY job_id", (END,))]
        recovered_row = conn.execute(
            "SELECT count(*) FROM svti_jobs_events WHERE event = 'recovered'").fetchone()
    completed = set(completions)
    return Ledger(
        title=title, enqueued=len(enqueued), completed=len(completed & enqueued),
        failed=len(failed), live=len(live),
        double_completions=sorted(j for j, n in completions.items() if n > 1),
        lost=sorted(enqueued - completed - failed - live),
        executions=sum(runs), duplicate_executions=sum(1 for n in runs if n > 1),
        max_executions=max(runs, default=0),
        recovered_events=int(recovered_row[0]) if recovered_row else 0,
        drain_seconds=drain_seconds, recovered_unaided=recovered_unaided,
        notes=list(notes), workers=list(workers),
    )


# -- worker processes ----------------------------------------------------------------------------

def worker_env(dsn: str, **settings: object) -> dict[str, str]:
    """The environment of a `jobq worker` running `worker_app`: RELI_<NAME> per setting."""
    env = {key: value for key, value in os.environ.items() if not key.startswith("RELI_")}
    env["RELI_DSN"] = dsn
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    for key, value in settings.items():
        if value is None:
            continue
        env[f"RELI_{key.upper()}"] = str(int(value) if isinstance(value, bool) else value)
    return env


@dataclass
class WorkerProc:
    label: str
    env: dict[str, str]
    root: Path
    proc: subprocess.Popen[bytes] | None = None
    generation: int = 0
    restarts: int = 0
    kills: int = 0
    exit_codes: list[int] = field(default_factory=list)
    stopping: bool = False

    @property
    def health_file(self) -> Path:
        return self.root / f"{self.label}.health.json"

    def stderr_path(self, generation: int | None = None) -> Path:
        gen = self.generation if generation is None else generation
        return self.root / f"{self.label}.{gen}.log"

    def start(self) -> None:
        self.generation += 1
        env = dict(self.env, RELI_WORKER=self.label, RELI_HEALTH_FILE=str(self.health_file))
        with open(self.stderr_path(), "wb") as err:
            self.proc = subprocess.Popen(
                [JOBQ, "worker", "tests.reliability.worker_app:build"], cwd=REPO, env=env,
                stdin=subprocess.DEVNULL, stdout=err, stderr=subprocess.STDOUT)

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill9(self) -> None:
        if self.proc is not None and self.alive:
            self.proc.send_signal(signal.SIGKILL)
            self.exit_codes.append(self.proc.wait(10))
            self.kills += 1

    def restart(self) -> None:
        self.kill9()
        if self.proc is not None and self.proc.returncode is not None and not self.exit_codes:
            self.exit_codes.append(self.proc.returncode)
        self.restarts += 1
        self.start()

    def stop(self, timeout: float) -> int | None:
        """SIGTERM and wait; None when it did not exit in time (then it is killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            return self.proc.returncode
        if not self.stopping:  # one SIGTERM only: a second one means "stop at once"
            self.stopping = True
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            return None

    def output(self) -> str:
        texts = []
        for gen in range(1, self.generation + 1):
            with contextlib.suppress(OSError):
                texts.append(self.stderr_path(gen).read_text(errors="replace"))
        return "\n".join(texts)

    def health(self) -> dict[str, Any] | None:
        try:
            value: dict[str, Any] = json.loads(self.health_file.read_text())
            return value
        except (OSError, ValueError):
            return None


class WorkerSet:
    """`jobq worker` processes of one scenario; `close` (or the fixture) ends them all."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.workers: list[WorkerProc] = []
        self.stop_codes: dict[str, int | None] = {}

    def start(self, count: int, env: dict[str, str], prefix: str = "w",
              wrapper: dict[str, str] | None = None) -> list[WorkerProc]:
        """Start `count` workers; `wrapper` adds environment (LD_PRELOAD for faketime)."""
        started = []
        for _ in range(count):
            label = f"{prefix}{len(self.workers)}"
            worker = WorkerProc(label, {**env, **(wrapper or {})}, self.root)
            worker.start()
            self.workers.append(worker)
            started.append(worker)
        return started

    def wait_serving(self, timeout: float = 30.0) -> bool:
        """Until every worker logged its "serving" banner (or died)."""
        def ready() -> bool:
            return all("jobq.runner: serving" in w.output() or not w.alive for w in self.workers)
        return wait_until(ready, timeout, 0.1)

    def unexpected_exits(self) -> list[WorkerProc]:
        return [w for w in self.workers if w.proc is not None and not w.alive and not w.stopping]

    def stop_all(self, timeout: float = 20.0) -> dict[str, int | None]:
        """SIGTERM every live worker at once and wait (bounded) for each to exit."""
        for worker in self.workers:
            if worker.alive:
                worker.stopping = True
                assert worker.proc is not None
                worker.proc.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for worker in self.workers:
            if worker.label in self.stop_codes:
                continue
            self.stop_codes[worker.label] = worker.stop(max(deadline - time.monotonic(), 0.1))
        return self.stop_codes

    def close(self) -> None:
        for worker in self.workers:
            if worker.alive and worker.proc is not None:
                worker.proc.kill()
                with contextlib.suppress(subprocess.TimeoutExpired):
                    worker.proc.wait(10)

    def summary(self) -> list[str]:
        """One line per worker (kills, restarts, exit status, health, notable log lines)."""
        lines = []
        for worker in self.workers:
            out = worker.output()
            counts = {k: out.count(k) for k in NOTABLE if out.count(k)}
            health = worker.health()
            status = health.get("status") if health else "no health file"
            if worker.proc is None:
                state = "never started"
            elif worker.alive:
                state = "running"
            else:
                state = f"exited {worker.proc.returncode}"
            stop = self.stop_codes.get(worker.label, "-")
            lines.append(f"{worker.label}: {state}, kills {worker.kills}, restarts "
                         f"{worker.restarts}, SIGTERM exit {stop}, health {status}, "
                         f"log {counts or 'quiet'}")
        return lines

    def tails(self, lines: int = 25, only_bad: bool = True) -> str:
        """The last lines of each worker's output (of bad ones only, by default)."""
        parts = []
        for worker in self.workers:
            out = worker.output()
            rc = worker.proc.returncode if worker.proc is not None else None
            bad = "Traceback" in out or (rc not in (0, None, -9) and worker.stopping is False)
            bad = bad or self.stop_codes.get(worker.label, 0) not in (0, None)
            if only_bad and not bad:
                continue
            tail = "\n".join(out.strip().splitlines()[-lines:])
            parts.append(f"----- {worker.label} (exit {rc}) -----\n{tail}")
        return "\n".join(parts)


# -- a scenario's bookkeeping -----------------------------------------------------------------

@dataclass
class Run:
    """One scenario: its workers, the jobs it enqueued, when the fault ended, and its ledger."""

    title: str
    dsn: str
    workers: WorkerSet
    expected: list[int] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    started: float = field(default_factory=time.monotonic)
    fault_ended: float | None = None
    restarts_at_fault_end: int = 0
    drain_seconds: float | None = None

    def fault_over(self) -> None:
        self.fault_ended = time.monotonic()
        self.restarts_at_fault_end = sum(w.restarts for w in self.workers.workers)
        self.note(f"fault ended {self.fault_ended - self.started:.1f} s into the run")

    def note(self, text: str) -> None:
        self.notes.append(text)

    def wait_drained(self, timeout: float = 60.0) -> float | None:
        """Seconds from the fault's end until no job is pending or claimed; None if that did
        not happen within `timeout` (a hang)."""
        if self.fault_ended is None:
            self.fault_over()
        assert self.fault_ended is not None
        if wait_until(lambda: live_count(self.dsn) == 0, timeout, 0.1):
            self.drain_seconds = time.monotonic() - self.fault_ended
        return self.drain_seconds

    @property
    def recovered_unaided(self) -> bool:
        no_restarts = sum(w.restarts for w in self.workers.workers) == self.restarts_at_fault_end
        return (self.drain_seconds is not None and no_restarts
                and not self.workers.unexpected_exits())

    def conclude(self, drain_timeout: float) -> Ledger:
        """The usual end of a scenario: the fault is over, the queue drains, the workers stop
        cleanly, and the ledger balances with nothing lost or completed twice."""
        if self.fault_ended is None:
            self.fault_over()
        self.wait_drained(drain_timeout)
        ledger = self.finish()
        ledger.check()
        self.assert_stopped_cleanly()
        return ledger

    def finish(self, *, stop: bool = True) -> Ledger:
        """Stop the workers (SIGTERM, bounded), then read, print and return the ledger."""
        unexpected = [w.label for w in self.workers.unexpected_exits()]
        recovered = self.recovered_unaided
        if unexpected:
            self.note(f"workers that exited by themselves: {unexpected}")
        if stop:
            # A worker restarted a moment ago may not handle SIGTERM yet: let it start.
            self.workers.wait_serving()
            time.sleep(1.0)
            codes = self.workers.stop_all()
            hung = [label for label, rc in codes.items() if rc is None]
            if hung:
                self.note(f"workers that did not exit on SIGTERM: {hung}")
        ledger = compute_ledger(
            self.dsn, self.expected, title=self.title, drain_seconds=self.drain_seconds,
            recovered_unaided=recovered, notes=self.notes, workers=self.workers.summary())
        ledger.print()
        tails = self.workers.tails()
        if tails:
            print(tails, flush=True)
            ledger.notes.append("worker output:\n" + tails)
        return ledger

    def assert_stopped_cleanly(self) -> None:
        bad = {k: v for k, v in self.workers.stop_codes.items()
               if v is None or (v != 0 and k not in
                                [w.label for w in self.workers.unexpected_exits()])}
        assert not bad, f"workers did not exit cleanly on SIGTERM: {bad}"


# -- antagonists -----------------------------------------------------------------------------

class Antagonist(threading.Thread):
    """A background loop against the database, bounded by `duration` and by `stop()`."""

    def __init__(self, name: str, duration: float) -> None:
        super().__init__(name=name, daemon=True)
        self.duration = duration
        self._stop_event = threading.Event()
        self.rounds = 0
        self.hits = 0
        self.errors: list[str] = []

    def stopped(self) -> bool:
        return self._stop_event.is_set()

    def sleep(self, seconds: float) -> bool:
        """Sleep unless stopped; returns whether to go on."""
        return not self._stop_event.wait(seconds)

    def stop(self, timeout: float = 15.0) -> None:
        self._stop_event.set()
        self.join(timeout)

    def run(self) -> None:
        deadline = time.monotonic() + self.duration
        while not self.stopped() and time.monotonic() < deadline:
            try:
                self.round()
            except psycopg.Error as exc:
                if len(self.errors) < 20:
                    self.errors.append(f"{type(exc).__name__}: {exc}".strip())
                self.sleep(0.2)
            self.rounds += 1

    def round(self) -> None:
        raise NotImplementedError

    def describe(self) -> str:
        return (f"{self.name}: {self.rounds} rounds, {self.hits} hits"
                + (f", own errors {self.errors[:3]}" if self.errors else ""))


class BackendTerminator(Antagonist):
    """`pg_terminate_backend` every jobq backend of the database, every `period` seconds."""

    def __init__(self, dsn: str, duration: float, period: tuple[float, float] = (0.3, 1.0),
                 pattern: str = "jobq%") -> None:
        super().__init__("terminator", duration)
        self.dsn, self.period, self.pattern = dsn, period, pattern
        self._conn: psycopg.Connection[Any] | None = None

    def round(self) -> None:
        if self._conn is None or self._conn.closed:
            self._conn = connect(self.dsn)
        row = self._conn.execute(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE datname = current_database() AND application_name LIKE %s "
            "AND pid <> pg_backend_pid()", (self.pattern,)).fetchone()
        self.hits += int(row[0]) if row else 0
        self.sleep(random.uniform(*self.period))

    def stop(self, timeout: float = 15.0) -> None:
        super().stop(timeout)
        if self._conn is not None:
            self._conn.close()


class TableLocker(Antagonist):
    """Holds `LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE` for `hold` s, again and again, so
    that claims, heartbeats and acks wait and hit statement_timeout or lock_timeout."""

    def __init__(self, dsn: str, duration: float, hold: float = 3.0,
                 pause: tuple[float, float] = (0.5, 1.5)) -> None:
        super().__init__("table-locker", duration)
        self.dsn, self.hold, self.pause = dsn, hold, pause

    def round(self) -> None:
        with connect(self.dsn) as conn, conn.transaction():
            conn.execute("LOCK TABLE svti_jobs IN ACCESS EXCLUSIVE MODE")
            self.hits += 1
            self.sleep(self.hold)
        self.sleep(random.uniform(*self.pause))


class RowLocker(Antagonist):
    """Locks the claimed rows one by one in descending id order, pausing between halves, so
    that a runner's heartbeat or ack locking them in ascending order deadlocks against it."""

    def __init__(self, dsn: str, duration: float, hold: float = 1.5) -> None:
        super().__init__("row-locker", duration)
        self.dsn, self.hold = dsn, hold
        self.deadlocked = 0

    def round(self) -> None:
        with connect(self.dsn) as conn:
            ids = [r[0] for r in conn.execute(
                "SELECT id FROM svti_jobs WHERE state = 'claimed' ORDER BY id DESC")]
            if len(ids) < 2:
                self.sleep(0.1)
                return
            half = len(ids) // 2
            try:
                with conn.transaction():
                    for job_id in ids[:half]:
                        conn.execute("SELECT 1 FROM svti_jobs WHERE id = %s FOR UPDATE",
                                     (job_id,))
                    self.sleep(self.hold)  # the runner's statements queue up behind these
                    for job_id in ids[half:]:
                        conn.execute("SELECT 1 FROM svti_jobs WHERE id = %s FOR UPDATE",
                                     (job_id,))
                    self.hits += 1
            except psycopg.errors.DeadlockDetected:
                self.deadlocked += 1
        self.sleep(random.uniform(0.2, 0.6))


@contextlib.contextmanager
def running(*antagonists: Antagonist) -> Iterator[None]:
    for antagonist in antagonists:
        antagonist.start()
    try:
        yield
    finally:
        for antagonist in antagonists:
            antagonist.stop()


# -- a network partition -------------------------------------------------------------------------

class Partition:
    """A TCP proxy in front of the database that can stop forwarding at once and resume: a
    network partition as the processes behind it see it. While cut, bytes in flight are
    held, statements hang, and new connections are accepted but get no answer."""

    def __init__(self, target_dsn: str) -> None:
        parts = conninfo_to_dict(target_dsn)
        self.target_dsn = target_dsn
        host = str(parts.get("host") or "127.0.0.1")
        port = int(parts.get("port") or 5432)
        self.target: tuple[int, Any] = (
            (socket.AF_UNIX, f"{host}/.s.PGSQL.{port}") if host.startswith("/")
            else (socket.AF_INET, (host, port)))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = threading.Event()
        self.open.set()
        self.closed = False
        self.sockets: list[socket.socket] = [self.server]
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def dsn(self) -> str:
        return make_conninfo(self.target_dsn, host="127.0.0.1", port=str(self.port))

    def cut(self) -> None:
        self.open.clear()

    def heal(self) -> None:
        self.open.set()

    def close(self) -> None:
        self.closed = True
        self.open.set()
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept(self) -> None:
        while not self.closed:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            self.sockets.append(client)
            threading.Thread(target=self._connect, args=(client,), daemon=True).start()

    def _connect(self, client: socket.socket) -> None:
        self.open.wait()
        upstream = socket.socket(self.target[0], socket.SOCK_STREAM)
        self.sockets.append(upstream)
        try:
            upstream.connect(self.target[1])
        except OSError:
            client.close()
            return
        for src, dst in ((client, upstream), (upstream, client)):
            threading.Thread(target=self._pump, args=(src, dst), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                self.open.wait()
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for sock in (src, dst):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)


# -- PgBouncer ---------------------------------------------------------------------------------

PGBOUNCER = shutil.which("pgbouncer") or ("/usr/sbin/pgbouncer"
                                          if os.path.exists("/usr/sbin/pgbouncer") else None)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


class PgBouncer:
    """A PgBouncer in transaction mode in front of one database, on a free loopback port."""

    def __init__(self, target_dsn: str) -> None:
        assert PGBOUNCER is not None
        parts = conninfo_to_dict(target_dsn)
        self.host = str(parts.get("host") or "127.0.0.1")
        self.port_target = str(parts.get("port") or "5432")
        self.dbname = str(parts["dbname"])
        self.user = str(parts.get("user") or "postgres")
        # Its own folder under the system temp dir: pytest's tmp_path is private to root,
        # and pgbouncer, refusing to run as root, runs as postgres.
        self.root = Path(tempfile.mkdtemp(prefix="jobq-pgbouncer-"))
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{self.dbname}"

    def start(self) -> str:
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / "userlist.txt").write_text(f'"{self.user}" ""\n')
        ini = self.root / "pgbouncer.ini"
        ini.write_text(f"""[databases]
{self.dbname} = host={self.host} port={self.port_target} dbname={self.dbname}

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {self.port}
unix_socket_dir =
auth_type = trust
auth_file = {self.root / "userlist.txt"}
pool_mode = transaction
max_client_conn = 400
default_pool_size = 12
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {self.root / "pgbouncer.log"}
pidfile =
admin_users = {self.user}
""")
        command: list[str] = [str(PGBOUNCER), "-q", str(ini)]
        if os.geteuid() == 0:  # pgbouncer refuses to run as root
            command[1:1] = ["-u", "postgres"]
            shutil.chown(self.root, "postgres")
            for path in self.root.iterdir():
                shutil.chown(path, "postgres")
        self.proc = subprocess.Popen(command, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)

        def answers() -> bool:
            if self.proc is not None and self.proc.poll() is not None:
                stderr = self.proc.stderr.read().decode(errors="replace") if self.proc.stderr \
                    else ""
                raise RuntimeError(f"pgbouncer exited: {stderr} {self.log()}")
            with psycopg.connect(self.dsn, connect_timeout=2, prepare_threshold=None) as conn:
                conn.execute("SELECT 1")
            return True

        if not wait_until(answers, 15, 0.1):
            raise RuntimeError(f"pgbouncer did not answer: {self.log()}")
        return self.dsn

    def log(self) -> str:
        with contextlib.suppress(OSError):
            return (self.root / "pgbouncer.log").read_text()[-3000:]
        return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        shutil.rmtree(self.root, ignore_errors=True)


# -- clock skew --------------------------------------------------------------------------------

def faketime_env(offset: str) -> dict[str, str] | None:
    """The environment that runs a process `offset` off the real clock ("+1h", "-1h"), or None
    when libfaketime is not installed."""
    if not LIBFAKETIME.exists():
        return None
    return {"LD_PRELOAD": str(LIBFAKETIME), "FAKETIME": offset, "FAKETIME_NO_CACHE": "1"}
