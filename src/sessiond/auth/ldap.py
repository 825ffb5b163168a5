"""Ldap login type: find the user's entry in an LDAPv3 directory, then bind as it."""

from __future__ import annotations

import asyncio
from typing import Self

from ..errors import InvalidCredentials
from ..models import LoginType
from ..settings import LdapSettings, Settings
from ..store.base import UserRecord
from .base import Authenticator, Identity, PasswordCredentials
from .directory import Directory


class LdapAuthenticator(Authenticator):
    login_type = LoginType.LDAP

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        return cls(settings.ldap) if settings.ldap else None

    def __init__(self, settings: LdapSettings) -> None:
        self.settings = settings
        self.directory = Directory(settings)

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        account = (user.account or user.login) if user else credentials.login.strip()
        return await asyncio.to_thread(self._verify, account, credentials.password)

    def _verify(self, account: str, password: str) -> Identity:
        entry = self.directory.find(account)
        if entry is None:
            raise InvalidCredentials(
                "wrong login or password", reason="no directory entry for the account"
            )
        self.directory.bind(entry.dn, password)
        return Identity(account=account, display_name=entry.name)
