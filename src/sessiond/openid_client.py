"""The client's side of OpenID Connect sign-in: the system browser with a loopback redirect
(RFC 8252, with PKCE, RFC 7636) and the device authorization grant (RFC 8628).

The client talks to the provider directly, as the provider's public client (no secret), gets an
ID token, and :mod:`.client` exchanges it at sessiond's ``/api/v1/openid/exchange`` for a
platform session. The ID token's signature, issuer, audience and nonce are sessiond's to check;
this side checks what only it can: the ``state`` of the redirect, and the ``iss`` of the redirect
when the provider sends one (RFC 9207).

Like the rest of the client, each flow is written once, as a generator that yields what it needs
done: ``httpx.Request`` (sent by the client's HTTP client), or one of the steps below, which the
sync client runs in place and the async one awaits (a blocking wait runs on a worker thread).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import html
import http.server
import inspect
import secrets
import sys
import threading
import time
import webbrowser
from collections.abc import Callable, Generator
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import parse_qsl, urlsplit

import httpx
from pydantic import TypeAdapter, ValidationError

from .errors import (
    NotConfigured,
    OpenIdAuthorizationRefused,
    OpenIdIssuerMismatch,
    OpenIdProviderUnavailable,
    OpenIdProviderUnknown,
    OpenIdSignInExpired,
    OpenIdSignInFailed,
    OpenIdStateInvalid,
    ProtocolError,
    SessiondError,
)
from .wire import OpenIdExchange, OpenIdProviderInfo

__all__ = [
    "DEFAULT_OPENID_TIMEOUT",
    "LoopbackReceiver",
    "OpenIdSignIn",
    "ProviderEntry",
    "provider_tokens_flow",
]

T = TypeVar("T")
#: How long the person has to complete the sign-in at the provider, by default (seconds).
DEFAULT_OPENID_TIMEOUT = 300.0
#: Each single call to the provider is bounded by this (and by what is left of the timeout).
PROVIDER_CALL_TIMEOUT = 30.0
#: The loopback redirect's path; the provider's public client registers
#: ``http://127.0.0.1/callback`` (any port, RFC 8252 section 7.3).
CALLBACK_PATH = "/callback"
#: RFC 8628 section 3.5: the polling interval when the provider names none, and what
#: ``slow_down`` adds to it.
DEFAULT_INTERVAL = 5.0
SLOW_DOWN_STEP = 5.0
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"
#: Where a provider request names the ``httpx.TransportError`` -> sessiond error mapping that
#: replaces the client's "cannot reach sessiond" (taken off before the request is sent).
TRANSPORT_ERROR_EXTENSION = "sessiond.transport_error"

Flow = Generator[Any, Any, T]
_PROVIDER_LIST = TypeAdapter(list[OpenIdProviderInfo])
UserCodeCallback = Callable[[str, str, str | None], Any]


# --- steps other than HTTP requests ---------------------------------------------------------


@dataclass(frozen=True)
class Sleep:
    """Wait this long (the device flow's polling interval)."""

    seconds: float


@dataclass(frozen=True)
class Callback:
    """Call the caller's ``fn(*args)``; the async client awaits what it returns if that is
    awaitable (so ``open_browser`` may drive an async browser)."""

    fn: Callable[..., Any]
    args: tuple[Any, ...]


@dataclass(frozen=True)
class Blocking:
    """Run ``fn()``, which blocks for a bounded time; the async client runs it on a thread."""

    fn: Callable[[], Any]


Step = Sleep | Callback | Blocking


def run_step(step: Step) -> Any:
    """The sync client's way of running a step."""
    if isinstance(step, Sleep):
        time.sleep(step.seconds)
        return None
    if isinstance(step, Callback):
        return step.fn(*step.args)
    return step.fn()


async def arun_step(step: Step) -> Any:
    """The async client's way of running a step."""
    if isinstance(step, Sleep):
        await asyncio.sleep(step.seconds)
        return None
    if isinstance(step, Callback):
        result = step.fn(*step.args)
        return (await result) if inspect.isawaitable(result) else result
    return await asyncio.to_thread(step.fn)


# --- what the caller chose, and what sessiond lists -----------------------------------------


@dataclass(frozen=True)
class OpenIdSignIn:
    """One way of signing in through an OpenID Provider: what ``open_session_openid`` was
    given, kept so that the session manager can sign in the same way again."""

    provider: str
    flow: Literal["browser", "device"] = "browser"
    open_browser: Callable[[str], Any] | None = None
    on_user_code: UserCodeCallback | None = None
    timeout: float = DEFAULT_OPENID_TIMEOUT

    def __post_init__(self) -> None:
        if self.flow not in ("browser", "device"):
            raise ValueError(f"flow must be 'browser' or 'device', not {self.flow!r}")
        if not self.timeout > 0:
            raise ValueError("timeout must be a positive number of seconds")


@dataclass(frozen=True)
class ProviderEntry:
    """One provider of ``GET /api/v1/openid/providers``."""

    name: str
    issuer: str
    client_id: str
    scopes: tuple[str, ...] = ("openid",)
    display_name: str = ""

    @classmethod
    def pick(cls, listed: Any, name: str) -> ProviderEntry:
        """The provider called ``name`` in sessiond's list (``GET /api/v1/openid/providers``)."""
        try:
            entries = _PROVIDER_LIST.validate_python(listed)
        except ValidationError:
            raise ProtocolError("sessiond's list of OpenID providers is not one") from None
        found = next((e for e in entries if e.Name == name), None)
        if found is None:
            known = sorted(e.Name for e in entries)
            raise OpenIdProviderUnknown(
                f"sessiond has no OpenID provider {name!r}; it offers: "
                f"{', '.join(known) or 'none'}",
                details={"provider": name, "known": known},
            )
        if not found.ClientId:
            raise NotConfigured(
                f"sessiond lists the OpenID provider {name!r} without a public client id: the "
                "administrator sets public_client_id in its settings",
                details={"provider": name},
            )
        scopes = found.Scopes if "openid" in found.Scopes else ["openid", *found.Scopes]
        return cls(name, found.Issuer, found.ClientId, tuple(scopes), found.DisplayName)

    def exchange_body(self, tokens: ProviderTokens) -> dict[str, Any]:
        """The OpenID Connect fields of ``POST /api/v1/openid/exchange``."""
        exchange = OpenIdExchange(
            Provider=self.name, Token=tokens.id_token, TokenType="id_token", Nonce=tokens.nonce
        )
        return exchange.model_dump(exclude_none=True)


@dataclass(frozen=True)
class ProviderTokens:
    """What a flow ends with: the ID token, and the nonce it must carry (None: none asked)."""

    id_token: str
    nonce: str | None


@dataclass(frozen=True)
class _Endpoints:
    token: str
    authorization: str | None
    device_authorization: str | None
    challenge_methods: tuple[str, ...] | None


@dataclass
class _Clock:
    """The flow's one deadline."""

    timeout: float
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = time.monotonic() + self.timeout

    def left(self) -> float:
        return self.deadline - time.monotonic()


# --- the flows -------------------------------------------------------------------------------


def provider_tokens_flow(entry: ProviderEntry, options: OpenIdSignIn) -> Flow[ProviderTokens]:
    """Run the chosen flow with the provider; end with its ID token."""
    clock = _Clock(options.timeout)
    endpoints = yield from _discovery_flow(entry, clock)
    if options.flow == "device":
        return (yield from _device_flow(entry, endpoints, options, clock))
    return (yield from _browser_flow(entry, endpoints, options, clock))


def _discovery_flow(entry: ProviderEntry, clock: _Clock) -> Flow[_Endpoints]:
    url = entry.issuer.rstrip("/") + "/.well-known/openid-configuration"
    response = yield _provider_request(entry, clock, "GET", url)
    document = _provider_json(entry, response, "discovery document")
    if response.status_code != 200:
        raise _unavailable(entry, f"its discovery document answered HTTP {response.status_code}")
    if document.get("issuer") != entry.issuer:
        raise _unavailable(
            entry,
            f"its discovery document names the issuer {document.get('issuer')!r}, not "
            f"{entry.issuer!r} as sessiond's settings do",
        )
    token = document.get("token_endpoint")
    if not isinstance(token, str):
        raise _unavailable(entry, "its discovery document names no token_endpoint")
    methods = document.get("code_challenge_methods_supported")
    return _Endpoints(
        token=token,
        authorization=_str_or_none(document.get("authorization_endpoint")),
        device_authorization=_str_or_none(document.get("device_authorization_endpoint")),
        challenge_methods=tuple(methods) if isinstance(methods, list) else None,
    )


def _browser_flow(
    entry: ProviderEntry, endpoints: _Endpoints, options: OpenIdSignIn, clock: _Clock
) -> Flow[ProviderTokens]:
    if endpoints.authorization is None:
        raise _unavailable(entry, "its discovery document names no authorization_endpoint")
    if endpoints.challenge_methods is not None and "S256" not in endpoints.challenge_methods:
        raise NotConfigured(
            f"the OpenID provider {entry.name!r} does not offer PKCE with S256, which the "
            "loopback sign-in needs",
            details={"provider": entry.name},
        )
    state, nonce, verifier = (secrets.token_urlsafe(32) for _ in range(3))
    receiver = LoopbackReceiver(state)
    try:
        url = httpx.URL(
            endpoints.authorization,
            params={
                "response_type": "code",
                "client_id": entry.client_id,
                "redirect_uri": receiver.redirect_uri,
                "scope": " ".join(entry.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": _s256(verifier),
                "code_challenge_method": "S256",
            },
        )
        yield Callback(options.open_browser or _system_browser, (str(url),))
        answer = yield Blocking(lambda: receiver.wait(clock.left()))
    finally:
        receiver.close()
    if answer is None:
        raise _expired(entry, options.timeout)
    _check_redirect(entry, answer, state)
    # The person was in time; the redemption has a call's bound of its own.
    response = yield _provider_request(
        entry,
        _Clock(PROVIDER_CALL_TIMEOUT),
        "POST",
        endpoints.token,
        data={
            "grant_type": "authorization_code",
            "code": answer["code"],
            "redirect_uri": receiver.redirect_uri,
            "client_id": entry.client_id,
            "code_verifier": verifier,
        },
    )
    body = _provider_json(entry, response, "token answer")
    if "error" in body:
        raise _refusal(entry, body)
    return ProviderTokens(_id_token(entry, body), nonce)


def _check_redirect(entry: ProviderEntry, answer: dict[str, str], state: str) -> None:
    """The redirect's parameters, once it matched this sign-in's ``state``."""
    if not secrets.compare_digest(answer.get("state", ""), state):
        raise OpenIdStateInvalid(
            f"the redirect from the OpenID provider {entry.name!r} carried "
            f"{'another' if answer.get('state') else 'no'} state: it was refused; sign in again",
            details={"provider": entry.name},
        )
    iss = answer.get("iss")
    if iss is not None and iss != entry.issuer:  # RFC 9207: a provider mix-up
        raise OpenIdIssuerMismatch(
            f"the redirect names the issuer {iss!r}, not {entry.issuer!r} of the OpenID "
            f"provider {entry.name!r}: it was refused",
            details={"provider": entry.name, "error": "issuer_mismatch"},
        )
    if "error" in answer:
        raise _refusal(entry, answer)
    if not answer.get("code"):
        raise OpenIdSignInFailed(
            f"the redirect from the OpenID provider {entry.name!r} carried no code",
            details={"provider": entry.name, "error": "invalid_request"},
        )


def _device_flow(
    entry: ProviderEntry, endpoints: _Endpoints, options: OpenIdSignIn, clock: _Clock
) -> Flow[ProviderTokens]:
    if endpoints.device_authorization is None:
        raise NotConfigured(
            f"the OpenID provider {entry.name!r} does not offer the device authorization "
            "grant (its discovery document names no device_authorization_endpoint); use the "
            "browser flow",
            details={"provider": entry.name},
        )
    response = yield _provider_request(
        entry,
        clock,
        "POST",
        endpoints.device_authorization,
        data={"client_id": entry.client_id, "scope": " ".join(entry.scopes)},
    )
    body = _provider_json(entry, response, "device authorization answer")
    if "error" in body:
        raise _refusal(entry, body)
    try:
        device_code = str(body["device_code"])
        user_code = str(body["user_code"])
        uri = str(body["verification_uri"])
        expires_in = float(body["expires_in"])
        interval = float(body.get("interval") or DEFAULT_INTERVAL)
    except (KeyError, TypeError, ValueError):
        raise _unavailable(entry, "its device authorization answer lacks a field") from None
    complete = _str_or_none(body.get("verification_uri_complete"))
    expires = time.monotonic() + min(expires_in, clock.left())
    yield Callback(options.on_user_code or _print_user_code, (uri, user_code, complete))
    while True:
        if time.monotonic() + interval >= expires:
            raise _expired(entry, min(expires_in, options.timeout))
        yield Sleep(interval)
        response = yield _provider_request(
            entry,
            clock,
            "POST",
            endpoints.token,
            data={
                "grant_type": DEVICE_GRANT,
                "device_code": device_code,
                "client_id": entry.client_id,
            },
        )
        body = _provider_json(entry, response, "token answer")
        error = body.get("error")
        if error is None:
            return ProviderTokens(_id_token(entry, body), None)
        if error == "authorization_pending":
            continue
        if error == "slow_down":
            interval += SLOW_DOWN_STEP
            continue
        if error == "expired_token":
            raise _expired(entry, expires_in)
        raise _refusal(entry, body)


# --- the loopback receiver -------------------------------------------------------------------


class LoopbackReceiver:
    """RFC 8252's loopback redirect: listens on 127.0.0.1, on a port the system picks, for the
    one redirect of one sign-in. Other paths are answered 404 and ignored; the redirect is
    answered with a page telling the person what happened, and ends the wait whatever it
    carries (a wrong ``state`` is refused by the flow, and answered 400 here)."""

    def __init__(self, state: str, path: str = CALLBACK_PATH) -> None:
        self.state = state
        self.path = path
        self.answer: dict[str, str] | None = None
        self._done = threading.Event()
        self._server = _ReceiverServer(("127.0.0.1", 0), _ReceiverHandler)
        self._server.receiver = self
        self.redirect_uri = f"http://127.0.0.1:{self._server.server_address[1]}{path}"
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="sessiond-openid-loopback",
            daemon=True,
        )
        self._thread.start()

    def wait(self, timeout: float) -> dict[str, str] | None:
        """The redirect's query parameters; None when none came within ``timeout``."""
        self._done.wait(max(0.0, timeout))
        return self.answer

    def received(self, query: dict[str, str]) -> tuple[int, str]:
        """Called by the handler: keep the first redirect; what to tell the browser."""
        if self.answer is None and not self._done.is_set():
            self.answer = query
            self._done.set()
        if not secrets.compare_digest(query.get("state", ""), self.state):
            return 400, "This sign-in answer does not belong to the sign-in that waits: refused."
        if "error" in query:
            return 200, f"The identity provider refused the sign-in ({query['error']})."
        return 200, "Signed in. You may close this window and return to the application."

    def close(self) -> None:
        self._done.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


class _ReceiverServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    receiver: LoopbackReceiver


class _ReceiverHandler(http.server.BaseHTTPRequestHandler):
    server: _ReceiverServer
    timeout = 10  # a connection that sends nothing (a browser's preconnect) is let go

    def do_GET(self) -> None:
        parts = urlsplit(self.path)
        if parts.path != self.server.receiver.path:
            self._answer(404, "Not found.")
            return
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
        self._answer(*self.server.receiver.received(query))

    def _answer(self, status: int, text: str) -> None:
        page = (
            "<!doctype html><html><head><meta charset=utf-8><title>sessiond sign-in</title>"
            f"</head><body><p>{html.escape(text)}</p></body></html>"
        ).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/html; charset=utf-8")
        self.send_header("Content-Length", str(len(page)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("Referrer-Policy", "no-referrer")
        self.end_headers()
        self.wfile.write(page)

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet: the query carries the code."""


# --- plumbing --------------------------------------------------------------------------------


def _s256(verifier: str) -> str:
    """RFC 7636 section 4.2: BASE64URL(SHA256(ASCII(verifier))), no padding."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


def _system_browser(url: str) -> None:
    if not webbrowser.open(url):
        print(f"Open this address in a browser to sign in:\n  {url}", file=sys.stderr)


def _print_user_code(uri: str, user_code: str, complete: str | None) -> None:
    print(f"To sign in, open {uri} and enter the code {user_code}", file=sys.stderr)
    if complete:
        print(f"  (or open {complete})", file=sys.stderr)


def _provider_request(
    entry: ProviderEntry,
    clock: _Clock,
    method: str,
    url: str,
    *,
    data: dict[str, str] | None = None,
) -> httpx.Request:
    left = clock.left()
    if left <= 0:
        raise _expired(entry, clock.timeout)
    request = httpx.Request(method, url, data=data, headers={"Accept": "application/json"})
    request.extensions["timeout"] = httpx.Timeout(min(PROVIDER_CALL_TIMEOUT, left)).as_dict()
    request.extensions[TRANSPORT_ERROR_EXTENSION] = lambda exc: _unavailable(
        entry, f"cannot be reached at {url}: {exc or type(exc).__name__}"
    )
    return request


def _provider_json(entry: ProviderEntry, response: httpx.Response, what: str) -> dict[str, Any]:
    """The provider's JSON answer: a success, or an OAuth error body (RFC 6749 section 5.2)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict) or (not response.is_success and "error" not in body):
        raise _unavailable(entry, f"its {what} is HTTP {response.status_code} without OAuth JSON")
    return body


def _id_token(entry: ProviderEntry, body: dict[str, Any]) -> str:
    token = body.get("id_token")
    if not isinstance(token, str) or not token:
        raise _unavailable(entry, "its token answer carries no id_token (is 'openid' a scope?)")
    return token


def _unavailable(entry: ProviderEntry, cause: str) -> SessiondError:
    return OpenIdProviderUnavailable(
        f"the OpenID provider {entry.name!r} ({entry.issuer}) {cause}",
        details={"provider": entry.name, "cause": cause},
    )


def _expired(entry: ProviderEntry, seconds: float) -> SessiondError:
    return OpenIdSignInExpired(
        f"the sign-in at the OpenID provider {entry.name!r} was not completed within "
        f"{seconds:g} s; start it again",
        details={"provider": entry.name, "error": "expired"},
    )


def _refusal(entry: ProviderEntry, body: dict[str, Any]) -> SessiondError:
    error = str(body.get("error"))
    description = str(body.get("error_description") or "")
    said = f": {description}" if description else ""
    return OpenIdAuthorizationRefused(
        f"the OpenID provider {entry.name!r} refused the sign-in ({error}{said})",
        details={"provider": entry.name, "error": error, "description": description},
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) and value else None
