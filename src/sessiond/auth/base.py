"""One interface for every login type; the service picks the authenticator by the user's type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar, Self

from ..models import LoginType
from ..store.base import UserRecord

if TYPE_CHECKING:
    from ..settings import Settings


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
class Identity:
    """Who a successful check proved the caller to be.

    ``account`` is the canonical account name (Windows: ``DOMAIN\\name``; LDAP: the uid), used
    to find or provision the user; ``new_password_hash`` asks the service to store a rehash.
    """

    account: str | None = None
    display_name: str | None = None
    new_password_hash: str | None = None


class Authenticator(ABC):
    """Checks a password for users of one login type."""

    login_type: ClassVar[LoginType]

    @classmethod
    @abstractmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        """Build from the settings, or None when this login type is not configured."""

    @abstractmethod
    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        """Check the password of ``user`` — or, when ``user`` is None (no user is mapped yet),
        of the account the credentials name. Raise
        :class:`~sessiond.errors.InvalidCredentials` (with the reason) when it is wrong."""

    async def close(self) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Release connections; most authenticators hold none."""
