"""The validation route as a plain ASGI handler, in front of the framework.

``GET /api/v1/sessions/current`` runs on every request the platform makes, so it skips FastAPI's
routing, dependency solving and middleware stack: it reads the header, asks the service, and
writes the JSON answer with the same headers and error bodies as every other route. Any other
request passes through to the application untouched. This is the route's only implementation;
the OpenAPI document describes it (``app.py``).

The caller's address is ``scope["client"]``, settled by :class:`~.addresses.ClientAddress` in
front of this handler; the token comes from :func:`~.headers.session_header`, as on every route.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from starlette.types import Receive, Scope, Send

from ..errors import SessiondError, SessionRequired
from ..service import SessionService
from ..store import SessionRecord
from .headers import configuration_version, session_header
from .observe import Observe
from .render import JSON_CONTENT_TYPE, compact, error_bytes, platform_headers

log = logging.getLogger("sessiond.server")


PATH = "/api/v1/sessions/current"


class FastValidation:
    def __init__(
        self,
        app: Observe,
        service: SessionService,
        render: Callable[[SessionRecord], dict[str, Any]],
    ) -> None:
        self.app = app  # the application, observed; this handler reports to it
        self.service = service
        self.render = render  # SessionRecord -> dict, shared with the routes' session list

    def _view(self, record: SessionRecord) -> bytes:
        """The answer's body; the service remembers it with the session."""
        return compact(self.render(record))

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] != PATH or scope["method"] != "GET":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        client = scope.get("client")
        address = client[0] if client else None
        try:
            auth = session_header(scope["headers"])
            if not auth:
                raise SessionRequired()
            status, payload = (
                200,
                await self.service.sessions.validate_view(auth, address, self._view),
            )
        except SessiondError as exc:
            status, payload = exc.status, error_bytes(exc)
        except Exception:
            log.exception("unexpected error validating a session")
            status, payload = 500, error_bytes(None)
        version = self.service.configuration.fresh_version()
        if version is None:  # due for a read (at most once per poll interval)
            # A 503 is the store failing: the last version known, not one more wait on it.
            version = await configuration_version(self.service, read=status != 503)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    JSON_CONTENT_TYPE,
                    (b"content-length", str(len(payload)).encode()),
                    *platform_headers(version),
                ],
            }
        )
        await send({"type": "http.response.body", "body": payload})
        self.app.done(scope, PATH, status, time.perf_counter() - started)
