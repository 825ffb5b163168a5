"""A throwaway PostgreSQL server for tests: Debian's binaries, a cluster in a temporary folder.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` account
(which Debian's postgresql package creates) and its commands run through ``runuser``.

:meth:`PostgresServer.standby` makes a streaming standby of a running server
(``pg_basebackup -R``), which :meth:`PostgresServer.promote` turns into a primary; with
``synchronous=True`` the primary's commits wait until the standby has them.
"""

from __future__ import annotations

import glob
import os
import pwd
import shlex
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import Self

from tests.infra._net import LOOPBACK, free_port, port_answers

SUPERUSER = "sessiond"


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found and "/usr/lib/postgresql/" in os.path.realpath(found):
        return os.path.realpath(found)
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise RuntimeError(f"PostgreSQL's {name} is not installed (Debian package postgresql)")
    return candidates[-1]


class PostgresServer:
    def __init__(
        self,
        *,
        start_timeout: float = 60.0,
        settings: dict[str, str] | None = None,
        copy_of: PostgresServer | None = None,
    ) -> None:
        """A new cluster (``initdb``), or with ``copy_of`` a streaming standby of that running
        server (``pg_basebackup -R``). ``settings``: server settings for this one's command
        line (not copied to a standby made of it)."""
        self.tmpdir = tempfile.mkdtemp(prefix="sessiond-pg-")
        self.data = os.path.join(self.tmpdir, "data")
        self.log = os.path.join(self.tmpdir, "postgres.log")
        self.port = free_port()
        self.settings = dict(settings or {})
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.tmpdir, account.pw_uid, account.pw_gid)
        try:
            if copy_of is None:
                self._run(
                    _binary("initdb"),
                    "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                    "--no-instructions", "--no-sync",
                )  # fmt: skip
            else:
                self._run(
                    _binary("pg_basebackup"),
                    "-h", LOOPBACK, "-p", str(copy_of.port), "-U", SUPERUSER, "-D", self.data,
                    "-R", "-X", "stream", "-c", "fast", "--no-sync",
                )  # fmt: skip
            self._start_timeout = start_timeout
            self.start()
        except BaseException:
            self.stop()
            raise

    def standby(self, *, synchronous: bool = False) -> PostgresServer:
        """A streaming standby of this server, started (the caller stops it). ``synchronous``:
        this server restarts with ``synchronous_standby_names = '*'`` and
        ``synchronous_commit = on``, so that a commit is acknowledged only once the standby has
        written it (what a promotion of the standby keeps)."""
        standby = PostgresServer(start_timeout=self._start_timeout, copy_of=self)
        if synchronous:
            self.settings.update(synchronous_standby_names="*", synchronous_commit="on")
            self.halt()
            self.start()
        standby.wait_until_streaming(self)
        return standby

    def wait_until_streaming(self, primary: PostgresServer, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while primary.query("SELECT count(*) FROM pg_stat_replication").strip() == "0":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby on port {self.port} does not stream")
            time.sleep(0.1)

    def wait_until_replayed(self, primary: PostgresServer, timeout: float = 60.0) -> None:
        """Return once this standby has replayed everything ``primary`` has written so far
        (a database just created there, say)."""
        target = primary.query("SELECT pg_current_wal_lsn()").strip()
        deadline = time.monotonic() + timeout
        while self.query(f"SELECT pg_last_wal_replay_lsn() >= '{target}'").strip() != "t":
            if time.monotonic() > deadline:
                raise RuntimeError(f"the standby on port {self.port} did not replay {target}")
            time.sleep(0.05)

    def in_recovery(self) -> bool:
        return self.query("SELECT pg_is_in_recovery()").strip() == "t"

    def promote(self) -> None:
        """Make this standby a primary (``pg_ctl promote``, waiting until it accepts writes)."""
        self._run(_binary("pg_ctl"), "-D", self.data, "-w", "promote")

    def follow(self, primary: PostgresServer) -> None:
        """Start this stopped server again as a standby of ``primary`` (an old primary rejoining
        after a failover)."""
        Path(self.data, "standby.signal").touch()
        conninfo = f"host={LOOPBACK} port={primary.port} user={SUPERUSER}"
        self.settings.update(primary_conninfo=conninfo, synchronous_standby_names="")
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(Path(self.data, "standby.signal"), account.pw_uid, account.pw_gid)
        self.start()

    def crash(self) -> None:
        """The machine gone at once: SIGKILL to the postmaster and every child."""
        if not Path(self.data, "postmaster.pid").exists():
            return  # not running
        for pid in self.pids():
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        Path(self.data, "postmaster.pid").unlink(missing_ok=True)

    def start(self) -> None:
        """Start the server (again, after :meth:`halt`), on the same port with the same data."""
        options = (
            f"-p {self.port} -k {self.tmpdir} -c listen_addresses={LOOPBACK} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
        for name, value in self.settings.items():  # pg_ctl runs the command through a shell
            options += f" -c {name}={shlex.quote(value)}"
        self._run(
            _binary("pg_ctl"), "-D", self.data, "-l", self.log, "-o", options,
            "-w", "-t", str(int(self._start_timeout)), "start",
        )  # fmt: skip
        if not port_answers(self.port):
            raise RuntimeError(f"PostgreSQL did not answer on port {self.port}")

    def halt(self) -> None:
        """Stop the server as an operator would (fast shutdown: clients are disconnected),
        keeping its data for :meth:`start`."""
        self._run(_binary("pg_ctl"), "-D", self.data, "-m", "fast", "-w", "stop")

    def pids(self) -> list[int]:
        """The postmaster's process id, then those of its children (backends, checkpointer,
        and the rest), as they are now."""
        postmaster = int(Path(self.data, "postmaster.pid").read_text().split()[0])
        children = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                # "pid (comm) state ppid ...": comm may hold spaces, so split after its ")".
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except (OSError, IndexError):
                continue  # the process ended meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat.parent.name))
        return [postmaster, *sorted(children)]

    @contextmanager
    def frozen(self, thaw_timeout: float = 60.0) -> Iterator[None]:
        """The whole server stopped (SIGSTOP to the postmaster first, so that it forks no
        new backend, then to every child): its port still accepts connections, nothing
        answers, as when a machine freezes or the network drops packets. Always resumed
        (SIGCONT) on leaving, and answering a query again before this returns."""
        stopped: list[int] = []
        try:
            for pid in self.pids():  # the postmaster comes first
                try:
                    os.kill(pid, signal.SIGSTOP)
                except ProcessLookupError:
                    continue
                stopped.append(pid)
            yield
        finally:
            for pid in reversed(stopped):
                try:
                    os.kill(pid, signal.SIGCONT)
                except ProcessLookupError:
                    pass
            self.wait_until_answering(thaw_timeout)

    def wait_until_answering(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.query("SELECT 1", timeout=5)
                return
            except (RuntimeError, subprocess.TimeoutExpired):
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def query(self, sql: str, *, database: str = "postgres", timeout: float = 120) -> str:
        """Run one SQL command with psql; its output, unaligned and without headers."""
        return self._run(
            _binary("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", SUPERUSER,
            "-d", database, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql, timeout=timeout,
        )  # fmt: skip

    def _run(self, *args: str, timeout: float = 120) -> str:
        command = ["runuser", "-u", "postgres", "--", *args] if self._as_postgres else list(args)
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
        if result.returncode != 0:
            log = ""
            if os.path.exists(self.log):
                with open(self.log, encoding="utf-8", errors="replace") as fh:
                    log = fh.read()[-3000:]
            raise RuntimeError(f"{args[0]} failed: {result.stdout}{result.stderr}\n{log}")
        return result.stdout

    def url(self, database: str) -> str:
        return f"postgresql+asyncpg://{SUPERUSER}@{LOOPBACK}:{self.port}/{database}"

    def new_database(self) -> str:
        """A fresh, empty database; returns its SQLAlchemy URL."""
        name = f"t_{uuid.uuid4().hex[:12]}"
        self._run(
            _binary("psql"), "-h", LOOPBACK, "-p", str(self.port), "-U", SUPERUSER,
            "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-c", f'CREATE DATABASE "{name}"',
        )  # fmt: skip
        return self.url(name)

    def stop(self) -> None:
        if os.path.exists(os.path.join(self.data, "postmaster.pid")):
            try:
                self._run(_binary("pg_ctl"), "-D", self.data, "-m", "immediate", "-w", "stop")
            except RuntimeError:
                pass
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
