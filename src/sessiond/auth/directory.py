"""LDAPv3 binds and searches (ldap3), shared by the Ldap login type and Windows' LDAP check.

ldap3 is synchronous: callers run these in a worker thread. A fresh connection per check keeps
one user's bind from ever leaking into another's.
"""

from __future__ import annotations

import ssl
import struct
from dataclasses import dataclass

import ldap3
from ldap3.core.exceptions import LDAPException, LDAPSocketOpenError, LDAPStartTLSError
from ldap3.utils.conv import escape_filter_chars

from ..errors import InvalidCredentials, ServiceUnavailable
from ..settings import DirectorySettings

_INVALID_CREDENTIALS = 49


@dataclass(frozen=True, slots=True)
class Entry:
    dn: str
    name: str | None


class Directory:
    def __init__(self, settings: DirectorySettings) -> None:
        self.settings = settings
        tls = ldap3.Tls(
            validate=ssl.CERT_REQUIRED if settings.verify_certificate else ssl.CERT_NONE,
            ca_certs_file=str(settings.ca_file) if settings.ca_file else None,
            version=ssl.PROTOCOL_TLS_CLIENT,
        )
        timeout = max(1, round(settings.timeout.total_seconds()))  # ldap3 packs whole seconds
        self.server = ldap3.Server(
            settings.url, tls=tls, connect_timeout=timeout, get_info=ldap3.NONE
        )
        self.timeout = timeout

    def _connection(self, user: str | None, password: str | None) -> ldap3.Connection:
        conn = ldap3.Connection(
            self.server,
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            receive_timeout=self.timeout,
            raise_exceptions=False,
            read_only=True,
        )
        try:
            conn.open()
            if self.settings.start_tls and not conn.start_tls():
                raise ServiceUnavailable(
                    f"StartTLS with the directory {self.settings.url} failed: {conn.result}"
                )
        except (LDAPSocketOpenError, LDAPStartTLSError) as exc:
            raise ServiceUnavailable(
                f"the directory {self.settings.url} cannot be reached: {exc}"
            ) from None
        except (LDAPException, OSError, ValueError, struct.error) as exc:
            raise ServiceUnavailable(f"the directory {self.settings.url} failed: {exc}") from None
        return conn

    def bind(self, user: str, password: str) -> None:
        """Bind as ``user`` (a DN, or for Active Directory ``DOMAIN\\name`` or a UPN)."""
        if not password:
            # An empty password is an "unauthenticated bind", which succeeds: never allow it.
            raise InvalidCredentials("wrong login or password")
        conn = self._connection(user, password)
        try:
            if conn.bind():
                return
            if conn.result.get("result") == _INVALID_CREDENTIALS:
                raise InvalidCredentials("wrong login or password")
            raise InvalidCredentials(
                f"the directory refused the sign-in: {conn.result.get('description')}"
            )
        except LDAPException as exc:
            raise ServiceUnavailable(f"the directory {self.settings.url} failed: {exc}") from None
        finally:
            conn.unbind()

    def find(self, login: str) -> Entry | None:
        """The one entry the search filter finds for ``login``, or None."""
        s = self.settings
        conn = self._connection(s.bind_dn, s.bind_password_value)
        try:
            if s.bind_dn and not conn.bind():
                raise ServiceUnavailable(
                    f"the directory refused sessiond's search account {s.bind_dn}: "
                    f"{conn.result.get('description')}"
                )
            query = s.search_filter.replace("{login}", escape_filter_chars(login))
            conn.search(
                s.search_base,
                query,
                search_scope=ldap3.SUBTREE,
                attributes=[s.name_attribute],
                size_limit=2,
                time_limit=max(1, int(self.timeout)),
            )
            entries = conn.entries
            if len(entries) != 1:
                return None  # none, or ambiguous: never guess whose password to check
            values = entries[0][s.name_attribute].values if s.name_attribute in entries[0] else []
            return Entry(entries[0].entry_dn, str(values[0]) if values else None)
        except LDAPException as exc:
            raise ServiceUnavailable(f"the directory {s.url} failed: {exc}") from None
        finally:
            conn.unbind()
