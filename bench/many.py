"""Validation throughput with many sessions: ``GET /api/v1/sessions/current`` on a real server,
each request carrying the next of N session tokens (round-robin), against the bare baseline.

``validate``'s one token keeps every cache of the validation path hot: the verified token
text, the session row (kept until SQLite's ``data_version`` moves, i.e. until any other
connection commits anything) and the rendered answer. Here N sessions take turns, and in the
with-writes targets a sign-in loop runs beside the load, so that the session cache is cleared
by every sign-in it commits. A last-activity touch is a commit too: with the default
touch interval (60 s) each session is touched once a minute while it is used, and the bench
counts those touches.

Rounds alternate bare, sessiond-many, sessiond-many-with-writes and a diagnostic,
sessiond-one-with-writes (the first token on every request, beside the same sign-in loop: what
the sign-ins cost without the cache misses). The first three get the same wrk Lua script cycling
through the same N tokens (the bare app ignores them).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import httpx

from .common import (
    BenchError,
    Config,
    Series,
    Sessiond,
    fmt,
    heading,
    print_ratio,
    print_table,
    sign_in,
    start_app,
    start_sessiond,
)
from .load import HeaderCycle, LoadGenerator, LoadResult
from .validate import PATH, SESSION_HEADER, Signer, _check, _load

LOGIN_PREFIX = "many"
PASSWORD = "bench password 1"
MAKERS = 8  # concurrent user creations and sign-ins while setting up
CHECKED = 8  # tokens validated one by one with httpx before the load


def _caches_kept() -> int | None:
    """How many sessions the validation cache keeps (the validation_cache_entries setting)."""
    from sessiond.settings import Settings

    field = Settings.model_fields.get("validation_cache_entries")
    return field.default if field is not None and isinstance(field.default, int) else None


async def open_sessions(url: str, admin_token: str, count: int, limit_s: float) -> list[str]:
    """Add ``count`` users through the API and sign each in once; their tokens, in order."""
    tokens: list[str | None] = [None] * count
    next_index = 0
    limits = httpx.Limits(max_connections=MAKERS)
    async with httpx.AsyncClient(
        base_url=url, headers={SESSION_HEADER: admin_token}, timeout=60, limits=limits
    ) as client:

        async def post(path: str, body: dict[str, str], expected: int) -> httpx.Response:
            response = await client.post(path, json=body)
            if response.status_code != expected:
                raise BenchError(f"POST {path} answered {response.status_code}: {response.text}")
            return response

        async def worker() -> None:
            nonlocal next_index
            while next_index < count:
                index = next_index
                next_index += 1
                credentials = {"Login": f"{LOGIN_PREFIX}{index}", "Password": PASSWORD}
                await post("/api/v1/users", credentials, 201)
                opened = await post("/api/v1/sessions/open", credentials, 200)
                token = opened.json().get("AuthToken")
                if not isinstance(token, str):
                    raise BenchError("a sign-in gave no AuthToken")
                tokens[index] = token

        try:
            async with asyncio.timeout(limit_s):
                await asyncio.gather(*(worker() for _ in range(MAKERS)))
        except TimeoutError:
            raise BenchError(f"{count} sessions were not made within {limit_s:.0f}s") from None
    made = [t for t in tokens if t is not None]
    if len(made) != count or len(set(made)) != count:
        raise BenchError(f"made {len(set(made))} distinct tokens for {count} sessions")
    return made


def check_tokens(url: str, tokens: list[str]) -> None:
    """A handful of the tokens, spread over the list, each answered with its own session."""
    last = len(tokens) - 1
    indexes = sorted({round(i * last / (CHECKED - 1)) for i in range(CHECKED)})
    with httpx.Client(timeout=10) as client:
        for index in indexes:
            response = client.get(url, headers={SESSION_HEADER: tokens[index]})
            login = response.json().get("UserLogin") if response.status_code == 200 else None
            if login != f"{LOGIN_PREFIX}{index}":
                raise BenchError(
                    f"token {index} answered {response.status_code} for {login!r}: "
                    f"{response.text[:200]}"
                )


def sqlite_last_activity(database: Path) -> dict[object, object]:
    """Every session's last activity, read from the server's SQLite file (read-only)."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=10)
    try:
        return dict(conn.execute("SELECT id, last_activity FROM sessions").fetchall())
    finally:
        conn.close()


class Touches:
    """Counts last-activity writes (touches) between two reads of the sessions table;
    ``read`` gives every session's last activity by id."""

    def __init__(self, read: Callable[[], Mapping[object, object]]) -> None:
        self.read = read
        self.seen = read()
        self.total = 0

    def since_last(self) -> int:
        now = self.read()
        moved = sum(1 for key, value in now.items() if key in self.seen and self.seen[key] != value)
        self.seen = now
        self.total += moved
        return moved


def strict(name: str, result: LoadResult) -> LoadResult:
    if result.rejected:
        raise BenchError(
            f"{name}: {result.rejected} of {result.requests + result.failures} answers were "
            "not 2xx: a token in the cycle was refused"
        )
    return result


@dataclass(frozen=True)
class _Target:
    name: str
    url: str
    cycle: bool  # the N tokens in turn, or the first token on every request
    writes: bool  # a sign-in loop beside the load


def prepare_sessions(
    config: Config, root: Path, bare_url: str, sessiond: Sessiond
) -> tuple[str, list[str], HeaderCycle]:
    """Sign in ``config.sessions`` users on ``sessiond``, check their tokens, and write the
    wrk script that cycles through them; returns the validation URL, tokens and cycle."""
    count = config.sessions
    url = sessiond.url + PATH
    admin = sign_in(sessiond.url, "admin", sessiond.admin_password)
    started = time.perf_counter()
    tokens = asyncio.run(
        open_sessions(sessiond.url, admin, count, limit_s=config.round_timeout + 0.1 * count)
    )
    print(
        f"  {count:,} users added and signed in over HTTP in {time.perf_counter() - started:.1f} s",
        flush=True,
    )
    check_tokens(url, tokens)
    _check("bare", bare_url, {SESSION_HEADER: tokens[0]})
    return url, tokens, HeaderCycle.write(root, SESSION_HEADER, tokens)


def _rounds(
    config: Config, load: LoadGenerator, root: Path, bare_url: str, sessiond: Sessiond
) -> None:
    count = config.sessions
    url, tokens, cycle = prepare_sessions(config, root, bare_url, sessiond)
    database = root / "sessiond-data" / "sessiond.db"
    touches = Touches(lambda: sqlite_last_activity(database))
    targets = [
        _Target("bare", bare_url, cycle=True, writes=False),
        _Target("sessiond-many", url, cycle=True, writes=False),
        _Target("sessiond-many-with-writes", url, cycle=True, writes=True),
        # Diagnostic: the same sign-in loop while one token is validated over and over, so
        # that each commit costs one cache miss: what the sign-ins themselves take away.
        _Target("sessiond-one-with-writes", url, cycle=False, writes=True),
    ]

    def measure(target: _Target, seconds: float) -> tuple[LoadResult, int, float]:
        """One load run; with the sign-ins completed during it and their rate."""
        sessiond.server.check_alive()
        headers = {} if target.cycle else {SESSION_HEADER: tokens[0]}
        used = cycle if target.cycle else None
        if not target.writes:
            # _load voids a run with over 1 % failures; strict any refused token.
            return (
                strict(
                    target.name,
                    _load(load, target.name, target.url, headers, seconds, config, used),
                ),
                0,
                0.0,
            )
        signer = Signer(
            sessiond.url,
            sessiond.admin_password,
            config.writers,
            max_seconds=seconds + config.round_timeout,
        )
        with signer:
            since = time.perf_counter()
            time.sleep(0.3)  # sign-ins are under way before the load starts
            result = strict(
                target.name, _load(load, target.name, target.url, headers, seconds, config, used)
            )
            done = len(signer.durations)
            elapsed = time.perf_counter() - since
        if signer.errors:
            raise BenchError(f"sign-ins failed during the round: {signer.errors[:3]}")
        return result, done, done / elapsed

    for target in targets:  # warm up: imports, caches, first connections
        measure(target, config.warmup)
    touches.since_last()
    touches.total = 0

    series = {t.name: Series(t.name, "req/s") for t in targets}
    latency = {t.name: Series(f"{t.name} p99", "ms") for t in targets}
    signins = {t.name: Series(f"sign-ins during {t.name}", "/s") for t in targets if t.writes}
    touched = {t.name: Series(f"touches during {t.name}", "count") for t in targets[1:]}
    for round_no in range(1, config.rounds + 1):
        parts = []
        for target in targets:
            result, done, rate = measure(target, config.duration)
            series[target.name].add(result.rps)
            latency[target.name].add(result.p99_ms)
            notes = []
            if target.writes:
                signins[target.name].add(rate)
                notes.append(f"{done} sign-ins, {fmt(rate)}/s")
            if target.name in touched:
                touched[target.name].add(touches.since_last())
                notes.append(f"{touched[target.name].values[-1]:.0f} touches")
            parts.append(
                f"{target.name} {fmt(result.rps)}/s" + (f" ({'; '.join(notes)})" if notes else "")
            )
        print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
    print_table([*series.values(), *latency.values(), *signins.values(), *touched.values()])
    trusted = load.name == "wrk"
    if not trusted:
        print(
            "  NOTE: the httpx load generator saturates before these servers do; the "
            "figures are bounded by the client and the ratios say little (install wrk)"
        )
    bare, many = series["bare"], series["sessiond-many"]
    writes, one = series["sessiond-many-with-writes"], series["sessiond-one-with-writes"]
    print_ratio("sessiond-many / bare", many, bare, 0.5, trusted)
    print_ratio("sessiond-many-with-writes / bare", writes, bare, 0.5, trusted)
    print_ratio("sessiond-many-with-writes / sessiond-many", writes, many)
    print_ratio("sessiond-one-with-writes / bare", one, bare)
    print(
        f"  ({count:,} sessions, one token per request in turn; sign-ins and touches are "
        "commits, and each commit clears the server's session cache; sessiond-one-with-writes "
        "validates one token beside the same sign-ins: what they cost without the misses; "
        f"{touches.total:,} touches in all rounds)"
    )
    kept = _caches_kept()
    if kept is not None and count > kept:
        print(
            f"  (more sessions than the validation cache keeps ({kept:,}): the least recently "
            "used are read afresh)"
        )


def run_validate_many(config: Config, load: LoadGenerator) -> None:
    heading(
        "validate-many",
        f"GET {PATH} cycling through {config.sessions:,} session tokens, requests/s, one "
        f"uvicorn worker each; with-writes: {config.writers} sign-in loop(s) beside the load",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        bare = start_app(stack, root, "bare")
        sessiond = start_sessiond(stack, root, "sessiond", fast_argon2=True)
        _rounds(config, load, root, bare.url + PATH, sessiond)
