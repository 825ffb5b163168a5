"""Figures for planning a deployment (docs/sizing.md): sign-in cost per Argon2 preset, and the
PostgreSQL connections one node opens under a burst of sign-ins.

``argon2-presets``: for each of three Argon2id costs — argon2-cffi's default (time_cost 3,
64 MiB, parallelism 4), OWASP's (t=2, 19 MiB, p=1) and Keycloak's (t=5, 7 MiB, p=1) — the
hash alone (``PasswordHasher.verify`` in threads through ``asyncio.to_thread``, as ``open``
measures it) and full sign-ins over HTTP (``POST /api/v1/sessions/open`` on a ``sessiond serve``
whose ``SESSIOND_ARGON2__*`` select that cost), each for a fixed time with 2 x the usable cores
concurrent, so that every core is busy. Rounds rotate the presets. Per core: the rate divided by
the usable cores.

``pg-connections``: a node on a throwaway PostgreSQL cluster (as ``validate-pg``), 200 users
added through the API, then 200 sign-ins at once (one per user); a separate connection samples
``pg_stat_activity`` every 20 ms during the burst and reports the most connections the node had
open (by state). Once with the fast Argon2 settings (the database work is then the bottleneck,
so this is the pools' worst case) and once with the default cost.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
from argon2 import PasswordHasher, Type

from .common import (
    BenchError,
    Config,
    Series,
    Sessiond,
    fmt,
    heading,
    median,
    print_table,
    sign_in,
    start_sessiond,
)
from .scale import _memory

PASSWORD = "bench password 1"
BURST = 200  # concurrent sign-ins in pg-connections
MAKERS = 8  # concurrent user creations while setting up
SAMPLE_EVERY = 0.02  # seconds between pg_stat_activity samples


@dataclass(frozen=True)
class Preset:
    name: str
    time_cost: int
    memory_cost: int  # KiB
    parallelism: int

    def describe(self) -> str:
        return (
            f"t={self.time_cost}, m={self.memory_cost // 1024} MiB "
            f"({self.memory_cost} KiB), p={self.parallelism}"
        )

    def env(self) -> dict[str, str]:
        """The server's settings for this cost: the named preset where the settings have
        presets of these names, and the three numbers in any case."""
        numbers = {
            "SESSIOND_ARGON2__TIME_COST": str(self.time_cost),
            "SESSIOND_ARGON2__MEMORY_COST": str(self.memory_cost),
            "SESSIOND_ARGON2__PARALLELISM": str(self.parallelism),
        }
        named = _settings_presets()
        if named.get(self.name) == (self.time_cost, self.memory_cost, self.parallelism):
            return {"SESSIOND_ARGON2__PRESET": self.name, **numbers}
        return numbers


PRESETS = (
    Preset("argon2-cffi-default", 3, 65536, 4),
    Preset("owasp", 2, 19456, 1),
    Preset("keycloak", 5, 7168, 1),
)


def _settings_presets() -> dict[str, tuple[int, int, int]]:
    """Named presets of sessiond's settings, if it has them (name -> t, m, p)."""
    try:
        from sessiond import settings
    except ImportError:  # pragma: no cover - the bench runs beside sessiond
        return {}
    found = getattr(settings, "ARGON2_PRESETS", None)
    return dict(found) if isinstance(found, dict) else {}


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


async def _for_a_while(
    seconds: float, concurrency: int, one: Callable[[int], Awaitable[None]], limit: int = 100_000
) -> tuple[int, float]:
    """``one(worker)`` in a loop from ``concurrency`` tasks until ``seconds`` have passed (the
    calls under way then finish); the completions and the time until the last ended."""
    done = 0
    deadline = time.perf_counter() + seconds

    async def worker(index: int) -> None:
        nonlocal done
        while time.perf_counter() < deadline and done < limit:
            await one(index)
            done += 1

    started = time.perf_counter()
    try:
        async with asyncio.timeout(seconds + 120):
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
    except TimeoutError:
        raise BenchError(f"a batch did not finish within {seconds + 120:.0f}s") from None
    return done, time.perf_counter() - started


async def _add_users(url: str, admin: str, logins: list[str]) -> None:
    limits = httpx.Limits(max_connections=MAKERS)
    async with httpx.AsyncClient(
        base_url=url, headers={"Tessa-Session": admin}, timeout=120, limits=limits
    ) as client:
        queue = list(logins)

        async def worker() -> None:
            while queue:
                login = queue.pop()
                response = await client.post(
                    "/api/v1/users", json={"Login": login, "Password": PASSWORD}
                )
                if response.status_code != 201:
                    raise BenchError(f"adding {login} answered {response.status_code}")

        async with asyncio.timeout(600):
            await asyncio.gather(*(worker() for _ in range(MAKERS)))


# --- argon2-presets ---------------------------------------------------------------------------


async def _preset_rounds(config: Config, servers: dict[str, Sessiond], seconds: float) -> None:
    cores = _cores()
    concurrency = 2 * cores
    logins = [f"signer{i}" for i in range(concurrency)]
    hashers = {
        p.name: PasswordHasher(
            time_cost=p.time_cost,
            memory_cost=p.memory_cost,
            parallelism=p.parallelism,
            type=Type.ID,
        )
        for p in PRESETS
    }
    hashes = {name: hasher.hash(PASSWORD) for name, hasher in hashers.items()}
    for preset in PRESETS:
        server = servers[preset.name]
        admin = sign_in(server.url, "admin", server.admin_password, timeout=120)
        await _add_users(server.url, admin, logins)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        def hash_only(name: str) -> Callable[[int], Awaitable[None]]:
            async def one(_worker: int) -> None:
                await asyncio.to_thread(hashers[name].verify, hashes[name], PASSWORD)

            return one

        def over_http(name: str) -> Callable[[int], Awaitable[None]]:
            url = servers[name].url + "/api/v1/sessions/open"

            async def one(worker: int) -> None:
                response = await client.post(
                    url, json={"Login": logins[worker], "Password": PASSWORD}
                )
                if response.status_code != 200:
                    raise BenchError(f"a sign-in ({name}) answered {response.status_code}")

            return one

        kinds = {
            f"{p.name} {kind}": (hash_only(p.name) if kind == "hash" else over_http(p.name))
            for p in PRESETS
            for kind in ("hash", "HTTP")
        }
        for one in kinds.values():  # warm up: threads, connections, pools
            await _for_a_while(min(1.0, seconds), concurrency, one)
        series = {name: Series(name, "/s") for name in kinds}
        for round_no in range(1, config.rounds + 1):
            names = list(kinds)
            shift = 2 * ((round_no - 1) % len(PRESETS))
            parts = []
            for name in names[shift:] + names[:shift]:
                done, elapsed = await _for_a_while(seconds, concurrency, kinds[name])
                series[name].add(done / elapsed)
                parts.append(f"{name} {fmt(done / elapsed, 1)}/s")
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
    print_table(list(series.values()), digits=1)
    print(f"  per core ({cores} usable cores, {concurrency} at once), medians:")
    for preset in PRESETS:
        hashed = series[f"{preset.name} hash"].median
        signed = series[f"{preset.name} HTTP"].median
        print(
            f"    {preset.name} ({preset.describe()}): hash {fmt(hashed / cores, 1)}/s per core "
            f"({fmt(1e3 * cores / hashed, 1)} ms of a core each); sign-ins over HTTP "
            f"{fmt(signed / cores, 1)}/s per core ({fmt(1e3 * cores / signed, 1)} ms of a core "
            f"each; HTTP / hash {fmt(signed / hashed, 2)}x)"
        )


def run_argon2_presets(config: Config) -> None:
    cores = _cores()
    heading(
        "argon2-presets",
        f"sign-ins per second per Argon2id cost: the hash alone (PasswordHasher.verify in "
        f"threads) and POST /api/v1/sessions/open, {2 * cores} at once on {cores} cores",
    )
    named = _settings_presets()
    print(
        "  sessiond's named presets: "
        + (", ".join(f"{k} {v}" for k, v in named.items()) if named else "none in settings")
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        servers = {}
        for preset in PRESETS:
            env = preset.env()
            print(
                f"  {preset.name}: {preset.describe()}; server settings "
                + " ".join(f"{k}={v}" for k, v in env.items())
            )
            servers[preset.name] = start_sessiond(
                stack, root, f"sessiond-{preset.name}", fast_argon2=False, extra_env=env
            )
        seconds = max(1.0, min(config.duration, 4.0))
        asyncio.run(_preset_rounds(config, servers, seconds))


# --- pg-connections ---------------------------------------------------------------------------


class ActivitySampler:
    """Samples ``pg_stat_activity`` for one database from its own connection, in a thread."""

    def __init__(self, dsn: str, database: str) -> None:
        self.dsn = dsn
        self.database = database
        self.peak = 0
        self.peak_by_state: dict[str, int] = {}
        self.samples = 0
        self.error: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            asyncio.run(self._sample())
        except Exception as exc:  # reported by the benchmark
            self.error = repr(exc)

    async def _sample(self) -> None:
        import asyncpg

        conn = await asyncpg.connect(self.dsn)
        try:
            while not self._stop.is_set():
                rows = await conn.fetch(
                    "SELECT coalesce(state, '?') AS state, count(*) AS n FROM pg_stat_activity "
                    "WHERE datname = $1 AND pid <> pg_backend_pid() GROUP BY 1",
                    self.database,
                )
                by_state = {row["state"]: int(row["n"]) for row in rows}
                total = sum(by_state.values())
                self.samples += 1
                if total > self.peak:
                    self.peak = total
                    self.peak_by_state = by_state
                await asyncio.sleep(SAMPLE_EVERY)
        finally:
            await conn.close()

    def __enter__(self) -> ActivitySampler:
        self._thread.start()
        time.sleep(0.2)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=30)


def _pool_sizes() -> str:
    """What a node's pools hold, read from a store built (not connected) the way a node
    builds it, and the settings that size them where there are such."""
    from sessiond.settings import Settings
    from sessiond.store import create_store

    parts = []
    store = create_store("postgresql+asyncpg://nobody@127.0.0.1:1/nothing")
    pool = getattr(getattr(store, "engine", None), "pool", None)
    if pool is not None and hasattr(pool, "size"):
        overflow = getattr(pool, "_max_overflow", "?")
        parts.append(f"SQLAlchemy pool_size {pool.size()}, max_overflow {overflow}")
    try:
        from sessiond.store import postgres
    except ImportError:  # pragma: no cover
        postgres = None  # type: ignore[assignment]
    if postgres is not None and hasattr(postgres, "READ_CONNECTIONS"):
        parts.append(f"asyncpg read pool at most {postgres.READ_CONNECTIONS}")
    for name in ("database_connections", "database_pool_timeout"):
        if name in Settings.model_fields:
            parts.append(f"setting {name} (default {Settings.model_fields[name].default})")
    asyncio.run(store.close())
    return ", ".join(parts) or "none found"


async def _burst(url: str, logins: list[str]) -> tuple[float, list[float], dict[int, int]]:
    limits = httpx.Limits(max_connections=len(logins))
    statuses: dict[int, int] = {}
    times: list[float] = []
    async with httpx.AsyncClient(timeout=300, limits=limits) as client:

        async def one(login: str) -> None:
            started = time.perf_counter()
            try:
                response = await client.post(
                    url + "/api/v1/sessions/open", json={"Login": login, "Password": PASSWORD}
                )
                status = response.status_code
            except httpx.HTTPError:
                status = -1
            times.append(time.perf_counter() - started)
            statuses[status] = statuses.get(status, 0) + 1

        started = time.perf_counter()
        async with asyncio.timeout(600):
            await asyncio.gather(*(one(login) for login in logins))
        return time.perf_counter() - started, times, statuses


def run_pg_connections(config: Config) -> None:
    from sqlalchemy.engine import make_url

    from .pg import _start_postgres

    heading(
        "pg-connections",
        f"connections one node opens to PostgreSQL during {BURST} sign-ins at once "
        "(pg_stat_activity sampled every 20 ms from a separate connection)",
    )
    print(f"  pool sizes in the code: {_pool_sizes()}")
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        cluster = _start_postgres(stack)
        for fast in (True, False):
            try:
                url = cluster.new_database()
            except RuntimeError as exc:
                raise BenchError(f"could not create a PostgreSQL database: {exc}") from exc
            parsed = make_url(url)
            dsn = parsed.set(drivername="postgresql").render_as_string(hide_password=False)
            label = "fast Argon2 (t=1, 8 MiB, p=1)" if fast else "default Argon2 (t=3, 64 MiB, p=4)"
            name = "pg-fast" if fast else "pg-default"
            node = start_sessiond(stack, root, name, fast_argon2=fast, database_url=url)
            admin = sign_in(node.url, "admin", node.admin_password, timeout=120)
            logins = [f"burst{i}" for i in range(BURST)]
            started = time.perf_counter()
            asyncio.run(_add_users(node.url, admin, logins))
            made = time.perf_counter() - started
            with ActivitySampler(dsn, str(parsed.database)) as idle:
                time.sleep(0.5)
            pid = node.server.process.pid if node.server.process else None
            rss_before, hwm_before = _memory(pid)
            with ActivitySampler(dsn, str(parsed.database)) as sampler:
                elapsed, times, statuses = asyncio.run(_burst(node.url, logins))
            if sampler.error or idle.error:
                raise BenchError(f"sampling pg_stat_activity failed: {sampler.error or idle.error}")
            rss_after, hwm_after = _memory(pid)
            ordered = sorted(times)
            print(
                f"  {label}: {BURST} users added in {made:.1f} s; idle node: {idle.peak} "
                f"connections; during {BURST} sign-ins at once ({elapsed:.1f} s, answers "
                f"{dict(sorted(statuses.items()))}, median {fmt(median(times) * 1e3, 0)} ms, "
                f"slowest {fmt(ordered[-1] * 1e3, 0)} ms): at most {sampler.peak} connections "
                f"({', '.join(f'{k} {v}' for k, v in sorted(sampler.peak_by_state.items()))}; "
                f"{sampler.samples} samples); the node's memory before the burst VmRSS "
                f"{fmt(rss_before)} MiB (VmHWM {fmt(hwm_before)}), after it VmRSS "
                f"{fmt(rss_after)} MiB (VmHWM {fmt(hwm_after)})",
                flush=True,
            )
            node.server.stop()
