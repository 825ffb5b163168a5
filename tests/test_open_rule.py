"""The rule "is this session open?" (Python) and its SQL form agree on the same rows, on SQLite
and on PostgreSQL, in every query of the store that counts or finds open or ended sessions (the
listings, seat usage, the open-sessions gauge, the sweeper's filter)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import pytest
import sqlalchemy as sa

from sessiond.auth import PasswordCredentials
from sessiond.models import ClientInfo
from sessiond.service import Actor, SessionService
from sessiond.store import SessionQuery, SessionRecord
from sessiond.store.health import open_sessions
from sessiond.store.schema import sessions
from sessiond.store.sql import SqlStore
from sessiond.store.state import SessionState, ended_sql, open_sql

from .conftest import Clock

US = timedelta(microseconds=1)
LIMIT = timedelta(minutes=30)

#: (what the row is, its expiry minus now, now minus its last activity)
ROWS: list[tuple[str, timedelta, timedelta]] = [
    ("lifetime ends a microsecond from now", US, timedelta(0)),
    ("lifetime ends now", timedelta(0), timedelta(0)),
    ("lifetime ended a second ago", -timedelta(seconds=1), timedelta(0)),
    ("used exactly the inactivity limit ago", timedelta(hours=1), LIMIT),
    ("used a microsecond more than the limit ago", timedelta(hours=1), LIMIT + US),
    ("used a day ago", timedelta(hours=1), timedelta(days=1)),
    ("ended both ways", -US, timedelta(days=1)),
    ("used after now (another node's clock)", timedelta(hours=1), -timedelta(seconds=5)),
]


@pytest.fixture(params=["sqlite", "postgresql"])
async def rows(
    request: pytest.FixtureRequest, make_service: Callable[..., Any], clock: Clock
) -> tuple[SessionService, dict[UUID, str]]:
    """A service on the store named by the parameter, with one session per row of
    :data:`ROWS`, its expiry and last activity set by SQL; and which id is which row."""
    overrides: dict[str, Any] = {}
    if request.param == "postgresql":
        overrides["database_url"] = request.getfixturevalue("postgres_server").new_database()
    service: SessionService = await make_service(**overrides)
    await service.users.add_user(Actor.system(), "zoe", password="Zoe-pw-1")
    store = service.store
    assert isinstance(store, SqlStore)
    now = clock.now
    named: dict[UUID, str] = {}
    for name, expires_in, idle in ROWS:
        opened = await service.signin.open_session(
            PasswordCredentials("zoe", "Zoe-pw-1"), ClientInfo()
        )
        session_id = opened.token.session_id
        async with store.engine.begin() as conn:
            await conn.execute(
                sessions.update()
                .where(sessions.c.id == session_id)
                .values(expires=now + expires_in, last_activity=now - idle)
            )
        named[session_id] = name
    return service, named


@pytest.mark.parametrize("inactivity", [None, LIMIT], ids=["no inactivity limit", "30 min"])
async def test_the_sql_form_and_the_rule_agree_on_every_row(
    rows: tuple[SessionService, dict[UUID, str]], clock: Clock, inactivity: timedelta | None
) -> None:
    service, named = rows
    store = service.store
    assert isinstance(store, SqlStore)
    state = SessionState(inactivity)
    now = clock.now
    cutoff = state.active_since(now)
    records = {r.id: r for r in await store.list_sessions()}
    assert records.keys() == named.keys()

    def names(ids: set[UUID]) -> list[str]:
        return sorted(named[i] for i in ids)

    by_rule = {i for i, r in records.items() if state.ended_record(r, now) is None}
    # The rule itself, on this table: each kind of row is where it should be.
    assert "lifetime ends a microsecond from now" in names(by_rule)
    assert "lifetime ends now" not in names(by_rule)
    assert "used exactly the inactivity limit ago" in names(by_rule)
    assert ("used a day ago" in names(by_rule)) == (inactivity is None)

    async def ids_where(condition: sa.ColumnElement[bool]) -> set[UUID]:
        async with store.engine.connect() as conn:
            return {row[0] for row in await conn.execute(sa.select(sessions.c.id).where(condition))}

    assert names(await ids_where(open_sql(now, cutoff))) == names(by_rule)
    assert names(await ids_where(ended_sql(now, cutoff))) == names(named.keys() - by_rule)

    # The store's queries, each through the one SQL form.
    listed = await store.list_sessions(SessionQuery(open_at=now, active_since=cutoff))
    assert names({r.id for r in listed}) == names(by_rule)
    kind = next(iter(records.values())).token.license_type
    assert (await store.licence_usage(now, cutoff)).get(kind, 0) == len(by_rule)
    assert (await open_sessions(store.engine, now, cutoff))[kind] == len(by_rule)

    found: set[UUID] = set()

    def look(record: SessionRecord) -> None:
        found.add(record.id)  # and leave it: nothing is deleted

    async with store.write() as tx:
        assert await tx.delete_sessions(state.stale(now), look) == []
    assert names(found) == names(named.keys() - by_rule)


def test_the_rule_judges_by_the_lifetime_alone_without_a_last_activity() -> None:
    now = datetime(2026, 11, 24, 12, 0).astimezone()
    state = SessionState(LIMIT)
    assert state.ended(now + US, None, now) is None
    assert state.ended(now, None, now) == "absolute lifetime"
    assert state.ended(now + US, now - LIMIT - US, now) == "inactivity"
