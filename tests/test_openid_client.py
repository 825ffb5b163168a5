"""The Python client's OpenID Connect flows against the real test provider (oidc-provider on
Node.js, tests/infra/oidc.py): the system browser with a loopback redirect (RFC 8252, PKCE)
driven in Debian's Chromium through the provider's own pages, and the device authorization
grant (RFC 8628) with its user-code pages. Every sign-in goes through ``open_session_openid``
of a client of a real ``sessiond serve`` that has the provider configured, which exchanges the
ID token for a platform session.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from sessiond import (
    AsyncSessionClient,
    LoginType,
    SessionClient,
    SessionManager,
)
from sessiond.errors import (
    OpenIdAuthorizationRefused,
    OpenIdProviderUnavailable,
    OpenIdProviderUnknown,
    OpenIdSignInExpired,
    OpenIdStateInvalid,
)
from sessiond.openid_client import OpenIdSignIn
from sessiond.token import SessionToken
from tests.infra.oidc import OidcProvider
from tests.infra.oidc_pages import complete_device_flow, provider_login

from .conftest import ServerProcess, free_port, server_env
from .test_console import CHROMIUM, CHROMIUM_ARGS

SCOPES = ("openid", "profile", "email", "groups")


def _claims(jwt: str) -> dict[str, Any]:
    """An ID token's payload, read (sessiond checks the signature; this only looks)."""
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context()  # a fresh cookie jar: no provider session from another test
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


@pytest.fixture(scope="module")
def openid_server(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    """sessiond with the test provider as ``corp`` (the first sign-in of an account creates its
    user), and as ``mixed`` under an issuer its discovery document does not name."""
    root = tmp_path_factory.mktemp("openid-client")
    console = oidc_provider.console_client
    config = root / "sessiond.toml"
    config.write_text(
        f"""
[openid.providers.corp]
issuer = "{oidc_provider.issuer}"
display_name = "Corp sign-in"
client_id = "{console.client_id}"
client_secret = "{console.client_secret}"
public_client_id = "{oidc_provider.desktop_client.client_id}"
scopes = {json.dumps(list(SCOPES))}
provision = true

[openid.providers.mixed]
issuer = "{oidc_provider.issuer}/"
public_client_id = "{oidc_provider.desktop_client.client_id}"
""",
        encoding="utf-8",
    )
    data_dir = root / "sessiond-data"
    env = server_env(data_dir, SESSIOND_CONFIG=str(config))
    proc = ServerProcess(data_dir, free_port(), env, root / "server.log")
    proc.start()
    yield proc
    proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log


def _sign_in(server: ServerProcess, **options: Any) -> SessionToken:
    """``open_session_openid("corp", **options)`` of a new client of ``server``."""
    with SessionClient(server.url) as client:
        return client.open_session_openid("corp", **options)


# --- the loopback flow -----------------------------------------------------------------------


def test_a_redirect_with_a_wrong_or_no_state_is_refused_at_the_loopback_receiver(
    openid_server: ServerProcess,
) -> None:
    for state in ("forged-state", None):
        answers: list[httpx.Response] = []

        def open_browser(
            url: str, state: str | None = state, answers: list[httpx.Response] = answers
        ) -> None:
            redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
            params = {"code": "a-code", **({"state": state} if state else {})}
            answers.append(httpx.get(redirect, params=params, timeout=10))

        with pytest.raises(OpenIdStateInvalid) as refused:
            _sign_in(openid_server, open_browser=open_browser, timeout=30)
        assert refused.value.code == "openid_state_invalid"
        assert refused.value.details["provider"] == "corp"
        assert answers[0].status_code == 400 and "does not belong" in answers[0].text


def test_the_loopback_receiver_answers_other_paths_404_and_keeps_waiting(
    openid_server: ServerProcess,
) -> None:
    seen: list[int] = []

    def open_browser(url: str) -> None:
        redirect = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0])
        seen.append(httpx.get(f"http://{redirect.netloc}/favicon.ico", timeout=10).status_code)

    started = time.monotonic()
    with pytest.raises(OpenIdSignInExpired) as expired:
        _sign_in(openid_server, open_browser=open_browser, timeout=2)
    assert seen == [404] and expired.value.code == "openid_sign_in_expired"
    assert time.monotonic() - started < 30  # bounded by the timeout: did not stall


def test_declining_consent_at_the_provider_ends_the_loopback_flow_as_access_denied(
    oidc_provider: OidcProvider, openid_server: ServerProcess, page: Page
) -> None:
    bob = oidc_provider.user("bob")

    def open_browser(url: str) -> None:
        page.goto(url)
        provider_login(page, bob.login, bob.password, consent=False)

    with pytest.raises(OpenIdAuthorizationRefused) as denied:
        _sign_in(openid_server, open_browser=open_browser, timeout=60)
    assert denied.value.details["error"] == "access_denied"
    assert "refused the sign-in (access_denied)" in page.content()  # the receiver's page


def test_the_receiver_page_shows_what_the_redirect_carries_as_text(
    openid_server: ServerProcess,
) -> None:
    answers: list[httpx.Response] = []

    def open_browser(url: str) -> None:
        asked = parse_qs(urlsplit(url).query)
        params = {"state": asked["state"][0], "error": "<script>alert(1)</script>"}
        answers.append(httpx.get(asked["redirect_uri"][0], params=params, timeout=10))

    with pytest.raises(OpenIdAuthorizationRefused) as refused:
        _sign_in(openid_server, open_browser=open_browser, timeout=30)
    assert refused.value.details["error"] == "<script>alert(1)</script>"
    assert "<script>" not in answers[0].text and "&lt;script&gt;" in answers[0].text


# --- the device flow -------------------------------------------------------------------------


def test_the_device_flow_polls_until_the_person_approves(
    oidc_provider: OidcProvider, openid_server: ServerProcess, page: Page
) -> None:
    alice = oidc_provider.user("alice")
    shown: list[tuple[str, str, str | None]] = []
    polls: list[str] = []

    def on_user_code(uri: str, code: str, complete: str | None) -> None:
        shown.append((uri, code, complete))

    exchanged: list[dict[str, Any]] = []

    def on_answer(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/token"):
            response.read()
            polls.append(response.json().get("error", "granted"))
            if polls == ["authorization_pending"]:  # the person approves only now
                complete_device_flow(page, shown[0][0], shown[0][1], alice.login, alice.password)
        if response.request.url.path == "/api/v1/openid/exchange":
            exchanged.append(json.loads(response.request.content))

    with (
        httpx.Client(timeout=30, event_hooks={"response": [on_answer]}) as http,
        SessionClient(openid_server.url, http=http) as client,
    ):
        token = client.open_session_openid(
            "corp", flow="device", on_user_code=on_user_code, timeout=60
        )
        assert client.current_session()["SessionID"] == str(token.session_id)
    assert polls == ["authorization_pending", "granted"] and token.login_type == LoginType.OPEN_ID
    assert shown[0][2] and shown[0][1] in shown[0][2]  # verification_uri_complete
    assert _claims(exchanged[0]["Token"])["sub"] == alice.sub and "Nonce" not in exchanged[0]


def test_device_flow_denied_by_the_person_ends_as_access_denied(
    oidc_provider: OidcProvider, openid_server: ServerProcess, page: Page
) -> None:
    def on_user_code(uri: str, code: str, complete: str | None) -> None:
        page.goto(uri)
        page.fill("input[name=user_code]", code)
        with page.expect_navigation():
            page.click("#oidc-user-code-submit")
        with page.expect_navigation():
            page.click("#oidc-device-abort")

    with pytest.raises(OpenIdAuthorizationRefused) as denied:
        _sign_in(openid_server, flow="device", on_user_code=on_user_code, timeout=60)
    assert denied.value.code == "openid_authorization_refused"
    assert "corp" in denied.value.message and denied.value.details["error"] == "access_denied"


def test_device_flow_not_completed_in_time_ends_as_expired(openid_server: ServerProcess) -> None:
    started = time.monotonic()
    with pytest.raises(OpenIdSignInExpired) as expired:
        _sign_in(openid_server, flow="device", on_user_code=lambda *_: None, timeout=3)
    assert "not completed within 3 s" in expired.value.message
    assert time.monotonic() - started < 30  # did not stall


# --- the provider down -----------------------------------------------------------------------


def test_a_provider_that_is_down_or_frozen_is_named_within_the_timeout(
    oidc_provider: OidcProvider, openid_server: ServerProcess
) -> None:
    options: dict[str, Any] = {"flow": "device", "on_user_code": lambda *_: None, "timeout": 3}
    with oidc_provider.stopped(), pytest.raises(OpenIdProviderUnavailable) as down:
        _sign_in(openid_server, **options)
    assert down.value.details["provider"] == "corp" and "cannot be reached" in down.value.message
    started = time.monotonic()
    with oidc_provider.frozen(), pytest.raises(OpenIdProviderUnavailable) as frozen:
        _sign_in(openid_server, **options)
    assert time.monotonic() - started < 30  # bounded by the timeout: did not stall
    assert frozen.value.code == "openid_provider_unavailable"


# --- sessions: both clients, the manager --------------------------------------------------


def _signs_in(page: Page, login: str, password: str, opened: list[str]) -> Any:
    """An ``open_browser`` that signs ``login`` in at the provider's pages in ``page``."""

    def open_browser(url: str) -> None:
        opened.append(url)
        page.goto(url)
        provider_login(page, login, password)

    return open_browser


def test_the_browser_flow_ends_in_a_platform_session_token_that_validates(
    openid_server: ServerProcess, oidc_provider: OidcProvider, page: Page
) -> None:
    alice = oidc_provider.user("alice")
    opened: list[str] = []
    sent: list[httpx.Request] = []
    with (
        httpx.Client(timeout=30, event_hooks={"request": [sent.append]}) as http,
        SessionClient(openid_server.url, http=http) as client,
    ):
        token = client.open_session_openid(
            "corp", open_browser=_signs_in(page, alice.login, alice.password, opened), timeout=60
        )
        assert client.session_token == token and token.login_type == LoginType.OPEN_ID
        assert client.current_session()["SessionID"] == str(token.session_id)
        assert client.openid_sign_in is not None and client.openid_sign_in.provider == "corp"
        assert client.close_session() is True
    asked = parse_qs(urlsplit(opened[0]).query)
    assert asked["client_id"] == [oidc_provider.desktop_client.client_id]
    assert asked["code_challenge_method"] == ["S256"] and asked["response_type"] == ["code"]
    redirect = urlsplit(asked["redirect_uri"][0])
    assert redirect.hostname == "127.0.0.1" and redirect.port and redirect.path == "/callback"
    assert "Signed in" in page.content()  # the receiver's page
    redeemed = parse_qs(next(r for r in sent if r.url.path == "/token").content.decode())
    assert "client_secret" not in redeemed and redeemed["code_verifier"][0]
    exchange = json.loads(next(r for r in sent if r.url.path.endswith("/exchange")).content)
    claims = _claims(exchange["Token"])
    assert claims["iss"] == oidc_provider.issuer and claims["sub"] == alice.sub
    assert claims["nonce"] == exchange["Nonce"] == asked["nonce"][0]


def _in_a_thread_of_its_own(main: Callable[[], Coroutine[Any, Any, None]]) -> None:
    """Run ``main()`` on an event loop of a thread of its own: Playwright's sync API holds
    this module's main thread."""
    failed: list[BaseException] = []

    def run() -> None:
        try:
            asyncio.run(main())
        except BaseException as exc:  # handed to the test's thread
            failed.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    thread.join(timeout=180)
    assert not thread.is_alive(), "the async client's sign-in stalled"
    if failed:
        raise failed[0]


def test_the_async_client_device_flow_ends_in_a_platform_session_token(
    openid_server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    _in_a_thread_of_its_own(lambda: _async_device_flow(openid_server, oidc_provider))


async def _async_device_flow(openid_server: ServerProcess, oidc_provider: OidcProvider) -> None:
    bob = oidc_provider.user("bob")
    polls: list[str] = []
    told = asyncio.Event()

    async def on_answer(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/token"):
            await response.aread()
            polls.append(response.json().get("error", "granted"))
            told.set()

    def approve(uri: str, code: str) -> None:  # a person at another machine's browser
        with sync_playwright() as driver:
            chromium = driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                complete_device_flow(chromium.new_page(), uri, code, bob.login, bob.password)
            finally:
                chromium.close()

    approving: list[asyncio.Task[None]] = []

    async def on_user_code(uri: str, code: str, complete: str | None) -> None:
        async def later() -> None:
            await told.wait()  # the client has been told to wait once
            await asyncio.to_thread(approve, uri, code)

        approving.append(asyncio.create_task(later()))

    async with (
        httpx.AsyncClient(timeout=30, event_hooks={"response": [on_answer]}) as http,
        AsyncSessionClient(openid_server.url, http=http) as client,
    ):
        token = await client.open_session_openid(
            "corp", flow="device", on_user_code=on_user_code, timeout=90
        )
        assert (await client.current_session())["SessionID"] == str(token.session_id)
        assert token.login_type == LoginType.OPEN_ID
    await approving[0]
    assert polls[0] == "authorization_pending" and polls[-1] == "granted"


def test_the_async_client_refuses_a_wrong_state_at_its_receiver(
    openid_server: ServerProcess,
) -> None:
    answers: list[httpx.Response] = []

    async def open_browser(url: str) -> None:
        redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
        async with httpx.AsyncClient(timeout=10) as http:
            answers.append(await http.get(redirect, params={"code": "c", "state": "forged"}))

    async def main() -> None:
        async with AsyncSessionClient(openid_server.url) as client:
            with pytest.raises(OpenIdStateInvalid):
                await client.open_session_openid("corp", open_browser=open_browser, timeout=30)
            assert client.session_token is None

    _in_a_thread_of_its_own(main)
    assert answers[0].status_code == 400


def test_a_discovery_document_that_names_another_issuer_is_refused(
    openid_server: ServerProcess,
) -> None:
    opened: list[str] = []
    with SessionClient(openid_server.url) as client, pytest.raises(OpenIdProviderUnavailable) as no:
        client.open_session_openid("mixed", open_browser=opened.append, timeout=10)
    assert opened == [] and no.value.details["provider"] == "mixed"
    assert "names the issuer" in no.value.message


def test_an_unknown_provider_is_refused_before_any_browser_opens(
    openid_server: ServerProcess,
) -> None:
    opened: list[str] = []
    with SessionClient(openid_server.url) as client, pytest.raises(OpenIdProviderUnknown) as no:
        client.open_session_openid("elsewhere", open_browser=opened.append, timeout=10)
    assert opened == [] and "corp" in no.value.message and no.value.status == 400


def test_the_manager_reopens_through_the_openid_flow(
    openid_server: ServerProcess, oidc_provider: OidcProvider, page: Page
) -> None:
    alice = oidc_provider.user("alice")
    opened: list[str] = []
    open_browser = _signs_in(page, alice.login, alice.password, opened)
    events: list[str] = []
    with (
        SessionClient(openid_server.url) as client,
        SessionManager(
            client, openid=OpenIdSignIn("corp", open_browser=open_browser, timeout=60)
        ) as manager,
    ):
        manager.on("opened", lambda token: events.append("opened"))
        manager.on("expired", lambda token, error: events.append(f"expired {error.code}"))
        first = client.session_token
        assert first is not None and first.login_type == LoginType.OPEN_ID
        with SessionClient(openid_server.url) as admin:
            admin.open_session("admin", openid_server.admin_password)
            assert admin.close_session_as_admin(first.session_id) is True
        info = manager.call(lambda c: c.current_session())
        assert info["SessionID"] != str(first.session_id) and manager.reopened == 1
        assert client.session_token is not None
        assert client.session_token.login_type == LoginType.OPEN_ID
        assert client.session_token.user_id == first.user_id
    assert len(opened) == 2  # the second sign-in ran the flow again
    assert events == ["expired session_not_found", "opened"]
