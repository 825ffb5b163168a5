"""Scale: validation, memory, start-up and session lists with a million sessions in the store.

The stores are filled in bulk, not by signing in: each server is started once so that it
creates its store and key ring (and a user is added through the API: the one the sessions
belong to), then stopped; the bench builds the session rows the way a sign-in does
(``SessionToken(...).signed(key_id, key)`` with the server's current key, then
``sessiond.store.codec.session_values``; in one worker process per core), writes them in one
transaction (SQLite: ``executemany``; PostgreSQL: ``COPY`` through asyncpg's
``copy_records_to_table``), keeps the auth form of every token, and starts the server again,
timing its start-up. The sessions were opened over the last six days and expire seven days
after; the working sets are random samples of them, so that their rows lie all over the file.

Then wrk drives ``GET /api/v1/sessions/current`` with validate-many's Lua script over a set of
N distinct ``Tessa-Session`` tokens, in one of two orders: each request the token of a uniform
random draw from the set (as N sessions used independently of each other would arrive), or all
N in turn (``sqlite-misses``: every token comes back only after all the others, which no cache
smaller than N can serve), each run resuming where the previous run of the same target stopped.
Rounds alternate, against the bare Starlette baseline (``bench/apps.py``, given the 100k set):

- ``sqlite-100k``: 100,000 distinct tokens over 1,000,000 rows (goal >= 0.5x bare);
- ``sqlite-misses``: all 1,000,000 tokens in turn, more than any cache holds, so that every
  request takes the slow path (goal >= 0.3x bare);
- ``sqlite-1k``: 1,000 tokens over 1,000,000 rows, against ``small-1k``, 1,000 tokens over a
  store of 1,000 rows, and against bare (goal >= 0.9x each);
- ``sqlite-100k-sweeping``: the ``sqlite-100k`` load while the sweeper removes 100,000 expired
  rows (goal >= 0.7x ``sqlite-100k``). The servers run with ``SESSIOND_SWEEP_INTERVAL=1``; the
  bench inserts the rows (expired a day ago) and starts the run once the sweeper has removed its
  first batch; it counts the rows removed during the run and, every 0.1 s, whether SQLite's
  write lock is held; one sign-in is timed in the middle of the run (and of each ``sqlite-100k``
  run). After the run the bench deletes what the sweeper left, so that the next round starts
  with no sweep; at the end, the sweeper's rate with no load is measured for 30 s.

``sqlite-100k`` (and its sweeping runs), ``sqlite-misses`` and ``sqlite-1k`` are three servers on
three copies of the same store: a SQLite commit (a touch) clears every session cache on the
file, and each server's caches then hold only its own working set. Then, on PostgreSQL (a
throwaway cluster on this machine, as ``validate-pg``; one node sharing the first SQLite
server's key ring, so that the same tokens verify, and the same rows copied in):

- ``pg-100k``: the same 100,000 tokens over the same 1,000,000 rows (goal >= 0.3x bare);
- ``pg-1k``: the same 1,000 tokens.

Besides: each server's memory (``VmRSS`` and ``VmHWM`` from ``/proc/PID/status``) after the
load (goal: RSS <= 200 MiB at 1,000,000 rows with the 100k working set), its start-up time
(from starting the process until ``GET /api/v1/health/live`` answers, three times; goal <= 2 s),
the size of the store per session, and ``GET /api/v1/sessions?limit=1000`` pages (the first,
20 after it through ``Tessa-Next-Page``, and the far end) with the server's RSS around them.

``--quick``: 100,000 rows and 10,000 tokens (``--scale-rows``, ``--scale-tokens``).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import multiprocessing
import os
import random
import shutil
import signal
import sqlite3
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from uuid import UUID, uuid4

import httpx
from sqlalchemy.engine import make_url

from sessiond.keys import KeyRing
from sessiond.models import DeviceType, LicenseType, LoginType, ServiceType
from sessiond.store import SessionRecord, UserRecord, create_store
from sessiond.store.codec import session_values
from sessiond.store.schema import sessions as sessions_table
from sessiond.token import SessionToken

from .common import (
    BenchError,
    Config,
    Series,
    Server,
    Sessiond,
    fmt,
    heading,
    median,
    print_ratio,
    print_table,
    process_tree_cpu,
    sign_in,
    start_app,
    start_sessiond,
)
from .load import _CYCLE_LUA, HeaderCycle, LoadGenerator, LoadResult, Wrk, _lua_string
from .many import _caches_kept, strict
from .validate import PATH, SESSION_HEADER, _check, _load

LIST_PATH = "/api/v1/sessions"
LIVE_PATH = "/api/v1/health/live"
HEALTH_PATH = "/api/v1/health"
OWNER_LOGIN = "scale.owner"
OWNER_NAME = "Scale Owner"
OWNER_PASSWORD = "bench password 1"
LIFETIME = timedelta(days=7)  # session_expiration_time_span's default
OPENED_OVER = timedelta(days=6)  # the live sessions were opened over the last six days
CLIENT_ADDRESS = "10.20.30.40"
SWEEP_INTERVAL = "1"  # seconds: SESSIOND_SWEEP_INTERVAL of the SQLite servers
LOGOUTS_PER_SECOND = 5.0  # other sessions removed during each sqlite-100k run
IDLE_POOL = 10_000  # sessions set aside for those removals
SWEEP_START_WAIT = 30.0  # seconds for the sweeper to begin on the inserted expired rows
SWEEP_END_WAIT = 120.0  # seconds the bench waits for the write lock to delete what is left
CHECKED = 8  # tokens of each set validated one by one with httpx before the load
PAGES = 20  # list pages followed through Tessa-Next-Page
PAGE = 1000
STARTUPS = 3  # start-ups timed per server (the median is judged)
CHUNK = 25_000  # rows signed per job of a worker process
SEED = 20261126
MIB = 1024 * 1024
RSS_GOAL_MIB = 200
STARTUP_GOAL_S = 2.0
_VARYING = ("id", "created", "expires", "last_activity", "signature")


# --- sizes ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Size:
    rows: int  # live sessions in the large stores
    working: int  # distinct tokens of the large working set
    small: int  # rows of the small store, and tokens of the small working set
    expired: int  # expired rows the sweeper removes in each sweeping round

    @classmethod
    def of(cls, config: Config) -> Size:
        rows, working = config.scale_rows, min(config.scale_tokens, config.scale_rows)
        return cls(rows=rows, working=working, small=min(1000, working), expired=working)


def _count(n: int) -> str:
    """1,000,000 -> 1M, 100,000 -> 100k, 1,500 -> 1,500 (for target names)."""
    if n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n % 1000 == 0:
        return f"{n // 1000}k"
    return f"{n:,}"


# --- the rows -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Signer:
    """What every token of one store is built from: its owner and the server's current key."""

    user_id: UUID
    user_name: str
    user_login: str
    key_id: str
    key: bytes

    def token(self, session_id: UUID, created: datetime) -> SessionToken:
        """A token as a desktop client's sign-in mints it (service/signin.py), signed."""
        return SessionToken(
            session_id=session_id,
            user_id=self.user_id,
            user_name=self.user_name,
            user_login=self.user_login,
            created=created,
            expires=created + LIFETIME,
            license_type=LicenseType.CONCURRENT_CLIENT,
            login_type=LoginType.PLATFORM,
            service_type=ServiceType.DESKTOP_CLIENT,
            device_type=DeviceType.DESKTOP,
            culture="en-US",
            ui_culture="en-US",
            utc_offset=60,
            host_ip=CLIENT_ADDRESS,
            host_name="WS-PC-0042",
            os_name="Windows 11 Pro 23H2",
            user_agent="TessaClient/4.1 (Windows NT 10.0; x64)",
            client_64bit=True,
            client_64bit_os=True,
        ).signed(self.key_id, self.key)

    def record(self, token: SessionToken) -> SessionRecord:
        return SessionRecord(token, token.created, CLIENT_ADDRESS)


def _make_chunk(
    job: tuple[Signer, datetime, float, int, int, bool],
) -> list[tuple[UUID, datetime, str, str]]:
    """Rows ``start`` to ``stop``: (session id, created, signature, auth text or "")."""
    signer, first, step_us, start, stop, with_auth = job
    out = []
    for index in range(start, stop):
        token = signer.token(uuid4(), first + timedelta(microseconds=round(index * step_us)))
        assert token.signature is not None
        out.append(
            (
                token.session_id,
                token.created,
                token.signature,
                token.to_auth_xml() if with_auth else "",
            )
        )
    return out


@dataclass
class Rows:
    """Generated sessions of one owner: what varies from row to row, and the tokens' auth
    texts; every other column is the same in every row (``template``)."""

    signer: Signer
    ids: list[UUID] = field(default_factory=list)
    created: list[datetime] = field(default_factory=list)
    signatures: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    seconds: float = math.nan

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def columns(self) -> list[str]:
        return [c.name for c in sessions_table.columns]

    def values(self, index: int) -> dict[str, Any]:
        """``session_values`` of row ``index``, built again from its token (for checks)."""
        token = self.signer.token(self.ids[index], self.created[index])
        if token.signature != self.signatures[index]:
            raise BenchError(f"row {index}: the token signed again has another signature")
        return session_values(self.signer.record(token))

    def native(self) -> Iterator[tuple[Any, ...]]:
        """Every row as a tuple of Python values in table column order (for asyncpg's COPY)."""
        columns = self.columns
        template = self.values(0)
        if set(template) != set(columns):
            raise BenchError(f"session_values gives {sorted(template)}, the table has {columns}")
        base = [template[c] for c in columns]
        at = {name: columns.index(name) for name in _VARYING}
        for sid, created, signature in zip(self.ids, self.created, self.signatures, strict=True):
            row = list(base)
            row[at["id"]] = sid
            row[at["created"]] = created
            row[at["expires"]] = created + LIFETIME
            row[at["last_activity"]] = created
            row[at["signature"]] = signature
            yield tuple(row)

    def check(self, rows: Sequence[tuple[Any, ...]], indexes: Sequence[int]) -> None:
        """The template rows at ``indexes`` equal session_values of the tokens signed again."""
        for index in indexes:
            values = self.values(index)
            expected = tuple(values[c] for c in self.columns)
            if rows[index] != expected:
                raise BenchError(f"row {index} differs from session_values of its token")


def generate(signer: Signer, count: int, first: datetime, span: timedelta, auth: bool) -> Rows:
    """``count`` sessions created evenly from ``first`` over ``span``, signed in worker
    processes (one per usable core); their auth texts too if ``auth``."""
    rows = Rows(signer)
    step_us = span / timedelta(microseconds=1) / max(1, count)
    jobs = [
        (signer, first, step_us, start, min(count, start + CHUNK), auth)
        for start in range(0, count, CHUNK)
    ]
    processes = _processes(count)
    started = time.perf_counter()
    if processes == 1:
        parts: Iterator[list[tuple[UUID, datetime, str, str]]] = map(_make_chunk, jobs)
        _collect(rows, parts)
    else:
        context = multiprocessing.get_context("fork")
        with context.Pool(processes, initializer=_quiet_worker) as pool:
            _collect(rows, pool.imap(_make_chunk, jobs))
    rows.seconds = time.perf_counter() - started
    if len(set(rows.ids)) != count:
        raise BenchError(f"generated {len(set(rows.ids))} distinct sessions for {count}")
    return rows


def _touch_env(config: Config) -> dict[str, str]:
    """``--scale-touch-interval``: the servers' touch_interval, in their environment."""
    seconds = config.scale_touch_interval
    return {"SESSIOND_TOUCH_INTERVAL": f"{seconds}s"} if seconds else {}


def _quiet_worker() -> None:
    """A signing worker ends silently when the pool terminates it (the bench's own handlers,
    inherited by fork, would print a KeyboardInterrupt traceback)."""
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _collect(rows: Rows, parts: Iterator[list[tuple[UUID, datetime, str, str]]]) -> None:
    for part in parts:
        for sid, created, signature, auth in part:
            rows.ids.append(sid)
            rows.created.append(created)
            rows.signatures.append(signature)
            if auth:
                rows.tokens.append(auth)


# --- writing rows -------------------------------------------------------------------------------


def _sqlite_rows(rows: Rows, database_url: str) -> Iterator[tuple[Any, ...]]:
    """The rows as the SQLite dialect binds them (the column types' own bind processors)."""
    dialect = make_url(database_url).get_dialect()()
    processors = [c.type.bind_processor(dialect) for c in sessions_table.columns]
    for row in rows.native():
        yield tuple(
            value if convert is None or value is None else convert(value)
            for convert, value in zip(processors, row, strict=True)
        )


def sqlite_insert(database: Path, rows: Rows, *, checkpoint: bool = True) -> float:
    """All of ``rows`` into the sessions table of ``database``, one transaction; seconds.
    ``checkpoint``: then move the WAL into the database file (only while no server runs: with
    one running, a full checkpoint waits for its writers)."""
    columns = rows.columns
    sql = f"INSERT INTO sessions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    started = time.perf_counter()
    conn = sqlite3.connect(database, isolation_level=None, timeout=30)
    try:
        conn.execute("PRAGMA busy_timeout=30000")
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany(sql, _sqlite_rows(rows, f"sqlite:///{database}"))
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
        if checkpoint:
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return time.perf_counter() - started


def _asyncpg_dsn(url: str) -> str:
    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def postgres_copy(url: str, rows: Rows) -> float:
    """All of ``rows`` into the sessions table with COPY (asyncpg), then ANALYZE; seconds."""
    import asyncpg

    async def copy() -> float:
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            started = time.perf_counter()
            await conn.copy_records_to_table(
                "sessions", records=rows.native(), columns=rows.columns
            )
            elapsed = time.perf_counter() - started
            await conn.execute("ANALYZE sessions")
            return elapsed
        finally:
            await conn.close()

    return asyncio.run(copy())


def _sqlite_scalar(database: Path, sql: str, *args: Any) -> Any:
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return conn.execute(sql, args).fetchone()[0]
    finally:
        conn.close()


def _postgres_scalar(url: str, sql: str) -> Any:
    import asyncpg

    async def read() -> Any:
        conn = await asyncpg.connect(_asyncpg_dsn(url))
        try:
            return await conn.fetchval(sql)
        finally:
            await conn.close()

    return asyncio.run(read())


def _sqlite_time(value: datetime) -> str:
    """How the store keeps times in SQLite: naive UTC text."""
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S.%f")


def _expired_count(database: Path) -> int:
    return int(
        _sqlite_scalar(
            database,
            "SELECT count(*) FROM sessions WHERE expires <= ?",
            _sqlite_time(datetime.now(UTC)),
        )
    )


# --- servers ------------------------------------------------------------------------------------


def _add_owner(server: Sessiond) -> str:
    """The user the sessions belong to, added through the API; its login."""
    admin = sign_in(server.url, "admin", server.admin_password)
    response = httpx.post(
        server.url + "/api/v1/users",
        headers={SESSION_HEADER: admin},
        json={"Login": OWNER_LOGIN, "Name": OWNER_NAME, "Password": OWNER_PASSWORD},
        timeout=60,
    )
    if response.status_code != 201:
        raise BenchError(f"adding {OWNER_LOGIN} answered {response.status_code}: {response.text}")
    return admin


def _read_owner(database_url: str) -> UserRecord:
    async def read() -> UserRecord | None:
        store = create_store(database_url, create=False)
        try:
            return await store.find_user_by_login(OWNER_LOGIN)
        finally:
            await store.close()

    user = asyncio.run(read())
    if user is None:
        raise BenchError(f"no user {OWNER_LOGIN} in {database_url}")
    return user


def _write_owner(database_url: str, user: UserRecord) -> None:
    """The same user (same id) into another store, through the store's transaction."""

    async def write() -> None:
        store = create_store(database_url)
        try:
            async with store.write() as tx:
                await tx.add_user(user)
        finally:
            await store.close()

    asyncio.run(write())


def _signer(user: UserRecord, keys_file: Path) -> Signer:
    ring = KeyRing.load(keys_file)
    return Signer(user.id, user.name, user.login, ring.current, ring.current_key)


def _pid(server: Server) -> int | None:
    return server.process.pid if server.process else None


def _startups(server: Server, count: int = STARTUPS) -> list[float]:
    """Start the stopped ``server`` ``count`` times (stopping it in between); the start-up
    time of each (:func:`_timed_restart`). It is left running."""
    times = []
    for index in range(count):
        if index:
            server.stop()
        times.append(_timed_restart(server))
    return times


def _startup_text(times: Sequence[float]) -> str:
    return f"{median(times):.2f} s (median of {', '.join(f'{t:.2f}' for t in times)})"


def _timed_restart(server: Server) -> float:
    """Start ``server`` again; seconds from starting its process until the liveness route
    answers. Then waits until it is ready (the store answers) too."""
    server.ready_path = LIVE_PATH
    seconds = server.start(timeout=120, poll=0.01)
    deadline = time.monotonic() + 60
    while httpx.get(server.url + HEALTH_PATH, timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise BenchError(f"{server.name} answered {LIVE_PATH} but not {HEALTH_PATH}")
        time.sleep(0.05)
    return seconds


def _memory(pid: int | None) -> tuple[float, float]:
    """VmRSS and VmHWM of ``pid`` in MiB (NaN without /proc)."""
    found = {"VmRSS": math.nan, "VmHWM": math.nan}
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return found["VmRSS"], found["VmHWM"]
    for line in text.splitlines():
        name, _, value = line.partition(":")
        if name in found:
            found[name] = int(value.split()[0]) / 1024  # kB
    return found["VmRSS"], found["VmHWM"]


def _memory_line(name: str, pid: int | None) -> float:
    rss, hwm = _memory(pid)
    print(f"  {name} memory: VmRSS {fmt(rss)} MiB, VmHWM {fmt(hwm)} MiB")
    return rss


def check_tokens(url: str, tokens: Sequence[str], login: str) -> None:
    """A handful of the tokens, spread over the list, each answered with its own session."""
    last = len(tokens) - 1
    indexes = sorted({round(i * last / (CHECKED - 1)) for i in range(CHECKED)})
    with httpx.Client(timeout=30) as client:
        for index in indexes:
            response = client.get(url + PATH, headers={SESSION_HEADER: tokens[index]})
            body = response.json() if response.status_code == 200 else {}
            wanted = tokens[index].split('SessionID="', 1)[1].split('"', 1)[0]
            if body.get("UserLogin") != login or body.get("SessionID") != wanted:
                raise BenchError(
                    f"token {index} answered {response.status_code}: {response.text[:300]}"
                )


# --- load ---------------------------------------------------------------------------------------


class ResumingWrk(Wrk):
    """wrk with validate-many's cycle script (written again before every run), in one of two
    orders: in turn, starting the cycle at ``start_at``; or, with ``random``, each request
    the token of a uniform random draw (Lua's ``math.random``, seeded with ``seed``)."""

    _FROM = "return requests[(sent - 1) % prepared + 1]"
    _INIT = "function init(args)\n"

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.start_at = 0
        self.random = False
        self.seed = SEED

    def _script(self, cycle: HeaderCycle) -> Path:
        text = _CYCLE_LUA.format(
            name=_lua_string(cycle.name),
            path=_lua_string(str(cycle.values_file)),
            count=cycle.count,
        )
        if text.count(self._FROM) != 1 or text.count(self._INIT) != 1:
            raise BenchError("bench/load.py's cycle script changed: update bench/scale.py")
        if self.random:
            text = text.replace(self._FROM, "return requests[math.random(prepared)]")
            text = text.replace(self._INIT, f"{self._INIT}  math.randomseed({self.seed})\n")
        else:
            start = self.start_at % cycle.count
            text = text.replace(self._FROM, f"return requests[(sent - 1 + {start}) % prepared + 1]")
        script = cycle.values_file.with_suffix(".lua")
        script.write_text(text, encoding="ascii")
        return script


@dataclass
class Target:
    name: str
    server: Server
    cycle: HeaderCycle
    random: bool = True  # tokens drawn at random, or in turn (resuming where the last run ended)
    offset: int = 0  # in turn: where the next run starts in the cycle

    @property
    def url(self) -> str:
        return self.server.url + PATH


@dataclass(frozen=True)
class Run:
    result: LoadResult
    cpu_us: float  # server CPU per answered request
    extra_cpu_us: float = math.nan  # another process tree's (PostgreSQL's) CPU per request


class Rounds:
    """Load runs of named targets; each name's figures collect in its own series."""

    def __init__(self, config: Config, wrk: ResumingWrk, extra_pid: int | None = None) -> None:
        self.config = config
        self.wrk = wrk
        self.extra_pid = extra_pid
        self.rate: dict[str, Series] = {}
        self.p99: dict[str, Series] = {}
        self.cpu: dict[str, Series] = {}
        self.extra_cpu: dict[str, Series] = {}

    def run(self, target: Target, seconds: float, name: str | None = None) -> Run:
        target.server.check_alive()
        pid = _pid(target.server)
        cpu_before, extra_before = process_tree_cpu(pid), process_tree_cpu(self.extra_pid)
        self.wrk.start_at = target.offset
        self.wrk.random = target.random
        self.wrk.seed += 1
        # _load voids a run with over 1 % failures; strict any refused token.
        result = strict(
            target.name,
            _load(self.wrk, target.name, target.url, {}, seconds, self.config, target.cycle),
        )
        target.offset += result.requests + result.failures
        cpu = process_tree_cpu(pid) - cpu_before
        extra = process_tree_cpu(self.extra_pid) - extra_before
        return Run(result, _per_request_us(cpu, result), _per_request_us(extra, result))

    def record(self, name: str, run: Run, extra_cpu: bool = False) -> str:
        if name not in self.rate:
            self.rate[name] = Series(name, "req/s")
            self.p99[name] = Series(f"{name} p99", "ms")
            self.cpu[name] = Series(f"{name} server CPU", "us/req")
            if extra_cpu:
                self.extra_cpu[name] = Series(f"{name} PostgreSQL CPU", "us/req")
        self.rate[name].add(run.result.rps)
        self.p99[name].add(run.result.p99_ms)
        self.cpu[name].add(run.cpu_us)
        if name in self.extra_cpu:
            self.extra_cpu[name].add(run.extra_cpu_us)
        return f"{name} {fmt(run.result.rps)}/s"

    def table(self, *more: Series) -> None:
        print_table(
            [
                *self.rate.values(),
                *self.p99.values(),
                *self.cpu.values(),
                *self.extra_cpu.values(),
                *more,
            ]
        )


def _per_request_us(seconds: float, result: LoadResult) -> float:
    return seconds / result.requests * 1e6 if result.requests else math.nan


def _cycle(root: Path, label: str, tokens: Sequence[str]) -> HeaderCycle:
    folder = root / f"cycle-{label}"
    folder.mkdir()
    return HeaderCycle.write(folder, SESSION_HEADER, tokens)


def first_pass(rounds: Rounds, name: str, server: Server, cycle: HeaderCycle, bare: float) -> None:
    """Every token of the working set once, in turn, before the rounds: what a deployment's
    first minutes do (each session's first request is a miss and a last-activity touch). The
    rounds then measure the steady state the goals are about; this pass's rate is printed as
    the cold figure, against the bare figure of the generic warm-up."""
    target = Target(f"{name} first pass", server, cycle, random=False)
    requests, seconds, cpu = 0, 0.0, 0.0
    while target.offset < cycle.count:
        run = rounds.run(target, 5.0)
        requests += run.result.requests
        seconds += run.result.requests / run.result.rps if run.result.rps else 0.0
        cpu += run.cpu_us * run.result.requests
    rate = requests / seconds if seconds else math.nan
    print(
        f"  {name} first pass: each of its {cycle.count:,} tokens once, in turn: "
        f"{fmt(rate)}/s ({fmt(cpu / requests if requests else math.nan)} us of server CPU "
        f"each; {rate / bare:.2f}x the bare warm-up's {fmt(bare)}/s); the rounds below start "
        "with its caches and touches in place",
        flush=True,
    )


# --- the session list ----------------------------------------------------------------------------


def _listing(name: str, url: str, admin: str, pid: int | None, store_mib: float, rows: int) -> None:
    """Time pages of GET /api/v1/sessions (limit 1000) and show the server's RSS around them."""
    pages = max(1, min(PAGES, rows // PAGE - 2))
    rss_before, _ = _memory(pid)
    times: list[float] = []
    with httpx.Client(base_url=url, headers={SESSION_HEADER: admin}, timeout=120) as client:

        def page(params: dict[str, Any]) -> tuple[float, str | None]:
            started = time.perf_counter()
            response = client.get(LIST_PATH, params=params)
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise BenchError(f"GET {LIST_PATH} answered {response.status_code}")
            cursor = response.headers.get("Tessa-Next-Page")
            if len(response.json()) != PAGE or cursor is None:
                raise BenchError(
                    f"GET {LIST_PATH} gave {len(response.json())} sessions and "
                    f"{'a' if cursor else 'no'} Tessa-Next-Page: {PAGE} and one were expected"
                )
            return elapsed * 1e3, cursor

        first, cursor = page({"limit": PAGE})
        for _ in range(pages):
            elapsed, cursor = page({"limit": PAGE, "after": cursor})
            times.append(elapsed)
        far_end, _ = page({"limit": PAGE, "descending": "true"})
    rss_after, hwm_after = _memory(pid)
    print(
        f"  {name} list: first page {fmt(first)} ms; the next {pages} through Tessa-Next-Page "
        f"median {fmt(median(times))} ms (max {fmt(max(times))}; page {pages + 1}, sessions "
        f"{pages * PAGE + 1:,}-{(pages + 1) * PAGE:,}: {fmt(times[-1])} ms); the far end "
        f"(descending=true) {fmt(far_end)} ms"
    )
    grew = rss_after - rss_before
    print(
        f"  {name} RSS around the list: {fmt(rss_before)} -> {fmt(rss_after)} MiB "
        f"({'+' if grew >= 0 else ''}{fmt(grew)} MiB; VmHWM {fmt(hwm_after)} MiB), against "
        f"{fmt(store_mib)} MiB of session rows in the store: "
        + (
            "the rows were NOT all loaded"
            if grew < max(0.1 * store_mib, 16)
            else "RSS grew by more than a tenth of the rows (and 16 MiB): CHECK"
        )
    )


# --- settings shown --------------------------------------------------------------------------


def _cache_settings() -> str:
    """Settings whose names mention a cache, a pool or connections, with their defaults; and
    the smallest cache bound the code has."""
    from pydantic import BaseModel

    from sessiond.settings import Settings

    found = []

    def walk(model: type[BaseModel], prefix: str) -> None:
        for name, info in model.model_fields.items():
            annotation = info.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                walk(annotation, f"{prefix}{name}__")
            elif any(word in name for word in ("cache", "pool", "connections")):
                value = info.default
                shown = f"{value.total_seconds():g}s" if isinstance(value, timedelta) else value
                found.append(f"SESSIOND_{(prefix + name).upper()}={shown}")

    walk(Settings, "")
    settings = ", ".join(found) if found else "none"
    kept = _caches_kept()
    return (
        f"cache and pool settings (defaults, none set here): {settings}; smallest cache bound "
        f"in the validation path: {f'{kept:,}' if kept is not None else 'not found'}"
    )


# --- the benchmark -------------------------------------------------------------------------------


@dataclass
class Figures:
    """What the summary at the end reports."""

    goals: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def ratio(self, label: str, value: float, goal: float) -> None:
        verdict = "meets" if value >= goal else "BELOW"
        self.goals.append(f"{label}: {fmt(value, 2)}x  goal >= {goal}x: {verdict}")

    def at_most(self, label: str, value: float, goal: float, unit: str) -> None:
        verdict = "meets" if value <= goal else "ABOVE"
        self.goals.append(f"{label}: {fmt(value, 2)} {unit}  goal <= {goal:g} {unit}: {verdict}")


def _store_mib_sqlite(database: Path) -> float:
    sizes = [database, database.with_name(database.name + "-wal")]
    return sum(p.stat().st_size for p in sizes if p.exists()) / MIB


def _sqlite_phase(
    config: Config, size: Size, wrk: ResumingWrk, root: Path, bare: Server, figures: Figures
) -> Rows:
    with contextlib.ExitStack() as stack:
        env = {"SESSIOND_SWEEP_INTERVAL": SWEEP_INTERVAL, **_touch_env(config)}
        big = start_sessiond(stack, root, "sqlite-big", fast_argon2=True, extra_env=env)
        small = start_sessiond(stack, root, "sqlite-small", fast_argon2=True, extra_env=env)
        big_admin = _add_owner(big)
        _add_owner(small)
        big.server.stop()
        small.server.stop()
        big_db = root / "sqlite-big-data" / "sessiond.db"
        small_db = root / "sqlite-small-data" / "sessiond.db"
        big_url, small_url = f"sqlite+aiosqlite:///{big_db}", f"sqlite+aiosqlite:///{small_db}"
        big_signer = _signer(_read_owner(big_url), root / "sqlite-big-data" / "signature-keys.json")
        small_signer = _signer(
            _read_owner(small_url), root / "sqlite-small-data" / "signature-keys.json"
        )

        now = datetime.now(UTC)
        rows = generate(big_signer, size.rows, now - OPENED_OVER, OPENED_OVER, auth=True)
        print(
            f"  {size.rows:,} sessions signed (SessionToken(...).signed, auth forms kept) in "
            f"{rows.seconds:.1f} s ({fmt(size.rows / rows.seconds)}/s, "
            f"{_processes(size.rows)} processes)",
            flush=True,
        )
        rows.check(_first_rows(rows, 3), [0, 1, 2])
        inserted = sqlite_insert(big_db, rows)
        print(
            f"  SQLite: {size.rows:,} rows written in {inserted:.1f} s "
            f"({fmt(size.rows / inserted)}/s, executemany, one transaction); bulk load "
            f"{rows.seconds + inserted:.1f} s in all",
            flush=True,
        )
        # The all-misses and the 1,000-token targets get servers of their own on copies of the
        # big store: a SQLite commit (a touch) clears every session cache on the file, and each
        # node's own caches then hold only its own working set.
        for name in ("sqlite-misses", "sqlite-few"):
            shutil.copytree(root / "sqlite-big-data", root / f"{name}-data")
        small_rows = generate(small_signer, size.small, now - OPENED_OVER, OPENED_OVER, auth=True)
        sqlite_insert(small_db, small_rows)
        # Expired rows for the sweeping runs: created eight days ago, expired a day ago.
        expired = generate(
            big_signer, size.expired, now - LIFETIME - timedelta(days=1), timedelta(hours=1), False
        )
        print(f"  {size.expired:,} expired rows signed in {expired.seconds:.1f} s", flush=True)
        big_mib = _store_mib_sqlite(big_db)
        small_mib = _store_mib_sqlite(small_db)
        rows_count = int(_sqlite_scalar(big_db, "SELECT count(*) FROM sessions"))
        on_disk = big_mib * MIB / rows_count
        print(
            f"  SQLite store: {rows_count:,} session rows, {fmt(big_mib)} MiB "
            f"({fmt(on_disk)} bytes per session, indexes included); small store "
            f"({size.small + 1:,} rows): {fmt(small_mib)} MiB",
            flush=True,
        )

        big_starts = _startups(big.server)
        small_starts = _startups(small.server)
        big_start, small_start = median(big_starts), median(small_starts)
        print(
            f"  start-up (process start until {LIVE_PATH} answers): "
            f"{_startup_text(big_starts)} with {rows_count:,} sessions, "
            f"{_startup_text(small_starts)} with {size.small + 1:,}",
            flush=True,
        )
        figures.at_most(f"SQLite start-up at {size.rows:,} rows", big_start, STARTUP_GOAL_S, "s")
        misses = start_sessiond(stack, root, "sqlite-misses", fast_argon2=True, extra_env=env)
        few = start_sessiond(stack, root, "sqlite-few", fast_argon2=True, extra_env=env)

        rng = random.Random(SEED)
        order = list(range(size.rows))
        rng.shuffle(order)
        working = [rows.tokens[i] for i in order[: size.working]]
        every = [rows.tokens[i] for i in order]
        few_tokens = working[: size.small]
        # Sessions of the big store outside every token set, for the logouts during the runs.
        idle_ids = [rows.ids[i].hex for i in order[size.working : size.working + IDLE_POOL]]
        check_tokens(big.url, working, OWNER_LOGIN)
        check_tokens(misses.url, every, OWNER_LOGIN)
        check_tokens(few.url, few_tokens, OWNER_LOGIN)
        check_tokens(small.url, small_rows.tokens, OWNER_LOGIN)
        _check("bare", bare.url + PATH, {SESSION_HEADER: working[0]})
        started = time.perf_counter()
        working_cycle = _cycle(root, "working", working)
        every_cycle = _cycle(root, "every", every)
        few_cycle = _cycle(root, "few", few_tokens)
        small_cycle = _cycle(root, "small", small_rows.tokens)
        print(f"  token lists written in {time.perf_counter() - started:.1f} s", flush=True)

        w, a, s = _count(size.working), _count(size.rows), _count(size.small)
        names = {
            "bare": f"bare ({w} tokens)",
            "working": f"sqlite-{w}",
            "every": f"sqlite-misses ({a} tokens)",
            "few": f"sqlite-{s}",
            "small": f"small-{s} ({s} rows)",
            "sweeping": f"sqlite-{w}-sweeping",
        }
        targets = {
            "bare": Target(names["bare"], bare, working_cycle),
            "working": Target(names["working"], big.server, working_cycle),
            "every": Target(names["every"], misses.server, every_cycle, random=False),
            "few": Target(names["few"], few.server, few_cycle),
            "small": Target(names["small"], small.server, small_cycle),
        }
        rounds = Rounds(config, wrk)
        warm: dict[str, Run] = {}
        for key, target in targets.items():  # warm up: imports, caches, first connections
            warm[key] = rounds.run(target, config.warmup)
        first_pass(rounds, names["working"], big.server, working_cycle, warm["bare"].result.rps)
        since = datetime.now(UTC)

        swept = Series(f"swept during {names['sweeping']}", "rows")
        held = {
            key: Series(f"write lock held during {names[key]}", "%")
            for key in ("working", "sweeping")
        }
        signing = {
            key: Series(f"a sign-in during {names[key]}", "ms") for key in ("working", "sweeping")
        }
        for round_no in range(1, config.rounds + 1):
            parts = []
            for key, target in targets.items():
                if key == "working":
                    with (
                        WriteLockProbe(big_db) as probe,
                        SignInProbe(big.url, 0.4) as signer,
                        Logouts(big_db, idle_ids, LOGOUTS_PER_SECOND) as logouts,
                    ):
                        run = rounds.run(target, config.duration)
                    held[key].add(100 * probe.share)
                    signing[key].add(signer.seconds * 1e3)
                    parts.append(
                        rounds.record(target.name, run)
                        + f" (write lock held {fmt(100 * probe.share, 0)} %, {signer.note()}, "
                        f"{logouts.removed} other sessions removed)"
                    )
                else:
                    parts.append(rounds.record(target.name, rounds.run(target, config.duration)))
            rows_swept, share, signed_in = _sweeping_run(
                config, rounds, targets["working"], names["sweeping"], big_db, expired, parts
            )
            swept.add(rows_swept)
            held["sweeping"].add(100 * share)
            signing["sweeping"].add(signed_in * 1e3)
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
        rounds.table(swept, *held.values(), *signing.values())

        rate = rounds.rate
        bare_s = rate[names["bare"]]
        a_ratio = print_ratio(f"{names['working']} / bare", rate[names["working"]], bare_s, 0.5)
        b_ratio = print_ratio(f"{names['every']} / bare", rate[names["every"]], bare_s, 0.3)
        d1 = print_ratio(
            f"{names['few']} / {names['small']}", rate[names["few"]], rate[names["small"]], 0.9
        )
        d2 = print_ratio(f"{names['few']} / bare", rate[names["few"]], bare_s, 0.9)
        print_ratio(f"{names['small']} / bare", rate[names["small"]], bare_s)
        e = print_ratio(
            f"{names['sweeping']} / {names['working']}",
            rate[names["sweeping"]],
            rate[names["working"]],
            0.7,
        )
        figures.ratio(f"(a) {names['working']} over {a} rows / bare", a_ratio, 0.5)
        figures.ratio(f"(b) {names['every']} / bare", b_ratio, 0.3)
        figures.ratio(f"(d) {names['few']} over {a} rows / {names['small']}", d1, 0.9)
        figures.ratio(f"(d) {names['few']} over {a} rows / bare", d2, 0.9)
        figures.ratio(f"(e) {names['sweeping']} / {names['working']}", e, 0.7)
        touched = _sqlite_scalar(
            big_db,
            "SELECT count(*) FROM sessions WHERE last_activity >= ?",
            _sqlite_time(since),
        )
        print(
            f"  ({names['every']} takes the tokens in turn, every run resuming where the last "
            "one stopped; the other targets draw each request's token at random from their "
            f"set; the bare target gets the {w} set; {names['working']} and its sweeping runs "
            f"are one server, {names['every']} and {names['few']} servers of their own on "
            "copies of its store; all run with "
            f"SESSIOND_SWEEP_INTERVAL={SWEEP_INTERVAL} and the touch_interval above: "
            f"{touched:,} sessions of the big store had a last-activity touch written during "
            "the rounds, each touch batch a commit; the sweeping run starts once the sweeper "
            f"has removed its first rows of {size.expired:,} inserted just before, expired a "
            "day ago; after the run the bench deletes what is left, so that the next round "
            "starts without a sweep; write lock held: the share of tries, every 0.1 s from "
            "the bench, to take SQLite's write lock without waiting that found it taken; a "
            f"sign-in: one POST /api/v1/sessions/open of {OWNER_LOGIN} (the fast Argon2 "
            f"settings) 0.4 s into the run; other sessions removed: {LOGOUTS_PER_SECOND:g} a "
            "second, sessions outside every token set removed by plain SQL, as logouts and "
            "closes elsewhere would be)"
        )
        _idle_sweep(big_db, expired, 30.0 if size.rows >= 1_000_000 else 10.0)
        for server in (big, misses, few, small):
            _log_problems(server.server)
        big_rss = _memory_line(f"sqlite-big ({a} rows, {w} working set)", _pid(big.server))
        _memory_line(f"sqlite-misses ({a} rows, {a} tokens in turn)", _pid(misses.server))
        few_rss = _memory_line(f"sqlite-few ({a} rows, {s} working set)", _pid(few.server))
        small_rss = _memory_line(f"sqlite-small ({s} rows, {s} working set)", _pid(small.server))
        figures.at_most(
            f"SQLite RSS at {size.rows:,} rows after the {w} load", big_rss, RSS_GOAL_MIB, "MiB"
        )
        per_row = (few_rss - small_rss) * MIB / (size.rows - size.small)
        per_working = (big_rss - few_rss) * MIB / (size.working - size.small)
        print(
            f"  memory per session in the store: (sqlite-few {fmt(few_rss)} - sqlite-small "
            f"{fmt(small_rss)}) MiB / ({size.rows:,} - {size.small:,}) = {fmt(per_row)} bytes "
            f"of RSS (on disk: {fmt(on_disk)} bytes); per session of the working set: "
            f"(sqlite-big {fmt(big_rss)} - sqlite-few {fmt(few_rss)}) MiB / "
            f"({size.working:,} - {size.small:,}) = {fmt(per_working)} bytes"
        )
        figures.notes.append(
            f"SQLite: start-up {big_start:.2f} s at {size.rows:,} rows and {small_start:.2f} s at "
            f"{size.small:,}; RSS {fmt(big_rss)} MiB ({w} working set), {fmt(few_rss)} MiB "
            f"({s} over {a} rows), {fmt(small_rss)} MiB ({s} over {s} rows); {fmt(per_row)} "
            f"bytes of RSS per stored session, {fmt(per_working)} per session of the working "
            f"set; {fmt(on_disk)} bytes on disk per session"
        )
        _listing(
            "sqlite-big", big.url, big_admin, _pid(big.server), on_disk * size.rows / MIB, size.rows
        )
    return rows


def _processes(count: int) -> int:
    return max(1, min(len(os.sched_getaffinity(0)), math.ceil(count / CHUNK)))


def _first_rows(rows: Rows, count: int) -> list[tuple[Any, ...]]:
    out = []
    for row in rows.native():
        out.append(row)
        if len(out) == count:
            break
    return out


def _sweep_begun(database: Path, expired: Rows) -> int:
    """Insert the expired rows and wait until the sweeper has removed some; how many are left."""
    sqlite_insert(database, expired, checkpoint=False)
    deadline = time.monotonic() + SWEEP_START_WAIT
    while (left := _expired_count(database)) >= len(expired):
        if time.monotonic() > deadline:
            raise BenchError(f"the sweeper did not begin within {SWEEP_START_WAIT:.0f}s")
        time.sleep(0.05)
    return left


def _sweep_cleared(database: Path) -> None:
    """Delete the expired rows the sweeper has left, then give its batch in progress time to
    end (it finds the rows gone), so that no sweep runs on. As sessiond's sweeper does, the
    removal of sessions past their lifetime is taken back from the file's count of removed
    sessions (migration 0006) in the same transaction: the servers' validation caches need
    not hear of it, and the next round starts with them as the sweeper would leave them."""
    conn = sqlite3.connect(database, isolation_level=None, timeout=SWEEP_END_WAIT)
    try:
        conn.execute(f"PRAGMA busy_timeout={int(SWEEP_END_WAIT * 1000)}")
        counted = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'session_removals'"
        ).fetchone()
        now = _sqlite_time(datetime.now(UTC))
        conn.execute("BEGIN IMMEDIATE")
        if counted:  # per bucket (the id's first two hex digits), before the rows go
            conn.execute(
                "UPDATE session_removals SET removed = removed - (SELECT count(*) FROM "
                "sessions WHERE expires <= ? AND substr(id, 1, 2) = bucket)",
                (now,),
            )
        conn.execute("DELETE FROM sessions WHERE expires <= ?", (now,))
        conn.execute("COMMIT")
    finally:
        conn.close()
    time.sleep(2 * float(SWEEP_INTERVAL))


class WriteLockProbe:
    """While in use, tries every ``interval`` seconds to take SQLite's write lock on
    ``database`` without waiting (``BEGIN IMMEDIATE``, then ``ROLLBACK``), from a thread:
    the share of tries that found it held says how much of the time some writer holds it."""

    def __init__(self, database: Path, interval: float = 0.1) -> None:
        self.database = database
        self.interval = interval
        self.tries = 0
        self.held = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._probe, daemon=True)

    def _probe(self) -> None:
        conn = sqlite3.connect(self.database, isolation_level=None, timeout=0)
        try:
            while not self._stop.wait(self.interval):
                self.tries += 1
                try:
                    conn.execute("BEGIN IMMEDIATE")
                except sqlite3.OperationalError:
                    self.held += 1
                else:
                    conn.execute("ROLLBACK")
        finally:
            conn.close()

    @property
    def share(self) -> float:
        return self.held / self.tries if self.tries else math.nan

    def __enter__(self) -> WriteLockProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class Logouts:
    """While in use, removes one session every ``1 / rate`` seconds from ``database`` (plain
    SQL, one transaction each, as a close from the command line or another process would),
    taking them from ``sessions`` (hex ids, none of the load's): the revocations a deployment
    has going on while its sessions are validated."""

    def __init__(self, database: Path, sessions: list[str], rate: float) -> None:
        self.database = database
        self.sessions = sessions
        self.interval = 1.0 / rate
        self.removed = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._remove, daemon=True)

    def _remove(self) -> None:
        conn = sqlite3.connect(self.database, isolation_level=None, timeout=10)
        try:
            while self.sessions and not self._stop.wait(self.interval):
                conn.execute("DELETE FROM sessions WHERE id = ?", (self.sessions.pop(),))
                self.removed += 1
        finally:
            conn.close()

    def __enter__(self) -> Logouts:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


class SignInProbe:
    """One sign-in over HTTP, started ``delay`` seconds into the block, from a thread: how long
    a sign-in waits while the block's load (and a sweep) runs."""

    def __init__(self, url: str, delay: float) -> None:
        self.url = url
        self.delay = delay
        self.seconds = math.nan
        self.status = 0
        self._thread = threading.Thread(target=self._sign_in, daemon=True)

    def _sign_in(self) -> None:
        time.sleep(self.delay)
        started = time.perf_counter()
        try:
            response = httpx.post(
                self.url + "/api/v1/sessions/open",
                json={"Login": OWNER_LOGIN, "Password": OWNER_PASSWORD},
                timeout=60,
            )
            self.status = response.status_code
        except httpx.HTTPError:
            self.status = -1
        self.seconds = time.perf_counter() - started

    def note(self) -> str:
        outcome = "" if self.status == 200 else f", answered {self.status}"
        return f"a sign-in in it took {fmt(self.seconds * 1e3, 0)} ms{outcome}"

    def __enter__(self) -> SignInProbe:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._thread.join(timeout=90)


def _sweeping_run(
    config: Config,
    rounds: Rounds,
    target: Target,
    name: str,
    database: Path,
    expired: Rows,
    parts: list[str],
) -> tuple[int, float, float]:
    """Insert the expired rows, wait for the sweeper to begin on them, run ``target``'s load
    as ``name``; then clear what is left. Returns the rows swept during the run, the share of
    the run SQLite's write lock was found held, and how long a sign-in during it took."""
    left = _sweep_begun(database, expired)
    with WriteLockProbe(database) as probe, SignInProbe(target.server.url, 0.4) as signer:
        run = rounds.run(target, config.duration)
    after = _expired_count(database)
    swept = left - after
    note = (
        f"{swept:,} swept during it, {left:,} -> {after:,} expired rows, write lock held "
        f"{fmt(100 * probe.share, 0)} %, {signer.note()}"
        + ("" if after else "; the sweep ENDED within the run")
    )
    parts.append(rounds.record(name, run) + f" ({note})")
    _sweep_cleared(database)
    return swept, probe.share, signer.seconds


def _idle_sweep(database: Path, expired: Rows, seconds: float) -> None:
    """How fast the sweeper removes expired rows with no load: ``seconds`` of it."""
    left = _sweep_begun(database, expired)
    started = time.monotonic()
    time.sleep(seconds)
    after = _expired_count(database)
    elapsed = time.monotonic() - started
    rate = (left - after) / elapsed
    print(
        f"  the sweeper with no load: {left - after:,} rows removed in {elapsed:.0f} s "
        f"({fmt(rate)}/s; {len(expired):,} rows would take about "
        f"{fmt(len(expired) / rate if rate else math.inf)} s)",
        flush=True,
    )
    _sweep_cleared(database)


def _log_problems(server: Server) -> None:
    """Warnings and errors in the server's log, counted, with the first of them."""
    try:
        lines = server.log_path.read_text(errors="replace").splitlines()
    except OSError:
        return
    bad = [line for line in lines if "WARNING" in line or "ERROR" in line or "Traceback" in line]
    print(
        f"  {server.name} log: {len(bad)} warning or error lines"
        + (f"; the first: {bad[0][:300]}" if bad else "")
    )


def _postgres_phase(
    config: Config,
    size: Size,
    wrk: ResumingWrk,
    root: Path,
    bare: Server,
    rows: Rows,
    figures: Figures,
) -> None:
    from .pg import _postmaster_pid, _start_postgres

    with contextlib.ExitStack() as stack:
        cluster = _start_postgres(stack)
        try:
            url = cluster.new_database()
        except RuntimeError as exc:
            raise BenchError(f"could not create a PostgreSQL database: {exc}") from exc
        keys = root / "sqlite-big-data" / "signature-keys.json"
        node = start_sessiond(
            stack,
            root,
            "pg-big",
            fast_argon2=True,
            database_url=url,
            extra_env={"SESSIOND_SIGNATURE_KEYS_FILE": str(keys), **_touch_env(config)},
        )
        admin = sign_in(node.url, "admin", node.admin_password)
        node.server.stop()
        owner = _read_owner(f"sqlite+aiosqlite:///{root / 'sqlite-big-data' / 'sessiond.db'}")
        _write_owner(url, owner)
        copied = postgres_copy(url, rows)
        count = int(_postgres_scalar(url, "SELECT count(*) FROM sessions"))
        table_mib = _postgres_scalar(url, "SELECT pg_total_relation_size('sessions')") / MIB
        settings = _postgres_scalar(
            url,
            "SELECT string_agg(name || '=' || setting || coalesce(unit, ''), ', ' ORDER BY name) "
            "FROM pg_settings WHERE name IN ('shared_buffers', 'max_connections', 'fsync', "
            "'synchronous_commit', 'server_version')",
        )
        print(
            f"  PostgreSQL ({settings}): {count:,} rows copied in {copied:.1f} s "
            f"({fmt(count / copied)}/s, COPY via copy_records_to_table, then ANALYZE); the "
            f"sessions table with its indexes {fmt(table_mib)} MiB "
            f"({fmt(table_mib * MIB / count)} bytes per session)",
            flush=True,
        )
        startups = _startups(node.server)
        startup = median(startups)
        print(
            f"  start-up on PostgreSQL with {count:,} sessions: {_startup_text(startups)}",
            flush=True,
        )
        figures.at_most(f"PostgreSQL start-up at {size.rows:,} rows", startup, STARTUP_GOAL_S, "s")

        rng = random.Random(SEED)
        order = list(range(size.rows))
        rng.shuffle(order)
        working = [rows.tokens[i] for i in order[: size.working]]
        few = working[: size.small]
        for tokens in (working, few):
            check_tokens(node.url, tokens, OWNER_LOGIN)
        working_cycle = _cycle(root, "pg-working", working)
        few_cycle = _cycle(root, "pg-few", few)
        w, a, s = _count(size.working), _count(size.rows), _count(size.small)
        targets = [
            Target(f"bare ({w} tokens)", bare, working_cycle),
            Target(f"pg-{w}", node.server, working_cycle),
            Target(f"pg-{s}", node.server, few_cycle),
        ]
        rounds = Rounds(config, wrk, extra_pid=_postmaster_pid(cluster))
        warm = [rounds.run(target, config.warmup) for target in targets]
        first_pass(rounds, f"pg-{w}", node.server, working_cycle, warm[0].result.rps)
        for round_no in range(1, config.rounds + 1):
            parts = []
            for target in targets:
                run = rounds.run(target, config.duration)
                parts.append(rounds.record(target.name, run, extra_cpu=target.server is not bare))
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
        rounds.table()
        rate = rounds.rate
        bare_s = rate[targets[0].name]
        c = print_ratio(f"pg-{w} / bare", rate[f"pg-{w}"], bare_s, 0.3)
        print_ratio(f"pg-{s} / bare", rate[f"pg-{s}"], bare_s)
        print_ratio(f"pg-{w} / pg-{s}", rate[f"pg-{w}"], rate[f"pg-{s}"])
        figures.ratio(f"(c) pg-{w} over {a} rows on PostgreSQL / bare", c, 0.3)
        print(
            "  (one node; the cluster runs on the same two cores as the node and wrk; "
            "PostgreSQL CPU is the postmaster's and its backends' per answered request)"
        )
        rss = _memory_line(f"pg-big ({a} rows, after the load)", _pid(node.server))
        figures.notes.append(
            f"PostgreSQL: start-up {startup:.2f} s at {size.rows:,} rows; RSS {fmt(rss)} MiB; "
            f"{fmt(table_mib * MIB / count)} bytes per session in the table and its indexes"
        )
        _listing("pg-big", node.url, admin, _pid(node.server), table_mib, size.rows)


def run_scale(config: Config, load: LoadGenerator) -> None:
    size = Size.of(config)
    heading(
        "scale",
        f"GET {PATH} with {size.rows:,} sessions in the store: {size.working:,} and "
        f"{size.small:,} tokens drawn at random, {size.rows:,} in turn; memory, start-up, lists",
    )
    if not isinstance(load, Wrk):
        raise BenchError("scale needs wrk (Debian package wrk): the httpx fallback is too slow")
    print(f"  {_cache_settings()}")
    touch = " ".join(f"{k}={v}" for k, v in _touch_env(config).items())
    print(
        f"  settings of the sessiond servers: SESSIOND_SWEEP_INTERVAL={SWEEP_INTERVAL} (SQLite)"
        + (f"; {touch} (all)" if touch else "; touch_interval their default")
    )
    started = time.monotonic()
    figures = Figures()
    wrk = ResumingWrk(load.path)
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        bare = start_app(stack, root, "bare")
        rows = _sqlite_phase(config, size, wrk, root, bare, figures)
        print(f"  SQLite part done at {time.monotonic() - started:.0f} s", flush=True)
        _postgres_phase(config, size, wrk, root, bare, rows, figures)
    print("  goals:")
    for line in figures.goals:
        print(f"    {line}")
    for line in figures.notes:
        print(f"  {line}")
