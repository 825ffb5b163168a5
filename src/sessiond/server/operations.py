"""Routes for operators and their tools: health, liveness, readiness, metrics, and the API page.

- ``GET /api/v1/health/live``: the process answers; nothing else is asked (not the store).
- ``GET /api/v1/health/ready``: the store answers and its schema is this sessiond's
  (:func:`~sessiond.store.health.readiness`); ``503 service_unavailable`` otherwise, or
  ``503 store_read_only`` when the database it reaches is a standby or read-only.
- ``GET /api/v1/health``: the combined check, asked of the store at every call as readiness
  is, within :data:`HEALTH_TIMEOUT` (never a remembered answer), with the configuration
  version.
- ``GET /metrics``: Prometheus text format (:mod:`sessiond.metrics`), unless the ``metrics``
  setting is off (then there is no such route); only to a client address in ``metrics_allow``
  (loopback unless set), and never to a request a proxy forwarded while no proxy is trusted
  (behind a reverse proxy on the same machine every caller would look like loopback).
- ``GET /api/v1/docs``: Swagger UI, with its script and style served from the package
  (``static/swagger-ui``), so the page needs no other server; its Content-Security-Policy
  allows nothing else and forbids framing (:func:`docs_headers`).
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
from pathlib import Path
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from .. import metrics
from ..errors import ServiceUnavailable, StoreReadOnly
from ..service import SessionService
from ..settings import Settings
from ..store.health import READY_TIMEOUT, Readiness, readiness
from .addresses import Network, networks
from .render import body_response, error_body, error_response
from .schemas import ErrorBody

HEALTH_PATH = "/api/v1/health"
LIVE_PATH = "/api/v1/health/live"
READY_PATH = "/api/v1/health/ready"
METRICS_PATH = "/metrics"
DOCS_PATH = "/api/v1/docs"
STATIC_PATH = "/api/v1/docs/static"
STATIC_DIR = Path(__file__).parent / "static" / "swagger-ui"
#: How long the combined health check waits for the store before it answers 503: well within
#: the container's health check (4 s), and short enough for a load balancer's probe.
HEALTH_TIMEOUT = 2.0
#: The files of STATIC_DIR the API page uses; nothing else there is served.
STATIC_FILES = ("swagger-ui-bundle.js", "swagger-ui.css", "favicon-32x32.png")

router = APIRouter(redirect_slashes=False)


def _service(request: Request) -> SessionService:
    service: SessionService = request.app.state.service
    return service


@router.get(
    LIVE_PATH,
    summary="Liveness: the process answers (the store is not asked)",
    description='Always `200 {"Status":"ok"}` while the process can answer at all. Restart the '
    "process when it does not; an unreachable store is not a reason (see /health/ready).",
)
async def live() -> JSONResponse:
    return JSONResponse({"Status": "ok"})


@router.get(
    READY_PATH,
    summary="Readiness: the store answers and its schema is current",
    description="`200` when the store can be read and its schema is at the revision this "
    "sessiond needs; otherwise `503 service_unavailable` with `details.reason` "
    "(`store_unreachable`, `schema_not_current`), or `503 store_read_only` when the database "
    "it reaches is a standby. Send traffic to a node only while it is ready.",
    responses={503: {"model": ErrorBody}},
)
async def ready(request: Request) -> JSONResponse:
    result = await _readiness(_service(request), READY_TIMEOUT)
    if isinstance(result, JSONResponse):
        return result
    revisions = ", ".join(result.revisions) if result is not None else None
    return JSONResponse({"Status": "ready", "SchemaRevision": revisions})


@router.get(
    HEALTH_PATH,
    summary="Combined health: the process answers and its store answers now",
    description="The store is asked at every call, as by /health/ready, within "
    f"{HEALTH_TIMEOUT:g} s: `200` with the configuration version, or `503 "
    "service_unavailable` with `details.reason` (`store_unreachable`, `schema_not_current`), "
    "or `503 store_read_only` (a standby). For probes, see /health/live (the process alone) "
    "and /health/ready.",
    responses={503: {"model": ErrorBody}},
)
async def health(request: Request) -> JSONResponse:
    service = _service(request)
    result = await _readiness(service, HEALTH_TIMEOUT)
    if isinstance(result, JSONResponse):
        return result
    version = await service.configuration.version()
    return JSONResponse({"Status": "ok", "ConfigurationVersion": version})


async def _readiness(service: SessionService, within: float) -> Readiness | JSONResponse | None:
    """The store asked now, within ``within`` seconds: its readiness, or the 503 to answer
    (None: a store without a database behind it)."""
    engine = getattr(service.store, "engine", None)
    if engine is None:
        return None
    result = await readiness(engine, within)
    if result.ready:
        return result
    details: dict[str, Any] = {"reason": result.reason}
    if result.reason == "schema_not_current":
        details["SchemaRevision"] = ", ".join(result.revisions) or None
        details["ExpectedRevision"] = ", ".join(result.expected)
    kind = StoreReadOnly if result.reason == "store_read_only" else ServiceUnavailable
    return error_response(kind(result.message, details=details))


def _allowed(host: str, allowed: list[Network]) -> bool:
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    return any(address in network for network in allowed)


#: Headers a proxy adds to say whom it forwards for.
_FORWARDING = frozenset({b"x-forwarded-for", b"forwarded", b"x-real-ip"})


def _not_allowed(message: str) -> JSONResponse:
    return body_response(403, error_body("address_not_allowed", message))


def _metrics_route(settings: Settings) -> Any:
    allowed = networks(settings.metrics_allow)
    proxies_trusted = bool(settings.trusted_proxies)

    async def scrape(request: Request) -> Response:
        # The client address is the settled one (trusted_proxies applied), as everywhere.
        host = request.client.host if request.client else ""
        if not proxies_trusted and any(name in _FORWARDING for name, _ in request.scope["headers"]):
            return _not_allowed(
                "this request came through a proxy, so its sender is not known: scrape "
                "sessiond directly, or list the proxy in trusted_proxies"
            )
        if not _allowed(host, allowed):
            return _not_allowed(
                f"the address {host or '(none)'} may not read the metrics; an operator can "
                "add it to the metrics_allow setting"
            )
        await metrics.refresh(_service(request))
        content, media_type = metrics.exposition()
        return Response(content, media_type=media_type)

    return scrape


def docs_headers(page: bytes) -> dict[str, str]:
    """The API page's security headers: its script, style and images only from this server
    (the one inline script, which starts Swagger UI, allowed by its hash), its requests only to
    this server, and no framing by anyone. Swagger UI draws its icons from ``data:`` images in
    its style sheet: those are allowed too, nothing else."""
    hashes = " ".join(
        "'sha256-" + base64.b64encode(hashlib.sha256(script).digest()).decode() + "'"
        for script in _INLINE_SCRIPT.findall(page)
    )
    policy = (
        f"default-src 'none'; script-src 'self' {hashes}; style-src 'self'; "
        "img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; "
        "form-action 'self'; base-uri 'none'"
    )
    return {
        "Content-Security-Policy": policy,
        "X-Frame-Options": "DENY",
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cross-Origin-Opener-Policy": "same-origin",
    }


_INLINE_SCRIPT = re.compile(rb"<script>(.*?)</script>", re.DOTALL)


def _docs_page(openapi_url: str) -> Any:
    page = get_swagger_ui_html(
        openapi_url=openapi_url,
        title="sessiond - API",
        swagger_js_url=f"{STATIC_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{STATIC_PATH}/swagger-ui.css",
        swagger_favicon_url=f"{STATIC_PATH}/favicon-32x32.png",
        # No validator badge: it would send the document to validator.swagger.io.
        swagger_ui_parameters={"validatorUrl": None},
    ).body
    headers = docs_headers(bytes(page))

    async def docs() -> HTMLResponse:
        return HTMLResponse(page, headers=headers)

    return docs


async def _static(name: str) -> FileResponse:
    if name not in STATIC_FILES:
        raise StarletteHTTPException(404, detail="no such route")
    return FileResponse(STATIC_DIR / name, headers={"X-Content-Type-Options": "nosniff"})


def install(app: FastAPI, settings: Settings) -> None:
    """Add the operators' routes to ``app`` (which must have its ``openapi_url``)."""
    app.include_router(router)
    if settings.metrics:
        app.add_api_route(
            METRICS_PATH, _metrics_route(settings), methods=["GET"], include_in_schema=False
        )
    assert app.openapi_url is not None
    app.add_api_route(
        DOCS_PATH, _docs_page(app.openapi_url), methods=["GET"], include_in_schema=False
    )
    app.add_api_route(f"{STATIC_PATH}/{{name}}", _static, methods=["GET"], include_in_schema=False)
