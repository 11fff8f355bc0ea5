"""A private, throwaway Postgres for the demo and the tests.

It runs ``initdb`` and ``pg_ctl`` in a fresh temporary folder and listens on a free loopback
port; `stop` (or leaving the ``with`` block) shuts it down and deletes the folder.

Binaries come from the ``pgserver`` wheel (PostgreSQL 16, the ``[embedded]`` extra) or,
failing that, from the system's PostgreSQL. Postgres refuses to run as root, so as root the
server runs as the ``postgres`` system user, else as ``jobq-postgres``; the data folder is then
owned by that user. Creating ``jobq-postgres`` is the caller's choice (``create_user=True``:
the demo, the tests and the benchmarks make it), never a side effect. No folder outside the
server's own is changed: binaries that user cannot reach (pgserver's under ``/root``) are
hard-linked, or copied, into the server's folder instead.
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
    system has its own (which its own user can run)."""
    order = [pgserver_binaries, _system_bin]
    if os.geteuid() == 0:
        order.reverse()
    for finder in order:
        path = finder()
        if path is not None:
            return path
    raise JobqError("no PostgreSQL binaries found: pip install 'jobq[embedded]' (pgserver), "
                    "or install postgresql")


#: The system users a server started by root runs as, in order of preference.
SERVER_USERS = ("postgres", "jobq-postgres")


def _run_as_user(create: bool) -> str | None:
    if os.geteuid() != 0:
        return None
    for name in SERVER_USERS:
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    if not create:
        raise JobqError(
            "PostgreSQL will not run as root, and there is no 'postgres' user to run it as: "
            "create one (useradd --system postgres), run as another user, or pass "
            "create_user=True to create 'jobq-postgres'")
    subprocess.run(["useradd", "--system", "--no-create-home", SERVER_USERS[-1]], check=True,
                   capture_output=True)
    return SERVER_USERS[-1]


def _link_tree(source: Path, target: Path) -> None:
    """`source`, hard-linked at `target`, or copied where links cannot cross file systems."""
    try:
        shutil.copytree(source, target, copy_function=os.link, symlinks=True)
    except OSError:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)


def _linked_into(binaries: Path, folder: Path) -> Path:
    """The same binaries, reachable from `folder`: their install tree (bin, lib, share) and,
    for a wheel's, the libraries auditwheel put beside its package, which the binaries'
    relative RPATH finds there (pgserver's `$ORIGIN/../../../pgserver.libs`)."""
    install = binaries.parent
    package = install.parent
    target = folder / package.name / install.name
    target.parent.mkdir()
    _link_tree(install, target)
    libs = package.parent / f"{package.name}.libs"
    if libs.is_dir():
        _link_tree(libs, folder / libs.name)
    return target / binaries.name


class EmbeddedPostgres:
    """``with EmbeddedPostgres() as pg: use(pg.dsn)``"""

    def __init__(
        self, *, unsafe_fast: bool = False, port: int | None = None,
        binaries: Path | None = None, create_user: bool = False,
    ) -> None:
        self.bin = binaries or find_binaries()
        self.user = _run_as_user(create_user)
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
                self.bin = _linked_into(self.bin, self.root)
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
