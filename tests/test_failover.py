"""Several nodes on a primary with a streaming standby: every connection goes to the primary,
whatever form the multi-host URL takes; a node on a standby says so; a promotion is followed
with nothing acknowledged lost (synchronous replication)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest

from sessiond.keys import KeyRing
from sessiond.store import BuildInfo, create_store
from sessiond.store.health import readiness
from sessiond.store.sql import SqlStore
from tests.infra.postgres import SUPERUSER, PostgresServer

from . import licences
from .conftest import ServerProcess, free_port, server_env

ADMIN_PASSWORD = "Admin-pw-1"
PASSWORD = "pw-1234"
#: A node follows a promotion within this (an upper bound that shows "did not stall").
FOLLOW_WITHIN = 30.0


def _hosts_url(database: str, servers: list[PostgresServer], form: str, attrs: str | None) -> str:
    """The URL of ``database`` on ``servers`` (tried in this order), in one of the three forms."""
    hosts = [("127.0.0.1", s.port) for s in servers]
    query = [f"target_session_attrs={attrs}"] if attrs else []
    if form == "netloc":
        where = ",".join(f"{h}:{p}" for h, p in hosts)
        url = f"postgresql+asyncpg://{SUPERUSER}@{where}/{database}"
    elif form == "host-params":
        url = f"postgresql+asyncpg://{SUPERUSER}@/{database}"
        query = [f"host={h}:{p}" for h, p in hosts] + query
    else:  # "host-and-port-lists"
        url = f"postgresql+asyncpg://{SUPERUSER}@/{database}"
        query = [
            "host=" + ",".join(h for h, _ in hosts),
            "port=" + ",".join(str(p) for _, p in hosts),
            *query,
        ]
    return url + ("?" + "&".join(query) if query else "")


def _database(url: str) -> str:
    return url.rsplit("/", 1)[1]


@contextmanager
def _nodes(root: Path, *urls: str, **more: str) -> Iterator[list[ServerProcess]]:
    """Running ``sessiond serve`` nodes, one on each of ``urls``, sharing a key ring and a
    licence with seats enough for every test here; ``more``: more settings."""
    licence = licences.write_unsigned(root / "licence.json", ConcurrentClient=5000)
    KeyRing.generate().save(root / "keys.json")
    servers = []
    for index, url in enumerate(urls):
        data_dir = root / f"node-{index}"
        env = server_env(
            data_dir,
            SESSIOND_DATABASE_URL=url,
            SESSIOND_SIGNATURE_KEYS_FILE=str(root / "keys.json"),
            SESSIOND_LICENCE_FILE=str(licence),
            SESSIOND_ADMIN_PASSWORD=ADMIN_PASSWORD,
            SESSIOND_SERVER_CODE=f"node-{index}",
            **more,
        )
        servers.append(ServerProcess(data_dir, free_port(), env, root / f"node-{index}.log"))
    try:
        for server in servers:
            server.start()
        yield servers
    finally:
        for server in servers:
            server.stop()


def _sign_in(node: ServerProcess, login: str, password: str = PASSWORD) -> str:
    answer = httpx.post(
        f"{node.url}/api/v1/sessions/open", json={"Login": login, "Password": password}, timeout=30
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["AuthToken"]
    return token


def _add_users(node: ServerProcess, *logins: str) -> None:
    admin = {"Tessa-Session": _sign_in(node, "admin", ADMIN_PASSWORD)}
    for login in logins:
        created = httpx.post(
            f"{node.url}/api/v1/users",
            json={"Login": login, "Password": PASSWORD},
            headers=admin,
            timeout=30,
        )
        assert created.status_code == 201, created.text


def _current(node: ServerProcess, token: str) -> httpx.Response:
    return httpx.get(
        f"{node.url}/api/v1/sessions/current", headers={"Tessa-Session": token}, timeout=30
    )


def _connections(server: PostgresServer, database: str, where: str = "true") -> int:
    return int(
        server.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE 'sessiond/%' "
            f"AND datname = '{database}' AND {where}"
        )
    )


def _until(check: Callable[[], bool], within: float) -> float:
    """Seconds until ``check()`` held; fails after ``within``."""
    start = time.monotonic()
    while not check():
        assert time.monotonic() - start < within, f"not within {within} s"
        time.sleep(0.1)
    return time.monotonic() - start


def _ready(node: ServerProcess) -> bool:
    try:
        return httpx.get(f"{node.url}/api/v1/health/ready", timeout=10).status_code == 200
    except httpx.TransportError:
        return False


# --- the URL forms ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("form", "attrs", "standby_first"),
    [
        ("netloc", "read-write", True),
        ("host-params", "read-write", True),
        ("host-params", "read-write", False),
        ("host-and-port-lists", "read-write", True),
        ("host-params", None, False),  # the URL: writes went right, reads did not
    ],
)
def test_every_url_form_reads_and_listens_on_the_primary(
    postgres_server: PostgresServer,
    postgres_standby: PostgresServer,
    tmp_path: Path,
    form: str,
    attrs: str | None,
    standby_first: bool,
) -> None:
    database = _database(postgres_server.new_database())
    postgres_standby.wait_until_replayed(postgres_server)
    order = [postgres_standby, postgres_server]
    url = _hosts_url(database, order if standby_first else order[::-1], form, attrs)
    with _nodes(tmp_path, url, url) as (a, b):
        _add_users(a, "rita")
        refused = 0
        rounds = 50
        for _ in range(rounds):
            token = _sign_in(a, "rita")
            assert _current(b, token).status_code == 200  # b reads it (and keeps it cached)
            closed = httpx.post(
                f"{a.url}/api/v1/sessions/close", headers={"Tessa-Session": token}, timeout=30
            )
            assert closed.json() == {"Closed": True}
            answer = _current(b, token)
            refused += answer.status_code == 401 and (
                answer.json()["error"]["code"] == "session_not_found"
            )
        assert refused == rounds
        for node in (a, b):
            assert httpx.get(f"{node.url}/api/v1/health/ready", timeout=10).status_code == 200
            assert httpx.get(f"{node.url}/api/v1/health", timeout=10).status_code == 200
        # Both nodes listen on the primary; nothing of theirs stays connected to the standby.
        assert _connections(postgres_server, database, "query LIKE 'LISTEN%'") == 2
        _until(lambda: _connections(postgres_standby, database) == 0, within=10)


def test_a_url_asking_for_a_standby_is_refused_at_start(
    postgres_server: PostgresServer, postgres_standby: PostgresServer, tmp_path: Path
) -> None:
    database = _database(postgres_server.new_database())
    url = _hosts_url(database, [postgres_server, postgres_standby], "netloc", "prefer-standby")
    url = url.replace(f"{SUPERUSER}@", f"{SUPERUSER}:Secret-pw-9@")
    started = _serve(tmp_path, url)
    assert started.returncode == 2, started.stderr
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "target_session_attrs=prefer-standby" in lines[0], lines
    assert "Secret-pw-9" not in started.stdout + started.stderr


def test_serve_on_the_standby_alone_is_refused_in_one_line(
    postgres_server: PostgresServer, postgres_standby: PostgresServer, tmp_path: Path
) -> None:
    database = _database(postgres_server.new_database())
    postgres_standby.wait_until_replayed(postgres_server)
    url = _hosts_url(database, [postgres_standby], "netloc", None) + "?password=Secret-pw-8"
    started = _serve(tmp_path, url)
    assert started.returncode == 3, started.stderr
    lines = started.stderr.strip().splitlines()
    assert len(lines) == 1 and "[store_read_only]" in lines[0], started.stderr
    assert "Secret-pw-8" not in started.stdout + started.stderr


async def test_unix_socket_hosts_reach_the_primary(
    postgres_server: PostgresServer, postgres_standby: PostgresServer
) -> None:
    database = _database(postgres_server.new_database())
    postgres_standby.wait_until_replayed(postgres_server)
    sockets = f"{quote(postgres_standby.tmpdir, safe='')},{quote(postgres_server.tmpdir, safe='')}"
    ports = f"{postgres_standby.port},{postgres_server.port}"
    for url in (
        f"postgresql+asyncpg://{SUPERUSER}@/{database}?host={sockets}&port={ports}",
        f"postgresql+asyncpg://{SUPERUSER}@{quote(postgres_server.tmpdir, safe='')}:"
        f"{postgres_server.port}/{database}",
    ):
        store = create_store(url)
        assert isinstance(store, SqlStore)
        try:
            await store.open(BuildInfo("test", "sessiond", None, ""), datetime.now(UTC))
            assert (await readiness(store.engine)).reason == "ready"
        finally:
            await store.close()


def _serve(root: Path, url: str) -> subprocess.CompletedProcess[str]:
    data_dir = root / "data"
    return subprocess.run(
        [sys.executable, "-m", "sessiond", "serve", "--port", str(free_port())],
        cwd=root,
        env=server_env(data_dir, SESSIOND_DATABASE_URL=url, SESSIOND_LOG_LEVEL="ERROR"),
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_writes_a_read_only_primary_refuses_are_503_store_read_only(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    url = postgres_server.new_database()
    database = _database(url)
    with _nodes(tmp_path, url) as [node]:
        _add_users(node, "tess")
        token = _sign_in(node, "tess")
        # The primary made read-only under the node (as a fencing operator would): every new
        # connection, and every one the node had, refuses writes (SQLSTATE 25006).
        postgres_server.query(
            f'ALTER DATABASE "{database}" SET default_transaction_read_only = on; '
            f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = '{database}'"
        )
        try:
            refused = httpx.post(
                f"{node.url}/api/v1/sessions/open",
                json={"Login": "tess", "Password": PASSWORD},
                timeout=30,
            )
            assert refused.status_code == 503, refused.text
            assert refused.json()["error"]["code"] == "store_read_only"
            ready = httpx.get(f"{node.url}/api/v1/health/ready", timeout=10)
            assert (ready.status_code, ready.json()["error"]["code"]) == (503, "store_read_only")
            assert _current(node, token).status_code == 200  # reads of the primary are right
        finally:
            postgres_server.query(
                f'ALTER DATABASE "{database}" RESET default_transaction_read_only; '
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                f"WHERE datname = '{database}'"
            )
        _until(lambda: _ready(node), within=FOLLOW_WITHIN)
        assert _sign_in(node, "tess")


# --- a standby, a switchover, a promotion -----------------------------------------------------


@pytest.fixture
def pair() -> Iterator[Callable[..., tuple[PostgresServer, PostgresServer]]]:
    """``make(synchronous=...)``: a primary and its standby of this test's own (a promotion
    ends the pair)."""
    made: list[PostgresServer] = []

    def make(*, synchronous: bool = False) -> tuple[PostgresServer, PostgresServer]:
        primary = PostgresServer()
        made.append(primary)
        standby = primary.standby(synchronous=synchronous)
        made.append(standby)
        return primary, standby

    yield make
    for server in made:
        server.stop()


def test_a_node_whose_server_comes_back_as_a_standby_says_so(
    pair: Callable[..., tuple[PostgresServer, PostgresServer]], tmp_path: Path
) -> None:
    primary, standby = pair()
    database = _database(primary.new_database())
    standby.wait_until_replayed(primary)
    alone = _hosts_url(database, [primary], "netloc", None)  # one host: the old primary
    both = _hosts_url(database, [primary, standby], "host-and-port-lists", None)
    with _nodes(tmp_path, alone, both) as (a, b):
        _add_users(a, "sam")
        token = _sign_in(a, "sam")
        assert _current(a, token).status_code == 200  # cached on a
        # A switchover: the primary stops, the standby is promoted, the old primary follows it.
        primary.halt()
        standby.promote()
        primary.follow(standby)
        assert primary.in_recovery()

        for path in ("/api/v1/health/ready", "/api/v1/health"):
            answer = httpx.get(f"{a.url}{path}", timeout=10)
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"]["code"] == "store_read_only"
        refused = httpx.post(
            f"{a.url}/api/v1/sessions/open", json={"Login": "sam", "Password": PASSWORD}
        )
        assert (refused.status_code, refused.json()["error"]["code"]) == (503, "store_read_only")
        stale = _current(a, token)  # never the cached answer
        assert (stale.status_code, stale.json()["error"]["code"]) == (503, "store_read_only")

        # The node whose URL names both follows the new primary.
        _until(lambda: _ready(b), within=FOLLOW_WITHIN)
        assert _current(b, token).status_code == 200
        assert _sign_in(b, "sam")


def test_a_promotion_is_followed_and_keeps_everything_acknowledged(
    pair: Callable[..., tuple[PostgresServer, PostgresServer]], tmp_path: Path
) -> None:
    primary, standby = pair(synchronous=True)
    database = _database(primary.new_database())
    standby.wait_until_replayed(primary)
    url = _hosts_url(database, [primary, standby], "host-params", "read-write")
    with _nodes(tmp_path, url, url) as nodes:
        logins = [f"user{i}" for i in range(8)]
        _add_users(nodes[0], *logins)
        signed_in: list[str] = []  # acknowledged sign-ins, not closed
        closed: list[str] = []  # acknowledged closes
        stop = asyncio.Event()

        async def traffic(worker: int) -> None:
            node = nodes[worker % 2]
            async with httpx.AsyncClient(base_url=node.url, timeout=30) as http:
                turn = 0
                while not stop.is_set():
                    turn += 1
                    try:
                        opened = await http.post(
                            "/api/v1/sessions/open",
                            json={"Login": logins[worker], "Password": PASSWORD},
                        )
                        if opened.status_code != 200:
                            await asyncio.sleep(0.05)
                            continue
                        token = opened.json()["AuthToken"]
                        signed_in.append(token)
                        if turn % 2:
                            continue  # every other session stays open
                        signed_in.remove(token)  # closing: unknown until acknowledged
                        answer = await http.post(
                            "/api/v1/sessions/close", headers={"Tessa-Session": token}
                        )
                        if answer.status_code == 200 and answer.json() == {"Closed": True}:
                            closed.append(token)
                    except httpx.TransportError:
                        await asyncio.sleep(0.05)

        async def run() -> float:
            workers = [asyncio.create_task(traffic(i)) for i in range(len(logins))]
            await asyncio.sleep(2)
            before = len(signed_in) + len(closed)
            primary.crash()
            standby.promote()
            promoted = time.monotonic()
            for node in nodes:  # each node's first 200 on the new primary
                await asyncio.to_thread(_until, lambda n=node: _ready(n), FOLLOW_WITHIN)
            followed = time.monotonic() - promoted
            await asyncio.sleep(1)  # traffic goes on on the new primary
            stop.set()
            await asyncio.gather(*workers)
            assert before > 0 and len(signed_in) + len(closed) > before
            return followed

        elapsed = asyncio.run(run())
        assert elapsed < FOLLOW_WITHIN
        assert not standby.in_recovery()
        for node in nodes:
            for token in signed_in:
                answer = _current(node, token)
                assert answer.status_code == 200, answer.text
            for token in closed:
                answer = _current(node, token)
                assert answer.status_code == 401, answer.text
                assert answer.json()["error"]["code"] == "session_not_found"


def test_a_frozen_primary_is_passed_over_once_the_standby_is_promoted(
    pair: Callable[..., tuple[PostgresServer, PostgresServer]], tmp_path: Path
) -> None:
    primary, standby = pair()
    database = _database(primary.new_database())
    standby.wait_until_replayed(primary)
    url = _hosts_url(database, [primary, standby], "host-and-port-lists", None)
    waits = {
        "SESSIOND_DATABASE_CONNECT_TIMEOUT": "2s",
        "SESSIOND_DATABASE_STATEMENT_TIMEOUT": "2s",
        "SESSIOND_DATABASE_POOL_TIMEOUT": "2s",
    }
    with _nodes(tmp_path, url, **waits) as [node]:
        _add_users(node, "uma")
        token = _sign_in(node, "uma")
        standby.wait_until_replayed(primary)
        # The old primary answers nothing (its machine frozen, or cut off by the network): a
        # connection to it waits without an error, and the hosts after it must still be tried.
        for pid in primary.pids():
            os.kill(pid, signal.SIGSTOP)
        try:
            standby.promote()
            _until(lambda: _ready(node), within=FOLLOW_WITHIN)
            # A validation read may still meet a connection to the frozen server once (it is
            # closed after database_statement_timeout): 503 then, never another answer.
            answers: list[int] = []
            _until(
                lambda: answers.append(_current(node, token).status_code) or answers[-1] == 200,
                within=FOLLOW_WITHIN,
            )
            assert set(answers) <= {503, 200}, answers
            assert _sign_in(node, "uma")
        finally:
            primary.crash()
