"""sessiond serve, init and openapi: the commands that run or create a server."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape

from .._version import __version__
from ..errors import SessiondError, SettingsError, StoreOutdated
from ..settings import Settings, load_settings
from .common import (
    ConfigOption,
    DataDirOption,
    _fail,
    _run,
    _settings,
    app,
    err,
    out,
)


def _announce_first_administrator(created: tuple[Any, str | None] | None) -> None:
    if not created:
        return
    user, password = created
    if password:
        out.print(
            f"First administrator created: login [bold]{user.login}[/bold], one-time "
            f"password [bold]{password}[/bold]\nIt is shown only now and must be "
            "changed at the first sign-in (POST /api/v1/sessions/change-password), or "
            f"set with 'sessiond users set-password {user.login}'.",
            highlight=False,
        )
    else:
        out.print(f"First administrator created: login {user.login} (password from settings)")


def _warn_of_domain_lockout(settings: Settings) -> None:
    """One start-up line when sessiond's limits could let the domain lock accounts out."""
    from ..auth.directory import warn_once
    from ..service.lockout import domain_lockout_warning

    warning = domain_lockout_warning(settings)
    if warning:
        warn_once(warning)


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run the server. With no settings: SQLite in ./sessiond-data, first administrator created."""
    from .. import logs
    from ..server.app import build_service
    from ..server.run import CANNOT_LISTEN, CannotListen, bind
    from ..server.run import serve as run_server

    try:
        settings = _settings(config, host=host, port=port)
    except SessiondError as exc:
        raise _fail(exc) from None
    logs.configure(settings)
    _warn_of_domain_lockout(settings)
    from ..auth.checks import refusal, startup_problems

    problems = startup_problems(settings)  # a broken krb5.conf or keytab: refused now, not
    if problems:  # at the first sign-in (one line: the first problem)
        raise _fail(SettingsError(refusal(problems[0])))
    try:  # before the store is touched: a port in use ends the start here, in one line
        listener = bind(settings.host, settings.port)
    except CannotListen as exc:
        err.print(f"[red]error[/red] {escape(f'[{exc.code}]: {exc.message}')}", highlight=False)
        raise typer.Exit(CANNOT_LISTEN) from None

    async def bootstrap() -> None:
        service = build_service(settings)
        await service.start()
        try:
            created = await service.users.ensure_first_administrator()
        finally:
            await service.close()
        _announce_first_administrator(created)

    _run(bootstrap())

    def listening(url: str) -> None:  # only once the server accepts connections
        out.print(
            f"sessiond listening on {url} (store: {settings.shown_database_url})",
            highlight=False,
        )

    run_server(settings, listener, listening)


@app.command()
def init(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Create the store (data folder, database, key ring) and the first administrator, as the
    first 'sessiond serve' does, then exit. On an existing store: upgrade its schema."""
    settings = _settings(config)

    async def main() -> tuple[str | None, Any]:
        from ..server.app import build_service
        from ..store.existing import known_revision, store_revision

        before = await store_revision(settings.effective_database_url)
        if before is not None and not known_revision(before):
            raise StoreOutdated(
                f"the store at {settings.shown_database_url} is at schema revision {before}, "
                f"which sessiond {__version__} does not know: a newer sessiond made it"
            )
        service = build_service(settings)
        await service.start()
        try:
            return before, await service.users.ensure_first_administrator()
        finally:
            await service.close()

    before, created = _run(main())
    from ..store.existing import newest_revision

    newest = newest_revision()
    if before is None:
        done = f"created the store (schema revision {newest})"
    elif before != newest:
        done = f"upgraded the store from schema revision {before} to {newest}"
    else:
        done = f"the store is already there (schema revision {newest})"
    _announce_first_administrator(created)
    out.print(
        f"{done}: {settings.shown_database_url}; key ring {settings.effective_keys_file.resolve()}"
        f"; audit key ring {settings.effective_audit_keys_file.resolve()}",
        highlight=False,
    )


@app.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI document (JSON)."""
    import tempfile

    from ..server.app import create_app

    # The document depends on no setting; a scratch data folder keeps this side-effect free.
    with tempfile.TemporaryDirectory() as scratch:
        try:
            settings = load_settings(None, data_dir=Path(scratch))
        except SessiondError as exc:
            raise _fail(exc) from None
        document = create_app(settings).openapi()
    out.print_json(json.dumps(document))
