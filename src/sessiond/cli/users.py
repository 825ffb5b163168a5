"""sessiond users: platform, Windows, LDAP and OpenID Connect users."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

import typer

from ..models import AccessLevel, LicenseType, LoginType
from ..service import Actor, SessionService
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _print_json,
    _require_store,
    _run,
    _settings,
    _table,
    _time,
    _with_service,
    out,
)

users_app = typer.Typer(
    no_args_is_help=True, help="Platform, Windows, LDAP and OpenID Connect users."
)


@users_app.command("add")
def users_add(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    name: Annotated[str | None, typer.Option(help="display name")] = None,
    password: Annotated[str | None, typer.Option(help="password (prompted if omitted)")] = None,
    admin: Annotated[bool, typer.Option("--admin", help="make an administrator")] = False,
    login_type: Annotated[
        str, typer.Option(help="Platform, Windows, Ldap, OpenId or None")
    ] = "Platform",
    account: Annotated[
        str | None,
        typer.Option(
            help="Windows (DOMAIN\\name or UPN), LDAP, or OpenId (ISSUER#SUBJECT) account"
        ),
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
        lambda s: s.users.add_user(
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
    login_type: Annotated[
        str | None, typer.Option(help="Platform, Windows, Ldap, OpenId or None")
    ] = None,
    account: Annotated[
        str | None,
        typer.Option(
            help="Windows (DOMAIN\\name or UPN), LDAP, or OpenId (ISSUER#SUBJECT) account"
        ),
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
        user = await s.users.update_user(
            Actor.system(),
            login,
            name=name,
            access_level=level,
            login_type=kind,
            account=account,
            time_zone_utc_offset=time_zone_offset,
            personal={
                LicenseType.PERSONAL_CLIENT: personal_client,
                LicenseType.PERSONAL_WEB: personal_web,
            },
        )
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
    users = _with_service(config, lambda s: s.users.list_users(Actor.system()))
    if as_json:
        from ..server.render import user_info

        _print_json([user_info(u) for u in users])
        return
    table = _table("login", "name", "id", "access", "login type", "account", "blocked", ids=("id",))
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
    _with_service(config, lambda s: s.users.set_password(Actor.system(), login, new))
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

    end = until.replace(tzinfo=until.tzinfo or UTC) if until else None
    _with_service(config, lambda s: s.users.set_blocked(Actor.system(), login, True, end))
    out.print(f"{login} blocked" + (f" until {_time(end)}" if end else ""), highlight=False)


@users_app.command("unblock")
def users_unblock(login: str, config: ConfigOption = None, data_dir: DataDirOption = None) -> None:
    """Lift a user's block."""
    _with_service(config, lambda s: s.users.set_blocked(Actor.system(), login, False))
    out.print(f"{login} unblocked", highlight=False)


@users_app.command("remove")
def users_remove(
    login: str,
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    yes: Annotated[bool, typer.Option("--yes", help="do not ask for confirmation")] = False,
) -> None:
    """Remove a user: their sessions end; every audit record about them stays."""
    if not yes:
        typer.confirm(f"Remove user {login}? Their sessions end.", abort=True)
    user = _with_service(config, lambda s: s.users.remove_user(Actor.system(), login))
    out.print(f"removed {user.login} ({user.id})", highlight=False)
