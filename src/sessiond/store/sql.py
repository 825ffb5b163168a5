"""The store on SQLAlchemy's async Core: one implementation for SQLite and PostgreSQL.

Dialect differences (connection set-up, how a write transaction starts, the fast session read)
live in a module per dialect (``sqlite.py``); everything here is portable SQL, and the licence
row lock (``SELECT ... FOR UPDATE``) is what a multi-node dialect needs for exact seats.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict, fields
from datetime import datetime
from pathlib import Path
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ..errors import Conflict, LicenceLimitReached, NotFound, ServiceUnavailable
from ..licence import Licence
from ..models import (
    AccessLevel,
    AuditAction,
    ConfigurationInfo,
    DeviceType,
    LicenseType,
    LoginType,
    ServiceType,
)
from ..token import SessionToken
from . import schema
from .base import (
    AuditRecord,
    BuildInfo,
    FailurePolicy,
    SeatRequest,
    SessionClosure,
    SessionRecord,
    Store,
    UserRecord,
)

_MIGRATIONS = Path(__file__).parent / "migrations"
_USER_FIELDS = {f.name for f in fields(UserRecord)}
_TOKEN_FIELDS = [f.name for f in fields(SessionToken)]
_LICENCE_COLUMNS = {
    LicenseType.CONCURRENT_CLIENT: "concurrent_client",
    LicenseType.PERSONAL_CLIENT: "personal_client",
    LicenseType.CONCURRENT_WEB: "concurrent_web",
    LicenseType.PERSONAL_WEB: "personal_web",
}
_PERSONAL_USER_COLUMNS = {
    LicenseType.PERSONAL_CLIENT: "personal_client",
    LicenseType.PERSONAL_WEB: "personal_web",
}
_SEAT_NAMES = {
    LicenseType.CONCURRENT_CLIENT: "concurrent client",
    LicenseType.PERSONAL_CLIENT: "personal client",
    LicenseType.CONCURRENT_WEB: "concurrent web",
    LicenseType.PERSONAL_WEB: "personal web",
}
_ENUM_COLUMNS: dict[str, type[Any]] = {
    "access_level": AccessLevel,
    "login_type": LoginType,
    "license_type": LicenseType,
    "service_type": ServiceType,
    "device_type": DeviceType,
}


def migrate(sync_connection: sa.Connection) -> None:
    """Bring the schema to the newest revision (Alembic), on the given connection."""
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = sync_connection
    command.upgrade(cfg, "head")


def session_from_mapping(data: dict[str, Any]) -> SessionRecord:
    """A session row (column name -> Python value) as a record."""
    last_activity = data.pop("last_activity")
    client_address = data.pop("client_address")
    data["session_id"] = data.pop("id")
    for name, cls in _ENUM_COLUMNS.items():
        data[name] = cls(data[name])
    return SessionRecord(SessionToken(**data), last_activity, client_address)


def _key(text: str) -> str:
    return text.strip().casefold()


class SqlStore(Store):
    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    # --- plumbing ------------------------------------------------------------------------

    @asynccontextmanager
    async def _write(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction; dialects override how it begins (SQLite: BEGIN IMMEDIATE)."""
        try:
            async with self.engine.connect() as conn:
                conn = await conn.execution_options(sessiond_write=True)
                async with conn.begin():
                    yield conn
        except OperationalError as exc:
            raise ServiceUnavailable(f"the session store is unavailable: {exc.orig}") from None

    @asynccontextmanager
    async def _read(self) -> AsyncIterator[AsyncConnection]:
        try:
            async with self.engine.connect() as conn:
                yield conn
        except OperationalError as exc:
            raise ServiceUnavailable(f"the session store is unavailable: {exc.orig}") from None

    async def _serialise_start(self, conn: AsyncConnection) -> None:
        """Make nodes that start at once migrate one after another (dialects override)."""

    async def open(self, build: BuildInfo, now: datetime) -> None:
        async with self._write() as conn:
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

    @staticmethod
    def _user_values(user: UserRecord) -> dict[str, Any]:
        values = asdict(user)
        values["login_key"] = _key(user.login)
        values["account_key"] = _key(user.account) if user.account else None
        for name, value in list(values.items()):
            if name in _ENUM_COLUMNS and value is not None:
                values[name] = int(value)
        return values

    @staticmethod
    def _user(row: sa.Row[Any]) -> UserRecord:
        data = {k: v for k, v in row._mapping.items() if k in _USER_FIELDS}
        data["access_level"] = AccessLevel(data["access_level"])
        data["login_type"] = LoginType(data["login_type"])
        return UserRecord(**data)

    async def add_user(self, user: UserRecord) -> None:
        try:
            async with self._write() as conn:
                await conn.execute(schema.users.insert().values(**self._user_values(user)))
        except IntegrityError:
            raise Conflict(
                f"a user with login {user.login!r}"
                + (f" or account {user.account!r}" if user.account else "")
                + " already exists"
            ) from None

    async def _one_user(self, where: sa.ColumnElement[bool]) -> UserRecord | None:
        async with self._read() as conn:
            row = (await conn.execute(sa.select(schema.users).where(where))).first()
        return self._user(row) if row else None

    async def get_user(self, user_id: UUID) -> UserRecord | None:
        return await self._one_user(schema.users.c.id == user_id)

    async def find_user_by_login(self, login: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.login_key == _key(login))

    async def find_user_by_account(self, account: str) -> UserRecord | None:
        return await self._one_user(schema.users.c.account_key == _key(account))

    async def list_users(self) -> Sequence[UserRecord]:
        async with self._read() as conn:
            rows = await conn.execute(sa.select(schema.users).order_by(schema.users.c.login_key))
        return [self._user(r) for r in rows]

    async def count_users(self) -> int:
        async with self._read() as conn:
            value = await conn.scalar(sa.select(sa.func.count()).select_from(schema.users))
        return int(value or 0)

    async def update_user(
        self,
        user_id: UUID,
        audit: AuditRecord | None = None,
        *,
        close_sessions: SessionClosure | None = None,
        **changes: Any,
    ) -> UserRecord:
        unknown = changes.keys() - _USER_FIELDS
        if unknown or "id" in changes:
            raise ValueError(
                f"cannot update user fields {sorted(unknown | {'id'} & changes.keys())}"
            )
        values = dict(changes)
        if "login" in values:
            values["login_key"] = _key(values["login"])
        if "account" in values:
            values["account_key"] = _key(values["account"]) if values["account"] else None
        for name in _ENUM_COLUMNS.keys() & values.keys():
            values[name] = int(values[name])
        try:
            async with self._write() as conn:
                result = await conn.execute(
                    schema.users.update().where(schema.users.c.id == user_id).values(**values)
                )
                if result.rowcount == 0:
                    raise NotFound(f"no user with id {user_id}")
                if audit is not None:
                    await self._insert_audit(conn, audit)
                if close_sessions is not None:
                    await self._delete_user_sessions(conn, user_id, close_sessions)
                row = (
                    await conn.execute(sa.select(schema.users).where(schema.users.c.id == user_id))
                ).one()
        except IntegrityError:
            raise Conflict("that login or account belongs to another user") from None
        return self._user(row)

    async def record_failed_login(
        self, user_id: UUID, audit: AuditRecord, policy: FailurePolicy
    ) -> UserRecord:
        u = schema.users
        new_series = sa.or_(
            u.c.failed_series_start.is_(None),
            u.c.failed_series_start < policy.series_window_start,
        )
        async with self._write() as conn:
            await conn.execute(
                u.update()
                .where(u.c.id == user_id)
                .values(
                    failed_attempts=u.c.failed_attempts + 1,
                    failed_series_count=sa.case((new_series, 1), else_=u.c.failed_series_count + 1),
                    failed_series_start=sa.case(
                        (new_series, policy.at), else_=u.c.failed_series_start
                    ),
                )
            )
            await self._insert_audit(conn, audit)
            user = self._user((await conn.execute(sa.select(u).where(u.c.id == user_id))).one())
            decision = policy.decide(user)
            if decision is not None:
                until, block_audit = decision
                await conn.execute(
                    u.update().where(u.c.id == user_id).values(blocked=True, blocked_due_date=until)
                )
                await self._insert_audit(conn, block_audit)
                user = self._user((await conn.execute(sa.select(u).where(u.c.id == user_id))).one())
        return user

    async def set_personal_licence(
        self,
        user_id: UUID,
        license_type: LicenseType,
        holds: bool,
        limit: int | None,
        close_sessions: SessionClosure | None = None,
    ) -> UserRecord:
        u = schema.users
        column = u.c[_PERSONAL_USER_COLUMNS[license_type]]
        async with self._write() as conn:
            await self._lock_licence(conn)
            if holds and limit is not None:
                given = await conn.scalar(
                    sa.select(sa.func.count()).where(column.is_(True), u.c.id != user_id)
                )
                if int(given or 0) >= limit:
                    raise LicenceLimitReached(
                        f"licence limit reached: {given} of {limit} "
                        f"{_SEAT_NAMES[license_type]} licences are given out"
                    )
            result = await conn.execute(
                u.update().where(u.c.id == user_id).values({column.name: holds})
            )
            if result.rowcount == 0:
                raise NotFound(f"no user with id {user_id}")
            if close_sessions is not None:
                await self._delete_user_sessions(conn, user_id, close_sessions)
            row = (await conn.execute(sa.select(u).where(u.c.id == user_id))).one()
        return self._user(row)

    async def add_password_history(self, user_id: UUID, password_hash: str, at: datetime) -> None:
        async with self._write() as conn:
            await conn.execute(
                schema.password_history.insert().values(
                    user_id=user_id, password_hash=password_hash, changed=at
                )
            )

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

    @staticmethod
    def _session_values(session: SessionRecord) -> dict[str, Any]:
        token = session.token
        values = {name: getattr(token, name) for name in _TOKEN_FIELDS}
        values["id"] = values.pop("session_id")
        for name in _ENUM_COLUMNS.keys() & values.keys():
            values[name] = int(values[name])
        values["last_activity"] = session.last_activity
        values["client_address"] = session.client_address
        return values

    @staticmethod
    def _session(row: sa.Row[Any]) -> SessionRecord:
        return session_from_mapping(dict(row._mapping))

    async def add_session(
        self, session: SessionRecord, audit: AuditRecord, seat: SeatRequest | None = None
    ) -> list[SessionRecord]:
        displaced: list[SessionRecord] = []
        async with self._write() as conn:
            if seat is not None:
                displaced = await self._take_seat(conn, session, seat)
            await conn.execute(schema.sessions.insert().values(**self._session_values(session)))
            await self._insert_audit(conn, audit)
        return displaced

    @staticmethod
    async def _lock_licence(conn: AsyncConnection) -> sa.Row[Any] | None:
        # On PostgreSQL the row lock serialises seat-taking across nodes; SQLite's
        # BEGIN IMMEDIATE already holds the database's one write lock.
        query = sa.select(schema.licence).where(schema.licence.c.id == 1).with_for_update()
        return (await conn.execute(query)).first()

    @staticmethod
    def _counted(seat: SeatRequest) -> list[sa.ColumnElement[bool]]:
        s = schema.sessions
        where = [s.c.license_type == int(seat.license_type), s.c.expires > seat.now]
        if seat.active_since is not None:
            where.append(s.c.last_activity >= seat.active_since)
        return where

    async def _take_seat(
        self, conn: AsyncConnection, session: SessionRecord, seat: SeatRequest
    ) -> list[SessionRecord]:
        licence = await self._lock_licence(conn)
        if licence is None:
            return []  # no licence installed: seats are not limited
        limit = int(licence._mapping[_LICENCE_COLUMNS[seat.license_type]])
        s = schema.sessions
        counted = self._counted(seat)
        in_use = int(await conn.scalar(sa.select(sa.func.count()).where(*counted)) or 0)
        displaced: list[SessionRecord] = []
        while in_use >= limit:
            name = _SEAT_NAMES[seat.license_type]
            if not seat.displace_oldest:
                raise LicenceLimitReached(
                    f"licence limit reached: {in_use} of {limit} {name} sessions in use",
                    details={
                        "license_type": seat.license_type.wire,
                        "in_use": in_use,
                        "seats": limit,
                    },
                )
            row = (
                await conn.execute(
                    sa.select(s)
                    .where(*counted, s.c.user_id == session.token.user_id)
                    .order_by(s.c.created, s.c.id)
                    .limit(1)
                )
            ).first()
            if row is None:
                raise LicenceLimitReached(
                    f"licence limit reached: {in_use} of {limit} {name} sessions in use, and "
                    "none of them is yours to give up",
                    details={
                        "license_type": seat.license_type.wire,
                        "in_use": in_use,
                        "seats": limit,
                    },
                )
            old = self._session(row)
            await conn.execute(s.delete().where(s.c.id == old.id))
            await self._insert_audit(conn, seat.displaced_audit(old))
            displaced.append(old)
            in_use -= 1
        return displaced

    async def get_session(self, session_id: UUID) -> SessionRecord | None:
        async with self._read() as conn:
            row = (
                await conn.execute(
                    sa.select(schema.sessions).where(schema.sessions.c.id == session_id)
                )
            ).first()
        return self._session(row) if row else None

    async def touch_sessions(self, touches: Mapping[UUID, datetime]) -> None:
        if not touches:
            return
        s = schema.sessions
        statement = (
            s.update()
            .where(s.c.id == sa.bindparam("sid"), s.c.last_activity < sa.bindparam("at"))
            .values(last_activity=sa.bindparam("at"))
        )
        async with self._write() as conn:
            await conn.execute(statement, [{"sid": k, "at": v} for k, v in touches.items()])

    async def delete_session(self, session_id: UUID, audit: AuditRecord) -> SessionRecord | None:
        s = schema.sessions
        async with self._write() as conn:
            # DELETE ... RETURNING: of two nodes closing the same session at once, exactly one
            # gets the row back, and only that one writes the audit record.
            row = (
                await conn.execute(s.delete().where(s.c.id == session_id).returning(*s.c))
            ).first()
            if row is None:
                return None
            await self._insert_audit(conn, audit)
        return self._session(row)

    async def list_sessions(self, user_id: UUID | None = None) -> Sequence[SessionRecord]:
        s = schema.sessions
        query = sa.select(s).order_by(s.c.created)
        if user_id is not None:
            query = query.where(s.c.user_id == user_id)
        async with self._read() as conn:
            rows = await conn.execute(query)
        return [self._session(r) for r in rows]

    async def delete_user_sessions(
        self, user_id: UUID, closure: SessionClosure
    ) -> list[SessionRecord]:
        async with self._write() as conn:
            return await self._delete_user_sessions(conn, user_id, closure)

    async def _delete_user_sessions(
        self, conn: AsyncConnection, user_id: UUID, closure: SessionClosure
    ) -> list[SessionRecord]:
        s = schema.sessions
        query = sa.select(s).where(s.c.user_id == user_id)
        if closure.license_type is not None:
            query = query.where(s.c.license_type == int(closure.license_type))
        return await self._delete_returning(conn, query, closure.audit)

    async def _delete_returning(
        self,
        conn: AsyncConnection,
        query: sa.Select[Any],
        audit: Callable[[SessionRecord], AuditRecord],
    ) -> list[SessionRecord]:
        """Delete the sessions ``query`` selects, auditing exactly those this transaction
        deleted (another node may be deleting some of them at the same moment)."""
        s = schema.sessions
        ids = [row[0] for row in (await conn.execute(query.with_only_columns(s.c.id))).all()]
        if not ids:
            return []
        rows = (await conn.execute(s.delete().where(s.c.id.in_(ids)).returning(*s.c))).all()
        deleted = [self._session(r) for r in rows]
        for record in deleted:
            await self._insert_audit(conn, audit(record))
        return deleted

    async def sweep_sessions(
        self,
        now: datetime,
        idle_before: datetime | None,
        audit: Callable[[SessionRecord], AuditRecord],
        limit: int = 500,
    ) -> list[SessionRecord]:
        s = schema.sessions
        stale = s.c.expires <= now
        if idle_before is not None:
            stale = sa.or_(stale, s.c.last_activity < idle_before)
        async with self._write() as conn:
            return await self._delete_returning(conn, sa.select(s).where(stale).limit(limit), audit)

    # --- licences ------------------------------------------------------------------------

    async def get_licence(self) -> Licence | None:
        async with self._read() as conn:
            row = (
                await conn.execute(sa.select(schema.licence).where(schema.licence.c.id == 1))
            ).first()
        if row is None:
            return None
        m = row._mapping
        return Licence(
            id=m["licence_id"],
            licensee=m["licensee"],
            valid_from=m["valid_from"],
            valid_to=m["valid_to"],
            seats={kind: int(m[column]) for kind, column in _LICENCE_COLUMNS.items()},
            signed=bool(m["signed"]),
            text=m["content"],
        )

    async def install_licence(self, licence: Licence, at: datetime) -> None:
        values: dict[str, Any] = {
            "licence_id": licence.id,
            "licensee": licence.licensee,
            "valid_from": licence.valid_from,
            "valid_to": licence.valid_to,
            "signed": licence.signed,
            "content": licence.text,
            "installed": at,
            **{column: licence.seats_of(kind) for kind, column in _LICENCE_COLUMNS.items()},
        }
        async with self._write() as conn:
            if await self._lock_licence(conn) is None:
                await conn.execute(schema.licence.insert().values(id=1, **values))
            else:
                await conn.execute(
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
            for kind, column in _PERSONAL_USER_COLUMNS.items():
                holders = await conn.scalar(sa.select(sa.func.count()).where(u.c[column].is_(True)))
                usage[kind] = int(holders or 0)
        return usage

    # --- audit ---------------------------------------------------------------------------

    @staticmethod
    async def _insert_audit(conn: AsyncConnection, record: AuditRecord) -> None:
        values = asdict(record)
        values.pop("id")
        values["action"] = int(record.action)
        values["details"] = json.dumps(record.details, default=str, ensure_ascii=False)
        await conn.execute(schema.audit.insert().values(**values))

    async def add_audit(self, record: AuditRecord) -> None:
        async with self._write() as conn:
            await self._insert_audit(conn, record)

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
        out = []
        for row in rows:
            data = dict(row._mapping)
            data["action"] = AuditAction(data["action"])
            data["details"] = json.loads(data["details"])
            out.append(AuditRecord(**data))
        return out

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
        async with self._write() as conn:
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
            )
            info = self._configuration((await conn.execute(sa.select(c))).one())
            details = {**audit.details, "version": info.version}
            await self._insert_audit(
                conn,
                AuditRecord(**{**asdict(audit), "details": details}),
            )
        return info
