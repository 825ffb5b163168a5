"""Signing in and out: login and password, a password that must be changed first,
integrated Windows sign-in (HTTP Negotiate) where it is configured, and the OpenID Providers
configured (:mod:`.openid`)."""

from __future__ import annotations

import base64
import contextlib

from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Route

from ...auth import PasswordCredentials
from ...errors import (
    AuthenticationError,
    NegotiateRequired,
    NotConfigured,
    PasswordExpired,
    RequestError,
    SessiondError,
)
from ...models import ClientInfo, DeviceType, LoginType, ServiceType
from ...token import SessionToken
from ..headers import AUTHORIZATION_HEADER, single_header
from ..routes import _handshake_id, _negotiate_token
from . import auth, forms, openid
from .web import redirect, render


def console_client(request: Request) -> ClientInfo:
    """The console's sessions are web sessions: they take a web seat."""
    agent = request.headers.get("user-agent")
    return ClientInfo(
        service_type=ServiceType.WEB_CLIENT,
        device_type=DeviceType.DESKTOP,
        user_agent=agent[:512] if agent else None,
    )


def negotiate_offered(request: Request) -> bool:
    windows = auth.service_of(request).settings.windows
    return windows is not None and windows.negotiate


async def _page(
    request: Request,
    template: str,
    *,
    status: int = 200,
    error: str | None = None,
    **context: object,
) -> HTMLResponse:
    token, new = auth.signin_token(request)
    csrf = auth.signin_form_token(auth.service_of(request), token)
    response = render(
        request,
        template,
        {
            "csrf": csrf,
            "negotiate": negotiate_offered(request),
            "providers": openid.offered(request),
            **context,
        },
        status=status,
        error=error,
    )
    if new:
        spec = auth.cookies(request)
        spec.set(response, spec.signin, token)
    return response


async def signed_in(
    request: Request, token: SessionToken, response: Response | None = None
) -> Response:
    """Hand the browser its new session (with ``response``, else a redirect to the sessions
    page); an older console session of this browser ends."""
    service = auth.service_of(request)
    old = auth.auth_text_of(request)
    if old:
        with contextlib.suppress(SessiondError):
            await service.sessions.close_session(old, auth.client_address(request))
    response = response or redirect("/sessions")
    spec = auth.cookies(request)
    spec.set(response, spec.session, auth.encode_auth(token.to_auth_xml()))
    return response


async def sign_in_page(request: Request) -> Response:
    with contextlib.suppress(auth.SignedOut):
        await auth.viewer(request, admin=False)
        return redirect("/sessions")
    return await _page(request, "signin.html", title="Sign in", login="")


async def sign_in(request: Request) -> Response:
    form = await auth.checked_signin_form(request)
    login, password = forms.text(form, "login"), forms.secret(form, "password")
    if not login or not password:
        return await _page(
            request, "signin.html", title="Sign in", login=login, status=400,
            error="Give your login and password.",
        )  # fmt: skip
    service = auth.service_of(request)
    try:
        opened = await service.signin.open_session(
            PasswordCredentials(login, password, None),
            console_client(request),
            auth.client_address(request),
        )
    except PasswordExpired as exc:
        return await _change_page(request, login, exc)
    except SessiondError as exc:
        return await _page(
            request, "signin.html", title="Sign in", login=login, status=exc.status,
            error=exc.public_message,
        )  # fmt: skip
    return await signed_in(request, opened.token)


async def _change_page(
    request: Request,
    login: str,
    expired: PasswordExpired | None = None,
    *,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    reason = None
    if expired is not None:
        reason = (
            "This is a one-time password: choose your own password to sign in."
            if expired.details.get("one_time")
            else f"Your password has expired ({expired.message}): choose a new one to sign in."
        )
    return await _page(
        request,
        "change_password.html",
        title="Change password",
        login=login,
        reason=reason,
        status=status,
        error=error,
    )


async def change_password_page(request: Request) -> Response:
    return await _change_page(request, forms.text(request.query_params, "login"))


async def change_password(request: Request) -> Response:
    form = await auth.checked_signin_form(request)
    login = forms.text(form, "login")
    old, new = forms.secret(form, "old_password"), forms.secret(form, "new_password")
    try:
        if not login or not old or not new:
            raise RequestError("Give your login, your current password and a new one.")
        if new != forms.secret(form, "repeat_password"):
            raise RequestError("The new password and its repetition differ.")
        service = auth.service_of(request)
        address = auth.client_address(request)
        await service.signin.change_password(login, old, new, address)
    except SessiondError as exc:
        return await _change_page(request, login, status=exc.status, error=exc.public_message)
    try:
        opened = await service.signin.open_session(
            PasswordCredentials(login, new, None), console_client(request), address
        )
    except SessiondError as exc:
        # The change is committed: asking for the old password again would be wrong.
        return await _page(
            request, "signin.html", title="Sign in", login=login, status=exc.status,
            error=f"Your password was changed, but signing in failed ({exc.public_message}): "
            "sign in with the new password.",
        )  # fmt: skip
    return await signed_in(request, opened.token)


async def windows_sign_in(request: Request) -> Response:
    """HTTP Negotiate with the browser: 401 ``WWW-Authenticate: Negotiate`` until it sends a
    token (or the next leg of NTLM), then a session."""
    service = auth.service_of(request)
    try:
        if not negotiate_offered(request):
            raise NotConfigured("integrated Windows sign-in is not configured on this server")
        opened, mutual = await service.signin.open_session_negotiate(
            _negotiate_token(single_header(request.scope["headers"], AUTHORIZATION_HEADER)),
            _handshake_id(request),
            console_client(request),
            auth.client_address(request),
        )
    except NegotiateRequired as exc:
        challenge = base64.b64encode(exc.challenge).decode() if exc.challenge else ""
        response = await _page(
            request, "negotiate.html", title="Windows sign-in", status=401, login=""
        )
        response.headers["WWW-Authenticate"] = f"Negotiate {challenge}".strip()
        return response
    except SessiondError as exc:
        status = exc.status if not isinstance(exc, AuthenticationError) else 401
        return await _page(
            request,
            "signin.html",
            title="Sign in",
            login="",
            status=status,
            error=exc.public_message,
        )
    answer = await signed_in(request, opened.token)
    if mutual:
        answer.headers["WWW-Authenticate"] = "Negotiate " + base64.b64encode(mutual).decode()
    return answer


async def sign_out(request: Request) -> Response:
    try:
        who = await auth.viewer(request, admin=False)
    except auth.SignedOut:
        return redirect("/sign-in")
    await auth.checked_form(request, who)
    token = who.record.token
    logout = None
    if token.login_type == LoginType.OPEN_ID:
        logout = await openid.sign_out(request, token)
    await auth.service_of(request).sessions.close_session(
        who.auth_text, auth.client_address(request)
    )
    if logout is not None:  # RP-initiated logout at the provider it was opened through
        return await openid.signed_out(request, logout)
    return signed_out_redirect(request, "signed-out")


def signed_out_redirect(request: Request, done: str) -> Response:
    response = redirect("/sign-in", done)
    spec = auth.cookies(request)
    spec.drop(response, spec.session)
    return response


routes = [
    Route("/sign-in", sign_in_page, methods=["GET"]),
    Route("/sign-in", sign_in, methods=["POST"]),
    Route("/change-password", change_password_page, methods=["GET"]),
    Route("/change-password", change_password, methods=["POST"]),
    Route("/sign-in/windows", windows_sign_in, methods=["GET"]),
    Route("/sign-out", sign_out, methods=["POST"]),
    *openid.routes,
]
