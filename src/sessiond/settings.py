"""One settings object: defaults, then a TOML file, then ``SESSIOND_*`` environment variables.

Validated at start; ``sessiond serve`` with nothing configured runs on SQLite in ./sessiond-data.
"""

from __future__ import annotations

import ipaddress
import os
import re
import tomllib
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from .errors import SettingsError

CONFIG_ENV = "SESSIOND_CONFIG"
# The file load_settings() was given; else SESSIOND_CONFIG names it.
_config_file: ContextVar[str | None] = ContextVar("sessiond_config_file", default=None)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SUFFIXED = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd])\s*\Z")
_CLOCK = re.compile(r"\s*(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)\s*\Z")


def _duration(value: Any) -> Any:
    """Accept seconds (number or numeric text), ``15m``/``2h``/``7d``, the platform's
    ``[d.]hh:mm:ss``, or anything pydantic takes for a timedelta (ISO 8601 ``PT5M``)."""
    try:
        return _parse_duration(value)
    except OverflowError:
        raise ValueError("is too long a duration") from None


MAX_DURATION = timedelta(days=36_500)  # a century: anything longer overflows dates


def _not_negative(value: timedelta) -> timedelta:
    if value < timedelta(0):
        raise ValueError("must not be negative")
    if value > MAX_DURATION:
        raise ValueError("is too long a duration (at most 36500 days)")
    return value


def _parse_duration(value: Any) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return timedelta(seconds=value)
    if isinstance(value, str):
        text = value.strip()
        try:
            return timedelta(seconds=float(text))
        except ValueError:
            pass
        if m := _SUFFIXED.match(text):
            return timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
        if m := _CLOCK.match(text):
            days, hours, minutes, seconds = m.groups()
            return timedelta(
                days=int(days or 0), hours=int(hours), minutes=int(minutes), seconds=float(seconds)
            )
    return value


Duration = Annotated[timedelta, BeforeValidator(_duration), AfterValidator(_not_negative)]


class Argon2Settings(BaseModel):
    """Argon2id cost. Raising any of them rehashes each password at its owner's next sign-in."""

    model_config = ConfigDict(extra="forbid")

    time_cost: int = Field(3, ge=1, le=100)
    memory_cost: int = Field(65536, ge=1024, le=4 * 1024 * 1024, description="KiB")
    parallelism: int = Field(4, ge=1, le=64)


class SecuritySettings(BaseModel):
    """The platform's security options (names as in the platform, snake_cased)."""

    model_config = ConfigDict(extra="forbid")

    max_failed_login_attempts_before_blocked: int = Field(0, ge=0, description="0 = off")
    max_failed_login_attempts_in_series: int = Field(0, ge=0, description="0 = off")
    failed_login_attempts_series_time: Duration = timedelta(minutes=5)
    blocked_series_due_date_time: Duration = timedelta(minutes=15)
    block_windows_and_ldap_users: bool = False
    enforce_strong_passwords: bool = False
    min_password_length: int = Field(4, ge=0, le=1024)
    unique_password_count: int = Field(1, ge=0, le=100)
    password_expiration_time: Duration | None = None
    password_expiration_notification_time: Duration | None = None
    session_inactivity_time: Duration | None = None
    keep_other_sessions_on_password_change: bool = Field(
        False, description="a user's own password change leaves their other sessions open"
    )

    @field_validator("session_inactivity_time", "password_expiration_time")
    @classmethod
    def _positive_or_off(cls, value: timedelta | None) -> timedelta | None:
        if value is not None and value <= timedelta(0):
            raise ValueError("must be positive (leave it out to switch it off)")
        return value

    @field_validator("failed_login_attempts_series_time", "blocked_series_due_date_time")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value


class DirectorySettings(BaseModel):
    """An LDAPv3 directory: where to find accounts and how to reach it."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field(description="ldap://host:389 or ldaps://host:636")
    start_tls: bool = Field(False, description="upgrade ldap:// with StartTLS before binding")
    ca_file: Path | None = Field(None, description="CA bundle to verify the server certificate")
    verify_certificate: bool = True
    bind_dn: str | None = Field(None, description="service account for searches; none: anonymous")
    bind_password: str | None = None
    search_base: str = ""
    search_filter: str = Field(
        "(uid={login})", description="{login} is replaced by the escaped account name"
    )
    name_attribute: str = Field("cn", description="display name for provisioned users")
    timeout: Duration = timedelta(seconds=10)

    @field_validator("timeout")
    @classmethod
    def _at_least_a_second(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1 second")
        return value

    @field_validator("url")
    @classmethod
    def _ldap_url(cls, value: str) -> str:
        if not value.lower().startswith(("ldap://", "ldaps://")):
            raise ValueError("must start with ldap:// or ldaps://")
        return value


class LdapSettings(DirectorySettings):
    """Users of login type Ldap: find the DN by search, then bind as it with the password."""

    auto_provision: bool = Field(
        False, description="create a Regular Ldap user on first successful sign-in"
    )


class WindowsSettings(BaseModel):
    """Windows (Active Directory / Kerberos) accounts: by password and by integrated sign-in."""

    model_config = ConfigDict(extra="forbid")

    realm: str = Field(description="Kerberos realm, e.g. CORP.EXAMPLE.COM")
    domains: dict[str, str] = Field(
        default_factory=dict,
        description="NetBIOS domain -> realm, e.g. {CORP = 'CORP.EXAMPLE.COM'}",
    )
    password_check: str = Field(
        "kerberos", description="kerberos (ticket + KDC proof) or ldap (bind to the directory)"
    )
    service_principal: str | None = Field(
        None, description="sessiond's own principal, e.g. HTTP/sessiond.corp.example.com"
    )
    keytab: Path | None = Field(None, description="keys of service_principal")
    krb5_config: Path | None = Field(None, description="krb5.conf to use instead of the system's")
    verify_kdc: bool = Field(
        True, description="prove the KDC genuine with a ticket for service_principal"
    )
    negotiate: bool = Field(True, description="offer integrated sign-in (HTTP Negotiate)")
    ntlm_user_file: Path | None = Field(
        None, description="DOMAIN:user:password lines the NTLM fallback accepts; none: no NTLM"
    )
    directory: DirectorySettings | None = Field(
        None, description="Active Directory LDAP, for password_check = ldap"
    )
    bind_format: str = Field(
        "{login}@{realm}",
        description="who binds for password_check = ldap: {login} {domain} {realm}",
    )
    auto_provision: bool = Field(
        False, description="create a Regular Windows user on first successful sign-in"
    )

    @field_validator("password_check")
    @classmethod
    def _method(cls, value: str) -> str:
        if value not in ("kerberos", "ldap"):
            raise ValueError("must be kerberos or ldap")
        return value

    @field_validator("realm")
    @classmethod
    def _upper(cls, value: str) -> str:
        return value.strip().upper()

    @field_validator("domains")
    @classmethod
    def _domains(cls, value: dict[str, str]) -> dict[str, str]:
        return {k.strip().upper(): v.strip().upper() for k, v in value.items()}

    @model_validator(mode="after")
    def _complete(self) -> WindowsSettings:
        if self.password_check == "ldap" and self.directory is None:
            raise ValueError("password_check = ldap needs [windows.directory] with its url")
        if (
            self.password_check == "kerberos"
            and self.verify_kdc
            and not (self.service_principal and self.keytab)
        ):
            raise ValueError(
                "verify_kdc needs service_principal and keytab (or set verify_kdc = false, "
                "which trusts whatever answers as the KDC)"
            )
        if self.negotiate and not self.keytab and not self.ntlm_user_file:
            raise ValueError("negotiate needs a keytab (Kerberos) or an ntlm_user_file (NTLM)")
        return self


class Settings(BaseSettings):
    """Everything an operator can set. Environment: ``SESSIOND_<NAME>``, nested with ``__``."""

    model_config = SettingsConfigDict(
        env_prefix="SESSIOND_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("sessiond-data")
    database_url: str | None = Field(
        None, description="SQLAlchemy async URL; default: SQLite file in data_dir"
    )
    host: str = "127.0.0.1"
    port: int = Field(8400, ge=0, le=65535)
    max_request_head_bytes: int = Field(
        65536,
        ge=1024,
        description="largest request line + headers accepted, in bytes (431 above it); "
        "Kerberos tickets in Authorization: Negotiate headers can be ~48 KB",
    )
    request_head_timeout: Duration = Field(
        timedelta(seconds=10),
        description="time for a request's line and headers to arrive, from their first byte "
        "(or from the connection opening); 408 after it",
    )

    signature_keys_file: Path | None = Field(
        None, description="JSON key ring; default: data_dir/signature-keys.json (0600)"
    )
    session_expiration_time_span: Duration = timedelta(days=7)
    touch_interval: Duration = Field(
        timedelta(seconds=60), description="at most one last-activity write per session per this"
    )
    configuration_poll_interval: Duration = Field(
        timedelta(seconds=1), description="how often a node re-reads the configuration version"
    )
    server_code: str | None = None
    instance_name: str | None = None

    build_version: str | None = None
    build_name: str = "sessiond"
    description: str = ""

    admin_login: str = "admin"
    admin_password: str | None = Field(
        None, description="first administrator's password; generated and printed once if unset"
    )
    trusted_proxies: list[str] = Field(
        default_factory=list, description="addresses whose X-Forwarded-For is believed"
    )

    licence_file: Path | None = Field(
        None, description="licence file installed at start and by 'sessiond licences reload'"
    )
    licence_public_key: str | None = Field(
        None, description="Ed25519 public key (PEM or base64); set: only signed licences"
    )
    licence_policy: Literal["refuse", "deactivate_oldest"] = Field(
        "refuse", description="when seats run out: refuse, or end the user's oldest session"
    )
    sweep_interval: Duration = Field(
        timedelta(seconds=60), description="how often expired sessions are removed"
    )
    sign_in_slot_wait: Duration = Field(
        timedelta(seconds=10),
        description="under a lockout, how long a sign-in waits for one of its user's attempt "
        "slots while other checks of that user are in progress",
    )

    argon2: Argon2Settings = Argon2Settings()
    security: SecuritySettings = SecuritySettings()
    windows: WindowsSettings | None = None
    ldap: LdapSettings | None = None

    @field_validator("session_expiration_time_span", "sweep_interval", "request_head_timeout")
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("trusted_proxies")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for entry in value:
            try:
                ipaddress.ip_network(entry)
            except ValueError as exc:
                raise ValueError(f"{entry!r} is not an address or network: {exc}") from None
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite+aiosqlite:///{(self.data_dir / 'sessiond.db').resolve()}"

    @property
    def effective_keys_file(self) -> Path:
        return self.signature_keys_file or self.data_dir / "signature-keys.json"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # Explicit arguments beat the environment, which beats the file.
        return (init_settings, env_settings, _TomlSource(settings_cls))


class _TomlSource(PydanticBaseSettingsSource):
    def get_field_value(self, field: Any, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False

    def __call__(self) -> dict[str, Any]:
        path = _config_file.get() or os.environ.get(CONFIG_ENV)
        if not path:
            return {}
        try:
            with open(path, "rb") as fh:
                data = tomllib.load(fh)
        except OSError as exc:
            raise SettingsError(f"cannot read settings file {path}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise SettingsError(f"settings file {path} is not valid TOML: {exc}") from None
        section = data.get("sessiond", data)
        if not isinstance(section, dict):
            raise SettingsError(f"settings file {path}: [sessiond] must be a table")
        return section


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; a readable :class:`SettingsError` if they are wrong."""
    token = _config_file.set(str(config_file) if config_file is not None else None)
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise SettingsError(f"invalid settings: {problems}") from None
    finally:
        _config_file.reset(token)
