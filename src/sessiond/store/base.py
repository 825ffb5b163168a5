"""The one store interface the service talks to, and the records that cross it.

Every method that changes state and has an audit record to go with it takes the record and
writes both in one transaction: an audit entry is never lost for a change that happened, and
never written for one that did not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ..licence import Licence
from ..models import AccessLevel, AuditAction, ConfigurationInfo, LicenseType, LoginType
from ..token import SessionToken


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: UUID
    login: str
    name: str
    created: datetime
    access_level: AccessLevel = AccessLevel.REGULAR
    login_type: LoginType = LoginType.PLATFORM
    account: str | None = None  # DOMAIN\name, UPN or LDAP uid for Windows and Ldap users
    password_hash: str | None = None
    password_changed: datetime | None = None  # None with a hash: a one-time password
    blocked: bool = False
    blocked_due_date: datetime | None = None  # None while blocked: until an administrator unblocks
    failed_attempts: int = 0  # since the last successful sign-in
    time_zone_utc_offset: int | None = None  # minutes east of UTC, from the employee's card
    personal_client: bool = False  # holds a personal desktop-client licence
    personal_web: bool = False  # holds a personal web licence
    failed_series_start: datetime | None = None
    failed_series_count: int = 0

    @property
    def is_administrator(self) -> bool:
        return self.access_level == AccessLevel.ADMINISTRATOR


@dataclass(frozen=True, slots=True)
class SessionRecord:
    token: SessionToken
    last_activity: datetime
    client_address: str | None = None

    @property
    def id(self) -> UUID:
        return self.token.session_id


@dataclass(frozen=True, slots=True)
class AuditRecord:
    action: AuditAction
    at: datetime
    session_id: UUID | None = None
    user_id: UUID | None = None
    user_name: str | None = None
    actor_id: UUID | None = None
    actor_name: str | None = None
    client_address: str | None = None
    details: dict[str, Any] = field(default_factory=dict)
    id: int | None = None  # assigned by the store


@dataclass(frozen=True, slots=True)
class SeatRequest:
    """Take a seat of ``license_type`` for a new session, atomically with its insertion.

    Sessions count if they have not expired and (when ``active_since`` is set) have been
    active since then. When the licence's seats are all taken, ``displace_oldest`` deactivates
    the same user's oldest counted session of that type (audited with ``displaced_audit``);
    otherwise, or if the user holds none, :class:`~sessiond.errors.LicenceLimitReached`.
    """

    license_type: LicenseType
    now: datetime
    active_since: datetime | None
    displace_oldest: bool
    displaced_audit: Callable[[SessionRecord], AuditRecord]


@dataclass(frozen=True, slots=True)
class SessionClosure:
    """End a user's sessions (of one licence type, if given) in the same transaction as a
    change to the user, each with the audit record ``audit`` makes for it."""

    audit: Callable[[SessionRecord], AuditRecord]
    license_type: LicenseType | None = None


@dataclass(frozen=True, slots=True)
class FailurePolicy:
    """What one more failed sign-in means: the series window and the block decision.

    ``decide`` sees the user after the failure was counted and returns None (no block) or
    ``(until, audit)``: block until then (None: until an administrator unblocks).
    """

    at: datetime
    series_window_start: datetime
    decide: Callable[[UserRecord], tuple[datetime | None, AuditRecord] | None]


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    name: str
    date: datetime | None
    description: str


class Store(ABC):
    """Async storage of users, sessions, audit records and the configuration version."""

    @abstractmethod
    async def open(self, build: BuildInfo, now: datetime) -> None:
        """Create or migrate the schema, make sure the configuration row exists."""

    @abstractmethod
    async def close(self) -> None: ...

    # users
    @abstractmethod
    async def add_user(self, user: UserRecord) -> None:
        """Raises :class:`~sessiond.errors.Conflict` if the login or account is taken."""

    @abstractmethod
    async def get_user(self, user_id: UUID) -> UserRecord | None: ...

    @abstractmethod
    async def find_user_by_login(self, login: str) -> UserRecord | None:
        """Case-insensitive."""

    @abstractmethod
    async def find_user_by_account(self, account: str) -> UserRecord | None:
        """Case-insensitive, by a Windows or LDAP account name."""

    @abstractmethod
    async def list_users(self) -> Sequence[UserRecord]: ...

    @abstractmethod
    async def count_users(self) -> int: ...

    @abstractmethod
    async def update_user(
        self,
        user_id: UUID,
        audit: AuditRecord | None = None,
        *,
        close_sessions: SessionClosure | None = None,
        **changes: Any,
    ) -> UserRecord:
        """Change the given fields of a user (and end its sessions if asked), in one
        transaction; raises NotFound, Conflict."""

    @abstractmethod
    async def record_failed_login(
        self, user_id: UUID, audit: AuditRecord, policy: FailurePolicy
    ) -> UserRecord:
        """Count one failure in total and in its series, block the user if the policy says
        so, and write the audit records, all in one transaction."""

    @abstractmethod
    async def set_personal_licence(
        self,
        user_id: UUID,
        license_type: LicenseType,
        holds: bool,
        limit: int | None,
        close_sessions: SessionClosure | None = None,
    ) -> UserRecord:
        """Give or take a personal licence; LicenceLimitReached if ``limit`` are given out."""

    @abstractmethod
    async def add_password_history(
        self, user_id: UUID, password_hash: str, at: datetime
    ) -> None: ...

    @abstractmethod
    async def password_history(self, user_id: UUID, limit: int) -> Sequence[str]:
        """The most recent password hashes, newest first."""

    # sessions
    @abstractmethod
    async def add_session(
        self, session: SessionRecord, audit: AuditRecord, seat: SeatRequest | None = None
    ) -> list[SessionRecord]:
        """Insert the session (taking a seat if asked); return the sessions it displaced."""

    @abstractmethod
    async def get_session(self, session_id: UUID) -> SessionRecord | None: ...

    @abstractmethod
    async def touch_sessions(self, touches: Mapping[UUID, datetime]) -> None:
        """Move the last activity of these sessions forward (never back), in one transaction."""

    @abstractmethod
    async def delete_session(self, session_id: UUID, audit: AuditRecord) -> SessionRecord | None:
        """Delete; return the deleted session (audit written) or None (nothing written)."""

    @abstractmethod
    async def list_sessions(self, user_id: UUID | None = None) -> Sequence[SessionRecord]: ...

    @abstractmethod
    async def delete_user_sessions(
        self, user_id: UUID, closure: SessionClosure
    ) -> list[SessionRecord]:
        """Delete every session of a user (of one licence type, if given), each audited."""

    @abstractmethod
    async def sweep_sessions(
        self,
        now: datetime,
        idle_before: datetime | None,
        audit: Callable[[SessionRecord], AuditRecord],
        limit: int = 500,
    ) -> list[SessionRecord]:
        """Delete up to ``limit`` sessions past their expiry (or idle since before
        ``idle_before``), each with its audit record; safe to run on every node at once."""

    # licences
    @abstractmethod
    async def get_licence(self) -> Licence | None: ...

    @abstractmethod
    async def install_licence(self, licence: Licence, at: datetime) -> None: ...

    @abstractmethod
    async def licence_usage(
        self, now: datetime, active_since: datetime | None
    ) -> dict[LicenseType, int]:
        """Counted sessions per concurrent type, and holders per personal type."""

    # audit
    @abstractmethod
    async def add_audit(self, record: AuditRecord) -> None: ...

    @abstractmethod
    async def list_audit(
        self,
        *,
        since: datetime | None = None,
        action: AuditAction | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Sequence[AuditRecord]: ...

    # configuration
    @abstractmethod
    async def get_configuration(self) -> ConfigurationInfo: ...

    @abstractmethod
    async def increment_configuration_version(
        self,
        *,
        at: datetime,
        by_id: UUID | None,
        by_name: str,
        build: BuildInfo,
        audit: AuditRecord,
    ) -> ConfigurationInfo: ...
