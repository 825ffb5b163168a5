"""Request and response bodies of the HTTP API (PascalCase, as the platform's REST API)."""

from __future__ import annotations

import base64
import binascii
from dataclasses import replace
from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..models import CLIENT_INFO_JSON, ClientInfo, DeviceType, ServiceType
from ..token import CONTROL_CHARACTERS
from ..wire import OPENID_TOKEN_MAX_CHARS, OpenIdExchange


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True, str_max_length=4096)

    @model_validator(mode="after")
    def _no_control_characters(self) -> _Body:
        for name, value in self:
            if isinstance(value, str) and CONTROL_CHARACTERS.search(value):
                raise ValueError(f"{name} must not contain control characters")
        return self


class ClientFields(_Body):
    """The client parameters every sign-in carries (the session's service type, device...)."""

    ApplicationID: UUID | None = None
    ServiceType: str | int = Field("DesktopClient", description="Unknown, DesktopClient, WebClient")
    DeviceType: str | int = Field("Desktop", description="Desktop, Phone, Tablet, Other")
    Culture: str | None = Field(None, max_length=32, description="e.g. ru-RU")
    UICulture: str | None = Field(None, max_length=32)
    UtcOffsetMinutes: int | None = Field(None, ge=-24 * 60, le=24 * 60)
    InstanceName: str | None = Field(None, max_length=256)
    HostName: str | None = Field(None, max_length=256)
    OSName: str | None = Field(None, max_length=256)
    UserAgent: str | None = Field(None, max_length=1024)
    Client64Bit: bool | None = None
    Client64BitOS: bool | None = None

    @field_validator("ServiceType")
    @classmethod
    def _service_type(cls, value: str | int) -> str | int:
        ServiceType.from_wire(value)
        return value

    @field_validator("DeviceType")
    @classmethod
    def _device_type(cls, value: str | int) -> str | int:
        DeviceType.from_wire(value)
        return value

    def client_info(self, user_agent_header: str | None) -> ClientInfo:
        info = ClientInfo.from_json(self.model_dump(include=set(CLIENT_INFO_JSON.values())))
        if info.user_agent is None and info.service_type == ServiceType.WEB_CLIENT:
            # The platform keeps UserAgent for browsers: only web clients get the header's.
            info = replace(info, user_agent=user_agent_header)
        return info


class OpenSessionRequest(ClientFields):
    """POST /api/v1/sessions/open. Empty Login and Password mean integrated Windows sign-in."""

    Login: str | None = Field(None, max_length=512)
    Password: str | None = Field(None, max_length=1024)
    Domain: str | None = Field(None, max_length=256)
    LoginAndPasswordAreBase64: bool = Field(
        False, description="Login and Password are base64 of their UTF-8 bytes"
    )

    def decoded(self) -> tuple[str, str]:
        login, password = self.Login or "", self.Password or ""
        if self.LoginAndPasswordAreBase64:
            try:
                login = base64.b64decode(login, validate=True).decode()
                password = base64.b64decode(password, validate=True).decode()
            except (binascii.Error, UnicodeDecodeError):
                raise ValueError("Login or Password is not base64 of UTF-8 text") from None
            # The fields were checked as base64 text; what they carry must pass the same rule.
            for name, value in (("Login", login), ("Password", password)):
                if CONTROL_CHARACTERS.search(value):
                    raise ValueError(f"{name} must not contain control characters")
        return login, password


class OpenIdExchangeRequest(ClientFields, OpenIdExchange):
    """POST /api/v1/openid/exchange: a provider's token, and the client parameters."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, str_max_length=OPENID_TOKEN_MAX_CHARS
    )


class OpenSessionResponse(BaseModel):
    Token: str = Field(description="the full SessionToken XML")
    AuthToken: str = Field(description="the auth form, for the Tessa-Session header")
    SessionInactivityTime: float | None = Field(
        description="seconds without a request after which the session closes; null: never"
    )
    PasswordExpires: str | None = Field(
        description="when the password expires, once its warning period has begun"
    )


class ClosedResponse(BaseModel):
    Closed: bool = Field(description="the session was still open when the call came")


class SessionInfo(BaseModel):
    SessionID: UUID
    UserID: UUID
    UserName: str
    UserLogin: str | None
    AccessLevel: str
    LoginType: str
    LicenseType: str
    ServiceType: str
    DeviceType: str
    ApplicationID: UUID | None
    Created: str
    Expires: str
    LastActivity: str
    HostIP: str | None


class ConfigurationInfoBody(BaseModel):
    Version: int
    Modified: str
    ModifiedByID: UUID | None
    ModifiedByName: str
    BuildVersion: str
    BuildName: str
    BuildDate: str | None
    Description: str


class ErrorDetail(BaseModel):
    code: str = Field(description="stable, machine-readable")
    message: str = Field(description="for a person: what happened and what to do")
    details: dict[str, object] | None = None


class ErrorBody(BaseModel):
    error: ErrorDetail


class UserBody(BaseModel):
    ID: UUID
    Login: str
    Name: str
    AccessLevel: str
    LoginType: str
    Account: str | None
    Blocked: bool
    BlockedDueDate: str | None
    PersonalClient: bool
    PersonalWeb: bool
    TimeZoneUtcOffsetMinutes: int | None
    Created: str


class AddUserRequest(_Body):
    """POST /api/v1/users (administrators)."""

    Login: str = Field(min_length=1, max_length=256)
    Name: str | None = Field(None, max_length=256)
    Password: str | None = Field(None, max_length=1024, description="platform users only")
    AccessLevel: str | int = Field("Regular", description="Regular or Administrator")
    LoginType: str | int = Field("Platform", description="Platform, Windows, Ldap, OpenId or None")
    Account: str | None = Field(
        None,
        max_length=512,
        description="Windows DOMAIN\\name or UPN, the LDAP uid, or OpenId ISSUER#SUBJECT",
    )


class UpdateUserRequest(_Body):
    """PATCH /api/v1/users/{login} (administrators): absent fields stay as they are."""

    Name: str | None = Field(None, max_length=256)
    AccessLevel: str | int | None = None
    LoginType: str | int | None = None
    Account: str | None = Field(None, max_length=512)
    PersonalClient: bool | None = Field(None, description="holds a personal client licence")
    PersonalWeb: bool | None = Field(None, description="holds a personal web licence")
    TimeZoneUtcOffsetMinutes: int | None = Field(
        None, ge=-24 * 60, le=24 * 60, description="the employee's time zone, for tokens"
    )


class ChangePasswordRequest(_Body):
    """POST /api/v1/sessions/change-password: no session needed (the password may have expired)."""

    Login: str = Field(min_length=1, max_length=512)
    OldPassword: str = Field(min_length=1, max_length=1024)
    NewPassword: str = Field(min_length=1, max_length=1024)


class SetPasswordRequest(_Body):
    Password: str = Field(min_length=1, max_length=1024)


class BlockRequest(_Body):
    Until: datetime | None = Field(None, description="UTC time the block ends; none: until lifted")
