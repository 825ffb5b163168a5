"""Who is looking at the console: the session in its cookie, and the CSRF tokens of its forms.

The cookie carries a real sessiond session: the auth form of the token ``open_session`` gave,
base64url-encoded. Every request validates it with ``service.sessions.validate`` (the same
revocation, expiry, inactivity and audit as any session). The cookie is HttpOnly and
SameSite=Strict; it is Secure when the request came over TLS, when ``X-Forwarded-Proto`` says
``https``, or when the ``console.secure_cookie`` setting says so, and then named
``__Host-sessiond-console`` (a name the browser accepts only with Secure, no Domain and
Path=/). Otherwise it is ``sessiond-console`` with Path=/console.

Every form that changes something carries a CSRF token: HMAC-SHA256 of the session id under a
key derived from the signature key that signed the session (so every node of an installation
computes the same token, and it lives exactly as long as the session). The sign-in forms, which
have no session yet, carry a signed double-submit token: a random value kept in a second cookie,
and in the form HMAC-SHA256 of that value under a key derived from the current signature key.
On plain HTTP anyone who can set a cookie for the host can plant the cookie, but not make up a
form token that matches it: that takes the server's key. And a sign-in form the browser says
came from another site (``Sec-Fetch-Site``) is refused whatever it carries, so a pair the
attacker fetched from the server cannot be replayed through the victim's browser either.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from dataclasses import dataclass

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response

from ...errors import AuthenticationError, PermissionDenied
from ...service import Actor, SessionService
from ...settings import Settings
from ...store import SessionRecord
from .web import BASE

HOST_PREFIX = "__Host-"
SESSION_COOKIE = "sessiond-console"
SIGNIN_COOKIE = "sessiond-console-signin"
CSRF_FIELD = "csrf"
_CSRF_LABEL = b"sessiond console csrf/1"
_SIGNIN_LABEL = b"sessiond console sign-in csrf/1"
#: ``Sec-Fetch-Site`` values of a form this console's own page sent.
_OWN_FETCH_SITES = frozenset({"same-origin", "none"})
MAX_COOKIE_CHARS = 8192


class SignedOut(Exception):
    """No console session, or one that no longer validates: sign in again."""


class CsrfRefused(Exception):
    """A form came without the CSRF token of the session, or with a wrong one."""

    def __init__(self, viewer: Viewer | None = None) -> None:
        super().__init__()
        self.viewer = viewer


class NotAdministrator(PermissionDenied):
    """An administrator's page asked for by a regular user: refused, on a page that keeps
    their menu."""

    def __init__(self, viewer: Viewer) -> None:
        super().__init__("only an administrator may use this page")
        self.viewer = viewer


@dataclass(frozen=True, slots=True)
class CookieSpec:
    secure: bool

    @property
    def session(self) -> str:
        return HOST_PREFIX + SESSION_COOKIE if self.secure else SESSION_COOKIE

    @property
    def signin(self) -> str:
        return HOST_PREFIX + SIGNIN_COOKIE if self.secure else SIGNIN_COOKIE

    @property
    def path(self) -> str:
        # __Host- cookies must have Path=/ (the browser refuses them otherwise); the API reads
        # no cookie at all, so the wider path hands the session to nothing else.
        return "/" if self.secure else BASE

    def set(self, response: Response, name: str, value: str) -> None:
        response.set_cookie(
            name, value, path=self.path, secure=self.secure, httponly=True, samesite="strict"
        )

    def drop(self, response: Response, name: str) -> None:
        response.delete_cookie(
            name, path=self.path, secure=self.secure, httponly=True, samesite="strict"
        )


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def service_of(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


def client_address(request: Request) -> str | None:
    return request.client.host if request.client else None


def cookies(request: Request) -> CookieSpec:
    """Secure when the request came over TLS or a proxy says it did (which can only make the
    cookie stricter, so the header is believed from anyone), or when the settings say so."""
    if _settings(request).console.secure_cookie or request.url.scheme == "https":
        return CookieSpec(secure=True)
    for value in request.headers.getlist("x-forwarded-proto"):
        if "https" in (part.strip().lower() for part in value.split(",")):
            return CookieSpec(secure=True)
    return CookieSpec(secure=False)


def encode_auth(auth_text: str) -> str:
    return base64.urlsafe_b64encode(auth_text.encode()).decode().rstrip("=")


def _decode_auth(value: str) -> str | None:
    if not value or len(value) > MAX_COOKIE_CHARS:
        return None
    try:
        return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()
    except (binascii.Error, ValueError):
        return None


@dataclass(frozen=True, slots=True)
class Viewer:
    """The signed-in person: their session, as an actor, with the CSRF token of their forms."""

    record: SessionRecord
    actor: Actor
    auth_text: str
    csrf: str

    @property
    def is_administrator(self) -> bool:
        return self.actor.is_administrator

    @property
    def name(self) -> str:
        return self.record.token.user_name

    @property
    def login(self) -> str:
        return self.record.token.user_login or ""


def csrf_token(service: SessionService, record: SessionRecord) -> str:
    token = record.token
    key = service.keys.keys.get(token.key_id or "")
    if key is None:  # validation checked the key: only a retired one gets here
        raise SignedOut()
    derived = hmac.new(key, _CSRF_LABEL, hashlib.sha256).digest()
    mac = hmac.new(derived, token.session_id.bytes, hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def auth_text_of(request: Request) -> str | None:
    """The token the console cookie holds, if it holds one that can be read."""
    raw = request.cookies.get(cookies(request).session)
    return _decode_auth(raw) if raw else None


async def viewer(request: Request, *, admin: bool = True) -> Viewer:
    """The signed-in person, validated now; :class:`SignedOut` without a valid session, and
    ``PermissionDenied`` for an administrator's page asked for by anyone else."""
    auth_text = auth_text_of(request)
    if not auth_text:
        raise SignedOut()
    service = service_of(request)
    address = client_address(request)
    try:
        record = await service.sessions.validate(auth_text, address)
    except AuthenticationError:
        raise SignedOut() from None
    found = Viewer(record, Actor.of(record, address), auth_text, csrf_token(service, record))
    if admin and not found.is_administrator:
        raise NotAdministrator(found)
    return found


async def checked_form(request: Request, who: Viewer) -> FormData:
    """The posted form, once its CSRF token is the session's."""
    form = await request.form()
    given = form.get(CSRF_FIELD)
    if not isinstance(given, str) or not hmac.compare_digest(given.encode(), who.csrf.encode()):
        raise CsrfRefused(who)
    return form


def signin_token(request: Request) -> tuple[str, bool]:
    """The random value of the sign-in forms' cookie: the one in the browser's cookie, or a new
    one (True: set it)."""
    existing = request.cookies.get(cookies(request).signin)
    if existing and 20 <= len(existing) <= 100:
        return existing, False
    return secrets.token_urlsafe(32), True


def _signin_mac(key: bytes, nonce: str) -> str:
    derived = hmac.new(key, _SIGNIN_LABEL, hashlib.sha256).digest()
    mac = hmac.new(derived, nonce.encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(mac).decode().rstrip("=")


def signin_form_token(service: SessionService, nonce: str) -> str:
    """What a sign-in form carries for the cookie value ``nonce``: the signing key's id and
    the HMAC of ``nonce`` under a key derived from it."""
    key_id = service.keys.current
    return f"{key_id}.{_signin_mac(service.keys.keys[key_id], nonce)}"


def _signin_token_matches(service: SessionService, nonce: str, given: str) -> bool:
    key_id, _, mac = given.rpartition(".")
    key = service.keys.keys.get(key_id)
    if key is None:  # made up, or signed by a key retired since
        return False
    return hmac.compare_digest(mac.encode(), _signin_mac(key, nonce).encode())


async def checked_signin_form(request: Request) -> FormData:
    """A sign-in form, once it comes from this console's page (as far as the browser says)
    and its token is the server's HMAC of the value in the browser's cookie."""
    site = request.headers.get("sec-fetch-site")
    if site is not None and site.lower() not in _OWN_FETCH_SITES:
        raise CsrfRefused()
    form = await request.form()
    nonce = request.cookies.get(cookies(request).signin)
    given = form.get(CSRF_FIELD)
    if (
        not nonce
        or not isinstance(given, str)
        or not _signin_token_matches(service_of(request), nonce, given)
    ):
        raise CsrfRefused()
    return form
