"""The Samba AD DC's directory: LDAP addresses and connections, the Administrator connection
the helpers share, and the accounts tests make (users, groups) and the states they put them in
(disabled, must change password, password expired, account expired, locked out).

:class:`SambaDirectory` is a part of :class:`tests.infra.samba.SambaDomain`.
"""

from __future__ import annotations

import datetime
import re
import secrets
import ssl
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import Any, TypeVar, cast

import ldap3
from ldap3.core.exceptions import LDAPCommunicationError, LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import escape_rdn

from tests.infra.samba_setup import SambaSetup, random_password

#: userAccountControl bits.
UF_ACCOUNTDISABLE = 0x0002
UF_NORMAL_ACCOUNT = 0x0200
UF_DONT_EXPIRE_PASSWD = 0x10000
#: groupType of a global security group.
GLOBAL_SECURITY_GROUP = -2147483646
#: accountExpires value meaning "never".
NEVER = 0x7FFFFFFFFFFFFFFF
#: Samba's control that lets pwdLastSet be written with any value (local ldb access only).
BYPASS_LAST_SET_CONTROL = "local_oid:1.3.6.1.4.1.7165.4.3.20:0"

_T = TypeVar("_T")
_SUBCODE = re.compile(r"\bdata ([0-9a-fA-F]+)\b")
_EPOCH_AS_FILETIME = 116444736000000000  # 1601-01-01 to 1970-01-01 in 100 ns units


def filetime(when: datetime.datetime) -> int:
    """``when`` as an AD timestamp (100 ns intervals since 1601-01-01 UTC)."""
    if when.tzinfo is None:
        raise ValueError("give an aware datetime")
    return _EPOCH_AS_FILETIME + int(when.timestamp() * 10_000_000)


def ad_subcode(result: Mapping[str, Any] | str) -> str | None:
    """The Active Directory sub-code of a failed bind (``"52e"``, ``"775"``...), or None.

    Takes an ldap3 ``Connection.result`` or its diagnostic message, e.g. ``80090308: LdapErr:
    DSID-0C0903A9, comment: AcceptSecurityContext error, data 52e, v1db1``.
    """
    message = result if isinstance(result, str) else str(result.get("message") or "")
    match = _SUBCODE.search(message)
    return match.group(1).lower() if match else None


def _unicode_pwd(password: str) -> bytes:
    return f'"{password}"'.encode("utf-16-le")


@dataclass(frozen=True)
class DomainUser:
    """A user account created by :meth:`SambaDomain.add_user`."""

    name: str  # sAMAccountName, e.g. "alice"
    dn: str
    password: str  # as created (not updated by set_password)
    realm: str
    domain: str

    @property
    def principal(self) -> str:
        """``name@REALM``, the Kerberos principal (also accepted as a bind name)."""
        return f"{self.name}@{self.realm}"

    @property
    def upn(self) -> str:
        """``name@dns.domain``, the userPrincipalName set at creation."""
        return f"{self.name}@{self.realm.lower()}"

    @property
    def down_level(self) -> str:
        """``DOMAIN\\name``."""
        return f"{self.domain}\\{self.name}"


@dataclass(frozen=True)
class AccountStates:
    """One account per state Active Directory reports, made by
    :meth:`SambaDirectory.add_users_in_each_state`."""

    ok: DomainUser
    disabled: DomainUser
    must_change: DomainUser
    password_expired: DomainUser
    account_expired: DomainUser
    locked: DomainUser

    def all(self) -> list[DomainUser]:
        """Every account, in the order of the fields (a subclass's too)."""
        return [getattr(self, name) for name in self.__dataclass_fields__]


class SambaDirectory(SambaSetup):
    """LDAP to the DC, and the accounts in it."""

    _admin_conn: ldap3.Connection | None
    _admin_lock: threading.RLock
    _lockout_pso: str | None

    # ------------------------------------------------------------------ addresses

    @property
    def admin_principal(self) -> str:
        return f"{self.admin_name}@{self.realm}"

    @property
    def ldap_url(self) -> str:
        """``ldap://ADDRESS:389``: plain LDAP, StartTLS offered."""
        return f"ldap://{self.host}:389"

    @property
    def ldaps_url(self) -> str:
        """``ldaps://ADDRESS:636``."""
        return f"ldaps://{self.host}:636"

    @property
    def ldap_host_url(self) -> str:
        """``ldap://dc1.samba.test:389``, for child processes run with :meth:`wrapper_env`."""
        return f"ldap://{self.dc_fqdn}:389"

    def ldap_tls(self) -> ldap3.Tls:
        """ldap3 TLS settings that verify the DC's certificate with :attr:`ca_file` and accept
        :attr:`certificate_name` (the certificate names no IP address)."""
        return ldap3.Tls(
            validate=ssl.CERT_REQUIRED,
            ca_certs_file=self.ca_file,
            valid_names=[self.certificate_name],
            version=ssl.PROTOCOL_TLS_CLIENT,
        )

    def _connection(
        self, user: str | None, password: str | None, *, start_tls: bool = False
    ) -> ldap3.Connection:
        url = self.ldap_url if start_tls else self.ldaps_url
        server = ldap3.Server(url, tls=self.ldap_tls(), get_info=ldap3.NONE, connect_timeout=5)
        conn = ldap3.Connection(
            server,
            user=user,
            password=password,
            authentication=ldap3.SIMPLE if user else ldap3.ANONYMOUS,
            receive_timeout=15,
            raise_exceptions=False,
        )
        conn.open()
        if start_tls and not conn.start_tls():
            raise RuntimeError(f"StartTLS failed: {conn.result}")
        return conn

    def bind(self, user: str, password: str, *, start_tls: bool = True) -> dict[str, Any]:
        """Simple-bind as ``user`` (UPN, ``DOMAIN\\name`` or DN) with certificate checks, over
        StartTLS (default) or LDAPS; return ldap3's result (``result`` 0 on success, 49 and an
        AD sub-code in ``message`` on refusal, see :func:`ad_subcode`)."""
        conn = self._connection(user, password, start_tls=start_tls)
        try:
            conn.bind()
            return dict(conn.result)
        finally:
            conn.unbind()

    @contextmanager
    def admin_connection(self) -> Iterator[ldap3.Connection]:
        """A new ldap3 connection bound as Administrator over LDAPS (unbound on exit)."""
        conn = self._connection(self.admin_principal, self.admin_password)
        try:
            if not conn.bind():
                raise RuntimeError(f"Administrator bind failed: {conn.result}")
            yield conn
        finally:
            conn.unbind()

    # ------------------------------------------------------------------ directory data

    def _as_admin(self, operation: Callable[[ldap3.Connection], _T]) -> _T:
        """Run ``operation`` on the helpers' own Administrator connection, kept open between
        calls (a new LDAPS connection costs about 0.1 s); reconnect once if the DC dropped it
        (samba closes connections idle for 15 minutes)."""
        with self._admin_lock:
            for attempt in (1, 2):
                if self._admin_conn is None:
                    self._admin_conn = self._connection(self.admin_principal, self.admin_password)
                    if not self._admin_conn.bind():
                        result = self._admin_conn.result
                        self._drop_admin_connection()
                        raise RuntimeError(f"Administrator bind failed: {result}")
                try:
                    return operation(self._admin_conn)
                except LDAPCommunicationError:
                    self._drop_admin_connection()
                    if attempt == 2:
                        raise
            raise AssertionError("unreachable")

    def _drop_admin_connection(self) -> None:
        conn, self._admin_conn = self._admin_conn, None
        if conn is not None:
            _close(conn)

    def _modify(self, dn: str, changes: dict[str, list[tuple[str, list[Any]]]]) -> None:
        def modify(conn: ldap3.Connection) -> None:
            if not conn.modify(dn, changes):
                raise RuntimeError(f"modify {dn} failed: {conn.result}")

        self._as_admin(modify)

    def _add(self, dn: str, object_classes: Sequence[str], attributes: dict[str, Any]) -> None:
        def add(conn: ldap3.Connection) -> None:
            # (ldap3's stubs leave add untyped)
            if not cast(Callable[..., bool], conn.add)(dn, list(object_classes), attributes):
                raise RuntimeError(f"add {dn} failed: {conn.result}")

        self._as_admin(add)

    def _read(self, name: str, attributes: Sequence[str]) -> tuple[str, dict[str, Any]]:
        def search(conn: ldap3.Connection) -> list[dict[str, Any]]:
            conn.search(
                self.base_dn,
                f"(sAMAccountName={escape_filter_chars(name)})",
                attributes=list(attributes),
            )
            return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

        found = self._as_admin(search)
        if len(found) != 1:
            raise KeyError(f"no account {name!r} in {self.realm}")
        return str(found[0]["dn"]), dict(found[0]["attributes"])

    def dn_of(self, name: str) -> str:
        """The DN of the account (user, group, computer) with sAMAccountName ``name``."""
        return self._read(name, [])[0]

    def attributes(self, name: str, *attributes: str) -> dict[str, Any]:
        """Selected attributes of an account (e.g. ``lockoutTime``), each a list of values as
        ldap3 decodes them without the schema (strings, or bytes for binary values)."""
        return self._read(name, attributes)[1]

    def add_user(
        self,
        name: str,
        password: str,
        *,
        container: str | None = None,
        must_change_password: bool = False,
        **attrs: Any,
    ) -> DomainUser:
        """Create an enabled user ``name`` with ``password`` and return it.

        ``attrs`` are more LDAP attributes (``mail="..."``, ``displayName="..."``,
        ``givenName=..., sn=...``). ``container`` defaults to ``CN=Users``. The
        userPrincipalName is ``name@samba.test``.
        """
        if must_change_password:
            attrs = {"pwdLastSet": "0", **attrs}
        upn = f"{name}@{self.dns_domain}"
        dn = self._add_person(name, password, upn, UF_NORMAL_ACCOUNT, container, **attrs)
        return DomainUser(name, dn, password, self.realm, self.domain)

    def _add_person(
        self,
        name: str,
        password: str,
        upn: str,
        account_control: int,
        container: str | None = None,
        **attrs: Any,
    ) -> str:
        """Create the user account ``CN=name`` (in ``container``, default ``CN=Users``) with
        sAMAccountName ``name``, userPrincipalName ``upn``, ``password`` and
        userAccountControl ``account_control``, and the LDAP attributes ``attrs``; return its
        DN."""
        dn = f"CN={escape_rdn(name)},{container or self.users_dn}"
        attributes: dict[str, Any] = {
            "sAMAccountName": name,
            "userPrincipalName": upn,
            "unicodePwd": _unicode_pwd(password),
            "userAccountControl": account_control,
            **attrs,
        }
        self._add(dn, ["top", "person", "organizationalPerson", "user"], attributes)
        return dn

    def delete(self, name: str) -> None:
        """Delete the account ``name``."""
        dn = self.dn_of(name)

        def delete(conn: ldap3.Connection) -> None:
            if not cast(Callable[..., bool], conn.delete)(dn):
                raise RuntimeError(f"delete {dn} failed: {conn.result}")

        self._as_admin(delete)

    def set_password(self, name: str, password: str, *, must_change: bool = False) -> None:
        """Reset ``name``'s password as Administrator (keys and kvno change too)."""
        changes: dict[str, list[tuple[str, list[Any]]]] = {
            "unicodePwd": [(ldap3.MODIFY_REPLACE, [_unicode_pwd(password)])]
        }
        if must_change:
            changes["pwdLastSet"] = [(ldap3.MODIFY_REPLACE, ["0"])]
        self._modify(self.dn_of(name), changes)

    def _set_uac_bits(self, name: str, set_bits: int = 0, clear_bits: int = 0) -> None:
        dn, attrs = self._read(name, ["userAccountControl"])
        uac = (int(attrs["userAccountControl"][0]) | set_bits) & ~clear_bits
        self._modify(dn, {"userAccountControl": [(ldap3.MODIFY_REPLACE, [str(uac)])]})

    def disable_user(self, name: str) -> None:
        """Set ACCOUNTDISABLE (bind sub-code 533)."""
        self._set_uac_bits(name, set_bits=UF_ACCOUNTDISABLE)

    def enable_user(self, name: str) -> None:
        self._set_uac_bits(name, clear_bits=UF_ACCOUNTDISABLE)

    def require_password_change(self, name: str) -> None:
        """Set "user must change password at next logon": ``pwdLastSet = 0`` (sub-code 773)."""
        self._modify(self.dn_of(name), {"pwdLastSet": [(ldap3.MODIFY_REPLACE, ["0"])]})

    def expire_password(self, name: str, *, days_ago: int = 365) -> None:
        """Make the password ``days_ago`` days old, past the domain's 42-day maximum age
        (sub-code 532). Written into sam.ldb with ldbmodify: see :mod:`tests.infra.samba`."""
        dn = self.dn_of(name)
        when = datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=days_ago)
        ldif = f"dn: {dn}\nchangetype: modify\nreplace: pwdLastSet\npwdLastSet: {filetime(when)}\n"
        self._ldbmodify(ldif, controls=[BYPASS_LAST_SET_CONTROL])

    def set_account_expiry(self, name: str, when: datetime.datetime | None) -> None:
        """Set ``accountExpires`` (``None``: never). A past time gives sub-code 701."""
        value = NEVER if when is None else filetime(when)
        self._modify(self.dn_of(name), {"accountExpires": [(ldap3.MODIFY_REPLACE, [str(value)])]})

    def expire_account(self, name: str) -> None:
        """The account expired yesterday (sub-code 701)."""
        self.set_account_expiry(
            name, datetime.datetime.now(datetime.UTC) - datetime.timedelta(days=1)
        )

    #: The states of :class:`AccountStates`, each with the short label its account's name
    #: carries.
    ACCOUNT_STATES = {
        "ok": "ok",
        "disabled": "disab",
        "must_change": "must",
        "password_expired": "pwexp",
        "account_expired": "accte",
        "locked": "locke",
    }

    def add_users_in_each_state(self, prefix: str, password: str) -> AccountStates:
        """One new account per state of :class:`AccountStates` (named ``prefix``, the state's
        label in :data:`ACCOUNT_STATES` and a random part), put in that state: usable,
        disabled, must change its password, password expired, account expired, locked out."""
        made = {
            state: self.add_user(f"{prefix}{label}-{secrets.token_hex(4)}", password)
            for state, label in self.ACCOUNT_STATES.items()
        }
        self.disable_user(made["disabled"].name)
        self.require_password_change(made["must_change"].name)
        self.expire_password(made["password_expired"].name)
        self.expire_account(made["account_expired"].name)
        self.lock_out(made["locked"].name)
        return AccountStates(**made)

    def lock_out(self, name: str, *, threshold: int = 3) -> int:
        """Lock the account out the way users do: wrong-password binds past a lockout
        threshold. The threshold comes from a fine-grained password policy that applies to
        this account only (the domain policy stays at "no lockout"). Returns the number of
        wrong binds made: ``threshold + 1``, as the bind that reaches the threshold still
        answers 52e and only the next one 775. The account then answers 775 for any
        password."""
        self._apply_lockout_pso(name, threshold)
        wrong = random_password("Wrong")
        for attempt in range(1, threshold + 3):
            result = self.bind(f"{name}@{self.dns_domain}", wrong, start_tls=False)
            if ad_subcode(result) == "775":
                return attempt
        attrs = self.attributes(name, "lockoutTime", "badPwdCount")
        raise RuntimeError(f"{name} was not locked out after {threshold + 2} tries: {attrs}")

    def count_bad_passwords(self, name: str, *, threshold: int = 1000) -> None:
        """Make the DC keep the account's ``badPwdCount``: Samba counts wrong passwords only
        for accounts under a lockout threshold, so apply a policy (PSO) whose threshold no test
        reaches to this account alone."""
        self._apply_lockout_pso(name, threshold)

    def _apply_lockout_pso(self, name: str, threshold: int) -> None:
        """Apply the password policy (PSO) with lockout ``threshold`` to the account ``name``
        (nothing to do if an earlier call applied it)."""
        dn = self.dn_of(name)
        pso = self._ensure_lockout_pso(threshold)
        try:
            self._modify(pso, {"msDS-PSOAppliesTo": [(ldap3.MODIFY_ADD, [dn])]})
        except RuntimeError as exc:  # already applied by an earlier call
            if "attributeOrValueExists" not in str(exc):
                raise

    def _ensure_lockout_pso(self, threshold: int) -> str:
        container = f"CN=Password Settings Container,CN=System,{self.base_dn}"
        dn = f"CN=sessiond-lockout-{threshold},{container}"
        if self._lockout_pso == dn:
            return dn
        thirty_minutes = str(-30 * 60 * 10_000_000)
        try:
            self._add(
                dn,
                ["msDS-PasswordSettings"],
                {
                    "msDS-PasswordSettingsPrecedence": 10,
                    "msDS-PasswordReversibleEncryptionEnabled": "FALSE",
                    "msDS-PasswordHistoryLength": 0,
                    "msDS-PasswordComplexityEnabled": "TRUE",
                    "msDS-MinimumPasswordLength": 7,
                    "msDS-MinimumPasswordAge": "0",
                    "msDS-MaximumPasswordAge": str(-42 * 86400 * 10_000_000),
                    "msDS-LockoutThreshold": threshold,
                    "msDS-LockoutObservationWindow": thirty_minutes,
                    "msDS-LockoutDuration": thirty_minutes,
                },
            )
        except RuntimeError as exc:
            if "entryAlreadyExists" not in str(exc):
                raise
        self._lockout_pso = dn
        return dn

    def unlock(self, name: str) -> None:
        """Clear a lockout (``lockoutTime = 0``, as "Unlock account" does)."""
        self._modify(self.dn_of(name), {"lockoutTime": [(ldap3.MODIFY_REPLACE, ["0"])]})

    def set_lockout_policy(
        self, threshold: int, *, duration_minutes: int = 30, reset_after_minutes: int = 30
    ) -> None:
        """The *domain-wide* lockout policy (``samba-tool domain passwordsettings set``);
        ``threshold=0`` turns lockout off again. Affects every account without a PSO: prefer
        :meth:`lock_out` in a shared domain, and restore 0 afterwards."""
        self.samba_tool(
            "domain", "passwordsettings", "set",
            f"--account-lockout-threshold={threshold}",
            f"--account-lockout-duration={duration_minutes}",
            f"--reset-account-lockout-after={reset_after_minutes}",
        )  # fmt: skip

    def add_group(
        self, name: str, members: Iterable[str] = (), *, description: str | None = None
    ) -> str:
        """Create a global security group ``CN=name,CN=Users`` with the given member accounts
        (sAMAccountNames); return its DN. Members get ``memberOf``."""
        dn = f"CN={escape_rdn(name)},{self.users_dn}"
        attributes: dict[str, Any] = {"sAMAccountName": name, "groupType": GLOBAL_SECURITY_GROUP}
        if description:
            attributes["description"] = description
        self._add(dn, ["top", "group"], attributes)
        member_list = list(members)
        if member_list:
            self.add_to_group(name, *member_list)
        return dn

    def add_to_group(self, group: str, *members: str) -> None:
        """Add accounts (sAMAccountNames) to ``group``."""
        dns = [self.dn_of(member) for member in members]
        self._modify(self.dn_of(group), {"member": [(ldap3.MODIFY_ADD, dns)]})


def _close(conn: ldap3.Connection) -> None:
    """Unbind, and close the socket even when ldap3 cannot (a connection the peer dropped)."""
    with suppress(LDAPException, OSError):
        conn.unbind()
    sock = conn.socket
    if sock is not None:
        with suppress(OSError):
            sock.close()
