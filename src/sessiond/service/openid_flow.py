"""The authorization code flow with an OpenID Provider, as the console runs it: PKCE (S256),
``state`` and ``nonce``; the provider's answer checked (``state``, ``iss`` per RFC 9207, an
``error``), the code redeemed as the confidential client, and the ID token exchanged for a
session through the one sign-in pipeline (:meth:`OpenIdSignIn.exchange`: verification with the
nonce, mapping, licences, lockout, audit). RP-initiated logout's address at the provider.

What a started sign-in must remember (:class:`PendingSignIn`) is the caller's to keep bound to
the browser; nothing here knows about HTTP.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from ..errors import (
    NotConfigured,
    OpenIdAuthorizationRefused,
    OpenIdIssuerMismatch,
    OpenIdProviderUnavailable,
    OpenIdStateInvalid,
    OpenIdTokenInvalid,
)
from ..models import ClientInfo
from .admission import Opened
from .common import login_failed
from .openid import OpenIdSignIn

if TYPE_CHECKING:  # imported only where OpenID Connect is configured (joserfc stays unloaded)
    from ..auth.openid_provider import ProviderClient

#: How long a started sign-in may take at the provider, in seconds.
PENDING_SECONDS = 600
#: An OAuth error code as RFC 6749 allows it (anything else is not shown).
_ERROR_CODE = re.compile(r"[\x20-\x21\x23-\x5b\x5d-\x7e]{1,64}\Z")


@dataclass(frozen=True, slots=True)
class PendingSignIn:
    """A started sign-in: what its answer is checked against and redeemed with."""

    provider: str
    state: str
    nonce: str
    verifier: str  # the PKCE code verifier
    redirect_uri: str
    started: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PendingSignIn | None:
        try:
            found = cls(**data)
        except TypeError:
            return None
        texts = (found.provider, found.state, found.nonce, found.verifier, found.redirect_uri)
        if not all(isinstance(t, str) for t in texts) or not isinstance(found.started, float):
            return None
        return found

    def expired(self, now: float | None = None) -> bool:
        moment = time.time() if now is None else now
        return not 0 <= moment - self.started <= PENDING_SECONDS


@dataclass(frozen=True, slots=True)
class CodeSignIn:
    """A finished sign-in: the session, and the ID token (for RP-initiated logout)."""

    opened: Opened
    id_token: str


def _challenge(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


def _with_query(endpoint: str, query: Mapping[str, str]) -> str:
    return endpoint + ("&" if "?" in endpoint else "?") + urlencode(query)


class CodeFlow:
    """The authorization code flow over the configured providers (``service.openid``)."""

    def __init__(self, openid: OpenIdSignIn) -> None:
        self.openid = openid

    def console_providers(self) -> list[tuple[str, str]]:
        """(name, display name) of each provider with a confidential client: those a browser
        can sign in through."""
        backend = self.openid.backend
        if backend is None:
            return []
        return [
            (name, provider.display_name)
            for name, provider in backend.providers.items()
            if provider.settings.client_id and provider.settings.client_secret_value
        ]

    async def begin(self, name: str, redirect_uri: str) -> tuple[str, PendingSignIn]:
        """The provider's authorization URL to send the browser to, and what to remember."""
        provider = self.openid.provider(name)
        settings = provider.settings
        if not settings.client_id or not settings.client_secret_value:
            raise NotConfigured(
                f"the OpenID Provider {provider.display_name!r} ({name}) has no confidential "
                "client for the console: set its client_id and client_secret",
                details={"provider": name},
            )
        endpoint = (await provider.discovery()).authorization_endpoint
        if endpoint is None:
            raise OpenIdProviderUnavailable(
                f"the OpenID Provider {provider.display_name!r} ({name}) publishes no "
                "authorization endpoint; sign in another way",
                details={"provider": name},
            )
        pending = PendingSignIn(
            provider=name,
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            verifier=secrets.token_urlsafe(64),
            redirect_uri=redirect_uri,
            started=time.time(),
        )
        scopes = list(dict.fromkeys(["openid", *settings.scopes]))
        query = {
            "response_type": "code",
            "client_id": settings.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(scopes),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": _challenge(pending.verifier),
            "code_challenge_method": "S256",
        }
        return _with_query(endpoint, query), pending

    async def finish(
        self,
        name: str,
        pending: PendingSignIn | None,
        answer: Mapping[str, str],
        client: ClientInfo,
        client_address: str | None = None,
    ) -> CodeSignIn:
        """Check the provider's ``answer`` (the callback's query) against ``pending`` (None:
        the browser brought none), redeem its code and open the session. A refusal before the
        sign-in pipeline (which audits its own) is audited as a ``LoginFailed`` record naming
        the provider and the reason."""
        provider = self.openid.provider(name)
        try:
            id_token, nonce = await self._redeemed(provider, pending, answer)
        except (
            OpenIdStateInvalid,
            OpenIdIssuerMismatch,
            OpenIdAuthorizationRefused,
            OpenIdTokenInvalid,  # the code refused (used already, another redirect URI)
        ) as exc:
            await self._audit(name, client_address, exc.reason or exc.code)
            raise
        opened = await self.openid.exchange(
            name, id_token, "id_token", nonce, client, client_address
        )
        return CodeSignIn(opened, id_token)

    async def _audit(self, name: str, client_address: str | None, reason: str) -> None:
        signin = self.openid.signin
        text = reason if reason.startswith(f"provider {name}:") else f"provider {name}: {reason}"
        record = login_failed(
            None, "(OpenID Connect sign-in)", signin.clock(), client_address, text
        )
        await signin.records.add(record)

    async def _redeemed(
        self, provider: ProviderClient, pending: PendingSignIn | None, answer: Mapping[str, str]
    ) -> tuple[str, str]:
        """The ID token the answer's code redeems for, and the nonce it must carry."""
        name = provider.name
        shown = provider.display_name
        state = answer.get("state") or ""
        if (
            pending is None
            or pending.provider != name
            or not state
            or not hmac.compare_digest(state.encode(), pending.state.encode())
            or pending.expired()
        ):
            raise OpenIdStateInvalid(
                f"this answer from {shown} does not belong to a sign-in started in this browser "
                f"in the last {PENDING_SECONDS // 60} minutes (its state is missing, another "
                "one, or was used already); nothing was signed in. Start the sign-in again.",
                details={"provider": name},
                reason="state missing, wrong, used or expired",
            )
        issuer = answer.get("iss")
        if issuer is None and (await provider.discovery()).iss_parameter_supported:
            raise OpenIdIssuerMismatch(
                f"this answer names no issuer, though {shown} names itself in every answer "
                "(RFC 9207): it may come from another provider; nothing was signed in. Start "
                "the sign-in again.",
                details={"provider": name},
                reason="the answer names no issuer (iss), which the provider always sends",
            )
        if issuer is not None and issuer != provider.settings.issuer:
            raise OpenIdIssuerMismatch(
                f"this answer names the issuer {issuer[:200]!r}, not {shown}'s "
                f"{provider.settings.issuer!r} (a provider mix-up); nothing was signed in. "
                "Start the sign-in again.",
                details={"provider": name},
                reason=f"the answer names issuer {issuer[:200]!r} (mix-up)",
            )
        error = answer.get("error")
        if error is not None:
            code = error if _ERROR_CODE.match(error) else "invalid"
            said = (
                "the sign-in was cancelled or access was denied there"
                if code == "access_denied"
                else f"it answered {code!r}"
            )
            raise OpenIdAuthorizationRefused(
                f"{shown} did not sign you in: {said}. Start the sign-in again, or sign in "
                "another way.",
                details={"provider": name, "error": code},
                reason=f"the provider answered error {code!r}",
            )
        given = answer.get("code")
        if not given:
            raise OpenIdStateInvalid(
                f"the answer from {shown} has no authorization code; nothing was signed in. "
                "Start the sign-in again.",
                details={"provider": name},
                reason="the answer has no code",
            )
        tokens = await provider.redeem_code(given, pending.redirect_uri, pending.verifier)
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str) or not id_token:
            raise OpenIdTokenInvalid(
                f"{shown} redeemed the code without an ID token (is the scope openid asked "
                "for?); sign in another way",
                details={"provider": name},
                reason="the token endpoint gave no ID token",
            )
        return id_token, pending.nonce

    async def end_session_url(
        self, name: str, id_token: str | None, post_logout_redirect_uri: str
    ) -> str | None:
        """Where RP-initiated logout sends the browser (the provider's
        ``end_session_endpoint``), or None when the provider publishes none."""
        provider = self.openid.provider(name)
        endpoint = (await provider.discovery()).end_session_endpoint
        if endpoint is None:
            return None
        query = {"post_logout_redirect_uri": post_logout_redirect_uri}
        if provider.settings.client_id:
            query["client_id"] = provider.settings.client_id
        if id_token:
            query["id_token_hint"] = id_token
        return _with_query(endpoint, query)
