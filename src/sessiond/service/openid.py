"""OpenID Connect sign-in as the front ends ask for it: the providers a client may use, and a
provider's token exchanged for a session through the one sign-in pipeline (the ``openid``
proof backend, :mod:`sessiond.auth.openid`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal, cast

from ..errors import OpenIdProviderUnknown
from ..models import ClientInfo
from ..wire import OpenIdProviderInfo
from .admission import Opened
from .signin import SignIn

if TYPE_CHECKING:  # imported only where OpenID Connect is configured (joserfc stays unloaded)
    from ..auth.openid import OpenIdBackend
    from ..auth.openid_provider import ProviderClient

PROOF = "openid"


class OpenIdSignIn:
    def __init__(self, signin: SignIn) -> None:
        self.signin = signin
        self.backend = cast("OpenIdBackend | None", signin.proofs.get(PROOF))

    def providers(self) -> list[OpenIdProviderInfo]:
        """The configured providers, as a client needs them (anyone may read this)."""
        if self.backend is None:
            return []
        return [
            OpenIdProviderInfo(
                Name=p.name,
                DisplayName=p.display_name,
                Issuer=p.settings.issuer,
                ClientId=p.settings.public_client_id,
                Scopes=list(p.settings.scopes),
            )
            for p in self.backend.providers.values()
        ]

    def provider(self, name: str) -> ProviderClient:
        """A configured provider, or :class:`OpenIdProviderUnknown`."""
        if self.backend is None:
            raise OpenIdProviderUnknown(
                f"no OpenID Provider {name!r} is configured on this server (none is); sign in "
                "another way",
                details={"provider": name},
            )
        return self.backend.provider(name)

    async def exchange(
        self,
        provider: str,
        token: str,
        token_type: Literal["id_token", "access_token"],
        nonce: str | None,
        client: ClientInfo,
        client_address: str | None = None,
    ) -> Opened:
        """A token the provider issued, exchanged for a session (checked, mapped, admitted as
        every sign-in is)."""
        from ..auth.openid import OpenIdToken

        self.provider(provider)
        opened, _ = await self.signin.open_session_proof(
            PROOF, OpenIdToken(token, provider, token_type, nonce), None, client, client_address
        )
        return opened
