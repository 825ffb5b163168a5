"""OpenID Connect token exchange against a real OpenID Provider (tests/infra/oidc.py): real ID
tokens from its code flow in Debian's Chromium open sessions; the mapping by issuer and
subject, the first-sign-in match, provisioning and the access level from a group; every
hostile token refused with its code and nothing written; a provider down or frozen answered
503 naming it while password sign-ins go on; keys rotated by the provider picked up."""

from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import hashlib
import hmac
import json
import re
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from playwright.sync_api import Browser, sync_playwright

from sessiond.token import SessionToken
from tests.conftest import ServerProcess, free_port, server_env
from tests.infra.oidc import OidcProvider
from tests.infra.oidc_pages import provider_login
from tests.infra.postgres import PostgresServer
from tests.test_oidc_provider import (
    CHROMIUM,
    CHROMIUM_ARGS,
    Receiver,
    code_flow,
    jwt_parts,
    pkce_pair,
)

EXCHANGE = "/api/v1/openid/exchange"
PROVIDERS = "/api/v1/openid/providers"


# --- the server, the browser and tokens ---------------------------------------------------


def provider_table(name: str, provider: OidcProvider, **more: Any) -> str:
    lines = [
        f"[openid.providers.{name}]",
        f'issuer = "{provider.issuer}"',
        f'display_name = "{name.capitalize()} sign-in"',
        f'client_id = "{provider.console_client.client_id}"',
        f'client_secret = "{provider.console_client.client_secret}"',
        f'public_client_id = "{provider.desktop_client.client_id}"',
        f'audiences = ["{provider.api_audience}"]',
        'scopes = ["openid", "profile", "email", "groups"]',
        'timeout = "2s"',
        'keys_refetch_interval = "1s"',
    ]
    lines += [f"{key} = {json.dumps(value)}" for key, value in more.items()]
    return "\n".join(lines) + "\n"


def start_server(root: Path, settings: str) -> ServerProcess:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "sessiond.toml"
    config.write_text(settings, encoding="utf-8")
    data_dir = root / "sessiond-data"
    proc = ServerProcess(
        data_dir,
        free_port(),
        server_env(data_dir, SESSIOND_CONFIG=str(config)),
        root / "server.log",
    )
    proc.start()
    return proc


@pytest.fixture(scope="module")
def other_provider() -> Iterator[OidcProvider]:
    """A second provider (another issuer, other keys): the mix-up's B, and no provisioning."""
    provider = OidcProvider()
    try:
        yield provider
    finally:
        provider.close()


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory,
    oidc_provider: OidcProvider,
    other_provider: OidcProvider,
) -> Iterator[ServerProcess]:
    settings = provider_table(
        "corp",
        oidc_provider,
        match_claim="preferred_username",
        provision=True,
        admin_groups=["sessiond-admins"],
    ) + provider_table("other", other_provider)
    proc = start_server(tmp_path_factory.mktemp("openid"), settings)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        yield driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.close()


class Tokens:
    """Real tokens from a provider: the code flow with PKCE and a nonce, in a fresh browser
    context each time (so each user signs in at the provider's own login page)."""

    def __init__(self, browser: Browser, receiver: Receiver) -> None:
        self.browser = browser
        self.receiver = receiver

    def __call__(self, provider: OidcProvider, login: str) -> dict[str, Any]:
        context = self.browser.new_context()
        try:
            page = context.new_page()
            return code_flow(
                provider, page, self.receiver, provider.console_client,
                "/console/openid/corp/callback", login,
            )  # fmt: skip
        finally:
            context.close()


@pytest.fixture(scope="module")
def tokens(browser: Browser, receiver: Receiver) -> Tokens:
    return Tokens(browser, receiver)


def exchange(server: ServerProcess, token: str, provider: str = "corp", **more: Any) -> Any:
    return httpx.post(
        server.url + EXCHANGE, json={"Provider": provider, "Token": token, **more}, timeout=30
    )


def admin_headers(server: ServerProcess) -> dict[str, str]:
    opened = httpx.post(
        server.url + "/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password},
        timeout=30,
    )
    assert opened.status_code == 200, opened.text
    return {"Tessa-Session": opened.json()["AuthToken"]}


def db(server: ServerProcess) -> sqlite3.Connection:
    return sqlite3.connect(server.data_dir / "sessiond.db")


def written(server: ServerProcess) -> tuple[int, int, int, int]:
    """What a sign-in could write besides its refusal's record: sessions, users, mappings,
    provider sessions."""
    with db(server) as conn:
        return tuple(  # type: ignore[return-value]
            conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
            for table in ("sessions", "users", "openid_identities", "openid_sessions")
        )


def user_by_login(server: ServerProcess, login: str) -> dict[str, Any]:
    answer = httpx.get(f"{server.url}/api/v1/users", headers=admin_headers(server), timeout=30)
    assert answer.status_code == 200, answer.text
    (user,) = [u for u in answer.json() if u["Login"] == login]
    return dict(user)


def audit_records(server: ServerProcess, action: str) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{server.url}/api/v1/audit",
        params={"action": action, "newest_first": "true", "limit": 1000},
        headers=admin_headers(server),
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    return list(answer.json()["Records"])


def private_key(provider: OidcProvider) -> RSAKey:
    """The provider's current signing key (the fixture keeps it): tokens signed with it show
    that a claim check, not the signature, refuses them."""
    jwk = provider._config["keys"][0]
    return RSAKey.import_key(jwk)


def signed(provider: OidcProvider, **changes: Any) -> str:
    now = int(time.time())
    claims = {
        "iss": provider.issuer,
        "sub": f"sub-{uuid.uuid4().hex[:8]}",
        "aud": provider.desktop_client.client_id,
        "iat": now,
        "exp": now + 300,
        **changes,
    }
    claims = {k: v for k, v in claims.items() if v is not None}
    header = {"alg": "RS256", "kid": provider.signing_kid}
    return jwt.encode(header, claims, private_key(provider))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --- what a client reads --------------------------------------------------------------------


def test_the_providers_are_listed_to_anyone(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    answer = httpx.get(server.url + PROVIDERS, timeout=10)
    assert answer.status_code == 200
    listed = {p["Name"]: p for p in answer.json()}
    assert set(listed) == {"corp", "other"}
    assert listed["corp"] == {
        "Name": "corp",
        "DisplayName": "Corp sign-in",
        "Issuer": oidc_provider.issuer,
        "ClientId": oidc_provider.desktop_client.client_id,
        "Scopes": ["openid", "profile", "email", "groups"],
    }
    assert "client_secret" not in answer.text and "secret" not in answer.text.lower()


# --- sign-in ----------------------------------------------------------------------------------


def test_a_real_id_token_of_a_mapped_user_opens_a_session(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    bob = oidc_provider.user("bob")
    added = server.cli(
        "users", "add", "robert", "--login-type", "OpenId",
        "--account", f"{oidc_provider.issuer}#{bob.sub}", "--name", "Robert",
    )  # fmt: skip
    assert added.returncode == 0, added.stderr
    got = tokens(oidc_provider, "bob")
    answer = exchange(server, got["id_token"], Nonce=jwt_parts(got["id_token"])[1]["nonce"])
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert set(body) == {"Token", "AuthToken", "SessionInactivityTime", "PasswordExpires"}
    assert 'UserLogin="robert"' in body["Token"] or ">robert<" in body["Token"]
    current = httpx.get(
        server.url + "/api/v1/sessions/current",
        headers={"Tessa-Session": body["AuthToken"]},
        timeout=10,
    )
    assert current.status_code == 200, current.text
    claims = jwt_parts(got["id_token"])[1]
    with db(server) as conn:
        rows = conn.execute("SELECT issuer, subject, sid FROM openid_sessions").fetchall()
        mapped = conn.execute(
            "SELECT i.issuer, i.subject FROM openid_identities i JOIN users u ON u.id = i.user_id"
            " WHERE u.login = 'robert'"
        ).fetchall()
    assert (oidc_provider.issuer, bob.sub, claims["sid"]) in rows
    assert mapped == [(oidc_provider.issuer, bob.sub)]
    user = user_by_login(server, "robert")
    assert user["LoginType"] == "OpenId"
    assert user["Account"] == f"openid:{oidc_provider.issuer}#{bob.sub}"
    assert user["AccessLevel"] == "Regular"  # bob is in no admin group
    assert any(
        r["UserName"] == "Robert" and r["Details"].get("method") == "corp"
        and r["Details"].get("login_type") == "OpenId"
        for r in audit_records(server, "Login")
    )  # fmt: skip


def test_a_jwt_access_token_for_this_server_opens_a_session(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    got = tokens(oidc_provider, "bob")
    assert jwt_parts(got["access_token"])[1]["aud"] == oidc_provider.api_audience
    answer = exchange(server, got["access_token"], TokenType="access_token")
    assert answer.status_code == 200, answer.text


def test_the_first_sign_in_is_matched_by_the_claim_then_kept(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    carol = oidc_provider.add_user("carol")
    added = server.cli("users", "add", "carol", "--login-type", "OpenId", "--name", "Carol C.")
    assert added.returncode == 0, added.stderr
    assert user_by_login(server, "carol")["Account"] is None
    answer = exchange(server, tokens(oidc_provider, "carol")["id_token"])
    assert answer.status_code == 200, answer.text
    user = user_by_login(server, "carol")
    assert user["Account"] == f"openid:{oidc_provider.issuer}#{carol.sub}"
    assert user["Name"] == "Carol C."  # the administrator's user, not a new one
    again = exchange(server, tokens(oidc_provider, "carol")["id_token"])
    assert again.status_code == 200, again.text
    logins = [u["Login"] for u in httpx.get(
        f"{server.url}/api/v1/users", headers=admin_headers(server), timeout=10
    ).json()]  # fmt: skip
    assert logins.count("carol") == 1


def test_provisioning_with_the_access_level_of_a_group(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    alice = oidc_provider.user("alice")
    dave = oidc_provider.add_user("dave", groups=["staff"])
    for login in ("alice", "dave"):
        answer = exchange(server, tokens(oidc_provider, login)["id_token"])
        assert answer.status_code == 200, answer.text
    admin = user_by_login(server, "alice")
    assert (admin["LoginType"], admin["AccessLevel"]) == ("OpenId", "Administrator")
    assert admin["Account"] == f"openid:{oidc_provider.issuer}#{alice.sub}"
    assert admin["Name"] == "Alice"
    regular = user_by_login(server, "dave")
    assert (regular["AccessLevel"], regular["Account"]) == (
        "Regular",
        f"openid:{oidc_provider.issuer}#{dave.sub}",
    )


def test_an_account_no_user_is_mapped_to_is_refused_without_provisioning(
    server: ServerProcess, other_provider: OidcProvider, tokens: Tokens
) -> None:
    before = written(server)
    answer = exchange(server, tokens(other_provider, "bob")["id_token"], provider="other")
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"]["code"] == "account_not_mapped"
    assert written(server) == before


# --- hostile input ----------------------------------------------------------------------------


def hostile_tokens(provider: OidcProvider) -> dict[str, str]:
    """Tokens an attacker could send, each wrong in one way."""
    now = int(time.time())
    bob = provider.user("bob")
    public_pem = private_key(provider).as_pem(private=False)
    none_token = ".".join(
        (
            b64(json.dumps({"alg": "none", "typ": "JWT"}).encode()),
            b64(
                json.dumps(
                    {
                        "iss": provider.issuer,
                        "sub": bob.sub,
                        "aud": provider.desktop_client.client_id,
                        "iat": now,
                        "exp": now + 300,
                    }
                ).encode()
            ),
            "",
        )
    )
    # HS256 "signed" with the provider's public key as the shared secret (key confusion).
    header = b64(json.dumps({"alg": "HS256", "kid": provider.signing_kid}).encode())
    payload = b64(json.dumps({"iss": provider.issuer, "sub": bob.sub,
                              "aud": provider.desktop_client.client_id,
                              "iat": now, "exp": now + 300}).encode())  # fmt: skip
    mac = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return {
        "wrong issuer": signed(provider, iss="http://127.0.0.1:1/elsewhere", sub=bob.sub),
        "wrong audience": signed(provider, aud="someone-else", sub=bob.sub),
        "several audiences, no azp": signed(
            provider, aud=[provider.desktop_client.client_id, "someone-else"], sub=bob.sub
        ),
        "expired": signed(provider, iat=now - 3600, exp=now - 600, sub=bob.sub),
        "not yet valid": signed(provider, nbf=now + 3600, sub=bob.sub),
        "issued in the future": signed(provider, iat=now + 3600, exp=now + 7200, sub=bob.sub),
        "alg none": none_token,
        "HS256 with the public key": f"{header}.{payload}.{b64(mac)}",
        "signature of another key": signed(provider, sub=bob.sub)[:-8] + "AAAAAAAA",
        "not a JWT": "not-a-token",
    }


def test_every_hostile_token_is_refused_with_its_code_and_nothing_written(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    # bob's account is mapped (robert) by an earlier test, or provisioned here: make sure a
    # mapped account stands behind the tokens, so that only the checks can refuse them
    exchange(server, signed(oidc_provider, sub=oidc_provider.user("bob").sub))
    before = written(server)
    for what, token in hostile_tokens(oidc_provider).items():
        answer = exchange(server, token)
        assert answer.status_code == 401, (what, answer.text)
        assert answer.json()["error"]["code"] == "openid_token_invalid", what
    assert written(server) == before
    assert sign_ins(server, "openid_token_invalid") >= len(hostile_tokens(oidc_provider))
    assert sign_ins(server, "opened") >= 1  # the metrics count them as sign-ins via openid


def test_a_token_of_one_provider_sent_as_another_is_refused(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    real = tokens(oidc_provider, "bob")["id_token"]
    before = written(server)
    answer = exchange(server, real, provider="other")
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "openid_token_invalid"
    wrong_nonce = exchange(server, real, Nonce="not-the-nonce-sent")
    assert wrong_nonce.status_code == 401, wrong_nonce.text
    assert wrong_nonce.json()["error"]["code"] == "openid_token_invalid"
    assert written(server) == before
    audit = json.dumps(audit_records(server, "LoginFailed"))
    assert "provider other" in audit and "nonce" in audit


def test_an_unknown_provider_is_refused(server: ServerProcess, oidc_provider: OidcProvider) -> None:
    before = written(server)
    answer = exchange(server, signed(oidc_provider), provider="nowhere")
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert (error["code"], error["details"]) == ("openid_provider_unknown", {"provider": "nowhere"})
    assert written(server) == before


def test_the_exchange_body_is_spelled_as_the_rest_of_the_api(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    """Provider, Token, TokenType, Nonce beside ServiceType: camelCase members are refused."""
    before = written(server)
    camel = {"provider": "corp", "token": signed(oidc_provider), "tokenType": "id_token"}
    answer = httpx.post(
        server.url + EXCHANGE, json={**camel, "ServiceType": "WebClient"}, timeout=30
    )
    assert answer.status_code == 400, answer.text
    error = answer.json()["error"]
    assert error["code"] == "invalid_request"
    assert "Provider: Field required" in error["message"]
    assert "tokenType: Extra inputs are not permitted" in error["message"]
    assert written(server) == before


# --- keys -------------------------------------------------------------------------------------


def sign_ins(server: ServerProcess, outcome: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(rf'sessiond_sign_ins_total\{{outcome="{outcome}",via="openid"\}} (\S+)', text)
    return float(found.group(1)) if found else 0.0


def fetches(server: ServerProcess, provider: str, document: str) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    found = re.search(
        rf'sessiond_openid_fetches_total\{{document="{document}",provider="{provider}"\}} (\S+)',
        text,
    )
    return float(found.group(1)) if found else 0.0


def test_made_up_key_ids_fetch_the_keys_again_at_most_once_per_interval(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    exchange(server, signed(oidc_provider))  # the keys are cached
    time.sleep(1.1)  # keys_refetch_interval: 1 s
    before = fetches(server, "corp", "keys")
    key = private_key(oidc_provider)
    started = time.monotonic()
    for _ in range(20):
        header = {"alg": "RS256", "kid": f"made-up-{uuid.uuid4().hex}"}
        token = jwt.encode(header, {"iss": oidc_provider.issuer, "sub": "x"}, key)
        answer = exchange(server, token)
        assert answer.json()["error"]["code"] == "openid_token_invalid"
    elapsed = time.monotonic() - started
    grown = fetches(server, "corp", "keys") - before
    assert 1 <= grown <= 1 + elapsed / 1.0  # the first made-up kid, then one per second
    assert grown < 20


def test_keys_rotated_by_the_provider_are_picked_up(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    assert exchange(server, tokens(oidc_provider, "bob")["id_token"]).status_code == 200
    time.sleep(1.1)  # past keys_refetch_interval
    new_kid = oidc_provider.rotate_keys(keep_old=False)
    got = tokens(oidc_provider, "bob")["id_token"]
    assert jwt_parts(got)[0]["kid"] == new_kid
    answer = exchange(server, got)
    assert answer.status_code == 200, answer.text


# --- a provider down or frozen ----------------------------------------------------------------


def password_sign_in(server: ServerProcess) -> httpx.Response:
    return httpx.post(
        server.url + "/api/v1/sessions/open",
        json={"Login": "admin", "Password": server.admin_password},
        timeout=30,
    )


@pytest.mark.parametrize("how", ["stopped", "frozen"])
def test_a_provider_down_or_frozen_is_503_naming_it_while_passwords_still_sign_in(
    tmp_path: Path, other_provider: OidcProvider, how: str
) -> None:
    proc = start_server(tmp_path / how, provider_table("other", other_provider))
    try:
        token = signed(other_provider)
        outage = other_provider.stopped() if how == "stopped" else other_provider.frozen()
        with outage:
            results: dict[str, Any] = {}

            def meanwhile() -> None:
                started = time.monotonic()
                results["password"] = password_sign_in(proc)
                results["password_seconds"] = time.monotonic() - started

            started = time.monotonic()
            thread = threading.Thread(target=meanwhile)
            thread.start()
            answer = exchange(proc, token, provider="other")
            elapsed = time.monotonic() - started
            thread.join(30)
        assert answer.status_code == 503, answer.text
        error = answer.json()["error"]
        assert error["code"] == "openid_provider_unavailable"
        assert error["details"] == {"provider": "other"}
        assert "other" in error["message"]
        assert elapsed < 10  # the 2 s timeout bounds it: it did not stall
        assert results["password"].status_code == 200
        assert results["password_seconds"] < 10  # not held behind the provider
        # back up: the same server signs the account in (nothing was cached from the outage)
        assert exchange(proc, token, provider="other").json()["error"]["code"] == (
            "account_not_mapped"
        )
    finally:
        proc.stop()


# --- administering OpenId users ---------------------------------------------------------------


def test_the_users_api_and_the_console_keep_an_openid_mapping(
    server: ServerProcess, oidc_provider: OidcProvider, browser: Browser
) -> None:
    headers = admin_headers(server)
    subject = f"Erin-{uuid.uuid4().hex[:6]}"  # the subject is kept exactly, case and all
    added = httpx.post(
        f"{server.url}/api/v1/users",
        json={"Login": "erin", "LoginType": "OpenId",
              "Account": f"{oidc_provider.issuer}#{subject}"},
        headers=headers, timeout=10,
    )  # fmt: skip
    assert added.status_code in (200, 201), added.text
    assert added.json()["Account"] == f"openid:{oidc_provider.issuer}#{subject}"
    with db(server) as conn:
        rows = conn.execute(
            "SELECT issuer, subject FROM openid_identities i JOIN users u ON u.id = i.user_id"
            " WHERE u.login = 'erin'"
        ).fetchall()
    assert rows == [(oidc_provider.issuer, subject)]
    wrong = httpx.patch(
        f"{server.url}/api/v1/users/erin", json={"Account": "just-a-name"},
        headers=headers, timeout=10,
    )  # fmt: skip
    assert wrong.status_code == 400, wrong.text
    assert "ISSUER#SUBJECT" in wrong.json()["error"]["message"]
    moved = httpx.patch(
        f"{server.url}/api/v1/users/erin",
        json={"Account": f"openid:{oidc_provider.issuer}#other-{subject}"},
        headers=headers, timeout=10,
    )  # fmt: skip
    assert moved.status_code == 200, moved.text
    with db(server) as conn:
        rows = conn.execute(
            "SELECT subject FROM openid_identities i JOIN users u ON u.id = i.user_id"
            " WHERE u.login = 'erin'"
        ).fetchall()
    assert rows == [(f"other-{subject}",)]
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{server.url}/console/sign-in")
        page.fill("input[name=login]", "admin")
        page.fill("input[name=password]", server.admin_password)
        page.get_by_role("button", name="Sign in").click()
        page.wait_for_url(re.compile(r"/console/sessions$"))
        page.goto(f"{server.url}/console/user?login=erin")
        assert page.inner_text("#openid-provider") == "Corp sign-in (corp)"
        mapping = page.inner_text("#openid-mapping")
        assert oidc_provider.issuer in mapping and f"other-{subject}" in mapping
    finally:
        context.close()


# --- the provider client's code redemption (for the console's code flow) --------------------


def authorization_code(
    provider: OidcProvider, browser: Browser, receiver: Receiver, login: str
) -> tuple[str, str, str, str]:
    """The code flow up to the redirect: (code, redirect URI, PKCE verifier, nonce)."""
    verifier, challenge = pkce_pair()
    nonce = secrets.token_urlsafe(16)
    redirect_uri = f"{receiver.url}/console/openid/corp/callback"
    query = {
        "client_id": provider.console_client.client_id,
        "response_type": "code",
        "scope": "openid profile email groups",
        "redirect_uri": redirect_uri,
        "state": secrets.token_urlsafe(16),
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    context = browser.new_context()
    try:
        page = context.new_page()
        page.goto(f"{provider.discovery()['authorization_endpoint']}?{urlencode(query)}")
        user = provider.user(login)
        provider_login(page, user.login, user.password)
        code = receiver.next("/console/openid/corp/callback").query["code"]
    finally:
        context.close()
    return code, redirect_uri, verifier, nonce


def test_a_code_is_redeemed_once_and_its_id_token_verified(
    oidc_provider: OidcProvider, browser: Browser, receiver: Receiver
) -> None:
    from sessiond.auth.openid_provider import ProviderClient
    from sessiond.errors import OpenIdTokenInvalid
    from sessiond.settings_openid import OpenIdProvider

    code, redirect_uri, verifier, nonce = authorization_code(
        oidc_provider, browser, receiver, "bob"
    )
    settings = OpenIdProvider(
        issuer=oidc_provider.issuer,
        client_id=oidc_provider.console_client.client_id,
        client_secret=oidc_provider.console_client.client_secret,
        timeout=5,
    )

    async def redeem() -> tuple[dict[str, Any], str, str]:
        client = ProviderClient("corp", settings)
        try:
            answer = dict(await client.redeem_code(code, redirect_uri, verifier))
            verified = await client.verify(answer["id_token"], nonce=nonce)
            with pytest.raises(OpenIdTokenInvalid) as replayed:
                await client.redeem_code(code, redirect_uri, verifier)
            with pytest.raises(OpenIdTokenInvalid) as wrong_nonce:
                await client.verify(answer["id_token"], nonce="another")
            return dict(verified.claims), str(replayed.value.reason), str(wrong_nonce.value.reason)
        finally:
            await client.close()

    # in a thread of its own: Playwright's sync API keeps an event loop running in this one
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        claims, replayed, wrong_nonce = pool.submit(asyncio.run, redeem()).result(60)
    assert (claims["sub"], claims["nonce"]) == (oidc_provider.user("bob").sub, nonce)
    assert "invalid_grant" in replayed
    assert "nonce" in wrong_nonce


def test_an_unverified_email_matches_nobody(
    tmp_path: Path, other_provider: OidcProvider, tokens: Tokens
) -> None:
    proc = start_server(tmp_path, provider_table("other", other_provider, match_claim="email"))
    try:
        frank = other_provider.add_user("frank", email_verified=False)
        gina = other_provider.add_user("gina")
        for user in (frank, gina):
            email = user.claims["email"]
            added = proc.cli("users", "add", email, "--login-type", "OpenId")
            assert added.returncode == 0, added.stderr
        refused = exchange(proc, tokens(other_provider, "frank")["id_token"], provider="other")
        assert refused.status_code == 403, refused.text
        assert refused.json()["error"]["code"] == "account_not_mapped"
        assert user_by_login(proc, frank.claims["email"])["Account"] is None
        matched = exchange(proc, tokens(other_provider, "gina")["id_token"], provider="other")
        assert matched.status_code == 200, matched.text
        assert user_by_login(proc, gina.claims["email"])["Account"] == (
            f"openid:{other_provider.issuer}#{gina.sub}"
        )
    finally:
        proc.stop()


# --- PostgreSQL ----------------------------------------------------------------------------


def test_the_exchange_on_postgresql_keeps_the_provider_session_with_the_session(
    tmp_path: Path, postgres_server: PostgresServer, oidc_provider: OidcProvider, tokens: Tokens
) -> None:
    url = postgres_server.new_database()
    database = url.rsplit("/", 1)[1]
    root = tmp_path / "pg"
    root.mkdir()
    config = root / "sessiond.toml"
    config.write_text(provider_table("corp", oidc_provider, provision=True), encoding="utf-8")
    data_dir = root / "sessiond-data"
    env = server_env(data_dir, SESSIOND_CONFIG=str(config), SESSIOND_DATABASE_URL=url)
    proc = ServerProcess(data_dir, free_port(), env, root / "server.log")
    proc.start()
    try:
        got = tokens(oidc_provider, "bob")
        answer = exchange(proc, got["id_token"])
        assert answer.status_code == 200, answer.text
        sid = jwt_parts(got["id_token"])[1]["sid"]
        bob = oidc_provider.user("bob")
        rows = postgres_server.query(
            "SELECT issuer, subject, sid FROM openid_sessions", database=database
        ).split()
        assert rows == [f"{oidc_provider.issuer}|{bob.sub}|{sid}"]
        mapped = postgres_server.query(
            "SELECT subject FROM openid_identities", database=database
        ).split()
        assert mapped == [bob.sub]
        closed = httpx.post(
            proc.url + "/api/v1/sessions/close",
            headers={"Tessa-Session": answer.json()["AuthToken"]},
            timeout=10,
        )
        assert closed.json() == {"Closed": True}
        left = postgres_server.query("SELECT count(*) FROM openid_sessions", database=database)
        assert left.strip() == "0"  # it goes with its session
    finally:
        proc.stop()


# --- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "said"),
    [
        ('issuer = "https://id.example"\nclient_id = "c"\nalgorithms = ["none"]', "not allowed"),
        ('issuer = "https://id.example"\nclient_id = "c"\nalgorithms = ["HS256"]', "HS256"),
        ('issuer = "http://id.example"\nclient_id = "c"', "https://"),
        ('issuer = "https://id.example"', "needs client_id"),
        ('issuer = "https://id.example"\nclient_id = "c"\ntimeout = "5m"', "60 seconds"),
    ],
)
def test_settings_that_would_weaken_the_checks_stop_the_server(
    tmp_path: Path, table: str, said: str
) -> None:
    from sessiond.errors import SettingsError
    from sessiond.settings import load_settings

    config = tmp_path / "sessiond.toml"
    config.write_text(f"[openid.providers.corp]\n{table}\n", encoding="utf-8")
    with pytest.raises(SettingsError) as refused:
        load_settings(config)
    assert said in refused.value.message
    assert "openid.providers.corp" in refused.value.message


def test_two_providers_may_not_share_an_issuer(tmp_path: Path) -> None:
    from sessiond.errors import SettingsError
    from sessiond.settings import load_settings

    config = tmp_path / "sessiond.toml"
    config.write_text(
        '[openid.providers.a]\nissuer = "https://id.example"\nclient_id = "a"\n'
        '[openid.providers.b]\nissuer = "https://id.example"\nclient_id = "b"\n',
        encoding="utf-8",
    )
    with pytest.raises(SettingsError, match="same issuer"):
        load_settings(config)


# --- the algorithms a provider signs with -----------------------------------------------------


@pytest.mark.parametrize("alg", ["ES256", "PS256", "HS256"])
def test_real_id_tokens_of_each_algorithm(
    server: ServerProcess, oidc_provider: OidcProvider, tokens: Tokens, alg: str
) -> None:
    """ES256 and PS256 (allowed by default) open sessions; an HS256 ID token, signed by the
    provider itself with the client's secret, is refused: this server accepts no shared-secret
    signature, whoever made it."""
    console = oidc_provider.console_client.client_id
    new_kid = None if alg == "HS256" else oidc_provider.rotate_keys(alg=alg)
    oidc_provider.update_client(console, id_token_signed_response_alg=alg)
    try:
        time.sleep(1.1)  # keys_refetch_interval: the new key may be fetched
        got = tokens(oidc_provider, "bob")["id_token"]
        assert (jwt_parts(got)[0]["alg"], jwt_parts(got)[0].get("kid")) == (alg, new_kid)
        answer = exchange(server, got)
        if alg == "HS256":
            assert answer.status_code == 401, answer.text
            assert answer.json()["error"]["code"] == "openid_token_invalid"
            reasons = json.dumps(audit_records(server, "LoginFailed")[:5])
            assert "algorithm 'HS256' is not allowed" in reasons
        else:
            assert answer.status_code == 200, answer.text
    finally:
        oidc_provider.update_client(console, id_token_signed_response_alg=None)
        if new_kid is not None:
            oidc_provider.rotate_keys()  # RS256 first again for the tests after this one


def test_a_key_fetch_from_a_frozen_provider_holds_up_no_token_of_a_known_key(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    bob = oidc_provider.user("bob")
    assert exchange(server, signed(oidc_provider, sub=bob.sub)).status_code == 200  # cached
    time.sleep(1.1)  # keys_refetch_interval: a made-up kid will fetch the keys
    made_up = jwt.encode(
        {"alg": "RS256", "kid": f"made-up-{uuid.uuid4().hex}"},
        {"iss": oidc_provider.issuer, "sub": bob.sub},
        private_key(oidc_provider),
    )
    fetching: dict[str, Any] = {}

    def fetch() -> None:
        fetching["answer"] = exchange(server, made_up)

    with oidc_provider.frozen():
        thread = threading.Thread(target=fetch)
        thread.start()
        time.sleep(0.3)  # the fetch has begun and waits on the frozen provider
        known = exchange(server, signed(oidc_provider, sub=bob.sub))
        still_fetching = thread.is_alive()
        thread.join(30)
    assert known.status_code == 200, known.text
    assert still_fetching  # answered while the fetch still waited: it held nothing up
    error = fetching["answer"].json()["error"]
    assert (error["code"], error["details"]) == (
        "openid_provider_unavailable",
        {"provider": "corp"},
    )


def test_a_password_sign_in_of_an_openid_user_is_the_uniform_refusal_and_says_why(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    """An OpenId user has no password here: a password sign-in gets the same refusal as a
    wrong password, and the audit says that the user signs in through the provider (not that
    OpenId sign-in is missing on this server)."""
    login = f"frank-{uuid.uuid4().hex[:6]}"
    added = httpx.post(
        f"{server.url}/api/v1/users",
        json={"Login": login, "LoginType": "OpenId",
              "Account": f"{oidc_provider.issuer}#sub-{login}"},
        headers=admin_headers(server), timeout=10,
    )  # fmt: skip
    assert added.status_code in (200, 201), added.text
    before = written(server)
    answer = httpx.post(
        server.url + "/api/v1/sessions/open",
        json={"Login": login, "Password": "any password at all"},
        timeout=30,
    )
    assert answer.status_code == 401, answer.text
    assert answer.json()["error"]["code"] == "invalid_credentials"
    assert written(server) == before
    (record,) = [r for r in audit_records(server, "LoginFailed") if login in json.dumps(r)][:1]
    assert "OpenId users sign in by OpenID Connect sign-in, not with a password" in json.dumps(
        record
    )


def test_subjects_that_differ_only_in_case_are_two_people(
    server: ServerProcess, oidc_provider: OidcProvider
) -> None:
    """OpenID Connect's ``sub`` is case-sensitive: two subjects of one issuer that differ only
    in case are two accounts, each provisioned as its own user, never one user's."""
    tag = uuid.uuid4().hex[:6]
    logins = {}
    for sub, login in ((f"CaseSub-{tag}", f"upper-{tag}"), (f"casesub-{tag}", f"lower-{tag}")):
        answer = exchange(server, signed(oidc_provider, sub=sub, preferred_username=login))
        assert answer.status_code == 200, answer.text
        logins[sub] = user_by_login(server, login)
    upper, lower = logins.values()
    assert upper["ID"] != lower["ID"]
    assert upper["Account"] == f"openid:{oidc_provider.issuer}#CaseSub-{tag}"
    assert lower["Account"] == f"openid:{oidc_provider.issuer}#casesub-{tag}"
    again = exchange(server, signed(oidc_provider, sub=f"CaseSub-{tag}"))
    assert again.status_code == 200, again.text
    assert str(SessionToken.from_xml(again.json()["Token"]).user_id) == upper["ID"]
