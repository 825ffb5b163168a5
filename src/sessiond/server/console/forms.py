"""Reading form fields and query parameters: text, enum choices, UTC times, ids."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

from ...errors import RequestError
from ...models import WireEnum

E = TypeVar("E", bound=WireEnum)
MAX_FIELD_CHARS = 1024


def text(values: Mapping[str, Any], name: str) -> str:
    """A field's text, stripped ('' when absent or not text)."""
    value = values.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_FIELD_CHARS:
        raise RequestError(f"{name}: at most {MAX_FIELD_CHARS} characters")
    return value.strip()


def secret(values: Mapping[str, Any], name: str) -> str:
    """A password field, exactly as typed."""
    value = values.get(name)
    if not isinstance(value, str):
        return ""
    if len(value) > MAX_FIELD_CHARS:
        raise RequestError(f"{name}: at most {MAX_FIELD_CHARS} characters")
    return value


def choice(cls: type[E], value: str, label: str) -> E | None:
    """An enum member by its wire name ('' is none)."""
    if not value:
        return None
    try:
        return cls.from_wire(value)
    except ValueError as exc:
        raise RequestError(f"{label}: {exc}") from None


def uuid(value: str, label: str) -> UUID | None:
    if not value:
        return None
    try:
        return UUID(value)
    except ValueError:
        raise RequestError(f"{label}: {value[:40]!r} is not an id (a UUID)") from None


def utc_time(value: str, label: str) -> datetime | None:
    """A time as a datetime-local field sends it (``2026-11-24T22:57``), read as UTC; a zone
    given in the text is kept."""
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise RequestError(
            f"{label}: {value[:40]!r} is not a time: write 2026-11-24T22:57 (UTC)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def time_field(value: datetime | None) -> str:
    """A time as a datetime-local field shows it (UTC, to the minute)."""
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if value else ""


def integer(value: str, label: str) -> int | None:
    if not value:
        return None
    try:
        return int(value)
    except ValueError:
        raise RequestError(f"{label}: {value[:40]!r} is not a whole number") from None


def query_string(params: Mapping[str, Any], **changes: Any) -> str:
    """``?a=1&b=2`` of the non-empty values, with ``changes`` applied."""
    merged = {**params, **changes}
    pairs = [(k, str(v)) for k, v in merged.items() if v not in (None, "", False)]
    return "?" + urlencode(pairs) if pairs else ""


def back_query(value: str, allowed: tuple[str, ...]) -> str:
    """A page's own query string sent back with a form: only the named parameters survive,
    re-encoded (so it can name nothing but a filter of that page)."""
    pairs = [(k, v) for k, v in parse_qsl(value.lstrip("?"))[:20] if k in allowed]
    return urlencode(pairs)
