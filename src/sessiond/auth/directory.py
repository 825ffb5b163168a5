"""LDAPv3 binds and searches (python-ldap over OpenLDAP's libldap), shared by the Ldap login
type and Windows' LDAP check.

python-ldap's calls block: callers run these in a worker thread (libldap is thread-safe and
python-ldap releases the GIL while it waits). A fresh connection per check keeps one user's
bind from ever leaking into another's, and each connection gets its own TLS context
(``OPT_X_TLS_NEWCTX``), so one connection's TLS settings or failure never decide the next.
Every call is bounded: ``OPT_NETWORK_TIMEOUT`` the connection (TLS handshake included),
``OPT_TIMEOUT`` each operation, and the search's own time limit the directory's side.
Certificates are required (``OPT_X_TLS_REQUIRE_CERT = demand``) and libldap checks that the
certificate names the host in ``url``.

Every answer is classified (docs/windows.md, "Refusals and their audit reasons"): the caller's
mistakes are :class:`InvalidCredentials` with a ``reason`` for the audit trail naming what the
directory said — Active Directory's sub-code (``data 52e``...) included —, a right password
that must be changed is :class:`PasswordExpired`, and what only the operator can fix (an
unreachable directory, TLS, the search account) is :class:`ServiceUnavailable` naming the
setting, with one line in the log.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

import ldap
import ldap.filter

from ..errors import InvalidCredentials, PasswordExpired, ServiceUnavailable, SettingsError
from ..settings import DirectorySettings

log = logging.getLogger("sessiond.auth")

WRONG = "wrong login or password"

# LDAP result codes (RFC 4511) this module tells apart: python-ldap raises one exception class
# per code, and its first argument (a dict) carries the code as ``result``.
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
#: RFC 4511's names of the result codes, as messages and audit reasons give them (libldap's own
#: descriptions, "Invalid credentials", stand in for a code not listed).
_NAMES: Mapping[int, str] = {
    1: "operationsError",
    2: "protocolError",
    3: "timeLimitExceeded",
    4: "sizeLimitExceeded",
    7: "authMethodNotSupported",
    8: "strongerAuthRequired",
    10: "referral",
    11: "adminLimitExceeded",
    12: "unavailableCriticalExtension",
    13: "confidentialityRequired",
    32: "noSuchObject",
    34: "invalidDNSyntax",
    48: "inappropriateAuthentication",
    49: "invalidCredentials",
    50: "insufficientAccessRights",
    51: "busy",
    52: "unavailable",
    53: "unwillingToPerform",
    54: "loopDetect",
    80: "other",
}

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


#: What every path answers a right password that has expired or must be changed: Kerberos
#: cannot tell the two apart, so no path does (the audit reason says which where it can).
MUST_CHANGE = "the domain password has expired or must be changed"


def must_change(reason: str) -> PasswordExpired:
    """The refusal for a right password that has expired or must be changed in the domain: the
    same answer on every path (password, Ldap bind, NTLM)."""
    return PasswordExpired(
        f"{MUST_CHANGE}: {CHANGE_IN_DOMAIN}", details={"change_in_domain": True}, reason=reason
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


def _result(exc: ldap.LDAPError) -> dict[str, Any]:
    """python-ldap's account of a failure: ``result`` (the code; negative: libldap's own, no
    answer from the server), ``desc`` and the server's diagnostic message ``info``."""
    said = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return {
        "result": said.get("result", -1),
        "desc": str(said.get("desc") or type(exc).__name__),
        "info": str(said.get("info") or "").strip(),
    }


def _words(result: Mapping[str, Any]) -> str:
    """An LDAP result as the directory put it: ``description: message``."""
    description = _NAMES.get(result["result"], result["desc"])
    message = result["info"]
    return f"{description}: {message}" if message else description


def _said(exc: ldap.LDAPError) -> str:
    """What libldap says of a failure of its own (no answer): ``Can't contact LDAP server
    (the TLS error)``."""
    result = _result(exc)
    info = result["info"].replace("\n", " ")
    return f"{result['desc']} ({info})" if info else result["desc"]


#: libldap's failures to connect: the server unreachable, the TLS handshake or the certificate.
_UNREACHED = (ldap.SERVER_DOWN, ldap.CONNECT_ERROR)
#: All libldap built on GnuTLS (Debian's) says when its TLS handshake fails on its own checks —
#: a certificate untrusted, expired, or not naming the host: its -1 has no GnuTLS text (a
#: libldap built on OpenSSL says "certificate verify failed (...)" instead).
_GNUTLS_REFUSED = "(unknown error code)"
#: A whole check (connection, TLS, bind, search) is given up after this many times
#: ``timeout``: libldap 2.5 bounds the connection and each operation, but not a TLS handshake
#: with a peer that accepts the connection and then says nothing (docs/windows.md): 503
#: ``directory_unreachable``, as a connection that cannot be made.
_DEADLINE_STEPS = 2
_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class Entry:
    dn: str
    name: str | None


class Directory:
    def __init__(self, settings: DirectorySettings, section: str = "ldap") -> None:
        self.settings = settings
        #: Where these settings live, for messages: ``ldap`` or ``windows.directory``.
        self.section = section
        #: Seconds for each step: connecting (TLS included), and every operation.
        self.timeout = settings.timeout.total_seconds()
        self._tls = settings.start_tls or settings.url.lower().startswith("ldaps://")

    def _unavailable(
        self, cause: str, message: str, level: int = logging.ERROR
    ) -> ServiceUnavailable:
        """A 503 naming the cause (``details.cause``), and one log line saying it."""
        log.log(level, "%s [%s]", message, cause)
        return ServiceUnavailable(
            message,
            details={"cause": cause},
            sign_in="Windows" if self.section.startswith("windows") else "LDAP",
        )

    def _unreachable(self, exc: ldap.LDAPError) -> ServiceUnavailable:
        text = _said(exc)
        url = self.settings.url
        lowered = text.lower()
        if _result(exc)["info"] == _GNUTLS_REFUSED and self._tls:
            text = (
                f"{_result(exc)['desc']}: the TLS handshake or the check of the certificate "
                "failed, libldap names no reason: a certificate issued by no CA of "
                f"{self.section}.ca_file, out of its dates, or not for the host in the url"
            )
            lowered = "certificate"
        if "certificate" in lowered or "does not match" in lowered or "hostname" in lowered:
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

    def _failed(self, exc: ldap.LDAPError) -> ServiceUnavailable:
        """Any other failure: no answer in time, a protocol error, libldap's own."""
        if isinstance(exc, ldap.TIMEOUT):
            text = f"no answer within {self.timeout:g} s ({self.section}.timeout)"
        else:
            text = _words(_result(exc))
        return self._unavailable(
            "directory_failed", f"the directory {self.settings.url} failed: {text}"
        )

    def _connection(self) -> Any:
        """A new connection (an ``ldap.ldapobject.LDAPObject``), its TLS set up and, with
        ``start_tls``, started; anything else connects at the first operation."""
        s = self.settings
        conn: Any = None
        try:
            conn = ldap.initialize(s.url)
            conn.timeout = self.timeout  # python-ldap's own wait for each synchronous call
            options = {
                ldap.OPT_PROTOCOL_VERSION: ldap.VERSION3,
                ldap.OPT_REFERRALS: 0,  # never follow AD's referrals, anonymously, elsewhere
                ldap.OPT_NETWORK_TIMEOUT: self.timeout,
                ldap.OPT_TIMEOUT: self.timeout,
                ldap.OPT_X_TLS_REQUIRE_CERT: (
                    ldap.OPT_X_TLS_DEMAND if s.verify_certificate else ldap.OPT_X_TLS_NEVER
                ),
                ldap.OPT_X_TLS_PROTOCOL_MIN: ldap.OPT_X_TLS_PROTOCOL_TLS1_2,
            }
            if s.ca_file:
                options[ldap.OPT_X_TLS_CACERTFILE] = str(s.ca_file)
            for option, value in options.items():
                conn.set_option(option, value)
            conn.set_option(ldap.OPT_X_TLS_NEWCTX, 0)  # last: the context takes the above
        except ldap.LDAPError as exc:
            _close(conn)
            raise self._unavailable(
                "directory_failed", f"the directory {s.url} cannot be used: {_said(exc)}"
            ) from None
        if s.start_tls:
            try:
                conn.start_tls_s()
            except ldap.LDAPError as exc:
                _close(conn)
                if isinstance(exc, _UNREACHED):
                    raise self._unreachable(exc) from None
                if _result(exc)["result"] < 0:
                    raise self._failed(exc) from None
                raise self._unavailable(
                    "directory_starttls",
                    f"StartTLS with the directory {s.url} failed: {_words(_result(exc))}",
                ) from None
        return conn

    def _bind_as(self, conn: Any, user: str, password: str) -> dict[str, Any] | None:
        """Bind on ``conn``: None when the directory accepts, else its answer (a result);
        :class:`ServiceUnavailable` when there is no answer."""
        try:
            conn.simple_bind_s(user, password)
        except _UNREACHED as exc:
            raise self._unreachable(exc) from None
        except ldap.LDAPError as exc:
            result = _result(exc)
            if result["result"] < 0:
                raise self._failed(exc) from None
            return result
        return None

    def _bounded(self, work: Callable[[], _T]) -> _T:
        """``work`` on a thread of its own, given up after the deadline (a TLS handshake that
        never ends: the directory is not reached), the thread left to end when the peer
        closes (it holds nothing else)."""
        outcome: concurrent.futures.Future[_T] = concurrent.futures.Future()

        def run() -> None:
            try:
                outcome.set_result(work())
            except BaseException as exc:
                outcome.set_exception(exc)

        threading.Thread(target=run, name="sessiond-directory", daemon=True).start()
        deadline = _DEADLINE_STEPS * self.timeout
        try:
            return outcome.result(timeout=deadline)
        except concurrent.futures.TimeoutError:
            raise self._unavailable(
                "directory_unreachable",
                f"the directory {self.settings.url} cannot be reached: no answer within "
                f"{deadline:g} s (twice {self.section}.timeout)",
                level=logging.WARNING,
            ) from None

    def bind(self, user: str, password: str) -> None:
        """Bind as ``user`` (a DN, or for Active Directory ``DOMAIN\\name`` or a UPN)."""
        if not password:
            # An empty password is an "unauthenticated bind", which succeeds: never allow it.
            raise InvalidCredentials(WRONG, reason="empty password: not sent to the directory")
        self._bounded(lambda: self._bind(user, password))

    def _bind(self, user: str, password: str) -> None:
        conn = self._connection()
        try:
            refused = self._bind_as(conn, user, password)
        finally:
            _close(conn)
        if refused is not None:
            raise self._bind_refusal(refused)

    def _bind_refusal(self, result: Mapping[str, Any]) -> Exception:
        code = result["result"]
        message = result["info"]
        url = self.settings.url
        if code == _INVALID_CREDENTIALS:
            sub = ad_subcode(message)
            if sub is None:
                return InvalidCredentials(
                    WRONG, reason=f"directory: wrong password or no such entry ({_words(result)})"
                )
            meaning = AD_BIND_SUBCODES.get(sub, "refused")
            reason = f"directory: {meaning} (AD data {sub})"
            if sub in AD_MUST_CHANGE:  # which of the two: in the audit reason
                return must_change(reason)
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

    def probe(self) -> str | None:
        """Connect (TLS and StartTLS as set) and bind as the search account when one is set:
        None when that works, else what the directory answered to the bind (the server's own
        faults raise :class:`ServiceUnavailable` with a cause, as sign-ins meet them)."""
        return self._bounded(self._probe)

    def _probe(self) -> str | None:
        s = self.settings
        conn = self._connection()
        try:
            if not s.bind_dn:
                conn.whoami_s()  # anonymous: the first operation connects
                return None
            refused = self._bind_as(conn, s.bind_dn, s.bind_password_value or "")
        except ldap.LDAPError as exc:
            if isinstance(exc, _UNREACHED):
                raise self._unreachable(exc) from None
            raise self._failed(exc) from None
        finally:
            _close(conn)
        return None if refused is None else _words(refused)

    def find(self, login: str) -> Entry:
        """The one entry the search filter finds for ``login``; :class:`InvalidCredentials`
        when there is none, or more than one (never guess whose password to check)."""
        return self._bounded(lambda: self._find(login))

    def _find(self, login: str) -> Entry:
        s = self.settings
        query = s.search_filter.replace("{login}", ldap.filter.escape_filter_chars(login))
        several = False
        try:
            found = self._search_as_account(s.search_base, ldap.SCOPE_SUBTREE, query,
                                            [s.name_attribute])  # fmt: skip
        except ldap.SIZELIMIT_EXCEEDED:
            found, several = [], True
        except ldap.FILTER_ERROR as exc:
            raise self._unavailable(
                "search_filter",
                f"{self.section}.search_filter is not a valid LDAP filter: {_said(exc)}",
            ) from None
        except ldap.NO_SUCH_OBJECT as exc:  # the search base
            raise self._search_refusal(_result(exc)) from None
        if len(found) > 1 or several:
            raise InvalidCredentials(
                WRONG, reason="several directory entries match the account: none is guessed"
            )
        if not found:
            raise InvalidCredentials(WRONG, reason="no directory entry for the account")
        dn, attributes = found[0]
        values = _values(attributes, s.name_attribute)
        return Entry(str(dn), values[0] if values else None)

    def search(
        self, query: str, attributes: list[str], *, base: str, scope_base: bool = False
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        """Entries ``query`` (an escaped filter) finds under ``base`` (or ``base`` itself, with
        ``scope_base``), as the search account (``bind_dn``): each entry's DN and raw values.
        At most two: a caller that wants one entry sees when there are several."""
        return self._bounded(lambda: self._search(query, attributes, base, scope_base))

    def _search(
        self, query: str, attributes: list[str], base: str, scope_base: bool
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        scope = ldap.SCOPE_BASE if scope_base else ldap.SCOPE_SUBTREE
        try:  # "1.1": no attributes
            return self._search_as_account(base, scope, query, attributes or ["1.1"])
        except ldap.SIZELIMIT_EXCEEDED:
            raise InvalidCredentials(
                WRONG, reason=f"several directory entries match {query}: none is guessed"
            ) from None
        except ldap.NO_SUCH_OBJECT as exc:
            if not scope_base:
                raise self._search_refusal(_result(exc)) from None
            return []
        except ldap.FILTER_ERROR as exc:  # the query is sessiond's own: a fault, not a refusal
            raise self._failed(exc) from None

    def _search_as_account(
        self, base: str, scope: int, query: str, attributes: list[str]
    ) -> list[tuple[str, dict[str, list[bytes]]]]:
        """One search (at most two entries) on a new connection, as the search account when
        one is set. Entries only: search references (AD's referrals to its other partitions)
        have no DN. ``ldap.SIZELIMIT_EXCEEDED``, ``FILTER_ERROR`` and ``NO_SUCH_OBJECT`` are
        the caller's to read; the server's other faults are :class:`ServiceUnavailable`."""
        s = self.settings
        conn = self._connection()
        try:
            if s.bind_dn:
                refused = self._bind_as(conn, s.bind_dn, s.bind_password_value or "")
                if refused is not None:
                    sub = ad_subcode(refused["info"])
                    said = f"{AD_BIND_SUBCODES[sub]}, " if sub and sub in AD_BIND_SUBCODES else ""
                    raise self._unavailable(
                        "search_account_refused",
                        f"the directory {s.url} refused sessiond's search account {s.bind_dn} "
                        f"({self.section}.bind_dn): {said}{_words(refused)}",
                    )
            found = conn.search_ext_s(
                base,
                scope,
                query,
                attributes,
                timeout=self.timeout,  # the directory's time limit and the wait here
                sizelimit=2,
            )
        except (ldap.SIZELIMIT_EXCEEDED, ldap.FILTER_ERROR, ldap.NO_SUCH_OBJECT):
            raise
        except _UNREACHED as exc:
            raise self._unreachable(exc) from None
        except ldap.LDAPError as exc:
            result = _result(exc)
            if result["result"] < 0:
                raise self._failed(exc) from None
            raise self._search_refusal(result) from None
        finally:
            _close(conn)
        return [(str(dn), dict(values)) for dn, values in found if dn is not None]

    def _search_refusal(self, result: Mapping[str, Any]) -> ServiceUnavailable:
        s = self.settings
        code = result["result"]
        message = result["info"].lower()
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


def _values(attributes: Mapping[str, list[bytes]], name: str) -> list[str]:
    """An attribute's values as text (python-ldap gives bytes; names match in any case)."""
    for key, values in attributes.items():
        if key.lower() == name.lower():
            return [value.decode("utf-8", "replace") for value in values]
    return []


def _close(conn: Any) -> None:
    """Unbind, which closes the socket (also of a connection the peer dropped)."""
    if conn is not None:
        with contextlib.suppress(ldap.LDAPError):
            conn.unbind_ext_s()
