"""The client's side of HTTP Negotiate (integrated Windows sign-in): an ``httpx.Auth`` flow that
answers the server's challenges with pyspnego, and the mapping of pyspnego's, GSSAPI's and krb5's
exceptions to the sessiond errors the client raises. Kept apart from :mod:`.client` so that each
reads in one sitting; :mod:`.client` re-exports :class:`NegotiateAuth`.
"""

from __future__ import annotations

import base64
from collections.abc import Callable, Generator
from typing import Any

import httpx

from .errors import InvalidCredentials, NotConfigured, ProtocolError, SessiondError
from .wire import NEGOTIATE_ID_HEADER

__all__ = ["MAX_NEGOTIATE_LEGS", "NegotiateAuth", "windows_sign_in_error"]

MAX_NEGOTIATE_LEGS = 5
#: pyspnego's exceptions that say this side is not set up (no credentials, no mechanism).
_NOT_SET_UP = ("NoCredentialError", "BadMechanismError", "FeatureMissingError")
# krb5 error codes an explicit-credentials sign-in meets (MIT krb5_err.et).
KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN = -1765328378
KRB5KDC_ERR_PREAUTH_FAILED = -1765328360
KRB5KDC_ERR_KEY_EXPIRED = -1765328361
KRB5KDC_ERR_CLIENT_REVOKED = -1765328366
KRB5_KDC_UNREACH = -1765328228
KRB5_REALM_UNKNOWN = -1765328230
_KRB5_MESSAGES = {
    KRB5KDC_ERR_PREAUTH_FAILED: "wrong login or password",
    KRB5KDC_ERR_C_PRINCIPAL_UNKNOWN: "the domain does not know this account",
    KRB5KDC_ERR_KEY_EXPIRED: "the domain password has expired",
    KRB5KDC_ERR_CLIENT_REVOKED: "the domain account is disabled or locked",
    KRB5_KDC_UNREACH: "no Kerberos KDC of the account's realm can be reached from here",
    KRB5_REALM_UNKNOWN: "this machine's krb5.conf does not know the account's realm",
}


def _negotiate_header_token(response: httpx.Response) -> tuple[str, bytes | None] | None:
    """The scheme (``Negotiate`` or ``NTLM``) the server offers or answers with, and its
    token; None when it offers neither."""
    found: tuple[str, bytes | None] | None = None
    for value in response.headers.get_list("www-authenticate"):
        scheme, _, data = value.strip().partition(" ")
        if scheme.lower() not in ("negotiate", "ntlm"):
            continue
        token = None
        if data.strip():
            try:
                token = base64.b64decode(data.strip())
            except ValueError:
                raise ProtocolError(f"the server's {scheme} token is not base64") from None
        if found is None or scheme.lower() == "negotiate":
            found = ("Negotiate" if scheme.lower() == "negotiate" else "NTLM", token)
    return found


def windows_sign_in_error(exc: BaseException) -> SessiondError:
    """A pyspnego, GSSAPI or krb5 exception as the sessiond error the client raises:
    NotConfigured when this side cannot take part (no credentials, no mechanism, a package
    missing), InvalidCredentials when the credentials were refused."""
    if isinstance(exc, SessiondError):
        return exc
    name = type(exc).__name__
    text = str(exc).replace("\n", " ").strip() or name
    code = getattr(exc, "err_code", None)
    if isinstance(code, int) and code in _KRB5_MESSAGES:
        message = _KRB5_MESSAGES[code]
        if code in (KRB5_KDC_UNREACH, KRB5_REALM_UNKNOWN):
            return NotConfigured(f"integrated Windows sign-in: {message} ({text})")
        return InvalidCredentials(f"integrated Windows sign-in failed: {message}")
    if isinstance(exc, ImportError) or name in _NOT_SET_UP:
        return NotConfigured(
            "integrated Windows sign-in cannot start on this side: no usable credentials or "
            f"mechanism (a Kerberos ticket from kinit, or windows_username and "
            f"windows_password): {text}"
        )
    return InvalidCredentials(f"integrated Windows sign-in failed on this side: {text}")


class NegotiateAuth(httpx.Auth):
    """HTTP Negotiate as an ``httpx.Auth`` flow, for ``httpx.Client`` and ``httpx.AsyncClient``
    alike: send the request; on ``401`` with ``WWW-Authenticate: Negotiate`` (or ``NTLM``),
    answer with ``Authorization: Negotiate <token>`` (and the ``Tessa-Negotiate-Id`` the
    server gave) until the server answers otherwise; check the server's last token (mutual
    authentication). ``context`` makes the pyspnego client context when the server first
    asks. Every pyspnego, GSSAPI or krb5 exception comes out as a sessiond error."""

    requires_response_body = True

    def __init__(self, context: Callable[[], Any], *, max_legs: int = MAX_NEGOTIATE_LEGS) -> None:
        self.context = context
        self.max_legs = max_legs

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        response = yield request
        context: Any = None
        handshake: str | None = None
        for _leg in range(self.max_legs):
            offered = _negotiate_header_token(response)
            if response.status_code != 401 or offered is None:
                break
            if context is None:
                context = self._start()
                out = self._step(context, None)
            elif offered[1] is None:
                return  # the server refused the last token: its answer is the outcome
            else:
                out = self._step(context, offered[1])
            handshake = response.headers.get(NEGOTIATE_ID_HEADER, handshake)
            request.headers["Authorization"] = "Negotiate " + base64.b64encode(out).decode()
            if handshake:
                request.headers[NEGOTIATE_ID_HEADER] = handshake
            response = yield request
        else:
            raise ProtocolError(f"integrated sign-in did not finish in {self.max_legs} legs")
        final = _negotiate_header_token(response)
        last = final[1] if final is not None else None
        if response.is_success and context is not None and last and not context.complete:
            self._step(context, last)  # mutual authentication of the server

    def _start(self) -> Any:
        try:
            return self.context()
        except Exception as exc:  # pyspnego's, GSSAPI's, krb5's: never let them out
            raise windows_sign_in_error(exc) from None

    @staticmethod
    def _step(context: Any, token: bytes | None) -> bytes:
        try:
            return bytes(context.step(token) or b"")
        except Exception as exc:
            raise windows_sign_in_error(exc) from None
