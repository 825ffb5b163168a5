"""The store on SQLAlchemy's async Core: one implementation for SQLite and PostgreSQL.

Dialect differences (connection set-up, how a write transaction starts, the fast session read)
live in a module per dialect (``sqlite.py``, ``postgres.py``); everything here is portable SQL.
Writes that guard a rule go through :class:`~sessiond.store.transaction.SqlTransaction`.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import replace
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import Conflict, ServiceUnavailable
from ..licence import Licence
from ..models import AuditAction, ConfigurationInfo, LicenseType
from . import schema
from .base import AuditRecord, BuildInfo, SessionRecord, Store, UserRecord
from .codec import (
    LICENCE_COLUMNS,
    PERSONAL_USER_COLUMNS,
    audit_from_row,
    audit_values,
    key,
    session_from_row,
    user_from_row,
    user_values,
)
from .transaction import SqlTransaction, licence_from_row

_MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(sync_connection: sa.Connection) -> None:
    """Bring the schema to the newest revision (Alembic), on the given connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_connection
    command.upgrade(cfg, "head")


class SqlStore(Store):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- plumbing ------------------------------------------------------------------------

    @asynccontextmanager
    async def _connection(self, *, write: bool) -> AsyncIterator[AsyncConnection]:
        """A connection, in a transaction when writing; dialects decide how a write
        transaction begins (SQLite: BEGIN IMMEDIATE)."""
        try:
            async with self.engine.connect() as conn:
                if not write:
                    yield conn
                    return
                conn = await conn.execution_options(sessiond_write=True)
                async with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise ServiceUnavailable(f"the session store is unavailable: {exc.orig}") from None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SqlTransaction]:
        async with self._connection(write=True) as conn:
            yield SqlTransaction(conn)

    def _read(self) -> Any:
        return self._connection(write=False)

    async def _serialise_start(self, conn: AsyncConnection) -> None:
        """Make nodes that start at once migrate one after another (dialects override)."""

    async def open(self, build: BuildInfo, now: datetime) -> None:
        async with self._connection(write=True) as conn:
            await self._serialise_start(conn)
            await conn.run_sync(migrate)
            row = (await conn.execute(sa.select(schema.configuration.c.id))).first()
            if row is None:
                await conn.execute(
                    schema.configuration.insert().values(
                        id=1,
                        version=1,
                        modified=now,
                        modified_by_id=None,
                        modified_by_name="System",
                        build_version=build.version,
                        build_name=build.name,
                        build_date=build.date,
                        description=build.description,
                    )
                )

    async def close(self) -> None:
        await self.engine.dispose()

    # --- users ---------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        try:
            async with self._connection(write=True) as conn:
                await conn.execute(schema.users.insert().values(**user_values(user)))
        except IntegrityError:
            raise Conflict(
                f"a user with login {user.login!r}"
                + (f" or account {user.account!r}" if user.account else "")
                + " already exists"
            ) from None

    async def _one_user(self, where: sa.ColumnElement[bool]) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(schema.users).where(where))).first()
        return user_from_row(row) if row else None

    async def get_user(self, user_id: UUID) -> UserRecord | None:
        return await self._one_user(schema.users.c.id == user_id)

    async def find_user_by_login(self, login: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.login_key == key(login))

    async def find_user_by_account(self, account: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.account_key == key(account))

    async def list_users(self) -> Sequence[UserRecord]:
        async with self._read() as conn:
            rows = await conn.execute(sa.select(schema.users).order_by(schema.users.c.login_key))
        return [user_from_row(r) for r in rows]

    async def count_users(self) -> int:
        async with self._read() as conn:
            value = await conn.scalar(sa.select(sa.func.count()).select_from(schema.users))
        return int(value or 0)

    async def password_history(self, user_id: UUID, limit: int) -> Sequence[str]:
        ph = schema.password_history
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(ph.c.password_hash)
                .where(ph.c.user_id == user_id)
                .order_by(ph.c.changed.desc(), ph.c.id.desc())
                .limit(limit)
            )
        return [r[0] for r in rows]

    # --- sessions ------------------------------------------------------------------------

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        s = schema.sessions
        async with self._read() as conn:
            row = (await conn.execute(sa.select(s).where(s.c.id == session_id))).first()
        return session_from_row(row) if row else None

    async def touch_sessions(self, touches: Mapping[UUID, datetime]) -> None:
        if not touches:
            return
        s = schema.sessions
        statement = (
            s.update()
            .where(s.c.id == sa.bindparam("sid"), s.c.last_activity < sa.bindparam("at"))
            .values(last_activity=sa.bindparam("at"))
        )
        async with self._connection(write=True) as conn:
            await conn.execute(statement, [{"sid": k, "at": v} for k, v in touches.items()])

    async def list_sessions(
        self,
        user_id: UUID | None = None,
        *,
        open_at: datetime | None = None,
        active_since: datetime | None = None,
    ) -> Sequence[SessionRecord]:
        s = schema.sessions
        query = sa.select(s).order_by(s.c.created, s.c.id)
        if user_id is not None:
            query = query.where(s.c.user_id == user_id)
        if open_at is not None:
            query = query.where(s.c.expires > open_at)
        if active_since is not None:
            query = query.where(s.c.last_activity >= active_since)
        async with self._read() as conn:
            rows = await conn.execute(query)
        return [session_from_row(r) for r in rows]

    # --- licences ------------------------------------------------------------------------

    async def get_licence(self) -> Licence | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(schema.licence).where(schema.licence.c.id == 1))
            ).first()
        return licence_from_row(row) if row else None

    async def install_licence(self, licence: Licence, at: datetime) -> None:
        values: dict[str, Any] = {
            "licence_id": licence.id,
            "licensee": licence.licensee,
            "valid_from": licence.valid_from,
            "valid_to": licence.valid_to,
            "signed": licence.signed,
            "content": licence.text,
            "installed": at,
            **{column: licence.seats_of(kind) for kind, column in LICENCE_COLUMNS.items()},
        }
        async with self.write() as tx:
            if await tx.lock_licence() is None:
                await tx.conn.execute(schema.licence.insert().values(id=1, **values))
            else:
                await tx.conn.execute(
                    schema.licence.update().where(schema.licence.c.id == 1).values(**values)
                )

    async def licence_usage(
        self, now: datetime, active_since: datetime | None
    ) -> dict[LicenseType, int]:
        s, u = schema.sessions, schema.users
        usage: dict[LicenseType, int] = {}
        async with self._read() as conn:
            where = [s.c.expires > now]
            if active_since is not None:
                where.append(s.c.last_activity >= active_since)
            rows = await conn.execute(
                sa.select(s.c.license_type, sa.func.count())
                .where(*where)
                .group_by(s.c.license_type)
            )
            for kind, count in rows:
                usage[LicenseType(kind)] = int(count)
            for kind, column in PERSONAL_USER_COLUMNS.items():
                holders = await conn.scalar(sa.select(sa.func.count()).where(u.c[column].is_(True)))
                usage[kind] = int(holders or 0)
        return usage

    # --- audit ---------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord) -> None:
        async with self.write() as tx:
            await tx.add_audit(record)

    async def list_audit(
        self,
        *,
        since: datetime | None = None,
        action: AuditAction | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Sequence[AuditRecord]:
        a = schema.audit
        query = sa.select(a).order_by(a.c.id)
        if since is not None:
            query = query.where(a.c.at >= since)
        if action is not None:
            query = query.where(a.c.action == int(action))
        if after_id is not None:
            query = query.where(a.c.id > after_id)
        if limit is not None:
            query = query.limit(limit)
        async with self._read() as conn:
            rows = await conn.execute(query)
        return [audit_from_row(row) for row in rows]

    # --- configuration -------------------------------------------------------------------

    @staticmethod
    def _configuration(row: sa.Row[Any]) -> ConfigurationInfo:
        data = dict(row._mapping)
        data.pop("id")
        return ConfigurationInfo(**data)

    async def get_configuration(self) -> ConfigurationInfo:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(schema.configuration))).one()
        return self._configuration(row)

    async def increment_configuration_version(
        self,
        *,
        at: datetime,
        by_id: UUID | None,
        by_name: str,
        build: BuildInfo,
        audit: AuditRecord,
    ) -> ConfigurationInfo:
        c = schema.configuration
        async with self._connection(write=True) as conn:
            row = (
                await conn.execute(
                    c.update()
                    .where(c.c.id == 1)
                    .values(
                        version=c.c.version + 1,
                        modified=at,
                        modified_by_id=by_id,
                        modified_by_name=by_name,
                        build_version=build.version,
                        build_name=build.name,
                        build_date=build.date,
                        description=build.description,
                    )
                    .returning(*c.c)
                )
            ).one()
            info = self._configuration(row)
            stamped = replace(audit, details={**audit.details, "version": info.version})
            await conn.execute(schema.audit.insert().values(**audit_values(stamped)))
        return info
