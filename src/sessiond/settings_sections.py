"""The parts of the settings that stand alone: durations, the database URL, and the sections
that do not depend on the rest (Argon2, security, directories, the console), and how the
database connections are shared. :mod:`sessiond.settings` builds the one settings object from
them and re-exports every name here.
"""

from __future__ import annotations

import re
import socket
import types
import typing
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidatorFunctionWrapHandler,
    WrapValidator,
    field_validator,
    model_validator,
)

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_SUFFIXED = re.compile(r"\s*(-?\d+(?:\.\d+)?)\s*([smhd])\s*\Z")
_CLOCK = re.compile(r"\s*(?:(\d+)\.)?(\d{1,2}):(\d{2}):(\d{2}(?:\.\d+)?)\s*\Z")


_DURATION_SPELLINGS = (
    "seconds (900), a number with s, m, h or d (15m, 2h, 7d), [d.]hh:mm:ss (00:05:00) "
    "or ISO 8601 (PT5M)"
)


def _duration(value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
    """Accept seconds (number or numeric text), ``15m``/``2h``/``7d``, the platform's
    ``[d.]hh:mm:ss``, or anything pydantic takes for a timedelta (ISO 8601 ``PT5M``)."""
    try:
        parsed = _parse_duration(value)
    except OverflowError:
        raise ValueError("is too long a duration") from None
    try:
        return handler(parsed)
    except ValidationError as exc:
        if any(e["type"] == "time_delta_parsing" for e in exc.errors()):
            raise ValueError(f"is not a duration: write {_DURATION_SPELLINGS}") from None
        raise


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


Duration = Annotated[timedelta, WrapValidator(_duration), AfterValidator(_not_negative)]

_URL_PASSWORD = re.compile(r"(://[^:/@]*:)(.*)@")
_QUERY_PASSWORD = re.compile(r"([?&]password=)[^&]*")


def hide_password(url: str) -> str:
    """The URL with its password (``scheme://user:password@host``, or ``password=`` in the
    query) shown as ``***``."""
    return _QUERY_PASSWORD.sub(r"\1***", _URL_PASSWORD.sub(r"\1***@", url, count=1))


class DatabaseUrl(SecretStr):
    """A database URL whose password never shows: ``repr``, ``str`` and error messages print
    it as ``***``; :meth:`get_secret_value` gives the URL to connect with."""

    def _display(self) -> str:
        return hide_password(self.get_secret_value())


#: Named Argon2id costs: (time_cost, memory_cost in KiB, parallelism).
ARGON2_PRESETS: dict[str, tuple[int, int, int]] = {
    # argon2-cffi's PasswordHasher default since 21.2.0: RFC 9106's second recommended option
    # (argon2.profiles.RFC_9106_LOW_MEMORY).
    "argon2-cffi-default": (3, 65536, 4),
    # OWASP Password Storage Cheat Sheet: the first (cheapest in time) of its equivalent
    # minimum Argon2id configurations, 19 MiB, 2 iterations, 1 degree of parallelism.
    "owasp": (2, 19456, 1),
    # Keycloak's Argon2 password hash provider defaults (org.keycloak.crypto.hash.
    # Argon2Parameters: DEFAULT_MEMORY 7168, DEFAULT_ITERATIONS 5, DEFAULT_PARALLELISM 1).
    "keycloak": (5, 7168, 1),
}
Argon2Preset = Literal["argon2-cffi-default", "owasp", "keycloak"]


class Argon2Settings(BaseModel):
    """Argon2id cost: a named ``preset``, and any of its three numbers set explicitly over it.
    A change of any of them rehashes each password at its owner's next sign-in."""

    model_config = ConfigDict(extra="forbid")

    preset: Argon2Preset = Field(
        "argon2-cffi-default", description="argon2-cffi-default, owasp or keycloak"
    )
    time_cost: int = Field(3, ge=1, le=100)
    memory_cost: int = Field(65536, ge=1024, le=4 * 1024 * 1024, description="KiB")
    parallelism: int = Field(4, ge=1, le=64)

    @model_validator(mode="before")
    @classmethod
    def _from_preset(cls, data: Any) -> Any:
        """The preset's numbers for whatever is not set explicitly."""
        if not isinstance(data, dict):
            return data
        preset = data.get("preset", "argon2-cffi-default")
        if isinstance(preset, str):
            preset = preset.strip().lower()
        numbers = ARGON2_PRESETS.get(preset) if isinstance(preset, str) else None
        if numbers is None:
            return data  # the field's own validation names the presets
        filled = {**data, "preset": preset}
        for name, value in zip(("time_cost", "memory_cost", "parallelism"), numbers, strict=True):
            if filled.get(name) is None:
                filled[name] = value
        return filled


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
    unmapped_account_failures: int = Field(
        3,
        ge=0,
        description="refused sign-ins allowed per domain or directory account that no user is "
        "mapped to, each within unmapped_failures_window of the one before; then refused "
        "unchecked (0: no limit)",
    )
    unmapped_address_failures: int = Field(
        20,
        ge=0,
        description="the same, per client address (0: no limit)",
    )
    unmapped_failures_window: Duration = Field(
        timedelta(minutes=15),
        description="the window those failures are counted in, and how long a limit, once "
        "reached, holds",
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
    allow_cleartext_ldap: bool = Field(
        False,
        description="allow password checks over plain ldap:// without StartTLS (passwords in "
        "clear text on the network); otherwise such a url stops the server at start",
    )
    bind_dn: str | None = Field(
        None,
        description="search account (read-only); none: anonymous searches, which Active "
        "Directory refuses",
    )
    bind_password: SecretStr | None = Field(
        None, description="password of bind_dn (never printed: read with get_secret_value())"
    )
    search_base: str = ""
    search_filter: str = Field(
        "(uid={login})", description="{login} is replaced by the escaped account name"
    )
    name_attribute: str = Field("cn", description="display name for provisioned users")
    timeout: Duration = Field(
        timedelta(seconds=10),
        description="each connect, bind or search; and one whole password check, after which "
        "the caller gets 503 directory_timeout",
    )
    workers: int = Field(
        8, ge=1, le=256, description="threads that wait on this directory at once (its own)"
    )

    @property
    def bind_password_value(self) -> str | None:
        """The password of ``bind_dn`` (a secret: never print it)."""
        return None if self.bind_password is None else self.bind_password.get_secret_value()

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
    domain_lockout_threshold: int = Field(
        5,
        ge=0,
        description="set it to the directory's lockout threshold (Active Directory: Account "
        "lockout threshold; 0: it locks no account); lockout settings not below it are warned "
        "of at start",
    )


class ConsoleSettings(BaseModel):
    """The administrators' console in the browser, under /console (docs/console.md)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="serve the console under /console")
    secure_cookie: bool = Field(
        False,
        description="always mark the console's cookie Secure (named __Host-...); otherwise only "
        "when the request came over TLS or X-Forwarded-Proto says https",
    )
    refresh_interval: Duration = Field(
        timedelta(seconds=15),
        description="how often the sessions page refreshes its seat counts; 0: on load only",
    )
    public_url: str | None = Field(
        None,
        description="the server's address as browsers reach it (https://HOST[:PORT], no path): "
        "the OpenID Connect redirect and post-logout URIs are built from it; unset: from the "
        "request's own address",
    )

    @field_validator("public_url")
    @classmethod
    def _public_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        if parts.path not in ("", "/") or parts.query or parts.fragment:
            raise ValueError("must have no path, query or fragment (https://HOST[:PORT])")
        return f"{parts.scheme}://{parts.netloc}"


DEFAULT_DATABASE_CONNECTIONS = 10
MIN_DATABASE_CONNECTIONS = 3  # one for writes, one for validation's reads, one to listen
DEFAULT_DATABASE_POOL_TIMEOUT = 10.0
DEFAULT_DATABASE_CONNECT_TIMEOUT = 5.0
DEFAULT_DATABASE_STATEMENT_TIMEOUT = 10.0
#: What stands between sessiond and PostgreSQL: nothing, or PgBouncer in transaction pooling
#: (no named prepared statements, no session state; see docs/multi-node.md, "PgBouncer").
Pooler = Literal["none", "pgbouncer"]
#: PostgreSQL keeps the first 63 bytes of an application_name.
_APPLICATION_NAME_BYTES = 63


@dataclass(frozen=True, slots=True)
class DatabasePools:
    """One node's connections to PostgreSQL, ``database_connections`` shared out: ``write``
    for SQLAlchemy's pool (every transaction, and every read but validation's), ``read`` for
    the asyncpg pool of validation's session reads, ``listen`` for the connection that receives
    other nodes' notifications. Together never more than the total."""

    write: int
    read: int
    listen: int
    timeout: float  # seconds a request waits for a connection of a pool that is all in use
    application_name: str  # what pg_stat_activity shows for each of them
    connect_timeout: float = DEFAULT_DATABASE_CONNECT_TIMEOUT  # seconds to open a connection
    #: seconds the statements of one piece of work may take once it has its connection
    statement_timeout: float = DEFAULT_DATABASE_STATEMENT_TIMEOUT
    #: what database_url leads to (database_pooler)
    pooler: Pooler = "none"

    @property
    def total(self) -> int:
        return self.write + self.read + self.listen


def share_connections(
    total: int,
    timeout: float,
    name: str,
    connect_timeout: float = DEFAULT_DATABASE_CONNECT_TIMEOUT,
    statement_timeout: float = DEFAULT_DATABASE_STATEMENT_TIMEOUT,
    pooler: Pooler = "none",
) -> DatabasePools:
    """The rule: 1 to listen; a quarter of the rest (at least 1) for validation's reads, whose
    merged reads need few connections; everything else for the write pool. 10 gives 7 + 2 + 1."""
    if total < MIN_DATABASE_CONNECTIONS:
        raise ValueError(f"database_connections must be at least {MIN_DATABASE_CONNECTIONS}")
    read = max(1, (total - 1) // 4)
    return DatabasePools(
        write=total - 1 - read,
        read=read,
        listen=1,
        timeout=timeout,
        application_name=name,
        connect_timeout=connect_timeout,
        statement_timeout=statement_timeout,
        pooler=pooler,
    )


def application_name(node: str | None = None) -> str:
    """``sessiond/<node>`` (the host name when no node is named), cut to what PostgreSQL keeps."""
    name = f"sessiond/{node or socket.gethostname()}"
    return name.encode()[:_APPLICATION_NAME_BYTES].decode(errors="ignore")


# --- walking the settings models (for the names of environment variables) ---------------


def model_of(annotation: Any) -> type[BaseModel] | None:
    """The settings group (a pydantic model) a field holds, if it holds one."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        for arg in typing.get_args(annotation):
            if (model := model_of(arg)) is not None:
                return model
    return None


def env_known(model: type[BaseModel], parts: list[str]) -> bool:
    if not parts:
        return True
    field = model.model_fields.get(parts[0])
    if field is None:
        return False
    if len(parts) == 1:
        return True
    if typing.get_origin(field.annotation) is dict:  # a table of free keys (windows.domains)
        return len(parts) == 2
    sub = model_of(field.annotation)
    return sub is not None and env_known(sub, parts[1:])


def env_names(model: type[BaseModel], prefix: str) -> list[str]:
    names = []
    for field_name, field in model.model_fields.items():
        name = f"{prefix}{field_name.upper()}"
        names.append(name)
        if (sub := model_of(field.annotation)) is not None:
            names.extend(env_names(sub, name + "__"))
    return names
