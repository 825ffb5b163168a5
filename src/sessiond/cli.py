"""Operator commands: serve, users, sessions, config, audit, keys.

Administrative commands work on the store directly, as the server itself ("System"), so they
need the same settings (``--config`` or ``SESSIOND_*``) as the server they administer.
"""

from __future__ import annotations

import asyncio
import csv
import json
import os
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

from .errors import SessiondError, SettingsError
from .keys import KeyRing
from .models import AccessLevel, AuditAction, LicenseType, LoginType
from .service import Actor, SessionService
from .settings import Settings, load_settings
from .store import AuditRecord

T = TypeVar("T")

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


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return load_settings(config, **{k: v for k, v in overrides.items() if v is not None})


def _fail(exc: SessiondError) -> typer.Exit:
    err.print(f"[red]error[/red] {escape(f'[{exc.code}]: {exc.message}')}", highlight=False)
    return typer.Exit(1)


def _run(coro: Coroutine[Any, Any, T]) -> T:
    try:
        return asyncio.run(coro)
    except SessiondError as exc:
        raise _fail(exc) from None


def _with_service(config: Path | None, action: Callable[[SessionService], Awaitable[T]]) -> T:
    async def main() -> T:
        from .server.app import build_service

        service = build_service(_settings(config))
        await service.start()
        try:
            return await action(service)
        finally:
            await service.close()

    return _run(main())


def _time(value: datetime | None) -> str:
    return value.isoformat(timespec="seconds") if value else ""


@app.command()
def serve(
    config: ConfigOption = None,
    host: Annotated[str | None, typer.Option(help="address to listen on")] = None,
    port: Annotated[int | None, typer.Option(help="port to listen on")] = None,
) -> None:
    """Run the server. With no settings: SQLite in ./sessiond-data, first administrator created."""
    import uvicorn

    from .server.app import build_service, create_asgi
    from .server.protocol import http_protocol

    try:
        settings = _settings(config, host=host, port=port)
    except SessiondError as exc:
        raise _fail(exc) from None

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
    out.print(
        f"sessiond listening on http://{settings.host}:{settings.port} "
        f"(store: {settings.effective_database_url})",
        highlight=False,
    )
    uvicorn.run(
        create_asgi(settings),
        host=settings.host,
        port=settings.port,
        log_config=_log_config(),
        access_log=False,
        lifespan="on",
        # The client address comes from sessiond's own trusted_proxies rule (server/addresses.py)
        # alone: uvicorn's would rewrite it first, trusting X-Forwarded-For from loopback.
        proxy_headers=False,
        # httptools with limits on the size of a request head and the time it takes to arrive.
        http=http_protocol(settings),
    )


def _log_config() -> dict[str, Any]:
    """uvicorn's logging, with sessiond's own records in the same form and a timestamp."""
    from uvicorn.config import LOGGING_CONFIG

    config: dict[str, Any] = json.loads(json.dumps(LOGGING_CONFIG))
    config["formatters"]["default"]["fmt"] = "%(asctime)s %(levelprefix)s %(name)s: %(message)s"
    config["loggers"]["sessiond"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


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
def users_list(config: ConfigOption = None) -> None:
    """List users."""
    users = _with_service(config, lambda s: s.list_users(Actor.system()))
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
    password: Annotated[str | None, typer.Option(help="new password (prompted if omitted)")] = None,
) -> None:
    """Set a platform user's password."""
    if password is None:
        password = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    new = password
    _with_service(config, lambda s: s.set_password(Actor.system(), login, new))
    out.print(f"password of {login} changed", highlight=False)


@users_app.command("block")
def users_block(
    login: str,
    config: ConfigOption = None,
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
def users_unblock(login: str, config: ConfigOption = None) -> None:
    """Lift a user's block."""
    _with_service(config, lambda s: s.set_blocked(Actor.system(), login, False))
    out.print(f"{login} unblocked", highlight=False)


# --- sessions --------------------------------------------------------------------------------


@sessions_app.command("list")
def sessions_list(
    config: ConfigOption = None,
    user: Annotated[str | None, typer.Option(help="only this user's sessions (login)")] = None,
) -> None:
    """List open sessions."""

    async def action(s: SessionService) -> Any:
        user_id = (await s.get_user_by_login(user)).id if user else None
        return await s.list_sessions(Actor.system(), user_id)

    records = _with_service(config, action)
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
def config_show(config: ConfigOption = None) -> None:
    """Show the configuration version and build information."""
    _print_configuration(_with_service(config, lambda s: s.get_configuration()))


@config_app.command("increment-version")
def config_increment(config: ConfigOption = None) -> None:
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


# --- keys ------------------------------------------------------------------------------------


@keys_app.command("list")
def keys_list(config: ConfigOption = None) -> None:
    """List signature key ids (the current one marked)."""
    settings = _settings(config)
    path = settings.effective_keys_file
    if not path.exists():
        out.print(f"no key ring at {path} yet: the first start of the server makes one")
        return
    try:
        ring = KeyRing.load(path)
    except SettingsError as exc:
        raise _fail(exc) from None
    for key_id in ring.keys:
        out.print(("* " if key_id == ring.current else "  ") + key_id, highlight=False)


@keys_app.command("rotate")
def keys_rotate(config: ConfigOption = None) -> None:
    """Add a new signature key and sign new tokens with it; old tokens stay valid.
    Restart (or roll) the servers afterwards so they load it."""
    settings = _settings(config)
    path = settings.effective_keys_file
    try:
        if path.exists():
            ring = KeyRing.load(path)
            key_id = ring.rotate()
        else:
            ring = KeyRing.generate()
            key_id = ring.current
        ring.save(path)
    except SettingsError as exc:
        raise _fail(exc) from None
    out.print(f"new current key {key_id}", highlight=False)


@keys_app.command("retire")
def keys_retire(key_id: str, config: ConfigOption = None) -> None:
    """Drop an old key: tokens it signed stop verifying (their holders sign in again)."""
    settings = _settings(config)
    try:
        ring = KeyRing.load(settings.effective_keys_file)
        ring.retire(key_id)
        ring.save(settings.effective_keys_file)
    except SettingsError as exc:
        raise _fail(exc) from None
    out.print(f"retired {key_id}", highlight=False)


# --- licences --------------------------------------------------------------------------------


@licences_app.command("show")
def licences_show(config: ConfigOption = None) -> None:
    """The installed licence and how many seats of each kind are in use."""
    usage = _with_service(config, lambda s: s.licence_usage(Actor.system()))
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
def licences_install(file: Path, config: ConfigOption = None) -> None:
    """Check a licence file and install it for every node (a bad one changes nothing)."""

    async def action(s: SessionService) -> tuple[Any, list[str]]:
        licence = await s.install_licence_file(str(file))
        return licence, await s.licensing.warnings()

    licence, warnings = _with_service(config, action)
    out.print(f"installed licence {licence.id} for {licence.licensee}", highlight=False)
    for warning in warnings:
        err.print(f"[yellow]warning[/yellow]: {escape(warning)}", highlight=False)


@licences_app.command("reload")
def licences_reload(config: ConfigOption = None) -> None:
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
        raise SystemExit(_fail(exc).exit_code) from None
