"""sessiond keys: the token signature key ring."""

from __future__ import annotations

from pathlib import Path

import typer

from ..keys import KeyRing
from ..models import AuditAction
from ..service import Actor
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _no_key_ring,
    _print_key_ids,
    _settings,
    _with_service,
    out,
)

keys_app = typer.Typer(no_args_is_help=True, help="Token signature keys.")


def _key_ring(config: Path | None) -> tuple[Path, KeyRing]:
    """The existing key ring the settings name (never created here: init and serve do)."""
    settings = _settings(config)
    path = settings.effective_keys_file
    if not path.is_file():
        named = "signature_keys_file" if settings.signature_keys_file else "data_dir"
        raise _no_key_ring("signature key ring", path, named, "SESSIOND_SIGNATURE_KEYS_FILE")
    return path, KeyRing.load(path)


@keys_app.command("list")
def keys_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List signature key ids (the current one marked)."""
    _, ring = _key_ring(config)
    _print_key_ids(ring.keys, ring.current, as_json)


@keys_app.command("rotate")
def keys_rotate(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Add a new signature key and sign new tokens with it; old tokens stay valid.
    Restart (or roll) the servers afterwards so they load it."""
    path, ring = _key_ring(config)
    key_id = ring.rotate()
    _record(config, AuditAction.SIGNATURE_KEY_ROTATED, key_id)
    ring.save(path)
    out.print(f"new current key {key_id}", highlight=False)


@keys_app.command("retire")
def keys_retire(key_id: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Drop an old key: tokens it signed stop verifying (their holders sign in again)."""
    path, ring = _key_ring(config)
    ring.retire(key_id)
    _record(config, AuditAction.SIGNATURE_KEY_RETIRED, key_id)
    ring.save(path)
    out.print(f"retired {key_id}", highlight=False)


def _record(config: Path | None, action: AuditAction, key_id: str) -> None:
    """The audit record first: a change the trail cannot record is not made."""
    _with_service(config, lambda s: s.audit.record_key_change(Actor.system(), action, key_id))
