"""Every refusal sessiond makes, with a stable code, an HTTP status and a readable message.

The server raises these; the HTTP layer renders them as ``{"error": {"code", "message",
"details"}}`` with the status below; the client turns that body back into the same class, so
integrators catch one tree on both sides::

    SessiondError
    ├── RequestError                400 invalid_request          malformed body or parameter
    │   ├── OpenIdProviderUnknown   400 openid_provider_unknown  no such provider configured
    │   ├── OpenIdLogoutTokenInvalid 400 openid_logout_token_invalid  back-channel logout token
    │   │   └── OpenIdLogoutTokenReplayed 400 openid_logout_token_replayed  its jti came before
    │   ├── HeaderRepeated          400 header_repeated          a single-value header sent twice
    │   ├── DuplicateKey            400 duplicate_key            a JSON body repeats a key
    │   ├── RequestTimeout          408 request_timeout          request head or body not in time
    │   ├── RequestTooLarge         413 request_too_large        body over the size limit
    │   └── RequestHeadTooLarge     431 request_head_too_large   request line + headers too large
    ├── AuthenticationError         401 (sign-in and token failures)
    │   ├── InvalidCredentials      401 invalid_credentials      wrong login, password, domain
    │   ├── SessionRequired         401 session_required         no Tessa-Session header
    │   ├── TokenInvalid            401 token_invalid            malformed or oversized token
    │   ├── TokenSignatureInvalid   401 token_signature_invalid  signature or key is wrong
    │   ├── SessionNotFound         401 session_not_found        the session was closed
    │   ├── SessionExpired          401 session_expired          lifetime or inactivity passed
    │   ├── PasswordExpired         401 password_expired         change the password first
    │   ├── OpenIdTokenInvalid      401 openid_token_invalid     issuer, audience, signature...
    │   ├── OpenIdStateInvalid      401 openid_state_invalid     console: state missing or wrong
    │   ├── OpenIdIssuerMismatch    401 openid_issuer_mismatch   console: iss of another provider
    │   └── NegotiateRequired       401 negotiate_required       continue Windows sign-in
    ├── PermissionDenied            403 admin_required           needs an administrator
    ├── OpenIdAuthorizationRefused  403 openid_authorization_refused  the provider said no
    ├── LoginForbidden              403 login_forbidden          the user's login type is None
    ├── AccountNotMapped            403 account_not_mapped       domain account has no user
    ├── UserBlocked                 403 user_blocked             details say until when
    ├── NotFound                    404 not_found                no such user
    ├── Conflict                    409 conflict                 e.g. the login exists
    ├── PasswordRejected            422 password_rejected        too short, weak or reused
    ├── LicenceLimitReached         429 licence_limit_reached    no free seat of that type
    ├── TooManyConnections          429 too_many_connections     this address has too many open
    ├── LicenceInvalid              503 licence_invalid          no valid licence loaded
    ├── NotConfigured               501 not_configured           switched off in settings
    ├── ServiceUnavailable          503 service_unavailable      store or directory is down
    │   ├── ServerBusy              503 server_busy              at max_connections; retry later
    │   ├── StoreReadOnly           503 store_read_only          the database is a standby now
    │   └── OpenIdProviderUnavailable 503 openid_provider_unavailable  down or slow (details)
    └── SettingsError               500 invalid_settings         server side: unusable settings
        └── StoreMissing            -   no_store                 command line: no store there
            └── StoreOutdated       -   store_outdated           command line: schema too old/new

Client-side only: ``TransportError`` (the server could not be reached) and
``ProtocolError`` (the server answered something that is not sessiond); and the OpenID Connect
flows' own (``sessiond.openid_client``, which raises ``OpenIdProviderUnavailable`` too when it
cannot use the provider): ``OpenIdSignInFailed`` 401 ``openid_sign_in_failed`` (the redirect
carried no code) and under it ``OpenIdSignInExpired`` (``openid_sign_in_expired``: not completed
in time). The client raises the server's classes where the meaning is the same: a redirect of
another sign-in is ``OpenIdStateInvalid``, another issuer in it ``OpenIdIssuerMismatch``, an
error answered by the provider (``access_denied`` and the others, ``details.error``)
``OpenIdAuthorizationRefused``: one code for one meaning, on both sides.
"""

from __future__ import annotations

from typing import Any, ClassVar


class SessiondError(Exception):
    """Base of every sessiond refusal."""

    code: ClassVar[str] = "error"
    status: ClassVar[int] = 500

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.details: dict[str, Any] = details or {}
        #: For the audit trail and the server log only: never sent to the caller.
        self.reason = reason

    @property
    def public_message(self) -> str:
        """What the caller is told (the HTTP body, the console's page)."""
        return self.message

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"code": self.code, "message": self.public_message}
        if self.details:
            body["details"] = self.details
        return {"error": body}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.message!r})"


class RequestError(SessiondError):
    code = "invalid_request"
    status = 400


class HeaderRepeated(RequestError):
    """A header that carries one value (``Tessa-Session``, ``Authorization``) came twice."""

    code = "header_repeated"


class DuplicateKey(RequestError):
    """A JSON body names the same key twice in one object (``details.key``)."""

    code = "duplicate_key"


class RequestTimeout(RequestError):
    """The request line and headers did not all arrive within ``request_head_timeout``, or the
    body within ``request_body_timeout`` of them."""

    code = "request_timeout"
    status = 408


class RequestTooLarge(RequestError):
    code = "request_too_large"
    status = 413


class RequestHeadTooLarge(RequestError):
    """The request line and headers are over ``max_request_head_bytes``."""

    code = "request_head_too_large"
    status = 431


class OpenIdProviderUnknown(RequestError):
    """An OpenID Connect sign-in names a provider this server has not configured."""

    code = "openid_provider_unknown"


class OpenIdLogoutTokenInvalid(RequestError):
    """A back-channel logout token was refused: its signature, issuer, audience, age, events,
    subject or sid, or it carries a nonce (the log has which). Answered in the shape the
    Back-Channel Logout specification asks for (``error``: ``invalid_request``)."""

    code = "openid_logout_token_invalid"


class OpenIdLogoutTokenReplayed(OpenIdLogoutTokenInvalid):
    """A back-channel logout token whose ``jti`` this provider sent before: nothing is done."""

    code = "openid_logout_token_replayed"


class AuthenticationError(SessiondError):
    code = "authentication_failed"
    status = 401


class InvalidCredentials(AuthenticationError):
    code = "invalid_credentials"


class SessionRequired(AuthenticationError):
    code = "session_required"

    def __init__(
        self,
        message: str = "this call needs a session: send its token in the Tessa-Session header",
        **kwargs: Any,
    ) -> None:
        super().__init__(message, **kwargs)


class TokenInvalid(AuthenticationError):
    code = "token_invalid"


class TokenSignatureInvalid(AuthenticationError):
    code = "token_signature_invalid"


class SessionNotFound(AuthenticationError):
    code = "session_not_found"


class SessionExpired(AuthenticationError):
    code = "session_expired"


class OpenIdTokenInvalid(InvalidCredentials):
    """An OpenID Connect token was refused: its signature, issuer, audience, times, algorithm
    or nonce (the audit trail has which)."""

    code = "openid_token_invalid"


class OpenIdStateInvalid(AuthenticationError):
    """An OpenID Connect redirect came without the ``state`` its sign-in started with (the
    console's callback in this browser, or the client's loopback receiver: none, another one,
    expired, or used already): nothing is redeemed."""

    code = "openid_state_invalid"


class OpenIdIssuerMismatch(AuthenticationError):
    """An OpenID Connect redirect (the console's callback, the client's loopback receiver)
    names (``iss``, RFC 9207) another issuer than the provider its sign-in started with (a
    provider mix-up): nothing is redeemed."""

    code = "openid_issuer_mismatch"


class PasswordExpired(AuthenticationError):
    code = "password_expired"


class NegotiateRequired(AuthenticationError):
    """Integrated sign-in goes on: send ``challenge`` (if any) back as
    ``WWW-Authenticate: <scheme>`` (``Negotiate``, or ``NTLM`` to a client that used it), and
    the next leg names ``handshake_id``."""

    code = "negotiate_required"

    def __init__(
        self,
        message: str,
        *,
        challenge: bytes | None = None,
        handshake_id: str | None = None,
        scheme: str = "Negotiate",
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message, details=details)
        self.challenge = challenge
        self.handshake_id = handshake_id
        self.scheme = scheme


class PermissionDenied(SessiondError):
    code = "admin_required"
    status = 403


class OpenIdAuthorizationRefused(SessiondError):
    """The OpenID Provider answered a sign-in (the console's, or the client's flows) with an
    error (``details.error``: ``access_denied`` when the person or the provider said no)."""

    code = "openid_authorization_refused"
    status = 403


class LoginForbidden(SessiondError):
    code = "login_forbidden"
    status = 403


class AccountNotMapped(SessiondError):
    """The domain or directory accepted the account, but no platform user is mapped to it."""

    code = "account_not_mapped"
    status = 403


class UserBlocked(SessiondError):
    code = "user_blocked"
    status = 403


class NotFound(SessiondError):
    code = "not_found"
    status = 404


class Conflict(SessiondError):
    code = "conflict"
    status = 409


class PasswordRejected(SessiondError):
    code = "password_rejected"
    status = 422


class LicenceLimitReached(SessiondError):
    code = "licence_limit_reached"
    status = 429


class TooManyConnections(SessiondError):
    """A new connection from an address that has ``max_connections_per_address`` open already
    (answered as it opens, with ``Retry-After``, and closed)."""

    code = "too_many_connections"
    status = 429


class LicenceInvalid(SessiondError):
    code = "licence_invalid"
    status = 503


class NotConfigured(SessiondError):
    code = "not_configured"
    status = 501


class ServiceUnavailable(SessiondError):
    code = "service_unavailable"
    status = 503

    def __init__(
        self,
        message: str,
        *,
        details: dict[str, Any] | None = None,
        reason: str | None = None,
        sign_in: str | None = None,
    ) -> None:
        super().__init__(message, details=details, reason=reason or (message if sign_in else None))
        #: Set by an authenticator ("Windows", "LDAP"): its message names files, hosts and
        #: certificates, so it goes to the log and the audit trail only; callers are told the
        #: cause (``details.cause``) and where the details are.
        self.sign_in = sign_in

    @property
    def public_message(self) -> str:
        if self.sign_in is None:
            return self.message
        cause = self.details.get("cause", "unknown")
        return (
            f"{self.sign_in} sign-in is unavailable on this server: cause {cause}; the "
            "administrator will find details in the log"
        )


class ServerBusy(ServiceUnavailable):
    """A new connection while the server has ``max_connections`` open (answered as it opens,
    with ``Retry-After``, and closed)."""

    code = "server_busy"


class StoreReadOnly(ServiceUnavailable):
    """The database this node reaches is a standby or read-only (a failover under way, or a
    URL that names no primary): nothing is read from it or written to it; another node, or
    this one once it reaches the primary, can serve the request."""

    code = "store_read_only"


class OpenIdProviderUnavailable(ServiceUnavailable):
    """An OpenID Provider did not answer in time, or answered what is no discovery document
    or key set (``details.provider``: its name)."""

    code = "openid_provider_unavailable"


class SettingsError(SessiondError):
    """Server side, at start or on reload: the settings or a file they name cannot be used."""

    code = "invalid_settings"
    status = 500


class StoreMissing(SettingsError):
    """Command line only: an administrative command found no store where its settings point
    (it never creates one; ``sessiond init`` and ``sessiond serve`` do)."""

    code = "no_store"


class StoreOutdated(StoreMissing):
    """Command line only: the store is at a schema revision this sessiond will not use as it
    is (older: ``sessiond serve`` or ``sessiond init`` upgrades it; newer: a newer sessiond
    made it)."""

    code = "store_outdated"


class TransportError(SessiondError):
    """Client side: the server could not be reached or the connection broke."""

    code = "transport_error"
    status = 0


class ProtocolError(SessiondError):
    """Client side: the answer was not a sessiond answer."""

    code = "protocol_error"
    status = 0


class OpenIdSignInFailed(AuthenticationError):
    """Client side: the OpenID Provider refused the sign-in (``details.provider``,
    ``details.error``: the provider's OAuth error code)."""

    code = "openid_sign_in_failed"


class OpenIdSignInExpired(OpenIdSignInFailed):
    """Client side: the sign-in at the provider was not completed in time (the client's
    ``timeout``, or the device code's ``expires_in``)."""

    code = "openid_sign_in_expired"


INTERNAL_ERROR_BODY: dict[str, Any] = {
    "error": {
        "code": "internal_error",
        "message": "sessiond failed to handle the request; the server log has details",
    }
}


def _all_subclasses(cls: type[SessiondError]) -> list[type[SessiondError]]:
    out: list[type[SessiondError]] = []
    for sub in cls.__subclasses__():
        out.append(sub)
        out.extend(_all_subclasses(sub))
    return out


_ALL_ERRORS: list[type[SessiondError]] = [SessiondError, *_all_subclasses(SessiondError)]
ERRORS_BY_CODE: dict[str, type[SessiondError]] = {cls.code: cls for cls in _ALL_ERRORS}


def error_from_body(status: int, body: Any) -> SessiondError:
    """Rebuild the exception a server response describes (client side)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict) or not isinstance(error.get("code"), str):
        return ProtocolError(f"unexpected HTTP {status} answer from the server")
    cls = ERRORS_BY_CODE.get(error["code"])
    message = str(error.get("message") or error["code"])
    details = error.get("details") if isinstance(error.get("details"), dict) else None
    if cls is None:
        # A newer server's code: keep it, and pick the base class by status.
        cls = _BASE_BY_STATUS.get(status, SessiondError)
        exc = cls(message, details=details)
        exc.code = error["code"]  # type: ignore[misc]
        exc.status = status  # type: ignore[misc]
        return exc
    return cls(message, details=details)


_BASE_BY_STATUS: dict[int, type[SessiondError]] = {
    400: RequestError,
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    503: ServiceUnavailable,
}
