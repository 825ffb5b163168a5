"""The client library: ``AsyncSessionClient`` and ``SessionClient``, the platform's ISessionClient.

Both are thin drivers over one core. Each call is written once, as a generator that yields the
HTTP requests it needs and receives their responses (a multi-leg Negotiate sign-in is just a
longer conversation); the sync client drives it with ``httpx.Client``, the async one with
``httpx.AsyncClient``, so the two can never drift apart.

The client shares only the token, the models and the errors with the server. OpenID Connect
sign-in (the provider's side of it) is in :mod:`.openid_client`; a flow may yield its steps
(wait, call the caller back) besides requests.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Generator
from datetime import datetime
from types import TracebackType
from typing import Any, Literal, Self, TypeVar
from uuid import UUID

import httpx

from .errors import (
    ProtocolError,
    SessionRequired,
    TransportError,
    error_from_body,
)
from .models import (
    CLIENT_INFO_JSON,
    ClientInfo,
    ConfigurationInfo,
    DeviceType,
    ServiceType,
    WireEnum,
)
from .negotiate_client import NegotiateAuth
from .openid_client import (
    DEFAULT_OPENID_TIMEOUT,
    TRANSPORT_ERROR_EXTENSION,
    OpenIdSignIn,
    ProviderEntry,
    Step,
    UserCodeCallback,
    arun_step,
    provider_tokens_flow,
    run_step,
)
from .token import SessionToken
from .wire import (
    CONFIGURATION_VERSION_HEADER,
    NEXT_PAGE_HEADER,
    SESSION_HEADER,
    parse_time,
)

__all__ = ["AsyncSessionClient", "NegotiateAuth", "SessionClient"]

DEFAULT_TIMEOUT = 30.0

T = TypeVar("T")
Flow = Generator[httpx.Request | Step, Any, T]
VersionListener = Callable[[int | None, int], None]


#: Where a flow puts the ``httpx.Auth`` its request is to be sent with (taken off before
#: the request is sent).
AUTH_EXTENSION = "sessiond.auth"


def _query(params: dict[str, Any]) -> dict[str, Any]:
    """Query parameters as the server reads them: no Nones, enums by wire name, booleans as
    true/false, times in ISO 8601."""
    out: dict[str, Any] = {}
    for key, value in params.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = "true" if value else "false"
        elif isinstance(value, WireEnum):
            out[key] = value.wire
        elif isinstance(value, datetime):
            out[key] = value.isoformat()
        elif isinstance(value, list | tuple):
            out[key] = [v.wire if isinstance(v, WireEnum) else str(v) for v in value]
        else:
            out[key] = str(value)
    return out


class _ClientCore:
    """Everything both clients share: request building, response handling, session state."""

    def __init__(
        self,
        base_url: str,
        *,
        application_id: UUID | None = None,
        service_type: ServiceType = ServiceType.DESKTOP_CLIENT,
        device_type: DeviceType = DeviceType.DESKTOP,
        culture: str | None = None,
        ui_culture: str | None = None,
        utc_offset: int | None = None,
        session_token: SessionToken | None = None,
        windows_username: str | None = None,
        windows_password: str | None = None,
        windows_protocol: str = "negotiate",
        service_hostname: str | None = None,
    ) -> None:
        self.base_url = httpx.URL(base_url.rstrip("/") + "/")
        self.application_id = application_id
        self.service_type = service_type
        self.device_type = device_type
        self.culture = culture
        self.ui_culture = ui_culture
        self.utc_offset = utc_offset
        #: The current session's token; set by ``open_session``, kept after ``close_session``.
        self.session_token: SessionToken | None = session_token
        #: The configuration version the server last reported (every response carries it).
        self.configuration_version: int | None = None
        #: From the last sign-in: the server's inactivity timeout (seconds; None: none), and
        #: when the password expires once its warning period has begun.
        self.session_inactivity_time: float | None = None
        self.password_expires: datetime | None = None
        self._version_listeners: list[VersionListener] = []
        # Concurrent answers (threads sharing a sync client) report a new version once.
        self._version_lock = threading.Lock()
        # Integrated sign-in: Kerberos from the caller's credential cache by default, or
        # NTLM/Kerberos with these explicit credentials (protocol: negotiate, kerberos, ntlm).
        self.windows_username = windows_username
        self.windows_password = windows_password
        self.windows_protocol = windows_protocol
        self.service_hostname = service_hostname or self.base_url.host
        #: How the current session was opened through an OpenID provider (None: it was not).
        self.openid_sign_in: OpenIdSignIn | None = None

    def on_configuration_version_changed(self, listener: VersionListener) -> None:
        """Call ``listener(old, new)`` when a response reports a new configuration version:
        the moment to drop caches."""
        self._version_listeners.append(listener)

    # --- the five calls, written once ----------------------------------------------------

    def _open_session_flow(
        self,
        login: str | None,
        password: str | None,
        domain: str | None,
        overrides: dict[str, Any],
    ) -> Flow[SessionToken]:
        if not login and not password:
            return (yield from self._open_windows_flow(overrides))
        body = self._client_params(overrides)
        body.update(Login=login or "", Password=password or "", Domain=domain)
        response = yield self._request("POST", "api/v1/sessions/open", json=body, auth=False)
        return self._accept_token(self._json(response))

    def _open_openid_flow(
        self, options: OpenIdSignIn, overrides: dict[str, Any]
    ) -> Flow[SessionToken]:
        body = self._client_params(overrides)
        listed = yield self._request("GET", "api/v1/openid/providers", auth=False)
        entry = ProviderEntry.pick(self._json(listed), options.provider)
        tokens = yield from provider_tokens_flow(entry, options)
        body.update(entry.exchange_body(tokens))
        response = yield self._request("POST", "api/v1/openid/exchange", json=body, auth=False)
        token = self._accept_token(self._json(response))
        self.openid_sign_in = options
        return token

    def _open_windows_flow(self, overrides: dict[str, Any]) -> Flow[SessionToken]:
        # Standard HTTP Negotiate, run by NegotiateAuth inside the HTTP client: ask, get
        # "401 WWW-Authenticate: Negotiate", exchange tokens until the server answers.
        body = self._client_params(overrides)
        request = self._request("POST", "api/v1/sessions/open-windows", json=body, auth=False)
        request.extensions[AUTH_EXTENSION] = self.negotiate_auth()
        response = yield request
        return self._accept_token(self._json(response))

    def negotiate_auth(self) -> NegotiateAuth:
        """The ``httpx.Auth`` that signs this client's requests in by HTTP Negotiate."""
        return NegotiateAuth(self._negotiate_context)

    def _negotiate_context(self) -> Any:
        import spnego  # ImportError: NotConfigured, by NegotiateAuth

        return spnego.client(
            self.windows_username,
            self.windows_password,
            hostname=self.service_hostname,
            service="HTTP",
            protocol=self.windows_protocol,
        )

    def _close_session_flow(self) -> Flow[bool]:
        response = yield self._request("POST", "api/v1/sessions/close")
        return bool(self._json(response)["Closed"])

    def _close_session_as_admin_flow(self, session_id: UUID | str) -> Flow[bool]:
        sid = UUID(str(session_id))
        response = yield self._request("DELETE", f"api/v1/sessions/{sid}")
        return bool(self._json(response)["Closed"])

    def _increment_configuration_version_flow(self) -> Flow[ConfigurationInfo]:
        response = yield self._request("POST", "api/v1/configuration/increment-version")
        return ConfigurationInfo.from_dict(self._json(response))

    def _change_password_flow(self, login: str, old: str, new: str) -> Flow[bool]:
        body = {"Login": login, "OldPassword": old, "NewPassword": new}
        request = self._request("POST", "api/v1/sessions/change-password", json=body, auth=False)
        if self.session_token is not None:  # the session this change comes from stays open
            request.headers[SESSION_HEADER] = self.session_token.to_auth_xml()
        response = yield request
        return bool(self._json(response)["Changed"])

    def _wait_flow(self, after: int | None, wait: float) -> Flow[int]:
        if after is None:
            after = self.configuration_version or 0
        request = self._request(
            "GET", f"api/v1/configuration/changes?after={int(after)}&wait={float(wait)}"
        )
        # The server may hold the request for `wait` seconds: the read may take that long.
        request.extensions["timeout"] = {
            "connect": DEFAULT_TIMEOUT, "read": wait + DEFAULT_TIMEOUT,
            "write": DEFAULT_TIMEOUT, "pool": DEFAULT_TIMEOUT,
        }  # fmt: skip
        response = yield request
        return int(self._json(response)["Version"])

    def _get_flow(self, path: str, params: dict[str, Any] | None = None) -> Flow[Any]:
        response = yield self._request("GET", path, params=params)
        return self._json(response)

    def _sessions_flow(self, params: dict[str, Any]) -> Flow[list[dict[str, Any]]]:
        """Every page of the session list, following Tessa-Next-Page."""
        sessions: list[dict[str, Any]] = []
        while True:
            response = yield self._request("GET", "api/v1/sessions", params=_query(params))
            sessions.extend(self._json(response))
            params["after"] = response.headers.get(NEXT_PAGE_HEADER)
            if not params["after"]:
                return sessions

    # --- plumbing ------------------------------------------------------------------------

    def _client_params(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """The sign-in body's client parameters: this client's, with ``overrides`` on top."""
        unknown = overrides.keys() - CLIENT_INFO_JSON.keys()
        if unknown:
            raise TypeError(f"unexpected keyword argument {sorted(unknown)[0]!r}")
        defaults = {
            "application_id": self.application_id,
            "service_type": self.service_type,
            "device_type": self.device_type,
            "culture": self.culture,
            "ui_culture": self.ui_culture,
            "utc_offset": self.utc_offset,
        }
        values = {**defaults, **overrides}
        values["service_type"] = ServiceType(values["service_type"])
        values["device_type"] = DeviceType(values["device_type"])
        return ClientInfo(**values).to_json()

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        auth: bool = True,
        params: dict[str, Any] | None = None,
    ) -> httpx.Request:
        headers = {}
        if auth:
            if self.session_token is None:
                raise SessionRequired("no session: call open_session() first")
            headers[SESSION_HEADER] = self.session_token.to_auth_xml()
        url = self.base_url.join(path)
        return httpx.Request(method, url, json=json, headers=headers, params=params)

    def _json(self, response: httpx.Response) -> Any:
        self._note_version(response)
        try:
            body = response.json()
        except ValueError:
            body = None
        if response.is_success and body is not None:
            return body
        if not response.is_success:
            raise error_from_body(response.status_code, body)
        raise ProtocolError(f"the server answered HTTP {response.status_code} without JSON")

    def _note_version(self, response: httpx.Response) -> None:
        raw = response.headers.get(CONFIGURATION_VERSION_HEADER)
        if raw is None or not raw.isdigit():
            return
        new = int(raw)
        with self._version_lock:
            old = self.configuration_version
            if new == old:
                return
            self.configuration_version = new
        for listener in list(self._version_listeners):
            listener(old, new)

    def _accept_token(self, body: Any) -> SessionToken:
        try:
            token = SessionToken.from_xml(body["Token"])
        except (KeyError, TypeError):
            raise ProtocolError("the sign-in answer carries no token") from None
        self.session_token = token
        self.openid_sign_in = None
        inactivity = body.get("SessionInactivityTime")
        self.session_inactivity_time = float(inactivity) if inactivity else None
        expires = body.get("PasswordExpires")
        self.password_expires = parse_time(expires) if expires else None
        return token


class SessionClient(_ClientCore):
    """Synchronous client. Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.Client | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = http is None  # a client passed in is the caller's to close
        self._http = http or httpx.Client(timeout=timeout)

    def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                answer = self._send(step) if isinstance(step, httpx.Request) else run_step(step)
                step = flow.send(answer)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()  # a flow that failed lets go of what it holds (a loopback receiver)

    def _send(self, request: httpx.Request) -> httpx.Response:
        auth = request.extensions.pop(AUTH_EXTENSION, None)
        on_error = request.extensions.pop(TRANSPORT_ERROR_EXTENSION, None)
        try:
            response = self._http.send(request, auth=auth) if auth else self._http.send(request)
            response.read()
        except httpx.TransportError as exc:
            if on_error is not None:
                raise on_error(exc) from exc
            raise TransportError(f"cannot reach sessiond at {self.base_url}: {exc}") from exc
        return response

    def open_session(
        self,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        **client_params: Any,
    ) -> SessionToken:
        """OpenSessionAsync: sign in and keep the session's token."""
        return self._run(self._open_session_flow(login, password, domain, client_params))

    def open_session_windows_auth(self, **client_params: Any) -> SessionToken:
        """OpenSessionWindowsAuthAsync: integrated Windows sign-in."""
        return self._run(self._open_windows_flow(client_params))

    def open_session_openid(
        self,
        provider: str,
        *,
        flow: Literal["browser", "device"] = "browser",
        open_browser: Callable[[str], Any] | None = None,
        on_user_code: UserCodeCallback | None = None,
        timeout: float = DEFAULT_OPENID_TIMEOUT,
        **client_params: Any,
    ) -> SessionToken:
        """Sign in through the OpenID provider sessiond lists as ``provider``: in the system
        browser with a loopback redirect (``open_browser(url)`` instead, if given), or by the
        device flow (``on_user_code(verification_uri, user_code, verification_uri_complete)``
        tells the person where to go; by default it prints). ``timeout``: seconds the person has."""
        options = OpenIdSignIn(provider, flow, open_browser, on_user_code, timeout)
        return self._run(self._open_openid_flow(options, client_params))

    def close_session(self) -> bool:
        """CloseSessionAsync: True if the session was still open."""
        return self._run(self._close_session_flow())

    def close_session_as_admin(self, session_id: UUID | str) -> bool:
        """CloseSessionAsAdminAsync: True if that session was still open."""
        return self._run(self._close_session_as_admin_flow(session_id))

    def increment_configuration_version(self) -> ConfigurationInfo:
        """IncrementConfigurationVersionAsync (administrators)."""
        return self._run(self._increment_configuration_version_flow())

    def wait_for_configuration_change(self, after: int | None = None, wait: float = 30.0) -> int:
        """Block until the configuration version passes ``after`` (default: the last one this
        client saw) or ``wait`` seconds pass; returns the version. Listeners registered with
        :meth:`on_configuration_version_changed` fire as for any other answer."""
        return self._run(self._wait_flow(after, wait))

    def change_password(self, login: str, old_password: str, new_password: str) -> bool:
        """Change a platform user's own password (no session needed: it may have expired)."""
        return self._run(self._change_password_flow(login, old_password, new_password))

    def get_configuration(self) -> ConfigurationInfo:
        return ConfigurationInfo.from_dict(self._run(self._get_flow("api/v1/configuration")))

    def current_session(self) -> dict[str, Any]:
        """Validate the current session on the server and describe it."""
        result: dict[str, Any] = self._run(self._get_flow("api/v1/sessions/current"))
        return result

    def list_sessions(
        self, user_id: UUID | str | None = None, **filters: Any
    ) -> list[dict[str, Any]]:
        """Open sessions, oldest first, every page (a regular user gets their own); of one
        user if given. ``filters``: user, license_type, application_id, service_type,
        device_type, address, order, descending (see the HTTP API)."""
        return self._run(self._sessions_flow({"user_id": user_id, **filters}))

    def audit_records(self, **query: Any) -> dict[str, Any]:
        """One page of the audit trail (administrators): ``{"Records": [...], "Next": id}``.
        ``query``: action (one or a list), user_id, user, since, until, after, before,
        newest_first, limit (see the HTTP API)."""
        result: dict[str, Any] = self._run(self._get_flow("api/v1/audit", _query(query)))
        return result

    def close(self) -> None:
        if self._owns_http:
            self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


class AsyncSessionClient(_ClientCore):
    """Asynchronous client. Use as an async context manager, or call :meth:`aclose`."""

    def __init__(
        self,
        base_url: str,
        *,
        http: httpx.AsyncClient | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        **options: Any,
    ) -> None:
        super().__init__(base_url, **options)
        self._owns_http = http is None  # a client passed in is the caller's to close
        self._http = http or httpx.AsyncClient(timeout=timeout)

    async def _run(self, flow: Flow[T]) -> T:
        try:
            step = next(flow)
            while True:
                if isinstance(step, httpx.Request):
                    step = flow.send(await self._send(step))
                else:
                    step = flow.send(await arun_step(step))
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]
        finally:
            flow.close()  # a flow that failed lets go of what it holds (a loopback receiver)

    async def _send(self, request: httpx.Request) -> httpx.Response:
        auth = request.extensions.pop(AUTH_EXTENSION, None)
        on_error = request.extensions.pop(TRANSPORT_ERROR_EXTENSION, None)
        try:
            response = await (
                self._http.send(request, auth=auth) if auth else self._http.send(request)
            )
            await response.aread()
        except httpx.TransportError as exc:
            if on_error is not None:
                raise on_error(exc) from exc
            raise TransportError(f"cannot reach sessiond at {self.base_url}: {exc}") from exc
        return response

    async def open_session(
        self,
        login: str | None = None,
        password: str | None = None,
        domain: str | None = None,
        **client_params: Any,
    ) -> SessionToken:
        """OpenSessionAsync: sign in and keep the session's token."""
        return await self._run(self._open_session_flow(login, password, domain, client_params))

    async def open_session_windows_auth(self, **client_params: Any) -> SessionToken:
        """OpenSessionWindowsAuthAsync: integrated Windows sign-in."""
        return await self._run(self._open_windows_flow(client_params))

    async def open_session_openid(
        self,
        provider: str,
        *,
        flow: Literal["browser", "device"] = "browser",
        open_browser: Callable[[str], Any] | None = None,
        on_user_code: UserCodeCallback | None = None,
        timeout: float = DEFAULT_OPENID_TIMEOUT,  # noqa: ASYNC109 (the person's time, one flow)
        **client_params: Any,
    ) -> SessionToken:
        """As :meth:`SessionClient.open_session_openid`; the callbacks may be coroutines."""
        options = OpenIdSignIn(provider, flow, open_browser, on_user_code, timeout)
        return await self._run(self._open_openid_flow(options, client_params))

    async def close_session(self) -> bool:
        """CloseSessionAsync: True if the session was still open."""
        return await self._run(self._close_session_flow())

    async def close_session_as_admin(self, session_id: UUID | str) -> bool:
        """CloseSessionAsAdminAsync: True if that session was still open."""
        return await self._run(self._close_session_as_admin_flow(session_id))

    async def increment_configuration_version(self) -> ConfigurationInfo:
        """IncrementConfigurationVersionAsync (administrators)."""
        return await self._run(self._increment_configuration_version_flow())

    async def wait_for_configuration_change(
        self, after: int | None = None, wait: float = 30.0
    ) -> int:
        """Wait until the configuration version passes ``after`` (default: the last one this
        client saw) or ``wait`` seconds pass; returns the version. Listeners registered with
        :meth:`on_configuration_version_changed` fire as for any other answer."""
        return await self._run(self._wait_flow(after, wait))

    async def change_password(self, login: str, old_password: str, new_password: str) -> bool:
        """Change a platform user's own password (no session needed: it may have expired)."""
        return await self._run(self._change_password_flow(login, old_password, new_password))

    async def get_configuration(self) -> ConfigurationInfo:
        return ConfigurationInfo.from_dict(await self._run(self._get_flow("api/v1/configuration")))

    async def current_session(self) -> dict[str, Any]:
        """Validate the current session on the server and describe it."""
        result: dict[str, Any] = await self._run(self._get_flow("api/v1/sessions/current"))
        return result

    async def list_sessions(
        self, user_id: UUID | str | None = None, **filters: Any
    ) -> list[dict[str, Any]]:
        """Open sessions, oldest first, every page (a regular user gets their own); of one
        user if given. ``filters``: as for :meth:`SessionClient.list_sessions`."""
        return await self._run(self._sessions_flow({"user_id": user_id, **filters}))

    async def audit_records(self, **query: Any) -> dict[str, Any]:
        """One page of the audit trail (administrators); see :meth:`SessionClient.audit_records`."""
        result: dict[str, Any] = await self._run(self._get_flow("api/v1/audit", _query(query)))
        return result

    async def aclose(self) -> None:
        if self._owns_http:
            await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()
