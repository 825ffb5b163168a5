"""Windows account names: ``DOMAIN\\name``, ``name@REALM`` and (name, domain) read into one
account. Kept apart from the password checks so that reading a name loads no directory or
Kerberos library."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import InvalidCredentials
from ..settings import WindowsSettings


@dataclass(frozen=True, slots=True)
class WindowsAccount:
    name: str
    domain: str  # NetBIOS, upper case
    realm: str  # Kerberos realm, upper case

    @property
    def down_level(self) -> str:
        """``DOMAIN\\name``: the canonical account spelling sessiond stores."""
        return f"{self.domain}\\{self.name}"

    @property
    def principal(self) -> str:
        return f"{self.name}@{self.realm}"


class WindowsNames:
    """Reads ``DOMAIN\\name``, ``name@REALM`` and (name, domain) pairs into one account."""

    def __init__(self, settings: WindowsSettings) -> None:
        self.realm = settings.realm
        self.realms = dict(settings.domains)  # NETBIOS -> REALM
        default_domain = self.realm.split(".", 1)[0]
        self.realms.setdefault(default_domain, self.realm)
        self.domains = {realm: domain for domain, realm in self.realms.items()}

    def looks_like_account(self, login: str, domain: str | None) -> bool:
        return bool(domain) or "\\" in login or "@" in login

    def parse(self, login: str, domain: str | None = None) -> WindowsAccount:
        login = login.strip()
        if "\\" in login:
            domain, login = login.split("\\", 1)
        elif "@" in login and not domain:
            login, domain = login.rsplit("@", 1)
        if not login or "\\" in login or "@" in login:
            raise InvalidCredentials(f"{login!r} is not a Windows account name")
        where = (domain or "").strip().upper()
        if not where:
            return WindowsAccount(login, self.domains.get(self.realm, ""), self.realm)
        if "." in where:  # a realm or DNS domain
            return WindowsAccount(login, self.domains.get(where, where.split(".", 1)[0]), where)
        return WindowsAccount(login, where, self.realms.get(where, self.realm))

    def candidates(self, login: str, domain: str | None = None) -> list[str]:
        """Account spellings a user record may hold for this account."""
        account = self.parse(login, domain)
        return [account.down_level, account.principal]
