"""Ldap login type: find the user's entry in an LDAPv3 directory, then bind as it."""

from __future__ import annotations

from typing import Self

from ..models import LoginType
from ..settings import LdapSettings, Settings
from ..store.base import UserRecord
from . import outside
from .base import Authenticator, Claim, Identity, PasswordCredentials
from .directory import Directory, check_transport


class LdapAuthenticator(Authenticator):
    login_type = LoginType.LDAP
    password_changed_in = "directory"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        return cls(settings.ldap) if settings.ldap else None

    def __init__(self, settings: LdapSettings) -> None:
        check_transport(settings, "ldap")
        self.settings = settings
        self.directory = Directory(settings, section="ldap")

    @property
    def auto_provision(self) -> bool:
        return self.settings.auto_provision

    async def claim(self, credentials: PasswordCredentials) -> Claim | None:
        login = credentials.login.strip()
        if credentials.domain or not login:
            return None
        return Claim(login, f"ldap:{login.casefold()}")

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        account = (user.account or user.login) if user else credentials.login.strip()
        pool = outside.directory(self.settings, "ldap")
        return await pool.run(self._verify, account, credentials.password)

    def _verify(self, account: str, password: str) -> Identity:
        entry = self.directory.find(account)
        self.directory.bind(entry.dn, password)
        return Identity(account=account, display_name=entry.name)
