"""``oidc``: OpenID Connect token-exchange sign-ins per second against platform-password
sign-ins, both over HTTP to one ``sessiond serve`` (default Argon2 settings), in the same run.

The provider is the tests' real one (:class:`tests.infra.oidc.OidcProvider`: oidc-provider on
Node.js, on loopback; ``scripts/install-test-provider`` installs it). Its token is a JWT access
token for this server from the client-credentials grant (no browser needed), exchanged as
``TokenType: access_token`` for a provisioned user; a fresh token each round. Rounds alternate
which kind goes first. Both kinds open a session each time; the exchange verifies an RS256
signature and the claims where the password sign-in verifies an Argon2id hash.
"""

from __future__ import annotations

import asyncio
import contextlib
import tempfile
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx

from sessiond.settings import Argon2Settings

from .common import BenchError, Config, Series, Sessiond, heading, print_table, start_sessiond
from .signin import _argon2_line, _timed_batch

#: Exchanges per round: many more than password sign-ins, whose rate is far lower.
EXCHANGES_PER_ROUND = 400


def _provider_settings(issuer: str, client_id: str, audience: str) -> str:
    return (
        "[openid.providers.bench]\n"
        f'issuer = "{issuer}"\n'
        f'client_id = "{client_id}"\n'
        f'audiences = ["{audience}"]\n'
        "provision = true\n"
    )


def _access_token(provider: object) -> str:
    from tests.infra.oidc import OidcProvider

    assert isinstance(provider, OidcProvider)
    answer = httpx.post(
        provider.token_endpoint,
        data={"grant_type": "client_credentials", "scope": "sessiond"},
        auth=provider.console_client.auth,
        timeout=10,
    )
    if answer.status_code != 200:
        raise BenchError(f"the provider gave no token: {answer.status_code} {answer.text}")
    return str(answer.json()["access_token"])


async def _rounds(config: Config, server: Sessiond, provider: object) -> None:
    limits = httpx.Limits(max_connections=config.openers)
    token = _access_token(provider)
    async with httpx.AsyncClient(timeout=120, limits=limits) as client:

        async def password(_index: int) -> None:
            answer = await client.post(
                f"{server.url}/api/v1/sessions/open",
                json={"Login": "admin", "Password": server.admin_password},
            )
            if answer.status_code != 200:
                raise BenchError(f"password sign-in answered {answer.status_code}")

        async def exchange(_index: int) -> None:
            answer = await client.post(
                f"{server.url}/api/v1/openid/exchange",
                json={"Provider": "bench", "Token": token, "TokenType": "access_token"},
            )
            if answer.status_code != 200:
                raise BenchError(f"token exchange answered {answer.status_code}: {answer.text}")

        kinds: dict[str, tuple[Callable[[int], Awaitable[None]], int]] = {
            "password sign-in": (password, config.opens_per_round),
            "token exchange": (exchange, EXCHANGES_PER_ROUND),
        }
        for one, _count in kinds.values():  # warm up: the provider's keys, the user, the pool
            await _timed_batch(config.openers, config.openers, one, config.round_timeout)
        series = {name: Series(name, "sign-ins/s") for name in kinds}
        for round_no in range(1, config.rounds + 1):
            token = _access_token(provider)
            names = list(kinds) if round_no % 2 else list(reversed(kinds))
            parts = []
            for name in names:
                one, count = kinds[name]
                rate = await _timed_batch(count, config.openers, one, config.round_timeout)
                series[name].add(rate)
                parts.append(f"{name} {rate:.1f}/s")
            print(f"  round {round_no}/{config.rounds}: " + "  ".join(parts), flush=True)
    password_series, exchange_series = series.values()
    print_table(list(series.values()), digits=1)
    print(
        f"  token exchange / password sign-in: "
        f"{exchange_series.median / password_series.median:.1f}x (median of rounds)"
    )


def run_oidc(config: Config) -> None:
    heading(
        "oidc",
        f"sign-ins per second over HTTP, {config.openers} concurrent: OpenID Connect token "
        f"exchange ({EXCHANGES_PER_ROUND} per round) against a platform password "
        f"({config.opens_per_round} per round, {_argon2_line(Argon2Settings())})",
    )
    from tests.infra.oidc import OidcProvider  # the tests' provider (Node.js)

    with contextlib.ExitStack() as stack:
        root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="sessiond-bench-")))
        try:
            provider = OidcProvider()
        except RuntimeError as exc:
            raise BenchError(str(exc)) from None
        stack.callback(provider.close)
        config_file = root / "sessiond.toml"
        config_file.write_text(
            _provider_settings(
                provider.issuer, provider.console_client.client_id, provider.api_audience
            ),
            encoding="utf-8",
        )
        server = start_sessiond(
            stack,
            root,
            "sessiond-oidc",
            fast_argon2=False,
            extra_env={"SESSIOND_CONFIG": str(config_file)},
        )
        asyncio.run(_rounds(config, server, provider))
