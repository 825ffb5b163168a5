"""Sign-in cost with the default Argon2 settings (time_cost 3, 64 MiB, parallelism 4).

``open``: sessions opened per second through ``service.signin.open_session`` (in this process,
SQLite store in a temporary folder) and over HTTP (a ``sessiond serve`` process), against the
hash-only rate: ``PasswordHasher.verify`` with the same parameters, the same concurrency, also
in threads through ``asyncio.to_thread``. Rounds alternate hash, service, HTTP.

``unknown-login``: how long a sign-in with an unknown login takes against one with a known
login and a wrong password (the unknown login verifies a decoy hash, so they should match).
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
from argon2 import PasswordHasher, Type

from sessiond.auth import PasswordCredentials
from sessiond.errors import InvalidCredentials
from sessiond.keys import KeyRing
from sessiond.models import ClientInfo
from sessiond.service import Actor, SessionService
from sessiond.settings import Argon2Settings, load_settings
from sessiond.store import create_store

from .common import (
    BenchError,
    Config,
    Series,
    Sessiond,
    fmt,
    heading,
    median,
    percentile,
    print_ratio,
    print_table,
    start_sessiond,
)

PASSWORD = "bench password 1"


async def _service(root: Path) -> SessionService:
    settings = load_settings(None, data_dir=root / "data", argon2=Argon2Settings())
    service = SessionService(
        settings,
        create_store(settings.effective_database_url),
        KeyRing.load_or_create(settings.effective_keys_file),
    )
    await service.start()
    return service


def _argon2_line(settings: Argon2Settings) -> str:
    return (
        f"Argon2id time_cost {settings.time_cost}, memory {settings.memory_cost // 1024} MiB, "
        f"parallelism {settings.parallelism}"
    )


async def _timed_batch(
    count: int, concurrency: int, one: Callable[[int], Awaitable[None]], limit_s: float
) -> float:
    """Run ``one(i)`` for i < count from ``concurrency`` tasks; the completions per second."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    except TimeoutError:
        raise BenchError(f"a batch of {count} did not finish within {limit_s:.0f}s") from None
    return count / (time.perf_counter() - started)


# --- open -----------------------------------------------------------------------------------


async def _open_rounds(config: Config, root: Path, server: Sessiond) -> None:
    defaults = Argon2Settings()
    service = await _service(root)
    try:
        logins = [f"opener{i}" for i in range(config.openers)]
        for login in logins:
            await service.users.add_user(Actor.system(), login, password=PASSWORD)
        hasher = PasswordHasher(
            time_cost=defaults.time_cost,
            memory_cost=defaults.memory_cost,
            parallelism=defaults.parallelism,
            type=Type.ID,
        )
        password_hash = hasher.hash(PASSWORD)
        client_info = ClientInfo()

        async def hash_only(_index: int) -> None:
            await asyncio.to_thread(hasher.verify, password_hash, PASSWORD)

        async def open_in_service(index: int) -> None:
            credentials = PasswordCredentials(logins[index % len(logins)], PASSWORD)
            await service.signin.open_session(credentials, client_info, "127.0.0.1")

        limits = httpx.Limits(max_connections=config.openers)
        async with httpx.AsyncClient(timeout=120, limits=limits) as client:

            async def open_over_http(_index: int) -> None:
                response = await client.post(
                    f"{server.url}/api/v1/sessions/open",
                    json={"Login": "admin", "Password": server.admin_password},
                )
                if response.status_code != 200:
                    raise BenchError(f"HTTP sign-in answered {response.status_code}")

            kinds: dict[str, Callable[[int], Awaitable[None]]] = {
                "hash only (to_thread)": hash_only,
                "open_session (service)": open_in_service,
                "open over HTTP": open_over_http,
            }
            for one in kinds.values():  # warm up: threads, connections, the store's pool
                await _timed_batch(config.openers, config.openers, one, config.round_timeout)
            series = {name: Series(name, "opens/s") for name in kinds}
            for round_no in range(1, config.rounds + 1):
                parts = []
                # Rotate the order each round so that none always runs first (or last).
                names = list(kinds)
                shift = (round_no - 1) % len(names)
                for name in names[shift:] + names[:shift]:
                    one = kinds[name]
                    rate = await _timed_batch(
                        config.opens_per_round, config.openers, one, config.round_timeout
                    )
                    series[name].add(rate)
                    parts.append(f"{name} {fmt(rate, 2)}/s")
                print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
        hash_series, service_series, http_series = series.values()
        print_table(list(series.values()), digits=2)
        print_ratio("service / hash only", service_series, hash_series, goal=0.9)
        print_ratio("HTTP / hash only", http_series, hash_series, goal=0.9)
    finally:
        await service.close()


def run_open(config: Config) -> None:
    heading(
        "open",
        f"sessions opened per second, {config.openers} concurrent, "
        f"{_argon2_line(Argon2Settings())}, {config.opens_per_round} per round",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        server = start_sessiond(stack, root, "sessiond-default-argon2", fast_argon2=False)
        asyncio.run(_open_rounds(config, root, server))


# --- unknown-login --------------------------------------------------------------------------


async def _unknown_login_samples(config: Config, root: Path) -> None:
    service = await _service(root)
    try:
        await service.users.add_user(Actor.system(), "known", password=PASSWORD)
        client_info = ClientInfo()

        async def attempt(login: str) -> float:
            started = time.perf_counter()
            try:
                async with asyncio.timeout(config.round_timeout):
                    await service.signin.open_session(
                        PasswordCredentials(login, "not the password"), client_info, "127.0.0.1"
                    )
            except InvalidCredentials:
                return time.perf_counter() - started
            except TimeoutError:
                raise BenchError(f"a sign-in took over {config.round_timeout:.0f}s") from None
            raise BenchError(f"signing in as {login!r} with a wrong password succeeded")

        await attempt("known")
        await attempt("nobody-at-all")
        unknown: list[float] = []
        wrong: list[float] = []
        unknown_rounds = Series("unknown login", "ms")
        wrong_rounds = Series("known login, wrong password", "ms")
        for round_no in range(1, config.rounds + 1):
            round_unknown: list[float] = []
            round_wrong: list[float] = []
            for i in range(config.unknown_samples):
                # Alternate which goes first so neither always follows the other.
                order = ("unknown", "wrong") if i % 2 == 0 else ("wrong", "unknown")
                for kind in order:
                    if kind == "unknown":
                        round_unknown.append(await attempt(f"nobody-{round_no}-{i}"))
                    else:
                        round_wrong.append(await attempt("known"))
            unknown += round_unknown
            wrong += round_wrong
            unknown_rounds.add(median(round_unknown) * 1e3)
            wrong_rounds.add(median(round_wrong) * 1e3)
            print(
                f"  round {round_no}/{config.rounds}: unknown {fmt(unknown_rounds.values[-1])} ms"
                f"  wrong password {fmt(wrong_rounds.values[-1])} ms",
                flush=True,
            )
        print_table([unknown_rounds, wrong_rounds])
        for name, samples in (("unknown login", unknown), ("wrong password", wrong)):
            ms = [s * 1e3 for s in samples]
            print(
                f"  all {len(ms)} {name} samples: median {fmt(median(ms))} ms, "
                f"p10 {fmt(percentile(ms, 10))} ms, p90 {fmt(percentile(ms, 90))} ms"
            )
        print_ratio("unknown / wrong password", unknown_rounds, wrong_rounds)
        print("  (about 1.0 expected: an unknown login verifies a decoy hash of the same cost)")
    finally:
        await service.close()


def run_unknown_login(config: Config) -> None:
    heading(
        "unknown-login",
        "time of a failed sign-in through the service, one at a time, "
        f"{_argon2_line(Argon2Settings())}",
    )
    with tempfile.TemporaryDirectory(prefix="sessiond-bench-") as tmp:
        asyncio.run(_unknown_login_samples(config, Path(tmp)))
