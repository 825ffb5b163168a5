"""OpenID Connect Back-Channel Logout 1.0: the checks of a logout token a provider posts.

A logout token is refused (:class:`OpenIdLogoutTokenInvalid`, with the reason for the log)
unless: its ``alg`` is on the provider's allow-list (never ``none`` or HS*); its signature
verifies with one of the provider's keys (the provider client's key set, refetched once for an
unknown ``kid`` as for sign-ins); ``iss`` is the provider's issuer; ``aud`` names one of this
server's clients of that provider (``client_id`` or ``public_client_id``: a logout token is
addressed to the relying party, never to an API audience); ``iat`` is at most
:data:`MAX_AGE` old (and not in the future, within :data:`LEEWAY`); ``exp``, when present, has
not passed; ``jti`` is present; ``events`` holds the back-channel logout event as a JSON
object; ``sid`` or ``sub`` is present; and there is no ``nonce`` (an ID token is no logout
token). Whether the ``jti`` came before is the store's to say (see
:mod:`sessiond.service.openid_logout`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwt import ClaimsOption

from ..errors import OpenIdLogoutTokenInvalid
from .openid_provider import MAX_TOKEN_CHARS, ProviderClient

#: The back-channel logout event (the ``events`` claim's member).
LOGOUT_EVENT = "http://schemas.openid.net/event/backchannel-logout"
#: How old (``iat``) a logout token may be: a provider sends it as the user signs out.
MAX_AGE = timedelta(minutes=5)
#: Clock skew allowed on ``iat`` and ``exp``.
LEEWAY = timedelta(seconds=60)
#: The longest ``jti``, ``sid`` and ``sub`` kept (the store's columns).
MAX_CLAIM_CHARS = 256


@dataclass(frozen=True, slots=True)
class LogoutToken:
    """A logout token that passed every check: which provider session (``sid``) or which
    account (``subject``) signed out, and until when its ``jti`` must be kept (after that
    it is refused as too old anyway)."""

    issuer: str
    jti: str
    subject: str | None
    sid: str | None
    keep_until: datetime


async def verify_logout_token(provider: ProviderClient, token: str, now: datetime) -> LogoutToken:
    """Every check of the module's text, or :class:`OpenIdLogoutTokenInvalid`."""
    settings = provider.settings
    if len(token) > MAX_TOKEN_CHARS:
        raise _invalid(provider, f"the token is over {MAX_TOKEN_CHARS} characters")
    try:
        header = jws.extract_compact(token.encode("ascii")).protected
    except (JoseError, ValueError, UnicodeError) as exc:
        raise _invalid(provider, f"the token is no signed JWT ({exc})") from None
    alg = header.get("alg")
    if alg not in settings.algorithms:
        raise _invalid(
            provider,
            f"algorithm {alg!r} is not allowed (allowed: {', '.join(settings.algorithms)})",
        )
    kid = header.get("kid")
    keys = await provider.keys(kid if isinstance(kid, str) else None)
    try:
        decoded = jwt.decode(token, keys, algorithms=settings.algorithms)
    except BadSignatureError:
        raise _invalid(provider, "the signature does not verify with its keys") from None
    except (JoseError, ValueError) as exc:  # e.g. a kid the key set lacks
        raise _invalid(provider, f"the token cannot be verified ({exc})") from None
    claims = dict(decoded.claims)
    _check_registered(provider, claims, now)
    return _logout_token(provider, claims, now)


def _check_registered(provider: ProviderClient, claims: dict[str, Any], now: datetime) -> None:
    """iss, aud, iat, exp and jti, by joserfc's claims registry."""
    settings = provider.settings
    clients = [c for c in (settings.client_id, settings.public_client_id) if c]
    options: dict[str, ClaimsOption] = {
        "iss": {"essential": True, "value": settings.issuer},
        "aud": {"essential": True, "values": clients},
        "iat": {"essential": True},
        "jti": {"essential": True},
    }
    registry = jwt.JWTClaimsRegistry(int(now.timestamp()), int(LEEWAY.total_seconds()), **options)
    try:
        registry.validate(claims)
    except ExpiredTokenError:
        raise _invalid(provider, "the token has expired (exp)") from None
    except MissingClaimError as exc:
        raise _invalid(provider, f"the token lacks a claim ({exc})") from None
    except (InvalidClaimError, JoseError) as exc:
        raise _invalid(provider, _claim_problem(exc, claims, settings.issuer, clients)) from None


def _logout_token(
    provider: ProviderClient, claims: Mapping[str, Any], now: datetime
) -> LogoutToken:
    """The checks particular to logout tokens: age, events, sid/sub, no nonce."""
    issued = datetime.fromtimestamp(float(claims["iat"]), UTC)
    if issued < now - MAX_AGE - LEEWAY:
        raise _invalid(
            provider,
            f"the token was issued at {issued:%Y-%m-%d %H:%M:%S} UTC, more than "
            f"{int(MAX_AGE.total_seconds())} s ago",
        )
    if "nonce" in claims:
        raise _invalid(provider, "the token carries a nonce (an ID token is no logout token)")
    events = claims.get("events")
    if not isinstance(events, Mapping) or not isinstance(events.get(LOGOUT_EVENT), Mapping):
        raise _invalid(provider, f"its events claim does not hold {LOGOUT_EVENT}")
    jti, sid, subject = (_text(provider, claims, name) for name in ("jti", "sid", "sub"))
    if jti is None:
        raise _invalid(provider, "the token's jti is empty")
    if sid is None and subject is None:
        raise _invalid(provider, "the token names neither a sid nor a sub")
    return LogoutToken(
        issuer=provider.settings.issuer,
        jti=jti,
        subject=subject,
        sid=sid,
        keep_until=issued + MAX_AGE + 2 * LEEWAY,
    )


def _text(provider: ProviderClient, claims: Mapping[str, Any], name: str) -> str | None:
    value = claims.get(name)
    if value is None:
        return None
    if not isinstance(value, str) or len(value) > MAX_CLAIM_CHARS:
        raise _invalid(provider, f"its {name} is not a string of at most {MAX_CLAIM_CHARS}")
    return value or None


def _claim_problem(
    exc: JoseError, claims: Mapping[str, Any], issuer: str, clients: list[str]
) -> str:
    name = str(getattr(exc, "claim", "") or exc)
    if "iss" in name:
        return f"the issuer {claims.get('iss')!r} is not this provider's {issuer!r}"
    if "aud" in name:
        return f"the audience {claims.get('aud')!r} is none of this server's clients"
    return f"claim check failed: {exc}"


def _invalid(provider: ProviderClient, reason: str) -> OpenIdLogoutTokenInvalid:
    return OpenIdLogoutTokenInvalid(
        f"the back-channel logout token from {provider.display_name} was refused: {reason}",
        details={"provider": provider.name},
        reason=f"provider {provider.name}: {reason}",
    )
