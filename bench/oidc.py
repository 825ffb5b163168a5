"""``oidc``: OpenID Connect token-exchange sign-ins per second against platform-password
sign-ins, on one real ``sessiond serve`` (default Argon2 settings, SQLite) in the same rounds.

The test OpenID Provider (``tests.infra.oidc.OidcProvider``: panva's oidc-provider on Node.js,
as the tests start it; ``scripts/install-test-provider`` installs its npm packages) runs on
loopback. Before the rounds, outside the figures, ``openers`` users added to the provider each
sign in once through its own login and consent pages (plain HTML forms, driven over httpx: the
authorization code flow with PKCE for the public client), and their ID tokens are kept. The
exchange (``POST /api/v1/openid/exchange``) accepts an ID token again and again while it is
valid, so every exchange sign-in of the rounds reuses them: what is measured is sessiond's own
work (the token's signature and claims checked with the cached key set, the mapping, the
session written), not the provider's. Password sign-ins (``POST /api/v1/sessions/open``) are of
as many platform users: one account per concurrent task for both kinds, since a node checks
one sign-in of an account at a time. Each round runs both kinds, ``opens_per_round`` sign-ins
each from ``openers`` concurrent tasks, in alternating order; the figures are medians of the
rounds and the ratio of the medians, never assertions.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import re
import secrets
import subprocess
import tempfile
import time
import urllib.parse
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx

from .common import (
    BenchError,
    Config,
    Series,
    Sessiond,
    fmt,
    heading,
    print_ratio,
    print_table,
    start_sessiond,
)

PROVIDER = "corp"
PASSWORD = "Bench password 1"
INSTALL = Path(__file__).resolve().parents[1] / "scripts" / "install-test-provider"


def _provider() -> Any:
    """The tests' OpenID Provider, its npm packages installed first if they are not."""
    from tests.infra.oidc import STAMP, OidcProvider

    if not STAMP.is_file():
        try:
            subprocess.run([str(INSTALL)], check=True, timeout=600)
        except (OSError, subprocess.SubprocessError) as exc:
            raise BenchError(f"installing the test OpenID Provider failed: {exc}") from None
    try:
        return OidcProvider()
    except RuntimeError as exc:
        raise BenchError(f"the test OpenID Provider did not start: {exc}") from None


def _settings(provider: Any) -> str:
    return "\n".join(
        [
            f"[openid.providers.{PROVIDER}]",
            f'issuer = "{provider.issuer}"',
            f'public_client_id = "{provider.desktop_client.client_id}"',
            "provision = true",
            'timeout = "10s"',
            "",
        ]
    )


def _form_action(page: str, form_id: str) -> str:
    found = re.search(rf'<form id="{form_id}"[^>]*action="([^"]+)"', page)
    if found is None:
        raise BenchError(f"the provider's page has no form {form_id}")
    return found.group(1)


def id_token(provider: Any, login: str) -> str:
    """One sign-in of ``login`` at the provider (code flow with PKCE, the public client, its
    login and consent forms submitted over httpx): the ID token."""
    user = provider.user(login)
    client_id = provider.desktop_client.client_id
    redirect_uri = "http://127.0.0.1:9/callback"  # never followed: the code is read from it
    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest())
    query = {
        "client_id": client_id,
        "response_type": "code",
        "scope": "openid profile email groups",
        "redirect_uri": redirect_uri,
        "state": secrets.token_urlsafe(16),
        "nonce": secrets.token_urlsafe(16),
        "code_challenge": challenge.rstrip(b"=").decode(),
        "code_challenge_method": "S256",
    }
    discovery = provider.discovery()
    with httpx.Client(base_url=provider.issuer, timeout=20) as http:
        url = f"{discovery['authorization_endpoint']}?{urllib.parse.urlencode(query)}"
        for _ in range(20):  # the provider's redirects and its two forms, bounded
            answer = http.get(url)
            if answer.is_redirect:
                url = str(answer.next_request.url) if answer.next_request else ""
            elif 'id="oidc-login"' in answer.text:
                action = _form_action(answer.text, "oidc-login")
                answer = http.post(action, data={"login": login, "password": user.password})
                url = answer.headers.get("location", "")
            elif 'id="oidc-consent"' in answer.text:
                answer = http.post(_form_action(answer.text, "oidc-consent"))
                url = answer.headers.get("location", "")
            else:
                raise BenchError(f"the provider answered {answer.status_code} at {url}")
            if url.startswith(redirect_uri):
                break
        else:
            raise BenchError("the provider's sign-in did not end at the redirect URI")
        code = urllib.parse.parse_qs(urllib.parse.urlsplit(url).query).get("code")
        if not code:
            raise BenchError(f"the provider's redirect carries no code: {url}")
        tokens = http.post(
            discovery["token_endpoint"],
            data={
                "grant_type": "authorization_code",
                "code": code[0],
                "redirect_uri": redirect_uri,
                "code_verifier": verifier,
                "client_id": client_id,
            },
        )
    if tokens.status_code != 200:
        raise BenchError(f"the provider's token endpoint answered {tokens.status_code}")
    return str(tokens.json()["id_token"])


async def _timed_batch(
    count: int, concurrency: int, one: Callable[[int], Awaitable[None]], limit_s: float
) -> float:
    """Run ``one(i)`` for i < count from ``concurrency`` tasks; the completions per second."""
    next_index = 0

    async def worker() -> None:
        nonlocal next_index
        while next_index < count:
            index = next_index
            next_index += 1
            await one(index)

    started = time.perf_counter()
    try:
        async with asyncio.timeout(limit_s):
            await asyncio.gather(*(worker() for _ in range(concurrency)))
    except TimeoutError:
        raise BenchError(f"a batch of {count} did not finish within {limit_s:.0f}s") from None
    return count / (time.perf_counter() - started)


def _platform_users(server: Sessiond, count: int) -> list[str]:
    """``count`` platform users with the password :data:`PASSWORD`: one per concurrent task,
    as for the exchanges (a node checks one sign-in of an account at a time)."""
    logins = [f"password-{i}" for i in range(count)]
    with httpx.Client(base_url=server.url, timeout=120) as http:
        admin = http.post(
            "/api/v1/sessions/open",
            json={"Login": "admin", "Password": server.admin_password},
        )
        if admin.status_code != 200:
            raise BenchError(f"the administrator's sign-in answered {admin.status_code}")
        headers = {"Tessa-Session": admin.json()["AuthToken"]}
        for login in logins:
            made = http.post(
                "/api/v1/users", json={"Login": login, "Password": PASSWORD}, headers=headers
            )
            if made.status_code != 201:
                raise BenchError(f"adding user {login} answered {made.status_code}: {made.text}")
    return logins


async def _rounds(config: Config, server: Sessiond, tokens: list[str]) -> None:
    logins = _platform_users(server, len(tokens))
    limits = httpx.Limits(max_connections=config.openers)
    async with httpx.AsyncClient(base_url=server.url, timeout=120, limits=limits) as http:

        async def exchange(index: int) -> None:
            answer = await http.post(
                "/api/v1/openid/exchange",
                json={"provider": PROVIDER, "token": tokens[index % len(tokens)]},
            )
            if answer.status_code != 200:
                raise BenchError(f"the exchange answered {answer.status_code}: {answer.text}")

        async def password(index: int) -> None:
            answer = await http.post(
                "/api/v1/sessions/open",
                json={"Login": logins[index % len(logins)], "Password": PASSWORD},
            )
            if answer.status_code != 200:
                raise BenchError(f"the password sign-in answered {answer.status_code}")

        kinds: dict[str, Callable[[int], Awaitable[None]]] = {
            "token exchange": exchange,
            "password (Argon2id)": password,
        }
        for one in kinds.values():  # warm up: connections, the key set, the users mapped
            await _timed_batch(config.openers, config.openers, one, config.round_timeout)
        series = {name: Series(name, "sign-ins/s") for name in kinds}
        for round_no in range(1, config.rounds + 1):
            names = list(kinds) if round_no % 2 else list(reversed(kinds))
            parts = []
            for name in names:
                rate = await _timed_batch(
                    config.opens_per_round, config.openers, kinds[name], config.round_timeout
                )
                series[name].add(rate)
                parts.append(f"{name} {fmt(rate, 2)}/s")
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
    exchanged, passwords = series.values()
    print_table([exchanged, passwords], digits=2)
    print_ratio("token exchange / password", exchanged, passwords)


def run_oidc(config: Config) -> None:
    heading(
        "oidc",
        f"sign-ins per second over HTTP, {config.openers} concurrent, "
        f"{config.opens_per_round} per round and kind: ID tokens of the test OpenID Provider "
        "exchanged (reused) against platform passwords (default Argon2id)",
    )
    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        provider = _provider()
        stack.callback(provider.close)
        config_file = root / "sessiond.toml"
        config_file.write_text(_settings(provider), encoding="utf-8")
        server = start_sessiond(
            stack,
            root,
            "sessiond-oidc",
            fast_argon2=False,
            extra_env={"SESSIOND_CONFIG": str(config_file)},
        )
        started = time.monotonic()
        people = [f"bench-{i}" for i in range(config.openers)]
        for login in people:
            provider.add_user(login)
        tokens = [id_token(provider, login) for login in people]
        print(f"  {len(tokens)} ID tokens from the provider in {time.monotonic() - started:.1f} s")
        asyncio.run(_rounds(config, server, tokens))
