"""A session manager: keeps one session open for an application.

It opens the session, touches it before the server's inactivity timeout would close it, opens a
new one with the same credentials (or Negotiate, or the same OpenID provider and flow) when the
server says the old one expired or was closed, and reports what happened through events:

    ``opened(token)``                           a session was opened (also after a re-open)
    ``expired(token, error)``                   the server no longer knows the session
    ``closed(token)``                           the manager closed it (``stop``)
    ``configuration_version_changed(old, new)`` drop caches

Callbacks may be plain functions or coroutines (the async manager awaits them).

Like the clients, both managers are thin drivers over one core. Each operation (open, call,
keep-alive, stop) is written once, as a generator that yields steps: ``Call(fn)`` to run
``fn(client)``, ``Emit(event, args)`` to tell the listeners, ``Exclusive(flow)`` to run a
sub-flow under the manager's lock. ``AsyncSessionManager`` awaits calls and coroutine
callbacks and locks with an ``asyncio.Lock``; ``SessionManager`` uses a ``threading.Lock`` and
keeps the session alive from a daemon thread. A failed call is thrown back into its generator,
so the retry logic lives in the core alone.

Locking: the lock guards only the replacement of a gone session, so that concurrent calls that
all find it gone replace it once (one ``expired``, one ``opened``) and then all run again on the
new one. Requests themselves are not serialised: ``httpx.Client`` and ``httpx.AsyncClient`` are
safe to share between concurrent requests. ``expired`` and ``opened`` listeners of a
replacement run under the lock, so they must not wait for another replacement.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import threading
from collections.abc import Awaitable, Callable, Generator, Iterator
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar

from .client import AsyncSessionClient, SessionClient
from .errors import SessionExpired, SessionNotFound, TransportError
from .openid_client import OpenIdSignIn
from .token import SessionToken

__all__ = ["AsyncSessionManager", "SessionManager"]

T = TypeVar("T")
C = TypeVar("C", AsyncSessionClient, SessionClient)
Event = Literal["opened", "expired", "closed", "configuration_version_changed"]
EVENTS: tuple[Event, ...] = ("opened", "expired", "closed", "configuration_version_changed")
#: Touch this long before the inactivity timeout would strike (as a share of it).
KEEPALIVE_SHARE = 1 / 3
DEFAULT_KEEPALIVE = 300.0
MIN_KEEPALIVE = 1.0

log = logging.getLogger("sessiond.manager")
_GONE = (SessionExpired, SessionNotFound)


@dataclass(frozen=True)
class Call:
    """Run ``fn(client)`` (awaiting it in the async manager); send back its result or throw
    its exception into the flow."""

    fn: Callable[[Any], Any]


@dataclass(frozen=True)
class Emit:
    """Tell the ``event`` listeners (their failures are logged, never thrown)."""

    event: Event
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Exclusive:
    """Run ``flow`` holding the manager's lock; send back its result."""

    flow: Flow[Any]


Step = Call | Emit | Exclusive
Flow = Generator[Step, Any, T]


@contextlib.contextmanager
def _keep_alive_errors() -> Iterator[None]:
    """A failed keep-alive is logged; the next one tries again."""
    try:
        yield
    except TransportError as exc:
        log.warning("keep-alive could not reach the server: %s", exc.message)
    except Exception:
        log.exception("keep-alive failed")


class _ManagerCore(Generic[C]):
    """Everything both managers share: settings, listeners, and the flows."""

    def __init__(
        self,
        client: C,
        login: str | None,
        password: str | None,
        domain: str | None,
        keepalive: float | None,
        open_params: dict[str, Any],
        openid: OpenIdSignIn | str | None = None,
    ) -> None:
        if openid is not None and (login or password):
            raise ValueError("give either login and password or openid, not both")
        self.client: C = client
        #: Sign in (and again) through this OpenID provider instead of login and password.
        self.openid = OpenIdSignIn(openid) if isinstance(openid, str) else openid
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

    # --- the flows, written once ---------------------------------------------------------

    def _open_flow(self) -> Flow[SessionToken]:
        token: SessionToken = yield Call(self._open_session)
        yield Emit("opened", (token,))
        return token

    def _open_session(self, client: C) -> Any:
        """The client's sign-in call (a coroutine for the async client)."""
        openid = self.openid
        if openid is None:
            return client.open_session(
                self._login, self._password, self._domain, **self._open_params
            )
        return client.open_session_openid(
            openid.provider,
            flow=openid.flow,
            open_browser=openid.open_browser,
            on_user_code=openid.on_user_code,
            timeout=openid.timeout,
            **self._open_params,
        )

    def _call_flow(self, operation: Callable[[C], Any]) -> Flow[Any]:
        used = self.client.session_token
        try:
            return (yield Call(operation))
        except _GONE as exc:
            yield Exclusive(self._replace_flow(used, exc))
            return (yield Call(operation))

    def _replace_flow(self, used: SessionToken | None, error: Exception) -> Flow[None]:
        if self.client.session_token is not used:
            return  # a concurrent call has already opened a new session
        yield Emit("expired", (used, error))
        self.reopened += 1
        yield from self._open_flow()

    def _keep_alive_flow(self) -> Flow[None]:
        yield from self._call_flow(lambda client: client.current_session())

    def _stop_flow(self, close_session: bool) -> Flow[None]:
        token = self.client.session_token
        if close_session and token is not None:
            yield Call(lambda client: client.close_session())
            yield Emit("closed", (token,))


class AsyncSessionManager(_ManagerCore[AsyncSessionClient]):
    """Keeps a session of ``client`` open. ``async with`` starts and stops it."""

    def __init__(
        self,
        client: AsyncSessionClient,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        *,
        keepalive: float | None = None,
        openid: OpenIdSignIn | str | None = None,
        **open_params: Any,
    ) -> None:
        super().__init__(client, login, password, domain, keepalive, open_params, openid)
        self._task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()
        self._pending: set[asyncio.Task[Any]] = set()
        client.on_configuration_version_changed(self._version_changed)

    async def _drive(self, flow: Flow[T]) -> T:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as done:
                value: T = done.value
                return value
            result, error = None, None
            try:
                if isinstance(step, Call):
                    result = await step.fn(self.client)
                elif isinstance(step, Emit):
                    await self._emit(step.event, *step.args)
                else:
                    async with self._lock:
                        result = await self._drive(step.flow)
            except Exception as exc:
                error = exc

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

    async def start(self) -> SessionToken:
        """Open the session and start keeping it alive."""
        token = await self._drive(self._open_flow())
        self._task = asyncio.create_task(self._keep_alive_forever(), name="sessiond-keepalive")
        return token

    async def call(self, operation: Callable[[AsyncSessionClient], Awaitable[T]]) -> T:
        """Run ``operation(client)``; if the server says the session is gone, open a new one
        (reporting ``expired`` and ``opened``) and run it once more."""
        result: T = await self._drive(self._call_flow(operation))
        return result

    async def keep_alive(self) -> None:
        """Touch the session once now (re-opening it if the server dropped it)."""
        await self._drive(self._keep_alive_flow())

    async def _keep_alive_forever(self) -> None:
        while True:
            await asyncio.sleep(self.keepalive_interval(self.client.session_inactivity_time))
            with _keep_alive_errors():
                await self.keep_alive()

    async def stop(self, *, close_session: bool = True) -> None:
        """Stop keeping the session alive and (by default) close it on the server."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._drive(self._stop_flow(close_session))

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


class SessionManager(_ManagerCore[SessionClient]):
    """The synchronous twin: keep-alive runs on a daemon thread. ``with`` starts and stops."""

    def __init__(
        self,
        client: SessionClient,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        *,
        keepalive: float | None = None,
        openid: OpenIdSignIn | str | None = None,
        **open_params: Any,
    ) -> None:
        super().__init__(client, login, password, domain, keepalive, open_params, openid)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        client.on_configuration_version_changed(self._version_changed)

    def _drive(self, flow: Flow[T]) -> T:
        result: Any = None
        error: Exception | None = None
        while True:
            try:
                step = flow.send(result) if error is None else flow.throw(error)
            except StopIteration as done:
                value: T = done.value
                return value
            result, error = None, None
            try:
                if isinstance(step, Call):
                    result = step.fn(self.client)
                elif isinstance(step, Emit):
                    self._emit(step.event, *step.args)
                else:
                    with self._lock:
                        result = self._drive(step.flow)
            except Exception as exc:
                error = exc

    def _emit(self, event: Event, *args: Any) -> None:
        for callback in list(self._listeners[event]):
            try:
                callback(*args)
            except Exception:
                log.exception("a %s listener failed", event)

    def _version_changed(self, old: int | None, new: int) -> None:
        if old is not None:
            self._emit("configuration_version_changed", old, new)

    def start(self) -> SessionToken:
        """Open the session and start keeping it alive."""
        token = self._drive(self._open_flow())
        self._stopping.clear()
        self._thread = threading.Thread(
            target=self._keep_alive_forever, name="sessiond-keepalive", daemon=True
        )
        self._thread.start()
        return token

    def call(self, operation: Callable[[SessionClient], T]) -> T:
        """Run ``operation(client)``; if the server says the session is gone, open a new one
        (reporting ``expired`` and ``opened``) and run it once more."""
        result: T = self._drive(self._call_flow(operation))
        return result

    def keep_alive(self) -> None:
        """Touch the session once now (re-opening it if the server dropped it)."""
        self._drive(self._keep_alive_flow())

    def _keep_alive_forever(self) -> None:
        while not self._stopping.wait(self.keepalive_interval(self.client.session_inactivity_time)):
            with _keep_alive_errors():
                self.keep_alive()

    def stop(self, *, close_session: bool = True) -> None:
        """Stop keeping the session alive and (by default) close it on the server."""
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        self._drive(self._stop_flow(close_session))

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
