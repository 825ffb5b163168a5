"""HTTP routes. Each one parses, calls the service, renders: nothing else lives here."""

from __future__ import annotations

import ipaddress
from typing import Any
from uuid import UUID

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..auth import PasswordCredentials
from ..errors import NegotiateRequired, RequestError, SessionRequired
from ..service import Actor, SessionService
from ..store import SessionRecord
from ..token import format_datetime
from .schemas import (
    ClosedResponse,
    ConfigurationInfoBody,
    ErrorBody,
    OpenSessionRequest,
    OpenSessionResponse,
    SessionInfo,
)

router = APIRouter(prefix="/api/v1")

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 422, 429, 501, 503)
}
_SECURED: dict[str, Any] = {"security": [{"TessaSession": []}]}


def _service(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


def client_address(request: Request) -> str | None:
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    if peer and forwarded and request.app.state.trusted_proxies:
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if any(peer_ip in net for net in request.app.state.trusted_proxies):
            return forwarded.split(",")[0].strip()[:64] or peer
    return peer


def _auth_text(request: Request) -> str:
    text = request.headers.get("tessa-session")
    if not text:
        raise SessionRequired(
            "this call needs a session: send its token in the Tessa-Session header"
        )
    return text


async def _session(request: Request) -> SessionRecord:
    return await _service(request).validate(_auth_text(request), client_address(request))


async def _actor(request: Request) -> Actor:
    return Actor.of(await _session(request), client_address(request))


def session_info(record: SessionRecord) -> dict[str, Any]:
    t = record.token
    return {
        "SessionID": str(t.session_id),
        "UserID": str(t.user_id),
        "UserName": t.user_name,
        "UserLogin": t.user_login,
        "AccessLevel": t.access_level.wire,
        "LoginType": t.login_type.wire,
        "LicenseType": t.license_type.wire,
        "ServiceType": t.service_type.wire,
        "DeviceType": t.device_type.wire,
        "ApplicationID": str(t.application_id) if t.application_id else None,
        "Created": format_datetime(t.created),
        "Expires": format_datetime(t.expires),
        "LastActivity": format_datetime(record.last_activity),
        "HostIP": t.host_ip,
    }


@router.post(
    "/sessions/open",
    response_model=OpenSessionResponse,
    responses=_ERRORS,
    summary="Open a session (OpenSessionAsync)",
    description="Login + password (+ Domain, or DOMAIN\\login, or login@REALM). Empty Login and "
    "Password mean integrated Windows sign-in (answered 401 with WWW-Authenticate: Negotiate).",
)
async def open_session(request: Request, body: OpenSessionRequest) -> JSONResponse:
    try:
        login, password = body.decoded()
    except ValueError as exc:
        raise RequestError(str(exc)) from None
    if not login and not password:
        raise NegotiateRequired(
            "no login and password: integrated Windows sign-in is needed "
            "(POST /api/v1/sessions/open-windows with an Authorization: Negotiate header)"
        )
    if not login or not password:
        raise RequestError("give both Login and Password, or neither for Windows sign-in")
    token = await _service(request).open_session(
        PasswordCredentials(login, password, body.Domain or None),
        body.client_info(request.headers.get("user-agent")),
        client_address(request),
    )
    return JSONResponse({"Token": token.to_xml(), "AuthToken": token.to_auth_xml()})


@router.post(
    "/sessions/open-windows",
    response_model=OpenSessionResponse,
    responses=_ERRORS,
    summary="Open a session by integrated Windows sign-in (OpenSessionWindowsAuthAsync)",
)
async def open_session_windows(request: Request) -> JSONResponse:
    raw = await request.body()
    try:
        body = OpenSessionRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestError(f"the request is malformed: {exc.errors()[0]['msg']}") from None
    token = await _service(request).open_session_negotiate(
        request.headers.get("authorization"),
        body.client_info(request.headers.get("user-agent")),
        client_address(request),
    )
    return JSONResponse({"Token": token.to_xml(), "AuthToken": token.to_auth_xml()})


@router.post(
    "/sessions/close",
    response_model=ClosedResponse,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Close the current session (CloseSessionAsync)",
)
async def close_session(request: Request) -> JSONResponse:
    closed = await _service(request).close_session(_auth_text(request), client_address(request))
    return JSONResponse({"Closed": closed})


@router.delete(
    "/sessions/{session_id}",
    response_model=ClosedResponse,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Close any session as administrator (CloseSessionAsAdminAsync)",
)
async def close_session_as_admin(request: Request, session_id: UUID) -> JSONResponse:
    actor = await _actor(request)
    closed = await _service(request).close_session_as_admin(actor, session_id)
    return JSONResponse({"Closed": closed})


@router.get(
    "/sessions/current",
    response_model=SessionInfo,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Validate the current session and describe it",
)
async def current_session(request: Request) -> JSONResponse:
    return JSONResponse(session_info(await _session(request)))


@router.get(
    "/sessions",
    response_model=list[SessionInfo],
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="List open sessions (administrators)",
)
async def list_sessions(request: Request, user_id: UUID | None = None) -> JSONResponse:
    actor = await _actor(request)
    records = await _service(request).list_sessions(actor, user_id)
    return JSONResponse([session_info(r) for r in records])


@router.get(
    "/configuration",
    response_model=ConfigurationInfoBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="The configuration version and build information",
)
async def configuration(request: Request) -> JSONResponse:
    await _session(request)
    info = await _service(request).get_configuration()
    return JSONResponse(info.to_dict())


@router.post(
    "/configuration/increment-version",
    response_model=ConfigurationInfoBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Increment the configuration version (IncrementConfigurationVersionAsync)",
)
async def increment_configuration_version(request: Request) -> JSONResponse:
    actor = await _actor(request)
    info = await _service(request).increment_configuration_version(actor)
    return JSONResponse(info.to_dict())


@router.get("/health", summary="Liveness: the process answers and its store is reachable")
async def health(request: Request) -> JSONResponse:
    version = await _service(request).configuration_version()
    return JSONResponse({"Status": "ok", "ConfigurationVersion": version})
