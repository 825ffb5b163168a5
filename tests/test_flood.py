"""A flood of guesses at one account costs what it must and no more; the lockout counts every
wrong password it checked, whatever fails after the check. Real ``sessiond serve`` processes."""

from __future__ import annotations

import asyncio
import json
import re
import sqlite3
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from sessiond.models import AuditAction
from tests.conftest import ServerProcess, free_port, server_env

ADMIN_PASSWORD = "Admin-pw-flood-1"
PASSWORD = "Right-pw-1"
WRONG = "Wrong-pw-1"
# Heavier than the suite's Argon2 (tests/conftest.py), so that queued hashes show: hundreds of
# them take many seconds on two cores.
SLOW_ARGON2 = {
    "SESSIOND_ARGON2__TIME_COST": "2",
    "SESSIOND_ARGON2__MEMORY_COST": "32768",
    "SESSIOND_ARGON2__PARALLELISM": "1",
}


def _start(tmp_path: Path, **extra: str) -> ServerProcess:
    data_dir = tmp_path / "sessiond-data"
    env = server_env(data_dir, SESSIOND_ADMIN_PASSWORD=ADMIN_PASSWORD, **extra)
    proc = ServerProcess(data_dir, free_port(), env, tmp_path / "server.log")
    proc.start(timeout=60)
    proc.admin_password = ADMIN_PASSWORD
    return proc


@pytest.fixture
def make_server(tmp_path: Path) -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for proc in started:
        proc.stop()


def _add_users(proc: ServerProcess, *logins: str) -> None:
    admin = httpx.post(
        f"{proc.url}/api/v1/sessions/open",
        json={"Login": "admin", "Password": ADMIN_PASSWORD},
        timeout=60,
    )
    assert admin.status_code == 200, admin.text
    headers = {"Tessa-Session": admin.json()["AuthToken"]}
    for login in logins:
        added = httpx.post(
            f"{proc.url}/api/v1/users",
            json={"Login": login, "Password": PASSWORD},
            headers=headers,
            timeout=60,
        )
        assert added.status_code == 201, added.text


def _open(url: str, login: str, password: str, timeout: float = 120) -> httpx.Response:
    return httpx.post(
        f"{url}/api/v1/sessions/open",
        json={"Login": login, "Password": password},
        timeout=timeout,
    )


async def _flood(url: str, login: str, count: int) -> list[int]:
    """``count`` wrong passwords at ``login``, all at once; their statuses."""
    limits = httpx.Limits(max_connections=count, max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:
        answers = await asyncio.gather(
            *(
                client.post(f"{url}/api/v1/sessions/open", json={"Login": login, "Password": WRONG})
                for _ in range(count)
            ),
            return_exceptions=True,
        )
    return [a.status_code if isinstance(a, httpx.Response) else -1 for a in answers]


def test_a_flood_at_one_account_leaves_other_users_sign_ins_alone(
    tmp_path: Path, make_server: list[ServerProcess]
) -> None:
    # All 500 from one address, over 500 connections: above the per-address connection limit
    # (a defence of its own, tests/test_connections.py), raised here so that every guess
    # reaches sign-in.
    proc = _start(
        tmp_path,
        SESSIOND_SIGN_IN_SLOT_WAIT="5s",
        SESSIOND_MAX_CONNECTIONS_PER_ADDRESS="2048",
        **SLOW_ARGON2,
    )
    make_server.append(proc)
    _add_users(proc, "target", "bystander")
    unloaded = _open(proc.url, "bystander", PASSWORD)
    assert unloaded.status_code == 200, unloaded.text

    statuses: list[int] = []
    flooding = threading.Thread(
        target=lambda: statuses.extend(asyncio.run(_flood(proc.url, "target", 500)))
    )
    flooding.start()
    try:
        time.sleep(1.0)  # the 500 have arrived and wait (or, before, queue for the hashes)
        times = []
        for _ in range(3):
            started = time.monotonic()
            answer = _open(proc.url, "bystander", PASSWORD)
            times.append(time.monotonic() - started)
            assert answer.status_code == 200, answer.text
    finally:
        flooding.join(300)
    # Did not stall behind the flood's hashes (500 of them take well over a minute here).
    assert max(times) < 5.0, times
    assert Counter(statuses) == {401: 500}, Counter(statuses)
    assert "database is locked" not in proc.log_path.read_text()


def _verify_count(url: str, operation: str = "verify") -> float:
    text = httpx.get(f"{url}/metrics", timeout=30).text
    found = re.search(
        rf'^sessiond_password_hash_seconds_count\{{operation="{operation}"\}} (\S+)$', text, re.M
    )
    return float(found.group(1)) if found else 0.0


def test_guesses_at_a_blocked_account_cost_no_hash(
    tmp_path: Path, make_server: list[ServerProcess]
) -> None:
    proc = _start(tmp_path, SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_BEFORE_BLOCKED="3")
    make_server.append(proc)
    _add_users(proc, "blocked")
    for _ in range(3):  # the node times its wrong passwords; the third blocks the user
        assert _open(proc.url, "blocked", WRONG).status_code == 401
    hashes = _verify_count(proc.url) + _verify_count(proc.url, "decoy")
    assert Counter(asyncio.run(_flood(proc.url, "blocked", 50))) == {401: 50}
    assert _open(proc.url, "blocked", PASSWORD).status_code == 401
    # Refused unchecked: neither the password nor a decoy was hashed (before: a decoy each).
    assert _verify_count(proc.url) + _verify_count(proc.url, "decoy") == hashes
    records = _wrong_password_records(proc.data_dir / "sessiond.db", "blocked")
    assert records["wrong login or password"] == 3
    assert sum(records.values()) == 3 + 50 + 1, records


def _wait_for_slot(database: Path, within: float = 60.0) -> None:
    """Until a password check holds an attempt slot (read-only, beside the server)."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=5)
        try:
            if conn.execute("SELECT count(*) FROM sign_in_attempts").fetchone()[0]:
                return
        finally:
            conn.close()
        time.sleep(0.005)
    raise AssertionError("no attempt slot was taken")


def _hold_write_lock(database: Path, seconds: float) -> None:
    """Take SQLite's write lock from another connection, as another program could."""
    conn = sqlite3.connect(database, timeout=30, isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        time.sleep(seconds)
        conn.execute("ROLLBACK")
    finally:
        conn.close()


def _wrong_password_records(database: Path, login: str) -> Counter[str]:
    """The reasons of the LoginFailed records about ``login``."""
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        rows = conn.execute(
            "SELECT details FROM audit WHERE action = ?", (AuditAction.LOGIN_FAILED.value,)
        ).fetchall()
    finally:
        conn.close()
    details = [json.loads(row[0]) for row in rows]
    return Counter(d["reason"] for d in details if d.get("login") == login)


def test_a_wrong_password_is_counted_when_the_store_fails_after_its_check(
    tmp_path: Path, make_server: list[ServerProcess]
) -> None:
    proc = _start(
        tmp_path,
        SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_BEFORE_BLOCKED="3",
        SESSIOND_ARGON2__TIME_COST="3",
        SESSIOND_ARGON2__MEMORY_COST="65536",
        SESSIOND_ARGON2__PARALLELISM="1",
    )
    make_server.append(proc)
    _add_users(proc, "guessed")
    database = proc.data_dir / "sessiond.db"
    verified_before = _verify_count(proc.url)

    first: list[httpx.Response] = []
    guess = threading.Thread(target=lambda: first.append(_open(proc.url, "guessed", WRONG)))
    guess.start()
    _wait_for_slot(database)
    # Held past SQLite's busy timeout (10 s): the failure's first write fails.
    _hold_write_lock(database, 12.0)
    guess.join(120)
    assert first and first[0].status_code == 401, first[0].text if first else "no answer"

    async def more() -> list[int]:
        async with httpx.AsyncClient(timeout=120) as client:
            answers = await asyncio.gather(
                *(
                    client.post(
                        f"{proc.url}/api/v1/sessions/open",
                        json={"Login": "guessed", "Password": WRONG},
                    )
                    for _ in range(5)
                )
            )
        return [a.status_code for a in answers]

    assert asyncio.run(more()) == [401] * 5

    checked = _verify_count(proc.url) - verified_before
    records = _wrong_password_records(database, "guessed")
    assert 1 <= checked <= 3, f"{checked} wrong passwords checked with a limit of 3"
    # Every one checked is counted and recorded, the first (whose write failed at first) too.
    assert records["wrong login or password"] == checked, (checked, records)
    assert sum(records.values()) == 6, records
    conn = sqlite3.connect(f"file:{database}?mode=ro", uri=True, timeout=30)
    try:
        blocked, failures = conn.execute(
            "SELECT blocked, failed_attempts FROM users WHERE login = 'guessed'"
        ).fetchone()
    finally:
        conn.close()
    assert failures == checked
    assert blocked == (checked == 3)
