"""A session manager: keeps one session open for an application.

It opens the session, touches it before the server's inactivity timeout would close it, opens a
new one with the same credentials (or Negotiate) when the server says the old one expired or was
closed, and reports what happened through events:

    ``opened(token)``                           a session was opened (also after a re-open)
    ``expired(token, error)``                   the server no longer knows the session
    ``closed(token)``                           the manager closed it (``stop``)
    ``configuration_version_changed(old, new)`` drop caches

Callbacks may be plain functions or coroutines (the async manager awaits them).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import Any, Literal, Self, TypeVar

from .client import AsyncSessionClient, SessionClient
from .errors import SessionExpired, SessionNotFound, TransportError
from .token import SessionToken

__all__ = ["AsyncSessionManager", "SessionManager"]

T = TypeVar("T")
Event = Literal["opened", "expired", "closed", "configuration_version_changed"]
EVENTS: tuple[Event, ...] = ("opened", "expired", "closed", "configuration_version_changed")
#: Touch this long before the inactivity timeout would strike (as a share of it).
KEEPALIVE_SHARE = 1 / 3
DEFAULT_KEEPALIVE = 300.0
MIN_KEEPALIVE = 1.0

log = logging.getLogger("sessiond.manager")
_GONE = (SessionExpired, SessionNotFound)


class _ManagerCore:
    def __init__(
        self,
        login: str | None,
        password: str | None,
        domain: str | None,
        keepalive: float | None,
        open_params: dict[str, Any],
    ) -> None:
        self._login = login
        self._password = password
        self._domain = domain
        self._keepalive = keepalive
        self._open_params = open_params
        self._listeners: dict[Event, list[Callable[..., Any]]] = {e: [] for e in EVENTS}
        self.reopened = 0  # how many times an expired session was replaced

    def on(self, event: Event, callback: Callable[..., Any]) -> None:
        if event not in self._listeners:
            raise ValueError(f"unknown event {event!r}; one of {', '.join(EVENTS)}")
        self._listeners[event].append(callback)

    def keepalive_interval(self, inactivity: float | None) -> float:
        """Explicit setting, else a third of the server's inactivity timeout."""
        if self._keepalive is not None:
            return max(MIN_KEEPALIVE, self._keepalive)
        if inactivity:
            return max(MIN_KEEPALIVE, inactivity * KEEPALIVE_SHARE)
        return DEFAULT_KEEPALIVE


class AsyncSessionManager(_ManagerCore):
    """Keeps a session of ``client`` open. ``async with`` starts and stops it."""

    def __init__(
        self,
        client: AsyncSessionClient,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        *,
        keepalive: float | None = None,
        **open_params: Any,
    ) -> None:
        super().__init__(login, password, domain, keepalive, open_params)
        self.client = client
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        client.on_configuration_version_changed(self._version_changed)
        self._pending: set[asyncio.Task[Any]] = set()

    async def _emit(self, event: Event, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            try:
                result = callback(*args)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("a %s listener failed", event)

    def _version_changed(self, old: int | None, new: int) -> None:
        if old is None:
            return  # the first version seen is no change
        # Called from inside a response's handling: plain callbacks run now, coroutine
        # callbacks as tasks of their own.
        for callback in list(self._listeners["configuration_version_changed"]):
            try:
                result = callback(old, new)
            except Exception:
                log.exception("a configuration_version_changed listener failed")
                continue
            if inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)

    async def _open(self) -> SessionToken:
        token = await self.client.open_session(
            self._login, self._password, self._domain, **self._open_params
        )
        await self._emit("opened", token)
        return token

    async def start(self) -> SessionToken:
        """Open the session and start keeping it alive."""
        token = await self._open()
        self._task = asyncio.create_task(self._keep_alive_forever(), name="sessiond-keepalive")
        return token

    async def call(self, operation: Callable[[AsyncSessionClient], Awaitable[T]]) -> T:
        """Run ``operation(client)``; if the server says the session is gone, open a new one
        (reporting ``expired`` and ``opened``) and run it once more."""
        used = self.client.session_token
        try:
            return await operation(self.client)
        except _GONE as exc:
            await self._replace(used, exc)
            return await operation(self.client)

    async def keep_alive(self) -> None:
        """Touch the session once now (re-opening it if the server dropped it)."""
        await self.call(lambda client: client.current_session())

    async def _replace(self, used: SessionToken | None, error: Exception) -> None:
        async with self._lock:
            if self.client.session_token is not used:
                return  # a concurrent call has already opened a new session
            await self._emit("expired", used, error)
            self.reopened += 1
            await self._open()

    async def _keep_alive_forever(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_interval(self.client.session_inactivity_time))
            try:
                await self.keep_alive()
            except TransportError as exc:
                log.warning("keep-alive could not reach the server: %s", exc.message)
            except Exception:
                log.exception("keep-alive failed")

    async def stop(self, *, close_session: bool = True) -> None:
        """Stop keeping the session alive and (by default) close it on the server."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        token = self.client.session_token
        if close_session and token is not None:
            await self.client.close_session()
            await self._emit("closed", token)

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


class SessionManager(_ManagerCore):
    """The synchronous twin: keep-alive runs on a daemon thread. ``with`` starts and stops."""

    def __init__(
        self,
        client: SessionClient,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        *,
        keepalive: float | None = None,
        **open_params: Any,
    ) -> None:
        super().__init__(login, password, domain, keepalive, open_params)
        self.client = client
        self._lock = threading.RLock()  # one request at a time through the shared client
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        client.on_configuration_version_changed(self._version_changed)

    def _emit(self, event: Event, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            try:
                callback(*args)
            except Exception:
                log.exception("a %s listener failed", event)

    def _version_changed(self, old: int | None, new: int) -> None:
        if old is not None:
            self._emit("configuration_version_changed", old, new)

    def _open(self) -> SessionToken:
        with self._lock:
            token = self.client.open_session(
                self._login, self._password, self._domain, **self._open_params
            )
        self._emit("opened", token)
        return token

    def start(self) -> SessionToken:
        token = self._open()
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._keep_alive_forever, name="sessiond-keepalive", daemon=True
        )
        self._thread.start()
        return token

    def call(self, operation: Callable[[SessionClient], T]) -> T:
        used = self.client.session_token
        try:
            with self._lock:
                return operation(self.client)
        except _GONE as exc:
            self._replace(used, exc)
            with self._lock:
                return operation(self.client)

    def keep_alive(self) -> None:
        self.call(lambda client: client.current_session())

    def _replace(self, used: SessionToken | None, error: Exception) -> None:
        with self._lock:
            if self.client.session_token is not used:
                return  # a concurrent call has already opened a new session
            self._emit("expired", used, error)
            self.reopened += 1
            self._open()

    def _keep_alive_forever(self) -> None:
        while not self._stopping.wait(self.keepalive_interval(self.client.session_inactivity_time)):
            try:
                self.keep_alive()
            except TransportError as exc:
                log.warning("keep-alive could not reach the server: %s", exc.message)
            except Exception:
                log.exception("keep-alive failed")

    def stop(self, *, close_session: bool = True) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        token = self.client.session_token
        if close_session and token is not None:
            with self._lock:
                self.client.close_session()
            self._emit("closed", token)

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
