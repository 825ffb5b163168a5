"""Signing in to the console through an OpenID Provider, and out again (RP-initiated logout).

``GET /console/openid/NAME/start`` starts the authorization code flow
(:class:`~sessiond.service.openid_flow.CodeFlow`: PKCE S256, ``state``, ``nonce``) and keeps
what its answer is checked with in the browser, sealed (:mod:`.sealed`, unreadable and
unforgeable without the server's key) in an HttpOnly cookie that lives 10 minutes and goes with
the provider's redirect back (SameSite=Lax: a top-level GET from the provider's site). The
callback opens that cookie (and drops it: a second use of the same answer finds none), lets the
flow check and redeem the answer, and signs the browser in as the password sign-in does.

Its answer is a page that moves on to the console by itself rather than a redirect: the
console's session cookie is SameSite=Strict, and the cookie specification (RFC 6265bis) lets a
browser withhold such cookies from a request reached by a redirect chain that began on another
site (the provider's). Chromium sends them today; the page makes it so for every browser.

The ID token, needed at sign-out as ``id_token_hint``, stays sealed in a second HttpOnly,
SameSite=Strict cookie bound to the session's id. Sign-out closes the platform session first and
then sends the browser to the provider's ``end_session_endpoint``, by a page too: the console's
``form-action 'self'`` would stop a form's redirect to another site.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Route

from ...errors import RequestError, SessiondError
from ...service.openid_flow import PENDING_SECONDS, CodeFlow, PendingSignIn
from ...token import SessionToken
from . import auth, sealed
from .web import BASE, render

PENDING_COOKIE = "sessiond-console-openid"
LOGOUT_COOKIE = "sessiond-console-openid-logout"
_PENDING = "openid pending sign-in"
_LOGOUT = "openid logout"


def _flow(request: Request) -> CodeFlow:
    return CodeFlow(auth.service_of(request).openid)


def offered(request: Request) -> list[tuple[str, str]]:
    """(name, display name) of each provider the sign-in page offers."""
    return _flow(request).console_providers()


def _name(spec: auth.CookieSpec, cookie: str) -> str:
    return auth.HOST_PREFIX + cookie if spec.secure else cookie


def _base_url(request: Request) -> str:
    """The server's address as the browser reaches it: ``console.public_url``, or the
    request's own scheme and host."""
    configured: str | None = auth.service_of(request).settings.console.public_url
    return configured or f"{request.url.scheme}://{request.url.netloc}"


def redirect_uri(request: Request, name: str) -> str:
    return f"{_base_url(request)}{BASE}/openid/{name}/callback"


def post_logout_redirect_uri(request: Request) -> str:
    return f"{_base_url(request)}{BASE}/sign-in"


def _refused(request: Request, name: str, exc: SessiondError) -> HTMLResponse:
    return render(
        request,
        "openid_error.html",
        {"title": "Sign-in refused", "code": exc.code, "provider": name},
        status=exc.status,
        error=exc.public_message,
    )


async def start(request: Request) -> Response:
    name = str(request.path_params["provider"])
    try:
        url, pending = await _flow(request).begin(name, redirect_uri(request, name))
    except SessiondError as exc:
        return _refused(request, name, exc)
    response = RedirectResponse(url, status_code=303)
    spec = auth.cookies(request)
    keys = auth.service_of(request).keys
    response.set_cookie(
        _name(spec, PENDING_COOKIE),
        sealed.seal(keys, _PENDING, pending.to_dict()),
        max_age=PENDING_SECONDS,
        path=spec.path,
        secure=spec.secure,
        httponly=True,
        samesite="lax",
    )
    return response


def _pending(request: Request, spec: auth.CookieSpec) -> PendingSignIn | None:
    keys = auth.service_of(request).keys
    found = sealed.unseal(keys, _PENDING, request.cookies.get(_name(spec, PENDING_COOKIE)))
    return PendingSignIn.from_dict(found) if found is not None else None


def _answer(request: Request) -> dict[str, str]:
    """The provider's answer: its query, each parameter once (RFC 6749 section 3.1)."""
    query = request.query_params
    repeated = sorted({key for key in query if len(query.getlist(key)) > 1})
    if repeated:
        raise RequestError(
            f"the provider's answer repeats {', '.join(repeated)[:200]}; nothing was signed "
            "in. Start the sign-in again.",
        )
    return dict(query.items())


async def callback(request: Request) -> Response:
    from .signin import console_client, signed_in

    name = str(request.path_params["provider"])
    spec = auth.cookies(request)
    try:
        done = await _flow(request).finish(
            name,
            _pending(request, spec),
            _answer(request),
            console_client(request),
            auth.client_address(request),
        )
    except SessiondError as exc:
        response: Response = _refused(request, name, exc)
    else:
        token = done.opened.token
        page = render(request, "openid_signed_in.html", {"title": "Signed in"})
        response = await signed_in(request, token, page)
        keys = auth.service_of(request).keys
        logout = {"provider": name, "id_token": done.id_token}
        value = sealed.seal(keys, _LOGOUT, logout, token.session_id.bytes)
        if len(value) > sealed.MAX_SEALED_CHARS:  # too large to keep: sign out by client_id
            value = sealed.seal(keys, _LOGOUT, {"provider": name}, token.session_id.bytes)
        spec.set(response, _name(spec, LOGOUT_COOKIE), value)
    response.delete_cookie(
        _name(spec, PENDING_COOKIE),
        path=spec.path,
        secure=spec.secure,
        httponly=True,
        samesite="lax",
    )
    return response


async def sign_out(request: Request, token: SessionToken) -> dict[str, Any] | None:
    """What RP-initiated logout needs for the browser's session ``token``: the provider it was
    opened through and the ID token, from the browser's sealed cookie (None: not opened
    through a provider by this browser)."""
    spec = auth.cookies(request)
    keys = auth.service_of(request).keys
    value = request.cookies.get(_name(spec, LOGOUT_COOKIE))
    found = sealed.unseal(keys, _LOGOUT, value, token.session_id.bytes)
    if found is None or not isinstance(found.get("provider"), str):
        return None
    return found


async def signed_out(request: Request, logout: dict[str, Any]) -> Response:
    """After the platform session is closed: on to the provider's end-session endpoint (by a
    page), or back to the sign-in page when the provider cannot be asked."""
    from .signin import signed_out_redirect

    name = str(logout["provider"])
    id_token = logout.get("id_token")
    try:
        url = await _flow(request).end_session_url(
            name, id_token if isinstance(id_token, str) else None, post_logout_redirect_uri(request)
        )
    except SessiondError:
        url = None
    spec = auth.cookies(request)
    if url is None:
        response: Response = signed_out_redirect(request, "signed-out-here")
    else:
        shown = auth.service_of(request).openid.provider(name).display_name
        response = render(
            request,
            "openid_signed_out.html",
            {"title": "Signed out", "url": url, "provider": shown},
        )
        spec.drop(response, spec.session)
    spec.drop(response, _name(spec, LOGOUT_COOKIE))
    return response


routes = [
    Route("/openid/{provider}/start", start, methods=["GET"]),
    Route("/openid/{provider}/callback", callback, methods=["GET"]),
]
