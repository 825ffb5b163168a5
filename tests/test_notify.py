"""Nodes hear of each other's changes at once (PostgreSQL LISTEN/NOTIFY), polling stays the
fallback, each node keeps to its connection budget, and Argon2 costs can be chosen by name.

Every bound below is a bound on waiting (generous, so a slow machine does not fail), never a
performance assertion: what is asserted is what happened, and in which order. "Before the poll
could have run" means a node whose ``configuration_poll_interval`` is 60 s saw the change while
a test that lasts seconds was still running — or, for contrast, a node that does not listen did
not see it.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any
from uuid import UUID

import argon2
import asyncpg
import httpx
import pytest

from sessiond.auth import PasswordCredentials
from sessiond.errors import ServiceUnavailable, SessionNotFound
from sessiond.keys import KeyRing
from sessiond.models import AuditAction, ClientInfo
from sessiond.service import Actor, SessionService
from sessiond.settings import ARGON2_PRESETS, load_settings, share_connections
from sessiond.store import SessionFilter, create_store
from sessiond.store.notify import (
    IDS_PER_PAYLOAD,
    MOST_IDS_NAMED,
    PAYLOAD_LIMIT,
    Notice,
    parse,
    revoked_payloads,
)
from tests.infra._net import LOOPBACK
from tests.infra.postgres import SUPERUSER, PostgresServer

from .conftest import FAST_ARGON2, Clock, ServerProcess, start_nodes

SYSTEM = Actor.system()
CLIENT = ClientInfo()
WAIT = 10.0  # seconds: the most any step waits for something to arrive
RECONNECT_WAIT = 30.0  # the listener's backoff is at most 5 s between attempts


class Node(SessionService):
    """A node that keeps what it heard of revoked sessions: the notices on which a session
    cache drops what it holds (``revoked``, and ``resumed``: which went is not known); here it
    also records them, so the test can wait for it."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.heard: list[frozenset[UUID] | None] = []
        self._heard = asyncio.Condition()
        self._telling: set[asyncio.Task[None]] = set()

    def notified(self, notice: Notice) -> None:
        super().notified(notice)
        if notice.kind not in ("revoked", "resumed"):
            return
        session_ids = notice.session_ids if notice.kind == "revoked" else None
        self.heard.append(None if session_ids is None else frozenset(session_ids))
        task = asyncio.get_running_loop().create_task(self._tell())
        self._telling.add(task)
        task.add_done_callback(self._telling.discard)

    async def _tell(self) -> None:
        async with self._heard:
            self._heard.notify_all()

    def heard_of(self, session_id: UUID) -> bool:
        return any(ids is not None and session_id in ids for ids in self.heard)

    async def hear(self, done: Callable[[], bool]) -> None:
        """Wait (at most WAIT) until ``done()`` holds of what was heard."""
        async with asyncio.timeout(WAIT), self._heard:
            await self._heard.wait_for(done)


MakeNodes = Callable[..., Awaitable[list[Node]]]


@pytest.fixture
async def database(postgres_server: PostgresServer) -> str:
    return postgres_server.new_database()


@pytest.fixture
async def admin(postgres_server: PostgresServer) -> AsyncIterator[asyncpg.Connection]:
    """A superuser connection to the cluster's maintenance database: to look at and end
    other connections, as an operator would."""
    conn = await asyncpg.connect(
        host=LOOPBACK,
        port=postgres_server.port,
        user=SUPERUSER,
        database="postgres",
        server_settings={"application_name": "sessiond-tests"},
    )
    yield conn
    await conn.close()


@pytest.fixture
async def nodes(database: str, tmp_path: Path, clock: Clock) -> AsyncIterator[MakeNodes]:
    """``make(n, name=..., listen=True, **settings)``: n nodes on one database, each with its own
    pools and listener, named ``<name>-<i>`` (server_code, so application_name
    ``sessiond/<name>-<i>``)."""
    keys = tmp_path / "keys.json"
    KeyRing.generate().save(keys)
    started: list[Node] = []

    async def make(
        count: int, *, name: str = "node", listen: bool = True, **overrides: Any
    ) -> list[Node]:
        made = []
        for i in range(count):
            settings = load_settings(
                None,
                database_url=database,
                data_dir=tmp_path,
                signature_keys_file=keys,
                argon2=FAST_ARGON2,
                server_code=f"{name}-{i}",
                **overrides,
            )
            store = create_store(database, pools=settings.database_pools)
            made.append(Node(settings, store, KeyRing.load(keys), clock=clock))
        for node in made:  # one after another: the first migrates
            await node.start(listen=listen)
            started.append(node)
        return made

    yield make
    for node in started:
        await node.close()


async def _listener_pid(admin: asyncpg.Connection, database: str, node: str) -> int | None:
    return await admin.fetchval(  # type: ignore[no-any-return]
        "SELECT pid FROM pg_stat_activity WHERE datname = $1 AND application_name = $2 "
        "AND query LIKE 'LISTEN%'",
        _db_name(database),
        f"sessiond/{node}",
    )


def _db_name(url: str) -> str:
    return url.rsplit("/", 1)[1]


async def _until(check: Callable[[], Awaitable[bool]], within: float = WAIT) -> None:
    """Wait until ``check()`` holds, looking every 20 ms, at most ``within`` seconds."""
    async with asyncio.timeout(within):
        while not await check():  # noqa: ASYNC110  (the state is another process's)
            await asyncio.sleep(0.02)


async def _open(node: SessionService, login: str, password: str = "pw-1234") -> str:
    opened = await node.signin.open_session(PasswordCredentials(login, password), CLIENT)
    return opened.token.to_auth_xml()


# --- 1. notifications ------------------------------------------------------------------------


async def test_an_increment_on_one_node_reaches_the_others_before_any_poll(
    nodes: MakeNodes,
) -> None:
    a, b = await nodes(2, configuration_poll_interval=60)
    [deaf] = await nodes(1, name="deaf", listen=False, configuration_poll_interval=60)
    before = await b.configuration.version()
    assert await deaf.configuration.version() == before
    waiting = asyncio.create_task(b.configuration.wait_for_change(before, WAIT))
    await asyncio.sleep(0)  # the long poll is waiting on b before the increment
    info = await a.configuration.increment(SYSTEM)
    assert info.version == before + 1
    # b's long poll woke with the new version; every answer of b carries it from now on.
    assert await waiting == before + 1
    assert await b.configuration.version() == before + 1
    assert b.configuration.last_known == before + 1
    # A node that does not listen still answers the old version: only its poll (60 s) would
    # bring the new one, so b had it from the notification.
    assert await deaf.configuration.version() == before
    assert b.store.listening is True and deaf.store.listening is False


async def test_increments_on_several_nodes_reach_every_node_in_order(nodes: MakeNodes) -> None:
    made = await nodes(3, configuration_poll_interval=60)
    before = await made[0].configuration.version()
    for round_no in range(1, 4):
        for node in made:
            await node.configuration.increment(SYSTEM)
        target = before + 3 * round_no
        for node in made:
            assert await node.configuration.wait_for_change(target - 1, WAIT) == target


async def test_a_close_on_one_node_is_refused_at_once_on_the_other_and_announced(
    nodes: MakeNodes,
) -> None:
    a, b = await nodes(2, configuration_poll_interval=60)
    await a.users.add_user(SYSTEM, "nina", password="pw-1234")
    auth = await _open(a, "nina")
    session_id = (await b.sessions.validate(auth)).id
    assert await a.sessions.close_session(auth) is True
    # Exact without waiting for anything: b reads the session row at its very next request.
    with pytest.raises(SessionNotFound):
        await b.sessions.validate(auth)
    # And b's revocation hook hears of it, naming the session.
    await b.hear(lambda: b.heard_of(session_id))


async def test_every_way_sessions_end_is_announced(nodes: MakeNodes, clock: Clock) -> None:
    a, b = await nodes(2, configuration_poll_interval=60)
    await a.users.add_user(SYSTEM, "olga", password="pw-1234")
    await a.users.add_user(SYSTEM, "petr", password="pw-1234")
    left = (await a.sessions.validate(await _open(a, "olga"))).id
    one = (await a.sessions.validate(await _open(a, "olga"))).id
    assert await a.sessions.close_session_as_admin(SYSTEM, one) is True
    await b.hear(lambda: b.heard_of(one))
    petr = [(await a.sessions.validate(await _open(a, "petr"))).id for _ in range(3)]
    assert await a.close_user_sessions(SYSTEM, "petr") == 3
    await b.hear(lambda: all(b.heard_of(s) for s in petr))
    # The sweeper, once the lifetime has passed.
    clock.advance(days=8)
    assert await a.sessions.sweep() == 1
    await b.hear(lambda: b.heard_of(left))


async def test_a_rolled_back_deletion_is_never_announced(nodes: MakeNodes) -> None:
    a, b = await nodes(2, configuration_poll_interval=60)
    await a.users.add_user(SYSTEM, "rita", password="pw-1234")
    kept = (await a.sessions.validate(await _open(a, "rita"))).id
    closed_auth = await _open(a, "rita")
    closed = (await a.sessions.validate(closed_auth)).id
    with pytest.raises(RuntimeError):
        async with a.store.write() as tx:
            decide = a.sessions.closing(a.clock(), AuditAction.LOGOUT, SYSTEM)
            gone = await tx.delete_sessions(SessionFilter(session_ids=(kept,)), decide)
            assert [r.id for r in gone] == [kept]  # deleted, and announced at a commit...
            raise RuntimeError("...that never comes")
    assert await a.sessions.close_session(closed_auth) is True
    # Notifications arrive in commit order: once the later close is heard, the rolled-back
    # deletion would have been heard before it — and it was not.
    await b.hear(lambda: b.heard_of(closed))
    assert not b.heard_of(kept)
    assert (await b.sessions.validate(await _auth_of(a, kept))).id == kept


async def _auth_of(node: SessionService, session_id: UUID) -> str:
    record = await node.store.get_session(session_id)
    assert record is not None
    return record.token.to_auth_xml()


async def test_many_revoked_sessions_are_named_in_several_notifications(
    nodes: MakeNodes,
) -> None:
    a, b = await nodes(2, configuration_poll_interval=60)
    await a.users.add_user(SYSTEM, "sara", password="pw-1234")
    count = IDS_PER_PAYLOAD + 8  # more than one payload holds
    ids = {(await a.sessions.validate(await _open(a, "sara"))).id for _ in range(count)}
    assert await a.close_user_sessions(SYSTEM, "sara") == count
    await b.hear(lambda: all(b.heard_of(s) for s in ids))
    batches = [heard for heard in b.heard if heard is not None and heard & ids]
    assert len(batches) == 2
    assert frozenset().union(*batches) == ids


def test_revocation_payloads_stay_within_the_limit() -> None:
    ids = [UUID(int=i) for i in range(3 * IDS_PER_PAYLOAD + 1)]
    payloads = revoked_payloads(ids)
    assert len(payloads) == 4
    assert all(len(p.encode()) <= PAYLOAD_LIMIT < 8000 for p in payloads)
    named: set[UUID] = set()
    for payload in payloads:
        notice = parse(payload)
        assert notice is not None and notice.kind == "revoked" and notice.session_ids
        named |= notice.session_ids
    assert named == set(ids)
    assert revoked_payloads([UUID(int=i) for i in range(MOST_IDS_NAMED + 1)]) == ["revoked"]
    assert parse("revoked") == Notice("revoked")
    assert revoked_payloads([]) == []
    assert parse("version 7") == Notice("version", version=7)
    assert parse("licence") == Notice("licence")
    for unknown in ("version x", "revoked nothex", "surprise", "licence 2", ""):
        assert parse(unknown) is None


# --- 1b. when the listening connection drops -------------------------------------------------


async def _refuse_new_connections(admin: asyncpg.Connection, database: str, refuse: bool) -> None:
    """Let no new connection into the database (those open stay), or let them in again."""
    allow = "false" if refuse else "true"
    await admin.execute(f'ALTER DATABASE "{_db_name(database)}" ALLOW_CONNECTIONS {allow}')


async def _warm(*made: SessionService) -> None:
    """Have each node's write pool hold several open connections, which keep working while the
    database refuses new ones (a node may use two at once: a request and a re-read)."""
    for node in made:
        await asyncio.gather(*(node.users.list_users(SYSTEM) for _ in range(5)))


async def _cut_listener(admin: asyncpg.Connection, database: str, node: str) -> int:
    pid = await _listener_pid(admin, database, node)
    assert pid is not None, f"{node} has no listening connection"
    assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid) is True
    return pid


async def test_while_the_listener_is_down_polling_brings_changes(
    nodes: MakeNodes, admin: asyncpg.Connection, database: str
) -> None:
    a, b = await nodes(2, name="poll", configuration_poll_interval=0.2)
    before = (await a.configuration.increment(SYSTEM)).version
    assert await b.configuration.wait_for_change(before - 1, WAIT) == before
    await _warm(a, b)
    await _refuse_new_connections(admin, database, True)
    try:
        await _cut_listener(admin, database, "poll-1")
        await _until(lambda: _is(b.store.listening, False))
        info = await a.configuration.increment(SYSTEM)
        assert info.version == before + 1
        # b cannot listen again (no new connection gets in), yet its poll brings the change.
        assert await b.configuration.wait_for_change(before, WAIT) == before + 1
        assert b.store.listening is False
    finally:
        await _refuse_new_connections(admin, database, False)
    await _until(lambda: _is(b.store.listening, True), RECONNECT_WAIT)


async def test_the_listener_comes_back_rereads_once_and_hears_again(
    nodes: MakeNodes, admin: asyncpg.Connection, database: str
) -> None:
    a, b = await nodes(2, name="back", configuration_poll_interval=60)
    await a.users.add_user(SYSTEM, "tom", password="pw-1234")
    missed_auth = await _open(a, "tom")
    missed = (await a.sessions.validate(missed_auth)).id
    before = await b.configuration.version()
    await _warm(a, b)
    await _refuse_new_connections(admin, database, True)
    try:
        first = await _cut_listener(admin, database, "back-1")
        await _until(lambda: _is(b.store.listening, False))
        # Announced while b cannot hear: lost for b, and its poll is 60 s away.
        await a.configuration.increment(SYSTEM)
        assert await a.sessions.close_session(missed_auth) is True
        assert await b.configuration.version() == before
    finally:
        await _refuse_new_connections(admin, database, False)
    # Back: b re-reads once (the long poll wakes with the version it missed) and forgets
    # every session it might keep, since it cannot know which were revoked meanwhile.
    assert await b.configuration.wait_for_change(before, RECONNECT_WAIT) == before + 1
    await b.hear(lambda: None in b.heard)
    assert not b.heard_of(missed)
    second = await _listener_pid(admin, database, "back-1")
    assert second is not None and second != first
    # And it hears again: the next increment, long before its poll could run.
    await a.configuration.increment(SYSTEM)
    assert await b.configuration.wait_for_change(before + 1, WAIT) == before + 2


async def test_a_cut_listener_reconnects_on_its_own(
    nodes: MakeNodes, admin: asyncpg.Connection, database: str
) -> None:
    a, b = await nodes(2, name="cut", configuration_poll_interval=60)
    first = await _cut_listener(admin, database, "cut-1")

    async def listening_again() -> bool:
        pid = await _listener_pid(admin, database, "cut-1")
        return pid is not None and pid != first and bool(b.store.listening)

    await _until(listening_again, RECONNECT_WAIT)
    before = await b.configuration.version()
    await a.configuration.increment(SYSTEM)
    assert await b.configuration.wait_for_change(before, WAIT) == before + 1


async def _is(value: object, expected: bool) -> bool:
    return value is expected


# --- 2. connections per node -----------------------------------------------------------------


def test_connections_are_shared_out_by_one_rule() -> None:
    for total in range(3, 200):
        pools = share_connections(total, 10.0, "sessiond/x")
        assert pools.total == total
        assert pools.listen == 1 and pools.read >= 1 and pools.write >= 1
        assert pools.write >= pools.read
    default = share_connections(10, 10.0, "n")
    assert (default.write, default.read, default.listen) == (7, 2, 1)
    assert load_settings(None).database_connections == 10
    with pytest.raises(Exception, match="database_connections"):
        load_settings(None, database_connections=2)
    with pytest.raises(Exception, match="database_pool_timeout"):
        load_settings(None, database_pool_timeout=0)


async def test_nodes_never_open_more_connections_than_their_budget(
    nodes: MakeNodes, admin: asyncpg.Connection, database: str
) -> None:
    budget = 4  # 2 for writes, 1 for validation's reads, 1 to listen
    made = await nodes(3, name="budget", database_connections=budget)
    logins = [f"user{i}" for i in range(10)]
    for login in logins:
        await made[0].users.add_user(SYSTEM, login, password="pw-1234")
    peak: Counter[str] = Counter()
    done = asyncio.Event()

    async def watch() -> None:
        while True:
            rows = await admin.fetch(
                "SELECT application_name, count(*) AS n FROM pg_stat_activity "
                "WHERE datname = $1 GROUP BY application_name",
                _db_name(database),
            )
            for row in rows:
                peak[row["application_name"]] = max(peak[row["application_name"]], row["n"])
            if done.is_set():
                return
            await asyncio.sleep(0)

    watcher = asyncio.create_task(watch())

    async def sign_in_and_validate(i: int) -> str:
        node = made[i % 3]
        auth = await _open(node, logins[i % 10])
        await made[(i + 1) % 3].sessions.validate(auth)
        return auth

    results = await asyncio.gather(*(sign_in_and_validate(i) for i in range(100)))
    done.set()
    await watcher
    assert len(set(results)) == 100
    names = [f"sessiond/budget-{i}" for i in range(3)]
    assert {name for name in peak if name.startswith("sessiond/")} == set(names)
    for name in names:
        assert 3 <= peak[name] <= budget, (name, peak[name])


async def test_no_free_connection_is_a_503_naming_the_setting(nodes: MakeNodes) -> None:
    [node] = await nodes(1, name="tight", database_connections=3, database_pool_timeout=0.3)
    assert node.store.pools.write == 1  # type: ignore[attr-defined]
    async with node.store.write():  # holds the one write connection
        with pytest.raises(ServiceUnavailable) as refused:
            await node.users.list_users(SYSTEM)
    assert refused.value.status == 503
    assert "database_connections" in refused.value.message
    assert [u.login for u in await node.users.list_users(SYSTEM)] == []  # free again


# --- 4. two server processes -----------------------------------------------------------------


def _metric(server: ServerProcess, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    found = re.search(rf"^{re.escape(name)} (\S+)$", text, re.MULTILINE)
    assert found, name
    return float(found.group(1))


def test_two_server_processes_hear_each_other(
    postgres_server: PostgresServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    url = postgres_server.new_database()
    root = tmp_path_factory.mktemp("notify-nodes")
    KeyRing.generate().save(root / "keys.json")
    servers = start_nodes(
        root,
        ["node-a", "node-b"],
        coded=True,
        SESSIOND_DATABASE_URL=url,
        SESSIOND_SIGNATURE_KEYS_FILE=str(root / "keys.json"),
        SESSIOND_ADMIN_PASSWORD="Admin-pw-1",
        SESSIOND_CONFIGURATION_POLL_INTERVAL="60",
        SESSIOND_DATABASE_CONNECTIONS="5",
    )
    try:
        a, b = servers
        opened = httpx.post(
            f"{a.url}/api/v1/sessions/open",
            json={"Login": "admin", "Password": "Admin-pw-1", "ServiceType": "WebClient"},
            timeout=30,
        ).json()
        headers = {"Tessa-Session": opened["AuthToken"]}
        current = httpx.get(f"{b.url}/api/v1/sessions/current", headers=headers, timeout=10)
        assert current.status_code == 200
        before = int(current.headers["Tessa-Configuration-Version"])
        assert _metric(b, "sessiond_store_listening") == 1

        def increment_on_a_and_wait_on_b(after: int) -> dict[str, Any]:
            async def both() -> dict[str, Any]:
                async with httpx.AsyncClient(timeout=30) as http:
                    waiting = asyncio.create_task(
                        http.get(
                            f"{b.url}/api/v1/configuration/changes",
                            params={"after": after, "wait": WAIT},
                            headers=headers,
                        )
                    )
                    bumped = await http.post(
                        f"{a.url}/api/v1/configuration/increment-version", headers=headers
                    )
                    assert bumped.status_code == 200, bumped.text
                    answer = await waiting
                    assert answer.status_code == 200, answer.text
                    return dict(answer.json())

            return asyncio.run(both())

        assert increment_on_a_and_wait_on_b(before) == {"Version": before + 1, "Changed": True}
        again = httpx.get(f"{b.url}/api/v1/sessions/current", headers=headers, timeout=10)
        assert again.headers["Tessa-Configuration-Version"] == str(before + 1)

        # The command line announces its increments too.
        async def increment_by_command() -> dict[str, Any]:
            async with httpx.AsyncClient(timeout=30) as http:
                waiting = asyncio.create_task(
                    http.get(
                        f"{b.url}/api/v1/configuration/changes",
                        params={"after": before + 1, "wait": WAIT},
                        headers=headers,
                    )
                )
                done = await asyncio.to_thread(a.cli, "config", "increment-version")
                assert done.returncode == 0, done.stderr
                return dict((await waiting).json())

        assert asyncio.run(increment_by_command()) == {"Version": before + 2, "Changed": True}
        before += 1

        # Cut b's listening connection as an operator would; b connects again on its own.
        async def cut() -> None:
            conn = await asyncpg.connect(
                host=LOOPBACK, port=postgres_server.port, user=SUPERUSER, database="postgres"
            )
            try:
                first = await _cut_listener(conn, url, "node-b")

                async def back() -> bool:
                    pid = await _listener_pid(conn, url, "node-b")
                    return pid is not None and pid != first

                await _until(back, RECONNECT_WAIT)
            finally:
                await conn.close()

        asyncio.run(cut())
        deadline = time.monotonic() + RECONNECT_WAIT
        while _metric(b, "sessiond_store_listening") != 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _metric(b, "sessiond_store_listening") == 1
        assert _metric(b, 'sessiond_store_notifications_total{kind="resumed"}') == 1
        assert increment_on_a_and_wait_on_b(before + 1) == {"Version": before + 2, "Changed": True}

        # A close on a is refused on b at b's next request, and b heard of it.
        revoked_before = _metric(b, 'sessiond_store_notifications_total{kind="revoked"}')
        closed = httpx.post(f"{a.url}/api/v1/sessions/close", headers=headers, timeout=10)
        assert closed.json() == {"Closed": True}
        refused = httpx.get(f"{b.url}/api/v1/sessions/current", headers=headers, timeout=10)
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "session_not_found"
        deadline = time.monotonic() + WAIT
        while (
            _metric(b, 'sessiond_store_notifications_total{kind="revoked"}') == revoked_before
            and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert _metric(b, 'sessiond_store_notifications_total{kind="revoked"}') > revoked_before
    finally:
        for server in servers:
            server.stop()


# --- 3. Argon2 presets -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("preset", "numbers"),
    [
        ("argon2-cffi-default", (3, 65536, 4)),
        ("owasp", (2, 19456, 1)),
        ("keycloak", (5, 7168, 1)),
    ],
)
def test_each_argon2_preset_loads_its_numbers(preset: str, numbers: tuple[int, int, int]) -> None:
    chosen = load_settings(None, argon2={"preset": preset}).argon2
    assert (chosen.time_cost, chosen.memory_cost, chosen.parallelism) == numbers
    assert ARGON2_PRESETS[preset] == numbers


def test_argon2_presets_and_their_overrides(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    default = argon2.profiles.RFC_9106_LOW_MEMORY  # argon2-cffi's own default
    chosen = load_settings(None).argon2
    assert chosen.preset == "argon2-cffi-default"
    assert (chosen.time_cost, chosen.memory_cost, chosen.parallelism) == (
        default.time_cost,
        default.memory_cost,
        default.parallelism,
    )
    # An explicit number overrides the preset's; the others stay the preset's.
    mixed = load_settings(None, argon2={"preset": "owasp", "memory_cost": 47104}).argon2
    assert (mixed.time_cost, mixed.memory_cost, mixed.parallelism) == (2, 47104, 1)
    # The same through a file and the environment, in any case.
    config = tmp_path / "sessiond.toml"
    config.write_text('[sessiond.argon2]\npreset = "Keycloak"\n')
    monkeypatch.setenv("SESSIOND_ARGON2__TIME_COST", "7")
    from_file = load_settings(config).argon2
    assert (from_file.preset, from_file.time_cost, from_file.memory_cost) == ("keycloak", 7, 7168)
    monkeypatch.delenv("SESSIOND_ARGON2__TIME_COST")
    monkeypatch.setenv("SESSIOND_ARGON2__PRESET", "nist")
    with pytest.raises(Exception, match=r"argon2\.preset.*owasp"):
        load_settings(None)


async def test_a_hash_is_redone_at_sign_in_when_the_preset_changes(
    make_service: Callable[..., Awaitable[SessionService]],
) -> None:
    def numbers(password_hash: str | None) -> tuple[int, int, int]:
        assert password_hash is not None
        found = argon2.extract_parameters(password_hash)
        return found.time_cost, found.memory_cost, found.parallelism

    before = await make_service(argon2={"preset": "keycloak"})
    await before.users.add_user(SYSTEM, "uma", password="Uma-pw-12")
    user = await before.users.get_user_by_login("uma")
    assert numbers(user.password_hash) == ARGON2_PRESETS["keycloak"]
    await before.signin.open_session(PasswordCredentials("uma", "Uma-pw-12"), CLIENT)
    assert (await before.users.get_user_by_login("uma")).password_hash == user.password_hash
    # The same store, with the preset changed: the next sign-in redoes the hash.
    after = await make_service(argon2={"preset": "owasp"})
    await after.signin.open_session(PasswordCredentials("uma", "Uma-pw-12"), CLIENT)
    rehashed = (await after.users.get_user_by_login("uma")).password_hash
    assert numbers(rehashed) == ARGON2_PRESETS["owasp"]
    await after.signin.open_session(
        PasswordCredentials("uma", "Uma-pw-12"), CLIENT
    )  # still signs in
