"""The Kerberos leg of HTTP Negotiate: GSSAPI (MIT) with the service keytab, and what its
failures mean.

The keytab is handed to GSSAPI as a credential store (``store={"keytab": path}``) for each
handshake: nothing in this process keeps its keys, so a keytab replaced on disk (re-exported
after the service account's password was reset) is used from the next sign-in on, without a
restart. ``KRB5_KTNAME`` is not used.

The credentials are bound to ``windows.service_principal``: a ticket for any other principal,
even one whose keys the keytab holds too (a host keytab, one shared with another service), is
refused (``KRB5KRB_AP_ERR_NOT_US``: 401, the audit reason naming the principal it was for),
and a keytab without ``service_principal`` is a 503 (``KG_KEYTAB_NOMATCH``).

A failure is classified by its codes, never by its text: GSSAPI's major status and, for the
Kerberos mechanism, the krb5 error code in the minor status. SPNEGO's Kerberos leg is
unwrapped here (:mod:`.tokens`) and given to the Kerberos mechanism directly, because MIT's
SPNEGO layer replaces the mechanism's minor codes with numbers of its own. Faults of this
server's configuration (keytab missing, unreadable, stale, or without the principal clients
ask for) are ``503 service_unavailable`` with a named cause and a log line that says how to
fix them; faults of the caller (an expired ticket, a ticket for another service, a replay, a
token that is not Kerberos) are ``401 invalid_credentials``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from ..errors import InvalidCredentials, NotConfigured, ServiceUnavailable, SessiondError
from ..settings import WindowsSettings
from . import tokens
from .environment import krb5_config_path

log = logging.getLogger("sessiond.negotiate")

# krb5 error codes (MIT krb5's krb5_err.et / kv5m / k5e1 tables, as in <krb5/krb5.h>).
KRB5KRB_AP_ERR_BAD_INTEGRITY = -1765328353
KRB5KRB_AP_ERR_TKT_EXPIRED = -1765328352
KRB5KRB_AP_ERR_TKT_NYV = -1765328351
KRB5KRB_AP_ERR_REPEAT = -1765328350
KRB5KRB_AP_ERR_NOT_US = -1765328349
KRB5KRB_AP_ERR_BADMATCH = -1765328348
KRB5KRB_AP_ERR_SKEW = -1765328347
KRB5KRB_AP_ERR_MODIFIED = -1765328343
KRB5KRB_AP_ERR_BADKEYVER = -1765328340
KRB5KRB_AP_ERR_NOKEY = -1765328339
KRB5KRB_AP_WRONG_PRINC = -1765328240
KRB5_KT_BADNAME = -1765328205
KRB5_KT_UNKNOWN_TYPE = -1765328204
KRB5_KT_NOTFOUND = -1765328203
KRB5_KT_END = -1765328202
KRB5_KT_IOERR = -1765328200
KRB5_KT_KVNONOTFOUND = -1765328154
KRB5_KT_FORMAT = -1765328149
KRB5_CONFIG_CANTOPEN = -1765328249
KRB5_CONFIG_BADFORMAT = -1765328248
KRB5_RC_IO = -1765328220
KRB5_RC_IO_PERM = -1765328215
KRB5_RC_IO_SPACE = -1765328212
KRB5_RC_IO_IO = -1765328214
KRB5_RC_IO_UNKNOWN = -1765328213
ENOENT = 2
EACCES = 13
# The GSSAPI krb5 mechanism's own table (MIT's gssapi_err_krb5.et): no key for the acceptor name.
KG_KEYTAB_NOMATCH = 39756033

# GSSAPI routine errors (RFC 2744: the major status shifted by 16).
GSS_S_BAD_MECH = 1 << 16
GSS_S_DEFECTIVE_TOKEN = 9 << 16
GSS_S_DEFECTIVE_CREDENTIAL = 10 << 16
GSS_S_CREDENTIALS_EXPIRED = 11 << 16
GSS_S_NO_CRED = 7 << 16
GSS_S_FAILURE = 13 << 16
GSS_ROUTINE_MASK = 0xFF << 16

_CONFIG = {KRB5_CONFIG_CANTOPEN, KRB5_CONFIG_BADFORMAT}
_STALE = {KRB5_KT_KVNONOTFOUND, KRB5KRB_AP_ERR_BADKEYVER}
_WRONG_KEYS = {KRB5KRB_AP_ERR_BAD_INTEGRITY, KRB5KRB_AP_ERR_MODIFIED, KRB5KRB_AP_ERR_NOKEY}
_KEYTAB_UNUSABLE = {
    KRB5_KT_NOTFOUND, KRB5_KT_END, KRB5_KT_IOERR, KRB5_KT_FORMAT, KRB5_KT_BADNAME,
    KRB5_KT_UNKNOWN_TYPE, ENOENT, EACCES,
}  # fmt: skip
_REPLAY_CACHE = {KRB5_RC_IO, KRB5_RC_IO_PERM, KRB5_RC_IO_SPACE, KRB5_RC_IO_IO, KRB5_RC_IO_UNKNOWN}
_CALLER = {
    KRB5KRB_AP_ERR_TKT_EXPIRED: "the ticket has expired",
    KRB5KRB_AP_ERR_TKT_NYV: "the ticket is not yet valid",
    KRB5KRB_AP_ERR_REPEAT: "the request is a replay",
    KRB5KRB_AP_ERR_BADMATCH: "the ticket and the authenticator name different clients",
    KRB5KRB_AP_ERR_SKEW: "the client's clock and this server's differ by more than the "
    "allowed skew",
}


def _signed(code: int) -> int:
    return code - (1 << 32) if code >= (1 << 31) else code


def _text(exc: Any) -> str:
    gen = getattr(exc, "gen_message", None)
    return str(gen() if callable(gen) else exc).replace("\n", " ")


@dataclass(frozen=True, slots=True)
class KerberosStep:
    complete: bool
    output: bytes | None
    principal: str | None = None
    context: Any = None  # a GSSAPI context waiting for the client's next token


class KerberosAcceptor:
    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.keytab = settings.keytab
        principal = settings.service_principal
        if principal and "@" not in principal:
            principal = f"{principal}@{settings.realm}"
        self.service_principal = principal

    def _credentials(self, mechs: Any = None) -> Any:
        """Acceptor credentials from the keytab, read now (a replaced file counts at once),
        for ``service_principal`` alone: a ticket for another principal the keytab holds keys
        of is refused. (Without ``service_principal``, any principal of the keytab.)"""
        import gssapi
        from gssapi.raw.misc import GSSError

        if self.keytab is None:
            raise InvalidCredentials(
                "integrated Windows sign-in failed",
                reason="a Kerberos token, but no keytab is configured (windows.keytab)",
            )
        try:
            name = None
            if self.service_principal:
                name = gssapi.Name(self.service_principal, gssapi.NameType.kerberos_principal)
            return gssapi.Credentials(
                usage="accept", name=name, store={"keytab": str(self.keytab)}, mechs=mechs
            )
        except GSSError as exc:
            if int(getattr(exc, "min_code", 0) or 0) == KG_KEYTAB_NOMATCH:
                raise self._unavailable(
                    "keytab_wrong_principal",
                    f"the keytab {self.keytab} holds no key for {self.service_principal} "
                    "(windows.service_principal)",
                    exc,
                ) from None
            raise self._keytab_unusable(exc) from None

    def accept(self, token: bytes, kind: tokens.TokenKind, context: Any = None) -> KerberosStep:
        """One leg. ``context``: the GSSAPI context of an earlier leg (SPNEGO only)."""
        try:
            import gssapi
            from gssapi.raw.misc import GSSError
        except ImportError:
            raise NotConfigured("Kerberos sign-in needs the gssapi package") from None
        inner = kind.kerberos_token if context is None else None
        raw_krb5 = kind.kind == "kerberos" and context is None
        krb5_token = inner if inner is not None else (token if raw_krb5 else None)
        try:
            if krb5_token is not None:
                mech = tokens.KRB5_OID if inner is None else kind.mechs[0]
                ctx = gssapi.SecurityContext(
                    creds=self._credentials([gssapi.MechType.kerberos]), usage="accept"
                )
                out = ctx.step(krb5_token)
                # python-gssapi defers an error that came with an error token (a KRB-ERROR)
                # to the next use of the context: reading ``complete`` raises it here.
                if not ctx.complete:
                    raise InvalidCredentials(
                        "integrated Windows sign-in failed",
                        reason="the Kerberos exchange did not complete in one leg",
                    )
                if inner is not None:  # answer in SPNEGO, as the client asked
                    out = tokens.neg_token_resp(mech, out)
                return KerberosStep(True, out, str(ctx.initiator_name))
            # Anything else (SPNEGO without an optimistic Kerberos token, a later SPNEGO leg,
            # a token we do not know): GSSAPI's own SPNEGO, which may take several legs.
            ctx = context or gssapi.SecurityContext(creds=self._credentials(), usage="accept")
            out = ctx.step(token)
            if not ctx.complete:
                return KerberosStep(False, out, context=ctx)
            return KerberosStep(True, out, str(ctx.initiator_name))
        except GSSError as exc:
            raise self._refusal(exc, krb5_token) from None

    # --- what a failure means ------------------------------------------------------------

    def _fix(self) -> str:
        principal = self.service_principal or "HTTP/<host>@<REALM>"
        keytab = self.keytab or "<keytab>"
        return (
            f"export the service account's current keys to {keytab} again: on a Samba DC "
            f"`samba-tool domain exportkeytab {keytab} --principal={principal}`, on Windows "
            f"`ktpass -princ {principal} -mapuser <DOMAIN\\account> -crypto AES256-SHA1 "
            f"-ptype KRB5_NT_PRINCIPAL -pass * -out {keytab}`, on a joined member "
            "`net ads keytab create`; sessiond reads the keytab at every sign-in, no restart "
            "is needed"
        )

    def _unavailable(self, cause: str, what: str, exc: Any) -> ServiceUnavailable:
        log.error(
            "integrated sign-in (Kerberos) refused: %s [%s] (%s). To fix: %s",
            what, cause, _text(exc), self._fix(),
        )  # fmt: skip
        return ServiceUnavailable(
            f"integrated Windows sign-in is unavailable: {what}",
            details={"cause": cause},
            reason=f"{what} ({_text(exc)})",
            sign_in="Windows",
        )

    def _keytab_unusable(self, exc: Any) -> ServiceUnavailable:
        if _signed(int(getattr(exc, "min_code", 0) or 0)) in _CONFIG:
            # libkrb5 could not read krb5.conf before it looked at the keytab at all.
            return self._unavailable(
                "krb5_config",
                f"the Kerberos configuration {krb5_config_path(self.settings)} "
                "(windows.krb5_config) cannot be used",
                exc,
            )
        return self._unavailable(
            "keytab_unusable",
            f"the keytab {self.keytab} is missing, empty or unreadable",
            exc,
        )

    def _refusal(self, exc: Any, krb5_token: bytes | None) -> SessiondError:
        major = int(getattr(exc, "maj_code", 0)) & GSS_ROUTINE_MASK
        minor = _signed(int(getattr(exc, "min_code", 0) or 0))
        if minor in _CONFIG or (
            major in (GSS_S_NO_CRED, GSS_S_DEFECTIVE_CREDENTIAL) and minor in _KEYTAB_UNUSABLE
        ):
            return self._keytab_unusable(exc)
        if minor in _STALE:
            return self._unavailable(
                "keytab_stale",
                f"the keytab {self.keytab} holds an older key version than the domain's "
                "(the service account's password was reset since it was exported)",
                exc,
            )
        if minor in _WRONG_KEYS:
            return self._unavailable(
                "keytab_keys_wrong",
                f"the keys in the keytab {self.keytab} do not open the client's ticket "
                "(exported from another password or account)",
                exc,
            )
        if minor == KRB5_KT_NOTFOUND:
            server = tokens.ticket_server(krb5_token) if krb5_token else None
            ours = self.service_principal
            if server is None or ours is None or server.lower() == ours.lower():
                return self._unavailable(
                    "keytab_wrong_principal",
                    f"the keytab {self.keytab} holds no key for "
                    f"{server or 'the principal the client asked for'}",
                    exc,
                )
            return InvalidCredentials(
                "integrated Windows sign-in failed: the ticket is for another service",
                reason=f"a ticket for {server}, not for {ours}: {_text(exc)}",
            )
        if minor in (KRB5KRB_AP_ERR_NOT_US, KRB5KRB_AP_WRONG_PRINC):
            server = tokens.ticket_server(krb5_token) if krb5_token else None
            return InvalidCredentials(
                "integrated Windows sign-in failed: the ticket is for another service",
                reason=f"a ticket for {server or 'another principal'}, not for "
                f"{self.service_principal or 'a principal of the keytab'}: {_text(exc)}",
            )
        if minor in _REPLAY_CACHE:
            return ServiceUnavailable(
                "integrated Windows sign-in is unavailable: the Kerberos replay cache cannot "
                "be written",
                details={"cause": "replay_cache"},
                reason=f"the Kerberos replay cache cannot be written ({_text(exc)})",
                sign_in="Windows",
            )
        if minor in _CALLER:
            if minor == KRB5KRB_AP_ERR_SKEW:
                log.warning(
                    "a Kerberos ticket was refused for clock skew; if every client is, "
                    "check this server's clock (NTP)"
                )
            return InvalidCredentials(
                f"integrated Windows sign-in failed: {_CALLER[minor]}", reason=_text(exc)
            )
        if major in (GSS_S_BAD_MECH, GSS_S_DEFECTIVE_TOKEN):
            return InvalidCredentials(
                "integrated Windows sign-in failed: the token is not one this server accepts",
                reason=_text(exc),
            )
        return InvalidCredentials("integrated Windows sign-in failed", reason=_text(exc))
