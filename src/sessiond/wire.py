"""What the client and the server share on the wire, in one place: the header names and the
time format. (The other shared shapes live with their records: ``ClientInfo.to_json`` and
``from_json`` for the sign-in's client parameters, ``ConfigurationInfo.to_dict``, the token's
XML in ``token.py``.)"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Final, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The auth form of the session token, on every request that needs a session.
SESSION_HEADER: Final = "Tessa-Session"
#: On every answer: the configuration version (clients drop their caches when it moves).
CONFIGURATION_VERSION_HEADER: Final = "Tessa-Configuration-Version"
#: On every answer: sessiond's own version.
SERVER_VERSION_HEADER: Final = "Tessa-Server-Version"
#: Names an integrated sign-in's handshake across its 401 legs.
NEGOTIATE_ID_HEADER: Final = "Tessa-Negotiate-Id"
#: On a page of a session list when more follow: the cursor of the next page.
NEXT_PAGE_HEADER: Final = "Tessa-Next-Page"


def format_time(value: datetime) -> str:
    """The one spelling of a time: UTC, microseconds, ``Z`` (in tokens and in the API)."""
    if value.tzinfo is None:
        raise ValueError("times on the wire must be timezone-aware")
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """A time as the API writes it (or any ISO 8601 time with a zone), as an aware datetime."""
    value = datetime.fromisoformat(text)
    if value.tzinfo is None:
        raise ValueError(f"{text!r} has no time zone")
    return value


#: The longest token ``POST /api/v1/openid/exchange`` reads.
OPENID_TOKEN_MAX_CHARS: Final = 16 * 1024


class OpenIdProviderInfo(BaseModel):
    """One entry of ``GET /api/v1/openid/providers``: what a client needs to sign in with the
    provider as its public client (``ClientId``) before exchanging the token here."""

    model_config = ConfigDict(extra="ignore")

    Name: str = Field(description="the provider's name on this server (the exchange's Provider)")
    DisplayName: str = Field(description="what sign-in pages call it")
    Issuer: str = Field(description="its issuer: discovery at issuer/.well-known/...")
    ClientId: str | None = Field(description="the public client (PKCE, loopback, device grant)")
    Scopes: list[str] = Field(description="the scopes to ask for")


class OpenIdExchange(BaseModel):
    """The OpenID Connect part of ``POST /api/v1/openid/exchange`` (the client parameters of a
    sign-in come beside it, as in ``/api/v1/sessions/open``)."""

    model_config = ConfigDict(extra="forbid")

    Provider: str = Field(max_length=63, description="a name from /api/v1/openid/providers")
    Token: str = Field(
        min_length=1, max_length=OPENID_TOKEN_MAX_CHARS, description="the provider's token"
    )
    TokenType: Literal["id_token", "access_token"] = Field(
        "id_token", description="an ID token, or a JWT access token for this server"
    )
    Nonce: str | None = Field(
        None, max_length=512, description="the nonce the flow sent: the ID token must carry it"
    )
