"""sessiond sessions: list and close open sessions."""

from __future__ import annotations

from typing import Annotated, Any
from uuid import UUID

import typer

from ..service import Actor, SessionService
from .common import (
    ConfigOption,
    DataDirOption,
    JsonOption,
    _print_json,
    _table,
    _time,
    _with_service,
    out,
)

sessions_app = typer.Typer(no_args_is_help=True, help="Open sessions.")


@sessions_app.command("list")
def sessions_list(
    config: ConfigOption = None,
    data_dir: DataDirOption = None,
    user: Annotated[str | None, typer.Option(help="only this user's sessions (login)")] = None,
    as_json: JsonOption = False,
) -> None:
    """List open sessions."""

    async def action(s: SessionService) -> Any:
        user_id = (await s.users.get_user_by_login(user)).id if user else None
        return await s.sessions.list_sessions(Actor.system(), user_id)

    records = _with_service(config, action)
    if as_json:
        from ..server.render import session_info

        _print_json([session_info(r) for r in records])
        return
    table = _table(
        "session",
        "user",
        "login type",
        "service",
        "created",
        "last activity",
        "from",
        ids=("session",),
    )
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
    closed = _with_service(config, lambda s: s.sessions.close_session_as_admin(Actor.system(), sid))
    out.print("closed" if closed else "that session was not open")
