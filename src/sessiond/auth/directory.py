"""LDAPv3 binds and searches (ldap3), shared by the Ldap login type and Windows' LDAP check.

ldap3 is synchronous: callers run these in a worker thread. A fresh connection per check keeps
one user's bind from ever leaking into another's, and a fresh ``ldap3.Server`` per connection
keeps one failed attempt from deciding the next: a Server remembers an address it could not
reach and then refuses it without trying ("invalid server address").

Every answer is classified (docs/windows.md, "Refusals and their audit reasons"): the caller's
mistakes are :class:`InvalidCredentials` with a ``reason`` for the audit trail naming what the
directory said — Active Directory's sub-code (``data 52e``...) included —, a right password
that must be changed is :class:`PasswordExpired`, and what only the operator can fix (an
unreachable directory, TLS, the search account) is :class:`ServiceUnavailable` naming the
setting, with one line in the log.
"""

from __future__ import annotations

import contextlib
import logging
import re
import ssl
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import ldap3
from ldap3.core.exceptions import (
    LDAPException,
    LDAPInvalidFilterError,
    LDAPSocketOpenError,
    LDAPStartTLSError,
)
from ldap3.utils.conv import escape_filter_chars

from ..errors import InvalidCredentials, PasswordExpired, ServiceUnavailable, SettingsError
from ..settings import DirectorySettings

log = logging.getLogger("sessiond.auth")

WRONG = "wrong login or password"

# LDAP result codes (RFC 4511) this module tells apart.
_OPERATIONS_ERROR = 1
_SIZE_LIMIT_EXCEEDED = 4
_STRONGER_AUTH_REQUIRED = 8
_CONFIDENTIALITY_REQUIRED = 13
_NO_SUCH_OBJECT = 32
_INAPPROPRIATE_AUTHENTICATION = 48
_INVALID_CREDENTIALS = 49
_INSUFFICIENT_ACCESS_RIGHTS = 50
_BUSY = 51
_UNAVAILABLE = 52
_UNWILLING_TO_PERFORM = 53
_OTHER = 80
#: Results that say something about the server, never about the password: 503.
_SERVER_SIDE = {_OPERATIONS_ERROR, _BUSY, _UNAVAILABLE, _UNWILLING_TO_PERFORM, _OTHER}

#: Active Directory's sub-codes of a refused bind: the ``data NNN`` in its diagnostic message,
#: e.g. ``80090308: LdapErr: DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e,
#: v1db1``. Samba 4.17 produces all but 525 (an unknown account answers 52e there). Every one
#: but 52e, 525 and 775 comes only with the right password.
AD_BIND_SUBCODES: Mapping[str, str] = {
    "525": "no such account",
    "52e": "wrong password",
    "530": "sign-in not permitted at this time (logon hours)",
    "531": "sign-in not permitted from this workstation",
    "532": "password expired",
    "533": "account disabled",
    "701": "account expired",
    "773": "password must be changed",
    "775": "account locked out",
}
#: Sub-codes meaning "the password is right, but must be changed first".
AD_MUST_CHANGE = frozenset({"532", "773"})
_SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]{1,8})\b")
#: AD's words for "this needs a bind first" (00002020 from Samba, 000004DC from Windows).
_NEEDS_BIND = ("without authentication", "successful bind must be completed", "000004dc")

#: What a domain user whose password must be changed is told (after the right password).
CHANGE_IN_DOMAIN = (
    "change it in Windows (Ctrl+Alt+Del, Change a password) or with the domain's own tools, "
    "then sign in again; domain passwords are not changed through sessiond"
)


def must_change(what: str, reason: str) -> PasswordExpired:
    """The refusal for a right password that has expired or must be changed in the domain."""
    return PasswordExpired(
        f"{what}: {CHANGE_IN_DOMAIN}", details={"change_in_domain": True}, reason=reason
    )


def ad_subcode(message: str) -> str | None:
    """Active Directory's sub-code in a bind's diagnostic message (``"52e"``), or None."""
    found = _SUBCODE.search(message)
    return found.group(1).lower() if found else None


_warned: set[str] = set()


def warn_once(message: str) -> None:
    """A start-up warning, logged once per process (``sessiond serve`` builds its service
    twice: once to prepare the store, once to serve)."""
    if message not in _warned:
        _warned.add(message)
        log.warning("%s", message)


def check_transport(settings: DirectorySettings, section: str) -> None:
    """Password checks over plain ``ldap://`` without StartTLS are refused at start
    (:class:`SettingsError`) unless ``allow_cleartext_ldap`` says so, and then warned of."""
    if not settings.url.lower().startswith("ldap://") or settings.start_tls:
        return
    if not settings.allow_cleartext_ldap:
        raise SettingsError(
            f"invalid settings: {section}.url {settings.url} is plain ldap:// without StartTLS: "
            "passwords would cross the network in clear text; set "
            f"{section}.start_tls = true or use ldaps://, or set "
            f"{section}.allow_cleartext_ldap = true to accept that"
        )
    warn_once(
        f"{section}.allow_cleartext_ldap = true: passwords are checked over plain "
        f"{settings.url} without StartTLS, in clear text for anyone on the network path; "
        f"set {section}.start_tls = true or use ldaps://"
    )


def _words(result: Mapping[str, Any]) -> str:
    """An LDAP result as the directory put it: ``description: message``."""
    description = str(result.get("description") or result.get("result"))
    message = str(result.get("message") or "").strip()
    return f"{description}: {message}" if message else description


@dataclass(frozen=True, slots=True)
class Entry:
    dn: str
    name: str | None


class Directory:
    def __init__(self, settings: DirectorySettings, section: str = "ldap") -> None:
        self.settings = settings
        #: Where these settings live, for messages: ``ldap`` or ``windows.directory``.
        self.section = section
        self.timeout = max(1, round(settings.timeout.total_seconds()))  # ldap3: whole seconds

    def _server(self) -> ldap3.Server:
        s = self.settings
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if s.verify_certificate else ssl.CERT_NONE,
            ca_certs_file=str(s.ca_file) if s.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        return ldap3.Server(s.url, tls=tls, connect_timeout=self.timeout, get_info=ldap3.NONE)

    def _unavailable(
        self, cause: str, message: str, level: int = logging.ERROR
    ) -> ServiceUnavailable:
        """A 503 naming the cause (``details.cause``), and one log line saying it."""
        log.log(level, "%s [%s]", message, cause)
        return ServiceUnavailable(message, details={"cause": cause})

    def _unreachable(self, exc: Exception) -> ServiceUnavailable:
        text = str(exc).replace("\n", " ")
        url = self.settings.url
        lowered = text.lower()
        if "certificate" in lowered or "doesn't match" in lowered or "hostname" in lowered:
            return self._unavailable(
                "directory_certificate",
                f"the certificate of the directory {url} cannot be verified ({text}): check "
                f"{self.section}.ca_file, and write in {self.section}.url the host name its "
                "certificate names (the domain controller's name, not an IP address)",
            )
        return self._unavailable(
            "directory_unreachable",
            f"the directory {url} cannot be reached: {text}",
            level=logging.WARNING,
        )

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        s = self.settings
        conn = ldap3.Connection(
            self._server(),
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            receive_timeout=self.timeout,
            raise_exceptions=False,
            read_only=True,
        )
        try:
            conn.open()
            if s.start_tls and not conn.start_tls():
                raise self._unavailable(
                    "directory_starttls",
                    f"StartTLS with the directory {s.url} failed: {_words(conn.result)}",
                )
        except (LDAPSocketOpenError, LDAPStartTLSError) as exc:
            _close(conn)
            raise self._unreachable(exc) from None
        except (LDAPException, OSError, ValueError, struct.error) as exc:
            _close(conn)
            raise self._unavailable(
                "directory_failed", f"the directory {s.url} failed: {exc}"
            ) from None
        except ServiceUnavailable:
            _close(conn)
            raise
        return conn

    def bind(self, user: str, password: str) -> None:
        """Bind as ``user`` (a DN, or for Active Directory ``DOMAIN\\name`` or a UPN)."""
        if not password:
            # An empty password is an "unauthenticated bind", which succeeds: never allow it.
            raise InvalidCredentials(WRONG, reason="empty password: not sent to the directory")
        conn = self._connection(user, password)
        try:
            if conn.bind():
                return
            result = dict(conn.result)
        except LDAPException as exc:
            raise self._unavailable(
                "directory_failed", f"the directory {self.settings.url} failed: {exc}"
            ) from None
        finally:
            _close(conn)
        raise self._bind_refusal(result)

    def _bind_refusal(self, result: Mapping[str, Any]) -> Exception:
        code = result.get("result")
        message = str(result.get("message") or "")
        url = self.settings.url
        if code == _INVALID_CREDENTIALS:
            sub = ad_subcode(message)
            if sub is None:
                return InvalidCredentials(
                    WRONG, reason=f"directory: wrong password or no such entry ({_words(result)})"
                )
            meaning = AD_BIND_SUBCODES.get(sub, "refused")
            reason = f"directory: {meaning} (AD data {sub})"
            if sub in AD_MUST_CHANGE:
                what = (
                    "the domain password has expired"
                    if sub == "532"
                    else "the domain password must be changed before the next sign-in"
                )
                return must_change(what, reason)
            return InvalidCredentials(WRONG, reason=reason)
        if code in (_STRONGER_AUTH_REQUIRED, _CONFIDENTIALITY_REQUIRED):
            return self._unavailable(
                "directory_requires_tls",
                f"the directory {url} accepts password binds only over an encrypted "
                f"connection ({_words(result)}): use ldaps:// or set {self.section}.start_tls = "
                "true",
            )
        if code in _SERVER_SIDE:
            return self._unavailable(
                "directory_refused", f"the directory {url} refused the bind: {_words(result)}"
            )
        return InvalidCredentials(WRONG, reason=f"directory: bind refused ({_words(result)})")

    def find(self, login: str) -> Entry:
        """The one entry the search filter finds for ``login``; :class:`InvalidCredentials`
        when there is none, or more than one (never guess whose password to check)."""
        s = self.settings
        conn = self._connection(s.bind_dn, s.bind_password_value)
        try:
            if s.bind_dn and not conn.bind():
                result = dict(conn.result)
                sub = ad_subcode(str(result.get("message") or ""))
                said = f"{AD_BIND_SUBCODES[sub]}, " if sub and sub in AD_BIND_SUBCODES else ""
                raise self._unavailable(
                    "search_account_refused",
                    f"the directory {s.url} refused sessiond's search account {s.bind_dn} "
                    f"({self.section}.bind_dn): {said}{_words(result)}",
                )
            query = s.search_filter.replace("{login}", escape_filter_chars(login))
            conn.search(
                s.search_base,
                query,
                search_scope=ldap3.SUBTREE,
                attributes=[s.name_attribute],
                size_limit=2,
                time_limit=self.timeout,
            )
            result = dict(conn.result)
            entries = list(conn.entries)
        except LDAPInvalidFilterError as exc:
            raise self._unavailable(
                "search_filter", f"{self.section}.search_filter is not a valid LDAP filter: {exc}"
            ) from None
        except LDAPException as exc:
            raise self._unavailable(
                "directory_failed", f"the directory {s.url} failed: {exc}"
            ) from None
        finally:
            _close(conn)
        code = result.get("result")
        if code not in (0, _SIZE_LIMIT_EXCEEDED):
            raise self._search_refusal(result)
        if not entries:
            raise InvalidCredentials(WRONG, reason="no directory entry for the account")
        if len(entries) > 1 or code == _SIZE_LIMIT_EXCEEDED:
            raise InvalidCredentials(
                WRONG, reason="several directory entries match the account: none is guessed"
            )
        entry = entries[0]
        values = entry[s.name_attribute].values if s.name_attribute in entry else []
        return Entry(entry.entry_dn, str(values[0]) if values else None)

    def search(
        self, query: str, attributes: list[str], *, base: str, scope_base: bool = False
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        """Entries ``query`` (an escaped filter) finds under ``base`` (or ``base`` itself, with
        ``scope_base``), as the search account (``bind_dn``): each entry's DN and raw values.
        At most two: a caller that wants one entry sees when there are several."""
        s = self.settings
        conn = self._connection(s.bind_dn, s.bind_password_value)
        try:
            if s.bind_dn and not conn.bind():
                raise self._unavailable(
                    "search_account_refused",
                    f"the directory {s.url} refused sessiond's search account {s.bind_dn} "
                    f"({self.section}.bind_dn): {_words(dict(conn.result))}",
                )
            conn.search(
                base,
                query,
                search_scope=ldap3.BASE if scope_base else ldap3.SUBTREE,
                attributes=attributes or [ldap3.NO_ATTRIBUTES],
                size_limit=2,
                time_limit=self.timeout,
            )
            result = dict(conn.result)
            response = [e for e in conn.response or [] if e.get("type") == "searchResEntry"]
        except LDAPException as exc:
            raise self._unavailable(
                "directory_failed", f"the directory {s.url} failed: {exc}"
            ) from None
        finally:
            _close(conn)
        answered = {0, _SIZE_LIMIT_EXCEEDED} | ({_NO_SUCH_OBJECT} if scope_base else set())
        if result.get("result") not in answered:
            raise self._search_refusal(result)
        return [(str(e["dn"]), dict(e.get("raw_attributes") or {})) for e in response]

    def _search_refusal(self, result: Mapping[str, Any]) -> ServiceUnavailable:
        s = self.settings
        code = result.get("result")
        message = str(result.get("message") or "").lower()
        if not s.bind_dn and (
            code in (_OPERATIONS_ERROR, _INAPPROPRIATE_AUTHENTICATION, _INSUFFICIENT_ACCESS_RIGHTS)
            or any(words in message for words in _NEEDS_BIND)
        ):
            return self._unavailable(
                "search_needs_bind_dn",
                f"the directory {s.url} refuses anonymous searches ({_words(result)}): set "
                f"{self.section}.bind_dn and bind_password (a search account)",
            )
        if code == _NO_SUCH_OBJECT:
            return self._unavailable(
                "search_base",
                f"the directory {s.url} has no entry {s.search_base!r} to search under "
                f"({_words(result)}): correct {self.section}.search_base",
            )
        if code == _INSUFFICIENT_ACCESS_RIGHTS:
            return self._unavailable(
                "search_refused",
                f"the directory {s.url} does not let {s.bind_dn} ({self.section}.bind_dn) "
                f"search {s.search_base!r}: {_words(result)}",
            )
        return self._unavailable(
            "search_refused", f"the directory {s.url} refused the search: {_words(result)}"
        )


def _close(conn: ldap3.Connection) -> None:
    """Unbind, and close the socket even when ldap3 cannot (a connection the peer dropped)."""
    with contextlib.suppress(LDAPException, OSError):
        conn.unbind()
    sock = conn.socket
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.close()
