"""What every part of the service shares: who acts, the clock, and audit record shapes."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

from ..errors import PermissionDenied
from ..models import AccessLevel, AuditAction
from ..store import AuditRecord, SessionRecord, UserRecord

Clock = Callable[[], datetime]
SYSTEM = "System"


def utc_now() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, slots=True)
class Actor:
    """Who asks for an administrative change: a session's user, or the server itself (CLI)."""

    id: UUID | None
    name: str
    access_level: AccessLevel
    session_id: UUID | None = None
    client_address: str | None = None

    @property
    def is_administrator(self) -> bool:
        return self.access_level == AccessLevel.ADMINISTRATOR

    @classmethod
    def system(cls) -> Actor:
        return cls(None, SYSTEM, AccessLevel.ADMINISTRATOR)

    @classmethod
    def of(cls, session: SessionRecord, client_address: str | None = None) -> Actor:
        t = session.token
        return cls(t.user_id, t.user_name, t.access_level, t.session_id, client_address)


def require_admin(actor: Actor, what: str) -> None:
    if not actor.is_administrator:
        raise PermissionDenied(f"only an administrator may {what}")


def actor_audit(action: AuditAction, now: datetime, actor: Actor) -> AuditRecord:
    """A record of something an actor did in their own name."""
    return AuditRecord(
        action,
        now,
        session_id=actor.session_id,
        user_id=actor.id,
        user_name=actor.name,
        actor_id=actor.id,
        actor_name=actor.name,
        client_address=actor.client_address,
    )


def session_audit(
    action: AuditAction,
    now: datetime,
    record: SessionRecord,
    actor: Actor | None,
    client_address: str | None,
    details: dict[str, object] | None = None,
) -> AuditRecord:
    """A record about a session (closed, expired, displaced): by ``actor``, or by System."""
    t = record.token
    return AuditRecord(
        action,
        now,
        session_id=t.session_id,
        user_id=t.user_id,
        user_name=t.user_name,
        actor_id=actor.id if actor else None,
        actor_name=actor.name if actor else SYSTEM,
        client_address=client_address,
        details=dict(details or {}),
    )


def login_failed(
    user: UserRecord | None,
    who: str,
    now: datetime,
    client_address: str | None,
    reason: str,
) -> AuditRecord:
    """A LoginFailed record: about a known user, or about whoever ``who`` names."""
    if user is None:
        return AuditRecord(
            AuditAction.LOGIN_FAILED,
            now,
            user_name=who,
            client_address=client_address,
            details={"reason": reason},
        )
    return AuditRecord(
        AuditAction.LOGIN_FAILED,
        now,
        user_id=user.id,
        user_name=user.name,
        client_address=client_address,
        details={"reason": reason, "login": user.login},
    )


def user_blocked(
    user: UserRecord,
    now: datetime,
    actor: Actor | None,
    until: datetime | None,
    reason: str,
) -> AuditRecord:
    """A UserBlocked record: by an administrator (``actor``), or by the lockout (System)."""
    return AuditRecord(
        AuditAction.USER_BLOCKED,
        now,
        user_id=user.id,
        user_name=user.name,
        actor_id=actor.id if actor else None,
        actor_name=actor.name if actor else SYSTEM,
        client_address=actor.client_address if actor else None,
        details={"reason": reason, "until": until.isoformat() if until else None},
    )


def change_audit(
    action: AuditAction,
    now: datetime,
    actor: Actor,
    user: UserRecord | None = None,
    details: dict[str, Any] | None = None,
) -> AuditRecord:
    """A record of a change an actor made (to ``user``, if it is about one)."""
    return AuditRecord(
        action,
        now,
        session_id=actor.session_id,
        user_id=user.id if user else None,
        user_name=user.name if user else None,
        actor_id=actor.id,
        actor_name=actor.name,
        client_address=actor.client_address,
        details=dict(details or {}),
    )


def user_fields(user: UserRecord) -> dict[str, Any]:
    """What a UserCreated or UserRemoved record says about the user (never a secret)."""
    return {
        "login": user.login,
        "name": user.name,
        "access_level": user.access_level.wire,
        "login_type": user.login_type.wire,
        "account": user.account,
    }
