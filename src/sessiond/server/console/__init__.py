"""The administrators' console: server-rendered pages under ``/console`` (docs/console.md).

It is its own small application, mounted into the API's: its errors are pages, not JSON, and
every answer carries its security headers (:class:`~.web.SecurityHeaders`). It calls nothing
but the :class:`~sessiond.service.SessionService` the API uses, with the signed-in person's
session as the actor; the validation route in front of everything (``fast.py``) never reaches
it.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route
from starlette.types import ASGIApp, Scope

from ...errors import SessiondError
from ...service import SessionService
from ...settings import Settings
from . import audit, configuration, licences, sessions, signin, users
from .auth import CsrfRefused, NotAdministrator, SignedOut, cookies
from .web import (
    BASE,
    NO_STORE,
    SECURITY_HEADERS,
    SecurityHeaders,
    error_page,
    redirect,
    static_response,
)

__all__ = ["BASE", "create", "install", "owns", "too_large"]

_HTTP_MESSAGES = {
    404: "There is no such page in the console.",
    405: "That page does not take this kind of request.",
    413: (
        "What was sent is larger than 64 KiB, the most sessiond takes in one request; nothing "
        "was changed. A licence file is at most 64 KiB: check that this is the licence file."
    ),
}


async def _static(request: Request) -> Response:
    found = static_response(str(request.path_params["name"]))
    if found is None:
        return error_page(request, 404, _HTTP_MESSAGES[404])
    return found


async def _signed_out(request: Request, exc: Exception) -> Response:
    spec = cookies(request)
    had = spec.session in request.cookies
    response = redirect("/sign-in", "ended" if had else None)
    if had:
        spec.drop(response, spec.session)
    return response


async def _csrf(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, CsrfRefused)
    return error_page(
        request,
        403,
        "This form did not come from your console session (its CSRF token is missing or "
        "wrong); nothing was changed. Open the page again and resend the form.",
        viewer=exc.viewer,
    )


async def _sessiond_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, SessiondError)
    # A regular user on an administrator's page keeps the menu of the pages they may use.
    viewer = exc.viewer if isinstance(exc, NotAdministrator) else None
    return error_page(request, exc.status, exc.public_message, viewer=viewer)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    message = _HTTP_MESSAGES.get(exc.status_code, str(exc.detail))
    return error_page(request, exc.status_code, message)


def create(settings: Settings, service: SessionService) -> ASGIApp:
    routes = [
        *signin.routes,
        *sessions.routes,
        *users.routes,
        *licences.routes,
        *configuration.routes,
        *audit.routes,
        Route("/static/{name}", _static, methods=["GET"]),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            SignedOut: _signed_out,
            CsrfRefused: _csrf,
            SessiondError: _sessiond_error,
            HTTPException: _http_error,
        },
    )
    # Starlette would answer a path with a trailing slash by a redirect built from the Host
    # header (re-sending a form's password there): such a path is no page, as in the API.
    app.router.redirect_slashes = False
    app.state.settings = settings
    app.state.service = service
    return SecurityHeaders(app)


def owns(path: str) -> bool:
    """Whether a request path is the console's."""
    return path == BASE or path.startswith(BASE + "/")


def too_large(scope: Scope) -> ASGIApp:
    """The console's own error page for a request body over sessiond's limit, which is
    refused before the console sees it (the API answers the same refusal in JSON)."""
    return SecurityHeaders(error_page(Request(scope), 413, _HTTP_MESSAGES[413]))


def install(app: FastAPI, settings: Settings, service: SessionService) -> None:
    """Mount the console at ``/console`` (``/console`` itself and ``/`` lead to ``/console/``,
    a path of this server: the redirect is never built from the Host header)."""

    async def to_console(request: Request) -> Response:
        headers = {name.decode(): value.decode() for name, value in (*SECURITY_HEADERS, NO_STORE)}
        return RedirectResponse(f"{BASE}/", status_code=303, headers=headers)

    app.mount(BASE, create(settings, service))
    app.add_route(BASE, to_console, methods=["GET"], include_in_schema=False)
    # Someone who types the server's address lands on the console, not on a 404.
    app.add_route("/", to_console, methods=["GET"], include_in_schema=False)
