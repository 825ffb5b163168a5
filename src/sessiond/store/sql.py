"""The store on SQLAlchemy's async Core: one implementation for every database it supports.

Everything here is portable SQL. Where the databases differ (how a write transaction begins,
start-up, notifications, what follows a delete, what counts as unreachable) the store asks its
:class:`~sessiond.store.dialect.Dialect`, chosen once from the engine when the store is made;
connection set-up and the fast session reads live with each database's store subclass.
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
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..licence import Licence
from ..models import ConfigurationInfo, LicenseType
from . import schema
from .base import (
    AuditQuery,
    AuditRecord,
    BuildInfo,
    SessionQuery,
    SessionRecord,
    SessionUser,
    Store,
    UserRecord,
)
from .bounds import bounded_connection, checkout_within
from .chain import ChainAnchor, ChainHead, ChainReport, walk
from .codec import (
    LICENCE_COLUMNS,
    PERSONAL_USER_COLUMNS,
    SESSION_COLUMNS,
    SQL_SESSIONS,
    USER_CHECK_COLUMNS,
    account_key,
    audit_from_row,
    key,
    session_from_row,
    user_from_row,
)
from .dialect import Dialect, dialect_of
from .health import busy, unavailable, unreachable
from .state import open_sql
from .transaction import SqlTransaction, licence_from_row

_MIGRATIONS = Path(__file__).parent / "migrations"


def migrate(sync_connection: sa.Connection) -> None:
    """Bring the schema to the newest revision (Alembic), on the given connection; at once,
    without loading Alembic's scripts, when it is there already."""
    if _revision(sync_connection) == schema.HEAD_REVISION:
        return
    from alembic import command
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_connection
    command.upgrade(cfg, "head")


def _revision(sync_connection: sa.Connection) -> str | None:
    if not sa.inspect(sync_connection).has_table("alembic_version"):
        return None
    value = sync_connection.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
    return str(value) if value is not None else None


class SqlStore(Store):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine
        #: what this database does differently (dialect.py), chosen once, here
        self.dialect: Dialect = dialect_of(engine)
        self.dialect.configure(engine)
        #: (pool, connect, statement) timeouts in seconds (see bounds.py), set by a store on a
        #: server that can freeze; None: the driver's own waits only
        self.bounds: tuple[float, float, float] | None = None

    # --- plumbing ------------------------------------------------------------------------

    def _connect(self, *, bounded: bool = True) -> Any:
        if self.bounds is None or not bounded:
            return self.engine.connect()
        pool, connect, statement = self.bounds
        checkout = checkout_within(self.engine, pool, connect)
        return bounded_connection(self.engine, checkout=checkout, work=statement)

    @asynccontextmanager
    async def _connection(
        self, *, write: bool, bounded: bool = True
    ) -> AsyncIterator[AsyncConnection]:
        """A connection, in a transaction when writing; the dialect decides how a write
        transaction begins. ``bounded``: within the store's timeouts (bounds.py), which only
        start-up goes without (migrations take their time)."""
        try:
            async with self._connect(bounded=bounded) as conn:
                if not write:
                    yield conn
                    return
                conn = await self.dialect.writing(conn)
                async with conn.begin():
                    yield conn
        except sa.exc.TimeoutError:  # every connection of the pool stayed in use
            raise busy() from None
        except Exception as exc:
            if not unreachable(exc, self.dialect):  # OperationalError, a lost connection, ...
                raise
            raise unavailable(exc) from None

    @asynccontextmanager
    async def write(self) -> AsyncIterator[SqlTransaction]:
        async with self._connection(write=True) as conn:
            yield SqlTransaction(conn, self.audit_keys, self.dialect)

    def _read(self) -> Any:
        return self._connection(write=False)

    async def open(self, build: BuildInfo, now: datetime) -> None:
        async with self._connection(write=True, bounded=False) as conn:
            await self.dialect.serialise_start(conn)
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

    async def _one_user(self, where: sa.ColumnElement[bool]) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(schema.users).where(where))).first()
        return user_from_row(row) if row else None

    async def get_user(self, user_id: UUID) -> UserRecord | None:
        return await self._one_user(schema.users.c.id == user_id)

    async def find_user_by_login(self, login: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.login_key == key(login))

    async def find_user_by_account(self, account: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.account_key == account_key(account))

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

    async def session_to_validate(
        self, session_id: UUID
    ) -> tuple[SessionRecord, SessionUser | None] | None:
        s, u = schema.sessions, schema.users
        query = (
            sa.select(s, *(u.c[c].label(f"user_{c}") for c in USER_CHECK_COLUMNS))
            .select_from(s.outerjoin(u, u.c.id == s.c.user_id))
            .where(s.c.id == session_id)
        )
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        m = row._mapping
        raw = [m[name] for name in SESSION_COLUMNS] + [m[f"user_{c}"] for c in USER_CHECK_COLUMNS]
        return SQL_SESSIONS.decode_with_user(raw)

    async def session_version(self, session_id: UUID) -> tuple[int, datetime] | None:
        s = schema.sessions
        query = sa.select(s.c.version, s.c.last_activity).where(s.c.id == session_id)
        async with self._read() as conn:
            row = (await conn.execute(query)).first()
        return (int(row[0]), row[1]) if row is not None else None

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

    async def list_sessions(self, query: SessionQuery | None = None) -> Sequence[SessionRecord]:
        async with self._read() as conn:
            rows = await conn.execute(_session_page(query or SessionQuery()))
        return [session_from_row(r) for r in rows]

    # --- licences ------------------------------------------------------------------------

    async def get_licence(self) -> Licence | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(schema.licence).where(schema.licence.c.id == 1))
            ).first()
        return licence_from_row(row) if row else None

    async def install_licence(self, licence: Licence, at: datetime, audit: AuditRecord) -> bool:
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
            installed = await tx.lock_licence()
            if installed is None:
                await tx.conn.execute(schema.licence.insert().values(id=1, **values))
            elif installed.text == licence.text:
                return False
            else:
                await tx.conn.execute(
                    schema.licence.update().where(schema.licence.c.id == 1).values(**values)
                )
            await tx.add_audit(audit)
            await self.dialect.announce(tx.conn, "licence")
        return True

    async def licence_usage(
        self, now: datetime, active_since: datetime | None
    ) -> dict[LicenseType, int]:
        s, u = schema.sessions, schema.users
        usage: dict[LicenseType, int] = {}
        async with self._read() as conn:
            rows = await conn.execute(
                sa.select(s.c.license_type, sa.func.count())
                .where(open_sql(now, active_since))
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

    async def list_audit(self, query: AuditQuery) -> Sequence[AuditRecord]:
        async with self._read() as conn:
            rows = await conn.execute(_audit_page(query))
        return [audit_from_row(row) for row in rows]

    async def audit_head(self) -> ChainHead:
        h, a = schema.audit_head, schema.audit
        last_key = sa.select(a.c.key_id).where(a.c.id == h.c.last_id).scalar_subquery()
        async with self._read() as conn:
            head = (
                await conn.execute(sa.select(h, last_key.label("last_key_id")).where(h.c.id == 1))
            ).one()
        return ChainHead(
            int(head.last_id), str(head.last_hash), int(head.keyed_from), head.last_key_id
        )

    async def verify_audit(self, saved: ChainAnchor | None = None) -> ChainReport:
        a = schema.audit

        async def rows() -> AsyncIterator[Mapping[str, Any]]:
            after = 0
            while True:
                async with self._read() as conn:
                    page = (
                        (
                            await conn.execute(
                                sa.select(a).where(a.c.id > after).order_by(a.c.id).limit(1000)
                            )
                        )
                        .mappings()
                        .all()
                    )
                for row in page:
                    yield row
                if len(page) < 1000:
                    return
                after = int(page[-1]["id"])

        return await walk(rows(), await self.audit_head(), self.audit_keys, saved)

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
        async with self.write() as tx:
            row = (
                await tx.conn.execute(
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
            await tx.add_audit(replace(audit, details={**audit.details, "version": info.version}))
            await self.dialect.announce(tx.conn, f"version {info.version}")  # at commit
        return info


_SESSION_ORDERS = {
    "created": schema.sessions.c.created,
    "last_activity": schema.sessions.c.last_activity,
    "user_name": schema.sessions.c.user_name,
}


def _session_page(q: SessionQuery) -> sa.Select[Any]:
    s = schema.sessions
    query = sa.select(s)
    exact = {
        s.c.user_id: q.user_id,
        s.c.license_type: int(q.license_type) if q.license_type is not None else None,
        s.c.application_id: q.application_id,
        s.c.service_type: int(q.service_type) if q.service_type is not None else None,
        s.c.device_type: int(q.device_type) if q.device_type is not None else None,
        s.c.client_address: q.client_address,
    }
    for column, value in exact.items():
        if value is not None:
            query = query.where(column == value)
    if q.user_name:
        query = query.where(sa.func.lower(s.c.user_name).like(_prefix(q.user_name), escape="\\"))
    if q.open_at is not None:
        query = query.where(open_sql(q.open_at, q.active_since))
    key = _SESSION_ORDERS[q.order]
    if q.after is not None:
        cursor = sa.tuple_(key, s.c.id)
        query = query.where(cursor < q.after if q.descending else cursor > q.after)
    if q.descending:
        query = query.order_by(key.desc(), s.c.id.desc())
    else:
        query = query.order_by(key, s.c.id)
    return query.limit(q.limit) if q.limit is not None else query


def _prefix(text: str) -> str:
    escaped = text.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return escaped + "%"


def _audit_page(q: AuditQuery) -> sa.Select[Any]:
    a = schema.audit
    query = sa.select(a)
    if q.actions:
        query = query.where(a.c.action.in_([int(action) for action in q.actions]))
    if q.user_id is not None:
        query = query.where(a.c.user_id == q.user_id)
    if q.user_name:
        query = query.where(sa.func.lower(a.c.user_name) == q.user_name.lower())
    if q.since is not None:
        query = query.where(a.c.at >= q.since)
    if q.until is not None:
        query = query.where(a.c.at < q.until)
    if q.after_id is not None:
        query = query.where(a.c.id > q.after_id)
    if q.before_id is not None:
        query = query.where(a.c.id < q.before_id)
    query = query.order_by(a.c.id.desc() if q.newest_first else a.c.id)
    return query.limit(q.limit) if q.limit is not None else query
