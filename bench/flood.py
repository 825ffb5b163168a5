"""``flood``: what a flood of wrong passwords at one account costs everyone else.

A real ``sessiond serve`` with the default Argon2 settings and the default security settings
(no lockout), users added over HTTP. Each round measures, one request at a time over HTTP from
this process, another user's sign-in (``POST /api/v1/sessions/open``, right password) and a
validation of another session (``GET /api/v1/sessions/current``) twice: with no flood, and while
a second process keeps ``FLOOD`` wrong-password sign-ins at one account in flight (each answered
one sent again at once, until the round's samples are taken). The order of the two alternates by
round. Figures: medians per round, the ratio flood / no flood of the medians, the flood's answers
by status (any ``503`` is a failure to look for), the hashes the server ran during the flood
(``sessiond_password_hash_seconds_count``: verify and decoy) and its memory.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import re
import tempfile
import time
from collections import Counter
from multiprocessing.synchronize import Event as EventType
from pathlib import Path
from typing import Any

import httpx

from sessiond.settings import Argon2Settings

from .common import (
    BenchError,
    Config,
    Series,
    fmt,
    heading,
    median,
    print_table,
    ratio,
    sign_in,
    start_sessiond,
)

FLOOD = 1000  # wrong-password sign-ins at one account kept in flight
PASSWORD = "bench password 1"
WRONG_PASSWORD = "bench password 2"
SESSION_HEADER = "Tessa-Session"
GOAL = 1.5  # flood / no flood, sign-in and validation medians
WARMUP = 2.0  # seconds of flood before the samples
VALIDATIONS_PER_SIGN_IN = 20


def _flood_process(url: str, stop: EventType, results: Any, limit_s: float) -> None:
    """Keep ``FLOOD`` wrong passwords at ``target`` in flight until ``stop`` (or ``limit_s``)."""
    results.put(asyncio.run(_flood(url, stop, limit_s)))


async def _flood(url: str, stop: EventType, limit_s: float) -> dict[str, int]:
    statuses: Counter[str] = Counter()
    deadline = time.monotonic() + limit_s
    limits = httpx.Limits(max_connections=FLOOD, max_keepalive_connections=FLOOD)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def worker() -> None:
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    answer = await client.post(
                        f"{url}/api/v1/sessions/open",
                        json={"Login": "target", "Password": WRONG_PASSWORD},
                    )
                    statuses[str(answer.status_code)] += 1
                except httpx.HTTPError as exc:
                    statuses[type(exc).__name__] += 1

        await asyncio.gather(*(worker() for _ in range(FLOOD)))
    return dict(statuses)


def _hashes(url: str) -> float:
    """Argon2 verifications and decoys the server has run so far."""
    text = httpx.get(f"{url}/metrics", timeout=60).text
    found = re.findall(
        r'^sessiond_password_hash_seconds_count\{operation="(?:verify|decoy)"\} (\S+)$',
        text,
        re.M,
    )
    return sum(float(value) for value in found)


def _rss(pid: int | None) -> float:
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (OSError, TypeError):
        return float("nan")
    found = re.search(r"^VmRSS:\s+(\d+)", text, re.M)
    return int(found.group(1)) / 1024 if found else float("nan")


def _samples(
    url: str, token: str, sign_ins: int, limit_s: float
) -> tuple[list[float], list[float]]:
    """Another user's sign-ins and validations, one at a time: their times in ms."""
    opened: list[float] = []
    validated: list[float] = []
    deadline = time.monotonic() + limit_s
    with httpx.Client(timeout=limit_s) as client:
        for _ in range(sign_ins):
            if time.monotonic() > deadline:
                raise BenchError(f"the samples took over {limit_s:.0f} s")
            started = time.perf_counter()
            answer = client.post(
                f"{url}/api/v1/sessions/open", json={"Login": "bystander", "Password": PASSWORD}
            )
            opened.append((time.perf_counter() - started) * 1e3)
            if answer.status_code != 200:
                raise BenchError(f"the bystander's sign-in answered {answer.status_code}")
            for _ in range(VALIDATIONS_PER_SIGN_IN):
                started = time.perf_counter()
                answer = client.get(
                    f"{url}/api/v1/sessions/current", headers={SESSION_HEADER: token}
                )
                validated.append((time.perf_counter() - started) * 1e3)
                if answer.status_code != 200:
                    raise BenchError(f"a validation answered {answer.status_code}")
                time.sleep(0.01)
    return opened, validated


def _set_up(url: str, admin_password: str) -> str:
    admin = sign_in(url, "admin", admin_password, timeout=120)
    with httpx.Client(timeout=120, headers={SESSION_HEADER: admin}) as client:
        for login in ("target", "bystander", "reader"):
            added = client.post(f"{url}/api/v1/users", json={"Login": login, "Password": PASSWORD})
            if added.status_code != 201:
                raise BenchError(f"adding {login} answered {added.status_code}: {added.text}")
    return sign_in(url, "reader", PASSWORD, timeout=120)


def run_flood(config: Config) -> None:
    a = Argon2Settings()
    heading(
        "flood",
        f"another user's sign-in and a validation, one at a time over HTTP, with no flood and "
        f"while {FLOOD} wrong-password sign-ins at one account are kept in flight; Argon2id "
        f"time_cost {a.time_cost}, {a.memory_cost // 1024} MiB, parallelism {a.parallelism}, "
        f"no lockout",
    )
    sign_ins = 3 if config.rounds <= 3 else 5
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        # The flood comes from one address over FLOOD connections: the per-address connection
        # limit (a defence of its own) is raised so that every attempt reaches sign-in.
        server = start_sessiond(
            stack, root, "flood", fast_argon2=False,
            extra_env={"SESSIOND_MAX_CONNECTIONS_PER_ADDRESS": str(4 * FLOOD)},
        )  # fmt: skip
        token = _set_up(server.url, server.admin_password)
        pid = server.server.process.pid if server.server.process else None
        _samples(server.url, token, 1, config.round_timeout)  # warm up
        series = {
            key: Series(label, "ms")
            for key, label in (
                ("open", "sign-in, no flood"),
                ("open-flood", "sign-in, flood"),
                ("validate", "validation, no flood"),
                ("validate-flood", "validation, flood"),
            )
        }
        statuses: Counter[str] = Counter()
        hashes: list[float] = []
        rates: list[float] = []
        rss: list[float] = []
        context = multiprocessing.get_context("spawn")
        for round_no in range(1, config.rounds + 1):
            for flooded in (False, True) if round_no % 2 else (True, False):
                suffix = "-flood" if flooded else ""
                if not flooded:
                    opened, validated = _samples(server.url, token, sign_ins, config.round_timeout)
                else:
                    stop = context.Event()
                    results = context.Queue()
                    child = context.Process(
                        target=_flood_process,
                        args=(server.url, stop, results, config.round_timeout),
                        daemon=True,
                    )
                    before = _hashes(server.url)
                    child.start()
                    started = time.monotonic()
                    try:
                        time.sleep(WARMUP)
                        opened, validated = _samples(
                            server.url, token, sign_ins, config.round_timeout
                        )
                        rss.append(_rss(pid))
                        elapsed = time.monotonic() - started
                        hashes.append((_hashes(server.url) - before) / elapsed)
                    finally:
                        stop.set()
                        try:
                            counts = results.get(timeout=config.round_timeout)
                        except Exception:
                            counts = {"no answer from the flood": 1}
                        child.join(30)
                        if child.is_alive():
                            child.terminate()
                            child.join(10)
                    flood_time = time.monotonic() - started
                    statuses.update(counts)
                    rates.append(sum(counts.values()) / flood_time)
                series["open" + suffix].add(median(opened))
                series["validate" + suffix].add(median(validated))
            print(
                f"  round {round_no}/{config.rounds}: sign-in {fmt(series['open'].values[-1])} / "
                f"{fmt(series['open-flood'].values[-1])} ms, validation "
                f"{fmt(series['validate'].values[-1], 2)} / "
                f"{fmt(series['validate-flood'].values[-1], 2)} ms (no flood / flood)",
                flush=True,
            )
        server.server.check_alive()

    print_table(list(series.values()), digits=2)
    for what in ("open", "validate"):
        label = "sign-in" if what == "open" else "validation"
        top, bottom = series[what + "-flood"], series[what]
        value = ratio(top.median, bottom.median)
        per_round = [ratio(x, y) for x, y in zip(top.values, bottom.values, strict=False)]
        verdict = "meets" if value <= GOAL else "ABOVE"
        print(
            f"  {label}, flood / no flood: {fmt(value, 2)}x (per round "
            f"{fmt(min(per_round), 2)}-{fmt(max(per_round), 2)})  goal <= {GOAL}x: {verdict}"
        )
    print(
        f"  the flood's answers: {dict(sorted(statuses.items()))}; "
        f"{fmt(median(rates))} a second (median of rounds)"
    )
    print(
        f"  Argon2 operations during the flood: {fmt(median(hashes), 2)} a second (median of "
        f"rounds); server VmRSS during the flood {fmt(max(rss))} MiB at most"
    )
