"""Operator commands: serve, init, users, sessions, config, audit, keys, licences.

Administrative commands work on the store directly, as the server itself ("System"), so they
need the same settings (``--config``, ``--data-dir`` or ``SESSIOND_*``) as the server they
administer. Only ``serve`` and ``init`` create a store; the others refuse where there is none.

Exit statuses: 0 done; 1 refused (a sessiond error such as an unknown user); 2 a bad setting or
usage; 3 something cannot be reached (the database server); 4 no store where the settings point
(or one at a schema revision the command will not use).
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
import socket
import sys
from collections.abc import Awaitable, Callable, Coroutine
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, TypeVar
from uuid import UUID

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ._version import __version__
from .errors import ServiceUnavailable, SessiondError, SettingsError, StoreMissing, StoreOutdated
from .keys import KeyRing
from .models import AccessLevel, AuditAction, LicenseType, LoginType
from .service import Actor, SessionService
from .settings import Settings, load_settings, unknown_environment
from .store import AuditRecord

T = TypeVar("T")

#: Exit statuses (docs/operator.md, "Exit statuses").
EXIT_REFUSED = 1  # sessiond refused: an unknown user, a conflict, a rejected password...
EXIT_SETTINGS = 2  # a bad setting or file, or bad usage of the command line
EXIT_UNREACHABLE = 3  # something cannot be reached: the database server
EXIT_NO_STORE = 4  # no store where the settings point, or one at another schema revision

app = typer.Typer(no_args_is_help=True, help="sessiond: the platform's session server.")
users_app = typer.Typer(no_args_is_help=True, help="Platform, Windows and LDAP users.")
sessions_app = typer.Typer(no_args_is_help=True, help="Open sessions.")
config_app = typer.Typer(no_args_is_help=True, help="The configuration version.")
audit_app = typer.Typer(no_args_is_help=True, help="The audit trail.")
keys_app = typer.Typer(no_args_is_help=True, help="Token signature keys.")
licences_app = typer.Typer(no_args_is_help=True, help="The licence: seats and validity.")
app.add_typer(users_app, name="users")
app.add_typer(sessions_app, name="sessions")
app.add_typer(config_app, name="config")
app.add_typer(audit_app, name="audit")
app.add_typer(keys_app, name="keys")
app.add_typer(licences_app, name="licences")

# Piped output (scripts, files) gets wide tables, so ids are never cut.
out = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 250)
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
    from .store.existing import known_revision, newest_revision, store_revision

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
        from .server.app import build_service

        settings = _settings(config)
        await _require_store(settings)
        service = build_service(settings, create=False)
        await service.start()
        try:
            return await action(service)
        finally:
            await service.close()

    return _run(main())


def _print_json(value: Any) -> None:
    sys.stdout.write(json.dumps(value, ensure_ascii=False, indent=2) + "\n")


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


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


@app.command()
def serve(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run the server. With no settings: SQLite in ./sessiond-data, first administrator created."""
    from . import logs
    from .server.app import build_service
    from .server.run import CANNOT_LISTEN, CannotListen, bind
    from .server.run import serve as run_server

    try:
        settings = _settings(config, host=host, port=port)
    except SessiondError as exc:
        raise _fail(exc) from None
    logs.configure(settings)
    try:  # before the store is touched: a port in use ends the start here, in one line
        listener = bind(settings.host, settings.port)
    except CannotListen as exc:
        err.print(f"[red]error[/red] {escape(f'[{exc.code}]: {exc.message}')}", highlight=False)
        raise typer.Exit(CANNOT_LISTEN) from None

    async def bootstrap() -> None:
        service = build_service(settings)
        await service.start()
        try:
            created = await service.ensure_first_administrator()
        finally:
            await service.close()
        if created:
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
                out.print(
                    f"First administrator created: login {user.login} (password from settings)"
                )

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
        from .server.app import build_service
        from .store.existing import known_revision, store_revision

        before = await store_revision(settings.effective_database_url)
        if before is not None and not known_revision(before):
            raise StoreOutdated(
                f"the store at {settings.shown_database_url} is at schema revision {before}, "
                f"which sessiond {__version__} does not know: a newer sessiond made it"
            )
        service = build_service(settings)
        await service.start()
        try:
            return before, await service.ensure_first_administrator()
        finally:
            await service.close()

    before, created = _run(main())
    from .store.existing import newest_revision

    newest = newest_revision()
    if before is None:
        done = f"created the store (schema revision {newest})"
    elif before != newest:
        done = f"upgraded the store from schema revision {before} to {newest}"
    else:
        done = f"the store is already there (schema revision {newest})"
    _announce_first_administrator(created)
    out.print(
        f"{done}: {settings.shown_database_url}; key ring {settings.effective_keys_file.resolve()}",
        highlight=False,
    )


@app.command()
def openapi() -> None:
    """Print the HTTP API's OpenAPI document (JSON)."""
    import tempfile

    from .server.app import create_app

    # The document depends on no setting; a scratch data folder keeps this side-effect free.
    with tempfile.TemporaryDirectory() as scratch:
        try:
            settings = load_settings(None, data_dir=Path(scratch))
        except SessiondError as exc:
            raise _fail(exc) from None
        document = create_app(settings).openapi()
    out.print_json(json.dumps(document))


# --- users -----------------------------------------------------------------------------------


@users_app.command("add")
def users_add(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    password: Annotated[str | None, typer.Option(help="password (prompted if omitted)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="make an administrator")] = False,
    login_type: Annotated[str, typer.Option(help="Platform, Windows, Ldap or None")] = "Platform",
    account: Annotated[
        str | None, typer.Option(help="Windows (DOMAIN\\name or UPN) or LDAP account")
    ] = None,
) -> None:
    """Add a user."""
    try:
        kind = LoginType.from_wire(login_type)
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    if kind == LoginType.PLATFORM and password is None:
        _run(_require_store(_settings(config)))  # before asking for a password it cannot store
        password = typer.prompt("Password", hide_input=True, confirmation_prompt=True)
    user = _with_service(
        config,
        lambda s: s.add_user(
            Actor.system(),
            login,
            name=name,
            password=password if kind == LoginType.PLATFORM else None,
            access_level=AccessLevel.ADMINISTRATOR if admin else AccessLevel.REGULAR,
            login_type=kind,
            account=account,
        ),
    )
    out.print(f"added {user.login} ({user.id})", highlight=False)


@users_app.command("update")
def users_update(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    login_type: Annotated[str | None, typer.Option(help="Platform, Windows, Ldap or None")] = None,
    account: Annotated[
        str | None, typer.Option(help="Windows (DOMAIN\\name or UPN) or LDAP account")
    ] = None,
    admin: Annotated[
        bool | None, typer.Option("--admin/--regular", help="access level", show_default=False)
    ] = None,
    personal_client: Annotated[
        bool | None,
        typer.Option("--personal-client/--no-personal-client", help="personal client licence"),
    ] = None,
    personal_web: Annotated[
        bool | None,
        typer.Option("--personal-web/--no-personal-web", help="personal web licence"),
    ] = None,
    time_zone_offset: Annotated[
        int | None, typer.Option(help="the employee's UTC offset in minutes, e.g. 180")
    ] = None,
) -> None:
    """Change a user's name, login type, account, access level or personal licences."""
    try:
        kind = LoginType.from_wire(login_type) if login_type else None
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    level = None if admin is None else (AccessLevel.ADMINISTRATOR if admin else AccessLevel.REGULAR)

    async def action(s: SessionService) -> Any:
        user = await s.update_user(
            Actor.system(),
            login,
            name=name,
            access_level=level,
            login_type=kind,
            account=account,
            time_zone_utc_offset=time_zone_offset,
        )
        for kind_of, holds in (
            (LicenseType.PERSONAL_CLIENT, personal_client),
            (LicenseType.PERSONAL_WEB, personal_web),
        ):
            if holds is not None:
                user = await s.set_personal_licence(Actor.system(), user.login, kind_of, holds)
        return user

    user = _with_service(config, action)
    out.print(
        f"{user.login}: {user.login_type.wire}"
        + (f" account {user.account}" if user.account else "")
        + f", {user.access_level.wire}"
        + (", personal client licence" if user.personal_client else "")
        + (", personal web licence" if user.personal_web else ""),
        highlight=False,
    )


@users_app.command("list")
def users_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List users."""
    users = _with_service(config, lambda s: s.list_users(Actor.system()))
    if as_json:
        from .server.routes import user_info

        _print_json([user_info(u) for u in users])
        return
    table = Table("login", "name", "id", "access", "login type", "account", "blocked")
    for u in users:
        blocked = (
            ("until " + _time(u.blocked_due_date) if u.blocked_due_date else "yes")
            if u.blocked
            else ""
        )
        table.add_row(
            u.login,
            u.name,
            str(u.id),
            u.access_level.wire,
            u.login_type.wire,
            u.account or "",
            blocked,
        )
    out.print(table)


@users_app.command("set-password")
def users_set_password(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    password: Annotated[str | None, typer.Option(help="new password (prompted if omitted)")] = None,
) -> None:
    """Set a platform user's password."""
    if password is None:
        _run(_require_store(_settings(config)))  # before asking for a password it cannot store
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    new = password
    _with_service(config, lambda s: s.set_password(Actor.system(), login, new))
    out.print(f"password of {login} changed", highlight=False)


@users_app.command("block")
def users_block(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    until: Annotated[
        datetime | None, typer.Option(help="ISO time the block ends (default: until unblocked)")
    ] = None,
) -> None:
    """Block a user from signing in."""
    from datetime import UTC

    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    _with_service(config, lambda s: s.set_blocked(Actor.system(), login, True, end))
    out.print(f"{login} blocked" + (f" until {_time(end)}" if end else ""), highlight=False)


@users_app.command("unblock")
def users_unblock(login: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Lift a user's block."""
    _with_service(config, lambda s: s.set_blocked(Actor.system(), login, False))
    out.print(f"{login} unblocked", highlight=False)


# --- sessions --------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    user: Annotated[str | None, typer.Option(help="only this user's sessions (login)")] = None,
    as_json: JsonOption = False,
) -> None:
    """List open sessions."""

    async def action(s: SessionService) -> Any:
        user_id = (await s.get_user_by_login(user)).id if user else None
        return await s.list_sessions(Actor.system(), user_id)

    records = _with_service(config, action)
    if as_json:
        from .server.routes import session_info

        _print_json([session_info(r) for r in records])
        return
    table = Table("session", "user", "login type", "service", "created", "last activity", "from")
    for r in records:
        t = r.token
        table.add_row(
            str(t.session_id),
            t.user_name,
            t.login_type.wire,
            t.service_type.wire,
            _time(t.created),
            _time(r.last_activity),
            r.client_address or "",
        )
    out.print(table)


@sessions_app.command("close")
def sessions_close(
    session_id: Annotated[UUID | None, typer.Argument(help="the session to close")] = None,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    user: Annotated[str | None, typer.Option(help="close every session of this login")] = None,
) -> None:
    """Close a session, or every session of a user, as administrator."""
    if (session_id is None) == (user is None):
        raise typer.BadParameter("give a session id or --user LOGIN (one of them)")
    if user is not None:
        count = _with_service(config, lambda s: s.close_user_sessions(Actor.system(), user))
        out.print(f"closed {count} session(s) of {user}", highlight=False)
        return
    assert session_id is not None
    sid = session_id
    closed = _with_service(config, lambda s: s.close_session_as_admin(Actor.system(), sid))
    out.print("closed" if closed else "that session was not open")


# --- configuration ---------------------------------------------------------------------------


def _print_configuration(info: Any) -> None:
    for key, value in info.to_dict().items():
        out.print(f"{key}: {value if value is not None else ''}", highlight=False)


@config_app.command("show")
def config_show(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """Show the configuration version and build information."""
    info = _with_service(config, lambda s: s.get_configuration())
    if as_json:
        _print_json(info.to_dict())
        return
    _print_configuration(info)


@config_app.command("increment-version")
def config_increment(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Increment the configuration version: every client drops its caches."""
    _print_configuration(
        _with_service(config, lambda s: s.increment_configuration_version(Actor.system()))
    )


# --- audit -----------------------------------------------------------------------------------

_AUDIT_COLUMNS = [
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


def _audit_row(r: AuditRecord) -> dict[str, Any]:
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


# A spreadsheet reads a cell that starts with one of these as a formula (OWASP, CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _csv_cell(value: Any) -> Any:
    """A text cell a spreadsheet would run as a formula gets a leading ``'``: shown, not run."""
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


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
    from datetime import UTC

    start = since.replace(tzinfo=since.tzinfo or UTC) if since else None
    records = _with_service(config, lambda s: s.audit_records(since=start, action=wanted))
    stream = output.open("w", newline="", encoding="utf-8") if output else sys.stdout
    try:
        if format == "jsonl":
            for r in records:
                stream.write(json.dumps(_audit_row(r), ensure_ascii=False) + "\n")
        else:
            writer = csv.DictWriter(stream, fieldnames=_AUDIT_COLUMNS)
            writer.writeheader()
            for r in records:
                row = _audit_row(r)
                row["details"] = json.dumps(row["details"], ensure_ascii=False)
                writer.writerow({name: _csv_cell(value) for name, value in row.items()})
    finally:
        if output:
            stream.close()


@audit_app.command("verify")
def audit_verify(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Check the audit trail's hash chain: exits 1 naming the first edited, removed or
    inserted record; prints the last record's id and hash to keep somewhere safe."""
    report = _with_service(config, lambda s: s.verify_audit())
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


# --- keys ------------------------------------------------------------------------------------


def _key_ring(config: Path | None) -> tuple[Path, KeyRing]:
    """The existing key ring the settings name (never created here: init and serve do)."""
    settings = _settings(config)
    path = settings.effective_keys_file
    if not path.is_file():
        named = "signature_keys_file" if settings.signature_keys_file else "data_dir"
        raise StoreMissing(
            f"no signature key ring at {path.resolve()} ({named}); point this command at the "
            "server's settings with --config FILE (SESSIOND_CONFIG), --data-dir DIR "
            "(SESSIOND_DATA_DIR) or SESSIOND_SIGNATURE_KEYS_FILE, or create a store with "
            "'sessiond init'"
        )
    return path, KeyRing.load(path)


@keys_app.command("list")
def keys_list(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """List signature key ids (the current one marked)."""
    _, ring = _key_ring(config)
    if as_json:
        _print_json({"Current": ring.current, "Keys": list(ring.keys)})
        return
    for key_id in ring.keys:
        out.print(("* " if key_id == ring.current else "  ") + key_id, highlight=False)


@keys_app.command("rotate")
def keys_rotate(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Add a new signature key and sign new tokens with it; old tokens stay valid.
    Restart (or roll) the servers afterwards so they load it."""
    path, ring = _key_ring(config)
    key_id = ring.rotate()
    ring.save(path)
    out.print(f"new current key {key_id}", highlight=False)


@keys_app.command("retire")
def keys_retire(key_id: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Drop an old key: tokens it signed stop verifying (their holders sign in again)."""
    path, ring = _key_ring(config)
    ring.retire(key_id)
    ring.save(path)
    out.print(f"retired {key_id}", highlight=False)


# --- licences --------------------------------------------------------------------------------


@licences_app.command("show")
def licences_show(
    config: ConfigOption = None, data_dir: DataDirOption = None, as_json: JsonOption = False
) -> None:
    """The installed licence and how many seats of each kind are in use."""
    usage = _with_service(config, lambda s: s.licence_usage(Actor.system()))
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

    async def action(s: SessionService) -> tuple[Any, list[str]]:
        licence = await s.install_licence_file(str(file))
        return licence, await s.licensing.warnings()

    licence, warnings = _with_service(config, action)
    out.print(f"installed licence {licence.id} for {licence.licensee}", highlight=False)
    for warning in warnings:
        err.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False)


@licences_app.command("reload")
def licences_reload(config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Install the licence file named by the licence_file setting again."""
    licence = _with_service(config, lambda s: s.install_licence_file())
    out.print(f"installed licence {licence.id} for {licence.licensee}", highlight=False)


@licences_app.command("keygen")
def licences_keygen(
    private_key: Annotated[Path, typer.Option(help="where to write the private key (PEM, 0600)")],
) -> None:
    """Make an Ed25519 key pair for signing licences; prints the public key for servers'
    licence_public_key setting. Keep the private key with whoever issues licences."""
    import os

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

    from . import licence as licences

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


def main() -> None:
    # Everything sessiond writes (database, WAL, keys, exports) holds secrets or personal
    # data: readable by its own account only.
    os.umask(0o077)
    try:
        app()
    except SessiondError as exc:
        # Raised outside _run (settings, the key ring): one line and the status of its kind.
        raise SystemExit(_fail(exc).exit_code) from None
