"""What every console page shares: templates, the security headers, notices, error pages."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlencode

from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

log = logging.getLogger("sessiond.server")

BASE = "/console"
HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"

#: Sent with every console answer, pages, static files and errors alike.
SECURITY_HEADERS: tuple[tuple[bytes, bytes], ...] = (
    (
        b"content-security-policy",
        b"default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
        b"frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    ),
    (b"x-frame-options", b"DENY"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-content-type-options", b"nosniff"),
    (b"cross-origin-opener-policy", b"same-origin"),
)
_SECURITY_NAMES = frozenset(name for name, _ in SECURITY_HEADERS)
NO_STORE = (b"cache-control", b"no-store")

#: What a redirect's ``?done=`` may say: fixed texts, so a link cannot put words on a page.
NOTICES = {
    "ended": "Your console session has ended. Sign in again.",
    "signed-out": "You are signed out.",
    "signed-out-here": (
        "You are signed out of the console; the identity provider could not be asked to end "
        "its own session: sign out there too."
    ),
    "closed": "The session was closed.",
    "not-open": "That session was no longer open.",
    "closed-user": "The user's sessions were closed: {n}.",
    "user-added": "The user was added.",
    "user-changed": "The user was changed.",
    "user-blocked": "The user is blocked; their sessions were closed.",
    "user-unblocked": "The user is unblocked.",
    "password-set": "The password was set; the user's sessions were closed.",
    "user-removed": "The user was removed. Their audit records stay.",
    "licence-installed": "The licence was installed.",
    "licence-reloaded": "The licence file was installed again.",
    "incremented": "The configuration version is now {n}.",
}


def _when(value: datetime | str | None) -> str:
    """A time for a table: UTC, to the second."""
    if value is None or value == "":
        return "—"
    if isinstance(value, str):
        try:
            moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            return value
    else:
        moment = value
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


templates = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    undefined=StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)
templates.filters["when"] = _when


def notice(request: Request) -> str | None:
    text = NOTICES.get(request.query_params.get("done", ""))
    if text is None:
        return None
    count = request.query_params.get("n", "")
    return text.format(n=int(count) if count.isdigit() and len(count) < 12 else "?")


def render(
    request: Request,
    template: str,
    context: Mapping[str, Any],
    *,
    status: int = 200,
    error: str | None = None,
) -> HTMLResponse:
    page = {
        "base": BASE,
        "viewer": None,
        "notice": notice(request) if status < 400 else None,
        "error": error,
        **context,
    }
    return HTMLResponse(templates.get_template(template).render(page), status_code=status)


def redirect(
    path: str,
    done: str | None = None,
    n: int | None = None,
    params: Sequence[tuple[str, str]] | str = (),
) -> RedirectResponse:
    """303 to a console page (a path of this server: never built from the Host header),
    with query ``params``, and a notice to show there."""
    pairs = list(parse_qsl(params) if isinstance(params, str) else params)
    if done:
        pairs.append(("done", done))
    if n is not None:
        pairs.append(("n", str(n)))
    query = "?" + urlencode(pairs) if pairs else ""
    return RedirectResponse(f"{BASE}{path}{query}", status_code=303)


def error_page(request: Request, status: int, message: str, viewer: Any = None) -> HTMLResponse:
    return render(
        request,
        "error.html",
        {"title": f"Error {status}", "status": status, "viewer": viewer},
        status=status,
        error=message,
    )


class SecurityHeaders:
    """ASGI middleware around the console: the security headers on every answer, ``no-store``
    on every answer that does not set its own caching (the static files do), and an error
    page instead of a traceback if a page fails unexpectedly."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_secured(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                headers = [
                    (name, value)
                    for name, value in message.get("headers", [])
                    if name not in _SECURITY_NAMES
                ]
                headers.extend(SECURITY_HEADERS)
                if not any(name == b"cache-control" for name, _ in headers):
                    headers.append(NO_STORE)
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self.app(scope, receive, send_secured)
        except Exception:
            log.exception("unexpected error in the console")
            if started:
                raise
            response = error_page(
                Request(scope),
                500,
                "The console failed to handle the request; the server log has details.",
            )
            await response(scope, receive, send_secured)


#: The console's own files: nothing else under static/ is served.
STATIC_FILES = {
    "console.css": "text/css; charset=utf-8",
    "live.js": "text/javascript; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}
_static_cache: dict[str, bytes] = {}


def static_response(name: str) -> Response | None:
    """One of the console's own files, or None."""
    kind = STATIC_FILES.get(name)
    if kind is None:
        return None
    body = _static_cache.get(name)
    if body is None:
        body = _static_cache[name] = (STATIC_DIR / name).read_bytes()
    return Response(body, media_type=kind, headers={"Cache-Control": "no-cache"})
