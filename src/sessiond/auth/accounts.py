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
        """One account, whatever its spelling; a domain or realm this server is not set up for
        (``windows.realm``, ``windows.domains``) is refused: it is not read as the default
        realm, so that one account has one name in the limits and the audit."""
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
            if where not in self.domains:
                raise InvalidCredentials(
                    f"{where} is not a domain of this server", reason=f"unknown realm {where}"
                )
            return WindowsAccount(login, self.domains[where], where)
        if where not in self.realms:
            raise InvalidCredentials(
                f"{where} is not a domain of this server", reason=f"unknown domain {where}"
            )
        return WindowsAccount(login, where, self.realms[where])

    def candidates(self, login: str, domain: str | None = None) -> list[str]:
        """Account spellings a user record may hold for this account."""
        account = self.parse(login, domain)
        return [account.down_level, account.principal]
