"""Two ``sessiond serve`` nodes behind Debian's pgbouncer in transaction pooling.

``database_url`` leads to pgbouncer (``database_pooler = "pgbouncer"``), whose few server
connections the transactions of both nodes share; ``database_listen_url`` is a direct connection
to PostgreSQL, which only listens for the other node's changes. Each node polls the
configuration version once a minute only, so a change seen on the other node within the test's
seconds came by notification.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from prometheus_client.parser import text_string_to_metric_families

from sessiond.errors import SettingsError
from sessiond.keys import KeyRing
from sessiond.settings import load_settings, share_connections
from sessiond.store import BuildInfo, create_store
from sessiond.store.pgurl import parse
from sessiond.store.sql import SqlStore
from tests.infra.pgbouncer import PgBouncer
from tests.infra.postgres import PostgresServer

from .conftest import ServerProcess, free_port, server_env

ADMIN_PASSWORD = "Admin-pw-1"
WAIT = 10.0  # seconds: the most a step waits for a change to reach the other node
#: What pgbouncer in transaction pooling does to named prepared statements and session state.
POOLING_ERRORS = re.compile(
    r"prepared statement .* (does not exist|already exists)|unsupported startup parameter"
    r"|Traceback",
    re.IGNORECASE,
)

StartNodes = Callable[..., list[ServerProcess]]


@pytest.fixture
def start_nodes(
    postgres_server: PostgresServer, pgbouncer: PgBouncer, tmp_path: Path
) -> Iterator[StartNodes]:
    """``start(n, listen=True, **env)``: n nodes on one new database, reached through
    pgbouncer; ``listen``: with the direct connection as ``database_listen_url``."""
    direct = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")
    started: list[ServerProcess] = []

    def start(count: int, *, listen: bool = True, **extra: str) -> list[ServerProcess]:
        nodes = []
        for i in range(count):
            name = f"node-{len(started) + i}"
            data_dir = tmp_path / name
            env = server_env(
                data_dir,
                SESSIOND_DATABASE_URL=pgbouncer.url(direct),
                SESSIOND_DATABASE_POOLER="pgbouncer",
                SESSIOND_SIGNATURE_KEYS_FILE=str(tmp_path / "keys.json"),
                SESSIOND_ADMIN_PASSWORD=ADMIN_PASSWORD,
                SESSIOND_SERVER_CODE=name,
                SESSIOND_CONFIGURATION_POLL_INTERVAL="60",
                **extra,
            )
            if listen:
                env["SESSIOND_DATABASE_LISTEN_URL"] = direct
            nodes.append(ServerProcess(data_dir, free_port(), env, tmp_path / f"{name}.log"))
        started.extend(nodes)
        for node in nodes:  # one after another: the first one migrates
            node.start()
        return nodes

    yield start
    for node in started:
        node.stop()


def sign_in(node: ServerProcess, login: str = "admin", password: str = ADMIN_PASSWORD) -> str:
    answer = httpx.post(
        f"{node.url}/api/v1/sessions/open",
        json={"Login": login, "Password": password},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    token: str = answer.json()["AuthToken"]
    return token


def until(check: Callable[[], bool]) -> bool:
    """Whether ``check()`` came true within WAIT seconds."""
    deadline = time.monotonic() + WAIT
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.05)
    return check()


def metric(node: ServerProcess, name: str) -> float:
    text = httpx.get(f"{node.url}/metrics", timeout=10).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
                return float(sample.value)
    raise AssertionError(f"{name} not in /metrics")


def pooling_errors(*logs: str) -> list[str]:
    return [line for log in logs for line in log.splitlines() if POOLING_ERRORS.search(line)]


def test_two_nodes_behind_pgbouncer_agree_at_once(
    start_nodes: StartNodes, pgbouncer: PgBouncer
) -> None:
    a, b = start_nodes(2)
    admin = {"Tessa-Session": sign_in(a)}
    # validation, admin routes and the configuration, each node answering for the other's work
    assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=admin).status_code == 200
    created = httpx.post(
        f"{b.url}/api/v1/users", json={"Login": "ivan", "Password": "Ivan-pw-1"}, headers=admin
    )
    assert created.status_code == 201, created.text
    logins = [user["Login"] for user in httpx.get(f"{a.url}/api/v1/users", headers=admin).json()]
    assert "ivan" in logins
    blocked = httpx.post(f"{a.url}/api/v1/users/ivan/block", json={}, headers=admin)
    assert blocked.status_code == 200, blocked.text
    refused = httpx.post(
        f"{b.url}/api/v1/sessions/open", json={"Login": "ivan", "Password": "Ivan-pw-1"}
    )
    assert refused.status_code == 403, refused.text
    assert httpx.post(f"{b.url}/api/v1/users/ivan/unblock", headers=admin).status_code == 200
    ivan = {"Tessa-Session": sign_in(a, "ivan", "Ivan-pw-1")}

    def version(node: ServerProcess) -> int:
        answer = httpx.get(f"{node.url}/api/v1/configuration", headers=admin, timeout=10)
        assert answer.status_code == 200, answer.text
        return int(answer.json()["Version"])

    before = version(b)
    increment = httpx.post(f"{a.url}/api/v1/configuration/increment-version", headers=admin)
    assert increment.status_code == 200, increment.text
    # B polls once a minute: the new version reached it by notification, over the direct
    # connection (through pgbouncer LISTEN cannot work).
    assert until(lambda: version(b) == before + 1)
    assert metric(a, "sessiond_store_listening") == metric(b, "sessiond_store_listening") == 1

    # A session closed on A is refused on B at the next request, again and again.
    for _ in range(20):
        token = {"Tessa-Session": sign_in(a, "ivan", "Ivan-pw-1")}
        assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=token).status_code == 200
        closed = httpx.post(f"{a.url}/api/v1/sessions/close", headers=token)
        assert closed.json() == {"Closed": True}
        gone = httpx.get(f"{b.url}/api/v1/sessions/current", headers=token)
        assert gone.status_code == 401, gone.text
        assert gone.json()["error"]["code"] == "session_not_found"
    assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=ivan).status_code == 200
    ready = httpx.get(f"{b.url}/api/v1/health/ready", timeout=10)
    assert ready.status_code == 200, ready.text
    logs = (a.log_path.read_text(), b.log_path.read_text(), pgbouncer.log_text())
    assert pooling_errors(*logs) == []


def test_many_parallel_sign_ins_share_pgbouncers_connections(
    start_nodes: StartNodes, pgbouncer: PgBouncer
) -> None:
    """pgbouncer has fewer server connections than the two nodes have clients, so every
    transaction may run on a server connection another client's transaction just used."""
    a, b = start_nodes(2)
    admin = {"Tessa-Session": sign_in(a)}
    logins = [f"p{i}" for i in range(20)]
    for login in logins:
        created = httpx.post(
            f"{a.url}/api/v1/users", json={"Login": login, "Password": "Pw-1234-x"}, headers=admin
        )
        assert created.status_code == 201, created.text
    nodes = (a, b)

    async def race() -> tuple[Counter[int], list[str]]:
        async with httpx.AsyncClient(timeout=60) as http:

            async def one(i: int) -> tuple[int, str]:
                node = nodes[i % 2]
                opened = await http.post(
                    f"{node.url}/api/v1/sessions/open",
                    json={"Login": logins[i % len(logins)], "Password": "Pw-1234-x"},
                )
                if opened.status_code != 200:
                    return opened.status_code, opened.text
                token = {"Tessa-Session": opened.json()["AuthToken"]}
                other = nodes[(i + 1) % 2]
                checked = await http.get(f"{other.url}/api/v1/sessions/current", headers=token)
                return checked.status_code, checked.text

            answers = await asyncio.gather(*(one(i) for i in range(200)))
        return Counter(status for status, _ in answers), [
            text for status, text in answers if status != 200
        ]

    statuses, refusals = asyncio.run(race())
    assert statuses == {200: 200}, refusals[:3]
    listed = httpx.get(f"{b.url}/api/v1/sessions", headers=admin, timeout=30)
    assert listed.status_code == 200, listed.text
    assert len(listed.json()) == 201  # the 200 sign-ins and the administrator's
    logs = (a.log_path.read_text(), b.log_path.read_text(), pgbouncer.log_text())
    assert pooling_errors(*logs) == []


def test_without_a_listen_url_a_node_says_notifications_are_not_available(
    start_nodes: StartNodes,
) -> None:
    """Through pgbouncer and without database_listen_url the node does not listen (LISTEN
    through transaction pooling would hear nothing, silently): it says so at start and in
    sessiond_store_listening, and a closed session is still refused on the other node."""
    a, b = start_nodes(2, listen=False)
    for node in (a, b):
        assert "notifications are not available" in node.log_path.read_text()
        assert "database_listen_url" in node.log_path.read_text()
        assert metric(node, "sessiond_store_listening") == 0
    token = {"Tessa-Session": sign_in(a)}
    assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=token).status_code == 200
    assert httpx.post(f"{a.url}/api/v1/sessions/close", headers=token).json() == {"Closed": True}
    assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=token).status_code == 401


def test_administrative_commands_run_through_pgbouncer_again_and_again(
    start_nodes: StartNodes,
) -> None:
    """Each command is a new client of pgbouncer that may get the server connection the one
    before it used: it must find no prepared statement of its own name left there."""
    [node] = start_nodes(1)
    for i in range(4):
        added = node.cli("users", "add", f"cli{i}", "--password", "Cli-pw-1234")
        assert added.returncode == 0, added.stderr
        listed = node.cli("users", "list")
        assert listed.returncode == 0, listed.stderr
        assert f"cli{i}" in listed.stdout
    assert pooling_errors(node.log_path.read_text()) == []


def test_pgbouncer_without_database_pooler_is_refused_in_one_line(
    postgres_server: PostgresServer, pgbouncer: PgBouncer, tmp_path: Path
) -> None:
    """Without database_pooler, sessiond sets statement_timeout as it connects, which
    pgbouncer refuses: the start ends with one line naming the settings to change."""
    data_dir = tmp_path / "sessiond-data"
    url = pgbouncer.url(postgres_server.new_database())
    node = ServerProcess(
        data_dir,
        free_port(),
        server_env(data_dir, SESSIOND_DATABASE_URL=url),
        tmp_path / "node.log",
    )
    started = node.cli("serve", "--port", str(node.port))
    assert started.returncode != 0
    assert "Traceback" not in started.stderr + started.stdout
    [line] = [line for line in started.stderr.splitlines() if "error" in line]
    assert "database_pooler" in line and "database_listen_url" in line, started.stderr


def test_the_pooler_settings_are_checked_and_the_listen_urls_password_never_shown(
    tmp_path: Path,
) -> None:
    with pytest.raises(SettingsError, match="database_pooler"):
        load_settings(None, data_dir=tmp_path, database_pooler="pgbouncr")
    with pytest.raises(SettingsError, match=r"database_listen_url .*is for PostgreSQL"):
        load_settings(None, data_dir=tmp_path, database_listen_url="sqlite+aiosqlite:///x.db")
    settings = load_settings(
        None,
        data_dir=tmp_path,
        database_url="postgresql+asyncpg://sessiond:pool-secret@pgbouncer:6432/sessiond",
        database_pooler="pgbouncer",
        database_listen_url="postgresql+asyncpg://sessiond:direct-secret@db:5432/sessiond",
    )
    assert settings.database_pools.pooler == "pgbouncer"
    assert "direct-secret" not in repr(settings) + str(settings)


async def test_behind_pgbouncer_the_statement_timeout_holds_in_each_transaction_only(
    postgres_server: PostgresServer, pgbouncer: PgBouncer
) -> None:
    """PostgreSQL's statement_timeout, which pgbouncer will not take as a startup parameter,
    is set in every transaction of the store; it ends with the transaction, so the server
    connection goes on to the next client as it came."""
    url = pgbouncer.url(postgres_server.new_database())
    pools = replace(share_connections(3, 5.0, "sessiond/timeouts"), statement_timeout=1.5)
    store = create_store(url, pools=replace(pools, pooler="pgbouncer"))
    assert isinstance(store, SqlStore)
    await store.open(BuildInfo("test", "sessiond", None, ""), datetime.now(UTC))
    try:
        async with store.engine.connect() as conn:
            assert await conn.scalar(sa.text("SHOW statement_timeout")) == "1500ms"
            with pytest.raises(sa.exc.DBAPIError, match="statement timeout"):
                await conn.execute(sa.text("SELECT pg_sleep(5)"))
    finally:
        await store.close()
    # A client of its own, without a timeout, on one of the pool's 6 server connections.
    other = await parse(url).connect(statement_cache_size=0)
    try:
        for _ in range(12):
            assert await other.fetchval("SHOW statement_timeout") == "0"
    finally:
        await other.close()
