"""One OpenID Provider, as this server talks to it: its discovery document and key set over
httpx (a pool and a timeout of its own), the verification of its tokens (joserfc), and the
redemption of authorization codes at its token endpoint.

Keys the provider rotates are picked up: a token signed by a key (``kid``) that the cached key
set does not have fetches the key set again, at most once per ``keys_refetch_interval`` (so
tokens with made-up key ids cannot make this server hammer the provider), and concurrent
fetches are one fetch. Every call to the provider is bounded by ``timeout`` as a whole; a
provider that is down, slow or answers nonsense is :class:`OpenIdProviderUnavailable` naming
it. Nothing here blocks the event loop, so a provider that hangs holds only the sign-ins that
need it.

A token is refused (:class:`OpenIdTokenInvalid`, with the reason for the audit) unless: its
``alg`` is on the provider's allow-list (never ``none`` or HS*: a token "signed" with the
provider's public key as an HMAC secret is refused before any key is looked at); its signature
verifies with one of the provider's keys; ``iss`` is the provider's issuer; ``aud`` names one
of its clients or audiences (and ``azp``, when present or when there are several audiences,
is one of them); ``exp``, ``iat`` and ``nbf`` hold within a small leeway; and ``nonce`` matches
when one is expected.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, Literal

import httpx
from joserfc import jws, jwt
from joserfc.errors import (
    BadSignatureError,
    DecodeError,
    ExpiredTokenError,
    InvalidClaimError,
    JoseError,
    MissingClaimError,
)
from joserfc.jwk import KeySet
from joserfc.jwt import ClaimsOption

from .. import metrics
from ..errors import OpenIdProviderUnavailable, OpenIdTokenInvalid
from ..settings_openid import OpenIdProvider

log = logging.getLogger("sessiond.openid")

#: Clock skew allowed on exp, iat and nbf, in seconds.
LEEWAY = 60
#: How long a discovery document and a key set are kept before they are fetched again.
CACHE_SECONDS = 3600.0
#: The largest token, discovery document or key set read.
MAX_TOKEN_CHARS = 16 * 1024
MAX_DOCUMENT_BYTES = 512 * 1024

TokenType = Literal["id_token", "access_token"]


@dataclass(frozen=True, slots=True)
class Discovery:
    """What this server uses of a provider's discovery document."""

    issuer: str
    jwks_uri: str
    authorization_endpoint: str | None
    token_endpoint: str | None
    end_session_endpoint: str | None
    device_authorization_endpoint: str | None

    @classmethod
    def parse(cls, document: Mapping[str, Any]) -> Discovery:
        def text(key: str) -> str | None:
            value = document.get(key)
            return value if isinstance(value, str) and value else None

        issuer, jwks_uri = text("issuer"), text("jwks_uri")
        if issuer is None or jwks_uri is None:
            raise ValueError("the discovery document has no issuer or jwks_uri")
        return cls(
            issuer,
            jwks_uri,
            text("authorization_endpoint"),
            text("token_endpoint"),
            text("end_session_endpoint"),
            text("device_authorization_endpoint"),
        )


@dataclass(frozen=True, slots=True)
class VerifiedToken:
    """A token that passed every check: its claims."""

    claims: Mapping[str, Any]

    @property
    def issuer(self) -> str:
        return str(self.claims["iss"])

    @property
    def subject(self) -> str:
        return str(self.claims["sub"])

    def text(self, name: str) -> str | None:
        value = self.claims.get(name)
        return value if isinstance(value, str) and value else None


class ProviderClient:
    """A configured provider: ``name`` (the settings' table name) and its settings."""

    def __init__(
        self, name: str, settings: OpenIdProvider, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.name = name
        self.settings = settings
        self.timeout = settings.timeout.total_seconds()
        self.http = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(
                max_connections=settings.max_connections,
                max_keepalive_connections=settings.max_connections,
            ),
            follow_redirects=False,
            transport=transport,
            headers={"Accept": "application/json"},
        )
        self._lock = asyncio.Lock()  # one fetch at a time: concurrent needs share it
        self._discovery: Discovery | None = None
        self._discovery_at = 0.0
        self._keys: KeySet | None = None
        self._keys_at = 0.0
        self._refetched_at: float | None = None  # the last fetch an unknown kid asked for

    @property
    def display_name(self) -> str:
        return self.settings.display_name or self.name

    async def close(self) -> None:
        await self.http.aclose()

    # --- what the provider publishes ----------------------------------------------------

    async def discovery(self) -> Discovery:
        """The discovery document (cached), or :class:`OpenIdProviderUnavailable`."""
        async with self._bounded("discovery document"):
            return await self._discovery_locked()

    async def _discovery_locked(self) -> Discovery:
        now = time.monotonic()
        if self._discovery is not None and now - self._discovery_at < CACHE_SECONDS:
            return self._discovery
        url = self.settings.issuer.rstrip("/") + "/.well-known/openid-configuration"
        try:
            found = Discovery.parse(await self._get_json(url, "discovery"))
        except ValueError as exc:
            raise self._unavailable(f"its discovery document is unusable: {exc}") from None
        if found.issuer != self.settings.issuer:
            raise self._unavailable(
                f"its discovery document names issuer {found.issuer!r}, not the configured "
                f"{self.settings.issuer!r}"
            )
        self._discovery, self._discovery_at = found, now
        return found

    async def keys(self, kid: str | None) -> KeySet:
        """The provider's signing keys: the cached set, fetched when there is none or it is
        old, and fetched again when it lacks ``kid`` (at most once per refetch interval)."""
        async with self._bounded("key set"):
            now = time.monotonic()
            keys = self._keys
            fresh = keys is not None and now - self._keys_at < CACHE_SECONDS
            if keys is not None and fresh and (kid is None or _has_kid(keys, kid)):
                return keys
            if keys is not None and fresh:  # an unknown kid: refetch, rate-bounded
                interval = self.settings.keys_refetch_interval.total_seconds()
                if self._refetched_at is not None and now - self._refetched_at < interval:
                    return keys
                self._refetched_at = now
            discovery = await self._discovery_locked()
            document = await self._get_json(discovery.jwks_uri, "keys")
            try:
                signing = [k for k in document.get("keys", []) if k.get("use", "sig") == "sig"]
                keys = KeySet.import_key_set({"keys": signing})
            except (JoseError, ValueError, TypeError, AttributeError) as exc:
                raise self._unavailable(f"its key set is unusable: {exc}") from None
            self._keys, self._keys_at = keys, time.monotonic()
            return keys

    # --- tokens --------------------------------------------------------------------------

    async def verify(
        self, token: str, *, token_type: TokenType = "id_token", nonce: str | None = None
    ) -> VerifiedToken:
        """Every check of a token this provider issued (see the module's text)."""
        settings = self.settings
        if len(token) > MAX_TOKEN_CHARS:
            raise self._invalid(f"the token is over {MAX_TOKEN_CHARS} characters")
        try:
            header = jws.extract_compact(token.encode("ascii")).protected
        except (JoseError, ValueError, UnicodeError) as exc:
            raise self._invalid(f"the token is no signed JWT ({exc})") from None
        alg = header.get("alg")
        if alg not in settings.algorithms:
            raise self._invalid(
                f"algorithm {alg!r} is not allowed (allowed: {', '.join(settings.algorithms)})"
            )
        if token_type == "id_token" and str(header.get("typ", "")).lower() == "at+jwt":
            raise self._invalid("an access token was sent as an ID token")
        kid = header.get("kid")
        keys = await self.keys(kid if isinstance(kid, str) else None)
        if isinstance(kid, str) and not _has_kid(keys, kid):
            raise self._invalid(f"the token is signed by key {kid!r}, which the provider lacks")
        try:
            decoded = jwt.decode(token, keys, algorithms=settings.algorithms)
        except BadSignatureError:
            raise self._invalid("the signature does not verify with the provider's keys") from None
        except (JoseError, ValueError) as exc:
            raise self._invalid(f"the token cannot be read ({exc})") from None
        claims = dict(decoded.claims)
        self._check_claims(claims, token_type)
        if nonce is not None and not hmac.compare_digest(
            str(claims.get("nonce", "")).encode(), nonce.encode()
        ):
            raise self._invalid("the nonce is not the one this sign-in sent")
        return VerifiedToken(claims)

    def _check_claims(self, claims: dict[str, Any], token_type: TokenType) -> None:
        audiences = self.settings.accepted_audiences
        options: dict[str, ClaimsOption] = {
            "iss": {"essential": True, "value": self.settings.issuer},
            "sub": {"essential": True},
            "aud": {"essential": True, "values": audiences},
            "exp": {"essential": True},
        }
        if token_type == "id_token":
            options["iat"] = {"essential": True}
        registry = jwt.JWTClaimsRegistry(None, LEEWAY, **options)
        try:
            registry.validate(claims)
        except ExpiredTokenError:
            raise self._invalid("the token has expired") from None
        except MissingClaimError as exc:
            raise self._invalid(f"the token lacks a claim ({exc})") from None
        except (InvalidClaimError, DecodeError, JoseError) as exc:
            what = _claim_problem(exc, claims, self.settings.issuer)
            raise self._invalid(what) from None
        aud = claims.get("aud")
        several = isinstance(aud, list) and len(aud) > 1
        azp = claims.get("azp")
        if (several or azp is not None) and azp not in audiences:
            raise self._invalid(
                f"the token's authorized party (azp) {azp!r} is none of this server's clients"
            )

    # --- codes ---------------------------------------------------------------------------

    async def redeem_code(
        self, code: str, redirect_uri: str, code_verifier: str | None = None
    ) -> Mapping[str, Any]:
        """Redeem an authorization code as the confidential client: the token endpoint's
        answer (``id_token``, ``access_token``...). A refusal (a replayed code, a redirect URI
        not registered) is :class:`OpenIdTokenInvalid` with the provider's error."""
        settings = self.settings
        async with self._bounded("token endpoint"):
            endpoint = (await self._discovery_locked()).token_endpoint
            if endpoint is None:
                raise self._unavailable("its discovery document names no token endpoint")
            form = {"grant_type": "authorization_code", "code": code, "redirect_uri": redirect_uri}
            if code_verifier:
                form["code_verifier"] = code_verifier
            auth: httpx.Auth | None = None
            if settings.client_id and settings.client_secret_value:
                auth = httpx.BasicAuth(settings.client_id, settings.client_secret_value)
            elif settings.client_id:
                form["client_id"] = settings.client_id
            try:
                answer = await self.http.post(
                    endpoint, data=form, auth=auth or httpx.USE_CLIENT_DEFAULT
                )
            except httpx.HTTPError as exc:
                raise self._unavailable(f"its token endpoint failed: {_said(exc)}") from None
        body = _json_or_none(answer.content)
        if answer.status_code in (400, 401) and isinstance(body, dict):
            raise self._invalid(
                f"the provider refused the code: {body.get('error')} "
                f"{body.get('error_description') or ''}".strip()
            )
        if answer.status_code != 200 or not isinstance(body, dict):
            raise self._unavailable(f"its token endpoint answered HTTP {answer.status_code}")
        return body

    # --- the wire ------------------------------------------------------------------------

    @asynccontextmanager
    async def _bounded(self, what: str) -> AsyncIterator[None]:
        """The provider's lock and everything done under it, within ``timeout`` in all; past
        it, :class:`OpenIdProviderUnavailable` naming the provider."""
        try:
            async with asyncio.timeout(self.timeout), self._lock:
                yield
        except TimeoutError:
            raise self._unavailable(f"its {what} did not come within {self.timeout:g} s") from None

    async def _get_json(self, url: str, what: str) -> dict[str, Any]:
        try:
            answer = await self.http.get(url)
        except httpx.HTTPError as exc:
            raise self._unavailable(f"fetching its {what} failed: {_said(exc)}") from None
        metrics.openid_fetch(self.name, what)
        if answer.status_code != 200:
            raise self._unavailable(f"its {what} answered HTTP {answer.status_code}")
        if len(answer.content) > MAX_DOCUMENT_BYTES:
            raise self._unavailable(f"its {what} is over {MAX_DOCUMENT_BYTES} bytes")
        body = _json_or_none(answer.content)
        if not isinstance(body, dict):
            raise self._unavailable(f"its {what} is not a JSON object")
        return body

    def _unavailable(self, cause: str) -> OpenIdProviderUnavailable:
        log.warning("OpenID Provider %s: %s", self.name, cause)
        return OpenIdProviderUnavailable(
            f"the OpenID Provider {self.display_name!r} ({self.name}) cannot be used now: "
            f"{cause}; try again later, or sign in another way",
            details={"provider": self.name},
        )

    def _invalid(self, reason: str) -> OpenIdTokenInvalid:
        return OpenIdTokenInvalid(
            f"the {self.display_name} token was refused; sign in with the provider again",
            reason=f"provider {self.name}: {reason}",
        )


def _has_kid(keys: KeySet, kid: str) -> bool:
    try:
        keys.get_by_kid(kid)
    except (JoseError, ValueError, KeyError):
        return False
    return True


def _claim_problem(exc: Exception, claims: Mapping[str, Any], issuer: str) -> str:
    name = getattr(exc, "claim", None) or str(exc)
    if "iss" in str(name):
        return f"the issuer {claims.get('iss')!r} is not this provider's {issuer!r}"
    if "aud" in str(name):
        return f"the audience {claims.get('aud')!r} is none of this server's clients"
    return f"claim check failed: {exc}"


def _said(exc: httpx.HTTPError) -> str:
    return f"{type(exc).__name__} {exc}".strip()


def _json_or_none(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return None
