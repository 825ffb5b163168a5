"""Sign-in decides on what it has locked, against real server processes: one SQLite node, and
two nodes sharing one PostgreSQL database (requests alternate between them).

- Lockout is exact: with a limit of N, at most N wrong passwords are checked before the block,
  however many guesses arrive at once, and nothing signs in after the block.
- Concurrent valid sign-ins of one user all succeed with the lockout on.
- A sign-in racing a demotion or a block never yields a session with the old rights.
- A password change or reset ends the old sessions.
- Closing a session that is idle past its timeout says it was not open, and records it expired.
- Before the right password is shown, every refusal looks the same.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from uuid import uuid4

import httpx
import pytest

from sessiond.keys import KeyRing
from sessiond.token import AuthToken
from tests.infra.postgres import PostgresServer

from .conftest import ServerProcess, start_nodes

LIMIT = 3  # max_failed_login_attempts_before_blocked in these deployments
ADMIN_PASSWORD = "Admin-pw-1"
WRONG = "wrong login or password"  # the reason a checked, wrong password is recorded with
# Slower than the rest of the suite's Argon2, so that a password check is a window worth racing.
ARGON2_ENV = {
    "SESSIOND_ARGON2__TIME_COST": "2",
    "SESSIOND_ARGON2__MEMORY_COST": "16384",
}


@dataclass
class Deployment:
    kind: str
    servers: list[ServerProcess]

    def url(self, i: int = 0) -> str:
        return self.servers[i % len(self.servers)].url

    def admin_headers(self) -> dict[str, str]:
        answer = httpx.post(
            f"{self.url()}/api/v1/sessions/open",
            json={"Login": "admin", "Password": ADMIN_PASSWORD},
            timeout=30,
        )
        assert answer.status_code == 200, answer.text
        return {"Tessa-Session": answer.json()["AuthToken"]}

    def add_user(self, login: str, password: str | None = "User-pw-1", **fields: Any) -> str:
        body = {"Login": login, **fields}
        if password is not None:
            body["Password"] = password
        created = httpx.post(
            f"{self.url()}/api/v1/users", json=body, headers=self.admin_headers(), timeout=30
        )
        assert created.status_code == 201, created.text
        return str(created.json()["ID"])

    def audit(self, user_id: str) -> list[dict[str, Any]]:
        out = self.servers[0].cli("audit", "export")
        assert out.returncode == 0, out.stderr
        records = [json.loads(line) for line in out.stdout.splitlines()]
        return [r for r in records if r["user_id"] == user_id]


def _deployment(
    kind: str, root: Path, postgres: PostgresServer, **env: str
) -> Iterator[Deployment]:
    """The servers of a deployment of ``kind`` (one node on SQLite, or two on one PostgreSQL
    database), stopped when the generator ends."""
    KeyRing.generate().save(root / "keys.json")
    common = {
        **ARGON2_ENV,
        "SESSIOND_ADMIN_PASSWORD": ADMIN_PASSWORD,
        "SESSIOND_SIGNATURE_KEYS_FILE": str(root / "keys.json"),
        **env,
    }
    names = ["node"]
    if kind == "postgres":
        common["SESSIOND_DATABASE_URL"] = postgres.new_database()
        names = ["node-a", "node-b"]
    servers = start_nodes(root, names, **common)
    try:
        yield Deployment(kind, servers)
    finally:
        for server in servers:
            server.stop()


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
) -> Iterator[Deployment]:
    kind = request.param
    yield from _deployment(
        kind,
        tmp_path_factory.mktemp(f"rules-{kind}"),
        postgres_server,
        SESSIOND_SECURITY__MAX_FAILED_LOGIN_ATTEMPTS_BEFORE_BLOCKED=str(LIMIT),
    )


async def _post_all(requests: list[tuple[str, dict[str, Any]]]) -> list[httpx.Response]:
    async with httpx.AsyncClient(timeout=120) as http:
        return list(await asyncio.gather(*(http.post(url, json=body) for url, body in requests)))


def _check_lockout_sequence(records: list[dict[str, Any]]) -> Counter[str]:
    """Walk the user's audit trail in order: between two sign-ins at most LIMIT wrong passwords
    are checked, the LIMIT-th blocks (once), and after the block nothing is checked or opened."""
    checked = 0
    blocked = False
    seen: Counter[str] = Counter()
    for record in records:
        action = record["action"]
        seen[action] += 1
        if action == "LoginFailed" and record["details"]["reason"] == WRONG:
            assert not blocked, "a password was checked after the block"
            checked += 1
            assert checked <= LIMIT, f"{checked} wrong passwords checked before the block"
        elif action == "UserBlocked":
            assert not blocked, "a second UserBlocked record for one block"
            assert checked == LIMIT
            blocked = True
        elif action in ("Login", "PasswordChanged"):  # the right password: counting restarts
            assert not blocked, f"{action} after the block"
            checked = 0
    assert blocked
    return seen


@pytest.mark.parametrize("route", ["open", "change-password"])
def test_fifty_parallel_guesses_check_at_most_the_limit(deployment: Deployment, route: str) -> None:
    login = f"guess-{route}-{uuid4().hex[:6]}"
    user_id = deployment.add_user(login, "Right-pw-1")
    requests = []
    for i in range(50):
        password = "Right-pw-1" if i == 36 else f"Wrong-{i}"
        if route == "open":
            body = {"Login": login, "Password": password}
        else:
            body = {"Login": login, "OldPassword": password, "NewPassword": "Changed-pw-2"}
        requests.append((f"{deployment.url(i)}/api/v1/sessions/{route}", body))
    answers = asyncio.run(_post_all(requests))

    statuses = Counter(a.status_code for a in answers)
    assert set(statuses) <= {200, 401}, statuses
    refusals = {a.content for a in answers if a.status_code == 401}
    assert len(refusals) == 1  # every refusal the same answer
    assert json.loads(refusals.pop())["error"]["code"] == "invalid_credentials"
    seen = _check_lockout_sequence(deployment.audit(user_id))
    assert seen["UserBlocked"] == 1
    if route == "open":
        assert seen["Login"] == statuses[200]
    # Blocked now: the right password opens nothing.
    again = httpx.post(
        f"{deployment.url()}/api/v1/sessions/open",
        json={"Login": login, "Password": "Right-pw-1"},
        timeout=30,
    )
    assert again.status_code == 401


def test_ten_parallel_valid_sign_ins_with_the_lockout_on_all_succeed(
    deployment: Deployment,
) -> None:
    login = f"busy-{uuid4().hex[:6]}"
    deployment.add_user(login, "Right-pw-1")
    answers = asyncio.run(
        _post_all(
            [
                (
                    f"{deployment.url(i)}/api/v1/sessions/open",
                    {"Login": login, "Password": "Right-pw-1"},
                )
                for i in range(10)
            ]
        )
    )
    assert [a.status_code for a in answers] == [200] * 10, [a.text for a in answers]
    assert len({a.json()["AuthToken"] for a in answers}) == 10


async def _sign_in_loops(
    deployment: Deployment, login: str, change: Any, loops: int = 4, after: float = 1.5
) -> tuple[list[tuple[float, httpx.Response]], float]:
    """Sign in over and over from ``loops`` tasks; ``change()`` runs in the middle. Returns each
    answer with the time its request was sent, and the time the change was answered. (A node
    checks one sign-in of an account at a time: ``after`` leaves room for several.)"""
    answers: list[tuple[float, httpx.Response]] = []
    stop = asyncio.Event()
    progress = asyncio.Event()  # set at every answer
    changed_at = 0.0

    async def loop(i: int) -> None:
        async with httpx.AsyncClient(timeout=60) as http:
            n = i
            while not stop.is_set():
                sent = time.monotonic()
                answer = await http.post(
                    f"{deployment.url(n)}/api/v1/sessions/open",
                    json={"Login": login, "Password": "Right-pw-1"},
                )
                answers.append((sent, answer))
                progress.set()
                n += 1

    async def answered(enough: int, since: float) -> None:
        """Wait ``after`` seconds, and on until ``enough`` answers to requests sent after
        ``since`` have come back (a loaded machine signs in slowly), 60 s at most."""
        await asyncio.sleep(after)
        deadline = time.monotonic() + 60
        while sum(sent > since for sent, _ in answers) < enough:
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), max(0.0, deadline - time.monotonic()))
            except TimeoutError:
                return

    tasks = [asyncio.create_task(loop(i)) for i in range(loops)]
    await answered(loops + 1, 0.0)  # sign-ins done before the change, and more in flight
    await asyncio.to_thread(change)
    changed_at = time.monotonic()
    await answered(loops + 1, changed_at)
    stop.set()
    await asyncio.gather(*tasks)
    return answers, changed_at


def _still_valid(deployment: Deployment, auth: str) -> bool:
    answer = httpx.get(
        f"{deployment.url()}/api/v1/sessions/current",
        headers={"Tessa-Session": auth},
        timeout=30,
    )
    return answer.status_code == 200


def test_a_sign_in_racing_a_demotion_never_keeps_the_old_rights(deployment: Deployment) -> None:
    login = f"boss-{uuid4().hex[:6]}"
    deployment.add_user(login, "Right-pw-1", AccessLevel="Administrator")
    admin = deployment.admin_headers()

    def demote() -> None:
        answer = httpx.patch(
            f"{deployment.url(1)}/api/v1/users/{login}",
            json={"AccessLevel": "Regular"},
            headers=admin,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    answers, changed_at = asyncio.run(_sign_in_loops(deployment, login, demote))
    opened = [(sent, a.json()) for sent, a in answers if a.status_code == 200]
    assert len(opened) == len(answers) and len(opened) > 8
    administrators = [body for _, body in opened if 'AccessLevel="Administrator"' in body["Token"]]
    assert administrators, "no sign-in happened before the demotion"
    for sent, body in opened:
        if sent > changed_at:
            assert 'AccessLevel="Regular"' in body["Token"]
    alive = [body for body in administrators if _still_valid(deployment, body["AuthToken"])]
    assert not alive, f"{len(alive)} sessions kept the administrator's rights after the demotion"


def test_a_sign_in_racing_a_block_never_outlives_it(deployment: Deployment) -> None:
    login = f"leaver-{uuid4().hex[:6]}"
    deployment.add_user(login, "Right-pw-1")
    admin = deployment.admin_headers()

    def block() -> None:
        answer = httpx.post(
            f"{deployment.url(1)}/api/v1/users/{login}/block",
            json={},
            headers=admin,
            timeout=30,
        )
        assert answer.status_code == 200, answer.text

    answers, changed_at = asyncio.run(_sign_in_loops(deployment, login, block))
    opened = [(sent, a.json()) for sent, a in answers if a.status_code == 200]
    assert opened, "no sign-in happened before the block"
    assert all(sent < changed_at for sent, _ in opened)
    alive = [body for _, body in opened if _still_valid(deployment, body["AuthToken"])]
    assert not alive, f"{len(alive)} sessions outlived the block"


def _open(deployment: Deployment, login: str, password: str, i: int = 0) -> str:
    answer = httpx.post(
        f"{deployment.url(i)}/api/v1/sessions/open",
        json={"Login": login, "Password": password},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["AuthToken"])


def test_a_password_change_or_reset_ends_the_old_sessions(deployment: Deployment) -> None:
    login = f"changer-{uuid4().hex[:6]}"
    deployment.add_user(login, "Right-pw-1")
    old = [_open(deployment, login, "Right-pw-1", i) for i in range(2)]
    changed = httpx.post(
        f"{deployment.url(1)}/api/v1/sessions/change-password",
        json={"Login": login, "OldPassword": "Right-pw-1", "NewPassword": "Second-pw-2"},
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    assert not any(_still_valid(deployment, auth) for auth in old)

    # With the current session's header, the change keeps that one and ends the others.
    current, other = (_open(deployment, login, "Second-pw-2", i) for i in range(2))
    changed = httpx.post(
        f"{deployment.url()}/api/v1/sessions/change-password",
        json={"Login": login, "OldPassword": "Second-pw-2", "NewPassword": "Third-pw-3"},
        headers={"Tessa-Session": current},
        timeout=30,
    )
    assert changed.status_code == 200, changed.text
    assert _still_valid(deployment, current)
    assert not _still_valid(deployment, other)

    later = [_open(deployment, login, "Third-pw-3", i) for i in range(2)]
    reset = httpx.post(
        f"{deployment.url(1)}/api/v1/users/{login}/password",
        json={"Password": "Fourth-pw-4"},
        headers=deployment.admin_headers(),
        timeout=30,
    )
    assert reset.status_code == 200, reset.text
    assert not any(_still_valid(deployment, auth) for auth in [current, *later])


def test_before_the_right_password_every_refusal_is_the_same(deployment: Deployment) -> None:
    tag = uuid4().hex[:6]
    deployment.add_user(f"known-{tag}", "Right-pw-1")
    deployment.add_user(f"blocked-{tag}", "Right-pw-1")
    deployment.add_user(f"none-{tag}", "Right-pw-1", LoginType="None")
    deployment.add_user(f"windows-{tag}", None, LoginType="Windows", Account=f"CORP\\w{tag}")
    blocked = httpx.post(
        f"{deployment.url()}/api/v1/users/blocked-{tag}/block",
        json={},
        headers=deployment.admin_headers(),
        timeout=30,
    )
    assert blocked.status_code == 200
    attempts = {
        "unknown login": (f"nobody-{tag}", "Right-pw-1"),
        "wrong password": (f"known-{tag}", "Wrong-pw-1"),
        "blocked, wrong password": (f"blocked-{tag}", "Wrong-pw-1"),
        "blocked, right password": (f"blocked-{tag}", "Right-pw-1"),
        "login type None": (f"none-{tag}", "Right-pw-1"),
        "Windows sign-in not configured": (f"windows-{tag}", "Right-pw-1"),
    }
    answers = {}
    for what, (login, password) in attempts.items():
        answer = httpx.post(
            f"{deployment.url()}/api/v1/sessions/open",
            json={"Login": login, "Password": password},
            timeout=30,
        )
        headers = {k: v for k, v in answer.headers.items() if k.lower() != "date"}
        answers[what] = (answer.status_code, answer.content, headers)
    first = answers["unknown login"]
    assert first[0] == 401 and json.loads(first[1])["error"]["code"] == "invalid_credentials"
    for what, answer in answers.items():
        assert answer == first, f"{what} answers differently: {answer}"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def idle_deployment(
    request: pytest.FixtureRequest,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_server: PostgresServer,
) -> Iterator[Deployment]:
    kind = request.param
    yield from _deployment(
        kind,
        tmp_path_factory.mktemp(f"idle-{kind}"),
        postgres_server,
        SESSIOND_SECURITY__SESSION_INACTIVITY_TIME="2",
        SESSIOND_SWEEP_INTERVAL="3600",
    )


def test_closing_an_idle_expired_session_says_it_was_not_open(
    idle_deployment: Deployment,
) -> None:
    d = idle_deployment
    login = f"idler-{uuid4().hex[:6]}"
    user_id = d.add_user(login, "Right-pw-1")
    own, by_admin, all_of_user = (_open(d, login, "Right-pw-1", i) for i in range(3))
    time.sleep(2.5)  # idle past session_inactivity_time; the sweeper is not due for an hour
    closed = httpx.post(
        f"{d.url(1)}/api/v1/sessions/close", headers={"Tessa-Session": own}, timeout=30
    )
    assert closed.json() == {"Closed": False}
    admin = d.admin_headers()
    sid = AuthToken.from_xml(by_admin).session_id
    answer = httpx.delete(f"{d.url(1)}/api/v1/sessions/{sid}", headers=admin, timeout=30)
    assert answer.json() == {"Closed": False}
    answer = httpx.delete(f"{d.url()}/api/v1/users/{login}/sessions", headers=admin, timeout=30)
    assert answer.json() == {"ClosedSessions": 0}
    actions = Counter(r["action"] for r in d.audit(user_id))
    assert actions["SessionExpired"] == 3
    assert actions["Logout"] == 0 and actions["SessionClosedByAdmin"] == 0
    for auth in (own, by_admin, all_of_user):
        assert not _still_valid(d, auth)
