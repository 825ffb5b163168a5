"""Each request, measured and (with ``access_log``) logged in one line.

:class:`Observe` wraps the application's routes; the validation handler in front of them
(``fast.py``) times itself and reports through :meth:`Observe.done`, so that the hot path carries
one layer fewer. Both sit behind :class:`~.addresses.ClientAddress`, so the address logged is
the settled one. It records the request's duration by method and route
template (``/api/v1/users/{login}``, ``/console/users/{login}`` for the mounted console; never
the path as sent), and writes the access line:
method, path without its query string, status, duration, client address. Never a header, the
query string or a body: tokens and passwords travel only there.
"""

from __future__ import annotations

import logging
import time

from starlette.routing import Mount
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .. import metrics

access_log = logging.getLogger("sessiond.access")


def _printable(raw: bytes) -> str:
    """The path as sent (percent-encoded, no query string), with anything that is not
    printable ASCII escaped, so that a line of the log is always one request."""
    return "".join(chr(byte) if 0x20 < byte < 0x7F else f"\\x{byte:02x}" for byte in raw)


class Observe:
    def __init__(self, app: ASGIApp, *, access: bool) -> None:
        self.app = app
        self.access = access

    @staticmethod
    def _route(scope: Scope, root_path: str) -> str | None:
        """The template of the route that answered, with the path of the application it is
        mounted at (the console's ``/console``) in front; ``None`` when none matched."""
        route = scope.get("route")
        template = getattr(route, "path", None)
        if not isinstance(template, str) or isinstance(route, Mount):
            return None  # a mounted application in which no route matched
        mounted = scope.get("root_path", "")
        prefix = mounted[len(root_path) :] if mounted.startswith(root_path) else ""
        return prefix + template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        root_path = scope.get("root_path", "")
        status = 500  # what the server answers when the application fails before answering

        async def send_observed(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_observed)
        finally:
            self.done(scope, self._route(scope, root_path), status, time.perf_counter() - started)

    def done(self, scope: Scope, route: str | None, status: int, seconds: float) -> None:
        """Record one answered request (the validation handler in front calls this too)."""
        method = scope["method"]
        metrics.request_done(method, route, seconds)
        if self.access:
            self._log(scope, method, status, seconds)

    @staticmethod
    def _log(scope: Scope, method: str, status: int, seconds: float) -> None:
        raw = scope.get("raw_path") or scope["path"].encode("utf-8")
        path = _printable(raw.partition(b"?")[0])
        client = scope.get("client")
        address = client[0] if client else "-"
        duration_ms = round(seconds * 1000, 3)
        access_log.info(
            "%s %s %d %.1fms %s",
            _printable(method.encode("latin-1", "replace")),
            path,
            status,
            duration_ms,
            address,
            extra={
                "method": method,
                "path": path,
                "status": status,
                "duration_ms": duration_ms,
                "client": address,
            },
        )
