"""The interface every login type implements: one backend module per login type.

The sign-in pipeline (:mod:`sessiond.service.signin`) has one shape for every login type —
credentials, the backend that takes them, the account they claim, reserve, check, settle — and
asks the backend everything that differs between login types through the hooks below. It names
no login type itself; a new login type is a module under ``auth/`` implementing
:class:`Authenticator` (passwords) or :class:`ProofBackend` (credentials that carry their own
proof: HTTP Negotiate, later an identity provider's tokens), a line in :mod:`.registry` and a
settings section.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, Protocol, Self
from uuid import UUID

from ..models import AccessLevel, LoginType
from ..store.base import UserRecord

if TYPE_CHECKING:
    from ..errors import SessiondError
    from ..settings import SecuritySettings, Settings
    from ..store.base import Transaction


@dataclass(frozen=True, slots=True)
class PasswordCredentials:
    """What ``open_session(login, password, domain)`` was given."""

    login: str
    password: str
    domain: str | None = None

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"PasswordCredentials(login={self.login!r}, domain={self.domain!r})"

    @property
    def display(self) -> str:
        return f"{self.domain}\\{self.login}" if self.domain else self.login


@dataclass(frozen=True, slots=True)
class Claim:
    """The account a sign-in names before anything is checked.

    ``account`` is the canonical account as users store it (``DOMAIN\\name``, the LDAP uid);
    ``key`` is the identity limits on refused attempts are kept under: the same for every
    spelling of the account and every path that checks its password (``windows:name@REALM``)."""

    account: str
    key: str


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a successful check proved the caller to be.

    ``account`` is the canonical account name (Windows: ``DOMAIN\\name``; LDAP: the uid), used
    to find or provision the user; ``new_password_hash`` asks the service to store a rehash;
    ``method`` names the mechanism where one login type has several (``kerberos``, ``ntlm``).
    """

    account: str | None = None
    display_name: str | None = None
    new_password_hash: str | None = None
    method: str | None = None
    #: What the backend keeps with the session it opens (:meth:`Backend.admitted`).
    extra: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ExternalAccount:
    """An account an outside provider proved, as its backend asks the users to hold it before
    the pipeline looks it up: already mapped; else the user of this login type whose login is
    ``match_login`` and who has no account yet takes it; else, with ``provision``, a new user
    (``login``, ``name``); and, when ``access_level`` is set, the user gets that level."""

    login_type: LoginType
    account: str
    login: str
    name: str
    via: str  # who proved it, for the audit ("OpenID Provider corp")
    match_login: str | None = None
    provision: bool = False
    access_level: AccessLevel | None = None


class Accounts(Protocol):
    """What a backend may ask of the users (given by the service: :meth:`Backend.bind`)."""

    async def hold_external(self, account: ExternalAccount) -> None: ...


class Backend(ABC):
    """What the pipeline asks of every login type."""

    login_type: ClassVar[LoginType]
    #: Where its passwords are changed, for the refusal of a password change here (None: here).
    password_changed_in: ClassVar[str | None] = None

    @property
    def auto_provision(self) -> bool:
        """May an account it proves, with no user mapped to it, get a user at once?"""
        return False

    def token_login(self, user: UserRecord) -> str:
        """The login the session token shows."""
        return user.account or user.login

    def after_check(
        self,
        row: UserRecord,
        before: UserRecord,
        now: datetime,
        security: SecuritySettings,
        *,
        for_change: bool = False,
    ) -> SessiondError | None:
        """A refusal this login type makes once its check passed, decided from the locked
        row (``before``: the row as the check began), or None."""
        return None

    async def close(self) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Release connections and processes; most backends hold none."""

    def bind(self, accounts: Accounts) -> None:  # noqa: B027  (an optional hook)
        """Given once the service is built: what the backend may ask of the users."""

    async def admitted(  # noqa: B027  (an optional hook)
        self, tx: Transaction, session_id: UUID, identity: Identity
    ) -> None:
        """Write what belongs with a session this backend's sign-in opened, in the
        transaction that writes the session."""


class Authenticator(Backend):
    """Checks passwords for users of one login type."""

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """Build from the settings, or None when this login type is not configured."""

    async def claim(self, credentials: PasswordCredentials) -> Claim | None:
        """The account these credentials name when no user has them: None when it is no
        account of this login type's. Raise :class:`~sessiond.errors.InvalidCredentials`
        when they name one in a form or domain this server does not accept."""
        return None

    @abstractmethod
    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        """Check the password of ``user`` — or, when ``user`` is None (no user is mapped yet),
        of the account the credentials name. Raise
        :class:`~sessiond.errors.InvalidCredentials` (with the reason) when it is wrong."""


@dataclass(frozen=True, slots=True)
class ProofStep:
    """One leg of a proof: ``identity`` once it is complete, else the ``challenge`` to send."""

    identity: Identity | None
    output: bytes | None
    handshake_id: str | None = None
    scheme: str = "Negotiate"  # the HTTP authentication scheme the challenge goes under


class ProofBackend(Backend):
    """Credentials that carry their own proof and may take several legs (HTTP Negotiate)."""

    #: How the sign-in is named in messages ("integrated Windows sign-in").
    title: ClassVar[str]

    @abstractmethod
    async def claim(self, token: bytes, handshake_id: str | None) -> Claim | None:
        """The account this leg answers for with a password (NTLM's last leg), checked within
        the same rules as a password; None when the leg proves nothing by a password (a
        Kerberos ticket, a first leg)."""

    @abstractmethod
    async def step(self, token: bytes, handshake_id: str | None) -> ProofStep:
        """Take one leg; :class:`~sessiond.errors.InvalidCredentials` when it is refused."""

    def abandon(self, handshake_id: str | None) -> None:
        """Forget a handshake the pipeline refused without checking its last leg."""
