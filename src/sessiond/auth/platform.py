"""Platform users: Argon2id hashes in the store (argon2-cffi), checked in a worker thread.

argon2-cffi releases the GIL while hashing, so a thread keeps the event loop (and every
token validation on it) free while a sign-in burns its configured cost. The threads are
hashing's own (:func:`.outside.argon2`): a KDC or directory that stops answering holds its
own threads, never these.
"""

from __future__ import annotations

from datetime import datetime
from typing import Self

from argon2 import PasswordHasher, Type
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

from .. import metrics, passwords
from ..errors import InvalidCredentials, PasswordExpired, SessiondError
from ..models import LoginType
from ..settings import Argon2Settings, SecuritySettings, Settings
from ..store.base import UserRecord
from . import outside
from .base import Authenticator, Identity, PasswordCredentials

WRONG_CREDENTIALS = "wrong login or password"


class PlatformAuthenticator(Authenticator):
    login_type = LoginType.PLATFORM

    @classmethod
    def from_settings(cls, settings: Settings) -> Self:
        return cls(settings.argon2)

    def __init__(self, settings: Argon2Settings) -> None:
        self.hasher = PasswordHasher(
            time_cost=settings.time_cost,
            memory_cost=settings.memory_cost,
            parallelism=settings.parallelism,
            type=Type.ID,
        )
        self._threads = outside.argon2()
        # A hash of nothing anyone knows: verifying against it makes an unknown login cost
        # exactly what a wrong password costs.
        self._decoy = self.hasher.hash("sessiond decoy password")

    async def hash(self, password: str) -> str:
        with metrics.hashing("hash").time():
            return await self._threads.run(self.hasher.hash, password)

    async def matches(self, password_hash: str, password: str) -> bool:
        with metrics.hashing("verify").time():
            return await self._threads.run(self._check, password_hash, password)

    def _check(self, password_hash: str, password: str) -> bool:
        try:
            return self.hasher.verify(password_hash, password)
        except (VerifyMismatchError, VerificationError, InvalidHashError):
            return False

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        if user is None or not user.password_hash:
            await self.burn(credentials.password)
            raise InvalidCredentials(WRONG_CREDENTIALS)
        if not await self.matches(user.password_hash, credentials.password):
            raise InvalidCredentials(WRONG_CREDENTIALS)
        if self.hasher.check_needs_rehash(user.password_hash):
            return Identity(user.login, new_password_hash=await self.hash(credentials.password))
        return Identity(user.login)

    def token_login(self, user: UserRecord) -> str:
        return user.login

    def after_check(
        self,
        row: UserRecord,
        before: UserRecord,
        now: datetime,
        security: SecuritySettings,
        *,
        for_change: bool = False,
    ) -> SessiondError | None:
        """The password checked must still be the user's, and not one-time or expired (a
        password change takes both)."""
        if row.password_changed != before.password_changed:
            return InvalidCredentials(
                WRONG_CREDENTIALS, reason="the password changed during the sign-in"
            )
        if for_change:
            return None
        if row.password_changed is None:
            return PasswordExpired(
                "this is a one-time password: change it, then sign in",
                details={"one_time": True},
            )
        expiry = passwords.expires_at(row.password_changed, security)
        if expiry is not None and now >= expiry:
            return PasswordExpired(
                f"the password expired on {expiry:%Y-%m-%d}; change it, then sign in",
                details={"expired": expiry.isoformat()},
            )
        return None

    async def burn(self, password: str) -> None:
        """Spend one verification's time on nothing (unknown login), timed as a verification:
        the metrics do not tell a decoy from a real hash."""
        with metrics.hashing("verify").time():
            await self._threads.run(self._check, self._decoy, password)
