"""Rows and records: how users, sessions and audit records are written to and read from the
tables (shared by the SQLite and PostgreSQL stores and their fast session reads)."""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import asdict, fields
from datetime import UTC, datetime
from typing import Any
from uuid import UUID

import sqlalchemy as sa

from ..models import (
    OPENID_ACCOUNT_PREFIX,
    AccessLevel,
    AuditAction,
    DeviceType,
    LicenseType,
    LoginType,
    ServiceType,
)
from ..token import SessionToken, fast_uuid
from . import schema
from .base import AuditRecord, SessionRecord, SessionUser, UserRecord

USER_FIELDS = {f.name for f in fields(UserRecord)}
TOKEN_FIELDS = [f.name for f in fields(SessionToken)]
ENUM_COLUMNS: dict[str, type[Any]] = {
    "access_level": AccessLevel,
    "login_type": LoginType,
    "license_type": LicenseType,
    "service_type": ServiceType,
    "device_type": DeviceType,
}
LICENCE_COLUMNS = {
    LicenseType.CONCURRENT_CLIENT: "concurrent_client",
    LicenseType.PERSONAL_CLIENT: "personal_client",
    LicenseType.CONCURRENT_WEB: "concurrent_web",
    LicenseType.PERSONAL_WEB: "personal_web",
}
PERSONAL_USER_COLUMNS = {
    LicenseType.PERSONAL_CLIENT: "personal_client",
    LicenseType.PERSONAL_WEB: "personal_web",
}
SEAT_NAMES = {
    LicenseType.CONCURRENT_CLIENT: "concurrent client",
    LicenseType.PERSONAL_CLIENT: "personal client",
    LicenseType.CONCURRENT_WEB: "concurrent web",
    LicenseType.PERSONAL_WEB: "personal web",
}


def key(text: str) -> str:
    """How logins and accounts are compared: trimmed, case-folded."""
    return text.strip().casefold()


def account_key(account: str) -> str:
    """How accounts are compared: as :func:`key`, except an OpenId account
    (``openid:<issuer>#<subject>``), compared exactly: OpenID Connect's ``sub`` is
    case-sensitive, so two subjects that differ only in case are two people."""
    text = account.strip()
    return text if text.startswith(OPENID_ACCOUNT_PREFIX) else key(text)


def user_values(user: UserRecord) -> dict[str, Any]:
    values = asdict(user)
    values["login_key"] = key(user.login)
    values["account_key"] = account_key(user.account) if user.account else None
    return _enums_to_int(values)


def user_changes(changes: dict[str, Any]) -> dict[str, Any]:
    """Column values for a partial update of a user."""
    unknown = changes.keys() - USER_FIELDS
    if unknown or "id" in changes:
        raise ValueError(f"cannot update user fields {sorted(unknown | {'id'} & changes.keys())}")
    values = dict(changes)
    if "login" in values:
        values["login_key"] = key(values["login"])
    if "account" in values:
        values["account_key"] = account_key(values["account"]) if values["account"] else None
    return _enums_to_int(values)


def user_from_row(row: sa.Row[Any]) -> UserRecord:
    data = {k: v for k, v in row._mapping.items() if k in USER_FIELDS}
    data["access_level"] = AccessLevel(data["access_level"])
    data["login_type"] = LoginType(data["login_type"])
    return UserRecord(**data)


def session_values(session: SessionRecord) -> dict[str, Any]:
    token = session.token
    values = {name: getattr(token, name) for name in TOKEN_FIELDS}
    values["id"] = values.pop("session_id")
    values["last_activity"] = session.last_activity
    values["client_address"] = session.client_address
    return _enums_to_int(values)


def _text_uuid(text: str) -> UUID:
    return fast_uuid(int(text, 16))  # SQLite keeps UUIDs as 32 hex digits


def _naive_utc(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)  # SQLite keeps naive UTC text


def _driver_uuid(value: Any) -> UUID:
    return fast_uuid(value.int)  # asyncpg's own UUID type, as the standard library's


class SessionRows:
    """Decodes session rows as a driver returns them (a tuple in ``columns`` order) into
    records: the one session decoder, with the per-driver conversion of UUIDs and times."""

    def __init__(
        self,
        columns: Sequence[str],
        uuid: Callable[[Any], UUID] | None = None,
        time: Callable[[Any], datetime] | None = None,
    ) -> None:
        kinds: dict[str, Callable[[Any], Any]] = {}
        if uuid is not None:
            kinds.update(dict.fromkeys(("id", "user_id", "application_id"), uuid))
        if time is not None:
            kinds.update(dict.fromkeys(("created", "expires", "last_activity"), time))
        for name, cls in ENUM_COLUMNS.items():
            members = {int(member): member for member in cls}
            kinds[name] = members.__getitem__
        kinds["client_64bit"] = kinds["client_64bit_os"] = bool
        self.columns = list(columns)
        self._steps = [(index, name, kinds.get(name)) for index, name in enumerate(columns)]
        self._time = time
        self._access_levels = {int(member): member for member in AccessLevel}
        self._login_types = {int(member): member for member in LoginType}

    def decode(self, raw: Sequence[Any]) -> SessionRecord:
        data: dict[str, Any] = {}
        for index, name, convert in self._steps:
            value = raw[index]
            data[name] = value if convert is None or value is None else convert(value)
        last_activity = data.pop("last_activity")
        client_address = data.pop("client_address")
        version = data.pop("version")
        data["session_id"] = data.pop("id")
        return SessionRecord(SessionToken(**data), last_activity, client_address, version)

    def decode_with_user(self, raw: Sequence[Any]) -> tuple[SessionRecord, SessionUser | None]:
        """A row of :data:`self.columns` followed by :data:`USER_CHECK_COLUMNS` of its user
        (all None: the user is gone, a LEFT JOIN)."""
        split = len(self.columns)
        user_id, blocked, due, locked_out, access_level, login_type = raw[split : split + 6]
        if user_id is None:
            return self.decode(raw[:split]), None
        if due is not None and self._time is not None:
            due = self._time(due)
        user = SessionUser(
            self._access_levels[access_level],
            self._login_types[login_type],
            bool(blocked),
            due,
            bool(locked_out),
        )
        return self.decode(raw[:split]), user


SESSION_COLUMNS = [c.name for c in schema.sessions.columns]
#: What validation reads of a session's user, after the session's columns (``decode_with_user``).
USER_CHECK_COLUMNS = [
    "id",
    "blocked",
    "blocked_due_date",
    "locked_out",
    "access_level",
    "login_type",
]


def session_with_user_sql(where: str) -> str:
    """The validation read in SQL text: a session's columns and its user's, ``where``."""
    columns = [f"s.{c}" for c in SESSION_COLUMNS] + [f"u.{c}" for c in USER_CHECK_COLUMNS]
    return (
        f"SELECT {', '.join(columns)} FROM sessions AS s "
        f"LEFT JOIN users AS u ON u.id = s.user_id WHERE {where}"
    )


#: Rows through SQLAlchemy (its column types already give UUIDs and aware times).
SQL_SESSIONS = SessionRows(SESSION_COLUMNS)
#: Rows from SQLite's own driver (the validation reader): UUIDs as hex, times as naive text.
SQLITE_SESSIONS = SessionRows(SESSION_COLUMNS, uuid=_text_uuid, time=_naive_utc)
#: Rows from asyncpg (the PostgreSQL validation reader): its UUID type, aware times.
ASYNCPG_SESSIONS = SessionRows(SESSION_COLUMNS, uuid=_driver_uuid)


def session_from_row(row: sa.Row[Any]) -> SessionRecord:
    return SQL_SESSIONS.decode(tuple(row._mapping[name] for name in SESSION_COLUMNS))


def audit_values(record: AuditRecord) -> dict[str, Any]:
    values = asdict(record)
    values.pop("id")
    values["action"] = int(record.action)
    values["details"] = json.dumps(record.details, default=str, ensure_ascii=False)
    return values


def audit_from_row(row: sa.Row[Any]) -> AuditRecord:
    data = dict(row._mapping)
    data.pop("prev_hash", None)
    data.pop("hash", None)
    data.pop("key_id", None)
    data["action"] = AuditAction(data["action"])
    data["details"] = json.loads(data["details"])
    return AuditRecord(**data)


def _enums_to_int(values: dict[str, Any]) -> dict[str, Any]:
    for name in ENUM_COLUMNS.keys() & values.keys():
        if values[name] is not None:
            values[name] = int(values[name])
    return values
