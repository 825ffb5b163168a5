"""Windows domain accounts: names, and password checks against the domain.

A password is checked either with Kerberos — get an initial ticket with it, then prove the KDC
genuine by getting a ticket for sessiond's own service principal and opening it with the
keytab (a forged KDC cannot make that ticket) — or with an LDAP bind to Active Directory.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any, Self

from ..errors import InvalidCredentials, PasswordExpired, ServiceUnavailable, SettingsError
from ..models import LoginType
from ..settings import Settings, WindowsSettings
from ..store.base import UserRecord
from .accounts import WindowsAccount, WindowsNames
from .base import Authenticator, Identity, PasswordCredentials
from .directory import Directory


def use_kerberos_settings(settings: WindowsSettings) -> None:
    """libkrb5 and pyspnego read their configuration from the environment on every step:
    point it at the configured files (this process is the server; nothing else shares it)."""
    if settings.krb5_config:
        os.environ["KRB5_CONFIG"] = str(settings.krb5_config)
    if settings.keytab:
        os.environ["KRB5_KTNAME"] = f"FILE:{settings.keytab}"
    if settings.ntlm_user_file:
        os.environ["NTLM_USER_FILE"] = str(settings.ntlm_user_file)
    else:
        os.environ.pop("NTLM_USER_FILE", None)


class WindowsAuthenticator(Authenticator):
    login_type = LoginType.WINDOWS

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        return cls(settings.windows) if settings.windows else None

    def __init__(self, settings: WindowsSettings) -> None:
        use_kerberos_settings(settings)
        self.settings = settings
        self.names = WindowsNames(settings)
        self.directory = Directory(settings.directory) if settings.directory else None

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        if user is not None and user.account:
            account = self.names.parse(user.account)
        else:
            account = self.names.parse(credentials.login, credentials.domain)
        if not credentials.password:
            raise InvalidCredentials("wrong login or password")
        if self.settings.password_check == "ldap":
            await asyncio.to_thread(self._ldap_check, account, credentials.password)
        else:
            await asyncio.to_thread(self._kerberos_check, account, credentials.password)
        return Identity(account=account.down_level, display_name=account.name)

    def _ldap_check(self, account: WindowsAccount, password: str) -> None:
        assert self.directory is not None
        who = self.settings.bind_format.format(
            login=account.name, domain=account.domain, realm=account.realm
        )
        self.directory.bind(who, password)

    def _kerberos_check(self, account: WindowsAccount, password: str) -> None:
        import gssapi
        from gssapi.raw import acquire_cred_with_password
        from gssapi.raw.misc import GSSError

        name = gssapi.Name(account.principal, gssapi.NameType.kerberos_principal)
        try:
            creds = acquire_cred_with_password(name, password.encode(), usage="initiate").creds
        except GSSError as exc:
            raise _kerberos_refusal(exc) from None
        if not self.settings.verify_kdc:
            return
        self._prove_kdc(gssapi.Credentials(creds), account)

    def _prove_kdc(self, creds: Any, account: WindowsAccount) -> None:
        import gssapi
        from gssapi.raw.misc import GSSError

        s = self.settings
        assert s.service_principal and s.keytab
        service = gssapi.Name(s.service_principal, gssapi.NameType.kerberos_principal)
        try:
            initiator = gssapi.SecurityContext(
                name=service, creds=creds, usage="initiate", mech=gssapi.MechType.kerberos
            )
            ticket = initiator.step()
            acceptor_creds = gssapi.Credentials(
                usage="accept", name=service, store={"keytab": str(s.keytab)}
            )
            acceptor = gssapi.SecurityContext(creds=acceptor_creds, usage="accept")
            acceptor.step(ticket)
        except GSSError as exc:
            raise ServiceUnavailable(
                "the domain's answer could not be verified with sessiond's keytab "
                f"({s.service_principal}): {_gss_text(exc)}. Check keytab and service_principal."
            ) from None
        if not acceptor.complete:
            raise ServiceUnavailable("the KDC proof did not complete in one step")
        proven = str(acceptor.initiator_name)
        if proven.lower() != account.principal.lower():
            raise SettingsError(f"the KDC proved {proven}, not {account.principal}")


def _gss_text(exc: Exception) -> str:
    gen = getattr(exc, "gen_message", None)
    return str(gen() if callable(gen) else exc).replace("\n", " ")


_UNREACHABLE = ("cannot contact", "cannot find kdc", "cannot resolve", "unable to reach")
_WRONG = ("preauthentication failed", "password incorrect", "not found in kerberos database")


def _kerberos_refusal(exc: Exception) -> Exception:
    text = _gss_text(exc)
    lowered = text.lower()
    if any(marker in lowered for marker in _UNREACHABLE):
        return ServiceUnavailable(f"the Kerberos KDC cannot be reached: {text}")
    if "password has expired" in lowered:
        return PasswordExpired("the domain password has expired; change it, then sign in")
    if "revoked" in lowered or "disabled" in lowered or "locked" in lowered:
        return InvalidCredentials(
            "the domain refused the account (disabled or locked)", reason=text
        )
    if any(marker in lowered for marker in _WRONG):
        return InvalidCredentials("wrong login or password", reason=text)
    return InvalidCredentials("the domain refused the sign-in", reason=text)
