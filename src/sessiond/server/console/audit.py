"""The audit page: filters (action, user, time range), newest first, paged by the id before
which the next page starts; the export of the filtered records (JSON lines or CSV, as
``sessiond audit export`` writes them); and a check of the hash chain."""

from __future__ import annotations

import io
import json
from collections.abc import AsyncIterator
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from ... import exports
from ...errors import RequestError, SessiondError
from ...models import AuditAction
from ...service import Actor, SessionService
from ...store import AuditQuery
from . import auth, forms
from .web import render

PAGE = 50
EXPORT_PAGE = 1000
FILTERS = ("action", "user", "since", "until")


def _query(params: Any) -> tuple[AuditQuery, dict[str, str]]:
    values = {name: forms.text(params, name) for name in (*FILTERS, "before")}
    action = forms.choice(AuditAction, values["action"], "action")
    query = AuditQuery(
        actions=(action,) if action else (),
        user_name=values["user"] or None,
        since=forms.utc_time(values["since"], "from"),
        until=forms.utc_time(values["until"], "until"),
        before_id=forms.integer(values["before"], "before"),
        newest_first=True,
    )
    return query, values


def details(value: dict[str, Any]) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(", ", ": ")) if value else ""


async def audit_page(request: Request) -> Response:
    who = await auth.viewer(request)
    params = request.query_params
    values = {name: forms.text(params, name) for name in FILTERS}
    context: dict[str, Any] = {
        "title": "Audit",
        "viewer": who,
        "actions": [a.wire for a in AuditAction],
        "values": values,
        "records": [],
        "details": details,
        "older_query": None,
        "filter_query": forms.query_string(values),
    }
    try:
        query, values = _query(params)
        records, before = await auth.service_of(request).audit.page(who.actor, query, PAGE)
    except SessiondError as exc:
        return render(request, "audit.html", context, status=exc.status, error=exc.message)
    context["records"] = records
    if before is not None:
        keep = {k: values[k] for k in FILTERS}
        context["older_query"] = forms.query_string(keep, before=before)
    context["paged"] = bool(values["before"])
    return render(request, "audit.html", context)


async def _export(
    service: SessionService, actor: Actor, query: AuditQuery, csv: bool
) -> AsyncIterator[str]:
    """Every record the filters find, oldest first, a page at a time, written as
    ``sessiond audit export`` writes them (:mod:`sessiond.exports`)."""
    buffer = io.StringIO()
    writer = exports.csv_writer(buffer) if csv else None
    query = replace(query, newest_first=False, before_id=None, after_id=None)
    while True:
        records, after = await service.audit.page(actor, query, EXPORT_PAGE)
        if writer is not None:
            exports.write_csv_rows(records, writer)
        else:
            exports.write_jsonl(records, buffer)
        yield buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        if after is None:
            return
        query = replace(query, after_id=after)


async def export(request: Request) -> Response:
    who = await auth.viewer(request)
    kind = forms.text(request.query_params, "format") or "jsonl"
    try:
        if kind not in ("jsonl", "csv"):
            raise RequestError("format: jsonl or csv")
        query, _ = _query(request.query_params)
        service = auth.service_of(request)
        # The first page is read here, so that a refusal is a page and not a broken download.
        await service.audit.page(who.actor, replace(query, newest_first=False), 1)
    except SessiondError as exc:
        return render(
            request,
            "error.html",
            {"title": "Audit export", "viewer": who, "status": exc.status, "back_to": "/audit"},
            status=exc.status,
            error=exc.message,
        )
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    media = "text/csv; charset=utf-8" if kind == "csv" else "application/x-ndjson; charset=utf-8"
    return StreamingResponse(
        _export(service, who.actor, query, kind == "csv"),
        media_type=media,
        headers={"Content-Disposition": f'attachment; filename="audit-{stamp}.{kind}"'},
    )


async def verify(request: Request) -> Response:
    who = await auth.viewer(request)
    report = await auth.service_of(request).audit.verify()
    return render(request, "verify.html", {"title": "Audit chain", "viewer": who, "report": report})


routes = [
    Route("/audit", audit_page, methods=["GET"]),
    Route("/audit/export", export, methods=["GET"]),
    Route("/audit/verify", verify, methods=["GET"]),
]
