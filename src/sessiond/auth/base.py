"""One interface for every login type; the service picks the authenticator by the user's type."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from ..models import LoginType
from ..store.base import UserRecord


@dataclass(frozen=True, slots=True)
class PasswordCredentials:
    """What ``open_session(login, password, domain)`` was given."""

    login: str
    password: str
    domain: str | None = None

    def __repr__(self) -> str:  # never show the password in logs or tracebacks
        return f"PasswordCredentials(login={self.login!r}, domain={self.domain!r})"


@dataclass(frozen=True, slots=True)
class Verified:
    """A successful check; ``new_password_hash`` asks the service to store a rehash."""

    new_password_hash: str | None = None


class Authenticator(ABC):
    """Checks a password for users of one login type."""

    login_type: ClassVar[LoginType]

    @abstractmethod
    async def verify(self, user: UserRecord, credentials: PasswordCredentials) -> Verified:
        """Return on success; raise :class:`~sessiond.errors.InvalidCredentials` otherwise."""

    async def close(self) -> None:  # noqa: B027  (an optional hook, not abstract)
        """Release connections; most authenticators hold none."""
