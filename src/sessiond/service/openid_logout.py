"""OpenID Connect Back-Channel Logout: a provider says that one of its sessions (``sid``), or
every session of one of its accounts (``sub`` alone), has ended, and the platform sessions
opened under it are closed.

The token is checked by :mod:`sessiond.auth.openid_logout`; then, in one write transaction:
its ``jti`` is kept (a replay finds it and is refused, nothing closed), the platform sessions of
that provider session are found in ``openid_sessions`` and closed through the store's one
delete of sessions, so that each is audited (Logout, by the system, with the provider, the
subject, the sid and how many sessions the logout found) and other nodes are told at commit
(PostgreSQL's notifications). The sweeper forgets kept ``jti`` values once they are too old to
be accepted again (:meth:`OpenIdLogout.prune`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from .. import metrics
from ..errors import OpenIdLogoutTokenInvalid, OpenIdLogoutTokenReplayed
from ..models import AuditAction
from ..store import AuditRecord, SessionDecision, SessionFilter, SessionRecord, Store
from .common import Clock, session_audit
from .openid import OpenIdSignIn
from .sessions import Sessions

if TYPE_CHECKING:
    from ..auth.openid_logout import LogoutToken

log = logging.getLogger("sessiond.openid")


@dataclass(frozen=True, slots=True)
class LoggedOut:
    """What a back-channel logout did: the provider session and how many platform sessions
    were closed (open ones; sessions found already ended are recorded as expired)."""

    provider: str
    subject: str | None
    sid: str | None
    closed: int


class OpenIdLogout:
    def __init__(
        self, openid: OpenIdSignIn, store: Store, sessions: Sessions, clock: Clock
    ) -> None:
        self.openid = openid
        self.store = store
        self.sessions = sessions
        self.clock = clock

    async def logout(self, provider_name: str, token: str) -> LoggedOut:
        """Close the platform sessions of the provider session ``token`` names, or refuse
        it (:class:`OpenIdLogoutTokenInvalid`, ``OpenIdLogoutTokenReplayed``,
        ``OpenIdProviderUnknown``, ``OpenIdProviderUnavailable``) with nothing written."""
        from ..auth.openid_logout import verify_logout_token

        provider = self.openid.provider(provider_name)
        try:
            verified = await verify_logout_token(provider, token, self.clock())
        except OpenIdLogoutTokenInvalid as exc:
            metrics.openid_logout(provider.name, "refused")
            log.warning("back-channel logout refused: %s", exc.reason)
            raise
        now = self.clock()
        async with self.store.write() as tx:
            if not await tx.remember_logout_token(
                verified.issuer, verified.jti, verified.keep_until
            ):
                metrics.openid_logout(provider.name, "replayed")
                log.warning(
                    "back-channel logout refused: provider %s sent logout token %r again",
                    provider.name,
                    verified.jti,
                )
                raise OpenIdLogoutTokenReplayed(
                    f"this back-channel logout token from {provider.display_name} was "
                    "received before (its jti); nothing was done again",
                    details={"provider": provider.name},
                )
            ids = await tx.openid_session_ids(verified.issuer, verified.sid, verified.subject)
            ended: list[SessionRecord] = []
            if ids:
                decide = self._decide(provider.name, verified, len(ids), now)
                ended = await tx.delete_sessions(SessionFilter(session_ids=tuple(ids)), decide)
        closed = sum(1 for record in ended if self.sessions.ended(record, now) is None)
        metrics.openid_logout(provider.name, "closed" if closed else "none_open")
        log.info(
            "back-channel logout from provider %s (subject %s, sid %s): %d sessions closed",
            provider.name,
            verified.subject,
            verified.sid,
            closed,
        )
        return LoggedOut(provider.name, verified.subject, verified.sid, closed)

    def _decide(
        self, provider: str, verified: LogoutToken, found: int, now: datetime
    ) -> SessionDecision:
        """How each closed session is recorded: Logout by the system, with the provider,
        the subject, the sid and how many sessions the logout found; SessionExpired for one
        that had ended already (the one rule, :meth:`Sessions.ended`)."""
        details: dict[str, object] = {
            "reason": "OpenID Connect back-channel logout",
            "provider": provider,
            "subject": verified.subject,
            "sid": verified.sid,
            "sessions": found,
        }

        def decide(record: SessionRecord) -> AuditRecord:
            ended = self.sessions.ended(record, now)
            if ended is not None:
                return session_audit(
                    AuditAction.SESSION_EXPIRED, now, record, None, None, {"reason": ended}
                )
            return session_audit(AuditAction.LOGOUT, now, record, None, None, details)

        return decide

    async def prune(self) -> int:
        """Forget the logout tokens too old to be accepted again (the sweeper calls this)."""
        async with self.store.write() as tx:
            return await tx.prune_logout_tokens(self.clock())
