"""Windows domain accounts: names, and password checks against the domain.

A password is checked either with Kerberos — get an initial ticket with it, then prove the KDC
genuine by getting a ticket for sessiond's own service principal and opening it with the
keytab (a forged KDC cannot make that ticket) — or with an LDAP bind to Active Directory.

Every answer is classified by its krb5 error code (GSSAPI's minor status), never by its text
(docs/windows.md, "Refusals and their audit reasons"): the caller's mistakes are
:class:`InvalidCredentials` whose ``reason`` names the KDC's answer; a right password that must
be changed in the domain is :class:`PasswordExpired`; the server's faults (the KDC unreachable,
krb5.conf, the keytab, the service principal) are :class:`ServiceUnavailable` with a
``details.cause`` and one log line saying how to fix them.
"""

from __future__ import annotations

import errno
import logging
from pathlib import Path
from typing import Any, Self

from ..errors import InvalidCredentials, ServiceUnavailable
from ..models import LoginType
from ..settings import Settings, WindowsSettings
from ..store.base import UserRecord
from . import outside
from .accounts import WindowsAccount, WindowsNames
from .base import Authenticator, Claim, Identity, PasswordCredentials
from .directory import WRONG, Directory, check_transport, must_change, warn_once
from .environment import krb5_config_path, unreadable
from .lookup import Lookups

log = logging.getLogger("sessiond.auth")


# --- Kerberos error codes ------------------------------------------------------------------
# MIT krb5's com_err table "krb5" (krb5.h: /usr/include/krb5.h, or mit-krb5/krb5/krb5.h on
# Debian), as the Kerberos mechanism reports them in a GSSError's minor status.
KRB5KDC_ERR_NAME_EXP = -1765328383
KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN = -1765328378
KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN = -1765328377
KRB5KDC_ERR_POLICY = -1765328372
KRB5KDC_ERR_ETYPE_NOSUPP = -1765328370
KRB5KDC_ERR_CLIENT_REVOKED = -1765328366
KRB5KDC_ERR_CLIENT_NOTYET = -1765328363
KRB5KDC_ERR_KEY_EXP = -1765328361
KRB5KDC_ERR_PREAUTH_FAILED = -1765328360
KRB5KRB_AP_ERR_BAD_INTEGRITY = -1765328353
KRB5KRB_AP_ERR_REPEAT = -1765328350
KRB5KRB_AP_ERR_SKEW = -1765328347
KRB5KRB_AP_ERR_MODIFIED = -1765328343
KRB5KRB_AP_ERR_BADKEYVER = -1765328340
KRB5KRB_AP_ERR_NOKEY = -1765328339
KRB5KRB_ERR_GENERIC = -1765328324
KRB5KDC_ERR_WRONG_REALM = -1765328316
KRB5_PARSE_ILLCHAR = -1765328251
KRB5_PARSE_MALFORMED = -1765328250
KRB5_CONFIG_CANTOPEN = -1765328249
KRB5_CONFIG_BADFORMAT = -1765328248
KRB5_KDCREP_SKEW = -1765328236
KRB5_PROG_ETYPE_NOSUPP = -1765328234
KRB5_REALM_UNKNOWN = -1765328230
KRB5_KDC_UNREACH = -1765328228
KRB5_KT_NOTFOUND = -1765328203
KRB5_BAD_ENCTYPE = -1765328196
KRB5_PREAUTH_FAILED = -1765328174
KRB5_KEYTAB_BADVNO = -1765328171
KRB5_REALM_CANT_RESOLVE = -1765328164
KRB5_CONFIG_NODEFREALM = -1765328160
KRB5_KT_KVNONOTFOUND = -1765328154
KRB5_KT_FORMAT = -1765328149
#: The GSSAPI Kerberos mechanism's own table "k5g" (base 39756032): no key for the name.
KG_KEYTAB_NOMATCH = 39756033
#: GSSAPI's major status "an invalid name was supplied".
GSS_S_BAD_NAME = 2 << 16
#: Codes 0-127 of the "krb5" table are the protocol's error codes: what the KDC answered.
_KDC_PROTOCOL_ERRORS = (-1765328384, -1765328257)

KRB5_NAMES: dict[int, str] = {
    value: key
    for key, value in list(globals().items())
    if key.startswith(("KRB5", "KG_")) and isinstance(value, int)
}

#: The caller's mistakes in the password check, and what the audit reason calls them.
_CALLERS_MISTAKES: dict[int, str] = {
    KRB5KDC_ERR_PREAUTH_FAILED: "password incorrect",
    KRB5KRB_AP_ERR_BAD_INTEGRITY: "password incorrect",  # a KDC that asks no pre-authentication
    KRB5_PREAUTH_FAILED: "pre-authentication failed",
    KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: "no such account",
    KRB5KDC_ERR_CLIENT_REVOKED: "account disabled, locked out, expired or outside its logon hours",
    KRB5KDC_ERR_NAME_EXP: "account expired",
    KRB5KDC_ERR_CLIENT_NOTYET: "account not valid yet",
    KRB5KDC_ERR_POLICY: "sign-in refused by the domain's policy",
    KRB5KDC_ERR_WRONG_REALM: "the account belongs to another realm",
    KRB5_PARSE_ILLCHAR: "not a Kerberos principal name",
    KRB5_PARSE_MALFORMED: "not a Kerberos principal name",
}
_SKEW = (KRB5KRB_AP_ERR_SKEW, KRB5_KDCREP_SKEW)
_SKEW_MESSAGE = (
    "this server's clock and the KDC's differ by more than Kerberos allows (5 minutes by "
    "default; {said}): synchronise the clock (NTP)"
)
_ENCTYPES = (KRB5KDC_ERR_ETYPE_NOSUPP, KRB5_PROG_ETYPE_NOSUPP, KRB5_BAD_ENCTYPE)
#: The keytab's keys are older than the domain's (the key version, kvno, moved on).
_STALE_KEYTAB = (KRB5_KT_KVNONOTFOUND, KRB5KRB_AP_ERR_BADKEYVER)
#: The keytab has a key of that version, but not the one the ticket was made with.
_WRONG_KEYS = (KRB5KRB_AP_ERR_BAD_INTEGRITY, KRB5KRB_AP_ERR_MODIFIED)
_NO_KEY_OF_TYPE = (KRB5KRB_AP_ERR_NOKEY, *_ENCTYPES)


WINDOWS_PASSWORDS_CHANGED_IN = "domain (Ctrl+Alt+Del on Windows, or the domain's tools)"


def account_claim(account: WindowsAccount) -> Claim:
    """The account a Windows sign-in names, however it was spelled: one key for every spelling
    and every path (password, NTLM), the Kerberos principal the domain checks."""
    return Claim(account.down_level, f"windows:{account.principal}".casefold())


class WindowsAuthenticator(Authenticator):
    login_type = LoginType.WINDOWS
    password_changed_in = WINDOWS_PASSWORDS_CHANGED_IN

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        return cls(settings.windows) if settings.windows else None

    def __init__(self, settings: WindowsSettings) -> None:
        if settings.password_check == "ldap" and settings.directory is not None:
            check_transport(settings.directory, "windows.directory")
        self.settings = settings
        self.names = WindowsNames(settings)
        self.lookups = Lookups(settings, self.names)
        self.directory = (
            Directory(settings.directory, section="windows.directory")
            if settings.directory
            else None
        )
        if settings.password_check == "kerberos" and not settings.verify_kdc:
            warn_once(
                "windows.verify_kdc = false: Windows passwords are checked with whatever answers "
                f"as the KDC of {settings.realm}, unproven; anyone who can answer in its place "
                "(a spoofed DNS record or address) signs in as anyone. Set service_principal "
                "and keytab, and verify_kdc = true"
            )

    @property
    def auto_provision(self) -> bool:
        return self.settings.auto_provision

    async def claim(self, credentials: PasswordCredentials) -> Claim | None:
        if not self.names.looks_like_account(credentials.login, credentials.domain):
            return None
        # A UPN ("u.person@corp.example") is the account the domain says it belongs to.
        return account_claim(await self.lookups.account(credentials.login, credentials.domain))

    async def verify(self, user: UserRecord | None, credentials: PasswordCredentials) -> Identity:
        if user is not None and user.account:
            account = self.names.parse(user.account)
        else:
            account = await self.lookups.account(credentials.login, credentials.domain)
        if not credentials.password:
            raise InvalidCredentials(WRONG, reason="empty password: not sent to the domain")
        check = self._ldap_check if self.settings.password_check == "ldap" else self._kerberos_check
        await outside.windows_check(self.settings).run(check, account, credentials.password)
        # As NTLM refuses one: a non-member's right password is "wrong".
        await self.lookups.require_membership(account, credentials.password)
        return Identity(account=account.down_level, display_name=account.name)

    def _ldap_check(self, account: WindowsAccount, password: str) -> None:
        assert self.directory is not None
        who = self.settings.bind_format.format(
            login=account.name, domain=account.domain, realm=account.realm
        )
        self.directory.bind(who, password)

    # --- Kerberos ------------------------------------------------------------------------

    def _kerberos_check(self, account: WindowsAccount, password: str) -> None:
        import gssapi
        from gssapi.raw import acquire_cred_with_password

        try:
            name = gssapi.Name(account.principal, gssapi.NameType.kerberos_principal)
            creds = acquire_cred_with_password(name, password.encode(), usage="initiate").creds
        except _gss_errors() as exc:
            raise self._refusal(exc, account, password) from None
        if not self.settings.verify_kdc:
            return
        self._prove_kdc(gssapi.Credentials(creds), account)

    def _prove_kdc(self, creds: Any, account: WindowsAccount) -> None:
        """Ask for a ticket to our own service principal with the user's fresh credentials and
        open it with the keytab: only the real KDC shares that key. The keytab is read anew
        on every check, so a keytab replaced at the same path is used from the next sign-in.
        Every failure here is the server's (503), never the caller's."""
        import gssapi

        s = self.settings
        assert s.service_principal and s.keytab
        try:
            service = gssapi.Name(s.service_principal, gssapi.NameType.kerberos_principal)
            initiator = gssapi.SecurityContext(
                name=service, creds=creds, usage="initiate", mech=gssapi.MechType.kerberos
            )
            ticket = initiator.step()
            acceptor_creds = gssapi.Credentials(
                usage="accept", name=service, store={"keytab": str(s.keytab)}
            )
            acceptor = gssapi.SecurityContext(creds=acceptor_creds, usage="accept")
            acceptor.step(ticket)
            # gssapi holds a failed accept back until .complete is read: read it in here.
            complete = acceptor.complete
            proven = str(acceptor.initiator_name) if complete else None
        except _gss_errors() as exc:
            raise self._proof_failure(exc) from None
        if proven is None:
            raise _unavailable(
                "kdc_proof",
                f"the KDC proof with the keytab {s.keytab} ({s.service_principal}) did not "
                "complete in one step",
            )
        if proven.lower() != account.principal.lower():
            raise _unavailable(
                "kdc_proof",
                f"the KDC proof with the keytab {s.keytab} proved {proven}, "
                f"not {account.principal}",
            )

    def _refusal(self, exc: Exception, account: WindowsAccount, password: str) -> Exception:
        """What the KDC's answer to the password means: the caller's mistake (401, with the
        KDC's answer as the audit reason), a right password that must be changed, or a fault of
        the configuration or the network (503)."""
        code, text = _minor(exc)
        if code == KRB5KDC_ERR_KEY_EXP:
            # Samba and Windows answer "expired" only to the right password, MIT's KDC to any:
            # ask for the password-change service's ticket, which takes the right password.
            confirmed = _changepw_answer(account.principal, password)
            if confirmed == KRB5KDC_ERR_PREAUTH_FAILED:
                return InvalidCredentials(
                    WRONG,
                    reason="KDC: password incorrect (KRB5KDC_ERR_PREAUTH_FAILED; the password "
                    "has expired too: KRB5KDC_ERR_KEY_EXP)",
                )
            if confirmed is not None:
                return self._refusal_by_code(confirmed, "asking for kadmin/changepw", account)
            return must_change(
                f"KDC: password expired or must be changed (KRB5KDC_ERR_KEY_EXP: {text})"
            )
        if code is None:
            if getattr(exc, "maj_code", None) == GSS_S_BAD_NAME:
                return InvalidCredentials(
                    WRONG, reason=f"not a Kerberos principal name: {account.principal} ({text})"
                )
            return _unavailable("kerberos", f"Kerberos failed for realm {account.realm}: {text}")
        return self._refusal_by_code(code, text, account)

    def _refusal_by_code(self, code: int, text: str, account: WindowsAccount) -> Exception:
        name = KRB5_NAMES.get(code)
        said = f"{name}: {text}" if name else f"error {code}: {text}"
        caller = _CALLERS_MISTAKES.get(code)
        if caller is not None:
            return InvalidCredentials(WRONG, reason=f"KDC: {caller} ({said})")
        realms = {self.settings.realm, *self.settings.domains.values()}
        config = _krb5_conf(self.settings)
        if code == KRB5_REALM_UNKNOWN and account.realm not in realms:
            return InvalidCredentials(WRONG, reason=f"unknown realm {account.realm} ({said})")
        if code == KRB5_KDC_UNREACH:
            return _unavailable(
                "kdc_unreachable",
                f"the KDC of {account.realm} cannot be reached ({said}): check that the domain "
                f"controllers answer on port 88 and the kdc lines of {config}",
                level=logging.WARNING,
            )
        if code in (KRB5_REALM_UNKNOWN, KRB5_REALM_CANT_RESOLVE, KRB5_CONFIG_NODEFREALM):
            missing = unreadable(Path(config))  # MIT krb5 skips a krb5.conf it cannot open
            if missing:
                return _unavailable(
                    "krb5_config",
                    f"the Kerberos configuration {config} (windows.krb5_config) {missing}, so "
                    f"no KDC is known for {account.realm} ({said})",
                )
            return _unavailable(
                "realm_unknown",
                f"no KDC is known for {account.realm} ({said}): name its domain controllers "
                f"under [realms] in {config} (windows.krb5_config), or set dns_lookup_kdc = true",
            )
        if code in (KRB5_CONFIG_BADFORMAT, KRB5_CONFIG_CANTOPEN):
            return _unavailable(
                "krb5_config",
                f"the Kerberos configuration {config} (windows.krb5_config) cannot be "
                f"used ({said})",
            )
        if code in _SKEW:
            return _unavailable("clock_skew", _SKEW_MESSAGE.format(said=said))
        if code in _ENCTYPES:
            return _unavailable(
                "enctypes",
                f"this server and the KDC of {account.realm} have no encryption type in common "
                f"({said}): check permitted_enctypes in {config} and the account's keys",
            )
        if _KDC_PROTOCOL_ERRORS[0] <= code <= _KDC_PROTOCOL_ERRORS[1]:
            # Another answer of the KDC itself about this request: the caller's.
            return InvalidCredentials(WRONG, reason=f"KDC: refused ({said})")
        return _unavailable("kerberos", f"Kerberos failed for realm {account.realm} ({said})")

    def _proof_failure(self, exc: Exception) -> ServiceUnavailable:
        code, text = _minor(exc)
        name = KRB5_NAMES.get(code) if code is not None else None
        said = f"{name}: {text}" if name else text
        about_keytab = "key table" in text.lower() or str(self.settings.keytab) in text
        s = self.settings
        keytab, principal = s.keytab, s.service_principal
        export = (
            f"re-export it (Windows: ktpass -princ {principal} -mapuser <service account> "
            "-crypto AES256-SHA1 -ptype KRB5_NT_PRINCIPAL -pass * -out sessiond.keytab; Samba: "
            f"samba-tool domain exportkeytab sessiond.keytab --principal={principal}) and put "
            f"it at {keytab}: the next sign-in uses it, no restart needed"
        )
        if code == KRB5KDC_ERR_S_PRINCIPAL_UNKNOWN:
            return _unavailable(
                "service_principal_unknown",
                f"the domain has no service principal {principal} (windows.service_principal; "
                f"{said}): register it on sessiond's service account (Windows: setspn -S; "
                "Samba: samba-tool spn add) or correct the setting",
            )
        if code in _STALE_KEYTAB:
            return _unavailable(
                "keytab_stale",
                f"the keytab {keytab} holds no current key for {principal} ({said}): the "
                "service account's password was reset, or ktpass was run again, after it was "
                "exported",
                fix=export,
            )
        if code in _WRONG_KEYS:
            return _unavailable(
                "keytab_keys_wrong",
                f"the keytab {keytab} holds a key for {principal} that does not open the "
                f"domain's tickets ({said}): it was made from another password than the "
                "service account has (ktpass -pass, or a reset since)",
                fix=export,
            )
        if code in _NO_KEY_OF_TYPE:
            return _unavailable(
                "keytab_keys_wrong",
                f"the keytab {keytab} has no key of the type the domain encrypts {principal}'s "
                f"tickets with ({said}): turn on AES for the service account "
                '(msDS-SupportedEncryptionTypes; "This account supports Kerberos AES 256 bit '
                'encryption"), then re-export the keytab',
                fix=export,
            )
        if code == errno.ENOENT and about_keytab:
            return _unavailable(
                "keytab_unusable", f"the keytab {keytab} (windows.keytab) does not exist ({said})"
            )
        if code == errno.EACCES and about_keytab:
            return _unavailable(
                "keytab_unusable",
                f"the keytab {keytab} (windows.keytab) cannot be read by this process ({said}): "
                "make it readable by the account sessiond runs as (and no one else)",
            )
        if code in (KRB5_KEYTAB_BADVNO, KRB5_KT_FORMAT):
            return _unavailable(
                "keytab_unusable", f"{keytab} (windows.keytab) is not a keytab ({said})"
            )
        if code in (KG_KEYTAB_NOMATCH, KRB5_KT_NOTFOUND):
            return _unavailable(
                "keytab_wrong_principal",
                f"the keytab {keytab} holds no key for {principal} ({said}): export that "
                "principal's keys into it, or correct windows.service_principal",
                fix=export,
            )
        if code in _SKEW:
            return _unavailable("clock_skew", _SKEW_MESSAGE.format(said=said))
        if code in (KRB5_CONFIG_BADFORMAT, KRB5_CONFIG_CANTOPEN):
            return _unavailable(
                "krb5_config",
                f"the Kerberos configuration {_krb5_conf(s)} (windows.krb5_config) cannot be "
                f"used ({said})",
            )
        if code == KRB5_KDC_UNREACH:
            return _unavailable(
                "kdc_unreachable",
                f"the KDC cannot be reached for the proof with {principal} ({said})",
                level=logging.WARNING,
            )
        return _unavailable(
            "kdc_proof",
            f"the domain's answer could not be verified with the keytab {keytab} "
            f"({principal}): {said}. Check keytab and service_principal",
        )


def _unavailable(
    cause: str, message: str, *, fix: str | None = None, level: int = logging.ERROR
) -> ServiceUnavailable:
    """A 503 naming the cause (``details.cause``, the same names as integrated sign-in's),
    and one log line saying it (and how to fix it)."""
    log.log(level, "Windows sign-in: %s [%s]%s", message, cause, f"; fix: {fix}" if fix else "")
    return ServiceUnavailable(message, details={"cause": cause}, sign_in="Windows")


def _krb5_conf(settings: WindowsSettings) -> str:
    return str(krb5_config_path(settings))


def _minor(exc: Exception) -> tuple[int | None, str]:
    """The Kerberos mechanism's minor status of a GSSError as a signed krb5 error code (MIT
    com_err tables, e.g. KRB5KDC_ERR_PREAUTH_FAILED = -1765328360), and its text."""
    minor = getattr(exc, "min_code", None)
    text = _gss_text(exc)
    if "Minor (" in text:
        text = text.split("Minor (", 1)[1].split("): ", 1)[-1]
    if not isinstance(minor, int) or minor == 0:
        return None, text
    return (minor - (1 << 32) if minor >= 1 << 31 else minor), text


def _changepw_answer(principal: str, password: str) -> int | None:
    """Ask for a ticket to ``kadmin/changepw`` with the password, as kinit does before changing
    an expired one: the KDC issues it only for the right password, expired or not. None when it
    does; else the krb5 error code."""
    import krb5

    context = krb5.init_context()
    try:
        client = krb5.parse_name_flags(context, principal.encode())
        options = krb5.get_init_creds_opt_alloc(context)
        krb5.get_init_creds_password(
            context, client, options, password=password.encode(), in_tkt_service=b"kadmin/changepw"
        )
    except krb5.Krb5Error as exc:
        return int(exc.err_code)
    return None


def _gss_errors() -> tuple[type[Exception], ...]:
    """What gssapi raises: GSSError (a status from the library) and its own GeneralError."""
    from gssapi.exceptions import GeneralError
    from gssapi.raw.misc import GSSError

    return (GSSError, GeneralError)


def _gss_text(exc: Exception) -> str:
    gen = getattr(exc, "gen_message", None)
    return str(gen() if callable(gen) else exc).replace("\n", " ")
