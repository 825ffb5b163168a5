"""The ASGI application: wiring, error rendering and the headers every response carries."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics
from .._version import __version__
from ..auth.negotiate import negotiate_headers
from ..errors import (
    INTERNAL_ERROR_BODY,
    NegotiateRequired,
    RequestError,
    RequestTooLarge,
    ServiceUnavailable,
    SessiondError,
)
from ..keys import KeyRing
from ..service import SessionService
from ..settings import Settings
from ..store import create_store
from ..wire import (
    CONFIGURATION_VERSION_HEADER,
    SESSION_HEADER,
)
from . import console, openid, operations, routes
from .addresses import ClientAddress, networks
from .fast import PATH as CURRENT_SESSION_PATH
from .fast import FastValidation
from .headers import configuration_version
from .observe import Observe
from .render import body_response, error_body, error_response, platform_headers, session_info
from .schemas import ErrorBody, SessionInfo

log = logging.getLogger("sessiond.server")

MAX_BODY_BYTES = 64 * 1024


def build_service(settings: Settings, *, create: bool = True) -> SessionService:
    """``create=False`` (administrative commands): nothing is created on disk, neither a SQLite
    folder or file nor a key ring (a missing ring is replaced by one that is never saved)."""
    store = create_store(
        settings.effective_database_url, create=create, pools=settings.database_pools
    )
    keys = KeyRing.load_or_create(settings.effective_keys_file, create=create)
    return SessionService(settings, store, keys, create=create)


def create_app(settings: Settings, service: SessionService | None = None) -> FastAPI:
    owned = service is None
    svc = service or build_service(settings)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if owned:
            await svc.start(install_licence_file=True, listen=True)
        sweeper = asyncio.create_task(_sweep_forever(svc), name="sessiond-sweeper")
        anchors = asyncio.create_task(_anchor_forever(svc), name="sessiond-audit-anchor")
        try:
            yield
        finally:
            for task in (sweeper, anchors):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            await _anchor(svc, always=True)
            if owned:
                await svc.close()

    app = FastAPI(
        title="sessiond",
        version=__version__,
        description=(
            "Sessions of the document platform: sign in, validate, sign out, administer. "
            f"Send the auth form of the session token in the `{SESSION_HEADER}` header; every "
            f"response carries the configuration version in `{CONFIGURATION_VERSION_HEADER}`."
        ),
        lifespan=lifespan,
        openapi_url="/api/v1/openapi.json",
        docs_url=None,  # served by operations.install, with Swagger UI from the package
        redoc_url=None,
        # A redirect to the path without its trailing slash would be built from the Host header.
        redirect_slashes=False,
    )
    app.state.service = svc
    app.state.trusted_proxies = networks(settings.trusted_proxies)
    app.include_router(routes.router)
    app.include_router(openid.router)
    operations.install(app, settings)
    if settings.console.enabled:
        console.install(app, settings, svc)
    _install_error_handlers(app)
    _install_openapi_security(app)
    return app


def create_asgi(settings: Settings, service: SessionService | None = None) -> ASGIApp:
    """What the server runs: the per-request validation route in front of the application,
    so that it passes through no framework machinery at all; and in front of both, the one
    place that settles the caller's address (``X-Forwarded-For`` from trusted proxies)."""
    app = create_app(settings, service)
    # Outside the framework's own error handling, so that even a 500 carries the versions.
    with_headers = PlatformHeaders(app, service=app.state.service, console=settings.console.enabled)
    observed = Observe(with_headers, access=settings.access_log)
    validation = FastValidation(observed, service=app.state.service, render=session_info)
    if not app.state.trusted_proxies:
        return validation  # nobody's X-Forwarded-For is believed: the peer is the client
    return ClientAddress(validation, app.state.trusted_proxies)


async def _sweep_forever(service: SessionService) -> None:
    """Remove expired sessions every sweep_interval; a failure is logged, never fatal."""
    interval = service.settings.sweep_interval.total_seconds()
    while True:
        await asyncio.sleep(interval)
        try:
            swept = await service.sessions.sweep()
            if swept:
                log.info("removed %d expired sessions", swept)
        except ServiceUnavailable as exc:
            metrics.swept(None)
            log.warning("sweeping expired sessions: %s", exc.message)
            continue
        except Exception:
            metrics.swept(None)
            log.exception("sweeping expired sessions failed; trying again later")
            continue
        metrics.swept(swept)


async def _anchor(service: SessionService, *, always: bool = False) -> None:
    """Write the audit trail's head outside the database (the log, the anchor file); a
    failure is logged, never fatal."""
    settings = service.settings
    try:
        async with asyncio.timeout(10):  # a store that is down must not hold the shutdown
            file = settings.audit_anchor_file or settings.data_dir / "audit-anchors.log"
            await service.audit.anchor(file, settings.node_name, always=always)
    except SessiondError as exc:
        log.warning("writing the audit trail's head: %s", exc.message)
    except TimeoutError:
        log.warning("writing the audit trail's head: the store did not answer in time")
    except Exception:
        log.exception("writing the audit trail's head failed; trying again later")


async def _anchor_forever(service: SessionService) -> None:
    """The audit trail's head at start, then every audit_anchor_interval when it moved."""
    interval = service.settings.audit_anchor_interval.total_seconds()
    while True:
        await _anchor(service)
        await asyncio.sleep(interval)


class PlatformHeaders:
    """Adds the configuration and server version headers; refuses oversized bodies early."""

    def __init__(self, app: ASGIApp, service: SessionService, console: bool = False) -> None:
        self.app = app
        self.service = service
        self.console = console  # the console is served: its refusals are pages

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        live = scope["path"] == operations.LIVE_PATH

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                # Liveness never waits for the store, nor does a 503 (the store failing, or
                # the server busy): it carries the last version known.
                read = not live and message["status"] != 503
                version = await configuration_version(self.service, read=read)
                headers = [*message.get("headers", []), *platform_headers(version)]
                message = {**message, "headers": headers}
            await send(message)

        too_large = RequestTooLarge(f"the request body is larger than {MAX_BODY_BYTES} bytes")
        for name, value in scope["headers"]:
            if name == b"content-length" and (not value.isdigit() or int(value) > MAX_BODY_BYTES):
                response: ASGIApp = error_response(too_large)
                if self.console and console.owns(scope["path"]):
                    response = console.too_large(scope)  # a page, like the console's others
                await response(scope, receive, send_with_headers)
                return
        received = 0

        async def receive_limited() -> Message:
            # A body without Content-Length (chunked) is counted as it arrives.
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > MAX_BODY_BYTES:
                    # An HTTPException passes through FastAPI's body parsing unchanged.
                    raise StarletteHTTPException(too_large.status, detail=too_large.message)
            return message

        await self.app(scope, receive_limited, send_with_headers)


def _install_error_handlers(app: FastAPI) -> None:
    async def sessiond_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, SessiondError)
        headers: dict[str, str] = {}
        if isinstance(exc, NegotiateRequired):
            headers = negotiate_headers(exc.challenge, exc.handshake_id, exc.scheme)
        return error_response(exc, headers)

    async def validation_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err.get("loc", ()) if p != "body")
            problems.append(f"{where}: {err.get('msg')}" if where else str(err.get("msg")))
        error = RequestError("the request is malformed: " + "; ".join(problems))
        return error_response(error)

    async def http_error(_request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        code = {
            404: "no_such_route",
            405: "method_not_allowed",
            RequestTooLarge.status: RequestTooLarge.code,
        }.get(exc.status_code, "http_error")
        return body_response(exc.status_code, error_body(code, str(exc.detail)))

    async def unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error", exc_info=exc)
        return body_response(500, INTERNAL_ERROR_BODY)

    app.add_exception_handler(SessiondError, sessiond_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected)


def _install_openapi_security(app: FastAPI) -> None:
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = original()
        schema.setdefault("components", {}).setdefault("securitySchemes", {})["TessaSession"] = {
            "type": "apiKey",
            "in": "header",
            "name": SESSION_HEADER,
            "description": "the auth form of the session token (XML)",
        }
        _describe_current_session(schema)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def _describe_current_session(schema: dict[str, Any]) -> None:
    """``GET /api/v1/sessions/current`` is served by :class:`FastValidation` alone, in front of
    FastAPI, so no route declares it: its operation is added to the document here."""
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    for model in (SessionInfo, ErrorBody):
        generated = model.model_json_schema(ref_template="#/components/schemas/{model}")
        for name, definition in generated.pop("$defs", {}).items():
            components.setdefault(name, definition)
        components.setdefault(model.__name__, generated)

    def answer(description: str, model: type[SessionInfo | ErrorBody]) -> dict[str, Any]:
        reference = {"$ref": f"#/components/schemas/{model.__name__}"}
        return {"description": description, "content": {"application/json": {"schema": reference}}}

    schema.setdefault("paths", {})[CURRENT_SESSION_PATH] = {
        "get": {
            "summary": "Validate the current session and describe it",
            "operationId": "current_session_api_v1_sessions_current_get",
            "security": [{"TessaSession": []}],
            "responses": {
                "200": answer("Successful Response", SessionInfo),
                "400": answer("Tessa-Session sent more than once (header_repeated)", ErrorBody),
                "401": answer("no session, or the token or session is not valid", ErrorBody),
                "503": answer("the store cannot be reached", ErrorBody),
            },
        }
    }
