"""A real OpenID Provider for tests: panva's ``oidc-provider`` (npm, pinned by
``tests/infra/oidc/package-lock.json``, installed by ``scripts/install-test-provider``) run by
Node.js from ``tests/infra/oidc/provider.mjs`` on a free loopback port, issuer
``http://127.0.0.1:PORT``.

What it offers (see :class:`OidcProvider`):

- two clients: the confidential ``sessiond-console`` (``client_secret_basic`` or ``_post``, code
  flow, PKCE when sent; redirect URIs ``http://127.0.0.1:*/console/openid/*/callback``, any
  port and provider name, and post-logout redirects under ``http://127.0.0.1:*/console``) and
  the public native ``sessiond-desktop`` (no secret, PKCE required, loopback redirects
  ``http://127.0.0.1/``, ``/callback`` on any port as RFC 8252 asks, the device grant);
  :meth:`OidcProvider.register_client` adds one of a test's own, :meth:`OidcProvider.update_client`
  changes one (e.g. its ``backchannel_logout_uri``) without a restart;
- users ``alice`` (group ``sessiond-admins``) and ``bob``, with passwords and the claims
  ``sub``, ``preferred_username``, ``name``, ``email``, ``email_verified``, ``groups``, ``upn``
  (scopes ``profile``, ``email``, ``groups``; the ID token carries them);
- JWT access tokens for the resource ``urn:sessiond:api`` (audience ``sessiond-api``,
  :attr:`OidcProvider.api_audience`), the default resource of every request;
- back-channel logout, RP-initiated logout, the device flow, client credentials, introspection;
- :meth:`OidcProvider.rotate_keys` (a new signing key first in the JWKS, the old one kept or
  dropped), :meth:`~OidcProvider.stop` / :meth:`~OidcProvider.start` (same port, keys, clients
  and users; sessions and grants are lost), :meth:`~OidcProvider.freeze` (SIGSTOP: connections
  are accepted by the kernel and never answered) / :meth:`~OidcProvider.thaw`.

The browser side (the provider's login, consent, device and logout pages) is in
:mod:`tests.infra.oidc_pages`.
"""

from __future__ import annotations

import base64
import copy
import json
import os
import secrets
import shutil
import signal
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from tests.infra._net import LOOPBACK, free_port, stop_process, wait_for_ports

PROVIDER_DIR = Path(__file__).resolve().parent / "oidc"
INSTALL_SCRIPT = PROVIDER_DIR.parents[2] / "scripts" / "install-test-provider"
STAMP = PROVIDER_DIR / "node_modules" / ".installed-from-lockfile"

CONSOLE_CLIENT_ID = "sessiond-console"
DESKTOP_CLIENT_ID = "sessiond-desktop"
API_RESOURCE = "urn:sessiond:api"
API_AUDIENCE = "sessiond-api"
API_SCOPES = ("sessiond",)
DEVICE_GRANT = "urn:ietf:params:oauth:grant-type:device_code"


def _b64(number: int, size: int = 0) -> str:
    raw = number.to_bytes(max(size, (number.bit_length() + 7) // 8), "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def new_signing_jwk(alg: str = "RS256", kid: str | None = None) -> dict[str, str]:
    """A fresh private signing key as a JWK (``use: sig``): RSA 2048 for ``RS256`` and
    ``PS256``, P-256 for ``ES256``."""
    kid = kid or f"k-{alg.lower()}-{uuid.uuid4().hex[:10]}"
    if alg == "ES256":
        ec_key = ec.generate_private_key(ec.SECP256R1())
        ec_numbers = ec_key.private_numbers()
        return {
            "kty": "EC",
            "crv": "P-256",
            "kid": kid,
            "use": "sig",
            "alg": alg,
            "x": _b64(ec_numbers.public_numbers.x, 32),
            "y": _b64(ec_numbers.public_numbers.y, 32),
            "d": _b64(ec_numbers.private_value, 32),
        }
    if alg not in ("RS256", "PS256"):
        raise ValueError(f"unsupported signing algorithm {alg}")
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    numbers = key.private_numbers()
    public = numbers.public_numbers
    return {
        "kty": "RSA",
        "kid": kid,
        "use": "sig",
        "alg": alg,
        "n": _b64(public.n),
        "e": _b64(public.e),
        "d": _b64(numbers.d),
        "p": _b64(numbers.p),
        "q": _b64(numbers.q),
        "dp": _b64(numbers.dmp1),
        "dq": _b64(numbers.dmq1),
        "qi": _b64(numbers.iqmp),
    }


@dataclass(frozen=True)
class OidcUser:
    login: str
    password: str
    sub: str
    claims: dict[str, Any]


@dataclass(frozen=True)
class OidcClient:
    client_id: str
    client_secret: str | None
    metadata: dict[str, Any] = field(repr=False)

    @property
    def auth(self) -> tuple[str, str] | None:
        """HTTP basic credentials for the token endpoint (None for a public client)."""
        return None if self.client_secret is None else (self.client_id, self.client_secret)


def _user(login: str, *, groups: list[str], **claims: Any) -> dict[str, Any]:
    return {
        "login": login,
        "password": f"{login}-password-{secrets.token_hex(4)}",
        "sub": f"sub-{login}-{uuid.uuid4().hex[:8]}",
        "claims": {
            "preferred_username": login,
            "name": login.capitalize(),
            "email": f"{login}@example.test",
            "email_verified": True,
            "upn": f"{login}@SESSIOND.TEST",
            "groups": groups,
            **claims,
        },
    }


class OidcProvider:
    """A running ``oidc-provider`` (Node.js) on ``127.0.0.1``; see the module's doc."""

    def __init__(self, *, start_timeout: float = 30.0) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("the test OpenID Provider needs Node.js (Debian package nodejs)")
        self.node = node
        if not STAMP.is_file():
            raise RuntimeError(
                f"the test OpenID Provider's npm packages are not installed: run {INSTALL_SCRIPT}"
                " (scripts/test runs it)"
            )
        self.tmpdir = Path(tempfile.mkdtemp(prefix="sessiond-oidc-"))
        self.config_path = self.tmpdir / "config.json"
        self.log_path = self.tmpdir / "provider.log"
        self.port = free_port()
        self.issuer = f"http://{LOOPBACK}:{self.port}"
        self._start_timeout = start_timeout
        self._process: subprocess.Popen[bytes] | None = None
        self._frozen = False
        self.api_resource = API_RESOURCE
        self.api_audience = API_AUDIENCE
        self._config: dict[str, Any] = {
            "issuer": self.issuer,
            "port": self.port,
            "admin_token": secrets.token_urlsafe(24),
            "keys": [new_signing_jwk()],
            "cookie_keys": [secrets.token_urlsafe(32)],
            "users": [
                _user("alice", groups=["sessiond-admins", "staff"]),
                _user("bob", groups=["staff"]),
            ],
            "clients": [
                {
                    "client_id": CONSOLE_CLIENT_ID,
                    "client_secret": secrets.token_urlsafe(32),
                    "client_name": "sessiond console",
                    "application_type": "web",
                    "grant_types": ["authorization_code", "refresh_token", "client_credentials"],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "client_secret_basic",
                    "redirect_uris": [f"http://{LOOPBACK}/console/openid/placeholder/callback"],
                    "redirect_uri_patterns": [f"http://{LOOPBACK}:*/console/openid/*/callback"],
                    "post_logout_redirect_uris": [f"http://{LOOPBACK}/console"],
                    "post_logout_redirect_uri_patterns": [
                        f"http://{LOOPBACK}:*/console",
                        f"http://{LOOPBACK}:*/console/**",
                    ],
                    "backchannel_logout_session_required": True,
                },
                {
                    "client_id": DESKTOP_CLIENT_ID,
                    "client_name": "sessiond desktop",
                    "application_type": "native",
                    "grant_types": ["authorization_code", "refresh_token", DEVICE_GRANT],
                    "response_types": ["code"],
                    "token_endpoint_auth_method": "none",
                    "redirect_uris": [
                        f"http://{LOOPBACK}/",
                        f"http://{LOOPBACK}/callback",
                        "http://[::1]/",
                        "http://[::1]/callback",
                    ],
                    "post_logout_redirect_uris": [f"http://{LOOPBACK}/"],
                    "backchannel_logout_session_required": True,
                },
            ],
            "resource": {
                "indicator": API_RESOURCE,
                "audience": API_AUDIENCE,
                "scopes": list(API_SCOPES),
            },
            "ttl": {
                "AccessToken": 600,
                "AuthorizationCode": 60,
                "IdToken": 600,
                "DeviceCode": 300,
                "Interaction": 600,
                "Session": 3600,
                "Grant": 3600,
                "RefreshToken": 3600,
                "ClientCredentials": 600,
            },
        }
        try:
            self.start()
        except BaseException:
            self.close()
            raise

    # --- what tests read -------------------------------------------------------------------

    @property
    def discovery_url(self) -> str:
        return f"{self.issuer}/.well-known/openid-configuration"

    @property
    def jwks_uri(self) -> str:
        return f"{self.issuer}/jwks"

    @property
    def authorization_endpoint(self) -> str:
        return f"{self.issuer}/auth"

    @property
    def token_endpoint(self) -> str:
        return f"{self.issuer}/token"

    @property
    def end_session_endpoint(self) -> str:
        return f"{self.issuer}/session/end"

    @property
    def device_authorization_endpoint(self) -> str:
        return f"{self.issuer}/device/auth"

    @property
    def users(self) -> dict[str, OidcUser]:
        return {u["login"]: OidcUser(**u) for u in self._config["users"]}

    def user(self, login: str) -> OidcUser:
        return self.users[login]

    def client(self, client_id: str) -> OidcClient:
        for metadata in self._config["clients"]:
            if metadata["client_id"] == client_id:
                return OidcClient(client_id, metadata.get("client_secret"), copy.deepcopy(metadata))
        raise KeyError(client_id)

    @property
    def console_client(self) -> OidcClient:
        """The confidential client (``sessiond-console``)."""
        return self.client(CONSOLE_CLIENT_ID)

    @property
    def desktop_client(self) -> OidcClient:
        """The public native client (``sessiond-desktop``)."""
        return self.client(DESKTOP_CLIENT_ID)

    @property
    def kids(self) -> list[str]:
        """The key ids in the JWKS, the signing key first."""
        return [key["kid"] for key in self._config["keys"]]

    @property
    def signing_kid(self) -> str:
        return str(self._config["keys"][0]["kid"])

    def discovery(self) -> dict[str, Any]:
        answer = httpx.get(self.discovery_url, timeout=5)
        answer.raise_for_status()
        return dict(answer.json())

    # --- changing it -----------------------------------------------------------------------

    def register_client(
        self, *, confidential: bool = True, client_id: str | None = None, **metadata: Any
    ) -> OidcClient:
        """Add a client of the test's own (a unique id unless given) and return it.

        ``metadata`` is OpenID client metadata (``redirect_uris``, ``backchannel_logout_uri``,
        ``grant_types``...), plus ``redirect_uri_patterns`` / ``post_logout_redirect_uri_patterns``
        (``*`` matches within one part of the URL, ``**`` anything) that this provider also
        accepts. A confidential client gets a secret; a public one is native with PKCE.
        """
        client_id = client_id or f"test-{uuid.uuid4().hex[:10]}"
        base: dict[str, Any] = {
            "client_id": client_id,
            "response_types": ["code"],
            "grant_types": ["authorization_code", "refresh_token"],
        }
        if confidential:
            base |= {
                "client_secret": secrets.token_urlsafe(32),
                "application_type": "web",
                "token_endpoint_auth_method": "client_secret_basic",
            }
        else:
            base |= {"application_type": "native", "token_endpoint_auth_method": "none"}
        full = base | metadata
        full.setdefault("redirect_uris", [f"http://{LOOPBACK}/callback"])
        if any(c["client_id"] == client_id for c in self._config["clients"]):
            raise ValueError(f"client {client_id} exists already")
        config = copy.deepcopy(self._config)
        config["clients"].append(full)
        self._apply(config)
        return self.client(client_id)

    def update_client(self, client_id: str, **metadata: Any) -> OidcClient:
        """Change a client's metadata (a value of None removes that field); e.g.
        ``update_client("sessiond-console", backchannel_logout_uri=f"{server.url}/...")``."""
        config = copy.deepcopy(self._config)
        for client in config["clients"]:
            if client["client_id"] == client_id:
                for name, value in metadata.items():
                    if value is None:
                        client.pop(name, None)
                    else:
                        client[name] = value
                break
        else:
            raise KeyError(client_id)
        self._apply(config)
        return self.client(client_id)

    def add_user(self, login: str, *, groups: list[str] | None = None, **claims: Any) -> OidcUser:
        """Add a user (a unique ``sub``, a password, the usual claims; ``claims`` override them)."""
        config = copy.deepcopy(self._config)
        if any(u["login"] == login for u in config["users"]):
            raise ValueError(f"user {login} exists already")
        config["users"].append(_user(login, groups=groups or [], **claims))
        self._apply(config)
        return self.user(login)

    def rotate_keys(self, *, keep_old: bool = True, alg: str = "RS256") -> str:
        """Sign with a new key from now on (it comes first in the JWKS); the old keys stay in
        the JWKS (``keep_old``) or are dropped. Returns the new key's ``kid``. Sessions at the
        provider survive.

        ``alg`` is the new key's algorithm (``RS256``, ``PS256``, ``ES256``). ID tokens are
        signed with the first key of the algorithm a client asks for
        (``id_token_signed_response_alg``, RS256 by default), JWT access tokens with the first
        RS256 key (the first key when there is none): dropping the old keys for an ES256 key
        leaves RS256 clients without a key."""
        config = copy.deepcopy(self._config)
        fresh = new_signing_jwk(alg)
        config["keys"] = [fresh, *(config["keys"] if keep_old else [])]
        self._apply(config)
        return fresh["kid"]

    def _apply(self, config: dict[str, Any]) -> None:
        if self._frozen:
            raise RuntimeError("the provider is frozen: thaw() it before changing it")
        if self.running:
            answer = httpx.post(
                f"{self.issuer}/__test/config",
                json=config,
                headers={"x-test-admin": self._config["admin_token"]},
                timeout=10,
            )
            if answer.status_code != 204:
                raise RuntimeError(
                    f"the provider refused the configuration ({answer.status_code}): "
                    f"{answer.text}{self._log_tail()}"
                )
        self._config = config  # a stopped provider takes it at its next start

    # --- its process -----------------------------------------------------------------------

    @property
    def running(self) -> bool:
        return self._process is not None and self._process.poll() is None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self.running and self._process else None

    def start(self) -> None:
        """Start the provider (again, after :meth:`stop`) on the same port and issuer."""
        if self.running:
            return
        self.config_path.write_text(json.dumps(self._config), encoding="utf-8")
        self.config_path.chmod(0o600)
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(
                [self.node, str(PROVIDER_DIR / "provider.mjs"), str(self.config_path)],
                cwd=PROVIDER_DIR,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env={**os.environ, "NODE_ENV": "test", "DEBUG": ""},
            )
        self._frozen = False
        wait_for_ports(
            self._process,
            [self.port],
            timeout=self._start_timeout,
            what="the OpenID Provider (node)",
            log_file=str(self.log_path),
        )

    def stop(self) -> None:
        """Stop the provider (SIGTERM); :meth:`start` brings it back with the same settings."""
        if self._frozen:
            self.thaw()
        stop_process(self._process)
        self._process = None

    def freeze(self) -> None:
        """SIGSTOP the provider: its port still accepts connections, nothing answers."""
        if not self.running or self._process is None:
            raise RuntimeError("the provider is not running")
        self._process.send_signal(signal.SIGSTOP)
        self._frozen = True

    def thaw(self) -> None:
        """SIGCONT after :meth:`freeze`."""
        if self._process is not None and self._frozen:
            self._process.send_signal(signal.SIGCONT)
        self._frozen = False

    @contextmanager
    def frozen(self) -> Iterator[None]:
        self.freeze()
        try:
            yield
        finally:
            self.thaw()

    @contextmanager
    def stopped(self) -> Iterator[None]:
        self.stop()
        try:
            yield
        finally:
            self.start()

    def close(self) -> None:
        self.stop()
        shutil.rmtree(self.tmpdir, ignore_errors=True)

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 20) -> str:
        tail = self.log_text().splitlines()[-lines:]
        return "\n--- provider log ---\n" + "\n".join(tail) if tail else ""
