"""The SQLite store: migrations match the schema, writes are atomic, the file is set up right."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from sessiond.service import SessionService
from sessiond.store.schema import HEAD_REVISION, metadata
from sessiond.store.sql import SqlStore


async def test_the_migrations_create_exactly_the_declared_schema(service: SessionService) -> None:
    assert isinstance(service.store, SqlStore)

    def diff(conn: sa.Connection) -> list[Any]:
        return list(compare_metadata(MigrationContext.configure(conn), metadata))

    async with service.store.engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_the_database_file_is_in_wal_mode_and_migrated(
    service: SessionService, tmp_path: Path
) -> None:
    db = tmp_path / "data" / "sessiond.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert (
            conn.execute("SELECT version_num FROM alembic_version").fetchone()[0] == HEAD_REVISION
        )
    assert (tmp_path / "data").stat().st_mode & 0o077 == 0


async def test_starting_twice_on_the_same_file_keeps_the_data(make_service: Any) -> None:
    first = await make_service()
    created = await first.users.ensure_first_administrator()
    assert created is not None
    await first.close()
    second = await make_service()
    assert await second.users.ensure_first_administrator() is None
    assert [u.login for u in await second.store.list_users()] == ["admin"]


async def test_the_signature_key_ring_is_private(service: SessionService, tmp_path: Path) -> None:
    keys = tmp_path / "data" / "signature-keys.json"
    assert keys.stat().st_mode & 0o777 == 0o600


async def test_a_session_removed_by_another_process_is_refused_at_once(
    service: SessionService, tmp_path: Path
) -> None:
    from sessiond.auth import PasswordCredentials
    from sessiond.errors import SessionNotFound
    from sessiond.models import ClientInfo
    from sessiond.service import Actor

    await service.users.add_user(Actor.system(), "zoe", password="Zoe-pw-1")
    opened = await service.signin.open_session(PasswordCredentials("zoe", "Zoe-pw-1"), ClientInfo())
    token = opened.token
    auth = token.to_auth_xml()
    for _ in range(3):  # read, then remembered
        await service.sessions.validate(auth)
    # Another process (here: another connection, as the CLI would be) deletes the row.
    with sqlite3.connect(tmp_path / "data" / "sessiond.db") as other:
        other.execute("DELETE FROM sessions WHERE id = ?", (token.session_id.hex,))
    with pytest.raises(SessionNotFound):
        await service.sessions.validate(auth)


def test_the_head_revision_named_in_the_schema_is_alembics() -> None:
    from sessiond.store.existing import newest_revision
    from sessiond.store.schema import HEAD_REVISION

    assert newest_revision() == HEAD_REVISION


@pytest.mark.parametrize("one_statement", [True, False])
async def test_touches_move_last_activity_forward_only(
    make_service: Any, monkeypatch: pytest.MonkeyPatch, one_statement: bool
) -> None:
    """Both ways of writing a batch (one statement, and row by row for an older SQLite)."""
    from datetime import timedelta

    from sessiond.auth import PasswordCredentials
    from sessiond.models import ClientInfo
    from sessiond.service import Actor

    monkeypatch.setattr("sessiond.store.sqlite._ONE_STATEMENT", one_statement)
    service = await make_service()
    await service.users.add_user(Actor.system(), "zoe", password="Zoe-pw-1")
    credentials = PasswordCredentials("zoe", "Zoe-pw-1")
    ids = [
        (await service.signin.open_session(credentials, ClientInfo())).token.session_id
        for _ in range(3)
    ]
    before = {s.id: s.last_activity for s in await service.store.list_sessions()}
    later, earlier = before[ids[0]] + timedelta(minutes=5), before[ids[1]] - timedelta(minutes=5)
    await service.store.touch_sessions({ids[0]: later, ids[1]: earlier})
    after = {s.id: s.last_activity for s in await service.store.list_sessions()}
    assert after[ids[0]] == later  # forward
    assert after[ids[1]] == before[ids[1]]  # never back
    assert after[ids[2]] == before[ids[2]]  # not in the batch
