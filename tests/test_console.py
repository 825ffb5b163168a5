"""The administrators' console in a real headless Chromium, against a real ``sessiond serve``.

Every page is photographed (1280x800, full page): into docs/console/ for docs/console.md when
SESSIOND_UPDATE_SCREENSHOTS=1, else into a temporary folder, so that a test run leaves the
checkout as it was.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import os
import re
import tempfile
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    Locator,
    Page,
    Playwright,
    expect,
    sync_playwright,
)

from sessiond import SessionClient, SessionNotFound
from sessiond.errors import InvalidCredentials, UserBlocked
from tests.infra.kerberos import KerberosRealm

from . import licences
from .conftest import ServerProcess, free_port, server_env, start_server

ROOT = Path(__file__).parent.parent
SHOTS = ROOT / "docs" / "console"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
VIEWPORT = {"width": 1280, "height": 800}
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'"
)
REALM = "SESSIOND.TEST"
DOMAIN = "SESSIOND"


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


_SCRATCH = Path(tempfile.mkdtemp(prefix="sessiond-console-shots-"))


def _shot(page: Page, name: str) -> None:
    folder = SHOTS if os.environ.get("SESSIOND_UPDATE_SCREENSHOTS") == "1" else _SCRATCH
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 0


# --- the server, the browser, and an administrator over the API for setting things up -------


class Admin:
    """The administrator over the HTTP API: only to set the stage for the browser."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.client = SessionClient(server.url)
        token = self.client.open_session("admin", server.admin_password)
        self.http = httpx.Client(
            base_url=server.url, headers={"Tessa-Session": token.to_auth_xml()}, timeout=30
        )

    def add_user(self, login: str, password: str | None, **fields: Any) -> None:
        body = {"Login": login, "Password": password, **fields}
        answer = self.http.post("/api/v1/users", json=body)
        assert answer.status_code == 201, answer.text

    def version(self) -> int:
        return self.client.get_configuration().version


@pytest.fixture(scope="module")
def console_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # The sessions page's seat counts refresh every second here (15 s by default).
    proc = start_server(tmp_path_factory.mktemp("console"), SESSIOND_CONSOLE__REFRESH_INTERVAL="1")
    yield proc
    proc.stop()
    log = proc.log_path.read_text()
    assert "Traceback" not in log and "unexpected error" not in log, log


@pytest.fixture(scope="module")
def admin(console_server: ServerProcess) -> Admin:
    return Admin(console_server)


@pytest.fixture(scope="module")
def playwright() -> Iterator[Playwright]:
    with sync_playwright() as driver:  # one per module: the sync API does not nest
        yield driver


@pytest.fixture(scope="module")
def browser(playwright: Playwright) -> Iterator[Browser]:
    # Debian's Chromium: Playwright's own browser download is never used.
    chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
    yield chromium
    chromium.close()


@pytest.fixture
def context(browser: Browser) -> Iterator[BrowserContext]:
    ctx = browser.new_context(viewport=VIEWPORT)
    yield ctx
    ctx.close()


def sign_in(context: BrowserContext, server: ServerProcess, login: str, password: str) -> Page:
    page = context.new_page()
    page.goto(f"{server.url}/console/sign-in")
    page.fill("input[name=login]", login)
    page.fill("input[name=password]", password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/sessions$"))
    return page


@pytest.fixture
def admin_page(context: BrowserContext, console_server: ServerProcess) -> Page:
    return sign_in(context, console_server, "admin", console_server.admin_password)


def _user(admin: Admin, prefix: str, name: str | None = None, **fields: Any) -> tuple[str, str]:
    login, password = _unique(prefix), "Pw-" + uuid.uuid4().hex[:10]
    admin.add_user(login, password, Name=name or login.capitalize(), **fields)
    return login, password


def _session_cookie(context: BrowserContext) -> dict[str, Any]:
    found = [c for c in context.cookies() if c["name"].endswith("sessiond-console")]
    assert len(found) == 1, context.cookies()
    return dict(found[0])


def _auth_text(cookie: dict[str, Any]) -> str:
    value = str(cookie["value"])
    return base64.urlsafe_b64decode(value + "=" * (-len(value) % 4)).decode()


def _submit(page: Page, control: Locator) -> None:
    """Click a link or button and wait for the page it leads to."""
    with page.expect_navigation():
        control.click()


def _csrf(page: Page) -> str:
    value = page.locator("input[name=csrf]").first.get_attribute("value")
    assert value
    return value


# --- signing in -------------------------------------------------------------------------------


def test_an_administrator_signs_in_with_login_and_password(
    context: BrowserContext, console_server: ServerProcess
) -> None:
    page = context.new_page()
    page.goto(f"{console_server.url}/console/")
    expect(page).to_have_url(re.compile(r"/console/sign-in$"))
    # Integrated Windows sign-in is not configured on this server: no button for it.
    expect(page.locator("#windows-sign-in")).to_have_count(0)
    _shot(page, "signin")

    page.fill("input[name=login]", "admin")
    page.fill("input[name=password]", "not the password")
    with page.expect_response(re.compile(r"/console/sign-in$")) as answer:
        page.get_by_role("button", name="Sign in").click()
    assert answer.value.status == 401
    expect(page.locator(".error")).to_have_text("wrong login or password")

    page.fill("input[name=password]", console_server.admin_password)
    page.get_by_role("button", name="Sign in").click()
    expect(page).to_have_url(re.compile(r"/console/sessions$"))
    expect(page.locator("h1")).to_have_text("Sessions")
    for name in ("Users", "Licences", "Configuration", "Audit"):
        expect(page.locator("header nav").get_by_role("link", name=name)).to_be_visible()
    expect(page.locator("tr", has_text="this console")).to_have_count(1)


def test_a_one_time_password_leads_to_the_change_password_form(
    tmp_path: Path, browser: Browser
) -> None:
    data_dir = tmp_path / "sessiond-data"
    server = ServerProcess(data_dir, free_port(), server_env(data_dir), tmp_path / "server.log")
    init = server.cli("init")  # the first administrator gets a generated one-time password
    assert init.returncode == 0, init.stderr
    found = re.search(r"one-time password (\S+)", init.stdout)
    assert found, init.stdout
    one_time = found.group(1)
    server.start()  # its own log shows no one-time password: it stays as it is
    try:
        context = browser.new_context(viewport=VIEWPORT)
        page = context.new_page()
        page.goto(f"{server.url}/console/sign-in")
        page.fill("input[name=login]", "admin")
        page.fill("input[name=password]", one_time)
        page.get_by_role("button", name="Sign in").click()
        expect(page.locator("h1")).to_have_text("Change password")
        expect(page.locator(".notice")).to_contain_text("one-time password")
        expect(page.locator("input[name=login]")).to_have_value("admin")
        _shot(page, "change-password")

        page.fill("input[name=old_password]", one_time)
        page.fill("input[name=new_password]", "Chosen-pw-1")
        page.fill("input[name=repeat_password]", "Chosen-pw-2")
        page.get_by_role("button", name="Change password and sign in").click()
        expect(page.locator(".error")).to_have_text("The new password and its repetition differ.")

        page.fill("input[name=old_password]", one_time)
        page.fill("input[name=new_password]", "Chosen-pw-1")
        page.fill("input[name=repeat_password]", "Chosen-pw-1")
        page.get_by_role("button", name="Change password and sign in").click()
        expect(page).to_have_url(re.compile(r"/console/sessions$"))
        expect(page.locator("header .who")).to_contain_text("admin")
        context.close()
        with SessionClient(server.url) as client:
            client.open_session("admin", "Chosen-pw-1")
            with pytest.raises(InvalidCredentials):
                SessionClient(server.url).open_session("admin", one_time)
    finally:
        server.stop()


def test_signing_out_closes_the_session(
    context: BrowserContext, admin_page: Page, console_server: ServerProcess
) -> None:
    auth = _auth_text(_session_cookie(context))
    current = f"{console_server.url}/api/v1/sessions/current"
    assert httpx.get(current, headers={"Tessa-Session": auth}).status_code == 200
    admin_page.get_by_role("button", name="Sign out").click()
    expect(admin_page).to_have_url(re.compile(r"/console/sign-in\?done=signed-out$"))
    expect(admin_page.locator(".notice")).to_have_text("You are signed out.")
    refused = httpx.get(current, headers={"Tessa-Session": auth})
    assert refused.status_code == 401 and refused.json()["error"]["code"] == "session_not_found"
    admin_page.goto(f"{console_server.url}/console/sessions")
    expect(admin_page).to_have_url(re.compile(r"/console/sign-in$"))


# --- sessions ---------------------------------------------------------------------------------


def test_a_client_session_shows_in_the_table_and_closing_it_refuses_the_client(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "ivan", "Ivanov I.")
    with SessionClient(console_server.url) as client, SessionClient(console_server.url) as other:
        token = client.open_session(login, password)
        other_token = other.open_session(login, password)
        admin_page.goto(f"{console_server.url}/console/sessions")
        row = admin_page.locator(f'tr[data-session="{token.session_id}"]')
        expect(row).to_contain_text("Ivanov I.")
        expect(row).to_contain_text("ConcurrentClient")
        _shot(admin_page, "sessions")

        _submit(admin_page, row.get_by_role("button", name="Close…", exact=True))
        confirm = admin_page.locator("#confirm-close")  # nothing is closed before "Yes"
        expect(confirm).to_contain_text("Ivanov I.")
        assert client.current_session()["SessionID"] == str(token.session_id)
        confirm.get_by_role("button", name="Yes, close").click()
        expect(admin_page.locator(".notice")).to_have_text("The session was closed.")
        expect(admin_page.locator(f'tr[data-session="{token.session_id}"]')).to_have_count(0)
        with pytest.raises(SessionNotFound):
            client.current_session()
        assert other.current_session()["SessionID"] == str(other_token.session_id)

        third = SessionClient(console_server.url)
        third.open_session(login, password)
        admin_page.locator(f'tr[data-session="{other_token.session_id}"]').get_by_role(
            "button", name=f"Close all of {login}"
        ).click()
        admin_page.locator("#confirm-close-user").get_by_role("button", name="Yes").click()
        expect(admin_page.locator(".notice")).to_have_text("The user's sessions were closed: 2.")
        for closed in (other, third):
            with pytest.raises(SessionNotFound):
                closed.current_session()


def test_the_sessions_page_filters_sorts_and_pages_with_a_cursor(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    name = _unique("Paging ")
    login, password = _user(admin, "paul", name)
    clients = [SessionClient(console_server.url) for _ in range(30)]
    opened = [str(c.open_session(login, password).session_id) for c in clients]

    def ids(page: Page) -> list[str]:
        found = page.locator("#sessions tbody tr[data-session]")
        return [str(found.nth(i).get_attribute("data-session")) for i in range(found.count())]

    admin_page.goto(f"{console_server.url}/console/sessions")
    admin_page.fill("input[name=user]", name)
    admin_page.select_option("select[name=size]", "25")
    _submit(admin_page, admin_page.get_by_role("button", name="Show"))
    first = ids(admin_page)
    assert len(first) == 25
    following = admin_page.locator("#next-page")
    href = str(following.get_attribute("href"))
    assert "after=" in href and "offset" not in href and "page=" not in href
    _submit(admin_page, following)
    second = ids(admin_page)
    assert len(second) == 5 and not set(first) & set(second)
    assert sorted(first + second) == sorted(opened)
    expect(admin_page.locator("#next-page")).to_have_count(0)

    admin_page.select_option("select[name=dir]", "desc")
    _submit(admin_page, admin_page.get_by_role("button", name="Show"))
    assert ids(admin_page) == list(reversed(first + second))[:25]

    only_web = urlencode({"user": name, "service": "WebClient", "licence": "ConcurrentWeb"})
    admin_page.goto(f"{console_server.url}/console/sessions?{only_web}")
    expect(admin_page.locator("#sessions tbody")).to_contain_text("No open sessions match.")
    for client in clients:
        client.close()


def test_the_seat_counts_refresh_while_the_page_is_open(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "sam")
    cell = admin_page.locator('#seats tr[data-type="ConcurrentClient"] .in-use')
    before = int(cell.inner_text())
    with SessionClient(console_server.url) as client:
        client.open_session(login, password)
        # No reload: the page's script asks /console/seats.json every refresh_interval (1 s).
        expect(cell).to_have_text(str(before + 1), timeout=30_000)
        expect(admin_page.locator("#seats-status")).to_contain_text("updated")
        client.close_session()
    expect(cell).to_have_text(str(before), timeout=30_000)


def test_a_regular_user_sees_only_their_own_sessions(
    admin: Admin, context: BrowserContext, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "rita", "Rita R.")
    stranger, stranger_password = _user(admin, "olga")
    with (
        SessionClient(console_server.url) as mine,
        SessionClient(console_server.url) as theirs,
    ):
        my_token = mine.open_session(login, password)
        their_token = theirs.open_session(stranger, stranger_password)
        page = sign_in(context, console_server, login, password)
        expect(page.locator("h1")).to_have_text("My sessions")
        rows = page.locator("#sessions tbody tr[data-session]")
        expect(rows).to_have_count(2)  # the client's session and this console's
        for i in range(rows.count()):
            expect(rows.nth(i)).to_contain_text(login)
        expect(page.locator(f'tr[data-session="{their_token.session_id}"]')).to_have_count(0)
        expect(page.locator("header nav a")).to_have_count(1)
        expect(page.locator("#seats")).to_have_count(0)
        expect(page.get_by_role("button", name=re.compile("Close all of"))).to_have_count(0)
        _shot(page, "regular-user")

        # Another user's session, even with this session's own CSRF token: refused.
        refused = page.request.post(
            f"{console_server.url}/console/sessions/close",
            form={"csrf": _csrf(page), "session_id": str(their_token.session_id)},
        )
        assert refused.status == 403
        assert "only an administrator" in refused.text()
        assert theirs.current_session()["SessionID"] == str(their_token.session_id)

        for path in ("users", "licences", "configuration", "audit", "audit/export"):
            answer = page.goto(f"{console_server.url}/console/{path}")
            assert answer is not None and answer.status == 403, path
            expect(page.locator(".error")).to_contain_text("only an administrator")

        page.goto(f"{console_server.url}/console/sessions")
        page.locator(f'tr[data-session="{my_token.session_id}"]').get_by_role(
            "button", name="Close…", exact=True
        ).click()
        page.locator("#confirm-close").get_by_role("button", name="Yes, close").click()
        expect(page.locator(".notice")).to_have_text("The session was closed.")
        with pytest.raises(SessionNotFound):
            mine.current_session()


# --- users ------------------------------------------------------------------------------------


def test_users_are_added_changed_and_removed_and_their_audit_trail_stays(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    login = _unique("nina")
    admin_page.goto(f"{console_server.url}/console/users")
    form = admin_page.locator("#add-user")
    form.locator("input[name=login]").fill(login)
    form.locator("input[name=name]").fill("Nina N.")
    form.locator("input[name=password]").fill("First-pw-1")
    form.locator("input[name=repeat_password]").fill("First-pw-1")
    form.get_by_role("button", name="Add the user").click()
    expect(admin_page.locator(".notice")).to_have_text("The user was added.")
    expect(admin_page.locator("h1")).to_have_text(f"User {login}")
    with SessionClient(console_server.url) as client:
        client.open_session(login, "First-pw-1")

    admin_page.goto(f"{console_server.url}/console/users")
    expect(admin_page.locator(f'#users tr[data-login="{login}"]')).to_contain_text("Nina N.")
    _shot(admin_page, "users")

    admin_page.locator(f'#users tr[data-login="{login}"] a').click()
    update = admin_page.locator("#update-user")
    update.locator("select[name=access_level]").select_option("Administrator")
    update.locator("select[name=login_type]").select_option("Ldap")
    update.locator("input[name=account]").fill(f"{login}-uid")
    update.locator("input[name=personal_web]").check()
    update.get_by_role("button", name="Save").click()
    expect(admin_page.locator(".notice")).to_have_text("The user was changed.")
    user = admin.http.get("/api/v1/users").json()
    mine = next(u for u in user if u["Login"] == login)
    assert mine["AccessLevel"] == "Administrator" and mine["LoginType"] == "Ldap"
    assert mine["Account"] == f"{login}-uid" and mine["PersonalWeb"] and not mine["PersonalClient"]

    update = admin_page.locator("#update-user")
    update.locator("select[name=access_level]").select_option("Regular")
    update.locator("select[name=login_type]").select_option("Platform")
    update.get_by_role("button", name="Save").click()
    expect(admin_page.locator(".notice")).to_have_text("The user was changed.")
    password = admin_page.locator("#set-password")
    password.locator("input[name=password]").fill("Second-pw-1")
    password.locator("input[name=repeat_password]").fill("Second-pw-1")
    password.get_by_role("button", name="Set the password").click()
    expect(admin_page.locator(".notice")).to_contain_text("The password was set")
    with SessionClient(console_server.url) as client:
        client.open_session(login, "Second-pw-1")

    admin_page.get_by_role("link", name="Remove the user…").click()
    expect(admin_page.locator("#remove-user")).to_contain_text("Every audit record about")
    admin_page.get_by_role("button", name=f"Remove {login}").click()
    expect(admin_page.locator(".notice")).to_have_text(
        "The user was removed. Their audit records stay."
    )
    expect(admin_page.locator(f'#users tr[data-login="{login}"]')).to_have_count(0)

    admin_page.goto(f"{console_server.url}/console/audit?user=Nina+N.")
    table = admin_page.locator("#audit tbody")
    for action in ("UserRemoved", "PasswordReset", "UserChanged", "Login", "UserCreated"):
        expect(table).to_contain_text(action)
    _shot(admin_page, "audit")


def test_a_blocked_user_cannot_sign_in(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "boris", "Boris B.")
    with SessionClient(console_server.url) as client:
        client.open_session(login, password)
        admin_page.goto(f"{console_server.url}/console/user?login={login}")
        _shot(admin_page, "user")
        admin_page.locator("#block-user").get_by_role("button", name="Block").click()
        expect(admin_page.locator(".notice")).to_contain_text("The user is blocked")
        with pytest.raises(SessionNotFound):
            client.current_session()  # blocking ended the session
        with pytest.raises(UserBlocked):
            client.open_session(login, password)

        admin_page.locator("#unblock-user").get_by_role("button", name="Unblock").click()
        expect(admin_page.locator(".notice")).to_have_text("The user is unblocked.")
        client.open_session(login, password)

        until = (datetime.now(UTC) + timedelta(days=2)).replace(second=0, microsecond=0)
        admin_page.fill("#block-user input[name=until]", until.strftime("%Y-%m-%dT%H:%M"))
        admin_page.locator("#block-user").get_by_role("button", name="Block").click()
        expect(admin_page.locator("dl.facts")).to_contain_text(
            f"until {until:%Y-%m-%d %H:%M:%S} UTC"
        )
        with pytest.raises(UserBlocked):
            client.open_session(login, password)


def test_a_service_refusal_is_shown_on_the_page(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    login, _ = _user(admin, "tom")
    admin_page.goto(f"{console_server.url}/console/user?login={login}")
    form = admin_page.locator("#set-password")
    form.locator("input[name=password]").fill("x")
    form.locator("input[name=repeat_password]").fill("x")
    with admin_page.expect_response(re.compile(r"/console/user/password$")) as answer:
        form.get_by_role("button", name="Set the password").click()
    assert answer.value.status == 422
    expect(admin_page.locator(".error")).to_contain_text("password")
    expect(admin_page.locator("h1")).to_have_text(f"User {login}")

    answer_of = admin_page.goto
    found = answer_of(f"{console_server.url}/console/sessions?after=not-a-cursor")
    assert found is not None and found.status == 400
    expect(admin_page.locator(".error")).to_contain_text("is not one this server gave")
    found = answer_of(f"{console_server.url}/console/sessions?application=nope")
    assert found is not None and found.status == 400
    expect(admin_page.locator(".error")).to_contain_text("is not an id")
    found = answer_of(f"{console_server.url}/console/user?login=nobody-at-all")
    assert found is not None and found.status == 404
    expect(admin_page.locator(".error")).to_contain_text("no user with login")
    found = answer_of(f"{console_server.url}/console/no-such-page")
    assert found is not None and found.status == 404
    expect(admin_page.locator(".error")).to_have_text("There is no such page in the console.")
    assert "Traceback" not in admin_page.content()


# --- licences and configuration ---------------------------------------------------------------


def test_a_licence_file_is_installed_and_a_bad_one_changes_nothing(
    admin_page: Page, console_server: ServerProcess
) -> None:
    today = datetime.now(UTC).date()
    valid = {
        "ValidFrom": str(today - timedelta(days=1)),
        "ValidTo": str(today + timedelta(days=365)),
        "ConcurrentClient": 500,
        "ConcurrentWeb": 500,
        "PersonalClient": 5,
        "PersonalWeb": 5,
    }
    admin_page.goto(f"{console_server.url}/console/licences")
    upload = admin_page.locator("#install-licence")
    bad = {"Licence": licences.body(**{**valid, "ValidTo": "soon"})}
    upload.locator("input[name=licence]").set_input_files(
        files=[{"name": "bad.json", "mimeType": "application/json", "buffer": _json(bad)}]
    )
    upload.get_by_role("button", name="Install").click()
    expect(admin_page.locator(".error")).to_contain_text("ValidTo 'soon' is not a date")
    expect(admin_page.locator("#licence")).to_have_count(0)  # still no licence

    good = {"Licence": licences.body(**{**valid, "ID": "L-console-1"})}
    upload = admin_page.locator("#install-licence")
    upload.locator("input[name=licence]").set_input_files(
        files=[{"name": "good.json", "mimeType": "application/json", "buffer": _json(good)}]
    )
    upload.get_by_role("button", name="Install").click()
    expect(admin_page.locator(".notice")).to_have_text("The licence was installed.")
    expect(admin_page.locator("#licence")).to_contain_text("L-console-1")
    expect(admin_page.locator("#licence")).to_contain_text("valid now")
    row = admin_page.locator('#seat-table tr[data-type="ConcurrentWeb"]')
    expect(row.locator("td").nth(2)).to_have_text("500")
    _shot(admin_page, "licences")

    worse = {"Licence": licences.body(**{**valid, "ID": "L-console-2", "PersonalWeb": -1})}
    upload = admin_page.locator("#install-licence")
    upload.locator("input[name=licence]").set_input_files(
        files=[{"name": "worse.json", "mimeType": "application/json", "buffer": _json(worse)}]
    )
    upload.get_by_role("button", name="Install").click()
    expect(admin_page.locator(".error")).to_contain_text("PersonalWeb must be a whole")
    expect(admin_page.locator("#licence")).to_contain_text("L-console-1")


def _json(document: Any) -> bytes:
    return json.dumps(document).encode()


def test_incrementing_the_configuration_version_asks_first(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    admin_page.goto(f"{console_server.url}/console/configuration")
    version = int(admin_page.locator("#version").inner_text())
    assert version == admin.version()
    _shot(admin_page, "configuration")
    admin_page.get_by_role("link", name="Increment the version…").click()
    expect(admin_page.locator("#confirm-increment")).to_contain_text(
        f"from {version} to {version + 1}"
    )
    assert admin.version() == version  # asking is not doing
    _shot(admin_page, "configuration-confirm")
    admin_page.get_by_role("button", name="Yes, increment").click()
    expect(admin_page.locator(".notice")).to_have_text(
        f"The configuration version is now {version + 1}."
    )
    expect(admin_page.locator("#version")).to_have_text(str(version + 1))
    assert admin.version() == version + 1
    expect(admin_page.locator("#configuration")).to_contain_text("by Administrator")


# --- the audit trail --------------------------------------------------------------------------


def test_the_audit_trail_filters_pages_exports_and_verifies(
    admin: Admin, admin_page: Page, console_server: ServerProcess
) -> None:
    formula = '=HYPERLINK("http://example.invalid","x")'
    login, _ = _user(admin, "eve", formula)
    busy, busy_password = _user(admin, "bea")
    with SessionClient(console_server.url) as client:
        for _ in range(51):  # more than a page of records, whatever ran before
            client.open_session(busy, busy_password)
    blocked = admin.http.post(f"/api/v1/users/{login}/block", json={})
    assert blocked.status_code == 200, blocked.text

    admin_page.goto(f"{console_server.url}/console/audit")
    admin_page.select_option("select[name=action]", "UserBlocked")
    _submit(admin_page, admin_page.get_by_role("button", name="Show"))
    rows = admin_page.locator("#audit tbody tr")
    expect(rows.first).to_contain_text("UserBlocked")
    for i in range(rows.count()):
        expect(rows.nth(i).locator("td").nth(2)).to_have_text("UserBlocked")

    admin_page.goto(f"{console_server.url}/console/audit")
    admin_page.fill("input[name=user]", formula)
    _submit(admin_page, admin_page.get_by_role("button", name="Show"))
    actions = admin_page.locator("#audit tbody tr td:nth-child(3)").all_inner_texts()
    assert actions == ["UserBlocked", "UserCreated"]  # newest first
    now = datetime.now(UTC)
    admin_page.fill("input[name=since]", (now + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M"))
    _submit(admin_page, admin_page.get_by_role("button", name="Show"))
    expect(admin_page.locator("#audit tbody")).to_contain_text("No records match.")

    admin_page.goto(f"{console_server.url}/console/audit")
    older = admin_page.locator("#older")
    assert "before=" in str(older.get_attribute("href"))
    newest = admin_page.locator("#audit tbody tr td:first-child").all_inner_texts()
    _submit(admin_page, older)
    following = admin_page.locator("#audit tbody tr td:first-child").all_inner_texts()
    assert int(following[0]) < int(newest[-1])

    exported = admin_page.request.get(
        f"{console_server.url}/console/audit/export", params={"user": formula, "format": "csv"}
    )
    assert exported.status == 200
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    table = list(csv.DictReader(io.StringIO(exported.text())))
    assert [r["action"] for r in table] == ["UserCreated", "UserBlocked"]  # oldest first
    assert {r["user_name"] for r in table} == {"'" + formula}  # shown, never run
    lines = admin_page.request.get(
        f"{console_server.url}/console/audit/export", params={"user": formula, "format": "jsonl"}
    )
    records = [json.loads(line) for line in lines.text().splitlines()]
    assert [r["user_name"] for r in records] == [formula, formula]  # exact in JSON lines

    admin_page.goto(f"{console_server.url}/console/audit")
    admin_page.get_by_role("link", name="Verify the hash chain").click()
    expect(admin_page.locator("#chain-ok")).to_contain_text("The audit trail is intact")
    _shot(admin_page, "audit-verify")


# --- browser security -------------------------------------------------------------------------


def test_a_form_without_the_csrf_token_is_refused_and_changes_nothing(
    admin: Admin, admin_page: Page, context: BrowserContext, console_server: ServerProcess
) -> None:
    login, password = _user(admin, "cora")
    version = admin.version()
    url = console_server.url
    with SessionClient(url) as client:
        token = client.open_session(login, password)
        attempts = [
            ("/console/configuration/increment", {"confirm": "yes"}),
            ("/console/sessions/close", {"session_id": str(token.session_id)}),
            ("/console/user/block", {"login": login}),
        ]
        for path, fields in attempts:
            for extra in ({}, {"csrf": "not-the-token"}, {"csrf": ""}):
                answer = admin_page.request.post(url + path, form={**fields, **extra})
                assert answer.status == 403, (path, extra)
                assert "CSRF" in answer.text()
        # The same with another HTTP client that holds the browser's cookie.
        cookie = _session_cookie(context)
        with httpx.Client(base_url=url, cookies={cookie["name"]: cookie["value"]}) as http:
            answer = http.post("/console/configuration/increment", data={"confirm": "yes"})
            assert answer.status_code == 403
            page = http.get("/console/configuration")
            assert page.status_code == 200 and f'id="version" class="big">{version}<' in page.text
        assert admin.version() == version
        assert client.current_session()["SessionID"] == str(token.session_id)
        with SessionClient(url) as again:
            again.open_session(login, password)  # not blocked

        # With the token, the same request goes through.
        answer = admin_page.request.post(
            url + "/console/configuration/increment",
            form={"confirm": "yes", "csrf": _csrf(admin_page)},
        )
        assert answer.status == 200 and admin.version() == version + 1


def test_every_console_answer_carries_the_security_headers(
    admin_page: Page, context: BrowserContext, console_server: ServerProcess
) -> None:
    violations: list[str] = []
    admin_page.on(
        "console",
        lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None,
    )
    cookie = _session_cookie(context)
    pages = [
        "/console/sessions",
        "/console/users",
        "/console/user?login=admin",
        "/console/licences",
        "/console/configuration",
        "/console/configuration/increment",
        "/console/audit",
        "/console/audit/verify",
    ]
    with httpx.Client(
        base_url=console_server.url, cookies={cookie["name"]: cookie["value"]}
    ) as http:
        for path in [*pages, "/console/sign-in", "/console/no-such-page", "/console"]:
            answer = http.get(path)
            assert answer.headers["content-security-policy"] == CSP, path
            assert answer.headers["x-frame-options"] == "DENY", path
            assert answer.headers["referrer-policy"] == "no-referrer", path
            assert answer.headers["x-content-type-options"] == "nosniff", path
            assert answer.headers["cache-control"] == "no-store", path
            body = answer.text
            # Nothing inline: every script comes from a file, and no element carries style.
            assert not re.search(r"<script(?![^>]*\bsrc=)", body), path
            assert " style=" not in body and "<style" not in body, path
            assert not re.search(r"\son[a-z]+=", body), path
            # Every asset, link and form is sessiond's own: nothing from another server.
            targets = re.findall(r'\b(?:src|href|action)="([^"]*)"', body)
            assert all(t.startswith("/console/") for t in targets), (path, targets)
        for asset in ("console.css", "live.js", "favicon.svg"):
            answer = http.get(f"/console/static/{asset}")
            assert answer.status_code == 200 and answer.headers["content-security-policy"] == CSP
            assert answer.headers["x-content-type-options"] == "nosniff"
        assert http.get("/console/static/../templates/base.html").status_code == 404
    for path in pages:
        admin_page.goto(console_server.url + path)
    assert not violations, violations


def test_the_cookie_is_http_only_strict_and_holds_a_real_session(
    admin_page: Page, context: BrowserContext, console_server: ServerProcess
) -> None:
    urls: list[str] = []
    admin_page.on("request", lambda r: urls.append(r.url))
    cookie = _session_cookie(context)
    assert cookie["name"] == "sessiond-console"  # plain HTTP: no __Host- prefix, no Secure
    assert cookie["httpOnly"] is True and cookie["sameSite"] == "Strict"
    assert cookie["path"] == "/console" and cookie["secure"] is False
    assert cookie["expires"] == -1  # gone when the browser closes
    auth = _auth_text(cookie)
    assert auth.startswith("<SessionToken ") and 'Signature="' in auth
    current = httpx.get(
        f"{console_server.url}/api/v1/sessions/current", headers={"Tessa-Session": auth}
    )
    assert current.status_code == 200 and current.json()["ServiceType"] == "WebClient"
    assert admin_page.evaluate("document.cookie") == ""  # out of the page's scripts' reach
    for path in ("/console/users", "/console/audit", "/console/sessions"):
        admin_page.goto(console_server.url + path)
    assert urls and not any(cookie["value"][:40] in u or "SessionToken" in u for u in urls)


def test_behind_tls_the_cookie_is_secure_and_host_prefixed(console_server: ServerProcess) -> None:
    tls = {"X-Forwarded-Proto": "https"}
    with httpx.Client(base_url=console_server.url, headers=tls) as http:
        form = http.get("/console/sign-in")
        signin_cookie = form.headers["set-cookie"]
        assert signin_cookie.startswith("__Host-sessiond-console-signin=")
        assert "; Secure" in signin_cookie and "Path=/;" in signin_cookie
        token = re.search(r'name="csrf" value="([^"]+)"', form.text)
        nonce = re.match(r"__Host-sessiond-console-signin=([^;]+)", signin_cookie)
        assert token and nonce
        answer = http.post(
            "/console/sign-in",
            data={
                "csrf": token.group(1),
                "login": "admin",
                "password": console_server.admin_password,
            },
            # Sent by hand: httpx's cookie jar keeps a Secure cookie off plain HTTP.
            headers={"Cookie": f"__Host-sessiond-console-signin={nonce.group(1)}"},
        )
    assert answer.status_code == 303
    session = answer.headers["set-cookie"]
    assert session.startswith("__Host-sessiond-console=")
    attributes = {part.strip().lower() for part in session.split(";")[1:]}
    assert attributes == {"httponly", "path=/", "samesite=strict", "secure"}


# --- integrated Windows sign-in ---------------------------------------------------------------


@pytest.fixture(scope="module")
def windows_console(
    tmp_path_factory: pytest.TempPathFactory, kerberos_realm: KerberosRealm
) -> Iterator[ServerProcess]:
    proc = start_server(
        tmp_path_factory.mktemp("console-windows"),
        f"""
[sessiond.windows]
realm = "{REALM}"
domains = {{ {DOMAIN} = "{REALM}" }}
service_principal = "HTTP/localhost@{REALM}"
keytab = "{kerberos_realm.keytab}"
krb5_config = "{kerberos_realm.krb5_conf}"
""",
        env=lambda env: env | kerberos_realm.env(),
        unset=["KRB5CCNAME"],
    )
    yield proc
    proc.stop()


def test_integrated_windows_sign_in_in_the_browser(
    windows_console: ServerProcess,
    kerberos_realm: KerberosRealm,
    playwright: Playwright,
    tmp_path: Path,
) -> None:
    name = _unique("wanda")
    kerberos_realm.add_user(name, "Wanda-pw-1")
    Admin(windows_console).add_user(
        name, None, Name="Wanda W.", LoginType="Windows", Account=f"{name}@{REALM}"
    )
    ccache = kerberos_realm.kinit(name, "Wanda-pw-1")
    site = f"http://localhost:{windows_console.port}"
    # Chromium does Negotiate only in a regular (not incognito) profile, only for the sites
    # its policy names, and on Linux loads the GSSAPI library only once the profile has seen a
    # Negotiate challenge (the network service then runs unsandboxed): a profile that has.
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "Local State").write_text(
        json.dumps({"net": {"received_http_auth_negotiate_headers": True}})
    )
    chromium = playwright.chromium.launch_persistent_context(
        str(profile),
        executable_path=CHROMIUM,
        args=[*CHROMIUM_ARGS, "--auth-server-allowlist=localhost"],
        env=kerberos_realm.subprocess_env(ccache=ccache),  # the user's tickets
        viewport=VIEWPORT,
    )
    try:
        page = chromium.new_page()
        page.goto(f"{site}/console/sign-in")
        _shot(page, "signin-windows")
        page.locator("#windows-sign-in").click()
        expect(page).to_have_url(re.compile(r"/console/sessions$"))
        expect(page.locator("header .who")).to_contain_text(f"{DOMAIN}\\{name}")
        expect(page.locator("h1")).to_have_text("My sessions")
        row = page.locator("#sessions tbody tr", has_text="this console")
        expect(row).to_contain_text("ConcurrentWeb")
    finally:
        chromium.close()
    with httpx.Client(base_url=site) as http:
        asked = http.get("/console/sign-in/windows")
        assert asked.status_code == 401 and asked.headers["www-authenticate"] == "Negotiate"
        assert "Sign in with your login and password" in asked.text
        garbled = http.get("/console/sign-in/windows", headers={"Authorization": "Negotiate !!"})
        assert garbled.status_code == 400 and "not base64" in garbled.text
