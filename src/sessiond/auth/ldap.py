"""Ldap login type: find the user's entry in an LDAPv3 directory, then bind as it."""

from __future__ import annotations

from typing import Self

from ..errors import InvalidCredentials, PasswordExpired
from ..models import LoginType
from ..settings import LdapSettings, Settings
from ..store.base import UserRecord
from . import outside
from .base import Authenticator, Identity, PasswordCredentials
from .directory import WRONG, Directory, check_transport


class LdapAuthenticator(Authenticator):
    login_type = LoginType.LDAP

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        return cls(settings.ldap) if settings.ldap else None

    def __init__(self, settings: LdapSettings) -> None:
        check_transport(settings, "ldap")
        self.settings = settings
        self.directory = Directory(settings, section="ldap")

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        account = (user.account or user.login) if user else credentials.login.strip()
        try:
            pool = outside.directory(self.settings, "ldap")
            return await pool.run(self._verify, account, credentials.password)
        except PasswordExpired as exc:
            if user is None and not self.settings.auto_provision:
                # No user is mapped to the account: a right password tells no more than a
                # wrong one (docs/security.md), an expired one included.
                raise InvalidCredentials(WRONG, reason=f"{exc.reason}; password right") from None
            raise

    def _verify(self, account: str, password: str) -> Identity:
        entry = self.directory.find(account)
        self.directory.bind(entry.dn, password)
        return Identity(account=account, display_name=entry.name)
