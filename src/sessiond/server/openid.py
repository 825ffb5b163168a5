"""OpenID Connect's HTTP routes: the providers a client may sign in with, and the exchange of
a provider's token for a session. Each parses, calls the service, renders."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse

from ..service import SessionService
from ..wire import OpenIdProviderInfo
from .bodies import CheckedBodyRoute
from .routes import client_address, opened_body
from .schemas import ErrorBody, OpenIdExchangeRequest, OpenSessionResponse

router = APIRouter(prefix="/api/v1/openid", redirect_slashes=False, route_class=CheckedBodyRoute)

_ERRORS: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody} for status in (400, 401, 403, 409, 429, 501, 503)
}


def _service(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


@router.get(
    "/providers",
    response_model=list[OpenIdProviderInfo],
    summary="The OpenID Providers one may sign in with (anonymous)",
)
async def providers(request: Request) -> JSONResponse:
    found = _service(request).openid.providers()
    return JSONResponse([p.model_dump() for p in found])


@router.post(
    "/exchange",
    response_model=OpenSessionResponse,
    responses=_ERRORS,
    summary="Open a session with a provider's ID token (or JWT access token)",
    description="The token is checked (signature by the provider's keys, issuer, audience, "
    "azp, times, algorithm, nonce when given), its account mapped to a user, and a session "
    "opened as by /api/v1/sessions/open, with the same answer. Refusals: 400 "
    "openid_provider_unknown, 401 openid_token_invalid, 403 account_not_mapped, 503 "
    "openid_provider_unavailable (details.provider).",
)
async def exchange(request: Request, body: OpenIdExchangeRequest) -> JSONResponse:
    opened = await _service(request).openid.exchange(
        body.Provider,
        body.Token,
        body.TokenType,
        body.Nonce,
        body.client_info(request.headers.get("user-agent")),
        client_address(request),
    )
    return JSONResponse(opened_body(opened))
