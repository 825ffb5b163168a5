"""Playwright (sync API) helpers for the test OpenID Provider's own pages
(:mod:`tests.infra.oidc`, ``tests/infra/oidc/provider.mjs``): login, consent, the device flow's
user-code pages, RP-initiated logout.

Launch the browser as tests/test_console.py does (Debian's Chromium, no download)::

    browser = playwright.chromium.launch(executable_path="/usr/bin/chromium", args=[...])

then start the flow (e.g. ``page.goto(authorization_url)`` or the console's
``/console/openid/NAME/start``) and call :func:`provider_login`.
"""

from __future__ import annotations

import time

from playwright.sync_api import Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

# What each of the provider's pages shows (ids set by provider.mjs).
LOGIN_FORM = "#oidc-login"
CONSENT_FORM = "#oidc-consent"
DONE = "#oidc-done"
ERROR = "#oidc-error, .oidc-error"
ANY_PROVIDER_PAGE = f"{LOGIN_FORM}, {CONSENT_FORM}, {DONE}, {ERROR}"


class ProviderPageError(AssertionError):
    """The provider showed an error page or refused the login."""


def _on_provider(page: Page, issuer: str) -> bool:
    return page.url.startswith(issuer.rstrip("/") + "/")


def provider_login(
    page: Page,
    login: str,
    password: str,
    *,
    issuer: str | None = None,
    consent: bool = True,
    timeout: float = 20.0,
) -> None:
    """Complete the provider's login and consent pages in ``page``, whichever of them appear
    (an existing provider session skips the login, an existing grant the consent).

    Returns once the browser has left the provider (to the client's redirect URI: the page is
    then whatever the client shows) or the provider shows a page that ends the flow (the device
    flow's success page). Give ``issuer`` when the flow may already have left the provider
    before this is called. ``consent=False`` denies the consent instead. Raises
    :class:`ProviderPageError` on a refused login or an error page.
    """
    deadline = time.monotonic() + timeout
    logged_in = False
    while True:
        left = timeout_ms(deadline)
        if issuer is not None and not _on_provider(page, issuer):
            return
        page.wait_for_load_state("domcontentloaded", timeout=left)
        if issuer is None:
            issuer = _origin(page.url)
        if not _on_provider(page, issuer):
            return
        locator = page.locator(ANY_PROVIDER_PAGE).first
        try:
            locator.wait_for(state="attached", timeout=min(left, 2000))
        except PlaywrightTimeoutError:  # not one of its pages yet (a redirect in flight)
            if time.monotonic() > deadline:
                raise ProviderPageError(f"no provider page at {page.url}") from None
            continue
        if page.locator(ERROR).count():
            raise ProviderPageError(page.locator("main").inner_text())
        if page.locator(DONE).count():
            return
        if page.locator(LOGIN_FORM).count():
            if logged_in:
                raise ProviderPageError("the provider asked for the login again")
            page.fill("#oidc-login-name", login)
            page.fill("#oidc-login-password", password)
            with page.expect_navigation(timeout=left):
                page.click("#oidc-login-submit")
            logged_in = True
            if page.locator("#oidc-error").count():
                raise ProviderPageError(page.locator("#oidc-error").inner_text())
            continue
        if page.locator(CONSENT_FORM).count():
            with page.expect_navigation(timeout=left):
                page.click("#oidc-consent-submit" if consent else "#oidc-abort")
            continue


def complete_device_flow(
    page: Page,
    verification_uri: str,
    user_code: str,
    login: str,
    password: str,
    *,
    timeout: float = 20.0,
) -> None:
    """Open the device flow's ``verification_uri`` in ``page``, enter ``user_code``, confirm
    it, sign in as ``login`` and consent; returns at the provider's "signed in" page (the
    device's token request then succeeds)."""
    deadline = time.monotonic() + timeout
    page.goto(verification_uri, timeout=timeout_ms(deadline))
    page.fill("input[name=user_code]", user_code)
    with page.expect_navigation(timeout=timeout_ms(deadline)):
        page.click("#oidc-user-code-submit")
    if page.locator("#oidc-error").count():
        raise ProviderPageError(page.locator("#oidc-error").inner_text())
    with page.expect_navigation(timeout=timeout_ms(deadline)):
        page.click("#oidc-device-confirm")
    provider_login(page, login, password, timeout=max(deadline - time.monotonic(), 1.0))
    if not page.locator(DONE).count():
        raise ProviderPageError(f"the device flow did not end at its success page: {page.url}")


def confirm_logout(page: Page, *, timeout: float = 20.0) -> None:
    """On the provider's RP-initiated logout page (``end_session_endpoint``), answer "yes";
    returns after the provider has handled it (its post-logout page or the client's
    ``post_logout_redirect_uri``)."""
    page.locator("#oidc-logout-yes").wait_for(timeout=timeout * 1000)
    with page.expect_navigation(timeout=timeout * 1000):
        page.click("#oidc-logout-yes")


def timeout_ms(deadline: float) -> float:
    return max((deadline - time.monotonic()) * 1000, 1.0)


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
