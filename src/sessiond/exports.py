"""Audit records as rows to export: JSON lines keep every value exactly; CSV neutralises cells a
spreadsheet would run as formulas (OWASP, "CSV injection"). Shared by the command line and the
console."""

from __future__ import annotations

import csv
import json
import unicodedata
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
# A spreadsheet reads a cell that starts with one of these as a formula (OWASP).
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
#: Characters that are not the ASCII ones but may be read as them: the minus sign (U+2212);
#: the fullwidth and small forms (U+FF1D, U+FF0B, U+FF0D, U+FF20; U+FE66, U+FE62, U+FE63,
#: U+FE6B) are read through NFKC.
_FORMULA_LOOKALIKES = frozenset("\u2212")
_FORMULA_CHARS = frozenset("=+-@")


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
    if isinstance(value, str) and looks_like_formula(value):
        return "'" + value
    return value


def looks_like_formula(text: str) -> bool:
    """True when a spreadsheet might run ``text`` as a formula: it starts with ``=``, ``+``,
    ``-``, ``@``, a tab or a carriage return (OWASP's list), or with one of the first four
    after any leading white space, control or invisible format characters (a space, NBSP,
    a zero-width space), or with a Unicode form of them (fullwidth U+FF1D, small U+FE62,
    the minus sign) — spreadsheets trim or fold some of these before they parse a cell."""
    if text.startswith(FORMULA_START):
        return True
    for char in text:
        if char.isspace() or unicodedata.category(char) in ("Cc", "Cf"):
            continue
        return char in _FORMULA_LOOKALIKES or unicodedata.normalize("NFKC", char) in _FORMULA_CHARS
    return False


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
