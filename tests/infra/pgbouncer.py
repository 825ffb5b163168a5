"""A throwaway PgBouncer in front of the test PostgreSQL cluster: Debian's pgbouncer, in
transaction pooling, on a free loopback port, its files in a temporary folder.

Every database of the cluster is reachable through it by the same name (``* =`` in
``[databases]``); clients are let in without a password (``auth_type = trust``, the user must
still be listed in the ``auth_file``), as the cluster itself does on loopback. No startup
parameter is ignored (``ignore_startup_parameters`` is left empty), so a client that sends one
pgbouncer does not track is refused, as a default pgbouncer.ini refuses it.

pgbouncer refuses to run as root: as root it runs as the ``postgres`` account (which Debian's
postgresql package creates), its folder belonging to that account.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Self

from sqlalchemy.engine import make_url

from tests.infra._net import LOOPBACK, free_port
from tests.infra._process import stop_process, wait_for_ports
from tests.infra.postgres import SUPERUSER, PostgresServer

PGBOUNCER = "/usr/sbin/pgbouncer"


class PgBouncer:
    def __init__(
        self, postgres: PostgresServer, *, pool_size: int = 6, start_timeout: float = 30.0
    ) -> None:
        if not os.path.exists(PGBOUNCER):
            raise RuntimeError("pgbouncer is not installed (Debian package pgbouncer)")
        self.postgres = postgres
        self.tmpdir = tempfile.mkdtemp(prefix="sessiond-pgbouncer-")
        self.log = os.path.join(self.tmpdir, "pgbouncer.log")
        self.port = free_port()
        self.config = Path(self.tmpdir, "pgbouncer.ini")
        Path(self.tmpdir, "userlist.txt").write_text(f'"{SUPERUSER}" ""\n')
        self.config.write_text(
            "[databases]\n"
            f"* = host={LOOPBACK} port={postgres.port}\n"
            "\n"
            "[pgbouncer]\n"
            f"listen_addr = {LOOPBACK}\n"
            f"listen_port = {self.port}\n"
            "unix_socket_dir =\n"
            "pool_mode = transaction\n"
            "auth_type = trust\n"
            f"auth_file = {self.tmpdir}/userlist.txt\n"
            f"admin_users = {SUPERUSER}\n"
            "max_client_conn = 1000\n"
            f"default_pool_size = {pool_size}\n"
            f"pidfile = {self.tmpdir}/pgbouncer.pid\n"
        )
        command = [PGBOUNCER, str(self.config)]
        if os.geteuid() == 0:
            account = pwd.getpwnam("postgres")
            for path in (self.tmpdir, *(str(p) for p in Path(self.tmpdir).iterdir())):
                os.chown(path, account.pw_uid, account.pw_gid)
            command = ["runuser", "-u", "postgres", "--", *command]
        with open(self.log, "ab") as log:  # pgbouncer in the foreground logs to stderr
            self._proc: subprocess.Popen[bytes] | None = subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
            )
        try:
            wait_for_ports(
                self._proc, [self.port], timeout=start_timeout, what="pgbouncer", log_file=self.log
            )
        except BaseException:
            self.stop()
            raise

    def url(self, direct_url: str) -> str:
        """``direct_url`` (a database of :attr:`postgres`) as reached through pgbouncer."""
        return (
            make_url(direct_url)
            .set(host=LOOPBACK, port=self.port)
            .render_as_string(hide_password=False)
        )

    def log_text(self) -> str:
        try:
            return Path(self.log).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        stop_process(self._proc)
        self._proc = None
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
