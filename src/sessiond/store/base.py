"""The one store interface the service talks to, and the records that cross it.

Every method that changes state and has an audit record to go with it takes the record and
writes both in one transaction: an audit entry is never lost for a change that happened, and
never written for one that did not.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from uuid import UUID

from ..models import AccessLevel, AuditAction, ConfigurationInfo, LoginType
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
    password_changed: datetime | None = None
    blocked: bool = False
    blocked_due_date: datetime | None = None  # None while blocked: until an administrator unblocks
    failed_attempts: int = 0
    time_zone_utc_offset: int | None = None  # minutes east of UTC, from the employee's card

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
        self, user_id: UUID, audit: AuditRecord | None = None, **changes: Any
    ) -> UserRecord:
        """Change the given fields of a user; raises NotFound, Conflict."""

    @abstractmethod
    async def record_failed_login(
        self,
        user_id: UUID,
        audit: AuditRecord,
        block_until: datetime | None,
        block: bool,
        block_audit: AuditRecord | None,
    ) -> UserRecord:
        """Count one failure (and block the user if asked), with its audit records."""

    @abstractmethod
    async def add_password_history(
        self, user_id: UUID, password_hash: str, at: datetime
    ) -> None: ...

    @abstractmethod
    async def password_history(self, user_id: UUID, limit: int) -> Sequence[str]:
        """The most recent password hashes, newest first."""

    # sessions
    @abstractmethod
    async def add_session(self, session: SessionRecord, audit: AuditRecord) -> None: ...

    @abstractmethod
    async def get_session(self, session_id: UUID) -> SessionRecord | None: ...

    @abstractmethod
    async def touch_session(self, session_id: UUID, at: datetime) -> None: ...

    @abstractmethod
    async def delete_session(self, session_id: UUID, audit: AuditRecord) -> SessionRecord | None:
        """Delete; return the deleted session (audit written) or None (nothing written)."""

    @abstractmethod
    async def list_sessions(self, user_id: UUID | None = None) -> Sequence[SessionRecord]: ...

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
