"""Integrated Windows sign-in: the server side of HTTP Negotiate (SPNEGO: Kerberos, NTLM).

Each token is routed by what it carries (:mod:`.tokens`):

* **Kerberos** (a bare Kerberos token, or SPNEGO whose first choice is Kerberos) goes to GSSAPI
  with the service keytab (:mod:`.kerberos`); it completes in one leg.
* **NTLM** (raw NTLMSSP, under ``Authorization: NTLM`` or ``Negotiate``, or NTLM in SPNEGO)
  goes where ``windows.ntlm`` says: ``winbind`` — the domain checks it through Samba's
  ``ntlm_auth`` (:mod:`.winbind`); ``file`` — pyspnego's acceptor with ``ntlm_user_file``
  (labs); ``off`` — refused. NTLMv1 and anonymous answers are refused before anyone checks
  them, unless ``allow_ntlmv1``.

NTLM takes two legs, and its state must wait for the client's next message: pending
handshakes are kept here, in this process, for ``HANDSHAKE_TTL`` at most and ``MAX_PENDING``
in all (an ``ntlm_auth`` process bound to one is killed when it expires). Every new handshake
gets a random id, issued by this class and sent to the client as ``Tessa-Negotiate-Id``; a leg
that carries it continues that handshake whichever TCP connection it comes on (clients with a
pool of connections, proxies that pool theirs). A leg that carries no id (browsers, curl)
continues the handshake last started on its own connection (:class:`HandshakeId` names both):
an alias from the connection to the issued id, kept as long as the handshake and never more
than one per pending handshake.

Which mechanism won is never the caller's concern: it gets a :class:`NegotiateResult` (a
principal, or the next challenge) or a refusal, and the result carries what goes into the
response headers, written by :func:`negotiate_headers` alone.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Self

from ..errors import InvalidCredentials, NotConfigured, RequestError, ServiceUnavailable
from ..settings import Settings, WindowsSettings
from ..wire import NEGOTIATE_ID_HEADER
from . import outside, tokens
from .kerberos import KerberosAcceptor

HANDSHAKE_TTL = 60.0
MAX_PENDING = 10_000
MAX_TOKEN_BYTES = 64 * 1024
NEGOTIATE = "Negotiate"
NTLM = "NTLM"


class AuthorizationToken(bytes):
    """The token of an ``Authorization`` header, and the scheme it came under (``Negotiate``
    or ``NTLM``): the answer's ``WWW-Authenticate`` uses the same scheme."""

    scheme: str

    def __new__(cls, data: bytes, scheme: str = NEGOTIATE) -> Self:
        token = super().__new__(cls, data)
        token.scheme = NTLM if scheme.lower() == "ntlm" else NEGOTIATE
        return token


class HandshakeId(str):
    """The handshake id a leg names (its ``Tessa-Negotiate-Id``; empty: none), and the TCP
    connection it came on (``host:port``), by which a leg without an id is matched."""

    connection: str | None

    def __new__(cls, given: str | None, connection: str | None = None) -> Self:
        handshake = super().__new__(cls, given or "")
        handshake.connection = connection
        return handshake


def negotiate_headers(
    token: bytes | None,
    handshake_id: str | None = None,
    scheme: str = NEGOTIATE,
    *,
    challenge: bool = True,
) -> dict[str, str]:
    """The response headers of a Negotiate exchange — the one place that writes them.

    ``challenge``: a 401 asking for (another) leg: ``WWW-Authenticate: <scheme> [token]`` and
    the handshake's ``Tessa-Negotiate-Id``. Otherwise the final answer: ``WWW-Authenticate``
    only if there is a last token (mutual authentication)."""
    headers: dict[str, str] = {}
    encoded = base64.b64encode(token).decode() if token else ""
    if challenge or encoded:
        headers["WWW-Authenticate"] = f"{scheme} {encoded}".strip()
    if challenge and handshake_id:
        headers[NEGOTIATE_ID_HEADER] = handshake_id
    return headers


@dataclass(frozen=True, slots=True)
class NegotiateResult:
    complete: bool
    output: bytes | None  # the token to send back (challenge, or mutual authentication)
    handshake_id: str
    principal: str | None = None  # user@REALM (Kerberos) or DOMAIN\user (NTLM)
    protocol: str | None = None  # kerberos | ntlm
    scheme: str = NEGOTIATE  # the scheme the client used, and the answer uses

    @property
    def headers(self) -> dict[str, str]:
        """What goes into the response: the challenge and handshake id while the exchange
        goes on, the mutual-authentication token once it is complete."""
        return negotiate_headers(
            self.output, self.handshake_id, self.scheme, challenge=not self.complete
        )


@dataclass(slots=True)
class _Pending:
    started: float
    mech: str  # winbind | file | kerberos
    state: Any  # the ntlm_auth helper, or the pyspnego / GSSAPI context
    timer: asyncio.TimerHandle | None = field(default=None)
    connection: str | None = None  # the connection of its last leg


class NegotiateAcceptor:
    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        windows = settings.windows
        return cls(windows) if windows is not None and windows.negotiate else None

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.ntlm = settings.ntlm_mode
        self.kerberos = KerberosAcceptor(settings)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._by_connection: dict[str, str] = {}  # connection -> the id of its handshake
        self._winbind: Any = None
        if self.ntlm == "winbind":
            from .winbind import WinbindNtlm

            self._winbind = WinbindNtlm(settings)

    # --- pending handshakes --------------------------------------------------------------

    def _drop(self, pending: _Pending) -> None:
        if pending.timer is not None:
            pending.timer.cancel()
        if pending.mech == "winbind":
            self._winbind.pool.kill(pending.state)

    def _forget(self, key: str) -> _Pending:
        """Take a handshake out of the table, with its connection's alias to it."""
        pending = self._pending.pop(key)
        if pending.connection is not None and self._by_connection.get(pending.connection) == key:
            del self._by_connection[pending.connection]
        return pending

    def _sweep(self) -> None:
        now = time.monotonic()
        while self._pending:
            key, pending = next(iter(self._pending.items()))
            if now - pending.started < HANDSHAKE_TTL:
                break
            self._drop(self._forget(key))

    def _expire(self, key: str, pending: _Pending) -> None:
        if self._pending.get(key) is pending:
            self._drop(self._forget(key))

    def _keep(self, key: str, mech: str, state: Any) -> None:
        while len(self._pending) >= MAX_PENDING:
            self._drop(self._forget(next(iter(self._pending))))
        if key in self._pending:
            self._drop(self._forget(key))
        connection = getattr(key, "connection", None)
        pending = _Pending(time.monotonic(), mech, state, connection=connection)
        if mech == "winbind":  # its process is killed when the handshake expires
            loop = asyncio.get_running_loop()
            pending.timer = loop.call_later(HANDSHAKE_TTL, self._expire, key, pending)
        self._pending[key] = pending
        if connection is not None:
            self._by_connection[connection] = key

    def _take(self, handshake: str | None, first: bool) -> tuple[HandshakeId, _Pending | None]:
        """The handshake a leg continues, out of the table, under its id; or ``None`` and a
        new random id. A leg with an id continues the handshake it names, or none (an unknown
        id never falls back to the connection, which may carry others' handshakes); a leg
        without one continues its connection's. A first message always starts a new
        handshake: one it names by its id is ended (the client started over); one it finds
        only by its connection is left to the legs that name it, or to expire."""
        self._sweep()
        given = str(handshake) if handshake else ""
        connection = getattr(handshake, "connection", None)
        key: str | None = None
        if given:
            key = given if given in self._pending else None
        elif connection is not None and not first:
            key = self._by_connection.get(connection)
        pending = self._forget(key) if key is not None else None
        if pending is not None and pending.timer is not None:
            pending.timer.cancel()
        if pending is not None and first:  # an abandoned handshake: start anew
            self._drop(pending)
            pending = None
        if pending is None or key is None:
            return HandshakeId(secrets.token_urlsafe(18), connection), None
        return HandshakeId(key, connection), pending

    @property
    def pending(self) -> int:
        return len(self._pending)

    def continues(self, handshake: str | None) -> bool:
        """Is a handshake in progress that a next leg named so would continue (by its id, or
        for a leg without one, by its connection)?"""
        given = str(handshake) if handshake else ""
        if given:
            return given in self._pending
        connection = getattr(handshake, "connection", None)
        return connection is not None and connection in self._by_connection

    def abandon(self, handshake: str | None) -> None:
        """End the handshake a leg named so continues (its helper process killed)."""
        _key, pending = self._take(handshake, first=False)
        if pending is not None:
            self._drop(pending)

    def check_answer(self, answer: tokens.NtlmAuthenticate) -> None:
        """Refuse an anonymous or (unless allowed) NTLMv1 answer before anyone checks it."""
        self._check_ntlm_answer(answer)

    # --- one leg -------------------------------------------------------------------------

    async def step(self, token: bytes, handshake_id: str | None = None) -> NegotiateResult:
        if not token or len(token) > MAX_TOKEN_BYTES:
            raise RequestError("the Negotiate token is empty or too large")
        scheme = getattr(token, "scheme", NEGOTIATE)
        token = bytes(token)
        kind = tokens.inspect(token)
        first = kind.kind == "spnego-init" or tokens.ntlm_message_type(token) == 1
        key, pending = self._take(handshake_id, first)
        authenticate = tokens.ntlm_authenticate(token)
        try:
            if authenticate is not None:
                try:
                    self._check_ntlm_answer(authenticate)
                except InvalidCredentials:
                    if pending is not None:
                        self._drop(pending)
                    raise
                if pending is None:  # no challenge to check it against: ntlm_auth would
                    raise InvalidCredentials(  # answer INVALID_PARAMETER
                        "integrated Windows sign-in failed: the NTLM answer belongs to no "
                        "handshake in progress here (it expired, or its Tessa-Negotiate-Id "
                        "was not sent back); start the sign-in again",
                        reason="an NTLM answer that continues no pending handshake",
                    )
            if pending is not None:
                return await self._resume(key, pending, token, kind, scheme)
            if kind.carries_ntlm:
                return await self._start_ntlm(key, token, kind, scheme)
            return await self._kerberos(key, token, kind, None, scheme)
        except InvalidCredentials as exc:  # the audit trail names who tried, when NTLM says
            if authenticate is not None and authenticate.who:
                exc.reason = f"{authenticate.who}: {exc.reason or exc.message}"
            raise

    def _check_ntlm_answer(self, answer: tokens.NtlmAuthenticate) -> None:
        if answer.version == "anonymous":
            raise InvalidCredentials(
                "integrated Windows sign-in failed: anonymous NTLM is not accepted",
                reason="an anonymous NTLM answer",
            )
        if answer.version != "v2" and not self.settings.allow_ntlmv1:
            raise InvalidCredentials(
                "integrated Windows sign-in failed: NTLMv1 is not accepted (use NTLMv2)",
                reason=f"an NTLM{answer.version} answer, refused (windows.allow_ntlmv1 = false)",
            )

    async def _resume(
        self, key: str, pending: _Pending, token: bytes, kind: tokens.TokenKind, scheme: str
    ) -> NegotiateResult:
        if pending.mech == "winbind":
            step = await self._winbind.resume(pending.state, token)
            return self._ntlm_result(key, step.complete, step.output, step.principal, scheme,
                                     step.helper)  # fmt: skip
        if pending.mech == "file":
            return await self._file_step(key, pending.state, token, scheme)
        return await self._kerberos(key, token, kind, pending.state, scheme)

    async def _start_ntlm(
        self, key: str, token: bytes, kind: tokens.TokenKind, scheme: str
    ) -> NegotiateResult:
        if self.ntlm == "off":
            raise InvalidCredentials(
                "integrated Windows sign-in failed: NTLM is not accepted here; use Kerberos",
                reason="an NTLM token, and windows.ntlm is off",
            )
        if self.ntlm == "winbind":
            step = await self._winbind.start(token, spnego=kind.kind == "spnego-init")
            return self._ntlm_result(key, step.complete, step.output, step.principal, scheme,
                                     step.helper)  # fmt: skip
        return await self._file_step(key, self._file_context(), token, scheme)

    def _ntlm_result(
        self,
        key: str,
        complete: bool,
        output: bytes | None,
        principal: str | None,
        scheme: str,
        helper: Any,
    ) -> NegotiateResult:
        if not complete:
            self._keep(key, "winbind", helper)
            return NegotiateResult(False, output, key, scheme=scheme)
        return NegotiateResult(True, output, key, principal, "ntlm", scheme)

    def _file_context(self) -> Any:
        try:
            import spnego
        except ImportError:
            raise NotConfigured("NTLM sign-in needs the pyspnego package") from None
        return spnego.server(protocol="negotiate", service="HTTP")

    async def _file_step(
        self, key: str, context: Any, token: bytes, scheme: str
    ) -> NegotiateResult:
        try:
            output = await outside.kdc(self.settings).run(context.step, token)
            if not context.complete:
                self._keep(key, "file", context)
                return NegotiateResult(False, output, key, scheme=scheme)
            principal = str(context.client_principal)
        except ServiceUnavailable:  # its threads are busy, or the step took too long
            raise
        except Exception as exc:  # pyspnego's errors: a refusal of the NTLM answer
            raise InvalidCredentials(
                "wrong login or password", reason=f"{type(exc).__name__}: {exc}"
            ) from None
        return NegotiateResult(True, output, key, principal, "ntlm", scheme)

    async def _kerberos(
        self, key: str, token: bytes, kind: tokens.TokenKind, context: Any, scheme: str
    ) -> NegotiateResult:
        step = await outside.kdc(self.settings).run(self.kerberos.accept, token, kind, context)
        if not step.complete:
            self._keep(key, "kerberos", step.context)
            return NegotiateResult(False, step.output, key, scheme=scheme)
        return NegotiateResult(True, step.output, key, step.principal, "kerberos", scheme)

    async def close(self) -> None:
        for pending in self._pending.values():
            with contextlib.suppress(Exception):
                self._drop(pending)
        self._pending.clear()
        self._by_connection.clear()
        if self._winbind is not None:
            await self._winbind.close()
