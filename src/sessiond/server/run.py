"""Running the server: bind the address first, then serve on it with uvicorn.

``sessiond serve`` binds its socket before it touches the store, so that an address it cannot
have (a port in use) ends the start at once, with one line and exit status
:data:`CANNOT_LISTEN`, and it says it is listening only once uvicorn serves on that socket.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import signal
import socket
from collections.abc import Callable

import uvicorn

from ..auth.environment import apply_process_environment
from ..settings import Settings
from .app import create_asgi
from .connections import check_open_files
from .protocol import http_protocol

log = logging.getLogger("sessiond.server")

#: Exit status of ``sessiond serve`` when it cannot listen on its address: a port in use, a
#: port it may not bind, a host that is not one of this machine's addresses. It is the command
#: line's "something cannot be reached" (cli.py, docs/operator.md "Exit statuses"), and
#: uvicorn's own status for a start that failed.
CANNOT_LISTEN = 3


class CannotListen(Exception):
    """The address cannot be bound; ``code`` and ``message`` say why and what to change."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def address(host: str, port: int) -> str:
    """``http://host:port``, with an IPv6 host in brackets."""
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


def bind(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening: until the server is ready,
    connections are refused rather than left waiting)."""
    where = f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        reason = exc.strerror or str(exc)
        if exc.errno == errno.EADDRINUSE:
            raise CannotListen(
                "port_in_use",
                f"cannot listen on {where}: port {port} is in use by another program; stop "
                "that program, or choose another port with the port setting (--port, "
                "SESSIOND_PORT)",
            ) from None
        if exc.errno == errno.EACCES:
            raise CannotListen(
                "cannot_listen",
                f"cannot listen on {where}: permission denied (ports below 1024 need "
                "privileges); choose another port with the port setting (--port, SESSIOND_PORT)",
            ) from None
        raise CannotListen(
            "cannot_listen",
            f"cannot listen on {where}: {reason}; check the host setting (--host, "
            "SESSIOND_HOST) and the port setting (--port, SESSIOND_PORT)",
        ) from None
    return sock


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, on_listening: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_listening = on_listening

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started:  # the application started and the socket accepts connections
            self._on_listening()

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await super().shutdown(sockets)
        # A clean stop on SIGTERM ends with status 0, as systemd expects of a service; uvicorn
        # would raise the signal again once it has shut down, which ends the process with 143.
        self._captured_signals = [s for s in self._captured_signals if s != signal.SIGTERM]


def serve(settings: Settings, sock: socket.socket, on_listening: Callable[[str], None]) -> None:
    """Serve on ``sock`` until stopped; ``on_listening(url)`` once connections are accepted.
    Logging must be set up already (:func:`sessiond.logs.configure`)."""
    port = sock.getsockname()[1]
    url = address(settings.host, port)
    # KRB5_CONFIG and NTLM_USER_FILE, once, before anything makes a Kerberos call.
    apply_process_environment(settings)
    # The open-files limit must cover max_connections: raised if it can be, a warning if not.
    check_open_files(settings)

    def listening() -> None:
        log.info("listening on %s", url)
        on_listening(url)

    config = uvicorn.Config(
        create_asgi(settings),
        host=settings.host,
        port=port,
        log_config=None,  # sessiond.logs has configured logging
        access_log=False,  # sessiond's own access log (access_log setting) replaces uvicorn's
        lifespan="on",
        # The client address comes from sessiond's own trusted_proxies rule (server/addresses.py)
        # alone: uvicorn's would rewrite it first, trusting X-Forwarded-For from loopback.
        proxy_headers=False,
        # httptools with limits on the size of a request head, the time a head and a body take
        # to arrive, and the connections open at once (server/protocol.py).
        http=http_protocol(settings),
    )
    server = _Server(config, listening)
    # If the application fails to start, uvicorn logs why and exits with status 3.
    with contextlib.suppress(KeyboardInterrupt):  # Ctrl+C: uvicorn has shut down cleanly
        server.run(sockets=[sock])
