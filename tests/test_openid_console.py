"""The console's sign-in through an OpenID Provider and RP-initiated logout, in Debian's
Chromium, against a real ``sessiond serve`` and the real test provider (oidc-provider on
Node.js, tests/infra/oidc.py), through the provider's own login, consent and logout pages.

Hostile answers (no or a wrong ``state``, another provider's ``iss``) are sent with httpx, as an
attacker would, to the same real server.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Page,
    Playwright,
    Request,
    expect,
    sync_playwright,
)

from sessiond import SessionClient
from tests.infra.oidc import OidcProvider
from tests.infra.oidc_pages import ProviderPageError, confirm_logout, provider_login

from .conftest import ServerProcess, free_port, server_env
from .test_console import CHROMIUM, CHROMIUM_ARGS, VIEWPORT, _shot

SCOPES = ("openid", "profile", "email", "groups")
PENDING_COOKIE = "sessiond-console-openid"
CALLBACK = re.compile(r"/console/openid/corp/callback\?")


def _server(root: Path, provider: OidcProvider, more: str = "") -> ServerProcess:
    """sessiond with the test provider as ``corp`` (the confidential console client): the
    first sign-in of an account creates its user, members of sessiond-admins administer."""
    console = provider.console_client
    config = root / "sessiond.toml"
    config.write_text(
        f"""{more}
[openid.providers.corp]
issuer = "{provider.issuer}"
display_name = "Corp ID"
client_id = "{console.client_id}"
client_secret = "{console.client_secret}"
public_client_id = "{provider.desktop_client.client_id}"
scopes = {json.dumps(list(SCOPES))}
provision = true
admin_groups = ["sessiond-admins"]
""",
        encoding="utf-8",
    )
    data_dir = root / "sessiond-data"
    env = server_env(data_dir, SESSIOND_CONFIG=str(config))
    proc = ServerProcess(data_dir, free_port(), env, root / "server.log")
    proc.start()
    return proc


@pytest.fixture(scope="module")
def openid_console(
    oidc_provider: OidcProvider, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    # A second provider with only a public client: the console cannot sign in through it.
    more = (
        '[openid.providers.desktop-only]\nissuer = "https://idp.example"\npublic_client_id = "x"\n'
    )
    proc = _server(tmp_path_factory.mktemp("openid-console"), oidc_provider, more)
    yield proc
    proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log


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
    ctx = browser.new_context(viewport=VIEWPORT)  # a fresh jar: no provider session
    yield ctx
    ctx.close()


@pytest.fixture
def page(context: BrowserContext) -> Page:
    return context.new_page()


def _start(page: Page, server: ServerProcess) -> None:
    """The console's sign-in page, then its "Sign in with Corp ID" link."""
    page.goto(f"{server.url}/console/sign-in")
    link = page.locator("#openid-corp")
    expect(link).to_have_text("Sign in with Corp ID")
    with page.expect_navigation():
        link.click()


def _sign_in(page: Page, server: ServerProcess, provider: OidcProvider, login: str) -> None:
    _start(page, server)
    provider_login(page, login, provider.user(login).password, issuer=provider.issuer)
    expect(page).to_have_url(re.compile(r"/console/sessions$"))


def _session_token(context: BrowserContext) -> str:
    found = [c for c in context.cookies() if c["name"].endswith("sessiond-console")]
    assert len(found) == 1, context.cookies()
    value = str(found[0]["value"])
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def _open(server: ServerProcess, auth_text: str) -> bool:
    """Whether the session is open (its token validated by the server, as any client would)."""
    answer = httpx.get(
        f"{server.url}/api/v1/sessions/current", headers={"Tessa-Session": auth_text}, timeout=10
    )
    assert answer.status_code in (200, 401), answer.text
    return answer.status_code == 200


def _audited(server: ServerProcess, *words: str) -> dict[str, Any]:
    """The newest LoginFailed record whose reason has all of ``words`` (refusals' records are
    written in the background: waited for, at most 10 s)."""
    deadline = time.monotonic() + 10
    with SessionClient(server.url) as admin:
        admin.open_session("admin", server.admin_password)
        while True:
            page = admin.audit_records(action="LoginFailed", newest_first=True, limit=50)
            for record in page["Records"]:
                reason = json.dumps(record)
                if all(word in reason for word in words):
                    return dict(record)
            assert time.monotonic() < deadline, (words, page["Records"])
            time.sleep(0.2)


def _refusal(page: Page) -> tuple[str, str]:
    return page.locator("#error-code").inner_text(), page.locator(".error").inner_text()


# --- signing in ------------------------------------------------------------------------------


def test_an_administrator_signs_in_through_the_provider_and_the_user_page_shows_the_mapping(
    page: Page, context: BrowserContext, openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    page.goto(f"{openid_console.url}/console/sign-in")
    _shot(page, "signin-openid")
    _start(page, openid_console)
    assert page.url.startswith(oidc_provider.issuer + "/"), page.url
    alice = oidc_provider.user("alice")
    callbacks: list[str] = []
    page.on("request", lambda r: callbacks.append(r.url) if CALLBACK.search(r.url) else None)
    provider_login(page, "alice", alice.password, issuer=oidc_provider.issuer)
    expect(page).to_have_url(re.compile(r"/console/sessions$"))
    expect(page.locator("header nav")).to_contain_text("Users")  # an administrator's menu
    expect(page.locator(".who")).to_contain_text("alice")
    assert len(callbacks) == 1
    answer = parse_qs(urlsplit(callbacks[0]).query)
    assert answer["iss"] == [oidc_provider.issuer]  # RFC 9207: the provider says who it is
    assert "code" in answer and "state" in answer

    page.goto(f"{openid_console.url}/console/user?login=alice")
    expect(page.locator("#openid-provider")).to_have_text("Corp ID (corp)")
    expect(page.locator("#openid-mapping")).to_have_text(
        f"issuer {oidc_provider.issuer} · subject {alice.sub}"
    )
    expect(page.locator("input[name=account]")).to_have_value(
        f"openid:{oidc_provider.issuer}#{alice.sub}"
    )
    _shot(page, "user-openid")
    assert _open(openid_console, _session_token(context))


def test_the_authorization_request_uses_pkce_state_and_nonce(
    openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    with httpx.Client(base_url=openid_console.url, timeout=10) as http:
        started = http.get("/console/openid/corp/start")
    assert started.status_code == 303
    location = started.headers["location"]
    assert location.startswith(oidc_provider.issuer + "/")
    query = {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}
    assert query["response_type"] == "code"
    assert query["client_id"] == oidc_provider.console_client.client_id
    assert query["redirect_uri"] == f"{openid_console.url}/console/openid/corp/callback"
    assert query["code_challenge_method"] == "S256"
    assert len(query["code_challenge"]) == 43
    assert len(query["state"]) >= 32 and len(query["nonce"]) >= 32
    assert query["scope"].split() == list(SCOPES)
    cookie = started.headers["set-cookie"]
    assert cookie.startswith(PENDING_COOKIE + "=")
    for attribute in ("HttpOnly", "SameSite=lax", "Max-Age=600", "Path=/console"):
        assert attribute.lower() in cookie.lower(), cookie
    # Sealed: neither the state, the nonce nor the verifier can be read from it.
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    for secret in (query["state"], query["nonce"]):
        assert secret not in value and secret not in _b64_all(value)


def test_behind_a_proxy_the_redirect_uri_comes_from_public_url(
    oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    """``console.public_url`` names the address browsers use; the Host header does not count."""
    more = '[console]\npublic_url = "https://sessiond.example.org"\n'
    proc = _server(tmp_path, oidc_provider, more)
    try:
        started = httpx.get(
            f"{proc.url}/console/openid/corp/start",
            headers={"Host": "attacker.example", "X-Forwarded-Host": "attacker.example"},
            timeout=10,
        )
    finally:
        proc.stop()
    assert started.status_code == 303, started.text
    query = parse_qs(urlsplit(started.headers["location"]).query)
    assert query["redirect_uri"] == ["https://sessiond.example.org/console/openid/corp/callback"]


def _b64_all(value: str) -> str:
    text = value.rpartition(".")[2]
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("latin-1")


def test_only_providers_with_a_confidential_client_are_offered(
    page: Page, openid_console: ServerProcess
) -> None:
    page.goto(f"{openid_console.url}/console/sign-in")
    expect(page.locator("#openid-providers a")).to_have_count(1)
    expect(page.locator("#openid-corp")).to_be_visible()
    with httpx.Client(base_url=openid_console.url, timeout=10) as http:
        public_only = http.get("/console/openid/desktop-only/start")
        unknown = http.get("/console/openid/nobody/start")
    _assert_refused(public_only, 501, "not_configured")
    assert "client_id and client_secret" in public_only.text
    _assert_refused(unknown, 400, "openid_provider_unknown")
    assert "no OpenID Provider" in unknown.text


def test_a_regular_user_gets_the_consoles_usual_refusal(
    page: Page, openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    _sign_in(page, openid_console, oidc_provider, "bob")
    expect(page.locator("header nav")).to_have_text("My sessions")
    answer = page.goto(f"{openid_console.url}/console/users")
    assert answer is not None and answer.status == 403
    expect(page.locator(".error")).to_contain_text("only an administrator")


# --- hostile answers -------------------------------------------------------------------------


def _started(http: httpx.Client) -> dict[str, str]:
    started = http.get("/console/openid/corp/start")
    assert started.status_code == 303, started.text
    return {k: v[0] for k, v in parse_qs(urlsplit(started.headers["location"]).query).items()}


def _assert_refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert f'<code id="error-code">{code}</code>' in answer.text, answer.text
    assert "sessiond-console=" not in answer.headers.get("set-cookie", "")


def test_a_missing_or_wrong_state_is_refused(openid_console: ServerProcess) -> None:
    callback = "/console/openid/corp/callback"
    with httpx.Client(base_url=openid_console.url, timeout=10) as http:
        query = _started(http)
        wrong = http.get(callback, params={"code": "any", "state": query["state"][::-1]})
        _assert_refused(wrong, 401, "openid_state_invalid")
        assert "does not belong to a sign-in started in this browser" in wrong.text
        query = _started(http)
        missing = http.get(callback, params={"code": "any"})
        _assert_refused(missing, 401, "openid_state_invalid")
        query = _started(http)
        twice = http.get(f"{callback}?code=a&state={query['state']}&state={query['state']}&code=b")
        _assert_refused(twice, 400, "invalid_request")
        assert "repeats code, state" in twice.text
    with httpx.Client(base_url=openid_console.url, timeout=10) as other_browser:
        # The right state, from a browser that did not start the sign-in (no cookie).
        stolen = other_browser.get(callback, params={"code": "any", "state": query["state"]})
        _assert_refused(stolen, 401, "openid_state_invalid")
    record = _audited(openid_console, "provider corp", "state missing, wrong, used or expired")
    assert record["UserName"] == "(OpenID Connect sign-in)"


def test_an_answer_naming_another_issuer_is_refused(
    openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    """A provider mix-up (RFC 9207): the answer says it comes from another issuer."""
    with httpx.Client(base_url=openid_console.url, timeout=10) as http:
        query = _started(http)
        answer = http.get(
            "/console/openid/corp/callback",
            params={"code": "any", "state": query["state"], "iss": "https://evil.example"},
        )
    _assert_refused(answer, 401, "openid_issuer_mismatch")
    assert "https://evil.example" in answer.text and oidc_provider.issuer in answer.text
    _audited(openid_console, "provider corp", "https://evil.example", "mix-up")

    # The provider names itself in every answer (RFC 9207): one that names no issuer is refused.
    assert oidc_provider.discovery()["authorization_response_iss_parameter_supported"] is True
    with httpx.Client(base_url=openid_console.url, timeout=10) as http:
        query = _started(http)
        unnamed = http.get(
            "/console/openid/corp/callback", params={"code": "any", "state": query["state"]}
        )
    _assert_refused(unnamed, 401, "openid_issuer_mismatch")
    _audited(openid_console, "provider corp", "names no issuer")


def test_a_replayed_code_is_refused(
    page: Page, context: BrowserContext, openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    _start(page, openid_console)
    pending = [c for c in context.cookies() if c["name"] == PENDING_COOKIE]
    assert len(pending) == 1
    callbacks: list[str] = []

    def seen(request: Request) -> None:
        if CALLBACK.search(request.url):
            callbacks.append(request.url)

    page.on("request", seen)
    provider_login(page, "alice", oidc_provider.user("alice").password)
    expect(page).to_have_url(re.compile(r"/console/sessions$"))
    first = _session_token(context)

    # The same callback again: the browser's sign-in was used up.
    answer = page.goto(callbacks[0])
    assert answer is not None and answer.status == 401
    assert _refusal(page)[0] == "openid_state_invalid"

    # Even with the sign-in's cookie put back, the provider redeems a code once.
    context.add_cookies([pending[0]])  # type: ignore[list-item]
    answer = page.goto(callbacks[0])
    assert answer is not None and answer.status == 401
    code, message = _refusal(page)
    assert code == "openid_token_invalid", message
    assert "Corp ID" in message
    assert _session_token(context) == first  # no other session was set
    _audited(openid_console, "provider corp", "the provider refused the code", "invalid_grant")


def test_a_redirect_uri_not_registered_is_refused_by_the_provider(
    page: Page, openid_console: ServerProcess
) -> None:
    """Reached as localhost, the console asks for http://localhost:PORT/... as its redirect
    URI, which the provider's client does not have: the provider refuses, and never sends the
    browser to it."""
    page.goto(f"http://localhost:{openid_console.port}/console/sign-in")
    with page.expect_navigation():
        page.locator("#openid-corp").click()
    with pytest.raises(ProviderPageError, match="redirect_uri"):
        provider_login(page, "alice", "unused")
    assert "localhost" not in urlsplit(page.url).netloc


def test_access_denied_at_the_provider_shows_a_clear_page(
    page: Page, context: BrowserContext, openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    _start(page, openid_console)
    provider_login(page, "bob", oidc_provider.user("bob").password, consent=False)
    expect(page).to_have_url(CALLBACK)
    code, message = _refusal(page)
    assert code == "openid_authorization_refused"
    assert "Corp ID did not sign you in" in message and "cancelled" in message
    _shot(page, "openid-access-denied")
    _audited(openid_console, "provider corp", "access_denied")
    assert not [c for c in context.cookies() if c["name"].endswith("sessiond-console")]


# --- signing out -----------------------------------------------------------------------------


def test_sign_out_ends_the_session_and_the_providers(
    page: Page, context: BrowserContext, openid_console: ServerProcess, oidc_provider: OidcProvider
) -> None:
    _sign_in(page, openid_console, oidc_provider, "alice")
    auth_text = _session_token(context)
    assert _open(openid_console, auth_text)
    logout: list[str] = []
    page.on("request", lambda r: logout.append(r.url) if "/session/end" in r.url else None)

    page.get_by_role("button", name="Sign out").click()
    confirm_logout(page)
    expect(page).to_have_url(re.compile(r"/console/sign-in(\?.*)?$"))
    expect(page.locator("#openid-corp")).to_be_visible()

    assert not _open(openid_console, auth_text)
    left = {c["name"] for c in context.cookies()}
    assert not left & {"sessiond-console", "sessiond-console-openid-logout"}, left
    end = parse_qs(urlsplit(logout[0]).query)
    assert end["post_logout_redirect_uri"] == [f"{openid_console.url}/console/sign-in"]
    assert end["client_id"] == [oidc_provider.console_client.client_id]
    hint = _claims(end["id_token_hint"][0])
    assert hint["sub"] == oidc_provider.user("alice").sub
    assert hint["aud"] == oidc_provider.console_client.client_id

    # The provider's session ended too: signing in again asks for the password.
    _start(page, openid_console)
    expect(page.locator("#oidc-login")).to_be_visible()


def _claims(jwt: str) -> dict[str, Any]:
    payload = jwt.split(".")[1]
    return dict(json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4))))


def test_sign_out_when_the_provider_cannot_be_asked_still_ends_the_session(
    page: Page, context: BrowserContext, oidc_provider: OidcProvider, tmp_path: Path
) -> None:
    """A server that has not read the provider's discovery document since it started, with the
    provider down: the session closes, and the page says the provider's did not."""
    proc = _server(tmp_path, oidc_provider)
    try:
        _sign_in(page, proc, oidc_provider, "alice")
        auth_text = _session_token(context)
        proc.stop()
        proc.log_path = tmp_path / "server-again.log"
        with oidc_provider.stopped():
            proc.start()
            with page.expect_navigation():
                page.get_by_role("button", name="Sign out").click()
            expect(page).to_have_url(re.compile(r"/console/sign-in\?done=signed-out-here$"))
            expect(page.locator(".notice")).to_contain_text("sign out there too")
            assert not _open(proc, auth_text)
            left = {c["name"] for c in context.cookies()}
            assert not left & {"sessiond-console", "sessiond-console-openid-logout"}, left
    finally:
        proc.stop()
