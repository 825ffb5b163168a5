"""A throwaway PostgreSQL server for tests: Debian's binaries, a cluster in a temporary folder.

``initdb`` refuses to run as root, so as root the cluster belongs to the ``postgres`` account
(which Debian's postgresql package creates) and its commands run through ``runuser``.
"""

from __future__ import annotations

import glob
import os
import pwd
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
    def __init__(self, *, start_timeout: float = 60.0) -> None:
        self.tmpdir = tempfile.mkdtemp(prefix="sessiond-pg-")
        self.data = os.path.join(self.tmpdir, "data")
        self.log = os.path.join(self.tmpdir, "postgres.log")
        self.port = free_port()
        self._as_postgres = os.geteuid() == 0
        if self._as_postgres:
            account = pwd.getpwnam("postgres")
            os.chown(self.tmpdir, account.pw_uid, account.pw_gid)
        try:
            self._run(
                _binary("initdb"),
                "-D", self.data, "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                "--no-instructions", "--no-sync",
            )  # fmt: skip
            self._start_timeout = start_timeout
            self.start()
        except BaseException:
            self.stop()
            raise

    def start(self) -> None:
        """Start the server (again, after :meth:`halt`), on the same port with the same data."""
        options = (
            f"-p {self.port} -k {self.tmpdir} -c listen_addresses={LOOPBACK} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=300"
        )
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
