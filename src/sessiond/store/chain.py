"""The audit trail's chain: each record carries a MAC of its own canonical form and of the
record before it, so that editing, removing or inserting a record breaks the chain at that
record.

Records are appended one at a time under a lock on the chain's head row (``audit_head``), which
also assigns their ids: ids are consecutive, and id order is chain order on every node. The
head row remembers the last id and hash, so that removing records from the end shows too.

Keyed chaining (migration 0008): from the head's ``keyed_from`` record on, each record's hash
is an HMAC-SHA256 under a key of the audit key ring, a file outside the database
(:class:`sessiond.keys.AuditKeyRing`); the record names the key (``key_id``). Someone who can
write the database but not read that file cannot make a record whose hash checks out. Records
before ``keyed_from`` (written before the upgrade) keep their unkeyed SHA-256 chain.

What the chain alone cannot show: records cut from the end together with the head row moved
back. A head saved outside the database (``ChainAnchor``: the log, the anchor file, an
operator's archive) shows that, and any rewrite of the records up to it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ..errors import SettingsError

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
_ANCHOR = re.compile(r"\s*(\d+):([0-9a-f]{64})\s*\Z")


def _canonical(value: Any) -> Any:
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat(timespec="microseconds")
    if value is None or isinstance(value, int | str):
        return value
    return str(value)  # UUIDs


def record_hash(prev_hash: str, row: Mapping[str, Any], key: bytes | None = None) -> str:
    """The hash of one audit row (as stored: ``details`` is its JSON text) after ``prev_hash``:
    unkeyed SHA-256 without ``key`` (records before keyed chaining), else HMAC-SHA256 over the
    same fields and the row's ``key_id``."""
    fields = [_canonical(row[name]) for name in _FIELDS]
    if key is not None:
        fields.append(row["key_id"])
    data = json.dumps(fields, ensure_ascii=False, separators=(",", ":")).encode()
    message = prev_hash.encode("ascii") + b"\n" + data
    if key is None:
        return hashlib.sha256(message).hexdigest()
    return hmac.new(key, message, hashlib.sha256).hexdigest()


@dataclass(frozen=True, slots=True)
class ChainKeys:
    """The audit key ring as the store uses it: the key new records are chained with, and
    every key older records name. ``where`` says, in messages, which file holds them."""

    keys: Mapping[str, bytes] = field(default_factory=dict)
    current: str | None = None
    where: str = "the audit key ring (audit_keys_file)"

    def signing(self) -> tuple[str, bytes]:
        if self.current is None or self.current not in self.keys:
            raise SettingsError(
                f"no audit key ring at {self.where}: audit records cannot be chained without "
                "it; point audit_keys_file at the server's audit key ring (copy it from a "
                "node that has it), or start 'sessiond serve' once to create one"
            )
        return self.current, self.keys[self.current]


@dataclass(frozen=True, slots=True)
class ChainAnchor:
    """A head saved outside the database: the id and hash of the trail's last record then,
    written ``ID:HASH`` (what ``sessiond audit verify`` prints and the anchor file holds)."""

    last_id: int
    last_hash: str

    def __str__(self) -> str:
        return f"{self.last_id}:{self.last_hash}"

    @classmethod
    def parse(cls, text: str) -> ChainAnchor:
        match = _ANCHOR.match(text)
        if not match:
            raise ValueError(
                "a saved head is written ID:HASH (a record id, a colon and 64 hex digits), as "
                "'sessiond audit verify' prints it and the audit anchor file holds it"
            )
        return cls(int(match.group(1)), match.group(2))


@dataclass(frozen=True, slots=True)
class ChainReport:
    """The outcome of walking the chain: ``problem`` names the first bad record, or None.
    ``keyed_from``: the first record chained with a key (records before it are unkeyed)."""

    checked: int
    last_id: int
    last_hash: str
    problem: str | None = None
    record_id: int | None = None
    keyed_from: int = 1

    @property
    def ok(self) -> bool:
        return self.problem is None

    @property
    def anchor(self) -> ChainAnchor:
        return ChainAnchor(self.last_id, self.last_hash)


@dataclass(frozen=True, slots=True)
class ChainHead:
    """The head row: the last record's id and hash, and where keyed chaining starts; and the
    audit key the last record names (None: no record, or an unkeyed one)."""

    last_id: int
    last_hash: str
    keyed_from: int
    last_key_id: str | None = None


async def walk(
    rows: AsyncIterator[Mapping[str, Any]],
    head: ChainHead,
    keys: ChainKeys,
    saved: ChainAnchor | None = None,
) -> ChainReport:
    """Check every row (in id order) against the one before it and against the head, and,
    given a head saved earlier, that the trail still reaches it unchanged."""
    prev_id, prev_hash, checked = 0, GENESIS, 0
    head_id, keyed_from = head.last_id, head.keyed_from

    def bad(problem: str, record_id: int) -> ChainReport:
        return ChainReport(checked, prev_id, prev_hash, problem, record_id, keyed_from)

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
        key_id = row["key_id"]
        key: bytes | None = None
        if record_id >= keyed_from:
            if key_id is None:
                return bad(
                    f"record {record_id} is not keyed, though keyed chaining starts at record "
                    f"{keyed_from}: it was rewritten by someone without the audit key",
                    record_id,
                )
            key = keys.keys.get(str(key_id))
            if key is None:
                return bad(
                    f"record {record_id} was chained with audit key {key_id}, which "
                    f"{keys.where} lacks: copy the audit key ring from the node that wrote it "
                    "(or restore it from a backup) and verify again",
                    record_id,
                )
        elif key_id is not None:
            return bad(
                f"record {record_id} names audit key {key_id}, though keyed chaining starts at "
                f"record {keyed_from} (the head was moved?)",
                record_id,
            )
        if row["hash"] != record_hash(prev_hash, row, key):
            return bad(
                f"record {record_id} was edited or inserted: its hash does not match its content",
                record_id,
            )
        prev_id, prev_hash, checked = record_id, str(row["hash"]), checked + 1
        if saved is not None and record_id == saved.last_id and prev_hash != saved.last_hash:
            return bad(
                f"the trail was rewritten since the saved head {saved}: record {record_id} "
                f"now has hash {prev_hash}",
                record_id,
            )
    if prev_id < head_id:
        return bad(f"{_span(prev_id + 1, head_id)} removed from the end of the trail", prev_id + 1)
    if prev_id > head_id:
        return bad(f"record {head_id + 1} was added after the trail's last record", head_id + 1)
    if prev_hash != head.last_hash:
        return bad(f"record {prev_id} does not match the trail's head (replaced?)", prev_id)
    if saved is not None and prev_id < saved.last_id:
        return bad(
            f"{_span(prev_id + 1, saved.last_id)} cut from the end since the saved head "
            f"{saved}: the trail now ends at record {prev_id}",
            prev_id + 1,
        )
    return ChainReport(checked, prev_id, prev_hash, keyed_from=keyed_from)


def _span(first: int, last: int) -> str:
    return f"record {first}" if first == last else f"records {first} to {last}"
