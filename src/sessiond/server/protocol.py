"""uvicorn's httptools protocol with limits on the request head, the request body's time, and
the number of open connections.

uvicorn's httptools protocol bounds neither the size of a request head (httptools gathers a
header's value whole, however long), nor the time a head or a body may take to arrive, nor how
many connections are open. This subclass:

- counts the bytes of the current head as they arrive, before the parser sees them, and feeds
  the parser no more than the limit: a head over ``max_request_head_bytes`` is answered
  ``431 request_head_too_large`` without ever being buffered whole;
- answers ``408 request_timeout`` when a head has not completed ``request_head_timeout`` after
  its first byte (or, for the first request, after the connection opened);
- answers ``408 request_timeout`` when a body has not completed ``request_body_timeout`` after
  its head (the application is told the client left: its ``receive`` returns
  ``http.disconnect``); if the application has already begun its answer, the connection is
  only closed;
- counts open connections (:class:`~sessiond.server.connections.ConnectionLimits`) and answers
  a connection over ``max_connections`` ``503 server_busy``, or over
  ``max_connections_per_address`` ``429 too_many_connections``, as soon as it opens, with
  ``Retry-After``.

Every one of these answers closes the connection. Between requests, a kept-alive connection is
governed by uvicorn's ``timeout_keep_alive`` as before, and a slow application by nothing here.
The body's time starts at the end of the read in which its head ended, and a body queued behind
a pipelined request waits for it without losing time. A head that begins in the same read as
the end of the request before it (pipelining) is counted from the next read on: the parser may
hold that one read's share of it (at most the limit, or one read of 256 KiB after a body)
beyond the limit.
"""

from __future__ import annotations

import asyncio
from typing import Any, ClassVar

from uvicorn.config import Config
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import ServerState

from ..errors import RequestError, RequestHeadTooLarge, RequestTimeout, SessiondError
from ..settings import Settings
from .connections import MAX_LINGERING, RETRY_AFTER_SECONDS, ConnectionLimits, limits_for
from .render import error_bytes

# After a refusal, what the client still sends is read and dropped for this long before the
# connection closes: closing a socket with unread data resets it, and a reset can destroy the
# answer before the client reads it.
LINGER_SECONDS = 2.0


class LimitedHttpToolsProtocol(HttpToolsProtocol):
    """:class:`HttpToolsProtocol` with a size and a time limit on each request head, a time
    limit on each body, and limits on the connections open at once."""

    max_head_bytes: ClassVar[int] = 65536
    head_timeout: ClassVar[float] = 10.0
    body_timeout: ClassVar[float] = 30.0
    #: One server's count of its connections; ``None``: no limits.
    limits: ClassVar[ConnectionLimits | None] = None

    def __init__(
        self,
        config: Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        # True while the bytes that arrive belong to a request head: from the connection's
        # start or the end of a request until the end of the next head.
        self._in_head = True
        self._head_bytes = 0
        self._head_started: float | None = None  # loop time of the head's first byte
        self._head_timer: asyncio.TimerHandle | None = None
        self._heads_ended = 0
        self._linger_timer: asyncio.TimerHandle | None = None
        self._refused = False
        self._body_timer: asyncio.TimerHandle | None = None
        self._counted = False  # whether self.limits counts this connection
        self._address_key: str | None = None
        self._lingering = False  # refused as it opened, and lingering

    # --- the connection ----------------------------------------------------------------------

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        limits = self.limits
        if limits is not None:
            peer = self.client[0] if self.client else None
            key = limits.address_key(peer)
            refusal = limits.admit(key)
            if refusal is not None:
                limits.refused(peer, refusal)
                self._refuse_at_accept(limits, refusal)
                return
            self._counted = True
            self._address_key = key
        # The first head's time runs from the connection's opening, bytes or not.
        self._head_started = self.loop.time()
        self._arm_head_timer()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger_timer is not None:
            self._linger_timer.cancel()
            self._linger_timer = None
        if self.limits is not None:
            if self._counted:
                self._counted = False
                self.limits.release(self._address_key)
            if self._lingering:
                self._lingering = False
                self.limits.lingering -= 1
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._refused:
            return  # lingering after a refusal: read and drop
        # The common case first, with no more work than the limit needs: a whole head (and
        # maybe its body) in one read, within the limit.
        if self._in_head and len(data) <= self.max_head_bytes - self._head_bytes:
            self._head_bytes += len(data)
            super().data_received(data)
            if self._in_head:
                if self._head_timer is None and not self._refused:
                    self._head_bytes_pending()
            elif self._body_timer is None:
                self._body_pending()
            return
        while True:
            if not self._in_head:
                if not self._feed(data):
                    return
                break
            if self._head_started is None:
                self._head_started = self.loop.time()
            allowed = self.max_head_bytes - self._head_bytes
            if len(data) <= allowed:
                self._head_bytes += len(data)
                if not self._feed(data):
                    return
                break
            # Feed only what the limit allows: if the head has not ended within it, the rest
            # of it is never buffered.
            head, data = data[:allowed], data[allowed:]
            self._head_bytes = self.max_head_bytes
            ended = self._heads_ended
            if head and not self._feed(head):
                return
            if self._heads_ended == ended:
                self._refuse(
                    RequestHeadTooLarge(
                        f"the request line and headers are larger than {self.max_head_bytes} bytes"
                    )
                )
                return
            # The head ended within the limit; the rest is its body or the next request.
        if self._in_head:
            if self._head_started is not None and self._head_timer is None:
                self._arm_head_timer()
        elif self._body_timer is None:
            self._body_pending()

    def _head_bytes_pending(self) -> None:
        """Part of a head arrived and the rest has not: its time runs (from its first byte,
        or from now when that went unnoticed) unless the connection is done."""
        if self._head_bytes == 0 or self.transport.is_closing():
            return  # nothing of a next head yet: the keep-alive timeout governs
        if self._head_started is None:
            self._head_started = self.loop.time()
        self._arm_head_timer()

    def _feed(self, data: bytes) -> bool:
        """Parse ``data`` as uvicorn does; ``False`` when the connection is done with it
        (a malformed request answered 400, a protocol upgrade)."""
        super().data_received(data)
        return not self.transport.is_closing() and self.transport.get_protocol() is self

    # --- parser callbacks --------------------------------------------------------------------

    def on_headers_complete(self) -> None:
        self._in_head = False
        self._heads_ended += 1
        self._head_bytes = 0
        self._head_started = None
        self._cancel_head_timer()
        super().on_headers_complete()

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        super().on_message_complete()
        # What comes next is the next request's head (its time starts with its first byte).
        self._in_head = True
        self._head_bytes = 0
        self._head_started = None

    # --- the time limit ----------------------------------------------------------------------

    def _arm_head_timer(self) -> None:
        assert self._head_started is not None
        remaining = self._head_started + self.head_timeout - self.loop.time()
        self._head_timer = self.loop.call_later(max(remaining, 0.0), self._head_timed_out)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if (
            self._refused
            or not self._in_head
            or self.transport.is_closing()
            or self.transport.get_protocol() is not self
        ):
            return
        self._refuse(
            RequestTimeout(
                f"the request line and headers did not arrive within {self.head_timeout:g} s"
            )
        )

    # --- the body's time limit ----------------------------------------------------------------

    def _body_pending(self) -> None:
        """A head ended and its body has not all arrived: the body's time runs from now."""
        transport = self.transport
        if self._refused or transport.is_closing() or transport.get_protocol() is not self:
            return  # refused, closed, or upgraded to another protocol
        self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_timed_out(self) -> None:
        self._body_timer = None
        if (
            self._refused
            or self._in_head
            or self.transport.is_closing()
            or self.transport.get_protocol() is not self
        ):
            return
        if self.pipeline:
            # This body's request waits behind another one, and uvicorn reads nothing until
            # that one is answered: the wait is the server's, so the time starts again.
            self._body_timer = self.loop.call_later(self.body_timeout, self._body_timed_out)
            return
        cycle = self.cycle
        self._refused = True
        self._cancel_head_timer()
        if cycle.response_started:
            # The application is answering without the whole body; no second answer fits.
            self.transport.close()
            return
        # The application's receive() now says the client left, and what it sends is dropped.
        cycle.disconnected = True
        cycle.message_event.set()
        self._answer(
            RequestTimeout(
                f"the request body did not arrive within {self.body_timeout:g} s of the request "
                "headers; send the whole body without pausing, or check the network between "
                "the client and the server"
            )
        )

    # --- refusing ----------------------------------------------------------------------------

    def _refuse(self, error: RequestError) -> None:
        """Answer ``error`` and close the connection."""
        self._refused = True
        self._cancel_head_timer()
        if self.cycle is not None and not self.cycle.response_complete:
            # The request before is still being answered (pipelining): an answer written now
            # would land inside that one. Close once it is done; this head gets no answer.
            self.cycle.keep_alive = False
            self.flow.pause_reading()
            return
        self._answer(error)

    def _refuse_at_accept(self, limits: ConnectionLimits, error: SessiondError) -> None:
        """Answer a connection a limit refuses as it opens, before reading anything."""
        self._refused = True
        retry = [(b"retry-after", str(RETRY_AFTER_SECONDS).encode("ascii"))]
        if limits.lingering >= MAX_LINGERING:
            # Many refused connections are lingering already: this one closes at once.
            self._answer(error, retry, linger=False)
            return
        limits.lingering += 1
        self._lingering = True
        self._answer(error, retry)

    def _answer(
        self,
        error: SessiondError,
        headers: list[tuple[bytes, bytes]] | None = None,
        *,
        linger: bool = True,
    ) -> None:
        """Write ``error`` as the answer, then close (after lingering, if ``linger``)."""
        body = error_bytes(error)
        content = [STATUS_LINE[error.status]]
        for name, value in [*self.server_state.default_headers, *(headers or ())]:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend(
            [
                b"content-type: application/json\r\n",
                b"content-length: " + str(len(body)).encode("ascii") + b"\r\n",
                b"connection: close\r\n",
                b"\r\n",
                body,
            ]
        )
        self.transport.write(b"".join(content))
        if linger and self.transport.can_write_eof():
            # Half-close, then drop what still arrives until the client closes (eof_received
            # returns nothing, so the transport closes) or the linger ends.
            self.transport.write_eof()
            self.flow.resume_reading()
            self._linger_timer = self.loop.call_later(LINGER_SECONDS, self.transport.close)
        else:
            self.transport.close()


def http_protocol(settings: Settings) -> type[LimitedHttpToolsProtocol]:
    """The protocol class ``sessiond serve`` gives uvicorn (``http=``), with these settings'
    limits and a count of connections of its own: uvicorn makes one instance per connection
    from the class alone."""

    class SessiondHttpToolsProtocol(LimitedHttpToolsProtocol):
        max_head_bytes = settings.max_request_head_bytes
        head_timeout = settings.request_head_timeout.total_seconds()
        body_timeout = settings.request_body_timeout.total_seconds()
        limits = limits_for(settings)

    return SessiondHttpToolsProtocol
