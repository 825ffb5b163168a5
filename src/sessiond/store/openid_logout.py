"""Back-channel logout in the store (migration 0010, and the provider sessions of 0009): the
logout tokens acted on, and the platform sessions a provider session was opened under."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from . import schema

_tokens, _sessions = schema.openid_logout_tokens, schema.openid_sessions


async def remember_token(
    conn: AsyncConnection, issuer: str, jti: str, keep_until: datetime
) -> bool:
    """Keep (issuer, jti) until ``keep_until``; False when it is kept already (a replay).
    Two nodes inserting the same pair at once: the second waits on the first's row and then
    fails on the key, which the caller's transaction turns into the same refusal."""
    seen = await conn.scalar(
        sa.select(sa.func.count())
        .select_from(_tokens)
        .where(_tokens.c.issuer == issuer, _tokens.c.jti == jti)
    )
    if seen:
        return False
    await conn.execute(_tokens.insert().values(issuer=issuer, jti=jti, keep_until=keep_until))
    return True


async def session_ids(
    conn: AsyncConnection, issuer: str, sid: str | None, subject: str | None
) -> list[UUID]:
    """The platform sessions opened under the provider session ``sid`` (and of ``subject``
    when both are given), or under every provider session of ``subject`` when only it is."""
    if sid is None and subject is None:
        return []
    query = sa.select(_sessions.c.session_id).where(_sessions.c.issuer == issuer)
    if sid is not None:
        query = query.where(_sessions.c.sid == sid)
    if subject is not None:
        query = query.where(_sessions.c.subject == subject)
    return list((await conn.scalars(query.order_by(_sessions.c.session_id))).all())


async def prune_tokens(conn: AsyncConnection, now: datetime) -> int:
    """Forget the logout tokens too old to be accepted again; returns how many."""
    done = await conn.execute(_tokens.delete().where(_tokens.c.keep_until <= now))
    return int(done.rowcount or 0)
