"""Validation throughput over HTTP: ``GET /api/v1/sessions/current`` on a real server.

``validate``: sessiond against two baselines on the same uvicorn, one worker each, in
alternating rounds (bare Starlette, minimal FastAPI, sessiond, bare, ...).

``validate-under-signin``: sessiond with the default Argon2 cost, validating alone and while
sign-ins run in a loop beside it, in alternating rounds.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from .common import (
    BenchError,
    Config,
    Series,
    fmt,
    heading,
    median,
    print_ratio,
    print_table,
    process_tree_cpu,
    sessiond_imported_from,
    sign_in,
    start_app,
    start_sessiond,
)
from .load import HeaderCycle, LoadGenerator, LoadResult

PATH = "/api/v1/sessions/current"
# The liveness route: the app and its middleware without the store (the combined
# /api/v1/health asks the store at every call).
HEALTH_PATH = "/api/v1/health/live"
SESSION_HEADER = "Tessa-Session"
MAX_FAILURE_SHARE = 0.01  # more failed requests than this in a round: the round is void


def _check(name: str, url: str, headers: dict[str, str]) -> None:
    response = httpx.get(url, headers=headers, timeout=10)
    if response.status_code != 200:
        raise BenchError(f"{name}: GET {url} answered {response.status_code}: {response.text}")


def _load(
    load: LoadGenerator,
    name: str,
    url: str,
    headers: dict[str, str],
    seconds: float,
    config: Config,
    cycle: HeaderCycle | None = None,
) -> LoadResult:
    result = load.run(url, headers, seconds, config.connections, cycle)
    total = result.requests + result.failures
    if result.requests == 0 or result.failures > MAX_FAILURE_SHARE * total:
        raise BenchError(
            f"{name}: {result.failures} of {total} requests failed; its figures would be void"
        )
    return result


COMPARE = "sessiond-compare"


def _round_order(names: list[str], round_no: int) -> list[str]:
    """The targets of one round: in the order given, except that with a second sessiond
    (``--compare-src``) the two sessiond targets swap places every other round, so that
    neither always runs first."""
    if COMPARE not in names or round_no % 2:
        return names
    order = list(names)
    first, second = order.index("sessiond"), order.index(COMPARE)
    order[first], order[second] = order[second], order[first]
    return order


def run_validate(config: Config, load: LoadGenerator) -> None:
    heading(
        "validate",
        f"GET {PATH} with a valid {SESSION_HEADER} token, requests/s, one uvicorn worker each",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        bare = start_app(stack, root, "bare")
        fastapi = start_app(stack, root, "fastapi")
        sessiond = start_sessiond(stack, root, "sessiond", fast_argon2=True)
        token = sign_in(sessiond.url, "admin", sessiond.admin_password)
        headers = {SESSION_HEADER: token}
        servers = {
            "bare": bare,
            "fastapi": fastapi,
            "sessiond": sessiond.server,
        }
        target_headers = {name: headers for name in servers}
        if config.compare_src is not None:
            # The same server from another source tree (e.g. an earlier commit), same settings,
            # its own data folder and token.
            other = start_sessiond(
                stack, root, COMPARE, fast_argon2=True, source=config.compare_src
            )
            servers[COMPARE] = other.server
            target_headers[COMPARE] = {
                SESSION_HEADER: sign_in(other.url, "admin", other.admin_password)
            }
            print(
                f"  sessiond: {sessiond_imported_from(sessiond.server.env, root)}; "
                f"{COMPARE}: {config.compare_src / 'sessiond'} (first on its PYTHONPATH)"
            )
        servers["sessiond-health"] = sessiond.server
        target_headers["sessiond-health"] = headers
        urls = {name: server.url + PATH for name, server in servers.items()}
        # Diagnostic: the same sessiond app and middleware on a route that reads no token and
        # (but once a second) no store: the ceiling of its framework path.
        urls["sessiond-health"] = sessiond.url + HEALTH_PATH
        for name, url in urls.items():
            _check(name, url, target_headers[name])
        for name, url in urls.items():  # warm up: imports, caches, first connections
            _load(load, name, url, target_headers[name], config.warmup, config)
        series = {name: Series(name, "req/s") for name in urls}
        latency = {name: Series(f"{name} p99", "ms") for name in urls}
        cpu = {name: Series(f"{name} server CPU", "us/req") for name in urls}
        for round_no in range(1, config.rounds + 1):
            parts = []
            for name in _round_order(list(urls), round_no):
                server = servers[name]
                server.check_alive()
                pid = server.process.pid if server.process else None
                cpu_before = process_tree_cpu(pid)
                result = _load(
                    load, name, urls[name], target_headers[name], config.duration, config
                )
                used = process_tree_cpu(pid) - cpu_before
                series[name].add(result.rps)
                latency[name].add(result.p99_ms)
                cpu[name].add(used / result.requests * 1e6 if result.requests else math.nan)
                parts.append(f"{name} {fmt(result.rps)}/s")
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
        print_table([*series.values(), *latency.values(), *cpu.values()])
        trusted = load.name == "wrk"
        if not trusted:
            print(
                "  NOTE: the httpx load generator saturates before these servers do; the "
                "figures are bounded by the client and the ratios say little (install wrk)"
            )
        print_ratio("sessiond / bare", series["sessiond"], series["bare"], 0.5, trusted)
        if COMPARE in series:
            print_ratio(f"{COMPARE} / bare", series[COMPARE], series["bare"], 0.5, trusted)
            print_ratio(f"sessiond / {COMPARE}", series["sessiond"], series[COMPARE], 1.0, trusted)
            print_ratio(
                f"server CPU per request, sessiond / {COMPARE}", cpu["sessiond"], cpu[COMPARE]
            )
        print_ratio("sessiond / fastapi", series["sessiond"], series["fastapi"])
        print_ratio("fastapi / bare", series["fastapi"], series["bare"])
        print_ratio("sessiond-health / bare", series["sessiond-health"], series["bare"])
        print(
            f"  (sessiond-health is GET {HEALTH_PATH} on the same sessiond process: its app and "
            "middleware without the token check and the session lookup; server CPU is the "
            "process's user and system time during the run, from /proc, per answered request"
            + (
                f"; {COMPARE} is the sessiond of {config.compare_src}, same settings, in the "
                "same rounds, swapping places with sessiond every other round)"
                if COMPARE in series
                else ")"
            )
        )


# --- validate-under-signin ------------------------------------------------------------------


@dataclass
class Signer:
    """Sign-in loops in threads (blocking httpx), bounded in count and time."""

    url: str
    password: str
    loops: int
    max_seconds: float
    max_count: int = 10_000
    durations: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _loop(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and time.monotonic() < deadline:
                with self._lock:
                    if len(self.durations) + len(self.errors) >= self.max_count:
                        return
                started = time.perf_counter()
                try:
                    response = client.post(
                        f"{self.url}/api/v1/sessions/open",
                        json={"Login": "admin", "Password": self.password},
                    )
                    problem = None if response.status_code == 200 else str(response.status_code)
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                with self._lock:
                    if problem is None:
                        self.durations.append(time.perf_counter() - started)
                    else:
                        self.errors.append(problem)

    def __enter__(self) -> Signer:
        for _ in range(self.loops):
            thread = threading.Thread(target=self._loop, daemon=True)
            thread.start()
            self._threads.append(thread)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=120)


def run_validate_under_signin(config: Config, load: LoadGenerator) -> None:
    heading(
        "validate-under-signin",
        f"GET {PATH} requests/s on sessiond (default Argon2), alone and while "
        f"{config.signers} sign-in loop(s) run beside it",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        sessiond = start_sessiond(stack, root, "sessiond-default-argon2", fast_argon2=False)
        token = sign_in(sessiond.url, "admin", sessiond.admin_password)
        headers = {SESSION_HEADER: token}
        url = sessiond.url + PATH
        _check("sessiond", url, headers)
        _load(load, "sessiond", url, headers, config.warmup, config)
        alone = Series("alone", "req/s")
        under = Series("under sign-in", "req/s")
        alone_p99 = Series("alone p99", "ms")
        under_p99 = Series("under sign-in p99", "ms")
        alone_max = Series("alone max", "ms")
        under_max = Series("under sign-in max", "ms")
        signins = Series("sign-ins completed", "/s")
        signin_time = Series("sign-in time (median)", "ms")
        for round_no in range(1, config.rounds + 1):
            sessiond.server.check_alive()
            quiet = _load(load, "sessiond", url, headers, config.duration, config)
            alone.add(quiet.rps)
            alone_p99.add(quiet.p99_ms)
            alone_max.add(quiet.max_ms)
            signer = Signer(
                sessiond.url,
                sessiond.admin_password,
                config.signers,
                max_seconds=config.duration + config.round_timeout,
            )
            with signer:
                signing_since = time.perf_counter()
                time.sleep(0.3)  # the first hash is under way before the load starts
                busy = _load(load, "sessiond", url, headers, config.duration, config)
                done = len(signer.durations)
                signing_for = time.perf_counter() - signing_since
            if signer.errors:
                raise BenchError(f"sign-ins failed during the round: {signer.errors[:3]}")
            under.add(busy.rps)
            under_p99.add(busy.p99_ms)
            under_max.add(busy.max_ms)
            signins.add(done / signing_for)
            signin_time.add(median(signer.durations) * 1e3)
            print(
                f"  round {round_no}/{config.rounds}: alone {fmt(quiet.rps)}/s "
                f"(max {fmt(quiet.max_ms)} ms)  under sign-in {fmt(busy.rps)}/s "
                f"(max {fmt(busy.max_ms)} ms, {done} sign-ins)",
                flush=True,
            )
        print_table(
            [alone, under, alone_p99, under_p99, alone_max, under_max, signins, signin_time]
        )
        print_ratio("under sign-in / alone", under, alone)
        # A hash run on the event loop would hold every request queued behind it for a whole
        # hash: the longest wait would grow by about one sign-in's time.
        growth = under_max.median - alone_max.median
        blocked = growth >= 0.8 * signin_time.median
        print(
            f"  longest validation grew by {fmt(growth)} ms under sign-in (medians of rounds); "
            f"one sign-in takes {fmt(signin_time.median)} ms: "
            + (
                "the event loop looks BLOCKED while hashing"
                if blocked
                else "hashing does not block the event loop (the drop is shared CPU)"
            )
        )
