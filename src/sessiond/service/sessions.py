"""Open sessions: validation on every request, last-activity touches, closing, sweeping.

Whether a session is still open is decided by :class:`~sessiond.store.state.SessionState`
alone (the rule, beside its SQL form), here and wherever a session ends; a close reports that a
session was open, and records Logout or SessionClosedByAdmin, only if it was open by that rule —
a session found already ended is recorded as SessionExpired and reported as not open.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from hashlib import blake2b
from typing import Any
from uuid import UUID

from .. import metrics
from ..cache import BoundedCache, Packer
from ..errors import (
    PermissionDenied,
    RequestError,
    ServiceUnavailable,
    SessionExpired,
    SessionNotFound,
    TokenSignatureInvalid,
)
from ..keys import KeyRing
from ..models import AuditAction, LicenseType
from ..settings import Settings
from ..store import (
    AuditRecord,
    SessionDecision,
    SessionFilter,
    SessionOrder,
    SessionQuery,
    SessionRecord,
    SessionUser,
    Store,
    Transaction,
)
from ..store.state import SessionState
from ..token import CANONICAL_AUTH, AuthToken, fast_uuid
from .common import Actor, Clock, require_admin, session_audit

SWEEP_BATCH = 200
SWEEP_PAUSE = 0.05  # seconds between two batches of a backlog
TOUCH_SPACING = 1.0  # seconds between two touch batches: one commit a second at most
PACK_FROM = 10_000  # validation cache entries from which new answers are kept compressed
PAGE_LIMIT = 1000  # sessions in one page of a list
log = logging.getLogger("sessiond.service")


@dataclass(slots=True)
class _Known:
    """What the validation cache holds about one session: the token text it was checked with
    (a keyed digest), what the rule needs, the store's data epoch when it was read, the row's
    version, and the rendered answer (packed: :class:`~sessiond.cache.Packer`)."""

    token: bytes
    expires: datetime
    last_activity: datetime
    epoch: int | None
    version: int  # the row's (migration 0007): any change of it but a touch moves it
    view: bytes
    packed: bool  # view compressed (once the cache is large), or as rendered


class Sessions:
    def __init__(self, settings: Settings, store: Store, keys: KeyRing, clock: Clock) -> None:
        self.settings = settings
        self.store = store
        self.keys = keys
        self.clock = clock
        self.state = SessionState(settings.security.session_inactivity_time)
        self._known: BoundedCache[int, _Known] = BoundedCache(settings.validation_cache_entries)
        self._packer = Packer()  # answers of a large cache are kept compressed (PACK_FROM)
        self._digest_key = secrets.token_bytes(32)  # token texts are remembered by keyed digest
        self._touches: dict[UUID, datetime] = {}
        self._toucher: asyncio.Task[None] | None = None
        self._flush = asyncio.Event()  # set: write what is queued now, without the spacing

    # --- the rule, with this node's unwritten touches ------------------------------------

    def _last_activity(self, record: SessionRecord) -> datetime:
        """A touch this node has queued but not yet written counts as written."""
        queued = self._touches.get(record.id)
        return (
            queued if queued is not None and queued > record.last_activity else record.last_activity
        )

    def ended(self, record: SessionRecord, now: datetime) -> str | None:
        return self.state.ended(record.token.expires, self._last_activity(record), now)

    def closing(
        self,
        now: datetime,
        action: AuditAction,
        actor: Actor | None,
        reason: str | None = None,
    ) -> Callable[[SessionRecord], AuditRecord]:
        """How ending a session is recorded: ``action`` by ``actor`` if it was open, else
        SessionExpired with why it had ended."""

        def decide(record: SessionRecord) -> AuditRecord:
            ended = self.ended(record, now)
            if ended is not None:
                return session_audit(
                    AuditAction.SESSION_EXPIRED, now, record, None, None, {"reason": ended}
                )
            address = actor.client_address if actor else None
            details: dict[str, object] | None = {"reason": reason} if reason else None
            return session_audit(action, now, record, actor, address, details)

        return decide

    async def _end(self, which: SessionFilter, decide: SessionDecision) -> list[SessionRecord]:
        async with self.store.write() as tx:
            # Sessions past their lifetime by this clock (the one the validation cache checks
            # with) need not move the store's epoch: the cache serves none of them.
            return await tx.delete_sessions(which, decide, lifetime_ended_by=self.clock())

    def _open_among(self, records: Sequence[SessionRecord], now: datetime) -> int:
        return sum(1 for record in records if self.ended(record, now) is None)

    # --- validating ----------------------------------------------------------------------

    def verified(self, auth_text: str) -> AuthToken:
        """Parse a token (hostile input) and check its signature."""
        auth = AuthToken.from_xml(auth_text)
        auth.verify(self.keys.keys)
        return auth

    async def validate(self, auth_text: str, client_address: str | None = None) -> SessionRecord:
        """The per-request check: signature, the session row, its user's row (not removed,
        blocked or given other rights since), the session state; then a throttled
        last-activity touch. Returns the session as stored."""
        with metrics.validating():
            record, _ = await self._validate(auth_text, client_address)
        return record

    async def _validate(
        self, auth_text: str, client_address: str | None
    ) -> tuple[SessionRecord, datetime]:
        """:meth:`validate`, and the session's last activity as it will be stored once this
        node's queued touch (if any) is written."""
        auth = self.verified(auth_text)
        now = self.clock()
        if self.state.ended(auth.expires, None, now) is not None:
            await self._expire(auth.session_id, now, client_address)
            raise SessionExpired("the session has expired; sign in again")
        found = await self.store.session_to_validate(auth.session_id)
        if found is None:
            raise SessionNotFound("the session is closed; sign in again")
        record, user = found
        token = record.token
        if token.signature != auth.signature or token.user_id != auth.user_id:
            raise TokenSignatureInvalid("the session token does not match the session")
        if self.state.ended(token.expires, self._last_activity(record), now) is None:
            if token.expires != auth.expires:  # moved (not into the past) since it was signed
                raise TokenSignatureInvalid("the session token does not match the session")
            why = self._user_changed(record, user, now)
            if why is not None:
                await self._close_changed(record.id, why, client_address)
                raise SessionNotFound(f"the session is closed: {why}; sign in again")
        try:
            touched = self._still_open(record.id, record.token.expires, record.last_activity, now)
        except SessionExpired:
            await self._expire(auth.session_id, now, client_address)
            raise
        return record, max(touched or record.last_activity, record.last_activity)

    def _user_changed(
        self, record: SessionRecord, user: SessionUser | None, now: datetime
    ) -> str | None:
        """Why the session's user row no longer allows it (None: it does). sessiond ends a
        user's sessions itself when it removes the user, blocks them or changes their access
        level or login type; this finds the same changes made some other way (plain SQL). A
        block by the lockout (``locked_out``) leaves the sessions open, as it does here."""
        if user is None:
            return "its user was removed"
        token = record.token
        if user.access_level != token.access_level or user.login_type != token.login_type:
            return "its access level or login type is no longer its user's"
        due = user.blocked_due_date
        if user.blocked and not user.locked_out and (due is None or due > now):
            return "its user is blocked"
        return None

    async def _close_changed(self, session_id: UUID, why: str, client_address: str | None) -> None:
        """End a session :meth:`_user_changed` refused, recorded as closed by the system."""
        now = self.clock()

        def decide(record: SessionRecord) -> AuditRecord:
            return session_audit(
                AuditAction.SESSION_CLOSED_BY_ADMIN, now, record, None, client_address,
                {"reason": f"{why} (found at validation)"},
            )  # fmt: skip

        await self._end(SessionFilter(session_ids=(session_id,)), decide)

    def _still_open(
        self, session_id: UUID, expires: datetime, last_activity: datetime, now: datetime
    ) -> datetime | None:
        """The session state at this request, with this node's queued touch counted; raises
        SessionExpired (after which the caller ends it), or queues a due touch and returns
        its time (None: none due)."""
        queued = self._touches.get(session_id)
        if queued is not None and queued > last_activity:
            last_activity = queued
        ended = self.state.ended(expires, last_activity, now)
        if ended is not None:
            raise SessionExpired(
                "the session was closed after inactivity; sign in again"
                if ended == "inactivity"
                else "the session has expired; sign in again",
                reason=ended,
            )
        if now - last_activity >= self.settings.touch_interval:
            self._queue_touch(session_id, now)
            return now
        return None

    async def validate_view(
        self,
        auth_text: str,
        client_address: str | None,
        render: Callable[[SessionRecord], bytes],
    ) -> bytes:
        """Validate, and answer with ``render(session)``, remembered (see :meth:`_view`)."""
        with metrics.validating():
            return await self._view(auth_text, client_address, render)

    async def _view(
        self,
        auth_text: str,
        client_address: str | None,
        render: Callable[[SessionRecord], bytes],
    ) -> bytes:
        """Validate as :meth:`validate`, and answer with ``render(session)`` — remembered per
        session in a bounded cache, so that a session validated again costs a lookup, not a
        parse, a signature check, a row read and a render.

        Exact: an entry is used only for the very token text it was made from (a keyed digest
        of it), only while the session is open by the one rule, and only after the store has
        confirmed that the row it was made from is unchanged — at no cost when the store's
        epoch has not moved since the entry was made (SQLite: no session of its bucket, a 256th
        of them, has been removed or changed but for a touch since, by anyone, nor has the
        block or rights of its user), else by reading the row's version and last activity
        (every time on PostgreSQL, where another node may have closed it). A session whose row
        is gone or has another version (migration 0007) is read afresh; a row of the same
        version differs only in its last activity, forward, which the entry takes over. The
        cache refuses nothing itself: a session it finds ended is decided again on the row as
        stored. ``render`` must be the same function on every call."""
        canonical = CANONICAL_AUTH.match(auth_text)
        # Keyed by the session id as a number (44 bytes, against 85 for its text).
        key = int(canonical.group(1).replace("-", ""), 16) if canonical else None
        digest = blake2b(auth_text.encode(), key=self._digest_key, digest_size=16).digest()
        now = self.clock()
        # Read before any read of the row: a removal after it shows at the next request.
        epoch = self.store.session_epoch(key) if key is not None else None
        known = self._known.get(key) if key is not None else None
        if key is not None and known is not None and known.token == digest:
            view: bytes | None
            try:
                if epoch is not None and epoch == known.epoch:
                    # Confirmed without a word to the store: no await on the common path.
                    view = self._answer(fast_uuid(key), known, now)
                else:
                    view = await self._confirm(key, known, now, epoch)
            except SessionExpired:
                # The cache only ever confirms: an ended session is decided (and ended) below,
                # on the row as stored (another process may have touched it since).
                self._known.pop(key)
                view = None
            if view is not None:
                return view
        try:
            record, stored = await self._validate(auth_text, client_address)
        except (SessionExpired, SessionNotFound, TokenSignatureInvalid):
            if key is not None:
                self._known.pop(key)
            raise
        view = render(record)
        # ``stored``: the last activity this node's own touch will write, so that writing it
        # does not make the entry look changed (the answer's LastActivity may lag by a touch).
        if self._known.size:
            # Small caches keep answers as rendered (no unpacking on a hit); from
            # PACK_FROM entries on, new ones are kept compressed, a third of the memory.
            pack = len(self._known) >= PACK_FROM
            kept = self._packer.pack(view) if pack else view
            known = _Known(digest, record.token.expires, stored, epoch, record.version, kept, pack)
            self._known.put(record.id.int, known)
        return view

    async def _confirm(
        self, key: int, known: _Known, now: datetime, epoch: int | None
    ) -> bytes | None:
        """The cached answer of a session whose epoch has moved (or who has none), once its
        row is found still there and unchanged; None to read it afresh."""
        session_id = fast_uuid(key)  # the pattern checked the text
        found = await self.store.session_version(session_id)
        if found is None or found[0] != known.version:
            # Gone (read again: it answers session_not_found), or changed in some other way
            # than a touch, or its user's block or rights changed: decided afresh on the row.
            self._known.pop(key)
            return None
        # The row is as it was but for its last activity, which only moves forward (an older
        # one here is this node's own touch, not written yet).
        activity = found[1]
        if activity > known.last_activity:
            known.last_activity = activity
        known.epoch = epoch
        return self._answer(session_id, known, now)

    def _answer(self, session_id: UUID, known: _Known, now: datetime) -> bytes:
        """The cached answer of a session the store has confirmed, after the session rule
        (raises SessionExpired) and a due touch."""
        touched = self._still_open(session_id, known.expires, known.last_activity, now)
        if touched is not None:
            known.last_activity = touched
        return self._packer.unpack(known.view) if known.packed else known.view

    def forget(self, session_ids: Iterable[UUID] | None) -> None:
        """Drop what the validation cache holds about these sessions (None: about every
        session), when the store says they ended; the cache would find out at each one's next
        request anyway."""
        if session_ids is None:
            self._known.clear()
            return
        for session_id in session_ids:
            self._known.pop(session_id.int)

    async def _expire(self, session_id: UUID, now: datetime, client_address: str | None) -> None:
        def decide(record: SessionRecord) -> AuditRecord | None:
            ended = self.ended(record, now)
            if ended is None:
                return None
            return session_audit(
                AuditAction.SESSION_EXPIRED, now, record, None, client_address, {"reason": ended}
            )

        await self._end(SessionFilter(session_ids=(session_id,)), decide)

    # --- touches -------------------------------------------------------------------------

    def _queue_touch(self, session_id: UUID, now: datetime) -> None:
        """Touches are written in batches, one transaction each, by one task: a request never
        waits for the database's write lock just to say it was active. The first touch is
        written at once; the ones after it gather for :data:`TOUCH_SPACING` into the next
        batch, so that under load the touches are one commit a second, not one after another
        (each commit holds SQLite's write lock, and tells every cache on the file to look)."""
        self._touches[session_id] = now
        if self._toucher is None or self._toucher.done():
            self._toucher = asyncio.create_task(self._write_touches(), name="sessiond-touches")

    async def _write_touches(self) -> None:
        failing = 0
        while self._touches:
            batch, self._touches = self._touches, {}
            try:
                await self.store.touch_sessions(batch)
                failing = 0
            except Exception as exc:
                # Keep them (a later touch of the same session wins) and try again; while the
                # store is down, say so every half minute rather than every second.
                for session_id, at in batch.items():
                    self._touches.setdefault(session_id, at)
                if failing % 30 == 0:
                    if isinstance(exc, ServiceUnavailable):
                        log.warning("%d last-activity touches wait: %s", len(batch), exc.message)
                    else:
                        log.exception("writing %d last-activity touches failed", len(batch))
                failing += 1
                await asyncio.sleep(1)
                continue
            if not self._flush.is_set():
                try:  # let the next batch gather, unless someone waits for it
                    async with asyncio.timeout(TOUCH_SPACING):
                        await self._flush.wait()
                except TimeoutError:
                    pass
        self._flush.clear()

    async def flush_touches(self) -> None:
        """Wait until every queued touch is written (the sweeper and shutdown do)."""
        while self._toucher is not None and not self._toucher.done():
            self._flush.set()
            await asyncio.shield(self._toucher)

    # --- closing -------------------------------------------------------------------------

    async def close_session(self, auth_text: str, client_address: str | None = None) -> bool:
        """Close the session the token names; True if it was still open."""
        auth = self.verified(auth_text)
        now = self.clock()

        def decide(record: SessionRecord) -> AuditRecord:
            actor = Actor.of(record, client_address)
            return self.closing(now, AuditAction.LOGOUT, actor)(record)

        which = SessionFilter(session_ids=(auth.session_id,), signature=auth.signature)
        closed = self._open_among(await self._end(which, decide), now) == 1
        metrics.sessions_closed("user", closed)
        return closed

    async def get_open(self, actor: Actor, session_id: UUID) -> SessionRecord | None:
        """One open session by id (None: not open): an administrator may look at any, a
        regular user at their own only."""
        record = await self.store.get_session(session_id)
        if record is None or self.ended(record, self.clock()) is not None:
            return None
        if not actor.is_administrator and record.token.user_id != actor.id:
            raise PermissionDenied("only an administrator may close another user's session")
        return record

    async def close_session_as_admin(self, actor: Actor, session_id: UUID) -> bool:
        """An administrator closes any session; a regular user only one of their own.
        True if it was still open."""
        now = self.clock()
        if not actor.is_administrator:
            record = await self.store.get_session(session_id)
            if record is None:
                return False
            if record.token.user_id != actor.id:
                raise PermissionDenied("only an administrator may close another user's session")
            decide = self.closing(now, AuditAction.LOGOUT, actor)
            which = SessionFilter(session_ids=(session_id,), user_id=actor.id)
        else:
            decide = self.closing(now, AuditAction.SESSION_CLOSED_BY_ADMIN, actor)
            which = SessionFilter(session_ids=(session_id,))
        closed = self._open_among(await self._end(which, decide), now) == 1
        metrics.sessions_closed("admin" if actor.is_administrator else "user", closed)
        return closed

    async def end_user_sessions(
        self,
        tx: Transaction,
        user_id: UUID,
        actor: Actor,
        action: AuditAction,
        reason: str,
        *,
        except_session: UUID | None = None,
        license_type: LicenseType | None = None,
    ) -> int:
        """End a user's sessions (of one licence type, sparing one) inside a transaction
        that changes the user; returns how many were open."""
        now = self.clock()
        which = SessionFilter(
            user_id=user_id, license_type=license_type, except_session_id=except_session
        )
        ended = await tx.delete_sessions(which, self.closing(now, action, actor, reason))
        return self._open_among(ended, now)

    async def close_user_sessions(self, actor: Actor, user_id: UUID) -> int:
        """Close every session of one user (administrators); returns how many were open."""
        require_admin(actor, "close a user's sessions")
        async with self.store.write() as tx:
            closed = await self.end_user_sessions(
                tx, user_id, actor, AuditAction.SESSION_CLOSED_BY_ADMIN,
                "all sessions of the user closed",
            )  # fmt: skip
        metrics.sessions_closed("admin", closed)
        return closed

    async def sweep(self) -> int:
        """Remove sessions that have ended by the rule, each audited as SessionExpired;
        returns how many. Safe on several nodes at once."""
        await self.flush_touches()  # so that no session this node saw active looks idle
        now = self.clock()
        total = 0

        def decide(record: SessionRecord) -> AuditRecord | None:
            ended = self.ended(record, now)
            if ended is None:
                return None
            return session_audit(
                AuditAction.SESSION_EXPIRED,
                now,
                record,
                None,
                None,
                {"reason": ended, "by": "sweeper"},
            )

        while True:
            found = await self._end(self.state.stale(now, SWEEP_BATCH), decide)
            total += len(found)
            if len(found) < SWEEP_BATCH:
                return total
            # A backlog is cleared in short transactions with pauses between them, so that
            # sign-ins and touches get the (SQLite: only) write lock in between.
            await asyncio.sleep(SWEEP_PAUSE)

    async def page(
        self,
        actor: Actor,
        query: SessionQuery,
        cursor: str | None = None,
        limit: int = PAGE_LIMIT,
    ) -> tuple[list[SessionRecord], str | None]:
        """One page of open sessions matching ``query`` (its filters and order), after
        ``cursor``; and the cursor of the next page (None: this was the last). A regular user
        sees only their own sessions."""
        if not actor.is_administrator:
            if query.user_id is not None and query.user_id != actor.id:
                raise PermissionDenied("only an administrator may list another user's sessions")
            query = replace(query, user_id=actor.id)
        limit = max(1, min(limit, PAGE_LIMIT))
        now = self.clock()
        query = replace(
            query,
            open_at=now,
            active_since=self.state.active_since(now),
            after=_read_cursor(cursor, query.order) if cursor else None,
            limit=limit + 1,
        )
        records = list(await self.store.list_sessions(query))
        more = len(records) > limit
        records = records[:limit]
        next_cursor = _write_cursor(records[-1], query.order) if more and records else None
        return [r for r in records if self.ended(r, now) is None], next_cursor

    async def list_sessions(
        self, actor: Actor, user_id: UUID | None = None
    ) -> Sequence[SessionRecord]:
        """Every open session (of one user), oldest first, read a page at a time."""
        out: list[SessionRecord] = []
        cursor = None
        while True:
            page, cursor = await self.page(actor, SessionQuery(user_id=user_id), cursor)
            out.extend(page)
            if cursor is None:
                return out


def _write_cursor(record: SessionRecord, order: SessionOrder) -> str:
    key = _order_value(record, order)
    text = key.isoformat() if isinstance(key, datetime) else key
    raw = json.dumps([text, str(record.id)], separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _read_cursor(cursor: str, order: SessionOrder) -> tuple[Any, UUID]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        text, session_id = json.loads(raw)
        key: Any = str(text) if order == "user_name" else datetime.fromisoformat(text)
        return key, UUID(session_id)
    except (ValueError, TypeError) as exc:
        raise RequestError(f"the page cursor {cursor[:40]!r} is not one this server gave") from exc


def _order_value(record: SessionRecord, order: SessionOrder) -> Any:
    if order == "last_activity":
        return record.last_activity
    if order == "user_name":
        return record.token.user_name
    return record.token.created
