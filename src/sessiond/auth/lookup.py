"""Looking domain names up: which account a user principal name (UPN) belongs to, and which
groups an account is a member of (nested groups included), for ``require_membership_of`` on
every Windows path and for UPNs that differ from the account's name.

Two sources, whichever the server already has:

* **the directory** (``[windows.directory]``, with a search account): a search for
  ``userPrincipalName``, and the account's ``tokenGroups`` — computed by the DC when asked:
  the groups, the groups they are in, the primary group, as they are now — on the directory's
  own threads and timeout (:mod:`.outside`). Used for memberships whenever it is configured.
* **winbind** (``windows.ntlm = "winbind"``): Samba's ``wbinfo`` next to ``ntlm_auth`` and
  ``ntlm_auth`` itself, run with ``ntlm_auth_config`` and ``ntlm_auth_environment``, each a
  process within ``ntlm_auth_timeout``, at most ``ntlm_helpers`` of them at once. A password
  the domain has just accepted is logged on with through ``ntlm_auth --require-membership-of``
  (the rule NTLM is held to: the domain's answer carries the groups, nested ones included); a
  ticket is held to ``wbinfo --user-sids``, the groups winbind knows: those of the account's
  last logon through it, else its own lookup (which, on a DC's own winbindd, leaves out groups
  inside groups).

A UPN is asked of winbind first, then of the directory (a domain controller's own winbindd does
not resolve UPNs, a member's does). What the sources cannot answer is a ``503
service_unavailable`` with a ``details.cause``; an account outside the group is the caller's
``401 invalid_credentials``, "wrong login or password", as NTLM answers it (docs/windows.md,
"Group membership on every path").
"""

from __future__ import annotations

import asyncio
import logging
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from ..errors import InvalidCredentials, ServiceUnavailable
from ..settings import WindowsSettings
from . import outside
from .accounts import WindowsAccount, WindowsNames

log = logging.getLogger("sessiond.auth")

WRONG = "wrong login or password"

#: What libwbclient says when winbindd does not answer at all.
_NO_WINBINDD = ("WBC_ERR_WINBIND_NOT_AVAILABLE", "could not obtain winbind")
#: What it says when a name or SID is unknown (to winbindd or to the domain).
_NOT_FOUND = ("WBC_ERR_DOMAIN_NOT_FOUND", "NT_STATUS_NONE_MAPPED", "NT_STATUS_NO_SUCH")


def sid_text(raw: bytes) -> str:
    """A binary SID (``objectSid``, ``tokenGroups``) as ``S-1-5-21-…`` (MS-DTYP 2.4.2)."""
    if len(raw) < 8:
        raise ValueError("not a SID")
    revision, count = raw[0], raw[1]
    authority = int.from_bytes(raw[2:8], "big")
    subs = struct.unpack_from(f"<{count}I", raw, 8)
    return "-".join(["S", str(revision), str(authority), *map(str, subs)])


def escape_filter(value: str) -> str:
    """``value`` as a literal in an LDAP search filter (RFC 4515)."""
    specials = {"\\": r"\5c", "*": r"\2a", "(": r"\28", ")": r"\29", "\0": r"\00"}
    return "".join(specials.get(char, char) for char in value)


def _is_sid(value: str) -> bool:
    return value.upper().startswith("S-1-")


@dataclass(frozen=True, slots=True)
class Found:
    """A name a source resolved: its SID and ``DOMAIN\\name``."""

    sid: str
    down_level: str


class Winbind:
    """Names and tokens through ``wbinfo`` (libwbclient → winbindd)."""

    source = "winbind"

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.wbinfo = Path(settings.ntlm_auth).with_name("wbinfo")
        self.timeout = settings.ntlm_auth_timeout.total_seconds()
        self._slots = asyncio.Semaphore(settings.ntlm_helpers)

    async def _exec(self, command: list[str], given: bytes | None = None) -> tuple[int, str, str]:
        """Run ``command`` (wbinfo, ntlm_auth) within the timeout and the bound on processes:
        its exit status, output and error output."""
        program = Path(command[0]).name
        env = {**os.environ, **self.settings.ntlm_auth_environment}
        try:
            async with asyncio.timeout(self.timeout), self._slots:
                process = await asyncio.create_subprocess_exec(
                    *command,
                    stdin=asyncio.subprocess.PIPE if given else asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                    env=env,
                )
                try:
                    out, err = await process.communicate(given)
                finally:
                    if process.returncode is None:
                        process.kill()
        except TimeoutError:
            raise _unavailable(
                f"{program}_timeout",
                f"{program} did not answer within {self.timeout:g} s "
                "(windows.ntlm_auth_timeout): winbindd or the domain controller is slow or "
                "unreachable",
            ) from None
        except OSError as exc:
            raise _unavailable(
                f"{program}_missing",
                f"group memberships and user principal names cannot be looked up: {command[0]} "
                f"cannot be run ({exc}); install Samba's winbind package",
            ) from None
        said = _line((out + err).decode(errors="replace"))
        if process.returncode != 0 and any(marker in said for marker in _NO_WINBINDD):
            raise _unavailable(
                "winbindd_unreachable",
                f"{program} cannot reach winbindd (is winbindd running, and is this machine "
                f"joined to the domain?): {said}",
            )
        return process.returncode or 0, out.decode(errors="replace"), said

    async def _run(self, *args: str) -> str | None:
        """``wbinfo ARGS``'s output; None when the name or SID is unknown."""
        status, out, said = await self._exec([str(self.wbinfo), *args])
        if status == 0:
            return out
        if any(marker in said for marker in _NOT_FOUND) or "Could not lookup" in said:
            return None
        raise _unavailable("wbinfo_failed", f"wbinfo {args[0]} failed: {said}")

    async def logon_is_member(self, account: WindowsAccount, password: str, group: str) -> bool:
        """Log on with the password through winbind, as ``ntlm_auth --require-membership-of``
        does for NTLM: the domain's answer carries the account's groups, nested ones included,
        as they are now (and winbind keeps them for the account's next ticket). Only ever
        called with a password the domain has just accepted."""
        s = self.settings
        command = [
            str(s.ntlm_auth),
            "--helper-protocol=squid-2.5-basic",
            f"--require-membership-of={group}",
        ]
        if s.ntlm_auth_config:
            command.append(f"--configfile={s.ntlm_auth_config}")
        line = f"{quote(account.down_level, safe='')} {quote(password, safe='')}\n"
        _status, out, said = await self._exec(command, line.encode())
        answer = out.strip().split(" ", 1)[0]
        if answer == "OK":
            return True
        if answer == "ERR":
            return False
        if not answer and group.casefold() in said.casefold():
            raise _unavailable(
                "group_unknown",
                f"winbind cannot resolve require_membership_of = {group!r}: {said}",
            )
        raise _unavailable(
            "ntlm_auth_failed", f"ntlm_auth answered {out.strip()[:40]!r} to a logon: {said}"
        )

    async def find(self, name: str) -> Found | None:
        """The SID and down-level name of ``name`` (``DOMAIN\\name``, a UPN, a group)."""
        answer = await self._run("--name-to-sid", name)
        if not answer or not answer.split():
            return None
        sid = answer.split()[0]
        named = await self._run("--sid-to-name", sid)
        if not named or not named.strip():
            return None
        down_level = named.strip().rsplit(" ", 1)[0]  # "DOMAIN\name 1": the name, its type
        return Found(sid, down_level)

    async def account_of_upn(self, upn: str) -> str | None:
        found = await self.find(upn)
        return found.down_level if found else None

    async def group_sid(self, group: str) -> str | None:
        if _is_sid(group):
            return group.upper()
        answer = await self._run("--name-to-sid", group)
        return answer.split()[0].upper() if answer and answer.split() else None

    async def token(self, account: WindowsAccount) -> set[str] | None:
        answer = await self._run("--name-to-sid", account.down_level)
        if not answer or not answer.split():
            return None
        sids = await self._run("--user-sids", answer.split()[0])
        return {line.strip().upper() for line in (sids or "").splitlines() if line.strip()}


class DirectoryNames:
    """Names and tokens through ``[windows.directory]`` (Active Directory over LDAP)."""

    source = "directory"

    def __init__(self, settings: WindowsSettings, names: WindowsNames) -> None:
        from .directory import Directory  # (loads the directory library only when used)

        assert settings.directory is not None
        self.settings = settings.directory
        self.names = names
        self.directory = Directory(settings.directory, section="windows.directory")
        self.pool = outside.directory(settings.directory, "windows.directory")
        self.base = settings.directory.search_base or ",".join(
            f"DC={label}" for label in settings.realm.lower().split(".")
        )
        self.domain = names.domains.get(settings.realm, "")

    def _one(self, query: str, attributes: list[str]) -> tuple[str, dict[str, list[bytes]]] | None:
        found = self.directory.search(query, attributes, base=self.base)
        if len(found) > 1:
            raise InvalidCredentials(
                WRONG, reason=f"several directory entries match {query}: none is guessed"
            )
        return found[0] if found else None

    def _account_of_upn(self, upn: str) -> str | None:
        query = f"(&(objectCategory=person)(userPrincipalName={escape_filter(upn)}))"
        found = self._one(query, ["sAMAccountName"])
        if found is None or not found[1].get("sAMAccountName"):
            return None
        return f"{self.domain}\\{found[1]['sAMAccountName'][0].decode()}"

    def _group_sid(self, group: str) -> str | None:
        if _is_sid(group):
            return group.upper()
        name = group.split("\\", 1)[-1]
        query = f"(&(objectClass=group)(sAMAccountName={escape_filter(name)}))"
        found = self._one(query, ["objectSid"])
        if found is None or not found[1].get("objectSid"):
            return None
        return sid_text(found[1]["objectSid"][0]).upper()

    def _token(self, account: WindowsAccount) -> set[str] | None:
        query = f"(&(objectCategory=person)(sAMAccountName={escape_filter(account.name)}))"
        found = self._one(query, [])
        if found is None:
            return None
        # tokenGroups is computed by the DC, and only for a search of the entry itself.
        entries = self.directory.search(
            "(objectClass=*)", ["objectSid", "tokenGroups"], base=found[0], scope_base=True
        )
        values = entries[0][1] if entries else {}
        raws = [*values.get("objectSid", []), *values.get("tokenGroups", [])]
        return {sid_text(raw).upper() for raw in raws}

    async def account_of_upn(self, upn: str) -> str | None:
        return await self.pool.run(self._account_of_upn, upn)

    async def group_sid(self, group: str) -> str | None:
        return await self.pool.run(self._group_sid, group)

    async def token(self, account: WindowsAccount) -> set[str] | None:
        return await self.pool.run(self._token, account)


Source = Winbind | DirectoryNames


class Lookups:
    """The sources a Windows backend asks, built from its settings."""

    def __init__(self, settings: WindowsSettings, names: WindowsNames) -> None:
        self.settings = settings
        self.names = names
        self.sources: list[Source] = []
        if settings.ntlm_mode == "winbind":
            self.sources.append(Winbind(settings))
        if settings.directory is not None:
            self.sources.append(DirectoryNames(settings, names))
        self.group = settings.require_membership_of

    @property
    def configured(self) -> bool:
        return bool(self.sources)

    async def account(self, login: str, domain: str | None = None) -> WindowsAccount:
        """The account a sign-in names (docs/windows.md, "How a Windows account is spelled
        and matched"): ``DOMAIN\\name`` and (name, domain) as they are; a name with ``@`` is
        first looked up as a user principal name, and read as ``name@REALM`` when no source
        knows it (or none is configured)."""
        spelled = login.strip()
        if not domain and "@" in spelled and "\\" not in spelled:
            for source in self.sources:
                found = await source.account_of_upn(spelled)
                if found:
                    return self.names.parse(found)
        return self.names.parse(login, domain)

    async def require_membership(self, account: WindowsAccount, password: str = "") -> None:
        """Refuse an account outside ``require_membership_of`` as NTLM does: the caller is
        told "wrong login or password", the audit record why. ``password``: one the domain
        has just accepted for the account (the password path), else empty (a ticket)."""
        group = self.group
        if not group:
            return
        source = self.sources[-1]  # the directory's live tokenGroups, else winbind
        if isinstance(source, Winbind) and password:
            if not await source.logon_is_member(account, password, group):
                raise InvalidCredentials(
                    WRONG,
                    reason=f"{account.down_level} is not a member of {group} (winbind refused "
                    "the logon with the password the domain had accepted)",
                )
            return
        sid = await source.group_sid(group)
        if sid is None:
            raise _unavailable(
                "group_unknown",
                f"the {source.source} cannot resolve require_membership_of = {group!r}: "
                "correct the group's name (DOMAIN\\group) or give its SID",
            )
        token = await source.token(account)
        if token is None or sid not in token:
            raise InvalidCredentials(
                WRONG, reason=f"{account.down_level} is not a member of {group}"
            )


def _line(text: str) -> str:
    return " | ".join(line.strip() for line in text.splitlines() if line.strip())[:300]


def _unavailable(cause: str, message: str) -> ServiceUnavailable:
    log.error("%s [%s]", message, cause)
    return ServiceUnavailable(message, details={"cause": cause})
