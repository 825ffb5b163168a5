"""OpenID Connect as a backend of the sign-in pipeline (login type OpenId): a token one of the
configured providers issued (an ID token, or a JWT access token) is the proof.

The provider's account is ``(issuer, subject)`` — the only pair the specification calls stable —
kept as the user's account ``openid:<issuer>#<subject>`` (and in ``openid_identities``). Before
the pipeline looks the account up, the backend asks the users (:class:`~.base.Accounts`) to
hold it: a first sign-in may be matched to the OpenId user whose login equals the provider's
``match_claim`` and who has no mapping yet, or provisioned; a provider's groups may set the
access level (``admin_groups``). A token proves who it is without any password, so nothing is
counted against the user's lockout (a forged token would otherwise lock its victim out); a
refused token is audited with the provider and the reason. The session opened keeps the
provider session (``sid``) in ``openid_sessions``, written with it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Self
from uuid import UUID

from ..errors import OpenIdProviderUnknown
from ..models import AccessLevel, LoginType, openid_account
from ..settings import Settings
from ..settings_openid import OpenIdSettings
from ..store.base import Transaction, UserRecord
from .base import Accounts, Claim, ExternalAccount, Identity, ProofBackend, ProofStep
from .openid_provider import ProviderClient, TokenType, VerifiedToken


class OpenIdToken(bytes):
    """A token for :class:`OpenIdBackend`: its text, the provider (its settings name) it was
    sent for, which kind it is, and the nonce the sign-in expects (None: none checked)."""

    provider: str
    token_type: TokenType
    nonce: str | None

    def __new__(
        cls,
        token: str,
        provider: str,
        token_type: TokenType = "id_token",
        nonce: str | None = None,
    ) -> Self:
        made = super().__new__(cls, token.encode("ascii", "replace"))
        made.provider, made.token_type, made.nonce = provider, token_type, nonce
        return made


class OpenIdBackend(ProofBackend):
    login_type = LoginType.OPEN_ID
    title = "OpenID Connect sign-in"
    password_changed_in = "OpenID Provider"

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        openid = settings.openid
        return cls(openid) if openid is not None and openid.providers else None

    def __init__(self, settings: OpenIdSettings) -> None:
        self.settings = settings
        self.providers = {
            name: ProviderClient(name, provider) for name, provider in settings.providers.items()
        }
        self.accounts: Accounts | None = None

    def token_login(self, user: UserRecord) -> str:
        """The user's login: the account (issuer and subject) is no name a person reads."""
        return user.login

    def bind(self, accounts: Accounts) -> None:
        self.accounts = accounts

    def provider(self, name: str) -> ProviderClient:
        found = self.providers.get(name)
        if found is None:
            known = ", ".join(sorted(self.providers)) or "none"
            raise OpenIdProviderUnknown(
                f"no OpenID Provider {name!r} is configured on this server (configured: {known})",
                details={"provider": name},
            )
        return found

    async def claim(self, token: bytes, handshake_id: str | None) -> Claim | None:
        """No password is answered: nothing for the lockout. An unknown provider is refused
        here, before anything is written."""
        self.provider(_provider_of(token))
        return None

    async def step(self, token: bytes, handshake_id: str | None) -> ProofStep:
        provider = self.provider(_provider_of(token))
        verified = await provider.verify(
            token.decode("ascii", "replace"),
            token_type=getattr(token, "token_type", "id_token"),
            nonce=getattr(token, "nonce", None),
        )
        account = openid_account(verified.issuer, verified.subject)
        name = verified.text("name") or verified.text("preferred_username") or verified.subject
        if self.accounts is not None:
            await self.accounts.hold_external(self._external(provider, verified, account, name))
        identity = Identity(
            account=account,
            display_name=name,
            method=provider.name,
            extra={
                "issuer": verified.issuer,
                "subject": verified.subject,
                "sid": verified.text("sid"),
            },
        )
        return ProofStep(identity, None)

    def _external(
        self, provider: ProviderClient, verified: VerifiedToken, account: str, name: str
    ) -> ExternalAccount:
        settings = provider.settings
        match = verified.text(settings.match_claim) if settings.match_claim else None
        if settings.match_claim == "email" and verified.claims.get("email_verified") is not True:
            match = None  # an address the provider has not verified names nobody
        level = None
        if settings.admin_groups:
            groups = _strings(verified.claims.get(settings.groups_claim))
            admin = any(group in groups for group in settings.admin_groups)
            level = AccessLevel.ADMINISTRATOR if admin else AccessLevel.REGULAR
        login = verified.text("preferred_username") or verified.text("email") or verified.subject
        return ExternalAccount(
            login_type=self.login_type,
            account=account,
            login=login[:256],
            name=name[:256],
            via=f"OpenID Provider {provider.name}",
            match_login=match,
            provision=settings.provision,
            access_level=level,
        )

    async def admitted(self, tx: Transaction, session_id: UUID, identity: Identity) -> None:
        extra: Mapping[str, Any] = identity.extra
        if "issuer" in extra and "subject" in extra:
            await tx.add_openid_session(
                session_id, extra["issuer"], extra["subject"], extra.get("sid")
            )

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


def _provider_of(token: bytes) -> str:
    return str(getattr(token, "provider", ""))


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [item for item in value if isinstance(item, str)]
    return []
