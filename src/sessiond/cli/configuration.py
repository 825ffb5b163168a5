"""sessiond config: the configuration version."""

from __future__ import annotations

from typing import Any

import typer

from ..service import Actor
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _print_json,
    _with_service,
    out,
)

config_app = typer.Typer(no_args_is_help=True, help="The configuration version.")


def _print_configuration(info: Any) -> None:
    for key, value in info.to_dict().items():
        out.print(f"{key}: {value if value is not None else ''}", highlight=False)


@config_app.command("show")
def config_show(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Show the configuration version and build information."""
    info = _with_service(config, lambda s: s.configuration.get())
    if as_json:
        _print_json(info.to_dict())
        return
    _print_configuration(info)


@config_app.command("increment-version")
def config_increment(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Increment the configuration version: every client drops its caches."""
    _print_configuration(_with_service(config, lambda s: s.configuration.increment(Actor.system())))
