"""Audit records as rows to export: JSON lines keep every value exactly; CSV neutralises cells a
spreadsheet would run as formulas (OWASP, "CSV injection"). Shared by the command line and the
console."""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable
from typing import Any, TextIO

from .store import AuditRecord

AUDIT_COLUMNS = [
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
]
# A spreadsheet reads a cell that starts with one of these as a formula.
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def audit_row(r: AuditRecord) -> dict[str, Any]:
    return {
        "id": r.id,
        "at": r.at.isoformat(),
        "action": r.action.wire,
        "session_id": str(r.session_id) if r.session_id else None,
        "user_id": str(r.user_id) if r.user_id else None,
        "user_name": r.user_name,
        "actor_id": str(r.actor_id) if r.actor_id else None,
        "actor_name": r.actor_name,
        "client_address": r.client_address,
        "details": r.details,
    }


def csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading ``'``: shown, not run."""
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return "'" + value
    return value


def write_jsonl(records: Iterable[AuditRecord], stream: TextIO) -> None:
    for r in records:
        stream.write(json.dumps(audit_row(r), ensure_ascii=False) + "\n")


def csv_writer(stream: TextIO) -> csv.DictWriter[str]:
    """A CSV writer for audit rows, its header written."""
    writer = csv.DictWriter(stream, fieldnames=AUDIT_COLUMNS)
    writer.writeheader()
    return writer


def write_csv_rows(records: Iterable[AuditRecord], writer: csv.DictWriter[str]) -> None:
    for r in records:
        row = audit_row(r)
        row["details"] = json.dumps(row["details"], ensure_ascii=False)
        writer.writerow({name: csv_cell(value) for name, value in row.items()})
