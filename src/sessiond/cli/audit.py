"""sessiond audit: export and verify the audit trail."""

from __future__ import annotations

import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape

from ..exports import csv_writer, write_csv_rows, write_jsonl
from ..models import AuditAction
from ..service import SessionService
from ..store import AuditQuery
from .common import (
    ConfigOption,
    DataDirOption,
    _with_service,
    err,
    out,
)

audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
PAGE = 1000


@audit_app.command("export")
def audit_export(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    format: Annotated[str, typer.Option("--format", "-f", help="jsonl or csv")] = "jsonl",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="file (default stdout)")
    ] = None,
    since: Annotated[datetime | None, typer.Option(help="only records at or after (ISO)")] = None,
    action: Annotated[str | None, typer.Option(help="only this action, e.g. Login")] = None,
) -> None:
    """Export the audit trail. In CSV, a cell that a spreadsheet would read as a formula
    (starting with = + - @, a tab or a carriage return) gets a leading '; JSON lines are exact."""
    if format not in ("jsonl", "csv"):
        raise typer.BadParameter("--format must be jsonl or csv")
    try:
        wanted = AuditAction.from_wire(action) if action else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None

    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    query = AuditQuery(actions=(wanted,) if wanted else (), since=start, limit=PAGE)

    async def export(service: SessionService) -> None:
        # A page at a time: a trail of millions of records never sits in memory whole.
        stream = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
        try:
            writer = csv_writer(stream) if format == "csv" else None
            after = None
            while True:
                page = await service.store.list_audit(replace(query, after_id=after))
                if writer is None:
                    write_jsonl(page, stream)
                else:
                    write_csv_rows(page, writer)
                if len(page) < PAGE:
                    stream.flush()  # here, where a reader gone away is seen and handled
                    return
                after = page[-1].id
        finally:
            if output:
                stream.close()

    _with_service(config, export)


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Check the audit trail's hash chain: exits 1 naming the first edited, removed or
    inserted record; prints the last record's id and hash to keep somewhere safe."""
    report = _with_service(config, lambda s: s.audit.verify())
    if not report.ok:
        err.print(
            f"[red]audit trail broken[/red] at record {report.record_id}: "
            f"{escape(report.problem or '')} ({report.checked} records before it check out)",
            highlight=False,
        )
        raise typer.Exit(1)
    out.print(
        f"audit trail intact: {report.checked} records; last record {report.last_id}, "
        f"hash {report.last_hash}",
        highlight=False,
    )
