"""``refusals``: before the right password is shown, every refused sign-in costs the same.

A real ``sessiond serve`` with the default Argon2 settings and the lockout on (5 failed sign-ins
block a platform user), users added over HTTP by the administrator, and sign-ins timed one at a
time over HTTP (``POST /api/v1/sessions/open``, httpx, one kept-alive connection) for six cases:

- an unknown login;
- a known login with a wrong password (the reference: a real password check that fails);
- a user blocked by the administrator, with a wrong password and with the right one;
- a user whose login type is None, with the right password;
- a Windows user on a server where Windows sign-in is not configured.

Every answer must be ``401 invalid_credentials``, and every body alike. The known users are
several (``known-1``, ``known-2``, ...) used in turn, each given at most 4 wrong passwords, so
the lockout never blocks one; after the run the bench checks that none is blocked and that each
still signs in. It also reads the server's audit trail (its SQLite file, read-only) and checks
that every sample left the ``LoginFailed`` record of the case it claims to be.
"""

from __future__ import annotations

import contextlib
import math
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import httpx

from sessiond.models import AuditAction
from sessiond.settings import Argon2Settings

from .common import (
    BenchError,
    Config,
    Series,
    audit_records,
    call_api,
    fmt,
    heading,
    median,
    percentile,
    print_ratio_within,
    print_table,
    ratio,
    sign_in,
    start_sessiond,
)

LOCKOUT_LIMIT = 5  # SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_BEFORE_BLOCKED
PASSWORD = "bench password 1"
WRONG_PASSWORD = "bench password 2"  # the same length as the right one
OPEN_PATH = "/api/v1/sessions/open"
SESSION_HEADER = "Tessa-Session"
GOAL_LOW, GOAL_HIGH = 0.9, 1.1  # each case's median against the wrong password's
WINDOWS_ACCOUNT = "CORP\\domain"


@dataclass(frozen=True)
class Case:
    key: str  # short name in the round lines
    label: str  # name in the table and the ratios
    reason: str  # details.reason of the LoginFailed record the server must write


WRONG = Case("wrong password", "known login, wrong password", "wrong login or password")
CASES = (
    Case("unknown", "unknown login", "unknown login"),
    WRONG,
    Case("blocked+wrong", "blocked user, wrong password", "user blocked; password not checked"),
    Case("blocked+right", "blocked user, right password", "user blocked; password not checked"),
    Case("None", "login type None", "login type None: may not sign in"),
    Case(
        "Windows",
        "Windows user, no Windows sign-in",
        "sign-in of Windows users is not configured on this server",
    ),
)


class KnownUsers:
    """``known-1`` ... ``known-N`` in turn, none given ``LOCKOUT_LIMIT`` wrong passwords."""

    def __init__(self, wrong_attempts: int) -> None:
        per_user = LOCKOUT_LIMIT - 1
        self.logins = [f"known-{i}" for i in range(1, math.ceil(wrong_attempts / per_user) + 1)]
        self.failures: Counter[str] = Counter()
        self._next = 0

    def take(self) -> str:
        login = self.logins[self._next % len(self.logins)]
        self._next += 1
        if self.failures[login] >= LOCKOUT_LIMIT - 1:
            raise BenchError(f"{login} would reach the lockout limit ({LOCKOUT_LIMIT})")
        self.failures[login] += 1
        return login


@dataclass
class Refusals:
    """What the answers were: bodies and headers (without Date) seen, and the LoginFailed
    records the server must have written, by (login, reason)."""

    bodies: Counter[bytes]
    headers: Counter[tuple[tuple[str, str], ...]]
    expected: Counter[tuple[str, str]]


def _argon2_line(settings: Argon2Settings) -> str:
    return (
        f"Argon2id time_cost {settings.time_cost}, memory {settings.memory_cost // 1024} MiB, "
        f"parallelism {settings.parallelism}"
    )


def _users(client: httpx.Client, url: str) -> dict[str, dict[str, object]]:
    users = call_api(client, "GET", f"{url}/api/v1/users")
    assert isinstance(users, list)
    return {str(u["Login"]): u for u in users}


def _set_up_users(url: str, admin_token: str, known: list[str]) -> None:
    """The users, added (and one blocked) over HTTP by the administrator, then checked."""
    with httpx.Client(timeout=120, headers={SESSION_HEADER: admin_token}) as client:
        add = f"{url}/api/v1/users"
        for login in known:
            call_api(client, "POST", add, {"Login": login, "Password": PASSWORD})
        call_api(client, "POST", add, {"Login": "blocked", "Password": PASSWORD})
        call_api(client, "POST", f"{url}/api/v1/users/blocked/block", {})
        call_api(
            client, "POST", add, {"Login": "dismissed", "Password": PASSWORD, "LoginType": "None"}
        )
        call_api(
            client,
            "POST",
            add,
            {"Login": "domain", "LoginType": "Windows", "Account": WINDOWS_ACCOUNT},
        )
        users = _users(client, url)
    expected = {
        **{login: ("Platform", False) for login in known},
        "blocked": ("Platform", True),
        "dismissed": ("None", False),
        "domain": ("Windows", False),
    }
    for login, (login_type, blocked) in expected.items():
        user = users.get(login)
        if user is None or (user["LoginType"], user["Blocked"]) != (login_type, blocked):
            raise BenchError(f"user {login!r} is not as set up: {user}")
    if users["domain"]["Account"] != WINDOWS_ACCOUNT:
        raise BenchError(f"user 'domain' has account {users['domain']['Account']!r}")


def _check_known_after(url: str, admin_token: str, known: list[str]) -> None:
    """No known user was blocked, and each still signs in with the right password."""
    with httpx.Client(timeout=120, headers={SESSION_HEADER: admin_token}) as client:
        users = _users(client, url)
    blocked = [login for login in known if users[login]["Blocked"]]
    if blocked:
        raise BenchError(f"the lockout blocked {blocked}: their samples are not wrong passwords")
    for login in known:
        sign_in(url, login, PASSWORD, timeout=120)


def _audit_since(database: Path, after_id: int) -> tuple[int, Counter[tuple[str, str]]]:
    """The last audit id, and the LoginFailed records after ``after_id`` by (login, reason),
    read from the server's SQLite file (read-only)."""
    last, records = audit_records(database, AuditAction.LOGIN_FAILED.value, after_id)
    found: Counter[tuple[str, str]] = Counter()
    for user_name, data in records:
        found[(str(data.get("login", user_name)), str(data.get("reason")))] += 1
    return last, found


def _attempt(
    client: httpx.Client, url: str, login: str, password: str, seen: Refusals, case: Case
) -> float:
    """One refused sign-in: its time in seconds; anything but the uniform refusal fails."""
    started = time.perf_counter()
    response = client.post(url, json={"Login": login, "Password": password})
    elapsed = time.perf_counter() - started
    try:
        code = response.json()["error"]["code"]
    except (ValueError, KeyError, TypeError):
        code = None
    if response.status_code != 401 or code != "invalid_credentials":
        raise BenchError(
            f"{case.label} ({login!r}) answered {response.status_code}: {response.text[:300]}"
        )
    seen.bodies[response.content] += 1
    seen.headers[tuple(sorted((k, v) for k, v in response.headers.items() if k != "date"))] += 1
    seen.expected[(login, case.reason)] += 1
    return elapsed


def _order(round_no: int, sample: int) -> list[Case]:
    """The cases in a different order for each sample: rotated (each case comes first once in
    every six samples) and reversed every other time (so none always follows the same one)."""
    shift = (round_no - 1 + sample) % len(CASES)
    order = list(CASES[shift:] + CASES[:shift])
    return order[::-1] if (round_no + sample) % 2 else order


def _rounds(config: Config, root: Path, url: str, admin_password: str) -> None:
    samples = config.refusal_samples
    known = KnownUsers(wrong_attempts=(config.rounds * samples + 1))  # + the warm-up
    admin_token = sign_in(url, "admin", admin_password, timeout=120)
    setup_started = time.perf_counter()
    _set_up_users(url, admin_token, known.logins)
    for login in known.logins:  # the right password is right (and counts stay at 0)
        sign_in(url, login, PASSWORD, timeout=120)
    print(
        f"  users added over HTTP in {time.perf_counter() - setup_started:.1f} s: "
        f"{known.logins[0]}..{known.logins[-1]} ({len(known.logins)} platform users, "
        f"each given at most {LOCKOUT_LIMIT - 1} wrong passwords), blocked (platform, blocked "
        f"by the administrator), dismissed (login type None), domain (Windows, "
        f"{WINDOWS_ACCOUNT}; no Windows sign-in configured)",
        flush=True,
    )
    database = root / "refusals-data" / "sessiond.db"
    audit_start, _ = _audit_since(database, 0)
    seen = Refusals(Counter(), Counter(), Counter())
    unknown_count = 0

    def login_and_password(case: Case) -> tuple[str, str]:
        nonlocal unknown_count
        if case.key == "unknown":
            unknown_count += 1
            return f"nobody-{unknown_count}", PASSWORD
        if case.key == "wrong password":
            return known.take(), WRONG_PASSWORD
        if case.key == "blocked+wrong":
            return "blocked", WRONG_PASSWORD
        if case.key == "blocked+right":
            return "blocked", PASSWORD
        if case.key == "None":
            return "dismissed", PASSWORD
        return "domain", PASSWORD

    open_url = url + OPEN_PATH
    per_round = {case.key: Series(case.label, "ms") for case in CASES}
    every: dict[str, list[float]] = {case.key: [] for case in CASES}
    with httpx.Client(timeout=config.round_timeout) as client:
        for case in CASES:  # warm up: the connection, the threads, the first hashes
            _attempt(client, open_url, *login_and_password(case), seen, case)
        for round_no in range(1, config.rounds + 1):
            deadline = time.monotonic() + config.round_timeout
            this_round: dict[str, list[float]] = {case.key: [] for case in CASES}
            for sample in range(samples):
                if time.monotonic() > deadline:
                    raise BenchError(f"round {round_no} took over {config.round_timeout:.0f}s")
                for case in _order(round_no, sample):
                    login, password = login_and_password(case)
                    elapsed = _attempt(client, open_url, login, password, seen, case)
                    this_round[case.key].append(elapsed * 1e3)
            parts = []
            for case in CASES:
                per_round[case.key].add(median(this_round[case.key]))
                every[case.key] += this_round[case.key]
                parts.append(f"{case.key} {fmt(per_round[case.key].values[-1])} ms")
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)

    _, found = _audit_since(database, audit_start)
    if found != seen.expected:
        missing = seen.expected - found
        extra = found - seen.expected
        raise BenchError(
            "the audit trail does not match the cases: expected but missing "
            f"{dict(missing)}, recorded but not expected {dict(extra)}"
        )
    _check_known_after(url, admin_token, known.logins)

    print_table(list(per_round.values()))
    width = max(len(case.label) for case in CASES)
    for case in CASES:
        ms = every[case.key]
        print(
            f"  all {len(ms)} {case.label + ' samples:':<{width + 9}} median {fmt(median(ms))} ms, "
            f"p10 {fmt(percentile(ms, 10))} ms, p90 {fmt(percentile(ms, 90))} ms"
        )
    reference = per_round[WRONG.key]
    for case in CASES:
        if case is WRONG:
            continue
        overall = ratio(median(every[case.key]), median(every[WRONG.key]))
        print_ratio_within(
            f"{case.label} / wrong password",
            per_round[case.key],
            reference,
            GOAL_LOW,
            GOAL_HIGH,
            extra=f"; all samples {fmt(overall, 2)}x",
        )
    total = sum(seen.bodies.values())
    print(
        f"  response bodies: {len(seen.bodies)} distinct in {total} refusals (must be 1), "
        f"all 401 invalid_credentials: "
        + "; ".join(body.decode("utf-8", "replace") for body in seen.bodies)
    )
    print(
        f"  response headers other than Date: {len(seen.headers)} distinct set(s): "
        + "; ".join(", ".join(f"{k}: {v}" for k, v in h) for h in seen.headers)
    )
    print(
        f"  audit: {sum(found.values())} LoginFailed records, each with its case's reason; "
        f"{len(known.logins)} known users, wrong passwords per user "
        f"{min(known.failures.values())}-{max(known.failures.values())}, none blocked, each "
        "signed in with the right password after the run"
    )
    print(
        "  (the reference is a real password check that fails; the goal is every other "
        f"refusal within {GOAL_LOW:g}-{GOAL_HIGH:g}x of it)"
    )


def run_refusals(config: Config) -> None:
    heading(
        "refusals",
        f"time of a refused sign-in over HTTP, one at a time, by case, "
        f"{_argon2_line(Argon2Settings())}, lockout after {LOCKOUT_LIMIT} failures, "
        f"{config.refusal_samples} samples per case and round",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        server = start_sessiond(
            stack,
            root,
            "refusals",
            fast_argon2=False,
            extra_env={
                "SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_BEFORE_BLOCKED": str(LOCKOUT_LIMIT)
            },
        )
        _rounds(config, root, server.url, server.admin_password)
        server.server.check_alive()
