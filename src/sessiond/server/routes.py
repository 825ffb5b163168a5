"""HTTP routes. Each one parses, calls the service, renders: nothing else lives here."""

from __future__ import annotations

import base64
import binascii
import contextlib
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from ..auth import PasswordCredentials
from ..auth.negotiate import AuthorizationToken, HandshakeId, negotiate_headers
from ..errors import AuthenticationError, NegotiateRequired, RequestError, SessionRequired
from ..models import (
    AccessLevel,
    AuditAction,
    DeviceType,
    LicenseType,
    LoginType,
    ServiceType,
    WireEnum,
)
from ..service import Actor, Opened, SessionService
from ..store import AuditQuery, AuditRecord, SessionOrder, SessionQuery, SessionRecord
from ..wire import NEGOTIATE_ID_HEADER, NEXT_PAGE_HEADER, format_time
from .bodies import CheckedBodyRoute
from .headers import AUTHORIZATION_HEADER, session_header, single_header
from .render import session_info, user_info
from .schemas import (
    AddUserRequest,
    BlockRequest,
    ChangePasswordRequest,
    ClosedResponse,
    ConfigurationInfoBody,
    ErrorBody,
    OpenSessionRequest,
    OpenSessionResponse,
    SessionInfo,
    SetPasswordRequest,
    UpdateUserRequest,
    UserBody,
)

router = APIRouter(prefix="/api/v1", redirect_slashes=False, route_class=CheckedBodyRoute)


_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 404, 409, 422, 429, 501, 503)
}
_SECURED: dict[str, Any] = {"security": [{"TessaSession": []}]}


def _service(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


def client_address(request: Request) -> str | None:
    """``scope["client"]``, which :class:`~.addresses.ClientAddress` has already settled."""
    return request.client.host if request.client else None


def _auth_text(request: Request) -> str:
    text = session_header(request.scope["headers"])
    if not text:
        raise SessionRequired()
    return text


async def _session(request: Request) -> SessionRecord:
    return await _service(request).sessions.validate(_auth_text(request), client_address(request))


async def _actor(request: Request) -> Actor:
    return Actor.of(await _session(request), client_address(request))


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
    opened = await _service(request).signin.open_session(
        PasswordCredentials(login, password, body.Domain or None),
        body.client_info(request.headers.get("user-agent")),
        client_address(request),
    )
    return JSONResponse(opened_body(opened))


def opened_body(opened: Opened) -> dict[str, Any]:
    """The answer to a sign-in: all of it decided where the session was written, so nothing
    is read after the commit (a failure here would hide a session that was opened)."""
    token, inactivity, expires = opened.token, opened.inactivity, opened.password_expires
    return {
        "Token": token.to_xml(),
        "AuthToken": token.to_auth_xml(),
        "SessionInactivityTime": inactivity.total_seconds() if inactivity else None,
        "PasswordExpires": format_time(expires) if expires else None,
    }


@router.post(
    "/sessions/open-windows",
    response_model=OpenSessionResponse,
    responses=_ERRORS,
    summary="Open a session by integrated Windows sign-in (OpenSessionWindowsAuthAsync)",
    description="HTTP Negotiate: without `Authorization: Negotiate <token>` the answer is 401 "
    "with `WWW-Authenticate: Negotiate`; a multi-leg mechanism (NTLM) gets 401 with the "
    "challenge and a `Tessa-Negotiate-Id` to send back with the next leg. The body (optional) "
    "carries the same client parameters as /sessions/open.",
)
async def open_session_windows(request: Request) -> JSONResponse:
    raw = await request.body()
    try:
        body = OpenSessionRequest.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        raise RequestError(f"the request is malformed: {exc.errors()[0]['msg']}") from None
    opened, mutual = await _service(request).signin.open_session_negotiate(
        _negotiate_token(single_header(request.scope["headers"], AUTHORIZATION_HEADER)),
        _handshake_id(request),
        body.client_info(request.headers.get("user-agent")),
        client_address(request),
    )
    headers = negotiate_headers(mutual, challenge=False)
    return JSONResponse(opened_body(opened), headers=headers or None)


def _negotiate_token(authorization: str | None) -> AuthorizationToken | None:
    if not authorization:
        return None
    scheme, _, value = authorization.strip().partition(" ")
    if scheme.lower() not in ("negotiate", "ntlm") or not value.strip():
        return None
    try:
        return AuthorizationToken(base64.b64decode(value.strip(), validate=True), scheme)
    except (binascii.Error, ValueError):
        raise RequestError("the Authorization: Negotiate token is not base64") from None


def _handshake_id(request: Request) -> HandshakeId:
    # Browsers and curl send no Tessa-Negotiate-Id; NTLM's legs share their TCP connection.
    client = request.client
    connection = f"{client.host}:{client.port}" if client else None
    return HandshakeId(request.headers.get(NEGOTIATE_ID_HEADER), connection)


@router.post(
    "/sessions/change-password",
    responses=_ERRORS,
    summary="A platform user changes their own password (also an expired one)",
    description="No session is needed (the password may have expired). The user's other "
    "sessions end; with the Tessa-Session header of one of them, that one stays open.",
)
async def change_password(request: Request, body: ChangePasswordRequest) -> JSONResponse:
    service = _service(request)
    current = None
    if session_header(request.scope["headers"]):
        # The session this change comes from stays open; the user's others end. A session
        # that no longer validates keeps nothing and stops nothing.
        with contextlib.suppress(AuthenticationError):
            current = (await _session(request)).id
    user = await service.signin.change_password(
        body.Login, body.OldPassword, body.NewPassword, client_address(request), current
    )
    return JSONResponse({"Changed": True, "Login": user.login})


@router.post(
    "/sessions/close",
    response_model=ClosedResponse,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Close the current session (CloseSessionAsync)",
)
async def close_session(request: Request) -> JSONResponse:
    closed = await _service(request).sessions.close_session(
        _auth_text(request), client_address(request)
    )
    return JSONResponse({"Closed": closed})


@router.delete(
    "/sessions/{session_id}",
    response_model=ClosedResponse,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Close any session as administrator (CloseSessionAsAdminAsync)",
    description="Administrators close any session; a regular user closes only sessions of "
    "their own (another user's: 403 admin_required).",
)
async def close_session_as_admin(request: Request, session_id: UUID) -> JSONResponse:
    actor = await _actor(request)
    closed = await _service(request).sessions.close_session_as_admin(actor, session_id)
    return JSONResponse({"Closed": closed})


@router.get(
    "/sessions",
    response_model=list[SessionInfo],
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="List open sessions",
    description="Administrators see every open session (or one user's, by user_id); a "
    "regular user sees their own.",
)
async def list_sessions(
    request: Request,
    user_id: UUID | None = None,
    user: Annotated[str | None, Query(max_length=256, description="name starts with")] = None,
    license_type: str | None = None,
    application_id: UUID | None = None,
    service_type: str | None = None,
    device_type: str | None = None,
    address: Annotated[str | None, Query(max_length=64)] = None,
    order: SessionOrder = "created",
    descending: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 1000,
    after: Annotated[str | None, Query(max_length=512, description="a Tessa-Next-Page")] = None,
) -> JSONResponse:
    actor = await _actor(request)
    query = SessionQuery(
        user_id=user_id,
        user_name=user,
        license_type=_enum(LicenseType, license_type, "license_type"),
        application_id=application_id,
        service_type=_enum(ServiceType, service_type, "service_type"),
        device_type=_enum(DeviceType, device_type, "device_type"),
        client_address=address,
        order=order,
        descending=descending,
    )
    records, next_page = await _service(request).sessions.page(actor, query, after, limit)
    headers = {NEXT_PAGE_HEADER: next_page} if next_page else None
    return JSONResponse([session_info(r) for r in records], headers=headers)


@router.get(
    "/configuration",
    response_model=ConfigurationInfoBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="The configuration version and build information",
)
async def configuration(request: Request) -> JSONResponse:
    await _session(request)
    info = await _service(request).configuration.get()
    return JSONResponse(info.to_dict())


@router.get(
    "/configuration/changes",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Wait for the configuration version to pass a value (long poll)",
    description="Answers as soon as the version is greater than `after`, or after `wait` "
    'seconds (at most 60): `{"Version": n, "Changed": bool}`. Ask again with the '
    "version you got to keep listening.",
)
async def configuration_changes(request: Request, after: int, wait: float = 30.0) -> JSONResponse:
    await _session(request)
    version = await _service(request).configuration.wait_for_change(after, wait)
    return JSONResponse({"Version": version, "Changed": version > after})


@router.post(
    "/configuration/increment-version",
    response_model=ConfigurationInfoBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Increment the configuration version (IncrementConfigurationVersionAsync)",
)
async def increment_configuration_version(request: Request) -> JSONResponse:
    actor = await _actor(request)
    info = await _service(request).configuration.increment(actor)
    return JSONResponse(info.to_dict())


# --- users (administrators) ------------------------------------------------------------------


def _enum(cls: type[WireEnum], value: str | int | None, field: str) -> Any:
    if value is None:
        return None
    try:
        return cls.from_wire(value)
    except ValueError as exc:
        raise RequestError(f"{field}: {exc}") from None


@router.get(
    "/users",
    response_model=list[UserBody],
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="List users (administrators)",
)
async def list_users(request: Request) -> JSONResponse:
    users = await _service(request).users.list_users(await _actor(request))
    return JSONResponse([user_info(u) for u in users])


@router.post(
    "/users",
    response_model=UserBody,
    status_code=201,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Add a user (administrators)",
)
async def add_user(request: Request, body: AddUserRequest) -> JSONResponse:
    actor = await _actor(request)
    user = await _service(request).users.add_user(
        actor,
        body.Login,
        name=body.Name,
        password=body.Password,
        access_level=_enum(AccessLevel, body.AccessLevel, "AccessLevel"),
        login_type=_enum(LoginType, body.LoginType, "LoginType"),
        account=body.Account,
    )
    return JSONResponse(user_info(user), status_code=201)


@router.patch(
    "/users/{login}",
    response_model=UserBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Change a user's name, access level, login type or account (administrators)",
)
async def update_user(request: Request, login: str, body: UpdateUserRequest) -> JSONResponse:
    actor = await _actor(request)
    service = _service(request)
    user = await service.users.update_user(
        actor,
        login,
        name=body.Name,
        access_level=_enum(AccessLevel, body.AccessLevel, "AccessLevel"),
        login_type=_enum(LoginType, body.LoginType, "LoginType"),
        account=body.Account,
        time_zone_utc_offset=body.TimeZoneUtcOffsetMinutes,
        personal={
            LicenseType.PERSONAL_CLIENT: body.PersonalClient,
            LicenseType.PERSONAL_WEB: body.PersonalWeb,
        },
    )
    return JSONResponse(user_info(user))


@router.post(
    "/users/{login}/password",
    response_model=UserBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Set a platform user's password (administrators)",
)
async def set_password(request: Request, login: str, body: SetPasswordRequest) -> JSONResponse:
    actor = await _actor(request)
    user = await _service(request).users.set_password(actor, login, body.Password)
    return JSONResponse(user_info(user))


@router.post(
    "/users/{login}/block",
    response_model=UserBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Block a user from signing in (administrators)",
)
async def block_user(request: Request, login: str, body: BlockRequest) -> JSONResponse:
    actor = await _actor(request)
    until = body.Until.replace(tzinfo=body.Until.tzinfo or UTC) if body.Until else None
    user = await _service(request).users.set_blocked(actor, login, True, until)
    return JSONResponse(user_info(user))


@router.post(
    "/users/{login}/unblock",
    response_model=UserBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Lift a user's block (administrators)",
)
async def unblock_user(request: Request, login: str) -> JSONResponse:
    actor = await _actor(request)
    user = await _service(request).users.set_blocked(actor, login, False)
    return JSONResponse(user_info(user))


@router.delete(
    "/users/{login}/sessions",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Close every session of a user (administrators)",
)
async def close_user_sessions(request: Request, login: str) -> JSONResponse:
    closed = await _service(request).close_user_sessions(await _actor(request), login)
    return JSONResponse({"ClosedSessions": closed})


@router.delete(
    "/users/{login}",
    response_model=UserBody,
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Remove a user (administrators)",
    description="The user's sessions end and the user row goes; every audit record about the "
    "user stays (it carries the user's id and name), with a UserRemoved record.",
)
async def remove_user(request: Request, login: str) -> JSONResponse:
    user = await _service(request).users.remove_user(await _actor(request), login)
    return JSONResponse(user_info(user))


def audit_info(record: AuditRecord) -> dict[str, Any]:
    return {
        "ID": record.id,
        "At": format_time(record.at),
        "Action": record.action.wire,
        "SessionID": str(record.session_id) if record.session_id else None,
        "UserID": str(record.user_id) if record.user_id else None,
        "UserName": record.user_name,
        "ActorID": str(record.actor_id) if record.actor_id else None,
        "ActorName": record.actor_name,
        "ClientAddress": record.client_address,
        "Details": record.details,
    }


@router.get(
    "/audit",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Read the audit trail (administrators)",
    description="Filters: action (repeatable), user_id, user (the recorded name, ignoring "
    "case), since and until (ISO 8601). Oldest first, after the id `after`; or newest first "
    '(`newest_first=true`), before the id `before`. Answers `{"Records": [...], "Next": id}`; '
    "Next is the id to pass as after (or before) for the next page, or null.",
)
async def audit_records(
    request: Request,
    action: Annotated[list[str] | None, Query()] = None,
    user_id: UUID | None = None,
    user: Annotated[str | None, Query(max_length=256)] = None,
    since: datetime | None = None,
    until: datetime | None = None,
    after: int | None = None,
    before: int | None = None,
    newest_first: bool = False,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> JSONResponse:
    actor = await _actor(request)
    query = AuditQuery(
        actions=tuple(_enum(AuditAction, a, "action") for a in action or ()),
        user_id=user_id,
        user_name=user,
        since=_aware(since),
        until=_aware(until),
        after_id=after,
        before_id=before,
        newest_first=newest_first,
    )
    records, next_id = await _service(request).audit.page(actor, query, limit)
    return JSONResponse({"Records": [audit_info(r) for r in records], "Next": next_id})


@router.get(
    "/audit/head",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="The audit trail's head (administrators)",
    description='Answers `{"LastID": id, "LastHash": hash, "Head": "ID:HASH"}`: keep Head '
    "somewhere the database's writers cannot reach, and check the trail against it later "
    "with `sessiond audit verify --head ID:HASH`.",
)
async def audit_head(request: Request) -> JSONResponse:
    head = await _service(request).audit.head(await _actor(request))
    return JSONResponse({"LastID": head.last_id, "LastHash": head.last_hash, "Head": str(head)})


def _aware(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=value.tzinfo or UTC) if value else None


@router.get(
    "/licences",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="The installed licence and seats in use (administrators)",
)
async def licence_usage(request: Request) -> JSONResponse:
    return JSONResponse(await _service(request).licensing.usage(await _actor(request)))


@router.post(
    "/licences/reload",
    responses=_ERRORS,
    openapi_extra=_SECURED,
    summary="Reinstall the configured licence file (administrators)",
)
async def reload_licence(request: Request) -> JSONResponse:
    licence = await _service(request).licensing.reload(await _actor(request))
    return JSONResponse({"Licence": licence.to_dict()})
