"""What a newcomer meets in the console, and the console on a phone: in a real headless
Chromium against a real ``sessiond serve`` (the server and browser fixtures of
test_console.py, a server of this module's own).

The phone screenshots of docs/console.md (390 px wide) are taken here, into docs/console/
only when SESSIOND_UPDATE_SCREENSHOTS=1.
"""

# ruff: noqa: F811 (the fixtures of test_console.py, imported, are parameters by name here)
from __future__ import annotations

import json
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, Page, expect

from sessiond import SessionClient, SessionNotFound

from . import licences
from .conftest import ServerProcess
from .test_console import (  # noqa: F401 (the fixtures are used by name)
    CSP,
    Admin,
    _shot,
    _submit,
    _unique,
    _user,
    admin,
    browser,
    console_server,
    playwright,
    sign_in,
)

PHONE = {"width": 390, "height": 844}
PAGES = ("sessions", "users", "licences", "configuration", "audit")


@pytest.fixture
def phone(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=PHONE, device_scale_factor=1, is_mobile=True)
    yield ctx
    ctx.close()


@pytest.fixture
def desk(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport={"width": 1280, "height": 800})
    yield ctx
    ctx.close()


def _fits(page: Page) -> None:
    """Nothing scrolls sideways, and every item of the menu is on the screen."""
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], (page.url, width)
    items = page.locator("header nav a")
    assert items.count() >= 1
    for i in range(items.count()):
        item = items.nth(i)
        expect(item).to_be_visible()
        box = item.bounding_box()
        assert box is not None, item.inner_text()
        assert box["x"] >= 0 and box["x"] + box["width"] <= PHONE["width"], (item, box)


def test_the_console_fits_a_phone(
    admin: Admin, phone: BrowserContext, console_server: ServerProcess
) -> None:
    long_name = "Konstantinopolskaya-Rimskaya Ekaterina Aleksandrovna"
    login, password = _user(admin, "ekaterina", long_name)
    with SessionClient(console_server.url) as client:
        client.open_session(login, password)
        page = sign_in(phone, console_server, "admin", console_server.admin_password)
        for name in PAGES:
            page.goto(f"{console_server.url}/console/{name}")
            expect(page.locator("h1")).to_be_visible()
            _fits(page)
            if name in ("sessions", "users", "audit"):
                _shot(page, f"phone-{name}")
        # The lists scroll inside their own box: wide, but the page is not.
        page.goto(f"{console_server.url}/console/sessions")
        box = page.locator("#sessions").locator("xpath=..")
        assert box.evaluate("e => getComputedStyle(e).overflowX") == "auto"
        page.goto(f"{console_server.url}/console/user?login={login}")
        _fits(page)


def test_sessions_of_a_user_are_that_user_only(
    admin: Admin, desk: BrowserContext, console_server: ServerProcess
) -> None:
    """Ann's "Sessions of" link lists Ann's sessions, not Anna's (whose name starts the same)."""
    ann_name = _unique("Ann ")
    ann, ann_password = _user(admin, "ann", ann_name)
    anna, anna_password = _user(admin, "anna", ann_name + "a")
    with SessionClient(console_server.url) as mine, SessionClient(console_server.url) as theirs:
        my_token = mine.open_session(ann, ann_password)
        their_token = theirs.open_session(anna, anna_password)
        page = sign_in(desk, console_server, "admin", console_server.admin_password)
        page.goto(f"{console_server.url}/console/user?login={ann}")
        _submit(page, page.get_by_role("link", name=f"Sessions of {ann_name}"))
        expect(page.locator("#of-user")).to_contain_text(ann)
        rows = page.locator("#sessions tbody tr[data-session]")
        expect(rows).to_have_count(1)
        expect(page.locator(f'tr[data-session="{my_token.session_id}"]')).to_have_count(1)
        expect(page.locator(f'tr[data-session="{their_token.session_id}"]')).to_have_count(0)
        # The other filters keep to that user.
        page.select_option("select[name=dir]", "desc")
        _submit(page, page.get_by_role("button", name="Show"))
        expect(rows).to_have_count(1)
        # An unknown login is said to be unknown, not shown as an empty list.
        answer = page.goto(f"{console_server.url}/console/sessions?login=nobody-{ann}")
        assert answer is not None and answer.status == 404


def test_closing_a_session_asks_first_and_says_when_it_is_your_own(
    admin: Admin, desk: BrowserContext, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "carl")
    # An administrator of this test's own: closing all of their sessions signs them out.
    boss, boss_password = _user(admin, "boss", AccessLevel="Administrator")
    with SessionClient(console_server.url) as client:
        token = client.open_session(login, password)
        page = sign_in(desk, console_server, boss, boss_password)
        row = page.locator(f'tr[data-session="{token.session_id}"]')
        _submit(page, row.get_by_role("button", name="Close…", exact=True))
        expect(page.locator("#confirm-close")).to_contain_text(str(token.session_id))
        expect(page.locator("#own-session")).to_have_count(0)
        _submit(page, page.get_by_role("link", name="Cancel"))
        assert client.current_session()["SessionID"] == str(token.session_id)  # still open

        _submit(page, row.get_by_role("button", name=f"Close all of {login}…"))
        expect(page.locator("#confirm-close-user")).to_contain_text(login)
        assert client.current_session()["SessionID"] == str(token.session_id)
        _submit(page, page.get_by_role("button", name="Yes, close all"))
        expect(page.locator(".notice")).to_have_text("The user's sessions were closed: 1.")
        with pytest.raises(SessionNotFound):
            client.current_session()

        # The console's own session: the page says that closing it signs you out.
        own = page.locator("tr:has(.tag:text('this console'))")
        _submit(page, own.get_by_role("button", name="Close…", exact=True))
        expect(page.locator("#own-session")).to_contain_text("signs you out")
        page.goto(f"{console_server.url}/console/sessions")
        _submit(page, own.get_by_role("button", name=f"Close all of {boss}…"))
        expect(page.locator("#own-session")).to_contain_text("signs you out")
        _submit(page, page.get_by_role("button", name="Yes, close all and sign out"))
        expect(page).to_have_url(re.compile(r"/console/sign-in"))


def test_the_server_address_leads_to_the_console(console_server: ServerProcess) -> None:
    # The Location is a path of this server, whatever the Host header says.
    for host in (None, "evil.example"):
        headers = {"Host": host} if host else {}
        answer = httpx.get(f"{console_server.url}/", headers=headers, follow_redirects=False)
        assert answer.status_code in (302, 303, 307), answer.text
        assert answer.headers["location"] == "/console/"
    followed = httpx.get(f"{console_server.url}/", follow_redirects=True)
    assert followed.status_code == 200 and "/console/sign-in" in str(followed.url)


def test_an_oversized_upload_gets_the_console_page_and_a_refusal_keeps_the_menu(
    admin: Admin, desk: BrowserContext, phone: BrowserContext, console_server: ServerProcess
) -> None:
    page = sign_in(desk, console_server, "admin", console_server.admin_password)
    page.goto(f"{console_server.url}/console/licences")
    upload = page.locator("#install-licence")
    big = b'{"Licence": "' + b"x" * 70_000 + b'"}'
    upload.locator("input[name=licence]").set_input_files(
        files=[{"name": "big.json", "mimeType": "application/json", "buffer": big}]
    )
    with page.expect_response(re.compile(r"/console/licences/install$")) as answered:
        upload.get_by_role("button", name="Install").click()
    response = answered.value
    assert response.status == 413
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["content-security-policy"] == CSP
    expect(page.locator(".error")).to_contain_text("larger than 64 KiB")
    expect(page.get_by_role("link", name="Back to the console")).to_be_visible()

    # A regular user on an administrator's page: 403, with the menu of their own pages.
    login, password = _user(admin, "reg")
    mine = sign_in(phone, console_server, login, password)  # a browser of their own
    answer = mine.goto(f"{console_server.url}/console/users")
    assert answer is not None and answer.status == 403
    expect(mine.locator(".error")).to_contain_text("only an administrator")
    expect(mine.get_by_role("link", name="My sessions")).to_be_visible()
    expect(mine.get_by_role("button", name="Sign out")).to_be_visible()


def test_users_are_found_by_login_or_name_and_paged(
    admin: Admin, desk: BrowserContext, console_server: ServerProcess
) -> None:
    tag = _unique("team")
    for i in range(55):
        admin.add_user(f"{tag}-{i:02d}", "Pw-" + tag + "-x1", Name=f"Member {i} of {tag}")
    page = sign_in(desk, console_server, "admin", console_server.admin_password)
    page.goto(f"{console_server.url}/console/users")
    page.fill("input[name=q]", tag.upper())  # ignoring case
    _submit(page, page.get_by_role("button", name="Find"))
    rows = page.locator("#users tbody tr[data-login]")
    expect(rows).to_have_count(50)
    first = rows.all_inner_texts()
    _submit(page, page.locator("#next-users"))
    expect(rows).to_have_count(5)
    assert not set(first) & set(rows.all_inner_texts())
    expect(page.locator("#next-users")).to_have_count(0)
    page.fill("input[name=q]", f"Member 7 of {tag}")  # by name
    _submit(page, page.get_by_role("button", name="Find"))
    expect(rows).to_have_count(1)


def test_a_licence_with_fewer_seats_than_in_use_is_warned_of(
    admin: Admin, desk: BrowserContext, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "seat")
    clients = [SessionClient(console_server.url) for _ in range(3)]
    for client in clients:
        client.open_session(login, password)
    page = sign_in(desk, console_server, "admin", console_server.admin_password)
    today = datetime.now(UTC).date()
    seats = {"ValidFrom": str(today - timedelta(days=1)), "ValidTo": str(today + timedelta(days=9))}

    def install(identifier: str, concurrent_client: int) -> None:
        body = licences.body(
            **seats, ID=identifier, ConcurrentClient=concurrent_client, ConcurrentWeb=500
        )
        page.goto(f"{console_server.url}/console/licences")
        upload = page.locator("#install-licence")
        upload.locator("input[name=licence]").set_input_files(
            files=[
                {
                    "name": "l.json",
                    "mimeType": "application/json",
                    "buffer": json.dumps({"Licence": body}).encode(),
                }
            ]
        )
        _submit(page, upload.get_by_role("button", name="Install"))
        expect(page.locator(".notice")).to_have_text("The licence was installed.")

    try:
        install("L-small", 2)
        warning = page.locator(".warning", has_text="concurrent client seats are in use")
        expect(warning).to_contain_text("more than the 2 licence L-small has")
        expect(page.locator('#seat-table tr[data-type="ConcurrentClient"]')).to_contain_text("over")
        page.goto(f"{console_server.url}/console/sessions")
        expect(page.locator(".warning", has_text="concurrent client seats")).to_be_visible()
    finally:
        install("L-large", 500)  # the other tests of this module sign in freely again
        for client in clients:
            client.close()
