"""Integrated Windows sign-in: the server side of HTTP Negotiate (SPNEGO), via pyspnego.

Kerberos (from the service keytab) completes in one leg. NTLM takes two: the first answer is a
challenge, and the acceptor's state must wait for the client's next message. Pending handshakes
are kept here, in this process, for ``HANDSHAKE_TTL`` at most and ``MAX_PENDING`` in all; the
caller names a handshake by the id this class hands out (or by its TCP connection).
Which mechanism won is never the caller's concern: it gets a principal or a refusal.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, Self

from ..errors import InvalidCredentials, NotConfigured, RequestError
from ..settings import Settings, WindowsSettings

HANDSHAKE_TTL = 60.0
MAX_PENDING = 10_000
MAX_TOKEN_BYTES = 64 * 1024
#: Handshakes named by their TCP connection (clients that send no id) start with this.
CONNECTION_PREFIX = "connection:"


@dataclass(frozen=True, slots=True)
class NegotiateResult:
    complete: bool
    output: bytes | None  # the token to send back (challenge, or mutual authentication)
    handshake_id: str
    principal: str | None = None  # user@REALM (Kerberos) or DOMAIN\user (NTLM)
    protocol: str | None = None  # kerberos | ntlm


class NegotiateAcceptor:
    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        windows = settings.windows
        return cls(windows) if windows is not None and windows.negotiate else None

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self._pending: OrderedDict[str, tuple[float, Any]] = OrderedDict()
        from .windows import use_kerberos_settings  # only where integrated sign-in is on

        use_kerberos_settings(settings)

    def _take(self, handshake_id: str | None) -> tuple[str, Any | None]:
        now = time.monotonic()
        while self._pending:
            key, (started, _ctx) = next(iter(self._pending.items()))
            if now - started < HANDSHAKE_TTL:
                break
            self._pending.pop(key)
        if handshake_id and handshake_id in self._pending:
            return handshake_id, self._pending.pop(handshake_id)[1]
        if handshake_id and handshake_id.startswith(CONNECTION_PREFIX):
            return handshake_id, None
        return secrets.token_urlsafe(18), None

    async def step(self, token: bytes, handshake_id: str | None = None) -> NegotiateResult:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise RequestError("the Negotiate token is empty or too large")
        key, context = self._take(handshake_id)
        if context is None:
            context = self._new_context()
        try:
            output = await asyncio.to_thread(context.step, token)
        except Exception as exc:  # pyspnego raises SpnegoError, and AttributeError for some
            raise InvalidCredentials(  # refused Kerberos tokens: any failure is a refusal.
                "integrated Windows sign-in failed", reason=f"{type(exc).__name__}: {exc}"
            ) from None
        if not context.complete:
            while len(self._pending) >= MAX_PENDING:
                self._pending.popitem(last=False)
            self._pending[key] = (time.monotonic(), context)
            return NegotiateResult(False, output, key)
        try:
            principal = str(context.client_principal)
            protocol = str(context.negotiated_protocol)
        except Exception as exc:
            raise InvalidCredentials(
                "integrated Windows sign-in failed", reason=f"{type(exc).__name__}: {exc}"
            ) from None
        return NegotiateResult(True, output, key, principal, protocol)

    def _new_context(self) -> Any:
        try:
            import spnego
        except ImportError:
            raise NotConfigured("integrated Windows sign-in needs the pyspnego package") from None
        return spnego.server(protocol="negotiate", service="HTTP")
