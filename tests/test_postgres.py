"""Several nodes on one PostgreSQL database: seats, revocation and the version stay exact."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
import sqlalchemy.ext.asyncio as sa_async
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sessiond.auth import PasswordCredentials
from sessiond.errors import SessionNotFound
from sessiond.keys import KeyRing
from sessiond.models import AuditAction, ClientInfo
from sessiond.service import Actor, SessionService
from sessiond.settings import load_settings
from sessiond.store import create_store
from sessiond.store.schema import metadata
from sessiond.store.sql import SqlStore
from tests.infra.postgres import PostgresServer

from . import licences
from .conftest import FAST_ARGON2, Clock, ServerProcess, free_port, server_env, start_nodes

SYSTEM = Actor.system()
CLIENT = ClientInfo()


@pytest.fixture
async def nodes(postgres_server: PostgresServer, tmp_path: Path, clock: Clock) -> Any:
    """``make(n)``: n services (nodes), each with its own connection pool, one database."""
    url = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")  # every node shares the key ring
    started: list[SessionService] = []

    async def make(count: int, **overrides: Any) -> list[SessionService]:
        settings = load_settings(
            None,
            database_url=url,
            data_dir=tmp_path,
            signature_keys_file=tmp_path / "keys.json",
            argon2=FAST_ARGON2,
            configuration_poll_interval=0,
            **overrides,
        )
        services = [
            SessionService(
                settings,
                create_store(url),
                KeyRing.load(tmp_path / "keys.json"),
                clock=clock,
            )
            for _ in range(count)
        ]
        await asyncio.gather(*(s.start() for s in services))  # they migrate one at a time
        started.extend(services)
        return services

    yield make
    for service in started:
        await service.close()


async def test_the_migrations_create_exactly_the_declared_schema(nodes: Callable[..., Any]) -> None:
    [node] = await nodes(1)
    assert isinstance(node.store, SqlStore)

    def diff(conn: sa.Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))

    async with node.store.engine.connect() as conn:
        assert await conn.run_sync(diff) == []


async def test_a_session_closed_on_one_node_is_refused_by_the_others(
    nodes: Callable[..., Any],
) -> None:
    a, b = await nodes(2)
    await a.users.add_user(SYSTEM, "nina", password="Nina-pw-1")
    token = (await a.signin.open_session(PasswordCredentials("nina", "Nina-pw-1"), CLIENT)).token
    auth = token.to_auth_xml()
    assert (await b.sessions.validate(auth)).token == token
    assert await a.sessions.close_session(auth) is True
    with pytest.raises(SessionNotFound):
        await b.sessions.validate(auth)


async def test_two_nodes_closing_one_session_at_once_close_it_once(
    nodes: Callable[..., Any],
) -> None:
    a, b = await nodes(2)
    await a.users.add_user(SYSTEM, "oleg", password="Oleg-pw-1")
    for _ in range(10):
        auth = (
            await a.signin.open_session(PasswordCredentials("oleg", "Oleg-pw-1"), CLIENT)
        ).token.to_auth_xml()
        results = await asyncio.gather(
            a.sessions.close_session(auth), b.sessions.close_session(auth)
        )
        assert sorted(results) == [False, True]
    assert len(await a.audit.records(action=AuditAction.LOGOUT)) == 10


async def test_the_configuration_version_is_shared(nodes: Callable[..., Any]) -> None:
    a, b = await nodes(2)
    before = await b.configuration.version()
    await asyncio.gather(*(a.configuration.increment(SYSTEM) for _ in range(5)))
    await asyncio.gather(*(b.configuration.increment(SYSTEM) for _ in range(5)))
    assert await a.configuration.version() == await b.configuration.version() == before + 10


async def test_200_concurrent_opens_on_three_nodes_for_10_seats(
    nodes: Callable[..., Any],
) -> None:
    a, b, c = await nodes(3)
    await a.licensing.install(json.dumps({"Licence": licences.body(ConcurrentClient=10)}))
    for node in (b, c):  # the other nodes read the licence from the database
        await node.configuration.version()
    logins = [f"racer{i}" for i in range(20)]
    for login in logins:
        await a.users.add_user(SYSTEM, login, password="pw-1234")
    services = (a, b, c)
    results = await asyncio.gather(
        *(
            services[i % 3].signin.open_session(
                PasswordCredentials(logins[i % 20], "pw-1234"), CLIENT
            )
            for i in range(200)
        ),
        return_exceptions=True,
    )
    kinds = Counter(type(r).__name__ for r in results)
    assert kinds == {"Opened": 10, "LicenceLimitReached": 190}
    assert len(await c.store.list_sessions()) == 10


async def test_deactivate_oldest_across_nodes_keeps_the_seat_count(
    nodes: Callable[..., Any],
) -> None:
    a, b = await nodes(2, licence_policy="deactivate_oldest")
    await a.licensing.install(json.dumps({"Licence": licences.body(ConcurrentClient=4)}))
    await b.configuration.version()
    for i in range(2):
        await a.users.add_user(SYSTEM, f"pair{i}", password="pw-1234")
    results = await asyncio.gather(
        *(
            (a, b)[i % 2].signin.open_session(
                PasswordCredentials(f"pair{i % 2}", "pw-1234"), CLIENT
            )
            for i in range(40)
        ),
        return_exceptions=True,
    )
    opened = [r for r in results if not isinstance(r, BaseException)]
    assert len(await a.store.list_sessions()) == 4
    displaced = await a.audit.records(action=AuditAction.SESSION_DEACTIVATED)
    assert len(displaced) == len(opened) - 4


def test_two_server_processes_share_one_database(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = postgres_server.new_database()
    root = tmp_path_factory.mktemp("two-nodes")
    licence = licences.write_unsigned(root / "licence.json", ConcurrentClient=5, ConcurrentWeb=1)
    KeyRing.generate().save(root / "keys.json")
    servers = start_nodes(
        root,
        ["node-a", "node-b"],
        SESSIOND_DATABASE_URL=url,
        SESSIOND_SIGNATURE_KEYS_FILE=str(root / "keys.json"),
        SESSIOND_LICENCE_FILE=str(licence),
        SESSIOND_ADMIN_PASSWORD="Admin-pw-1",
    )
    try:
        a, b = servers
        admin = httpx.post(
            f"{a.url}/api/v1/sessions/open",
            json={"Login": "admin", "Password": "Admin-pw-1", "ServiceType": "WebClient"},
        ).json()
        headers = {"Tessa-Session": admin["AuthToken"]}
        assert httpx.get(f"{b.url}/api/v1/sessions/current", headers=headers).status_code == 200
        for i in range(5):
            created = httpx.post(
                f"{b.url}/api/v1/users",
                json={"Login": f"u{i}", "Password": "pw-1234"},
                headers=headers,
            )
            assert created.status_code == 201, created.text

        async def race() -> Counter[int]:
            async with httpx.AsyncClient(timeout=60) as http:
                answers = await asyncio.gather(
                    *(
                        http.post(
                            f"{servers[i % 2].url}/api/v1/sessions/open",
                            json={"Login": f"u{i % 5}", "Password": "pw-1234"},
                        )
                        for i in range(60)
                    )
                )
            return Counter(r.status_code for r in answers)

        assert asyncio.run(race()) == {200: 5, 429: 55}
        closed = httpx.post(f"{b.url}/api/v1/sessions/close", headers=headers).json()
        assert closed == {"Closed": True}
        refused = httpx.get(f"{a.url}/api/v1/sessions/current", headers=headers)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "session_not_found"
    finally:
        for server in servers:
            server.stop()


async def test_concurrent_validations_each_get_their_own_session(
    nodes: Callable[..., Any],
) -> None:
    a, b = await nodes(2)
    await a.users.add_user(SYSTEM, "vlad", password="Vlad-pw-1")
    tokens = [
        (await a.signin.open_session(PasswordCredentials("vlad", "Vlad-pw-1"), CLIENT)).token
        for _ in range(60)
    ]
    closed = tokens[::3]
    for token in closed:
        assert await a.sessions.close_session(token.to_auth_xml()) is True
    # Many validations at once on node b are read together; each must get its own answer.
    results = await asyncio.gather(
        *(b.sessions.validate(t.to_auth_xml()) for t in tokens * 3), return_exceptions=True
    )
    for token, result in zip(tokens * 3, results, strict=True):
        if token in closed:
            assert isinstance(result, SessionNotFound)
        else:
            assert not isinstance(result, BaseException), result
            assert result.token == token


async def test_two_administrators_demoting_each_other_on_two_nodes_leave_one(
    nodes: Callable[..., Any],
) -> None:
    from sessiond.errors import Conflict
    from sessiond.models import AccessLevel

    a, b = await nodes(2)
    for round_no in range(5):
        pair = (f"ann{round_no}", f"bob{round_no}")
        for login in pair:
            await a.users.add_user(
                SYSTEM, login, password="pw-1234", access_level=AccessLevel.ADMINISTRATOR
            )
        for user in await a.users.list_users(SYSTEM):  # only this pair may administer
            if user.is_administrator and user.login not in pair:
                await a.users.update_user(SYSTEM, user.login, access_level=AccessLevel.REGULAR)
        results = await asyncio.gather(
            a.users.update_user(SYSTEM, pair[0], access_level=AccessLevel.REGULAR),
            b.users.update_user(SYSTEM, pair[1], access_level=AccessLevel.REGULAR),
            return_exceptions=True,
        )
        kinds = sorted(type(r).__name__ for r in results)
        assert kinds == ["Conflict", "UserRecord"], results
        assert any(isinstance(r, Conflict) for r in results)
        admins = [u.login for u in await b.users.list_users(SYSTEM) if u.is_administrator]
        assert len(admins) == 1 and admins[0] in pair


def test_a_sign_in_answered_503_opened_no_session(
    postgres_server: PostgresServer, tmp_path: Path
) -> None:
    """200 sign-ins at once on a node with the fewest database connections and a short pool
    timeout: many wait too long for a connection and are answered 503, and every session the
    database holds is one whose token its caller got. Before, the answer read the user again
    after the commit, and a 503 there left a session (and its seat) that nobody could use."""
    url = postgres_server.new_database()
    data_dir = tmp_path / "node"
    env = server_env(
        data_dir,
        SESSIOND_DATABASE_URL=url,
        SESSIOND_ADMIN_PASSWORD="Admin-pw-1",
        SESSIOND_DATABASE_CONNECTIONS="3",  # one for sign-ins' reads and writes
        SESSIOND_DATABASE_POOL_TIMEOUT="0.5s",
        SESSIOND_SECURITY__PASSWORD_EXPIRATION_TIME="30d",
        SESSIOND_SECURITY__PASSWORD_EXPIRATION_NOTIFICATION_TIME="40d",  # warned at once
    )
    node = ServerProcess(data_dir, free_port(), env, tmp_path / "node.log")
    node.start()
    try:
        admin = httpx.post(
            f"{node.url}/api/v1/sessions/open",
            json={"Login": "admin", "Password": "Admin-pw-1"},
            timeout=30,
        )
        assert admin.status_code == 200, admin.text
        assert admin.json()["PasswordExpires"]  # read where the session was written
        headers = {"Tessa-Session": admin.json()["AuthToken"]}
        logins = [f"p{i}" for i in range(40)]
        for login in logins:
            created = httpx.post(
                f"{node.url}/api/v1/users",
                json={"Login": login, "Password": "pw-1234"},
                headers=headers,
                timeout=30,
            )
            assert created.status_code == 201, created.text
        closed = httpx.post(f"{node.url}/api/v1/sessions/close", headers=headers, timeout=30)
        assert closed.json() == {"Closed": True}

        async def race() -> list[httpx.Response]:
            async with httpx.AsyncClient(timeout=120) as http:
                return await asyncio.gather(
                    *(
                        http.post(
                            f"{node.url}/api/v1/sessions/open",
                            json={"Login": logins[i % len(logins)], "Password": "pw-1234"},
                        )
                        for i in range(200)
                    )
                )

        answers = asyncio.run(race())
        statuses = Counter(r.status_code for r in answers)
        assert set(statuses) <= {200, 503}, statuses
        assert statuses[503] > 0, statuses  # the pool did run out
        refused = {r.json()["error"]["code"] for r in answers if r.status_code == 503}
        assert refused == {"service_unavailable"}
        tokens = {r.json()["AuthToken"] for r in answers if r.status_code == 200}
        assert all(r.json()["PasswordExpires"] for r in answers if r.status_code == 200)

        async def rows() -> int:
            engine = sa_async.create_async_engine(url)
            try:
                async with engine.connect() as conn:
                    count = await conn.scalar(sa.text("SELECT count(*) FROM sessions"))
                    return int(count)
            finally:
                await engine.dispose()

        assert asyncio.run(rows()) == len(tokens), statuses
    finally:
        node.stop()
