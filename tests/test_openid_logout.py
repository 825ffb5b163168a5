"""OpenID Connect Back-Channel Logout against a real OpenID Provider (tests/infra/oidc.py):
people sign in at the provider's own pages in Debian's Chromium and exchange their ID tokens
for platform sessions; ending one provider session at the provider (RP-initiated logout) makes
the provider post a logout token to sessiond, which closes exactly the platform sessions of
that provider session — on SQLite, and on two PostgreSQL nodes (seen on the other node at
once). Hostile logout tokens (made here with joserfc) are refused with nothing closed."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import sqlite3
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from joserfc import jwt
from joserfc.jwk import RSAKey
from playwright.sync_api import Browser, sync_playwright

from sessiond.keys import KeyRing
from tests.conftest import ServerProcess, free_port, server_env
from tests.infra.oidc import OidcClient, OidcProvider, new_signing_jwk
from tests.infra.oidc_pages import confirm_logout
from tests.infra.postgres import PostgresServer
from tests.test_oidc_provider import CHROMIUM, CHROMIUM_ARGS, Receiver, code_flow, jwt_parts

PROVIDER = "corp"
LOGOUT_PATH = f"/api/v1/openid/{PROVIDER}/backchannel-logout"
EVENT = "http://schemas.openid.net/event/backchannel-logout"
ADMIN_PASSWORD = "Admin-pw-1"


# --- the provider's client, the servers, the browser ----------------------------------------


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    got = Receiver()
    yield got
    got.close()


@pytest.fixture(scope="module")
def client(oidc_provider: OidcProvider, receiver: Receiver) -> OidcClient:
    """This module's own confidential client: its back-channel logout URI is set to the
    server under test by each test (``point_logout_at``)."""
    return oidc_provider.register_client(
        redirect_uris=[f"{receiver.url}/callback"],
        post_logout_redirect_uris=[f"{receiver.url}/signed-out"],
        backchannel_logout_session_required=True,
    )


def settings_for(provider: OidcProvider, client: OidcClient) -> str:
    return "\n".join(
        [
            f"[openid.providers.{PROVIDER}]",
            f'issuer = "{provider.issuer}"',
            f'client_id = "{client.client_id}"',
            f'client_secret = "{client.client_secret}"',
            f'public_client_id = "{provider.desktop_client.client_id}"',
            f'audiences = ["{provider.api_audience}"]',
            "provision = true",
            'timeout = "5s"',
        ]
    )


def start_server(root: Path, settings: str, **env: str) -> ServerProcess:
    root.mkdir(parents=True, exist_ok=True)
    config = root / "sessiond.toml"
    config.write_text(settings + "\n", encoding="utf-8")
    data_dir = root / "sessiond-data"
    proc = ServerProcess(
        data_dir,
        free_port(),
        server_env(
            data_dir,
            SESSIOND_CONFIG=str(config),
            SESSIOND_ADMIN_PASSWORD=ADMIN_PASSWORD,
            **env,
        ),
        root / "server.log",
    )
    proc.start()
    return proc


def point_logout_at(provider: OidcProvider, client: OidcClient, server: ServerProcess) -> None:
    provider.update_client(client.client_id, backchannel_logout_uri=server.url + LOGOUT_PATH)


@pytest.fixture(scope="module")
def server(
    tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider, client: OidcClient
) -> Iterator[ServerProcess]:
    proc = start_server(tmp_path_factory.mktemp("logout"), settings_for(oidc_provider, client))
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        yield driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@dataclass
class ProviderSession:
    """One sign-in at the provider in its own browser context (its own provider session)."""

    provider: OidcProvider
    receiver: Receiver
    context: Any
    tokens: dict[str, Any]

    @property
    def id_token(self) -> str:
        return str(self.tokens["id_token"])

    @property
    def claims(self) -> dict[str, Any]:
        return jwt_parts(self.id_token)[1]

    def end_at_provider(self) -> None:
        """RP-initiated logout at the provider's end_session endpoint, confirmed on its page:
        the provider then posts a logout token to every client's back-channel logout URI."""
        page = self.context.new_page()
        query = {
            "id_token_hint": self.id_token,
            "post_logout_redirect_uri": f"{self.receiver.url}/signed-out",
            "state": "bye",
        }
        end_session = self.provider.discovery()["end_session_endpoint"]
        page.goto(f"{end_session}?{urllib.parse.urlencode(query)}")
        confirm_logout(page)
        assert self.receiver.next("/signed-out").query["state"] == "bye"


class SignIns:
    def __init__(self, provider: OidcProvider, browser: Browser, receiver: Receiver) -> None:
        self.provider, self.browser, self.receiver = provider, browser, receiver
        self.contexts: list[Any] = []

    def __call__(self, client: OidcClient, login: str) -> ProviderSession:
        context = self.browser.new_context()
        self.contexts.append(context)
        tokens = code_flow(
            self.provider, context.new_page(), self.receiver, client, "/callback", login
        )
        return ProviderSession(self.provider, self.receiver, context, tokens)

    def close(self) -> None:
        for context in self.contexts:
            context.close()


@pytest.fixture
def sign_in(oidc_provider: OidcProvider, browser: Browser, receiver: Receiver) -> Iterator[SignIns]:
    made = SignIns(oidc_provider, browser, receiver)
    yield made
    made.close()


# --- sessiond's side ------------------------------------------------------------------------


def exchange(server: ServerProcess, session: ProviderSession) -> str:
    """A platform session for the provider session's ID token; its auth token."""
    answer = httpx.post(
        server.url + "/api/v1/openid/exchange",
        json={"Provider": PROVIDER, "Token": session.id_token},
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    return str(answer.json()["AuthToken"])


def is_open(server: ServerProcess, auth_token: str) -> bool:
    answer = httpx.get(
        server.url + "/api/v1/sessions/current",
        headers={"Tessa-Session": auth_token},
        timeout=30,
    )
    if answer.status_code == 401:
        assert answer.json()["error"]["code"] == "session_not_found", answer.text
        return False
    assert answer.status_code == 200, answer.text
    return True


def wait_closed(server: ServerProcess, auth_token: str, timeout: float = 15.0) -> None:
    """The provider posts its logout tokens while it handles the logout; poll (bounded)."""
    deadline = time.monotonic() + timeout
    while is_open(server, auth_token):
        assert time.monotonic() < deadline, "the back-channel logout closed nothing"
        time.sleep(0.1)


def post_logout(server: ServerProcess, token: str, provider: str = PROVIDER) -> httpx.Response:
    return httpx.post(
        f"{server.url}/api/v1/openid/{provider}/backchannel-logout",
        data={"logout_token": token},
        timeout=30,
    )


def logout_records(server: ServerProcess) -> list[dict[str, Any]]:
    admin = httpx.post(
        server.url + "/api/v1/sessions/open",
        json={"Login": "admin", "Password": ADMIN_PASSWORD},
        timeout=30,
    )
    assert admin.status_code == 200, admin.text
    headers = {"Tessa-Session": admin.json()["AuthToken"]}
    answer = httpx.get(
        server.url + "/api/v1/audit",
        params={"action": "Logout", "limit": 1000},
        headers=headers,
        timeout=30,
    )
    assert answer.status_code == 200, answer.text
    records = answer.json()["Records"]
    httpx.post(server.url + "/api/v1/sessions/close", headers=headers, timeout=30)
    return [r for r in records if r["Details"].get("provider") == PROVIDER]


# --- logout tokens made here ----------------------------------------------------------------


def provider_key(provider: OidcProvider) -> RSAKey:
    return RSAKey.import_key(provider._config["keys"][0])


def logout_claims(provider: OidcProvider, client: OidcClient, **changes: Any) -> dict[str, Any]:
    now = int(time.time())
    claims: dict[str, Any] = {
        "iss": provider.issuer,
        "aud": client.client_id,
        "iat": now,
        "exp": now + 120,
        "jti": uuid.uuid4().hex,
        "events": {EVENT: {}},
        **changes,
    }
    return {k: v for k, v in claims.items() if v is not None}


def signed(
    provider: OidcProvider,
    claims: dict[str, Any],
    key: RSAKey | None = None,
    kid: str | None = None,
) -> str:
    header = {"alg": "RS256", "typ": "logout+jwt", "kid": kid or provider.signing_kid}
    return jwt.encode(header, claims, key or provider_key(provider))


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(claims: dict[str, Any]) -> str:
    header = b64(json.dumps({"alg": "none", "typ": "logout+jwt"}).encode())
    return f"{header}.{b64(json.dumps(claims).encode())}."


def hs256_with_public_key(provider: OidcProvider, claims: dict[str, Any]) -> str:
    """HS256 "signed" with the provider's public key as the HMAC secret (the classic
    algorithm confusion)."""
    public = httpx.get(provider.jwks_uri, timeout=5).json()["keys"][0]
    secret = json.dumps(public).encode()
    header = b64(json.dumps({"alg": "HS256", "kid": provider.signing_kid}).encode())
    body = b64(json.dumps(claims).encode())
    mac = hmac.new(secret, f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


# --- the tests ------------------------------------------------------------------------------


def test_ending_a_provider_session_closes_exactly_its_platform_sessions(
    oidc_provider: OidcProvider,
    client: OidcClient,
    server: ServerProcess,
    sign_in: SignIns,
) -> None:
    point_logout_at(oidc_provider, client, server)
    alice_here = sign_in(client, "alice")
    alice_there = sign_in(client, "alice")  # another browser: another provider session
    bob = sign_in(client, "bob")
    assert alice_here.claims["sid"] != alice_there.claims["sid"]
    ended = [exchange(server, alice_here), exchange(server, alice_here)]
    kept = [exchange(server, alice_there), exchange(server, bob)]
    before = len(logout_records(server))

    alice_here.end_at_provider()

    for token in ended:
        wait_closed(server, token)
    assert [is_open(server, token) for token in kept] == [True, True]
    records = logout_records(server)[before:]
    assert len(records) == 2
    for record in records:
        assert record["ActorName"] == "System"
        assert record["Details"] == {
            "reason": "OpenID Connect back-channel logout",
            "provider": PROVIDER,
            "subject": alice_here.claims["sub"],
            "sid": alice_here.claims["sid"],
            "sessions": 2,
        }


def test_a_logout_token_with_only_sub_closes_all_that_accounts_sessions(
    oidc_provider: OidcProvider,
    client: OidcClient,
    server: ServerProcess,
    sign_in: SignIns,
) -> None:
    bob_here, bob_there = sign_in(client, "bob"), sign_in(client, "bob")
    alice = sign_in(client, "alice")
    bobs = [exchange(server, bob_here), exchange(server, bob_there)]
    alices = exchange(server, alice)
    token = signed(oidc_provider, logout_claims(oidc_provider, client, sub=bob_here.claims["sub"]))
    answer = post_logout(server, token)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    assert [is_open(server, t) for t in bobs] == [False, False]
    assert is_open(server, alices)


def test_a_replayed_logout_token_is_refused(
    oidc_provider: OidcProvider,
    client: OidcClient,
    server: ServerProcess,
    sign_in: SignIns,
) -> None:
    first, second = sign_in(client, "alice"), sign_in(client, "alice")
    token = signed(
        oidc_provider,
        logout_claims(oidc_provider, client, sid=first.claims["sid"], sub=first.claims["sub"]),
    )
    assert post_logout(server, token).status_code == 200
    # The same token again, naming a provider session that now has a platform session.
    kept = exchange(server, first)
    other = exchange(server, second)
    replayed = post_logout(server, token)
    assert replayed.status_code == 400, replayed.text
    body = replayed.json()
    assert body["error"] == "invalid_request"
    assert body["code"] == "openid_logout_token_replayed"
    assert "received before" in body["error_description"]
    assert replayed.headers["cache-control"] == "no-store"
    assert is_open(server, kept)
    assert is_open(server, other)


@pytest.mark.parametrize(
    "case",
    [
        "nonce",
        "wrong aud",
        "api audience",
        "wrong iss",
        "old iat",
        "expired",
        "no iat",
        "no jti",
        "no events",
        "other event",
        "neither sid nor sub",
        "alg none",
        "hs256 with the public key",
        "another key, the provider's kid",
        "another key, an unknown kid",
        "no JWT",
    ],
)
def test_hostile_logout_tokens_are_refused_and_close_nothing(
    case: str,
    oidc_provider: OidcProvider,
    client: OidcClient,
    server: ServerProcess,
    sign_in: SignIns,
) -> None:
    alice = sign_in(client, "alice")
    session = exchange(server, alice)
    good = logout_claims(oidc_provider, client, sid=alice.claims["sid"], sub=alice.claims["sub"])
    now = int(time.time())
    changes: dict[str, Any] = {
        "nonce": {"nonce": "n-123"},
        "wrong aud": {"aud": "someone-else"},
        "api audience": {"aud": oidc_provider.api_audience},
        "wrong iss": {"iss": "http://127.0.0.1:1/"},
        "old iat": {"iat": now - 3600},
        "expired": {"iat": now - 200, "exp": now - 100},
        "no iat": {"iat": None},
        "no jti": {"jti": None},
        "no events": {"events": None},
        "other event": {"events": {"http://schemas.openid.net/event/other": {}}},
        "neither sid nor sub": {"sid": None, "sub": None},
    }.get(case, {})
    claims = {k: v for k, v in {**good, **changes}.items() if v is not None}
    if case == "alg none":
        token = unsigned(claims)
    elif case == "hs256 with the public key":
        token = hs256_with_public_key(oidc_provider, claims)
    elif case == "another key, the provider's kid":
        token = signed(oidc_provider, claims, key=RSAKey.import_key(new_signing_jwk()))
    elif case == "another key, an unknown kid":
        stranger = new_signing_jwk()
        token = signed(oidc_provider, claims, RSAKey.import_key(stranger), stranger["kid"])
    elif case == "no JWT":
        token = "not-a-jwt"
    else:
        token = signed(oidc_provider, claims)
    answer = post_logout(server, token)
    assert answer.status_code == 400, answer.text
    body = answer.json()
    assert body["error"] == "invalid_request"
    assert body["code"] == "openid_logout_token_invalid"
    assert body["details"] == {"provider": PROVIDER}
    assert answer.headers["cache-control"] == "no-store"
    assert is_open(server, session)
    # The same claims, properly signed, do close it (when they are a valid logout token).
    assert post_logout(server, signed(oidc_provider, good)).status_code == 200
    assert not is_open(server, session)


def test_a_missing_logout_token_or_unknown_provider_is_refused(server: ServerProcess) -> None:
    missing = httpx.post(server.url + LOGOUT_PATH, data={}, timeout=30)
    assert missing.status_code == 400
    assert missing.json()["code"] == "openid_logout_token_invalid"
    assert "logout_token" in missing.json()["error_description"]
    unknown = post_logout(server, "x.y.z", provider="nobody")
    assert unknown.status_code == 400
    assert unknown.json()["error"] == "invalid_request"
    assert unknown.json()["code"] == "openid_provider_unknown"


def test_the_sweeper_forgets_logout_tokens_once_too_old_to_be_replayed(
    tmp_path_factory: pytest.TempPathFactory, oidc_provider: OidcProvider, client: OidcClient
) -> None:
    proc = start_server(
        tmp_path_factory.mktemp("logout-sweep"),
        settings_for(oidc_provider, client),
        SESSIOND_SWEEP_INTERVAL="0.3s",
    )
    try:
        for jti in ("aged", "fresh"):
            claims = logout_claims(oidc_provider, client, sub="nobody", jti=jti)
            assert post_logout(proc, signed(oidc_provider, claims)).status_code == 200
        database = proc.data_dir / "sessiond.db"
        with sqlite3.connect(database) as conn:  # as if "aged" had been received long ago
            conn.execute(
                "UPDATE openid_logout_tokens SET keep_until = ? WHERE jti = 'aged'",
                ("2020-01-01 00:00:00.000000",),
            )

        def kept() -> list[str]:
            with sqlite3.connect(database) as conn:
                rows = conn.execute("SELECT jti FROM openid_logout_tokens ORDER BY jti")
                return [row[0] for row in rows]

        deadline = time.monotonic() + 15
        while kept() != ["fresh"]:
            assert time.monotonic() < deadline, f"the sweeper kept {kept()}"
            time.sleep(0.1)
    finally:
        proc.stop()


def test_two_postgresql_nodes_a_logout_on_one_is_seen_on_the_other_at_once(
    postgres_server: PostgresServer,
    tmp_path_factory: pytest.TempPathFactory,
    oidc_provider: OidcProvider,
    client: OidcClient,
    sign_in: SignIns,
) -> None:
    root = tmp_path_factory.mktemp("logout-pg")
    KeyRing.generate().save(root / "keys.json")
    env = {
        "SESSIOND_DATABASE_URL": postgres_server.new_database(),
        "SESSIOND_SIGNATURE_KEYS_FILE": str(root / "keys.json"),
    }
    settings = settings_for(oidc_provider, client)
    a = start_server(root / "node-a", settings, **env)
    try:
        b = start_server(root / "node-b", settings, **env)
        try:
            point_logout_at(oidc_provider, client, a)
            alice, bob = sign_in(client, "alice"), sign_in(client, "bob")
            ended = [exchange(b, alice), exchange(a, alice)]
            kept = exchange(b, bob)
            assert [is_open(b, t) for t in ended] == [True, True]  # node b has seen them

            alice.end_at_provider()  # the provider posts to node a

            wait_closed(a, ended[1])
            assert [is_open(b, t) for t in ended] == [False, False]  # no wait on node b
            assert is_open(b, kept) and is_open(a, kept)
            replay = signed(
                oidc_provider,
                logout_claims(oidc_provider, client, sub=bob.claims["sub"], jti="once-only"),
            )
            assert post_logout(b, replay).status_code == 200
            assert post_logout(a, replay).json()["code"] == "openid_logout_token_replayed"
            assert not is_open(a, kept)
            # One token posted to both nodes at the same moment: one of them acts on it.
            raced = signed(
                oidc_provider,
                logout_claims(oidc_provider, client, sub=bob.claims["sub"], jti="raced"),
            )
            with ThreadPoolExecutor(max_workers=2) as pool:
                answers = list(pool.map(lambda node: post_logout(node, raced), [a, b]))
            assert sorted(r.status_code for r in answers) == [200, 400]
            (refused,) = [r for r in answers if r.status_code == 400]
            assert refused.json()["code"] == "openid_logout_token_replayed"
        finally:
            b.stop()
    finally:
        a.stop()
