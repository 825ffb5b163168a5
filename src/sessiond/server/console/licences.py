"""The licences page: the installed licence, seats used and free, warnings; installing a
licence file (the service parses it: a bad one shows its message and changes nothing)."""

from __future__ import annotations

from pathlib import PurePath

from starlette.datastructures import UploadFile
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ...errors import LicenceInvalid, RequestError, SessiondError
from ...licence import MAX_LICENCE_BYTES
from . import auth
from .auth import Viewer
from .sessions import seats
from .web import redirect, render


async def licences_page(
    request: Request, who: Viewer | None = None, *, status: int = 200, error: str | None = None
) -> Response:
    who = who or await auth.viewer(request)
    service = auth.service_of(request)
    usage = await service.licensing.usage(who.actor)
    context = {
        "title": "Licences",
        "viewer": who,
        "usage": usage,
        "licence": usage.get("Licence"),
        "seats": seats(usage),
        "warnings": usage.get("Warnings", []),
        "licence_file": str(service.settings.licence_file or ""),
    }
    return render(request, "licences.html", context, status=status, error=error)


async def install(request: Request) -> Response:
    who = await auth.viewer(request)
    form = await auth.checked_form(request, who)
    upload = form.get("licence")
    try:
        if not isinstance(upload, UploadFile) or not upload.filename:
            raise RequestError("Choose a licence file to install.")
        data = await upload.read(MAX_LICENCE_BYTES + 1)
        if not data:
            raise LicenceInvalid(f"{_name(upload.filename)} is empty")
        await auth.service_of(request).licensing.install(
            data, source=f"console upload {_name(upload.filename)}", actor=who.actor
        )
    except SessiondError as exc:
        # A bad file is the upload's fault, not the server's (licence_invalid is a 503 in
        # the API, where it means no valid licence is loaded).
        status = 422 if isinstance(exc, LicenceInvalid) else exc.status
        return await licences_page(request, who, status=status, error=exc.message)
    return redirect("/licences", "licence-installed")


def _name(filename: str) -> str:
    """The file's own name as the browser sent it, short and without folders."""
    return PurePath(filename.replace("\\", "/")).name[:100] or "licence"


async def reload(request: Request) -> Response:
    who = await auth.viewer(request)
    await auth.checked_form(request, who)
    try:
        await auth.service_of(request).licensing.reload(who.actor)
    except SessiondError as exc:
        return await licences_page(request, who, status=exc.status, error=exc.message)
    return redirect("/licences", "licence-reloaded")


routes = [
    Route("/licences", licences_page, methods=["GET"]),
    Route("/licences/install", install, methods=["POST"]),
    Route("/licences/reload", reload, methods=["POST"]),
]
