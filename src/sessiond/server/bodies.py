"""The one place request bodies are read as JSON: an object that names a key twice is refused.

Python's ``json`` (and so FastAPI) keeps the last of two equal keys, silently; a proxy, a
gateway or a log reader that keeps the first would see another request than sessiond acts on
(RFC 8259: names "SHOULD be unique"; RFC 7493, I-JSON: "MUST NOT" repeat). Every API route is
of :class:`CheckedBodyRoute`, which reads the body before FastAPI does and refuses such an
object, at any depth, with ``400 duplicate_key`` naming the key. A body that is not JSON at
all is left to FastAPI's own refusal.
"""

from __future__ import annotations

import email.message
import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette.requests import ClientDisconnect

from ..errors import DuplicateKey, RequestError


def _pairs_without_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for key, value in pairs:
        if key in found:
            raise DuplicateKey(
                f"the JSON body names the key {key!r} more than once; send each key once",
                details={"key": key},
            )
        found[key] = value
    return found


def check_json(body: bytes) -> None:
    """Refuse a JSON text with an object that repeats a key (:class:`DuplicateKey`); text that
    is not JSON passes (the caller's parser refuses it in its own words)."""
    try:
        json.loads(body, object_pairs_hook=_pairs_without_repeats)
    except (ValueError, RecursionError):  # JSONDecodeError and bad encodings are ValueErrors
        return


def _is_json(content_type: str | None) -> bool:
    """As FastAPI decides whether to parse a body as JSON (none given counts as JSON)."""
    if not content_type:
        return True
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class CheckedBodyRoute(APIRoute):
    """An API route whose JSON body may not repeat a key."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def checked(request: Request) -> Response:
            if _is_json(request.headers.get("content-type")):
                try:
                    body = await request.body()
                except ClientDisconnect:  # the body never came (cut by its time limit)
                    raise RequestError(
                        "the request body did not arrive: the connection closed first"
                    ) from None
                if body:
                    check_json(body)
            return await handler(request)

        return checked
