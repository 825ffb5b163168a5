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
from ..keys import AuditKeyRing
from ..models import AuditAction
from ..service import SessionService
from ..store import AuditQuery, ChainAnchor
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _no_key_ring,
    _print_key_ids,
    _settings,
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


def _anchor(value: str | None) -> ChainAnchor | None:
    if value is None:
        return None
    try:
        return ChainAnchor.parse(value)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None


@audit_app.command("verify")
def audit_verify(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    head: Annotated[
        str | None,
        typer.Option(
            "--head",
            help="a head saved earlier (ID:HASH, as this command prints it and the audit "
            "anchor file holds it): also check that the trail still reaches it unchanged",
        ),
    ] = None,
) -> None:
    """Check the audit trail's chain: exits 1 naming the first edited, removed or inserted
    record, or (with --head) records cut from the end or rewritten since that head; prints
    the head (ID:HASH) to keep somewhere the database's writers cannot reach."""
    saved = _anchor(head)
    report = _with_service(config, lambda s: s.audit.verify(saved))
    if not report.ok:
        err.print(
            f"[red]audit trail broken[/red] at record {report.record_id}: "
            f"{escape(report.problem or '')} ({report.checked} records before it check out)",
            highlight=False,
        )
        raise typer.Exit(1)
    keyed = (
        "all keyed"
        if report.keyed_from <= 1
        else f"records 1 to {report.keyed_from - 1} unkeyed, from before keyed chaining"
    )
    reaches = f"; reaches the saved head {saved}" if saved else ""
    out.print(
        f"audit trail intact: {report.checked} records ({keyed}){reaches}; head {report.anchor}",
        highlight=False,
    )


def _audit_keys(config: Path | None) -> tuple[Path, AuditKeyRing]:
    """The existing audit key ring the settings name (never created here: init and serve
    do)."""
    path = _settings(config).effective_audit_keys_file
    ring = AuditKeyRing.open(path, create=False)
    if ring is None:
        raise _no_key_ring("audit key ring", path, "audit_keys_file", "SESSIOND_AUDIT_KEYS_FILE")
    return path, ring


@audit_app.command("keys")
def audit_keys(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List the audit key ids (the current one, which chains new records, marked)."""
    _, ring = _audit_keys(config)
    _print_key_ids(ring.keys, ring.current, as_json)


@audit_app.command("rotate-key")
def audit_rotate_key(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Add a new audit key and chain new records with it; older keys stay to verify the
    records they chained. Copy the file to every node and restart them to use it."""
    path, ring = _audit_keys(config)
    key_id = ring.rotate()
    ring.save(path)
    out.print(f"new current audit key {key_id}", highlight=False)
