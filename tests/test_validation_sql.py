"""Direct SQL on a session sitting in the validation cache, or on its user: each change is seen
at the next validation, on SQLite and on PostgreSQL (a node that had cached the session), and a
change that is no change (a row deleted and inserted again as it was, a block by the lockout)
refuses nothing."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import Any
from uuid import UUID

import httpx
import pytest
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from sessiond.auth import PasswordCredentials
from sessiond.errors import (
    InvalidCredentials,
    SessionExpired,
    SessionNotFound,
    TokenSignatureInvalid,
)
from sessiond.keys import KeyRing
from sessiond.models import AccessLevel, AuditAction, ClientInfo, LoginType
from sessiond.service import Actor, SessionService
from sessiond.settings import load_settings
from sessiond.store import create_store
from sessiond.store.schema import sessions
from sessiond.token import AuthToken
from tests.infra.postgres import PostgresServer

from .conftest import FAST_ARGON2, Clock, ServerProcess
from .test_validation_cache import _render, _warm

SYSTEM = Actor.system()
Edit = Callable[[AsyncConnection, dict[str, Any]], Awaitable[None]]


def _sql(statement: str) -> Edit:
    async def edit(conn: AsyncConnection, ids: dict[str, Any]) -> None:
        await conn.execute(sa.text(statement), ids)

    return edit


async def _reinsert(conn: AsyncConnection, ids: dict[str, Any], **changes: Any) -> None:
    """Delete the row and insert it again, every column as read (its version too) but
    ``changes``."""
    where = sa.text("id = :id").bindparams(id=ids["id"])
    row = dict((await conn.execute(sa.select(sessions).where(where))).mappings().one())
    await conn.execute(sessions.delete().where(where))
    await conn.execute(sessions.insert().values(**{**row, **changes}))


async def _reinsert_as_administrator(conn: AsyncConnection, ids: dict[str, Any]) -> None:
    await _reinsert(conn, ids, access_level=int(AccessLevel.ADMINISTRATOR))


async def _expiry_moved_later(conn: AsyncConnection, ids: dict[str, Any]) -> None:
    where = sa.text("id = :id").bindparams(id=ids["id"])
    expires = (await conn.execute(sa.select(sessions.c.expires).where(where))).scalar_one()
    await conn.execute(sessions.update().where(where).values(expires=expires + timedelta(days=30)))


ADMIN = int(AccessLevel.ADMINISTRATOR)
LDAP = int(LoginType.LDAP)
#: name -> (the edit, what the next validation answers; None: it validates)
EDITS: dict[str, tuple[Edit, type[Exception] | None]] = {
    "expiry moved into the past": (
        _sql("UPDATE sessions SET expires = created WHERE id = :id"),
        SessionExpired,
    ),
    "expiry moved later": (_expiry_moved_later, TokenSignatureInvalid),
    "signature changed": (
        _sql("UPDATE sessions SET signature = signature || 'x' WHERE id = :id"),
        TokenSignatureInvalid,
    ),
    "user changed": (
        _sql("UPDATE sessions SET user_id = :other WHERE id = :id"),
        TokenSignatureInvalid,
    ),
    "access level changed": (
        _sql(f"UPDATE sessions SET access_level = {ADMIN} WHERE id = :id"),
        SessionNotFound,
    ),
    "deleted and re-inserted changed": (_reinsert_as_administrator, SessionNotFound),
    "deleted and re-inserted as it was": (_reinsert, None),
    "user blocked": (_sql("UPDATE users SET blocked = true WHERE id = :user"), SessionNotFound),
    "user made administrator": (
        _sql(f"UPDATE users SET access_level = {ADMIN} WHERE id = :user"),
        SessionNotFound,
    ),
    "user's login type changed": (
        _sql(f"UPDATE users SET login_type = {LDAP} WHERE id = :user"),
        SessionNotFound,
    ),
    "user removed": (_sql("DELETE FROM users WHERE id = :user"), SessionNotFound),
    "user blocked as the lockout blocks": (
        _sql("UPDATE users SET blocked = true, locked_out = true WHERE id = :user"),
        None,
    ),
}


async def _open(service: SessionService, login: str) -> str:
    await service.users.add_user(SYSTEM, login, password="pw-1234")
    token = (
        await service.signin.open_session(PasswordCredentials(login, "pw-1234"), ClientInfo())
    ).token
    return token.to_auth_xml()


async def _edit_and_validate(
    opener: SessionService,
    cached: SessionService,
    engine: AsyncEngine,
    name: str,
    as_id: Callable[[UUID], Any],
) -> None:
    """Open a session on ``opener``, have ``cached`` hold it, edit it by SQL, and check
    what ``cached`` answers at the next validation."""
    edit, expected = EDITS[name]
    login = "u" + str(abs(hash(name)))[:12]
    auth = await _open(opener, login)
    other = await _open(opener, login + "x")
    await _warm(cached, auth)
    token = AuthToken.from_xml(auth)
    ids = {
        "id": as_id(token.session_id),
        "user": as_id(token.user_id),
        "other": as_id(AuthToken.from_xml(other).user_id),
    }
    async with engine.begin() as conn:
        await edit(conn, ids)
    await asyncio.sleep(0)  # the next request comes in a later turn of the event loop
    if expected is None:
        assert await cached.sessions.validate_view(auth, None, _render), name
        return
    with pytest.raises(expected):
        await cached.sessions.validate_view(auth, None, _render)
    with pytest.raises((expected, SessionNotFound)):  # and stays refused, cached or not
        await cached.sessions.validate_view(auth, None, _render)
    if expected is SessionNotFound:
        # Ended as sessiond ends the sessions of a user it blocks or demotes itself.
        closed = await cached.audit.records(action=AuditAction.SESSION_CLOSED_BY_ADMIN)
        assert any(r.session_id == token.session_id for r in closed), name


@pytest.fixture
async def sqlite_service(make_service: Any, tmp_path: Path) -> AsyncIterator[Any]:
    service = await make_service()
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'data' / 'sessiond.db'}")
    yield service, engine
    await engine.dispose()


@pytest.mark.parametrize("name", list(EDITS))
async def test_sql_on_a_cached_session_or_its_user_is_seen_at_the_next_validation_sqlite(
    sqlite_service: Any, name: str
) -> None:
    service, engine = sqlite_service
    await _edit_and_validate(service, service, engine, name, lambda u: u.hex)


@pytest.fixture
async def two_nodes(
    postgres_server: PostgresServer, tmp_path: Path, clock: Clock
) -> AsyncIterator[tuple[SessionService, SessionService, AsyncEngine]]:
    url = postgres_server.new_database()
    KeyRing.generate().save(tmp_path / "keys.json")
    nodes = [
        SessionService(
            load_settings(
                None,
                database_url=url,
                data_dir=tmp_path,
                signature_keys_file=tmp_path / "keys.json",
                argon2=FAST_ARGON2,
            ),
            create_store(url),
            KeyRing.load(tmp_path / "keys.json"),
            clock=clock,
        )
        for _ in range(2)
    ]
    for node in nodes:
        await node.start()
    engine = create_async_engine(url)
    try:
        yield nodes[0], nodes[1], engine
    finally:
        await engine.dispose()
        for node in nodes:
            await node.close()


@pytest.mark.parametrize("name", list(EDITS))
async def test_sql_on_a_cached_session_or_its_user_is_seen_by_another_node_postgres(
    two_nodes: tuple[SessionService, SessionService, AsyncEngine], name: str
) -> None:
    a, b, engine = two_nodes
    await _edit_and_validate(a, b, engine, name, lambda u: u)


async def test_a_session_whose_expiry_sql_moved_stays_refused_after_the_sweep(
    make_service: Any, tmp_path: Path
) -> None:
    """The sweeper takes back the removal count of a session past its lifetime; the change
    that put it there has moved the count already, so the cache does not outlive the row."""
    service = await make_service()
    auth = await _open(service, "swept")
    await _warm(service, auth)
    db = sqlite3.connect(tmp_path / "data" / "sessiond.db")
    with db:
        db.execute(
            "UPDATE sessions SET expires = created WHERE id = ?",
            (AuthToken.from_xml(auth).session_id.hex,),
        )
    db.close()
    assert await service.sessions.sweep() == 1
    await asyncio.sleep(0)
    with pytest.raises(SessionNotFound):
        await service.sessions.validate_view(auth, None, _render)


async def test_a_block_by_the_lockout_leaves_the_cached_session_open(make_service: Any) -> None:
    service = await make_service(security={"max_failed_login_attempts_before_blocked": 2})
    auth = await _open(service, "guessed")
    await _warm(service, auth)
    for _ in range(2):
        with pytest.raises(InvalidCredentials):
            await service.signin.open_session(PasswordCredentials("guessed", "wrong"), ClientInfo())
    user = await service.store.find_user_by_login("guessed")
    assert user is not None and user.blocked and user.locked_out
    await asyncio.sleep(0)
    assert await service.sessions.validate_view(auth, None, _render)


def test_a_user_blocked_by_sql_is_refused_at_the_next_request(server: ServerProcess) -> None:
    admin = httpx.post(
        f"{server.url}/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password},
    ).json()["AuthToken"]
    credentials = {"Login": "sql-blocked", "Password": "Sql-blocked-1"}
    added = httpx.post(
        f"{server.url}/api/v1/users", json=credentials, headers={"Tessa-Session": admin}
    )
    assert added.status_code == 201, added.text
    auth = httpx.post(f"{server.url}/api/v1/sessions/open", json=credentials).json()["AuthToken"]
    current = f"{server.url}/api/v1/sessions/current"
    for _ in range(3):
        assert httpx.get(current, headers={"Tessa-Session": auth}).status_code == 200
    db = sqlite3.connect(server.data_dir / "sessiond.db")
    with db:
        db.execute("UPDATE users SET blocked = 1 WHERE login = 'sql-blocked'")
    db.close()
    refused = httpx.get(current, headers={"Tessa-Session": auth})
    assert refused.status_code == 401
    error = refused.json()["error"]
    assert error["code"] == "session_not_found"
    assert "blocked" in error["message"]
    assert httpx.get(current, headers={"Tessa-Session": admin}).status_code == 200
