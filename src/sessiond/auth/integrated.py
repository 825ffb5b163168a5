"""Integrated Windows sign-in as a backend of the sign-in pipeline: HTTP Negotiate (Kerberos,
or NTLM checked by the domain), run by :class:`~.negotiate.NegotiateAcceptor`.

A Kerberos ticket proves who is asking by itself. NTLM's last leg is a password answer: the
account it names (the AUTHENTICATE message says which) is handed to the pipeline as a
:class:`~.base.Claim` *before* the domain checks it, so that the same rules hold as for a
password typed into the sign-in form: the user's lockout, the limits on accounts no user is
mapped to (keyed by the same identity as the password path), and an unmapped account refused
without asking the domain when no user may be provisioned for it.
"""

from __future__ import annotations

from typing import Self

from ..errors import InvalidCredentials
from ..models import LoginType
from ..settings import Settings, WindowsSettings
from . import tokens
from .accounts import WindowsNames
from .base import Claim, Identity, ProofBackend, ProofStep
from .lookup import Lookups
from .negotiate import NegotiateAcceptor
from .windows import WINDOWS_PASSWORDS_CHANGED_IN, account_claim


class IntegratedWindows(ProofBackend):
    login_type = LoginType.WINDOWS
    title = "integrated Windows sign-in"
    password_changed_in = WINDOWS_PASSWORDS_CHANGED_IN

    @classmethod
    def from_settings(cls, settings: Settings) -> Self | None:
        windows = settings.windows
        return cls(windows) if windows is not None and windows.negotiate else None

    def __init__(self, settings: WindowsSettings) -> None:
        self.settings = settings
        self.names = WindowsNames(settings)
        self.lookups = Lookups(settings, self.names)
        self.acceptor = NegotiateAcceptor(settings)

    @property
    def auto_provision(self) -> bool:
        return self.settings.auto_provision

    async def claim(self, token: bytes, handshake_id: str | None) -> Claim | None:
        answer = tokens.ntlm_authenticate(bytes(token))
        if answer is None:
            return None
        try:
            self.acceptor.check_answer(answer)  # anonymous, NTLMv1: refused as such
            if not self.acceptor.continues(
                handshake_id
            ):  # no password is checked: nothing to count
                raise InvalidCredentials(
                    "integrated Windows sign-in failed: the NTLM answer belongs to no handshake "
                    "in progress here (it expired, or its Tessa-Negotiate-Id was not sent back); "
                    "start the sign-in again",
                    reason="an NTLM answer that continues no pending handshake",
                )
            # A UPN is the account the domain says it belongs to, as on the password path.
            return account_claim(await self.lookups.account(answer.user, answer.domain or None))
        except InvalidCredentials as exc:  # the audit names who tried, as NTLM says
            exc.reason = f"{answer.who}: {exc.reason or exc.message}"
            raise

    async def step(self, token: bytes, handshake_id: str | None) -> ProofStep:
        result = await self.acceptor.step(token, handshake_id)
        if not result.complete or result.principal is None:
            return ProofStep(None, result.output, result.handshake_id, result.scheme)
        try:
            account = self.names.parse(result.principal)
        except InvalidCredentials as exc:
            raise InvalidCredentials(
                "wrong login or password",
                reason=f"{result.principal} is no account of this server's domains ({exc})",
            ) from None
        if result.protocol != "ntlm" or self.settings.ntlm_mode != "winbind":
            # A ticket proves who it is, not that it may sign in here: the group is checked as
            # on the password path (ntlm_auth checks it itself: --require-membership-of).
            await self.lookups.require_membership(account)
        identity = Identity(
            account=account.down_level, display_name=account.name, method=result.protocol
        )
        return ProofStep(identity, result.output, result.handshake_id, result.scheme)

    def abandon(self, handshake_id: str | None) -> None:
        self.acceptor.abandon(handshake_id)

    async def close(self) -> None:
        await self.acceptor.close()
