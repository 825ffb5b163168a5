"""The platform's enums and the plain records the client and the server share.

Enum values are the platform's numbers; their *wire names* (what the token XML and the HTTP API
carry) are the platform's names, e.g. ``LoginType.NONE`` travels as ``"None"``.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Self
from uuid import UUID

from .wire import format_time


class WireEnum(enum.IntEnum):
    """An int enum whose members travel by their platform name."""

    _wire: str

    @property
    def wire(self) -> str:
        try:
            return self._wire
        except AttributeError:  # members get it once, at first use
            wire = _WIRE_NAMES.get((type(self).__name__, self.name), _pascal(self.name))
            self._wire = wire
            return wire

    @classmethod
    def from_wire(cls, value: str | int) -> Self:
        """Accept the wire name (case-insensitive), an alias, or the numeric value."""
        if isinstance(value, int) and not isinstance(value, bool):
            return cls(value)
        text = str(value).strip()
        if text.lstrip("-").isdigit():
            return cls(int(text))
        lowered = text.lower()
        for member in cls:
            if member.wire.lower() == lowered:
                return member
        alias = _ALIASES.get((cls.__name__, lowered))
        if alias is not None:
            return cls[alias]
        names = ", ".join(m.wire for m in cls)
        raise ValueError(f"{value!r} is not a valid {cls.__name__} (expected one of: {names})")


def _pascal(name: str) -> str:
    return "".join(part.capitalize() for part in name.split("_"))


class AccessLevel(WireEnum):
    """UserAccessLevel."""

    REGULAR = 0
    ADMINISTRATOR = 1


class LoginType(WireEnum):
    """UserLoginType: how a user signs in. NONE forbids sign-in (dismissed or system users)."""

    NONE = 0
    PLATFORM = 1
    WINDOWS = 2
    LDAP = 3
    OPEN_ID = 4  # an OpenID Connect provider's account (wire name "OpenId")

    @property
    def signs_in(self) -> bool:
        """False for the login type that forbids sign-in whatever is configured."""
        return self is not LoginType.NONE


class LicenseType(WireEnum):
    """SessionLicenseType: the kind of seat a session holds."""

    UNSPECIFIED = 0
    CONCURRENT_CLIENT = 1
    PERSONAL_CLIENT = 2
    CONCURRENT_WEB = 3
    PERSONAL_WEB = 4


class ServiceType(WireEnum):
    """SessionServiceType: what kind of client opened the session."""

    UNKNOWN = 0
    DESKTOP_CLIENT = 1
    WEB_CLIENT = 2


class DeviceType(WireEnum):
    DESKTOP = 0
    PHONE = 1
    TABLET = 2
    OTHER = 3


class AuditAction(WireEnum):
    """Audit trail action types: the platform's, about sessions (1-8), then sessiond's own,
    about what administrators and users change (9 on)."""

    LOGIN = 1
    LOGIN_FAILED = 2
    LOGOUT = 3
    SESSION_CLOSED_BY_ADMIN = 4
    SESSION_EXPIRED = 5
    SESSION_DEACTIVATED = 6
    USER_BLOCKED = 7
    CONFIGURATION_VERSION_INCREMENTED = 8
    USER_CREATED = 9
    USER_CHANGED = 10
    USER_REMOVED = 11
    USER_UNBLOCKED = 12
    PASSWORD_CHANGED = 13
    PASSWORD_RESET = 14
    LICENCE_INSTALLED = 15
    SIGNATURE_KEY_ROTATED = 16
    SIGNATURE_KEY_RETIRED = 17
    SETTINGS_CHANGED = 18


# Names that are not the plain PascalCase of the member name.
#: The account of a user of login type OpenId: ``openid:<issuer>#<subject>`` (an issuer is a
#: URL without a fragment, so the first ``#`` ends it; the subject is kept exactly).
OPENID_ACCOUNT_PREFIX = "openid:"


def openid_account(issuer: str, subject: str) -> str:
    """The account an OpenID Provider's (issuer, subject) pair is kept under."""
    return f"{OPENID_ACCOUNT_PREFIX}{issuer}#{subject}"


def openid_identity(account: str | None) -> tuple[str, str] | None:
    """(issuer, subject) of an OpenId account, or None when it is not one. Also takes
    ``<issuer>#<subject>`` without the prefix (as an administrator may type it)."""
    if not account:
        return None
    text = account.strip()
    text = text[len(OPENID_ACCOUNT_PREFIX) :] if text.startswith(OPENID_ACCOUNT_PREFIX) else text
    issuer, mark, subject = text.partition("#")
    if not mark or not subject or "://" not in issuer:
        return None
    return issuer, subject


_WIRE_NAMES: dict[tuple[str, str], str] = {}
# Accepted on input only: the platform calls its own users "Tessa" users.
_ALIASES: dict[tuple[str, str], str] = {
    ("LoginType", "tessa"): "PLATFORM",
    ("LoginType", "openidconnect"): "OPEN_ID",
    ("LoginType", "oidc"): "OPEN_ID",
}


@dataclass(frozen=True, slots=True)
class ConfigurationInfo:
    """The platform's configuration version and the build it was last stamped with."""

    version: int
    modified: datetime
    modified_by_id: UUID | None
    modified_by_name: str
    build_version: str
    build_name: str
    build_date: datetime | None
    description: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "Version": self.version,
            "Modified": _iso(self.modified),
            "ModifiedByID": str(self.modified_by_id) if self.modified_by_id else None,
            "ModifiedByName": self.modified_by_name,
            "BuildVersion": self.build_version,
            "BuildName": self.build_name,
            "BuildDate": _iso(self.build_date) if self.build_date else None,
            "Description": self.description,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ConfigurationInfo:
        return cls(
            version=int(data["Version"]),
            modified=datetime.fromisoformat(data["Modified"]),
            modified_by_id=UUID(data["ModifiedByID"]) if data.get("ModifiedByID") else None,
            modified_by_name=str(data.get("ModifiedByName") or ""),
            build_version=str(data.get("BuildVersion") or ""),
            build_name=str(data.get("BuildName") or ""),
            build_date=datetime.fromisoformat(data["BuildDate"]) if data.get("BuildDate") else None,
            description=str(data.get("Description") or ""),
        )


#: ClientInfo's fields and their names in the sign-in body (OpenSessionRequest).
CLIENT_INFO_JSON: dict[str, str] = {
    "application_id": "ApplicationID",
    "service_type": "ServiceType",
    "device_type": "DeviceType",
    "culture": "Culture",
    "ui_culture": "UICulture",
    "utc_offset": "UtcOffsetMinutes",
    "instance_name": "InstanceName",
    "host_name": "HostName",
    "os_name": "OSName",
    "user_agent": "UserAgent",
    "client_64bit": "Client64Bit",
    "client_64bit_os": "Client64BitOS",
}


@dataclass(frozen=True, slots=True)
class ClientInfo:
    """What a client says about itself when it opens a session (all optional)."""

    application_id: UUID | None = None
    service_type: ServiceType = ServiceType.DESKTOP_CLIENT
    device_type: DeviceType = DeviceType.DESKTOP
    culture: str | None = None
    ui_culture: str | None = None
    utc_offset: int | None = None  # minutes east of UTC
    instance_name: str | None = None
    host_name: str | None = None
    os_name: str | None = None
    user_agent: str | None = None
    client_64bit: bool | None = None
    client_64bit_os: bool | None = None

    def to_json(self) -> dict[str, Any]:
        """The client parameters of a sign-in body (absent ones left out)."""
        out: dict[str, Any] = {}
        for name, key in CLIENT_INFO_JSON.items():
            value = getattr(self, name)
            if value is None:
                continue
            if isinstance(value, WireEnum):
                value = value.wire
            elif isinstance(value, UUID):
                value = str(value)
            out[key] = value
        return out

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ClientInfo:
        """The client parameters of a sign-in body (already checked for shape); raises
        ValueError for an unknown service or device type."""
        values: dict[str, Any] = {}
        for name, key in CLIENT_INFO_JSON.items():
            value = data.get(key)
            if value is None:
                continue
            if name == "service_type":
                value = ServiceType.from_wire(value)
            elif name == "device_type":
                value = DeviceType.from_wire(value)
            elif name == "application_id" and not isinstance(value, UUID):
                value = UUID(str(value))
            values[name] = value
        return cls(**values)


def _iso(value: datetime) -> str:
    return format_time(value)
