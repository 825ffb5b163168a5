"""What the edge writes, written once: error bodies, the platform's headers on every answer,
and the JSON shapes of sessions and users. The API's routes, the fast validation path, the
HTTP protocol's own refusals (before any application runs), the operations routes, the console's
scripts and the CLI all take them from here, so that a refusal reads the same whoever answers it.

The error body is ``{"error": {"code", "message", "details"}}`` (``SessiondError.to_dict``:
the message is the public one, never the audit reason).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from fastapi.responses import JSONResponse

from .._version import __version__
from ..errors import INTERNAL_ERROR_BODY, SessiondError
from ..store import SessionRecord, UserRecord
from ..wire import CONFIGURATION_VERSION_HEADER, SERVER_VERSION_HEADER, format_time

JSON_CONTENT_TYPE = (b"content-type", b"application/json")
_SERVER_VERSION = (SERVER_VERSION_HEADER.lower().encode(), __version__.encode())
_CONFIGURATION_VERSION = CONFIGURATION_VERSION_HEADER.lower().encode()


# --- error bodies --------------------------------------------------------------------------


def compact(body: Any) -> bytes:
    """JSON as every answer writes it: compact, UTF-8."""
    return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()


def error_body(code: str, message: str, details: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The error body for a refusal that has no error class of its own (the HTTP layer's)."""
    body: dict[str, Any] = {"code": code, "message": message}
    if details:
        body["details"] = dict(details)
    return {"error": body}


def error_bytes(error: SessiondError | None) -> bytes:
    """The body of ``error`` (None: an unexpected fault, the generic 500 body)."""
    return compact(INTERNAL_ERROR_BODY if error is None else error.to_dict())


def error_response(error: SessiondError, headers: Mapping[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error.to_dict(), status_code=error.status, headers=headers or None)


def body_response(status: int, body: dict[str, Any]) -> JSONResponse:
    """An error body built by :func:`error_body` (or the 500 body) as a response."""
    return JSONResponse(body, status_code=status)


# --- the platform's headers ----------------------------------------------------------------


def platform_headers(configuration_version: int | str) -> list[tuple[bytes, bytes]]:
    """``Tessa-Configuration-Version`` and ``Tessa-Server-Version``: on every answer, error or
    not, from every path that answers."""
    return [(_CONFIGURATION_VERSION, str(configuration_version).encode()), _SERVER_VERSION]


# --- JSON shapes ---------------------------------------------------------------------------


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
        "Created": format_time(t.created),
        "Expires": format_time(t.expires),
        "LastActivity": format_time(record.last_activity),
        "HostIP": t.host_ip,
    }


def user_info(user: UserRecord) -> dict[str, Any]:
    return {
        "ID": str(user.id),
        "Login": user.login,
        "Name": user.name,
        "AccessLevel": user.access_level.wire,
        "LoginType": user.login_type.wire,
        "Account": user.account,
        "Blocked": user.blocked,
        "BlockedDueDate": format_time(user.blocked_due_date) if user.blocked_due_date else None,
        "PersonalClient": user.personal_client,
        "PersonalWeb": user.personal_web,
        "TimeZoneUtcOffsetMinutes": user.time_zone_utc_offset,
        "Created": format_time(user.created),
    }
