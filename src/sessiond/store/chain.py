"""The audit trail's hash chain: each record carries the SHA-256 of its own canonical form and
of the record before it, so that editing, removing or inserting a record breaks the chain at
that record.

Records are appended one at a time under a lock on the chain's head row (``audit_head``), which
also assigns their ids: ids are consecutive, and id order is chain order on every node. The
head row remembers the last id and hash, so that removing records from the end shows too.

What this does not do: someone who can write the database *and* recomputes every hash after
the record they changed (and the head) leaves a valid chain. Keep the head hash that
``sessiond audit verify`` prints somewhere the database's writers cannot reach (a log shipper,
a ticket) to pin the chain up to that point.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

GENESIS = "0" * 64
_FIELDS = (
    "id",
    "at",
    "action",
    "session_id",
    "user_id",
    "user_name",
    "actor_id",
    "actor_name",
    "client_address",
    "details",
)


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if value is None or isinstance(value, int | str):
        return value
    return str(value)  # UUIDs


def record_hash(prev_hash: str, row: Mapping[str, Any]) -> str:
    """The hash of one audit row (as stored: ``details`` is its JSON text) after ``prev_hash``."""
    fields = [_canonical(row[name]) for name in _FIELDS]
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(prev_hash.encode("ascii") + b"\n" + data).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking the chain: ``problem`` names the first bad record, or None."""

    checked: int
    last_id: int
    last_hash: str
    problem: str | None = None
    record_id: int | None = None

    @property
    def ok(self) -> bool:
        return self.problem is None


async def walk(rows: AsyncIterator[Mapping[str, Any]], head_id: int, head_hash: str) -> ChainReport:
    """Check every row (in id order) against the one before it and against the head."""
    prev_id, prev_hash, checked = 0, GENESIS, 0

    def bad(problem: str, record_id: int) -> ChainReport:
        return ChainReport(checked, prev_id, prev_hash, problem, record_id)

    async for row in rows:
        record_id = int(row["id"])
        if record_id > head_id:
            return bad(
                f"record {record_id} was added after the trail's last record {head_id}", record_id
            )
        if record_id != prev_id + 1:
            if record_id <= prev_id:
                return bad(f"record {record_id} is out of order (inserted?)", record_id)
            missing = _span(prev_id + 1, record_id - 1)
            return bad(f"{missing} removed: record {record_id} follows record {prev_id}", record_id)
        if row["prev_hash"] != prev_hash:
            return bad(
                f"record {record_id} does not follow record {prev_id} (inserted, or record "
                f"{prev_id} replaced)",
                record_id,
            )
        if row["hash"] != record_hash(prev_hash, row):
            return bad(
                f"record {record_id} was edited or inserted: its hash does not match its content",
                record_id,
            )
        prev_id, prev_hash, checked = record_id, str(row["hash"]), checked + 1
    if prev_id < head_id:
        return bad(f"{_span(prev_id + 1, head_id)} removed from the end of the trail", prev_id + 1)
    if prev_id > head_id:
        return bad(f"record {head_id + 1} was added after the trail's last record", head_id + 1)
    if prev_hash != head_hash:
        return bad(f"record {prev_id} does not match the trail's head (replaced?)", prev_id)
    return ChainReport(checked, prev_id, prev_hash)


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first} to {last}"
