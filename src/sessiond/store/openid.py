"""The OpenID Connect tables (migration 0009), written inside the store's transactions.

``openid_identities`` follows the users' accounts: a user of login type OpenId whose account is
``openid:<issuer>#<subject>`` has exactly that row, written in the transaction that sets the
account (so the mapping and the user never disagree, and the row goes with the user).
``openid_sessions`` names the provider session a platform session was opened under, written
with the session and removed with it.
"""

from __future__ import annotations

from uuid import UUID

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection

from ..models import LoginType, openid_identity
from . import schema
from .base import UserRecord

_identities, _sessions = schema.openid_identities, schema.openid_sessions


async def keep_identity(conn: AsyncConnection, user: UserRecord, *, replace: bool = False) -> None:
    """Write the user's (issuer, subject) row when it is an OpenId user with an OpenId
    account; ``replace``: drop the row it had first (its account or login type changed)."""
    if replace:
        await conn.execute(_identities.delete().where(_identities.c.user_id == user.id))
    pair = openid_identity(user.account) if user.login_type == LoginType.OPEN_ID else None
    if pair is not None:
        issuer, subject = pair
        await conn.execute(
            _identities.insert().values(issuer=issuer, subject=subject, user_id=user.id)
        )


async def add_session(
    conn: AsyncConnection, session_id: UUID, issuer: str, subject: str, sid: str | None
) -> None:
    await conn.execute(
        _sessions.insert().values(session_id=session_id, issuer=issuer, subject=subject, sid=sid)
    )


async def user_of(conn: AsyncConnection, issuer: str, subject: str) -> UUID | None:
    """The user (issuer, subject) is mapped to: exactly, case and all."""
    query = sa.select(_identities.c.user_id).where(
        _identities.c.issuer == issuer, _identities.c.subject == subject
    )
    found: UUID | None = await conn.scalar(query)
    return found
