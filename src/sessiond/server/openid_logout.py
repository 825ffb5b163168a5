"""OpenID Connect Back-Channel Logout 1.0's route: the provider posts a logout token, the
service closes that provider session's platform sessions. Refusals are in the shape the
specification asks for — ``{"error": "invalid_request", "error_description": ...}`` with 400 —
and carry sessiond's stable ``code`` (and ``details``) beside it."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..errors import OpenIdLogoutTokenInvalid, SessiondError
from ..service import SessionService

router = APIRouter(prefix="/api/v1/openid", redirect_slashes=False)

NO_STORE = {"Cache-Control": "no-store"}
#: The OAuth error each status is answered with (the specification names invalid_request).
_OAUTH_ERRORS = {400: "invalid_request", 404: "invalid_request", 503: "temporarily_unavailable"}


@router.post(
    "/{provider}/backchannel-logout",
    summary="OpenID Connect Back-Channel Logout: the provider closes its session's sessions",
    description="Form field `logout_token` (application/x-www-form-urlencoded), a logout token "
    "signed by the provider: its platform sessions of that provider session (`sid`), or of "
    "all its sessions of that account when only `sub` is given, are closed. 200 with "
    '`Cache-Control: no-store`. Refusals: 400 `{"error": "invalid_request", '
    '"error_description", "code"}` with code openid_logout_token_invalid, '
    "openid_logout_token_replayed or openid_provider_unknown; 503 openid_provider_unavailable.",
    responses={
        200: {"description": "the provider session's platform sessions are closed"},
        400: {"description": "the logout token was refused"},
        503: {"description": "the provider's keys could not be fetched"},
    },
)
async def backchannel_logout(provider: str, request: Request) -> JSONResponse:
    service: SessionService = request.app.state.service
    try:
        token = (await request.form()).get("logout_token")
        if not isinstance(token, str) or not token:
            raise OpenIdLogoutTokenInvalid(
                "send the logout token in the form field logout_token "
                "(application/x-www-form-urlencoded)",
                details={"provider": provider},
            )
        await service.openid_logout.logout(provider, token)
    except SessiondError as exc:
        return JSONResponse(_refusal(exc), status_code=exc.status, headers=NO_STORE)
    return JSONResponse({}, headers=NO_STORE)


def _refusal(error: SessiondError) -> dict[str, Any]:
    body: dict[str, Any] = {
        "error": _OAUTH_ERRORS.get(error.status, "server_error"),
        "error_description": error.public_message,
        "code": error.code,
    }
    if error.details:
        body["details"] = error.details
    return body
