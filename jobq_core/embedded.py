"""A private, throwaway Postgres for the demo and the tests.

It runs ``initdb`` and ``pg_ctl`` in a fresh temporary folder and listens on a free loopback
port; `stop` (or leaving the ``with`` block) shuts it down and deletes the folder.

Binaries come from the ``pgserver`` wheel (PostgreSQL 16, installed with jobq) or, failing
that, from the system's PostgreSQL. Postgres refuses to run as root, so as root the server runs
as the ``postgres`` system user when there is one, else as a ``jobq-postgres`` user created for
the purpose; the data folder is then owned by that user. Only the new temporary folder is made
accessible to it: no other folder's permissions are changed unless the binaries themselves are
not reachable, in which case their parent folders are made traversable (as pgserver does).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import time
from pathlib import Path
from types import TracebackType
from typing import Self

from .errors import JobqError

_SETTINGS = {
    "max_connections": "200",
    "shared_buffers": "128MB",
    "listen_addresses": "'127.0.0.1'",
    "unix_socket_directories": "''",
    "log_min_messages": "warning",
    "timezone": "'UTC'",
}
#: For test servers only: durability is traded for speed, the data is thrown away anyway.
FAST_UNSAFE = {"fsync": "off", "synchronous_commit": "off", "full_page_writes": "off"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def pgserver_binaries() -> Path | None:
    # Located, not imported: importing pgserver sets up its own server machinery.
    spec = importlib.util.find_spec("pgserver")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "pginstall" / "bin"
    return path if (path / "initdb").exists() else None


def _system_bin() -> Path | None:
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), reverse=True)
    found = shutil.which("initdb")
    if found:
        candidates.append(found)
    return Path(candidates[0]).parent if candidates else None


def find_binaries() -> Path:
    """The folder holding initdb and pg_ctl: pgserver's first, unless we are root and the
    system has its own (no folder permissions need changing then)."""
    order = [pgserver_binaries, _system_bin]
    if os.geteuid() == 0:
        order.reverse()
    for finder in order:
        path = finder()
        if path is not None:
            return path
    raise JobqError("no PostgreSQL binaries found: pip install pgserver, or install postgresql")


def _run_as_user() -> str | None:
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "jobq-postgres"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    subprocess.run(["useradd", "--system", "--no-create-home", "jobq-postgres"], check=True,
                   capture_output=True)
    return "jobq-postgres"


def _make_traversable(path: Path) -> None:
    for parent in [path, *path.parents]:
        mode = parent.stat().st_mode
        parent.chmod(mode | stat.S_IXOTH | stat.S_IROTH | stat.S_IXGRP | stat.S_IRGRP)


class EmbeddedPostgres:
    """``with EmbeddedPostgres() as pg: use(pg.dsn)``"""

    def __init__(
        self, *, unsafe_fast: bool = False, port: int | None = None, binaries: Path | None = None
    ) -> None:
        self.bin = binaries or find_binaries()
        self.user = _run_as_user()
        self.port = port or _free_port()
        self.settings = dict(_SETTINGS, **(FAST_UNSAFE if unsafe_fast else {}))
        self.root = Path(tempfile.mkdtemp(prefix="jobq-pg-"))
        self.data = self.root / "data"
        self.log = self.root / "server.log"
        self._started = False

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _cmd(self, *args: str, timeout: float = 60) -> None:
        result = subprocess.run(
            [str(self.bin / args[0]), *args[1:]], user=self.user, capture_output=True,
            text=True, timeout=timeout, cwd=self.root, check=False,
        )
        if result.returncode != 0:
            raise JobqError(
                f"{args[0]} failed ({result.returncode}): {result.stderr.strip()[-2000:]}"
            )

    def start(self) -> str:
        """Initialise (first time) and start the server; returns its DSN."""
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)
            if subprocess.run(["test", "-x", str(self.bin / "initdb")], user=self.user,
                              check=False).returncode != 0:
                _make_traversable(self.bin)
        if not (self.data / "PG_VERSION").exists():
            self._cmd("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust",
                      "--encoding=UTF8", "--no-sync")
            with open(self.data / "postgresql.conf", "a") as conf:
                for key, value in self.settings.items():
                    conf.write(f"{key} = {value}\n")
        self._cmd("pg_ctl", "-D", str(self.data), "-l", str(self.log), "-w",
                  "-o", f"-p {self.port}", "start")
        self._started = True
        return self.dsn

    def stop(self, mode: str = "fast") -> None:
        """Stop the server, keeping its data (``mode``: smart, fast or immediate)."""
        if self._started:
            self._cmd("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")
            self._started = False

    def restart(self, mode: str = "fast") -> None:
        self.stop(mode)
        self.start()

    def kill(self) -> None:
        """SIGKILL the postmaster, as a crash would."""
        pid = int((self.data / "postmaster.pid").read_text().split()[0])
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                os.kill(pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
        self._started = False

    def cleanup(self) -> None:
        """Stop the server and delete its folder."""
        try:
            self.stop("immediate")
        except JobqError:
            pass
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.cleanup()  # a failed start leaves no folder behind
            raise
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cleanup()
