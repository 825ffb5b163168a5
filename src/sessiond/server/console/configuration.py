"""The configuration page: the version, who raised it and when, the build; raising it, after a
confirmation page."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import SessiondError
from . import auth, forms
from .auth import Viewer
from .web import redirect, render


async def configuration_page(request: Request) -> Response:
    who = await auth.viewer(request)
    info = await auth.service_of(request).configuration.get()
    context = {"title": "Configuration", "viewer": who, "info": info}
    return render(request, "configuration.html", context)


async def confirm_page(
    request: Request, who: Viewer | None = None, *, status: int = 200, error: str | None = None
) -> Response:
    who = who or await auth.viewer(request)
    info = await auth.service_of(request).configuration.get()
    context = {"title": "Increment the configuration version", "viewer": who, "info": info}
    return render(request, "increment.html", context, status=status, error=error)


async def increment(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    if forms.text(form, "confirm") != "yes":
        return await confirm_page(request, who, status=400, error="Confirm the increment first.")
    try:
        info = await auth.service_of(request).configuration.increment(who.actor)
    except SessiondError as exc:
        return await confirm_page(request, who, status=exc.status, error=exc.message)
    return redirect("/configuration", "incremented", info.version)


routes = [
    Route("/configuration", configuration_page, methods=["GET"]),
    Route("/configuration/increment", confirm_page, methods=["GET"]),
    Route("/configuration/increment", increment, methods=["POST"]),
]
