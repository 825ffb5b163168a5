"""The audit trail in the service: reading it, the records the command line adds, checking its
chain, and writing its head outside the database. Reading a page and recording a key change
check the actor here (administrators); ``records``, ``verify`` and ``anchor`` are for in-process
use (the command line, the server's own schedule, tests), where no actor asks."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from pathlib import Path

from ..errors import SettingsError
from ..keys import AuditKeyRing
from ..models import AuditAction
from ..store import AuditQuery, AuditRecord, ChainAnchor, ChainKeys, ChainReport, Store
from .common import Actor, Clock, change_audit, require_admin

PAGE_LIMIT = 1000  # records in one page
log = logging.getLogger("sessiond.audit")


class Audit:
    def __init__(
        self,
        store: Store,
        clock: Clock,
        keys: AuditKeyRing | None,
        keys_file: Path,
        *,
        created: bool = False,
    ) -> None:
        """``keys``: the audit key ring (None: there is none at ``keys_file``; the store then
        refuses to write audit records, naming the file); ``created``: it was made just now."""
        self.store = store
        self.clock = clock
        self.created = created
        self.keys_file = keys_file
        where = f"{keys_file} (audit_keys_file)"
        store.audit_keys = (
            ChainKeys(dict(keys.keys), keys.current, where) if keys else ChainKeys(where=where)
        )
        self._anchored: ChainAnchor | None = None

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

    async def check_keys(self, *, warn: bool) -> None:
        """At start: the trail's last record was chained with a key this node has. A ring made
        at this start, on a trail keyed with others, is refused (and removed again): its
        records could be verified nowhere else. A ring that merely lacks a newer key (rotated
        on another node, not copied here yet) is warned of, when ``warn`` (a server)."""
        head = await self.store.audit_head()
        key_id = head.last_key_id
        if key_id is None or key_id in self.store.audit_keys.keys:
            return
        where = self.keys_file
        if self.created:
            where.unlink(missing_ok=True)
            raise SettingsError(
                f"the audit trail is chained with audit key {key_id}, and this server had no "
                f"audit key ring at {where} (audit_keys_file): a new one would chain records "
                "no other node could verify; copy the audit key ring the other nodes use there "
                "(or point audit_keys_file at it)"
            )
        if warn:
            log.warning(
                "the audit trail's last record was chained with audit key %s, which the audit key "
                "ring %s (audit_keys_file) lacks: copy it from the node that rotated it, so "
                "that this node can verify the trail",
                key_id,
                where,
            )

    async def verify(self, saved: ChainAnchor | None = None) -> ChainReport:
        """Walk the audit trail's chain (see ``sessiond.store.chain``); given a head saved
        earlier, also check that the trail still reaches it unchanged."""
        return await self.store.verify_audit(saved)

    async def head(self, actor: Actor) -> ChainAnchor:
        """The trail's head now, for an administrator to keep outside the database."""
        require_admin(actor, "read the audit trail")
        head = await self.store.audit_head()
        return ChainAnchor(head.last_id, head.last_hash)

    async def anchor(self, file: Path, node: str, *, always: bool = False) -> ChainAnchor | None:
        """Write the trail's head to the log and append it to ``file`` (``<time> <node>
        ID:HASH``), when it moved since this node last wrote it, or ``always`` (at shutdown).
        Returns what was written, or None."""
        head = await self.store.audit_head()
        anchor = ChainAnchor(head.last_id, head.last_hash)
        if anchor == self._anchored and not always:
            return None
        log.info("audit trail head %s (node %s)", anchor, node)
        line = f"{self.clock().isoformat(timespec='seconds')} {node} {anchor}\n"
        try:
            fd = os.open(file, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
            with os.fdopen(fd, "a", encoding="utf-8") as fh:
                fh.write(line)
        except OSError as exc:
            raise SettingsError(
                f"cannot append the audit trail's head to {file} (audit_anchor_file): "
                f"{exc.strerror}; point audit_anchor_file at a file this account can write"
            ) from None
        self._anchored = anchor
        return anchor
