"""Request headers that carry exactly one value, read the same way on every route; and the
configuration version every response carries."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING

from ..errors import HeaderRepeated, SessiondError
from ..wire import SESSION_HEADER

if TYPE_CHECKING:
    from ..service import SessionService

log = logging.getLogger("sessiond.server")

AUTHORIZATION_HEADER = "Authorization"


def single_header(headers: Iterable[tuple[bytes, bytes]], name: str) -> str | None:
    """The value of header ``name`` in an ASGI header list (names in lower case), or ``None``.

    Sent more than once, it is refused (:class:`HeaderRepeated`) rather than one of the values
    picked: a proxy and the server could otherwise each believe a different one.
    """
    key = name.lower().encode("latin-1")
    found: bytes | None = None
    for header, value in headers:
        if header == key:
            if found is not None:
                raise HeaderRepeated(f"the {name} header is sent more than once; send it once")
            found = value
    return None if found is None else found.decode("latin-1")


def session_header(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """The ``Tessa-Session`` header: the session token, once."""
    return single_header(headers, SESSION_HEADER)


async def configuration_version(service: SessionService, *, read: bool = True) -> int:
    """The version for ``Tessa-Configuration-Version``: as the service reads it (at most once
    per poll interval), or the last one known when the store cannot be read (or ``read`` is
    false), so that every answer, a 503 included, carries the header."""
    if read:
        try:
            return await service.configuration.version()
        except SessiondError:
            pass  # the store is unavailable: the request's own answer says so
        except Exception:
            log.exception("reading the configuration version failed")
    return service.configuration.last_known
