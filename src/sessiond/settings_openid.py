"""The ``[openid]`` settings: OpenID Connect providers, each under ``[openid.providers.NAME]``
(docs/oidc.md). :mod:`sessiond.settings` re-exports them."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator

from .settings_sections import Duration

#: Signature algorithms an ID token may use unless ``algorithms`` says otherwise.
DEFAULT_ALGORITHMS = ("RS256", "ES256", "PS256")
#: The asymmetric JWS algorithms a provider may be allowed (never ``none`` or HS*: a shared
#: secret would let anyone who holds the provider's public key sign tokens).
ALLOWED_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}\Z")


class OpenIdProvider(BaseModel):
    """One OpenID Provider whose accounts sign in as users of login type OpenId."""

    model_config = ConfigDict(extra="forbid")

    issuer: str = Field(
        description="the provider's issuer URL, exactly as its discovery document and its "
        "tokens say it (https://, or http:// on loopback)"
    )
    display_name: str | None = Field(None, description="what sign-in pages call it (the name)")
    client_id: str | None = Field(
        None, description="the confidential client (the console's code flow); an audience"
    )
    client_secret: SecretStr | None = Field(None, description="the confidential client's secret")
    public_client_id: str | None = Field(
        None, description="the public client the Python client uses (PKCE); an audience"
    )
    audiences: list[str] = Field(
        default_factory=list,
        description="more accepted aud values (e.g. an API's, for exchanged access tokens)",
    )
    scopes: list[str] = Field(
        default_factory=lambda: ["openid", "profile", "email"],
        description="the scopes the flows ask for",
    )
    algorithms: list[str] = Field(
        default_factory=lambda: list(DEFAULT_ALGORITHMS),
        description="signature algorithms accepted (never none or HS*)",
    )
    match_claim: Literal["preferred_username", "email", "upn"] | None = Field(
        None,
        description="first sign-in of an account no user is mapped to: the OpenId user whose "
        "login equals this claim (and has no mapping yet) gets the mapping",
    )
    provision: bool = Field(
        False, description="create a user on the first sign-in of an account mapped to none"
    )
    groups_claim: str = Field("groups", description="the claim that lists the account's groups")
    admin_groups: list[str] = Field(
        default_factory=list,
        description="groups whose members are administrators (set at every sign-in); empty: "
        "the access level is the administrators' to set",
    )
    timeout: Duration = Field(
        timedelta(seconds=5),
        description="the bound of every call to the provider (discovery, keys, token), after "
        "which a sign-in is answered 503 openid_provider_unavailable",
    )
    max_connections: int = Field(
        10, ge=1, le=256, description="connections to this provider open at once (its own pool)"
    )
    keys_refetch_interval: Duration = Field(
        timedelta(seconds=5),
        description="a token signed by a key not in the cached key set fetches the keys again "
        "at most once per this interval",
    )

    @property
    def client_secret_value(self) -> str | None:
        return None if self.client_secret is None else self.client_secret.get_secret_value()

    @property
    def accepted_audiences(self) -> list[str]:
        """Every ``aud`` a token of this provider may be for: the clients, then ``audiences``."""
        found = [self.client_id, self.public_client_id, *self.audiences]
        return list(dict.fromkeys(a for a in found if a))

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, value: str) -> str:
        parts = urlsplit(value)
        loopback = parts.hostname in ("127.0.0.1", "::1", "localhost")
        if parts.scheme != "https" and not (parts.scheme == "http" and loopback):
            raise ValueError("must be an https:// URL (http:// only on loopback)")
        if parts.query or parts.fragment or not parts.hostname:
            raise ValueError("must be a URL with a host and no query or fragment")
        return value

    @field_validator("algorithms")
    @classmethod
    def _algorithms(cls, value: list[str]) -> list[str]:
        wrong = [a for a in value if a not in ALLOWED_ALGORITHMS]
        if wrong:
            raise ValueError(
                f"{', '.join(wrong)} not allowed: use asymmetric algorithms only "
                f"({', '.join(sorted(ALLOWED_ALGORITHMS))})"
            )
        if not value:
            raise ValueError("must name at least one algorithm")
        return value

    @field_validator("timeout")
    @classmethod
    def _timeout(cls, value: timedelta) -> timedelta:
        if not timedelta(seconds=0.5) <= value <= timedelta(seconds=60):
            raise ValueError("must be between 0.5 and 60 seconds")
        return value

    @model_validator(mode="after")
    def _an_audience(self) -> OpenIdProvider:
        if not self.accepted_audiences:
            raise ValueError("needs client_id, public_client_id or audiences: the tokens' aud")
        return self


class OpenIdSettings(BaseModel):
    """Sign-in through OpenID Connect providers (login type OpenId)."""

    model_config = ConfigDict(extra="forbid")

    providers: dict[str, OpenIdProvider] = Field(
        default_factory=dict, description="[openid.providers.NAME], one table per provider"
    )

    @field_validator("providers")
    @classmethod
    def _names(cls, value: dict[str, OpenIdProvider]) -> dict[str, OpenIdProvider]:
        for name in value:
            if not _NAME.match(name):
                raise ValueError(
                    f"provider name {name!r}: use lower-case letters, digits, - and _ (at most 63)"
                )
        issuers = [p.issuer for p in value.values()]
        if len(set(issuers)) != len(issuers):
            raise ValueError("two providers have the same issuer")
        return value
