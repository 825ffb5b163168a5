"""What every command shares: the settings of this run, the options, the exit statuses, and
running a command's work on an existing store.

Exit statuses: 0 done; 1 refused (a sessiond error such as an unknown user); 2 a bad setting or
usage; 3 something cannot be reached (the database server); 4 no store where the settings point
(or one at a schema revision the command will not use).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .._version import __version__
from ..errors import (
    ServiceUnavailable,
    SessiondError,
    SettingsError,
    StoreMissing,
    StoreOutdated,
    StoreReadOnly,
)
from ..service import SessionService
from ..settings import Settings, load_settings, unknown_environment

T = TypeVar("T")

#: Exit statuses (docs/operator.md, "Exit statuses").
EXIT_REFUSED = 1  # sessiond refused: an unknown user, a conflict, a rejected password...
EXIT_SETTINGS = 2  # a bad setting or file, or bad usage of the command line
EXIT_UNREACHABLE = 3  # something cannot be reached: the database server
EXIT_NO_STORE = 4  # no store where the settings point, or one at another schema revision
EXIT_BROKEN_PIPE = 141  # the reader of the output went away: 128 + SIGPIPE, as a shell says

app = typer.Typer(no_args_is_help=True, help="sessiond: the platform's session server.")


def reader_gone() -> NoReturn:
    """The program reading the output stopped (``sessiond audit export | head -1``): end
    quietly with 141, the status of a Unix tool that SIGPIPE ended, as a shell reports it
    (the command line's own handling would say 1, and the database's would say 3)."""
    # Python would try to flush standard output once more at exit, and complain on stderr.
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    raise SystemExit(EXIT_BROKEN_PIPE)


class _Output(Console):
    def on_broken_pipe(self) -> None:
        self.quiet = True
        reader_gone()


# Piped output (scripts, files) gets wide tables, so ids are never cut.
out = _Output(soft_wrap=True, width=None if sys.stdout.isatty() else 250)
err = Console(stderr=True, soft_wrap=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="TOML settings file (or SESSIOND_CONFIG)", show_default=False
    ),
]
_data_dir: Path | None = None  # --data-dir of this run


def _remember_data_dir(value: Path | None) -> Path | None:
    global _data_dir
    if value is not None:
        _data_dir = value
    return value


# Every command that reads the settings takes --data-dir; the option hands its value to
# _settings() itself, so a command body need not pass it on.
DataDirOption = Annotated[
    Path | None,
    typer.Option(
        "--data-dir",
        help="data folder: the SQLite database and the key ring (or SESSIOND_DATA_DIR)",
        show_default=False,
        callback=_remember_data_dir,
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="print JSON (machine-readable) instead of a table")
]

_warned = False
_loaded: Settings | None = None  # the settings of this run, for messages


def _version(value: bool) -> None:
    if value:
        out.print(f"sessiond {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="print the version and exit"
        ),
    ] = False,
) -> None:
    """sessiond: the platform's session server."""


def _settings(config: Path | None, **overrides: Any) -> Settings:
    """The settings of this command: explicit overrides and ``--data-dir``, then the
    environment, then the file (``--config``)."""
    global _loaded, _warned
    if overrides.get("data_dir") is None:
        overrides["data_dir"] = _data_dir
    if not _warned:
        _warned = True
        unknown = unknown_environment()
        if unknown:
            err.print(
                f"[yellow]warning[/yellow]: {escape(', '.join(unknown))} "
                + ("names no sessiond setting" if len(unknown) == 1 else "name no sessiond setting")
                + "; ignored",
                highlight=False,
            )
    _loaded = load_settings(config, **{k: v for k, v in overrides.items() if v is not None})
    return _loaded


def _exit_status(exc: SessiondError) -> int:
    if isinstance(exc, StoreMissing):
        return EXIT_NO_STORE
    if isinstance(exc, SettingsError):
        return EXIT_SETTINGS
    if isinstance(exc, ServiceUnavailable):
        return EXIT_UNREACHABLE
    return EXIT_REFUSED


def _fail(exc: SessiondError) -> typer.Exit:
    err.print(f"[red]error[/red] {escape(f'[{exc.code}]: {exc.message}')}", highlight=False)
    return typer.Exit(_exit_status(exc))


def _run(coro: Coroutine[Any, Any, T]) -> T:
    """Run a command's work on the store; its refusals end the command with one line."""
    where = f"the database {_loaded.shown_database_url}" if _loaded else "the database"
    try:
        return asyncio.run(coro)
    except StoreReadOnly:
        raise _fail(
            StoreReadOnly(
                f"{where} (database_url) is read-only: no host it names is the primary now "
                "(a standby, or a failover under way); point database_url at the primary, or "
                "list every server of the cluster in it, or try again once the failover is over"
            )
        ) from None
    except ServiceUnavailable as exc:
        if "session store" not in exc.message:  # a directory or a KDC: its own words
            raise _fail(exc) from None
        # The store's words are for API callers (the cause is in the log line before this);
        # the operator learns which setting to check.
        raise _fail(
            ServiceUnavailable(
                f"cannot reach {where} (database_url): start the database, or correct database_url"
            )
        ) from None
    except SessiondError as exc:
        raise _fail(exc) from None
    except BrokenPipeError:
        reader_gone()  # the reader of the output went away (``| head``): not the database
    except (ConnectionError, TimeoutError, socket.gaierror) as exc:
        # A database server that does not answer, before the store could say so itself.
        raise _fail(
            ServiceUnavailable(
                f"cannot reach {where} (database_url): {exc}; start the database, or correct "
                "database_url"
            )
        ) from None
    except Exception as exc:
        if not type(exc).__module__.startswith("alembic"):
            raise
        # A migration that cannot run: above all a store made by a newer sessiond.
        raise _fail(
            StoreOutdated(
                f"cannot bring the store in {where} to this sessiond's schema: {exc}; a store "
                f"made by a newer sessiond than {__version__} needs that version"
            )
        ) from None


async def _require_store(settings: Settings) -> None:
    """Refuse unless the settings point at a store made by ``serve`` or ``init``, at this
    sessiond's schema revision; look without creating or changing anything."""
    from ..store.existing import known_revision, newest_revision, store_revision

    revision = await store_revision(settings.effective_database_url)
    if settings.database_url is None:
        where = (
            f"the data folder {settings.data_dir.resolve()} "
            f"(database {settings.shown_database_url})"
        )
    else:
        where = f"the database {settings.shown_database_url} (database_url)"
    if revision is None:
        raise StoreMissing(
            f"no sessiond store in {where}; point this command at the server's settings with "
            "--config FILE (SESSIOND_CONFIG), --data-dir DIR (SESSIOND_DATA_DIR) or "
            "SESSIOND_DATABASE_URL, or create a store with 'sessiond init'"
        )
    newest = newest_revision()
    if revision == newest:
        return
    if known_revision(revision):
        raise StoreOutdated(
            f"the store in {where} is at schema revision {revision}, older than this "
            f"sessiond's {newest}: run 'sessiond serve' or 'sessiond init' with the same "
            "settings once to upgrade it (administrative commands do not migrate)"
        )
    raise StoreOutdated(
        f"the store in {where} is at schema revision {revision}, which sessiond {__version__} "
        "does not know: a newer sessiond made it; use that version"
    )


def _with_service(config: Path | None, action: Callable[[SessionService], Awaitable[T]]) -> T:
    """Run ``action`` on the existing store (never created or migrated here)."""

    async def main() -> T:
        from ..server.app import build_service

        settings = _settings(config)
        await _require_store(settings)
        service = build_service(settings, create=False)
        await service.start()
        try:
            return await action(service)
        finally:
            await service.close()

    return _run(main())


def _table(*headers: str, ids: tuple[str, ...] = ()) -> Table:
    """A table for the terminal that never cuts an id (so that it can be copied into another
    command): the columns named in ``ids`` keep their full width, the others wrap."""
    table = Table()
    for header in headers:
        if header in ids:
            table.add_column(header, no_wrap=True, min_width=36)
        else:
            table.add_column(header, overflow="fold")
    return table


def _print_json(value: Any) -> None:
    try:
        sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")
        sys.stdout.flush()
    except BrokenPipeError:
        reader_gone()


def _print_key_ids(keys: Iterable[str], current: str, as_json: bool) -> None:
    """A key ring's key ids, one a line with the current one marked ``*``; or, ``as_json``,
    ``{"Current": id, "Keys": [ids]}``."""
    if as_json:
        _print_json({"Current": current, "Keys": list(keys)})
        return
    for key_id in keys:
        out.print(("* " if key_id == current else "  ") + key_id, highlight=False)


def _no_key_ring(what: str, path: Path, setting: str, variable: str) -> StoreMissing:
    """The refusal of a command that needs a key ring the settings name but that is missing
    (``init`` and ``serve`` create key rings; the other commands never do)."""
    return StoreMissing(
        f"no {what} at {path.resolve()} ({setting}); point this command at the server's "
        f"settings with --config FILE (SESSIOND_CONFIG), --data-dir DIR (SESSIOND_DATA_DIR) "
        f"or {variable}, or create a store with 'sessiond init'"
    )


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


def main() -> None:
    # Everything sessiond writes (database, WAL, keys, exports) holds secrets or personal
    # data: readable by its own account only.
    os.umask(0o077)
    try:
        app()
    except SessiondError as exc:
        # Raised outside _run (settings, the key ring): one line and the status of its kind.
        raise SystemExit(_fail(exc).exit_code) from None
    except BrokenPipeError:
        reader_gone()
