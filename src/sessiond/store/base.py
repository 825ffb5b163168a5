"""The one store interface the service talks to, and the records that cross it.

A rule that guards something is decided inside the transaction that writes its outcome: the
service opens a :class:`Transaction` (``store.write()``), reads (and on PostgreSQL locks) the rows
the rule depends on, decides, and writes the outcome and its audit records, all at once. An
audit entry is never lost for a change that happened, and never written for one that did not.
A few single-purpose writes that guard nothing (touches, the configuration version, licences)
stay plain methods of :class:`Store`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

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
from .chain import ChainAnchor, ChainHead, ChainKeys, ChainReport
from .notify import Notice


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: UUID
    login: str
    name: str
    created: datetime
    access_level: AccessLevel = AccessLevel.REGULAR
    login_type: LoginType = LoginType.PLATFORM
    # DOMAIN\name, UPN or LDAP uid for Windows and Ldap users; openid:<issuer>#<subject>
    # for OpenId users (with its row in openid_identities, kept by the store)
    account: str | None = None
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
    locked_out: bool = False  # the block is the lockout's: the user's sessions stay open

    @property
    def is_administrator(self) -> bool:
        return self.access_level == AccessLevel.ADMINISTRATOR


@dataclass(frozen=True, slots=True)
class SessionRecord:
    token: SessionToken
    last_activity: datetime
    client_address: str | None = None
    #: the row's version (migration 0007): moves on any change but a touch, and on a change
    #: of the user's block or rights; set by the database, never written by sessiond
    version: int = 0

    @property
    def id(self) -> UUID:
        return self.token.session_id


@dataclass(frozen=True, slots=True)
class SessionUser:
    """What validation decides on in a session's user row, read with the session."""

    access_level: AccessLevel
    login_type: LoginType
    blocked: bool
    blocked_due_date: datetime | None
    locked_out: bool


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
class SessionFilter:
    """Which sessions a transaction looks at: by ids (and signature), by user (and licence
    type, sparing one session), or past a lifetime cutoff (expired at ``stale_at``, or idle
    since before ``idle_before``). ``limit`` bounds how many are taken at once."""

    session_ids: tuple[UUID, ...] | None = None
    signature: str | None = None
    user_id: UUID | None = None
    license_type: LicenseType | None = None
    except_session_id: UUID | None = None
    stale_at: datetime | None = None
    idle_before: datetime | None = None
    limit: int | None = None


#: For each session a filter found: the audit record of its deletion, or None to leave it.
SessionDecision = Callable[[SessionRecord], AuditRecord | None]


SessionOrder = Literal["created", "last_activity", "user_name"]


@dataclass(frozen=True, slots=True)
class SessionQuery:
    """A page of a session list: filters, an order, and a keyset cursor (the sort value and
    id of the last session of the previous page), so that paging through a million sessions
    never reads more than a page."""

    user_id: UUID | None = None
    user_name: str | None = None  # starts with, ignoring case
    license_type: LicenseType | None = None
    application_id: UUID | None = None
    service_type: ServiceType | None = None
    device_type: DeviceType | None = None
    client_address: str | None = None
    open_at: datetime | None = None  # only sessions not expired then...
    active_since: datetime | None = None  # ...and active since then
    order: SessionOrder = "created"
    descending: bool = False
    after: tuple[Any, UUID] | None = None
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class AuditQuery:
    """A page of the audit trail, oldest first (or newest first), after (or before) an id."""

    actions: tuple[AuditAction, ...] = ()
    user_id: UUID | None = None
    user_name: str | None = None  # the user's name as recorded, ignoring case
    since: datetime | None = None
    until: datetime | None = None
    after_id: int | None = None
    before_id: int | None = None
    newest_first: bool = False
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class SignInAttempt:
    """A password check in progress. It holds one of the user's attempt slots until it is
    settled, or until ``expires`` if the node checking it went away."""

    id: UUID
    user_id: UUID
    started: datetime
    expires: datetime


@dataclass(frozen=True, slots=True)
class Throttle:
    """Refused sign-ins counted under one key (an account, an address) in the current window,
    and until when the key is refused outright once its limit was reached."""

    key: str
    failures: int
    window_start: datetime
    blocked_until: datetime | None = None


@dataclass(frozen=True, slots=True)
class BuildInfo:
    version: str
    name: str
    date: datetime | None
    description: str


class Transaction(ABC):
    """One write transaction. Reads made through it see (and on PostgreSQL lock) the rows as
    they are now; everything written through it commits together or not at all."""

    # users
    @abstractmethod
    async def add_user(self, user: UserRecord) -> None:
        """Raises :class:`~sessiond.errors.Conflict` if the login or account is taken."""

    @abstractmethod
    async def delete_user(self, user_id: UUID) -> None:
        """Remove the user, their password history and their checks in progress (audit
        records about them stay: they carry the user's id and name)."""

    @abstractmethod
    async def lock_user(self, user_id: UUID) -> UserRecord | None:
        """The user as it is now, locked until the transaction ends."""

    @abstractmethod
    async def lock_administrators(self) -> list[UserRecord]:
        """Every administrator, locked (take this before any single user's lock)."""

    @abstractmethod
    async def update_user(self, user_id: UUID, **changes: Any) -> UserRecord:
        """Change the given fields; raises NotFound, Conflict (login or account taken)."""

    @abstractmethod
    async def add_password_history(
        self, user_id: UUID, password_hash: str, at: datetime
    ) -> None: ...

    @abstractmethod
    async def count_personal_licences(self, license_type: LicenseType, except_user: UUID) -> int:
        """How many other users hold a personal licence of this type."""

    # password checks in progress
    @abstractmethod
    async def sign_in_attempts(self, user_id: UUID, now: datetime) -> int:
        """How many of the user's password checks are in progress (expired ones dropped)."""

    @abstractmethod
    async def add_sign_in_attempt(self, attempt: SignInAttempt) -> None: ...

    @abstractmethod
    async def remove_sign_in_attempt(self, attempt_id: UUID) -> None: ...

    # limits on refused sign-ins of accounts no user is mapped to
    @abstractmethod
    async def lock_throttle(self, key: str, now: datetime) -> Throttle:
        """The key's counts (made, empty, if new), locked until the transaction ends."""

    @abstractmethod
    async def update_throttle(self, key: str, **changes: Any) -> None: ...

    @abstractmethod
    async def throttle_attempts(self, key: str, now: datetime) -> int:
        """Checks in progress under the key (expired ones dropped)."""

    @abstractmethod
    async def add_throttle_attempt(self, attempt_id: UUID, key: str, expires: datetime) -> None: ...

    @abstractmethod
    async def remove_throttle_attempts(self, attempt_id: UUID) -> None: ...

    # sessions
    @abstractmethod
    async def add_session(
        self, session: SessionRecord, seat: SeatRequest | None = None
    ) -> list[SessionRecord]:
        """Insert the session, taking a seat if asked (raising LicenceLimitReached before
        anything is written); returns the sessions it displaced, each audited."""

    @abstractmethod
    async def delete_sessions(
        self,
        which: SessionFilter,
        decide: SessionDecision,
        lifetime_ended_by: datetime | None = None,
    ) -> list[SessionRecord]:
        """Delete the sessions ``which`` finds and ``decide`` gives a record for; returns
        exactly those this transaction deleted (another node may be deleting some of them at
        the same moment), each with its record written. ``lifetime_ended_by``: the removal of
        a session whose lifetime had ended by then is not counted in the store's epoch
        (:meth:`Store.session_epoch`): no cached validation can be served for it anyway."""

    # OpenID Connect
    @abstractmethod
    async def add_openid_session(
        self, session_id: UUID, issuer: str, subject: str, sid: str | None
    ) -> None:
        """The provider session a platform session was opened under (with the session)."""

    # licence
    @abstractmethod
    async def lock_licence(self) -> Licence | None: ...

    # audit
    @abstractmethod
    async def add_audit(self, record: AuditRecord) -> None: ...


class Store(ABC):
    """Async storage of users, sessions, audit records, the licence and the configuration."""

    #: The keys audit records are chained with and verified by (set by the service; without
    #: them no audit record can be written).
    audit_keys: ChainKeys = ChainKeys()

    @abstractmethod
    async def open(self, build: BuildInfo, now: datetime) -> None:
        """Create or migrate the schema, make sure the configuration row exists."""

    @abstractmethod
    async def close(self) -> None: ...

    async def listen(self, on_notice: Callable[[Notice], None]) -> bool:
        """Hand other nodes' changes to ``on_notice`` as they commit, until :meth:`close`
        (see :mod:`.notify`); False: this store has no other nodes to hear from (SQLite)."""
        return False

    @property
    def listening(self) -> bool | None:
        """Whether other nodes' changes arrive now (False while the listening connection is
        down); None for a store that has no other nodes."""
        return None

    @abstractmethod
    def write(self) -> AbstractAsyncContextManager[Transaction]:
        """A write transaction: commits when the block ends, rolls back if it raises."""

    # users
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
    async def password_history(self, user_id: UUID, limit: int) -> Sequence[str]:
        """The most recent password hashes, newest first."""

    # sessions
    @abstractmethod
    async def get_session(self, session_id: UUID) -> SessionRecord | None: ...

    @abstractmethod
    async def session_to_validate(
        self, session_id: UUID
    ) -> tuple[SessionRecord, SessionUser | None] | None:
        """The session, and what validation needs of its user's row (None: no such user), in
        one read; None when the session is gone."""

    @abstractmethod
    async def session_version(self, session_id: UUID) -> tuple[int, datetime] | None:
        """The session row's version and last activity, or None when it is gone: the cheap
        check of a session a cache holds (the version moves on any change of the row but a
        touch, and on a change of its user's block or rights)."""

    def session_epoch(self, session_key: int) -> int | None:
        """A number that moves whenever a session that shares its epoch with the one whose id
        is ``session_key`` (``UUID.int``) may have been removed or changed in any way but a
        touch, or its user's block or rights changed (None: no such number, so a cached
        session must be checked against the store every time). Touches need not move
        it (a cached last activity is only ever older than the stored one, and the cache
        refuses nothing on its own), nor the removal of a session past its lifetime (the
        cache checks the lifetime against the clock on every request)."""
        return None

    @abstractmethod
    async def touch_sessions(self, touches: Mapping[UUID, datetime]) -> None:
        """Move the last activity of these sessions forward (never back), in one transaction."""

    @abstractmethod
    async def list_sessions(self, query: SessionQuery | None = None) -> Sequence[SessionRecord]:
        """One page of sessions, as the query says (every session, oldest first, without)."""

    # licences
    @abstractmethod
    async def get_licence(self) -> Licence | None: ...

    @abstractmethod
    async def install_licence(self, licence: Licence, at: datetime, audit: AuditRecord) -> bool:
        """Make ``licence`` the installed one, with its audit record; False (nothing written)
        when that very licence is installed already."""

    @abstractmethod
    async def licence_usage(
        self, now: datetime, active_since: datetime | None
    ) -> dict[LicenseType, int]:
        """Counted sessions per concurrent type, and holders per personal type."""

    # audit
    @abstractmethod
    async def add_audit(self, record: AuditRecord) -> None: ...

    @abstractmethod
    async def list_audit(self, query: AuditQuery) -> Sequence[AuditRecord]: ...

    @abstractmethod
    async def verify_audit(self, saved: ChainAnchor | None = None) -> ChainReport:
        """Walk the whole hash chain; the report names the first bad record, or, given a head
        saved earlier, a trail that no longer reaches it unchanged."""

    @abstractmethod
    async def audit_head(self) -> ChainHead:
        """The chain's head row as it is now (the last record's id and hash)."""

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
