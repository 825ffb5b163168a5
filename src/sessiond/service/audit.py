"""The audit trail in the service: reading it, the records the command line adds, and
checking its hash chain. Reading a page and recording a key change check the actor here
(administrators); ``records`` and ``verify`` are for in-process use (the command line, tests),
where no actor asks."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime

from ..models import AuditAction
from ..store import AuditQuery, AuditRecord, ChainReport, Store
from .common import Actor, Clock, change_audit, require_admin

PAGE_LIMIT = 1000  # records in one page


class Audit:
    def __init__(self, store: Store, clock: Clock) -> None:
        self.store = store
        self.clock = clock

    async def records(
        self,
        *,
        since: datetime | None = None,
        action: AuditAction | None = None,
        after_id: int | None = None,
        limit: int | None = None,
    ) -> Sequence[AuditRecord]:
        """Audit records, oldest first (in-process use: the CLI, tests)."""
        query = AuditQuery(
            actions=(action,) if action else (), since=since, after_id=after_id, limit=limit
        )
        return await self.store.list_audit(query)

    async def page(
        self, actor: Actor, query: AuditQuery, limit: int = 100
    ) -> tuple[list[AuditRecord], int | None]:
        """One page of the audit trail for an administrator, and the id to continue after (or
        before, newest first); None when this was the last page."""
        require_admin(actor, "read the audit trail")
        limit = max(1, min(limit, PAGE_LIMIT))
        records = list(await self.store.list_audit(replace(query, limit=limit + 1)))
        more = len(records) > limit
        records = records[:limit]
        return records, (records[-1].id if more and records else None)

    async def record_key_change(self, actor: Actor, action: AuditAction, key_id: str) -> None:
        """A SignatureKeyRotated or SignatureKeyRetired record (the key ring is a file the
        command line changes; the record goes where every node's records go)."""
        require_admin(actor, "change the signature keys")
        record = change_audit(action, self.clock(), actor, details={"key_id": key_id})
        await self.store.add_audit(record)

    async def verify(self) -> ChainReport:
        """Walk the audit trail's hash chain (see ``sessiond.store.chain``)."""
        return await self.store.verify_audit()
