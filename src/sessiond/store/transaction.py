"""One write transaction on SQLAlchemy Core, the same SQL on SQLite and PostgreSQL.

Locks: SQLite's ``BEGIN IMMEDIATE`` (see ``sqlite.py``) holds the database's one write lock for
the whole transaction, so every read here is already exclusive. On PostgreSQL ``lock_*`` take
row locks (``SELECT ... FOR UPDATE``) in one order everywhere — administrators, then a user,
then the licence row — so that two transactions never wait on each other in a circle.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from ..errors import Conflict, LicenceLimitReached, NotFound
from ..licence import Licence
from ..models import AccessLevel, LicenseType
from . import openid, schema
from .base import (
    AuditRecord,
    SeatRequest,
    SessionDecision,
    SessionFilter,
    SessionRecord,
    SignInAttempt,
    Throttle,
    Transaction,
    UserRecord,
)
from .chain import ChainKeys, record_hash
from .codec import (
    LICENCE_COLUMNS,
    PERSONAL_USER_COLUMNS,
    SEAT_NAMES,
    audit_values,
    session_from_row,
    session_values,
    user_changes,
    user_from_row,
    user_values,
)
from .notify import announce_revoked
from .schema import removal_bucket

u, s, a = schema.users, schema.sessions, schema.audit


class SqlTransaction(Transaction):
    def __init__(self, conn: AsyncConnection, audit_keys: ChainKeys) -> None:
        self.conn = conn
        self.audit_keys = audit_keys

    # --- users ---------------------------------------------------------------------------

    async def add_user(self, user: UserRecord) -> None:
        try:
            async with self.conn.begin_nested():
                await self.conn.execute(u.insert().values(**user_values(user)))
                await openid.keep_identity(self.conn, user)
        except IntegrityError:
            raise Conflict(
                f"a user with login {user.login!r}"
                + (f" or account {user.account!r}" if user.account else "")
                + " already exists"
            ) from None

    async def delete_user(self, user_id: UUID) -> None:
        # Password history and checks in progress go with the user (ON DELETE CASCADE).
        await self.conn.execute(u.delete().where(u.c.id == user_id))

    async def lock_user(self, user_id: UUID) -> UserRecord | None:
        query = sa.select(u).where(u.c.id == user_id).with_for_update()
        row = (await self.conn.execute(query)).first()
        return user_from_row(row) if row else None

    async def lock_administrators(self) -> list[UserRecord]:
        query = (
            sa.select(u)
            .where(u.c.access_level == int(AccessLevel.ADMINISTRATOR))
            .order_by(u.c.id)
            .with_for_update()
        )
        return [user_from_row(row) for row in await self.conn.execute(query)]

    async def update_user(self, user_id: UUID, **changes: Any) -> UserRecord:
        values = user_changes(changes)
        try:
            async with self.conn.begin_nested():
                row = (
                    await self.conn.execute(
                        u.update().where(u.c.id == user_id).values(**values).returning(*u.c)
                    )
                ).first()
                if row is not None and {"account", "login_type"} & changes.keys():
                    await openid.keep_identity(self.conn, user_from_row(row), replace=True)
        except IntegrityError:
            raise Conflict("that login or account belongs to another user") from None
        if row is None:
            raise NotFound(f"no user with id {user_id}")
        return user_from_row(row)

    async def add_password_history(self, user_id: UUID, password_hash: str, at: Any) -> None:
        await self.conn.execute(
            schema.password_history.insert().values(
                user_id=user_id, password_hash=password_hash, changed=at
            )
        )

    async def count_personal_licences(self, license_type: LicenseType, except_user: UUID) -> int:
        column = u.c[PERSONAL_USER_COLUMNS[license_type]]
        query = sa.select(sa.func.count()).where(column.is_(True), u.c.id != except_user)
        return int(await self.conn.scalar(query) or 0)

    # --- password checks in progress -----------------------------------------------------

    async def sign_in_attempts(self, user_id: UUID, now: Any) -> int:
        t = schema.sign_in_attempts
        await self.conn.execute(t.delete().where(t.c.user_id == user_id, t.c.expires <= now))
        query = sa.select(sa.func.count()).where(t.c.user_id == user_id)
        return int(await self.conn.scalar(query) or 0)

    async def add_sign_in_attempt(self, attempt: SignInAttempt) -> None:
        await self.conn.execute(
            schema.sign_in_attempts.insert().values(
                id=attempt.id,
                user_id=attempt.user_id,
                started=attempt.started,
                expires=attempt.expires,
            )
        )

    async def remove_sign_in_attempt(self, attempt_id: UUID) -> None:
        t = schema.sign_in_attempts
        await self.conn.execute(t.delete().where(t.c.id == attempt_id))

    # --- limits on refused sign-ins of unmapped accounts ----------------------------------

    async def lock_throttle(self, key: str, now: Any) -> Throttle:
        t = schema.throttles
        query = sa.select(t).where(t.c.key == key).with_for_update()
        row = (await self.conn.execute(query)).first()
        if row is None:
            try:
                async with self.conn.begin_nested():
                    await self.conn.execute(
                        t.insert().values(key=key, failures=0, window_start=now, blocked_until=None)
                    )
            except IntegrityError:  # another node made it meanwhile: lock theirs
                pass
            row = (await self.conn.execute(query)).one()
        m = row._mapping
        return Throttle(m["key"], int(m["failures"]), m["window_start"], m["blocked_until"])

    async def update_throttle(self, key: str, **changes: Any) -> None:
        t = schema.throttles
        await self.conn.execute(t.update().where(t.c.key == key).values(**changes))

    async def throttle_attempts(self, key: str, now: Any) -> int:
        t = schema.throttle_attempts
        await self.conn.execute(t.delete().where(t.c.key == key, t.c.expires <= now))
        query = sa.select(sa.func.count()).where(t.c.key == key)
        return int(await self.conn.scalar(query) or 0)

    async def add_throttle_attempt(self, attempt_id: UUID, key: str, expires: Any) -> None:
        await self.conn.execute(
            schema.throttle_attempts.insert().values(id=attempt_id, key=key, expires=expires)
        )

    async def remove_throttle_attempts(self, attempt_id: UUID) -> None:
        t = schema.throttle_attempts
        await self.conn.execute(t.delete().where(t.c.id == attempt_id))

    # --- sessions ------------------------------------------------------------------------

    async def add_session(
        self, session: SessionRecord, seat: SeatRequest | None = None
    ) -> list[SessionRecord]:
        displaced = await self._take_seat(session, seat) if seat is not None else []
        await self.conn.execute(s.insert().values(**session_values(session)))
        return displaced

    async def _take_seat(self, session: SessionRecord, seat: SeatRequest) -> list[SessionRecord]:
        licence = await self.lock_licence()
        if licence is None:
            return []  # no licence installed: seats are not limited
        limit = licence.seats_of(seat.license_type)
        counted = [s.c.license_type == int(seat.license_type), s.c.expires > seat.now]
        if seat.active_since is not None:
            counted.append(s.c.last_activity >= seat.active_since)
        in_use = int(await self.conn.scalar(sa.select(sa.func.count()).where(*counted)) or 0)
        if in_use < limit:
            return []
        refusal = (
            f"licence limit reached: {in_use} of {limit} {SEAT_NAMES[seat.license_type]} "
            "sessions in use"
        )
        details = {"license_type": seat.license_type.wire, "in_use": in_use, "seats": limit}
        if not seat.displace_oldest:
            raise LicenceLimitReached(refusal, details=details)
        # Decide first, then write: a refusal must leave nothing half done.
        needed = in_use - limit + 1
        oldest = [
            session_from_row(row)
            for row in await self.conn.execute(
                sa.select(s)
                .where(*counted, s.c.user_id == session.token.user_id)
                .order_by(s.c.created, s.c.id)
                .limit(needed)
            )
        ]
        if len(oldest) < needed:
            mine = "none of them is" if not oldest else "not enough of them are"
            raise LicenceLimitReached(f"{refusal}, and {mine} yours to give up", details=details)
        return await self.delete_sessions(
            SessionFilter(session_ids=tuple(r.id for r in oldest)),
            seat.displaced_audit,
        )

    async def delete_sessions(
        self,
        which: SessionFilter,
        decide: SessionDecision,
        lifetime_ended_by: datetime | None = None,
    ) -> list[SessionRecord]:
        candidates = [
            session_from_row(row) for row in await self.conn.execute(_select_sessions(which))
        ]
        chosen = {r.id: audit for r in candidates if (audit := decide(r)) is not None}
        if not chosen:
            return []
        rows = (await self.conn.execute(s.delete().where(s.c.id.in_(chosen)).returning(*s.c))).all()
        deleted = [session_from_row(row) for row in rows]
        await announce_revoked(self.conn, [r.id for r in deleted])  # sent at commit (notify.py)
        await self.add_audits([chosen[record.id] for record in deleted])
        if lifetime_ended_by is not None and self.conn.dialect.name == "sqlite":
            # The trigger of migration 0006 counted every removal in its session's bucket;
            # take back those of sessions past their lifetime, in this same transaction (a
            # count never goes down).
            ended = Counter(
                f"{removal_bucket(r.id.int):02x}"
                for r in deleted
                if r.token.expires <= lifetime_ended_by
            )
            if ended:
                r = schema.session_removals
                await self.conn.execute(
                    r.update()
                    .where(r.c.bucket == sa.bindparam("b"))
                    .values(removed=r.c.removed - sa.bindparam("n")),
                    [{"b": bucket, "n": n} for bucket, n in sorted(ended.items())],
                )
        return deleted

    # --- licence -------------------------------------------------------------------------

    async def add_openid_session(
        self, session_id: UUID, issuer: str, subject: str, sid: str | None
    ) -> None:
        await openid.add_session(self.conn, session_id, issuer, subject, sid)

    async def lock_licence(self) -> Licence | None:
        query = sa.select(schema.licence).where(schema.licence.c.id == 1).with_for_update()
        row = (await self.conn.execute(query)).first()
        return licence_from_row(row) if row else None

    # --- audit ---------------------------------------------------------------------------

    async def add_audit(self, record: AuditRecord) -> None:
        await self.add_audits([record])

    async def add_audits(self, records: Sequence[AuditRecord]) -> None:
        """Append to the hash chain, in this order: lock its head, take the next ids, hash,
        insert, move the head. The head stays locked until the transaction ends, so records
        are chained in the order their transactions commit, on every node. Three statements
        however many records (a sweep's batch, a user's sessions): a transaction that holds
        SQLite's write lock must not wait for the event loop once per record. Each record is
        chained with the audit key ring's current key, and names it."""
        if not records:
            return
        key_id, key = self.audit_keys.signing()
        h = schema.audit_head
        head = (await self.conn.execute(sa.select(h).where(h.c.id == 1).with_for_update())).one()
        last_id, last_hash = head.last_id, head.last_hash
        rows = []
        for record in records:
            values = audit_values(record)
            last_id += 1
            values["id"] = last_id
            values["prev_hash"] = last_hash
            values["key_id"] = key_id
            values["hash"] = last_hash = record_hash(last_hash, values, key)
            rows.append(values)
        await self.conn.execute(a.insert(), rows)
        await self.conn.execute(
            h.update().where(h.c.id == 1).values(last_id=last_id, last_hash=last_hash)
        )


def _select_sessions(which: SessionFilter) -> sa.Select[Any]:
    query = sa.select(s)
    if which.session_ids is not None:
        query = query.where(s.c.id.in_(which.session_ids))
    if which.signature is not None:
        query = query.where(s.c.signature == which.signature)
    if which.user_id is not None:
        query = query.where(s.c.user_id == which.user_id)
    if which.license_type is not None:
        query = query.where(s.c.license_type == int(which.license_type))
    if which.except_session_id is not None:
        query = query.where(s.c.id != which.except_session_id)
    if which.stale_at is not None:
        stale = s.c.expires <= which.stale_at
        if which.idle_before is not None:
            stale = sa.or_(stale, s.c.last_activity < which.idle_before)
        query = query.where(stale)
    if which.limit is not None:
        query = query.limit(which.limit)
    return query


def licence_from_row(row: sa.Row[Any]) -> Licence:
    m = row._mapping
    return Licence(
        id=m["licence_id"],
        licensee=m["licensee"],
        valid_from=m["valid_from"],
        valid_to=m["valid_to"],
        seats={kind: int(m[column]) for kind, column in LICENCE_COLUMNS.items()},
        signed=bool(m["signed"]),
        text=m["content"],
    )
