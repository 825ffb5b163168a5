"""sessiond licences: the installed licence, licence files and their keys."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..service import Actor
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _print_json,
    _with_service,
    err,
    out,
)

licences_app = typer.Typer(no_args_is_help=True, help="The licence: seats and validity.")


@licences_app.command("show")
def licences_show(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """The installed licence and how many seats of each kind are in use."""
    usage = _with_service(config, lambda s: s.licensing.usage(Actor.system()))
    if as_json:
        _print_json(usage)
        for warning in usage["Warnings"]:
            err.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False)
        return
    licence = usage["Licence"]
    if licence is None:
        out.print("no licence installed: seats are not limited")
    else:
        out.print(
            f"licence {licence['ID']} for {licence['Licensee']}, valid {licence['ValidFrom']} "
            f"to {licence['ValidTo']} ({'valid' if usage['Valid'] else 'NOT VALID NOW'}"
            f", {'signed' if licence['Signed'] else 'unsigned'}); when full: {usage['Policy']}",
            highlight=False,
        )
    for warning in usage["Warnings"]:
        err.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False)
    table = Table("seats", "in use", "licensed")
    for name, seat in usage["Seats"].items():
        table.add_row(
            name, str(seat["InUse"]), "-" if seat["Seats"] is None else str(seat["Seats"])
        )
    out.print(table)


@licences_app.command("install")
def licences_install(
    file: Path, config: ConfigOption = None, data_dir: DataDirOption = None
) -> None:
    """Check a licence file and install it for every node (a bad one changes nothing)."""
    with _warnings() as warnings:
        licence = _with_service(config, lambda s: s.licensing.install_file(str(file)))
    out.print(f"installed licence {licence.id} for {licence.licensee}", highlight=False)
    _print_warnings(warnings)


@licences_app.command("reload")
def licences_reload(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Install the licence file named by the licence_file setting again."""
    with _warnings() as warnings:
        licence = _with_service(config, lambda s: s.licensing.install_file())
    out.print(f"installed licence {licence.id} for {licence.licensee}", highlight=False)
    _print_warnings(warnings)


class _Collect(logging.Filter):
    def __init__(self) -> None:
        super().__init__()
        self.found: list[str] = []

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno != logging.WARNING:
            return True
        self.found.append(record.getMessage())
        return False


@contextlib.contextmanager
def _warnings() -> Iterator[list[str]]:
    """The warnings the service logs while installing a licence (the server's log needs
    them), kept out of the log here so that the command prints each once, as its own."""
    collect = _Collect()
    logger = logging.getLogger("sessiond.service")
    logger.addFilter(collect)
    try:
        yield collect.found
    finally:
        logger.removeFilter(collect)


def _print_warnings(warnings: list[str]) -> None:
    for warning in warnings:
        err.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False)


@licences_app.command("keygen")
def licences_keygen(
    private_key: Annotated[Path, typer.Option(help="where to write the private key (PEM, 0600)")],
) -> None:
    """Make an Ed25519 key pair for signing licences; prints the public key for servers'
    licence_public_key setting. Keep the private key with whoever issues licences."""

    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    fd = os.open(private_key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(pem)
    public = key.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw
    )
    import base64

    out.print(base64.b64encode(public).decode(), highlight=False)


@licences_app.command("sign")
def licences_sign(
    private_key: Annotated[Path, typer.Option(help="PEM private key from 'licences keygen'")],
    licence_id: Annotated[str, typer.Option("--id", help="licence number")],
    licensee: Annotated[str, typer.Option(help="who the licence is for")],
    valid_from: Annotated[str, typer.Option(help="date or UTC time")],
    valid_to: Annotated[str, typer.Option(help="date or UTC time")],
    concurrent_client: int = 0,
    personal_client: int = 0,
    concurrent_web: int = 0,
    personal_web: int = 0,
    output: Annotated[Path | None, typer.Option("--output", "-o")] = None,
) -> None:
    """Issue a signed licence file."""
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    from .. import licence as licences

    key = load_pem_private_key(private_key.read_bytes(), password=None)
    body = {
        "ID": licence_id,
        "Licensee": licensee,
        "ValidFrom": valid_from,
        "ValidTo": valid_to,
        "ConcurrentClient": concurrent_client,
        "PersonalClient": personal_client,
        "ConcurrentWeb": concurrent_web,
        "PersonalWeb": personal_web,
    }
    document = json.dumps(licences.sign(body, key), indent=2, ensure_ascii=False) + "\n"
    if output:
        output.write_text(document, encoding="utf-8")
    else:
        sys.stdout.write(document)
