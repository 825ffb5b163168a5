"""The test OpenID Provider itself (tests/infra/oidc.py): what the OpenID Connect tests rely on
works against it, through its own pages in Debian's Chromium and its endpoints over httpx."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import queue
import secrets
import threading
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from playwright.sync_api import Browser, Page, Playwright, sync_playwright

from tests.infra.oidc import OidcClient, OidcProvider
from tests.infra.oidc_pages import (
    ProviderPageError,
    complete_device_flow,
    confirm_logout,
    provider_login,
)

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run"]
SCOPES = "openid profile email groups"


# --- a loopback receiver for redirects and back-channel logout tokens ---------------------


@dataclass
class Received:
    method: str
    path: str
    query: dict[str, str]
    form: dict[str, str]


class Receiver:
    """An HTTP server on 127.0.0.1 that answers 200 and records every request."""

    def __init__(self) -> None:
        self.requests: queue.Queue[Received] = queue.Queue()
        requests = self.requests

        class Handler(BaseHTTPRequestHandler):
            def _record(self, body: bytes) -> None:
                url = urllib.parse.urlsplit(self.path)
                requests.put(
                    Received(
                        self.command,
                        url.path,
                        dict(urllib.parse.parse_qsl(url.query)),
                        dict(urllib.parse.parse_qsl(body.decode())),
                    )
                )
                self.send_response(200)
                self.send_header("content-type", "text/html")
                self.end_headers()
                self.wfile.write(b"<html><body><p id='received'>received</p></body></html>")

            def do_GET(self) -> None:
                self._record(b"")

            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self._record(self.rfile.read(length))

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def next(self, path: str, timeout: float = 15.0) -> Received:
        deadline = time.monotonic() + timeout
        while True:
            try:
                got = self.requests.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                raise AssertionError(f"nothing arrived at {path} within {timeout}s") from None
            if got.path == path:
                return got

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as driver:
        yield _launch(driver)


def _launch(driver: Playwright) -> Browser:
    return driver.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context()
    yield context.new_page()
    context.close()


# --- JWTs, checked by hand (the server's verification is not what is tested here) ---------


def _b64decode(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def jwt_parts(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    header, payload, _ = token.split(".")
    return json.loads(_b64decode(header)), json.loads(_b64decode(payload))


def _int(value: str) -> int:
    return int.from_bytes(_b64decode(value), "big")


def verified_claims(
    provider: OidcProvider, token: str, client_secret: str | None = None
) -> dict[str, Any]:
    """The claims of an RS256, PS256 or ES256 JWT whose signature checks with the key of its
    ``kid`` in the provider's JWKS (or of an HS256 one, with the client's secret)."""
    header, claims = jwt_parts(token)
    signed, _, signature = token.rpartition(".")
    raw = _b64decode(signature)
    if header["alg"] == "HS256" and client_secret is not None:
        mac = hmac.new(client_secret.encode(), signed.encode(), hashlib.sha256).digest()
        assert hmac.compare_digest(mac, raw)
        return claims
    keys = httpx.get(provider.jwks_uri, timeout=5).json()["keys"]
    (jwk,) = [k for k in keys if k["kid"] == header["kid"]]
    assert jwk["alg"] == header["alg"]
    if header["alg"] == "ES256":
        ec_key = ec.EllipticCurvePublicNumbers(
            _int(jwk["x"]), _int(jwk["y"]), ec.SECP256R1()
        ).public_key()
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        ec_key.verify(der, signed.encode(), ec.ECDSA(hashes.SHA256()))
        return claims
    rsa_key = rsa.RSAPublicNumbers(_int(jwk["e"]), _int(jwk["n"])).public_key()
    if header["alg"] == "PS256":
        pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
        rsa_key.verify(raw, signed.encode(), pss, hashes.SHA256())
    else:
        assert header["alg"] == "RS256"
        rsa_key.verify(raw, signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return claims


def pkce_pair() -> tuple[str, str]:
    verifier = secrets.token_urlsafe(48)
    digest = hashlib.sha256(verifier.encode()).digest()
    return verifier, base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def code_flow(
    provider: OidcProvider,
    page: Page,
    receiver: Receiver,
    client: OidcClient,
    redirect_path: str,
    login: str,
) -> dict[str, Any]:
    """Run the authorization code flow with PKCE in the browser; return the token answer."""
    verifier, challenge = pkce_pair()
    state, nonce = secrets.token_urlsafe(16), secrets.token_urlsafe(16)
    redirect_uri = receiver.url + redirect_path
    query = {
        "client_id": client.client_id,
        "response_type": "code",
        "scope": SCOPES,
        "redirect_uri": redirect_uri,
        "state": state,
        "nonce": nonce,
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page.goto(f"{provider.authorization_endpoint}?{urllib.parse.urlencode(query)}")
    user = provider.user(login)
    provider_login(page, user.login, user.password)
    callback = receiver.next(redirect_path)
    assert callback.query["state"] == state
    assert callback.query["iss"] == provider.issuer
    answer = httpx.post(
        provider.token_endpoint,
        data={
            "grant_type": "authorization_code",
            "code": callback.query["code"],
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        },
        auth=client.auth,
        timeout=10,
    )
    assert answer.status_code == 200, answer.text
    tokens: dict[str, Any] = answer.json()
    claims = verified_claims(provider, tokens["id_token"], client.client_secret)
    assert claims["nonce"] == nonce
    return tokens


# --- the tests ------------------------------------------------------------------------------


def test_discovery_and_jwks_are_served(oidc_provider: OidcProvider) -> None:
    discovery = oidc_provider.discovery()
    assert discovery["issuer"] == oidc_provider.issuer
    assert discovery["jwks_uri"] == oidc_provider.jwks_uri
    assert discovery["backchannel_logout_supported"] is True
    assert discovery["backchannel_logout_session_supported"] is True
    assert "urn:ietf:params:oauth:grant-type:device_code" in discovery["grant_types_supported"]
    assert discovery["end_session_endpoint"].startswith(oidc_provider.issuer)
    keys = httpx.get(oidc_provider.jwks_uri, timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == oidc_provider.kids
    assert all("d" not in k for k in keys)  # public halves only


def test_code_flow_with_pkce_for_the_console_client(
    oidc_provider: OidcProvider, page: Page, receiver: Receiver
) -> None:
    client = oidc_provider.console_client
    tokens = code_flow(
        oidc_provider, page, receiver, client, "/console/openid/corp/callback", "alice"
    )
    alice = oidc_provider.user("alice")
    claims = verified_claims(oidc_provider, tokens["id_token"])
    assert claims["iss"] == oidc_provider.issuer
    assert claims["aud"] == client.client_id
    assert claims["sub"] == alice.sub
    assert claims["preferred_username"] == "alice"
    assert claims["email"] == "alice@example.test"
    assert claims["groups"] == ["sessiond-admins", "staff"]
    assert claims["sid"]
    access = verified_claims(oidc_provider, tokens["access_token"])  # a JWT for the API
    assert access["aud"] == oidc_provider.api_audience
    assert access["sub"] == alice.sub
    assert access["client_id"] == client.client_id


def test_a_wrong_password_is_refused_on_the_login_page(
    oidc_provider: OidcProvider, page: Page, receiver: Receiver
) -> None:
    _, challenge = pkce_pair()
    query = {
        "client_id": oidc_provider.console_client.client_id,
        "response_type": "code",
        "scope": "openid",
        "redirect_uri": f"{receiver.url}/console/openid/corp/callback",
        "code_challenge": challenge,
        "code_challenge_method": "S256",
    }
    page.goto(f"{oidc_provider.issuer}/auth?{urllib.parse.urlencode(query)}")
    with pytest.raises(ProviderPageError, match="Wrong login or password"):
        provider_login(page, "alice", "not-her-password")


def test_device_flow_for_the_desktop_client(oidc_provider: OidcProvider, page: Page) -> None:
    client = oidc_provider.desktop_client
    start = httpx.post(
        oidc_provider.discovery()["device_authorization_endpoint"],
        data={"client_id": client.client_id, "scope": SCOPES},
        timeout=10,
    )
    assert start.status_code == 200, start.text
    device = start.json()
    poll = {
        "grant_type": "urn:ietf:params:oauth:grant-type:device_code",
        "device_code": device["device_code"],
        "client_id": client.client_id,
    }
    pending = httpx.post(oidc_provider.token_endpoint, data=poll, timeout=10)
    assert pending.json()["error"] == "authorization_pending"
    bob = oidc_provider.user("bob")
    complete_device_flow(page, device["verification_uri"], device["user_code"], "bob", bob.password)
    done = httpx.post(oidc_provider.token_endpoint, data=poll, timeout=10)
    assert done.status_code == 200, done.text
    claims = verified_claims(oidc_provider, done.json()["id_token"])
    assert (claims["sub"], claims["aud"]) == (bob.sub, client.client_id)
    assert claims["preferred_username"] == "bob"


def test_key_rotation_puts_a_new_kid_first(oidc_provider: OidcProvider) -> None:
    before = oidc_provider.signing_kid
    console = oidc_provider.console_client

    def jwks_kids() -> list[str]:
        return [k["kid"] for k in httpx.get(oidc_provider.jwks_uri, timeout=5).json()["keys"]]

    def signing_kid() -> str:
        answer = httpx.post(
            oidc_provider.token_endpoint,
            data={"grant_type": "client_credentials", "scope": "sessiond"},
            auth=console.auth,
            timeout=10,
        )
        assert answer.status_code == 200, answer.text
        return str(jwt_parts(answer.json()["access_token"])[0]["kid"])

    assert signing_kid() == before
    kept = oidc_provider.rotate_keys()
    assert jwks_kids() == [kept, before]
    assert signing_kid() == kept
    dropped = oidc_provider.rotate_keys(keep_old=False)
    assert jwks_kids() == [dropped]
    assert signing_kid() == dropped


def test_rp_initiated_logout_sends_a_back_channel_logout_token(
    oidc_provider: OidcProvider, page: Page, receiver: Receiver
) -> None:
    client = oidc_provider.register_client(
        redirect_uris=[f"{receiver.url}/callback"],
        post_logout_redirect_uris=[f"{receiver.url}/signed-out"],
        backchannel_logout_uri=f"{receiver.url}/backchannel-logout",
        backchannel_logout_session_required=True,
    )
    tokens = code_flow(oidc_provider, page, receiver, client, "/callback", "bob")
    id_claims = verified_claims(oidc_provider, tokens["id_token"])
    end_session = oidc_provider.discovery()["end_session_endpoint"]
    query = {
        "id_token_hint": tokens["id_token"],
        "post_logout_redirect_uri": f"{receiver.url}/signed-out",
        "state": "bye",
    }
    page.goto(f"{end_session}?{urllib.parse.urlencode(query)}")
    confirm_logout(page)
    posted = receiver.next("/backchannel-logout")
    assert posted.method == "POST"
    logout = verified_claims(oidc_provider, posted.form["logout_token"])
    assert logout["iss"] == oidc_provider.issuer
    assert logout["aud"] == client.client_id
    assert logout["sub"] == id_claims["sub"]
    assert logout["sid"] == id_claims["sid"]
    assert "http://schemas.openid.net/event/backchannel-logout" in logout["events"]
    assert receiver.next("/signed-out").query["state"] == "bye"


def test_stop_start_freeze_and_thaw(oidc_provider: OidcProvider) -> None:
    issuer, kids = oidc_provider.issuer, oidc_provider.kids
    with oidc_provider.frozen(), pytest.raises(httpx.ReadTimeout):
        httpx.get(oidc_provider.discovery_url, timeout=1)
    assert oidc_provider.discovery()["issuer"] == issuer
    with oidc_provider.stopped(), pytest.raises(httpx.ConnectError):
        httpx.get(oidc_provider.discovery_url, timeout=1)
    assert oidc_provider.discovery()["issuer"] == issuer
    keys = httpx.get(oidc_provider.jwks_uri, timeout=5).json()["keys"]
    assert [k["kid"] for k in keys] == kids


def test_changes_keep_the_provider_session(
    oidc_provider: OidcProvider, page: Page, receiver: Receiver
) -> None:
    client = oidc_provider.register_client(redirect_uris=[f"{receiver.url}/callback"])
    code_flow(oidc_provider, page, receiver, client, "/callback", "alice")
    oidc_provider.rotate_keys()
    oidc_provider.update_client(client.client_id, client_name="renamed")
    query = {
        "client_id": client.client_id,
        "response_type": "code",
        "scope": SCOPES,
        "redirect_uri": f"{receiver.url}/callback",
        "state": "again",
    }
    page.goto(f"{oidc_provider.authorization_endpoint}?{urllib.parse.urlencode(query)}")
    # Signed in and consented already: straight back to the client, no page of the provider.
    assert receiver.next("/callback").query["state"] == "again"
    assert page.url.startswith(f"{receiver.url}/callback?")


@pytest.mark.parametrize("alg", ["ES256", "PS256", "HS256"])
def test_id_tokens_signed_with_the_algorithm_a_client_asks_for(
    oidc_provider: OidcProvider, page: Page, receiver: Receiver, alg: str
) -> None:
    new_kid = None if alg == "HS256" else oidc_provider.rotate_keys(alg=alg)
    try:
        client = oidc_provider.register_client(
            redirect_uris=[f"{receiver.url}/callback"], id_token_signed_response_alg=alg
        )
        tokens = code_flow(oidc_provider, page, receiver, client, "/callback", "bob")
        header, _ = jwt_parts(tokens["id_token"])
        assert (header["alg"], header.get("kid")) == (alg, new_kid)  # HS256: the client's secret
        access, _ = jwt_parts(tokens["access_token"])
        assert access["alg"] == "RS256"  # access tokens stay RS256 while an RS256 key is there
    finally:
        if new_kid is not None:
            oidc_provider.rotate_keys()  # RS256 first again for the tests after this one
