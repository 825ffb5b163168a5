"""The users pages: the list and a new user; one user's page: what they are, their personal
licences, block and unblock, a new password, their sessions, and removal (confirmed)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from starlette.datastructures import FormData
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import RequestError, SessiondError
from ...models import AccessLevel, LicenseType, LoginType, openid_identity
from ...store import UserRecord
from . import auth, forms
from .auth import Viewer
from .web import redirect, render

LOGIN_TYPES = [t.wire for t in LoginType]
ACCESS_LEVELS = [a.wire for a in AccessLevel]
USERS_PAGE = 50


def _user_query(login: str) -> list[tuple[str, str]]:
    return [("login", login)]


async def users_page(
    request: Request,
    who: Viewer | None = None,
    *,
    status: int = 200,
    error: str | None = None,
    values: dict[str, str] | None = None,
) -> Response:
    who = who or await auth.viewer(request)
    params = request.query_params
    search, after = forms.text(params, "q"), forms.text(params, "after")
    users = await auth.service_of(request).users.list_users(who.actor)
    shown, following = users_page_of(users, search, after)
    context = {
        "title": "Users",
        "viewer": who,
        "users": shown,
        "search": search,
        "after": after,
        "next_query": forms.query_string({"q": search}, after=following) if following else None,
        "first_query": forms.query_string({"q": search}),
        "login_types": LOGIN_TYPES,
        "access_levels": ACCESS_LEVELS,
        "values": values or {"login_type": "Platform", "access_level": "Regular"},
    }
    return render(request, "users.html", context, status=status, error=error)


def users_page_of(
    users: Sequence[UserRecord], search: str, after: str, size: int = USERS_PAGE
) -> tuple[list[UserRecord], str | None]:
    """A page of users in the order of their logins (ignoring case): those whose login or
    name contains ``search`` (ignoring case), after the login ``after``; and the login to
    continue after (None: this was the last page)."""
    needle = search.casefold()
    found = sorted(
        (u for u in users if needle in u.login.casefold() or needle in u.name.casefold()),
        key=lambda u: (u.login.casefold(), u.login),
    )
    if after:
        mark = after.casefold()
        found = [u for u in found if u.login.casefold() > mark]
    page = found[:size]
    return page, page[-1].login if len(found) > size else None


async def add_user(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    fields = ("login", "name", "access_level", "login_type", "account")
    values = {name: forms.text(form, name) for name in fields}
    try:
        login_type = forms.choice(LoginType, values["login_type"], "login type")
        login_type = login_type if login_type is not None else LoginType.PLATFORM
        password = forms.secret(form, "password")
        if password != forms.secret(form, "repeat_password"):
            raise RequestError("The password and its repetition differ.")
        if login_type == LoginType.PLATFORM and not password:
            raise RequestError("A Platform user needs a password.")
        level = forms.choice(AccessLevel, values["access_level"], "access level")
        user = await auth.service_of(request).users.add_user(
            who.actor,
            values["login"],
            name=values["name"] or None,
            password=password or None,
            access_level=level if level is not None else AccessLevel.REGULAR,
            login_type=login_type,
            account=values["account"] or None,
        )
    except SessiondError as exc:
        return await users_page(request, who, status=exc.status, error=exc.message, values=values)
    return redirect("/user", "user-added", params=_user_query(user.login))


async def user_page(
    request: Request,
    who: Viewer | None = None,
    login: str | None = None,
    *,
    status: int = 200,
    error: str | None = None,
) -> Response:
    who = who or await auth.viewer(request)
    login = login if login is not None else forms.text(request.query_params, "login")
    service = auth.service_of(request)
    try:
        user = await service.users.get_user_by_login(login)
    except SessiondError as exc:
        return await users_page(request, who, status=exc.status, error=exc.message)
    context = _user_context(who, user)
    context["openid"] = _openid_mapping(service, user)
    return render(request, "user.html", context, status=status, error=error)


def _openid_mapping(service: Any, user: UserRecord) -> dict[str, str] | None:
    """An OpenId user's mapping: the provider (by its issuer), the issuer and the subject."""
    pair = openid_identity(user.account) if user.login_type == LoginType.OPEN_ID else None
    if pair is None:
        return None
    issuer, subject = pair
    named = [p for p in service.openid.providers() if p.Issuer == issuer]
    provider = f"{named[0].DisplayName} ({named[0].Name})" if named else "none configured here"
    return {"provider": provider, "issuer": issuer, "subject": subject}


def _user_context(who: Viewer, user: UserRecord) -> dict[str, Any]:
    return {
        "title": f"User {user.login}",
        "viewer": who,
        "user": user,
        "openid": None,
        "login_types": LOGIN_TYPES,
        "access_levels": ACCESS_LEVELS,
        "blocked_until": forms.time_field(user.blocked_due_date),
        "sessions_query": forms.query_string({"login": user.login}),
    }


async def _act(request: Request, done: str, action: Any) -> Response:
    """Run ``action(service, who, login, form)`` for a posted user form; back to the user's
    page with a notice, or with the service's message."""
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    login = forms.text(form, "login")
    try:
        result = await action(auth.service_of(request), who, login, form)
    except SessiondError as exc:
        return await user_page(request, who, login, status=exc.status, error=exc.message)
    if isinstance(result, UserRecord):
        login = result.login
    return redirect("/user", done, params=_user_query(login))


def _box(form: FormData, field: str, held: bool) -> bool | None:
    """A personal licence's box, as a change (None: as it is)."""
    holds = form.get(field) == "on"
    return holds if holds != held else None


async def update_user(request: Request) -> Response:
    async def action(service: Any, who: Viewer, login: str, form: FormData) -> UserRecord:
        user: UserRecord = await service.users.get_user_by_login(login)
        level = forms.choice(AccessLevel, forms.text(form, "access_level"), "access level")
        kind = forms.choice(LoginType, forms.text(form, "login_type"), "login type")
        name, account = forms.text(form, "name"), forms.text(form, "account")
        offset = forms.integer(forms.text(form, "time_zone"), "time zone offset")
        user = await service.users.update_user(
            who.actor,
            login,
            name=name if name and name != user.name else None,
            access_level=level if level != user.access_level else None,
            login_type=kind if kind != user.login_type else None,
            account=account if account and account != user.account else None,
            time_zone_utc_offset=offset if offset != user.time_zone_utc_offset else None,
            personal={
                LicenseType.PERSONAL_CLIENT: _box(form, "personal_client", user.personal_client),
                LicenseType.PERSONAL_WEB: _box(form, "personal_web", user.personal_web),
            },
        )
        return user

    return await _act(request, "user-changed", action)


async def block_user(request: Request) -> Response:
    async def action(service: Any, who: Viewer, login: str, form: FormData) -> UserRecord:
        until = forms.utc_time(forms.text(form, "until"), "blocked until")
        user: UserRecord = await service.users.set_blocked(who.actor, login, True, until)
        return user

    return await _act(request, "user-blocked", action)


async def unblock_user(request: Request) -> Response:
    async def action(service: Any, who: Viewer, login: str, form: FormData) -> UserRecord:
        user: UserRecord = await service.users.set_blocked(who.actor, login, False)
        return user

    return await _act(request, "user-unblocked", action)


async def set_password(request: Request) -> Response:
    async def action(service: Any, who: Viewer, login: str, form: FormData) -> UserRecord:
        password = forms.secret(form, "password")
        if not password:
            raise RequestError("Give the new password.")
        if password != forms.secret(form, "repeat_password"):
            raise RequestError("The password and its repetition differ.")
        user: UserRecord = await service.users.set_password(who.actor, login, password)
        return user

    return await _act(request, "password-set", action)


async def close_sessions(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    login = forms.text(form, "login")
    try:
        count = await auth.service_of(request).close_user_sessions(who.actor, login)
    except SessiondError as exc:
        return await user_page(request, who, login, status=exc.status, error=exc.message)
    return redirect("/user", "closed-user", count, params=_user_query(login))


async def remove_page(request: Request) -> Response:
    who = await auth.viewer(request)
    login = forms.text(request.query_params, "login")
    try:
        user = await auth.service_of(request).users.get_user_by_login(login)
    except SessiondError as exc:
        return await users_page(request, who, status=exc.status, error=exc.message)
    context = {"title": "Remove a user", "viewer": who, "user": user}
    return render(request, "remove_user.html", context)


async def remove_user(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    login = forms.text(form, "login")
    try:
        await auth.service_of(request).users.remove_user(who.actor, login)
    except SessiondError as exc:
        return await user_page(request, who, login, status=exc.status, error=exc.message)
    return redirect("/users", "user-removed")


routes = [
    Route("/users", users_page, methods=["GET"]),
    Route("/users", add_user, methods=["POST"]),
    Route("/user", user_page, methods=["GET"]),
    Route("/user/update", update_user, methods=["POST"]),
    Route("/user/block", block_user, methods=["POST"]),
    Route("/user/unblock", unblock_user, methods=["POST"]),
    Route("/user/password", set_password, methods=["POST"]),
    Route("/user/close-sessions", close_sessions, methods=["POST"]),
    Route("/user/remove", remove_page, methods=["GET"]),
    Route("/user/remove", remove_user, methods=["POST"]),
]
