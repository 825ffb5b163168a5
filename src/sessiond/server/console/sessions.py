"""The sessions page: filters, sort, keyset paging, closing; the live seat counts.

A regular user sees only their own sessions here (the service narrows the query to them) and
may close only those; every other page is an administrator's.
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ...errors import RequestError, SessiondError, SessionRequired
from ...models import DeviceType, LicenseType, ServiceType
from ...store import SessionOrder, SessionQuery
from ..render import error_response
from . import auth, forms
from .web import redirect, render

PAGE_SIZES = (25, 50, 100, 200)
ORDERS: dict[str, str] = {
    "created": "Created",
    "last_activity": "Last activity",
    "user_name": "User name",
}
#: The query parameters of the sessions page (kept when a form posts back to it). ``login``
#: is one user exactly (the user page's "Sessions of ..." link); ``user`` a name's start.
FILTERS = (
    "login", "user", "licence", "application", "service", "device", "address", "order", "dir",
)  # fmt: skip
BACK = (*FILTERS, "size")
SEAT_TYPES = ("ConcurrentClient", "PersonalClient", "ConcurrentWeb", "PersonalWeb")


def _query(params: Any) -> tuple[SessionQuery, dict[str, str]]:
    values = {name: forms.text(params, name) for name in (*FILTERS, "size", "after")}
    order = values["order"] or "created"
    if order not in ORDERS:
        raise RequestError(f"order: {order[:40]!r} is not one of {', '.join(ORDERS)}")
    query = SessionQuery(
        user_name=values["user"] or None,
        license_type=forms.choice(LicenseType, values["licence"], "licence type"),
        application_id=forms.uuid(values["application"], "application"),
        service_type=forms.choice(ServiceType, values["service"], "service type"),
        device_type=forms.choice(DeviceType, values["device"], "device type"),
        client_address=values["address"] or None,
        order=_order(order),
        descending=values["dir"] == "desc",
    )
    return query, values


def _order(value: str) -> SessionOrder:
    if value == "last_activity":
        return "last_activity"
    if value == "user_name":
        return "user_name"
    return "created"


def _size(value: str) -> int:
    size = forms.integer(value, "page size") or 50
    return size if size in PAGE_SIZES else 50


def seats(usage: dict[str, Any]) -> list[dict[str, Any]]:
    """licence_usage's Seats as rows: type, in use, seats (None: not limited), free, and how
    many are in use beyond the seats."""
    rows = []
    for name in SEAT_TYPES:
        entry = usage.get("Seats", {}).get(name, {})
        used, total = int(entry.get("InUse", 0)), entry.get("Seats")
        free = None if total is None else max(0, int(total) - used)
        over = 0 if total is None else max(0, used - int(total))  # a smaller licence
        rows.append({"type": name, "in_use": used, "seats": total, "free": free, "over": over})
    return rows


async def sessions_page(request: Request) -> Response:
    who = await auth.viewer(request, admin=False)
    service = auth.service_of(request)
    params = request.query_params
    kept = {name: forms.text(params, name) for name in BACK}
    context: dict[str, Any] = {
        "title": "Sessions" if who.is_administrator else "My sessions",
        "viewer": who,
        "orders": ORDERS,
        "sizes": PAGE_SIZES,
        "licence_types": [t.wire for t in LicenseType if t != LicenseType.UNSPECIFIED],
        "service_types": [t.wire for t in ServiceType],
        "device_types": [t.wire for t in DeviceType],
        "values": {**kept, "after": forms.text(params, "after")},
        "rows": [],
        "next_query": None,
        "seats": None,
        "refresh": service.settings.console.refresh_interval.total_seconds(),
        "idle": _idle_limit(request),
        "back": forms.back_query(str(params), BACK),
        "first_query": forms.query_string(kept),
        "of_user": None,
    }
    try:
        query, values = _query(params)
        if values["login"] and who.is_administrator:
            # One user exactly, by login: not every user whose name starts the same.
            of_user = await service.users.get_user_by_login(values["login"])
            query = replace(query, user_id=of_user.id)
            context["of_user"] = of_user
        records, cursor = await service.sessions.page(
            who.actor, query, values["after"] or None, _size(values["size"])
        )
        if who.is_administrator:
            usage = await service.licensing.usage(who.actor)
            context["seats"], context["warnings"] = seats(usage), usage.get("Warnings", [])
    except SessiondError as exc:
        return render(request, "sessions.html", context, status=exc.status, error=exc.message)
    context["rows"] = records
    if cursor:
        context["next_query"] = forms.query_string(kept, after=cursor)
    return render(request, "sessions.html", context)


def _idle_limit(request: Request) -> float:
    """How long the page may go without a person's input before its refresh stops (so that
    an unattended tab does not keep its session alive past the inactivity limit)."""
    inactivity = auth.service_of(request).settings.security.session_inactivity_time
    limit = 300.0
    if inactivity is not None:
        limit = min(limit, inactivity.total_seconds() / 2)
    return limit


async def confirm_close(request: Request) -> Response:
    """Close one session? A page that says whose it is, and whether it is this console's
    own (closing that signs the viewer out); only its button closes it."""
    who = await auth.viewer(request, admin=False)
    params = request.query_params
    back = forms.back_query(forms.text(params, "back"), BACK)
    try:
        session_id = forms.uuid(forms.text(params, "session_id"), "session")
        if session_id is None:
            raise RequestError("say which session to close")
        record = await auth.service_of(request).sessions.get_open(who.actor, session_id)
    except SessiondError as exc:
        return await _failed(request, exc)
    if record is None:
        return redirect("/sessions", "not-open", params=back)
    context = {
        "title": "Close a session",
        "viewer": who,
        "record": record,
        "own": record.id == who.record.id,
        "back": back,
        "back_query": "?" + back if back else "",
    }
    return render(request, "close_session.html", context)


async def close_session(request: Request) -> Response:
    who = await auth.viewer(request, admin=False)
    form = await auth.checked_form(request, who)
    back = forms.back_query(forms.text(form, "back"), BACK)
    service = auth.service_of(request)
    try:
        session_id = forms.uuid(forms.text(form, "session_id"), "session")
        if session_id is None:
            raise RequestError("say which session to close")
        closed = await service.sessions.close_session_as_admin(who.actor, session_id)
    except SessiondError as exc:
        return await _failed(request, exc)
    return redirect("/sessions", "closed" if closed else "not-open", params=back)


async def confirm_close_user(request: Request) -> Response:
    """Close every session of a user? Says so when this console's session is among them."""
    who = await auth.viewer(request)
    params = request.query_params
    back = forms.back_query(forms.text(params, "back"), BACK)
    try:
        user = await auth.service_of(request).users.get_user_by_login(forms.text(params, "login"))
    except SessiondError as exc:
        return await _failed(request, exc)
    context = {
        "title": "Close all sessions of a user",
        "viewer": who,
        "user": user,
        "own": user.id == who.actor.id,
        "back": back,
        "back_query": "?" + back if back else "",
    }
    return render(request, "close_user_sessions.html", context)


async def close_user_sessions(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    back = forms.back_query(forms.text(form, "back"), BACK)
    try:
        count = await auth.service_of(request).close_user_sessions(
            who.actor, forms.text(form, "login")
        )
    except SessiondError as exc:
        return await _failed(request, exc)
    return redirect("/sessions", "closed-user", count, params=back)


async def _failed(request: Request, exc: SessiondError) -> Response:
    who = await auth.viewer(request, admin=False)
    return render(
        request,
        "error.html",
        {"title": "Sessions", "viewer": who, "status": exc.status, "back_to": "/sessions"},
        status=exc.status,
        error=exc.message,
    )


async def seats_json(request: Request) -> Response:
    """The seat counts for the sessions page's refresh script."""
    try:
        who = await auth.viewer(request)
        usage = await auth.service_of(request).licensing.usage(who.actor)
    except auth.SignedOut:
        return error_response(SessionRequired("signed out: sign in to the console again"))
    except SessiondError as exc:  # a regular user (403), the store down (503)
        return error_response(exc)
    return JSONResponse({"Seats": seats(usage), "At": datetime.now(UTC).strftime("%H:%M:%S")})


async def home(request: Request) -> Response:
    return redirect("/sessions")


routes = [
    Route("/", home, methods=["GET"]),
    Route("/sessions", sessions_page, methods=["GET"]),
    Route("/sessions/close", confirm_close, methods=["GET"]),
    Route("/sessions/close", close_session, methods=["POST"]),
    Route("/sessions/close-user", confirm_close_user, methods=["GET"]),
    Route("/sessions/close-user", close_user_sessions, methods=["POST"]),
    Route("/seats.json", seats_json, methods=["GET"]),
]
