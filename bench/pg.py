"""Validation throughput on PostgreSQL: ``GET /api/v1/sessions/current`` on a real
``sessiond serve`` whose store is a PostgreSQL database, against the bare baseline.

The cluster is a throwaway one from Debian's binaries, started by the test suite's helper
(:class:`tests.infra.postgres.PostgresServer`: a temporary folder, loopback only, fsync off)
and stopped at the end of the benchmark whatever happens. The server gets the same settings as
in the other benchmarks (fast Argon2, an administrator password, a data folder, which here holds
only the key ring) plus ``SESSIOND_DATABASE_URL``.

On PostgreSQL the server keeps no session cache (another node's delete could not clear it), so
every validation reads the session row from the database. Rounds alternate three targets:

- ``bare``: the bare Starlette baseline, given the same wrk Lua script as sessiond-pg-many;
- ``sessiond-pg-one``: one token (the first of the N) on every request;
- ``sessiond-pg-many``: N tokens in turn, with the script ``validate-many`` uses.

Besides requests/s and p99, each run reads the CPU time that the server process and the
PostgreSQL cluster (postmaster and backends) used during it from ``/proc`` (Linux), per answered
request. Around each sessiond run the bench reads the database: last-activity touches (from the
sessions table) and the connections the server opened (``pg_stat_database.sessions``). The
cluster runs on the same cores as the server and wrk.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import math
import shutil
import sys
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.pool import NullPool

from .common import (
    BenchError,
    Config,
    Series,
    Sessiond,
    fmt,
    heading,
    print_ratio,
    print_table,
    process_tree_cpu,
    start_app,
    start_sessiond,
)
from .load import LoadGenerator, LoadResult
from .many import Touches, prepare_sessions, strict
from .validate import PATH, SESSION_HEADER, _load

if TYPE_CHECKING:
    from tests.infra.postgres import PostgresServer

REPO_ROOT = Path(__file__).resolve().parent.parent


def _start_postgres(stack: contextlib.ExitStack) -> PostgresServer:
    """A throwaway cluster, stopped (and its folder removed) when ``stack`` closes."""
    # ``python -m bench`` run from the repository root has the root on sys.path already;
    # from anywhere else (PYTHONPATH=... python -m bench) it may not.
    if str(REPO_ROOT) not in sys.path:
        sys.path.insert(0, str(REPO_ROOT))
    try:
        from tests.infra.postgres import PostgresServer
    except ImportError as exc:
        raise BenchError(f"cannot import tests.infra.postgres from {REPO_ROOT}: {exc}") from exc
    if not (shutil.which("initdb") or glob.glob("/usr/lib/postgresql/*/bin/initdb")):
        raise BenchError("PostgreSQL's initdb is not installed (Debian package postgresql)")
    try:
        # The constructor stops what it started if it fails (Ctrl-C included).
        server = PostgresServer()
    except (RuntimeError, OSError, KeyError) as exc:  # KeyError: no postgres account (root)
        raise BenchError(f"PostgreSQL did not start: {exc!s}") from exc
    stack.callback(server.stop)
    return server


def _postmaster_pid(server: PostgresServer) -> int | None:
    try:
        first = (Path(server.data) / "postmaster.pid").read_text().splitlines()[0]
    except (OSError, IndexError):
        return None
    return int(first) if first.strip().isdigit() else None


def _read_database(url: str) -> tuple[Mapping[object, object], int]:
    """Every session's last activity, read from the server's database, and how many
    connections (PostgreSQL sessions) the database has counted so far."""

    async def read() -> tuple[Mapping[object, object], int]:
        engine = create_async_engine(url, poolclass=NullPool)
        try:
            async with engine.connect() as conn:
                rows = await conn.execute(text("SELECT id, last_activity FROM sessions"))
                activity = {row[0]: row[1] for row in rows}
                opened = await conn.scalar(
                    text("SELECT sessions FROM pg_stat_database WHERE datname = current_database()")
                )
                return activity, int(opened or 0)
        finally:
            await engine.dispose()

    return asyncio.run(read())


class _Counters:
    """Touches and connections the database accepted between two readings. Each reading
    opens one connection of its own, which the next reading sees (pg_stat_database counts a
    connection once it ends or reports its statistics)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.opened = 0
        self.touches = Touches(self._read)
        self.connections = 0

    def _read(self) -> Mapping[object, object]:
        activity, self.opened = _read_database(self.url)
        return activity

    def since_last(self) -> tuple[int, int]:
        before = self.opened
        touched = self.touches.since_last()
        connections = max(0, self.opened - before - 1)
        self.connections += connections
        return touched, connections


@dataclass(frozen=True)
class _Target:
    name: str
    url: str
    cycle: bool  # the N tokens in turn, or the first token on every request
    sessiond: bool


@dataclass(frozen=True)
class _Run:
    result: LoadResult
    server_cpu_us: float  # CPU of the process under load, per answered request
    postgres_cpu_us: float  # CPU of the PostgreSQL cluster, per answered request


def _per_request_us(seconds: float, result: LoadResult) -> float:
    return seconds / result.requests * 1e6 if result.requests else math.nan


def _rounds(
    config: Config,
    load: LoadGenerator,
    root: Path,
    bare_url: str,
    bare_pid: int | None,
    sessiond: Sessiond,
    postmaster: int | None,
    database_url: str,
) -> None:
    count = config.sessions
    url, tokens, cycle = prepare_sessions(config, root, bare_url, sessiond)
    counters = _Counters(database_url)
    sessiond_pid = sessiond.server.process.pid if sessiond.server.process else None
    targets = [
        _Target("bare", bare_url, cycle=True, sessiond=False),
        _Target("sessiond-pg-one", url, cycle=False, sessiond=True),
        _Target("sessiond-pg-many", url, cycle=True, sessiond=True),
    ]

    def measure(target: _Target, seconds: float) -> _Run:
        if target.sessiond:
            sessiond.server.check_alive()
        pid = sessiond_pid if target.sessiond else bare_pid
        headers = {} if target.cycle else {SESSION_HEADER: tokens[0]}
        server_before, pg_before = process_tree_cpu(pid), process_tree_cpu(postmaster)
        # _load voids a run with over 1 % failures; strict any refused token.
        result = strict(
            target.name,
            _load(
                load,
                target.name,
                target.url,
                headers,
                seconds,
                config,
                cycle if target.cycle else None,
            ),
        )
        server_cpu = process_tree_cpu(pid) - server_before
        pg_cpu = process_tree_cpu(postmaster) - pg_before
        return _Run(result, _per_request_us(server_cpu, result), _per_request_us(pg_cpu, result))

    for target in targets:  # warm up: imports, pool connections, prepared statements
        measure(target, config.warmup)
    counters.since_last()
    counters.touches.total = counters.connections = 0

    series = {t.name: Series(t.name, "req/s") for t in targets}
    latency = {t.name: Series(f"{t.name} p99", "ms") for t in targets}
    server_cpu = {t.name: Series(f"{t.name} server CPU", "us/req") for t in targets}
    pg_cpu = {t.name: Series(f"{t.name} PostgreSQL CPU", "us/req") for t in targets[1:]}
    touched = {t.name: Series(f"touches during {t.name}", "count") for t in targets[1:]}
    opened = {
        t.name: Series(f"PostgreSQL connections opened during {t.name}", "count")
        for t in targets[1:]
    }
    for round_no in range(1, config.rounds + 1):
        parts = []
        for target in targets:
            run = measure(target, config.duration)
            series[target.name].add(run.result.rps)
            latency[target.name].add(run.result.p99_ms)
            server_cpu[target.name].add(run.server_cpu_us)
            note = ""
            if target.name in pg_cpu:
                pg_cpu[target.name].add(run.postgres_cpu_us)
                touches, connections = counters.since_last()
                touched[target.name].add(touches)
                opened[target.name].add(connections)
                note = f" ({touches} touches, {connections} connections opened)"
            parts.append(f"{target.name} {fmt(run.result.rps)}/s{note}")
        print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
    print_table(
        [
            *series.values(),
            *latency.values(),
            *server_cpu.values(),
            *pg_cpu.values(),
            *touched.values(),
            *opened.values(),
        ]
    )
    trusted = load.name == "wrk"
    if not trusted:
        print(
            "  NOTE: the httpx load generator saturates before these servers do; the "
            "figures are bounded by the client and the ratios say little (install wrk)"
        )
    bare, one, many = series["bare"], series["sessiond-pg-one"], series["sessiond-pg-many"]
    print_ratio("sessiond-pg-one / bare", one, bare, 0.5, trusted)
    print_ratio("sessiond-pg-many / bare", many, bare, 0.5, trusted)
    print_ratio("sessiond-pg-many / sessiond-pg-one", many, one)
    print(
        f"  ({count:,} sessions for sessiond-pg-many, one token per request in turn; "
        "no session cache on PostgreSQL, so every validation reads its session row; "
        "CPU per request is the process's (server CPU) and the cluster's (postmaster and "
        f"backends) during the run, from /proc; {counters.touches.total:,} touches and "
        f"{counters.connections:,} new PostgreSQL connections in all rounds)"
    )


def run_validate_pg(config: Config, load: LoadGenerator) -> None:
    heading(
        "validate-pg",
        f"GET {PATH} on sessiond with a PostgreSQL store, one token and cycling through "
        f"{config.sessions:,} session tokens, requests/s, one uvicorn worker each",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        postgres = _start_postgres(stack)
        try:
            database_url = postgres.new_database()
        except RuntimeError as exc:
            raise BenchError(f"could not create a PostgreSQL database: {exc}") from exc
        bare = start_app(stack, root, "bare")
        sessiond = start_sessiond(
            stack, root, "sessiond", fast_argon2=True, database_url=database_url
        )
        bare_pid = bare.process.pid if bare.process else None
        _rounds(
            config,
            load,
            root,
            bare.url + PATH,
            bare_pid,
            sessiond,
            _postmaster_pid(postgres),
            database_url,
        )
