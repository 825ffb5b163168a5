"""The Python client's OpenID Connect flows against the real test provider (oidc-provider on
Node.js, tests/infra/oidc.py): the system browser with a loopback redirect (RFC 8252, PKCE)
driven in Debian's Chromium through the provider's own pages, and the device authorization
grant (RFC 8628) with its user-code pages.
"""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, Playwright, sync_playwright

from sessiond import SessionClient
from sessiond.errors import (
    OpenIdAccessDenied,
    OpenIdProviderUnavailable,
    OpenIdSignInExpired,
    OpenIdStateMismatch,
)
from sessiond.openid_client import OpenIdSignIn, ProviderEntry, ProviderTokens, provider_tokens_flow
from tests.infra.oidc import OidcProvider
from tests.infra.oidc_pages import complete_device_flow, provider_login

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


@pytest.fixture
def entry(oidc_provider: OidcProvider) -> ProviderEntry:
    """The provider as sessiond lists it: the public client is the desktop one."""
    return ProviderEntry(
        "corp", oidc_provider.issuer, oidc_provider.desktop_client.client_id, SCOPES
    )


def _provider_tokens(entry: ProviderEntry, options: OpenIdSignIn, **client: Any) -> ProviderTokens:
    """Run the flow with the provider alone (no sessiond: the exchange is not asked for)."""
    with SessionClient("http://127.0.0.1:9", **client) as driver:
        return driver._run(provider_tokens_flow(entry, options))


# --- the loopback flow -----------------------------------------------------------------------


def test_loopback_flow_redeems_the_code_with_pkce_for_an_id_token_with_the_nonce(
    oidc_provider: OidcProvider, entry: ProviderEntry, page: Page
) -> None:
    alice = oidc_provider.user("alice")
    opened: list[str] = []

    def open_browser(url: str) -> None:
        opened.append(url)
        page.goto(url)
        provider_login(page, alice.login, alice.password)

    tokens = _provider_tokens(entry, OpenIdSignIn("corp", open_browser=open_browser, timeout=60))
    asked = parse_qs(urlsplit(opened[0]).query)
    assert asked["code_challenge_method"] == ["S256"] and asked["response_type"] == ["code"]
    redirect = urlsplit(asked["redirect_uri"][0])
    assert redirect.hostname == "127.0.0.1" and redirect.port and redirect.path == "/callback"
    claims = _claims(tokens.id_token)
    assert claims["iss"] == oidc_provider.issuer and claims["sub"] == alice.sub
    assert claims["aud"] == entry.client_id and claims["nonce"] == tokens.nonce
    assert asked["nonce"] == [tokens.nonce] and "Signed in" in page.content()


def test_a_redirect_with_a_wrong_or_no_state_is_refused_at_the_loopback_receiver(
    entry: ProviderEntry,
) -> None:
    for state in ("forged-state", None):
        answers: list[httpx.Response] = []

        def open_browser(
            url: str, state: str | None = state, answers: list[httpx.Response] = answers
        ) -> None:
            redirect = parse_qs(urlsplit(url).query)["redirect_uri"][0]
            params = {"code": "a-code", **({"state": state} if state else {})}
            answers.append(httpx.get(redirect, params=params, timeout=10))

        with pytest.raises(OpenIdStateMismatch) as refused:
            _provider_tokens(entry, OpenIdSignIn("corp", open_browser=open_browser, timeout=30))
        assert refused.value.code == "openid_state_mismatch"
        assert refused.value.details["provider"] == "corp"
        assert answers[0].status_code == 400 and "does not belong" in answers[0].text


def test_the_loopback_receiver_answers_other_paths_404_and_keeps_waiting(
    entry: ProviderEntry,
) -> None:
    seen: list[int] = []

    def open_browser(url: str) -> None:
        redirect = urlsplit(parse_qs(urlsplit(url).query)["redirect_uri"][0])
        seen.append(httpx.get(f"http://{redirect.netloc}/favicon.ico", timeout=10).status_code)

    started = time.monotonic()
    with pytest.raises(OpenIdSignInExpired) as expired:
        _provider_tokens(entry, OpenIdSignIn("corp", open_browser=open_browser, timeout=2))
    assert seen == [404] and expired.value.code == "openid_sign_in_expired"
    assert time.monotonic() - started < 30  # bounded by the timeout: did not stall


def test_declining_consent_at_the_provider_ends_the_loopback_flow_as_access_denied(
    oidc_provider: OidcProvider, entry: ProviderEntry, page: Page
) -> None:
    bob = oidc_provider.user("bob")

    def open_browser(url: str) -> None:
        page.goto(url)
        provider_login(page, bob.login, bob.password, consent=False)

    with pytest.raises(OpenIdAccessDenied) as denied:
        _provider_tokens(entry, OpenIdSignIn("corp", open_browser=open_browser, timeout=60))
    assert denied.value.details["error"] == "access_denied"


# --- the device flow -------------------------------------------------------------------------


def test_device_flow_polls_until_the_person_approves(
    oidc_provider: OidcProvider, entry: ProviderEntry, page: Page
) -> None:
    alice = oidc_provider.user("alice")
    shown: list[tuple[str, str, str | None]] = []
    polls: list[str] = []

    def on_user_code(uri: str, code: str, complete: str | None) -> None:
        shown.append((uri, code, complete))

    def on_answer(response: httpx.Response) -> None:
        if response.request.url.path.endswith("/token"):
            response.read()
            polls.append(response.json().get("error", "granted"))
            if polls == ["authorization_pending"]:  # the person approves only now
                complete_device_flow(page, shown[0][0], shown[0][1], alice.login, alice.password)

    options = OpenIdSignIn("corp", flow="device", on_user_code=on_user_code, timeout=60)
    with httpx.Client(timeout=30, event_hooks={"response": [on_answer]}) as http:
        tokens = _provider_tokens(entry, options, http=http)
    assert polls == ["authorization_pending", "granted"]
    assert _claims(tokens.id_token)["sub"] == alice.sub and tokens.nonce is None
    assert shown[0][2] and shown[0][1] in shown[0][2]


def test_device_flow_denied_by_the_person_ends_as_access_denied(
    oidc_provider: OidcProvider, entry: ProviderEntry, page: Page
) -> None:
    def on_user_code(uri: str, code: str, complete: str | None) -> None:
        page.goto(uri)
        page.fill("input[name=user_code]", code)
        with page.expect_navigation():
            page.click("#oidc-user-code-submit")
        with page.expect_navigation():
            page.click("#oidc-device-abort")

    with pytest.raises(OpenIdAccessDenied) as denied:
        _provider_tokens(
            entry, OpenIdSignIn("corp", flow="device", on_user_code=on_user_code, timeout=60)
        )
    assert denied.value.code == "openid_access_denied"
    assert "corp" in denied.value.message and denied.value.details["error"] == "access_denied"


def test_device_flow_not_completed_in_time_ends_as_expired(entry: ProviderEntry) -> None:
    started = time.monotonic()
    with pytest.raises(OpenIdSignInExpired) as expired:
        _provider_tokens(
            entry, OpenIdSignIn("corp", flow="device", on_user_code=lambda *_: None, timeout=3)
        )
    assert "not completed within 3 s" in expired.value.message
    assert time.monotonic() - started < 30  # did not stall


# --- the provider down -----------------------------------------------------------------------


def test_a_provider_that_is_down_or_frozen_is_named_within_the_timeout(
    oidc_provider: OidcProvider, entry: ProviderEntry
) -> None:
    options = OpenIdSignIn("corp", flow="device", on_user_code=lambda *_: None, timeout=3)
    with oidc_provider.stopped(), pytest.raises(OpenIdProviderUnavailable) as down:
        _provider_tokens(entry, options)
    assert down.value.details["provider"] == "corp" and "cannot be reached" in down.value.message
    started = time.monotonic()
    with oidc_provider.frozen(), pytest.raises(OpenIdProviderUnavailable) as frozen:
        _provider_tokens(entry, options)
    assert time.monotonic() - started < 30  # bounded by the timeout: did not stall
    assert frozen.value.code == "openid_provider_unavailable"
