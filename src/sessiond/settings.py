"""One settings object: defaults, then a TOML file, then ``SESSIOND_*`` environment variables.

Validated at start; ``sessiond serve`` with nothing configured runs on SQLite in ./sessiond-data.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
import re
import socket
from collections.abc import Mapping
from contextvars import ContextVar
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict
from pydantic_settings import SettingsError as SourceError

from .errors import SettingsError
from .settings_file import CONFIG_ENV, file_problems, read_file
from .settings_openid import OpenIdSettings
from .settings_sections import (
    ARGON2_PRESETS,
    DEFAULT_DATABASE_CONNECT_TIMEOUT,
    DEFAULT_DATABASE_CONNECTIONS,
    DEFAULT_DATABASE_POOL_TIMEOUT,
    DEFAULT_DATABASE_STATEMENT_TIMEOUT,
    MIN_DATABASE_CONNECTIONS,
    Argon2Settings,
    ConsoleSettings,
    DatabasePools,
    DatabaseUrl,
    DirectorySettings,
    Duration,
    LdapSettings,
    SecuritySettings,
    application_name,
    env_known,
    env_names,
    hide_password,
    model_of,
    share_connections,
)

__all__ = [
    "ARGON2_PRESETS",
    "CONFIG_ENV",
    "DEFAULT_DATABASE_CONNECTIONS",
    "DEFAULT_DATABASE_POOL_TIMEOUT",
    "MIN_DATABASE_CONNECTIONS",
    "Argon2Settings",
    "ConsoleSettings",
    "DatabasePools",
    "DatabaseUrl",
    "DirectorySettings",
    "Duration",
    "LdapSettings",
    "SecuritySettings",
    "Settings",
    "WindowsSettings",
    "application_name",
    "hide_password",
    "load_settings",
    "share_connections",
    "unknown_environment",
]

#: Who may read /metrics unless metrics_allow says otherwise: this machine only.
METRICS_ALLOW_DEFAULT = ("127.0.0.0/8", "::1")
# The file load_settings() was given; else SESSIOND_CONFIG names it.
_config_file: ContextVar[str | None] = ContextVar("sessiond_config_file", default=None)


class WindowsSettings(BaseModel):
    """Windows (Active Directory / Kerberos) accounts: by password and by integrated sign-in."""

    model_config = ConfigDict(extra="forbid")

    realm: str = Field(description="Kerberos realm, e.g. CORP.EXAMPLE.COM")
    domains: dict[str, str] = Field(
        default_factory=dict,
        description="NetBIOS domain -> realm, e.g. {CORP = 'CORP.EXAMPLE.COM'}",
    )
    domain_lockout_threshold: int = Field(
        5,
        ge=0,
        description="set it to your domain's Account lockout threshold (0: the domain locks "
        "no account); lockout settings not below it are warned of at start",
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
    ntlm: str | None = Field(
        None,
        description="who checks NTLM answers: winbind (the domain, through Samba's ntlm_auth), "
        "file (ntlm_user_file: labs) or off; default: file when ntlm_user_file is set, else off",
    )
    ntlm_user_file: Path | None = Field(
        None, description="DOMAIN:user:password lines for ntlm = file (labs and test rigs)"
    )
    ntlm_auth: Path = Field(
        Path("/usr/bin/ntlm_auth"), description="Samba's ntlm_auth, for ntlm = winbind"
    )
    ntlm_auth_config: Path | None = Field(
        None, description="smb.conf for ntlm_auth (--configfile); none: Samba's default"
    )
    ntlm_auth_environment: dict[str, str] = Field(
        default_factory=dict,
        description="variables added to ntlm_auth's environment (e.g. to reach a winbindd "
        "whose socket is not in the compiled-in place)",
    )
    require_membership_of: str | None = Field(
        None,
        description="only members of this group (DOMAIN\\group or a SID) sign in, on every "
        "Windows path; read through winbind (ntlm = winbind) or [windows.directory]",
    )
    allow_ntlmv1: bool = Field(
        False, description="accept NTLMv1 (and LM) answers; by default only NTLMv2 is accepted"
    )
    ntlm_helpers: int = Field(
        16, ge=1, le=1024, description="ntlm_auth processes at most (one per handshake in flight)"
    )
    ntlm_auth_timeout: Duration = Field(
        timedelta(seconds=30), description="how long one ntlm_auth answer may take"
    )
    kerberos_timeout: Duration = Field(
        timedelta(seconds=10),
        description="how long one Kerberos password check may take; then 503 kdc_timeout",
    )
    kerberos_workers: int = Field(
        8, ge=1, le=256, description="threads that wait on the KDC at once (its own)"
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

    @field_validator("kerberos_timeout")
    @classmethod
    def _a_second_or_more(cls, value: timedelta) -> timedelta:
        if value < timedelta(seconds=1):
            raise ValueError("must be at least 1 second")
        return value

    @field_validator("ntlm")
    @classmethod
    def _ntlm(cls, value: str | None) -> str | None:
        if value is not None and value not in ("winbind", "file", "off"):
            raise ValueError("must be winbind, file or off")
        return value

    @property
    def ntlm_mode(self) -> str:
        """``ntlm`` as set, or inferred: ``file`` when ntlm_user_file is set, else ``off``."""
        if self.ntlm is not None:
            return self.ntlm
        return "file" if self.ntlm_user_file else "off"

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
        if self.ntlm_mode == "file" and not self.ntlm_user_file:
            raise ValueError("ntlm = file needs ntlm_user_file")
        if self.require_membership_of and self.ntlm_mode != "winbind" and self.directory is None:
            raise ValueError(
                "require_membership_of needs a way to read group memberships: ntlm = winbind, "
                "or [windows.directory] with a search account (bind_dn)"
            )
        if self.negotiate and not self.keytab and self.ntlm_mode == "off":
            raise ValueError(
                "negotiate needs a keytab (Kerberos) or NTLM (ntlm = winbind, or an ntlm_user_file)"
            )
        return self


class Settings(BaseSettings):
    """Everything an operator can set. Environment: ``SESSIOND_<NAME>``, nested with ``__``."""

    model_config = SettingsConfigDict(
        env_prefix="SESSIOND_", env_nested_delimiter="__", extra="forbid"
    )

    data_dir: Path = Path("sessiond-data")
    database_url: DatabaseUrl | None = Field(
        None,
        description="SQLAlchemy async URL; default: SQLite file in data_dir (its password is "
        "never printed)",
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
    request_body_timeout: Duration = Field(
        timedelta(seconds=30),
        description="time for a request's body to arrive, from the end of its head; 408 after it",
    )
    max_connections: int = Field(
        4096, ge=1, le=1_000_000, description="open connections at most; 503 server_busy above"
    )
    max_connections_per_address: int = Field(
        256, ge=1, le=1_000_000, description="open connections per client address at most; 429"
    )

    signature_keys_file: Path | None = Field(
        None, description="JSON key ring; default: data_dir/signature-keys.json (0600)"
    )
    audit_keys_file: Path | None = Field(
        None, description="audit chain key ring; default: audit-keys.json beside the other ring"
    )
    audit_anchor_file: Path | None = Field(
        None, description="audit heads appended (ID:HASH); default: data_dir/audit-anchors.log"
    )
    audit_anchor_interval: Duration = Field(
        timedelta(minutes=10), description="how often the audit head is logged when it moved"
    )
    session_expiration_time_span: Duration = timedelta(days=7)
    validation_cache_entries: int = Field(
        100_000,
        ge=0,
        description="sessions whose validation answer a node remembers (about 0.75 KB each; "
        "the least recently used goes first; 0: none)",
    )
    touch_interval: Duration = Field(
        timedelta(seconds=60), description="at most one last-activity write per session per this"
    )
    configuration_poll_interval: Duration = Field(
        timedelta(seconds=1), description="how often a node re-reads the configuration version"
    )
    database_connections: int = Field(
        DEFAULT_DATABASE_CONNECTIONS,
        ge=MIN_DATABASE_CONNECTIONS,
        le=1000,
        description="PostgreSQL: the most connections this node opens to the database, all "
        "pools and the notification listener together (see database_pools)",
    )
    database_pool_timeout: Duration = Field(
        timedelta(seconds=DEFAULT_DATABASE_POOL_TIMEOUT),
        description="PostgreSQL: how long a request waits for a free connection when all "
        "database_connections are busy; then 503 service_unavailable",
    )
    database_connect_timeout: Duration = Field(
        timedelta(seconds=DEFAULT_DATABASE_CONNECT_TIMEOUT),
        description="PostgreSQL: how long opening a connection may take; then 503",
    )
    database_statement_timeout: Duration = Field(
        timedelta(seconds=DEFAULT_DATABASE_STATEMENT_TIMEOUT),
        description="PostgreSQL: how long a request's statements may take once it has a "
        "connection (server and client side); then 503 service_unavailable",
    )
    server_code: str | None = None
    instance_name: str | None = None

    build_version: str | None = None
    build_name: str = "sessiond"
    description: str = ""

    admin_login: str = "admin"
    admin_password: SecretStr | None = Field(
        None,
        description="first administrator's password; generated and printed once if unset "
        "(never printed: read with get_secret_value())",
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
        description="how long a sign-in waits for its account's turn (one at a time per node) "
        "and, under a lockout, for one of its user's attempt slots; then refused unchecked",
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"] = Field(
        "INFO", description="level of sessiond's and uvicorn's log records (any case)"
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="log lines as text, or one JSON object per line"
    )
    access_log: bool = Field(
        False, description="one log line per request: method, path, status, duration, client"
    )
    metrics: bool = Field(True, description="serve GET /metrics (Prometheus text format)")
    metrics_allow: list[str] = Field(
        default_factory=lambda: list(METRICS_ALLOW_DEFAULT),
        description="addresses or networks that may read /metrics (default: loopback only); "
        "empty: no address",
    )

    argon2: Argon2Settings = Argon2Settings()
    security: SecuritySettings = SecuritySettings()
    windows: WindowsSettings | None = None
    ldap: LdapSettings | None = None
    openid: OpenIdSettings | None = None
    console: ConsoleSettings = ConsoleSettings()

    @field_validator(
        "session_expiration_time_span",
        "sweep_interval",
        "audit_anchor_interval",
        "request_head_timeout",
        "request_body_timeout",
        "database_pool_timeout",
        "database_connect_timeout",
        "database_statement_timeout",
    )
    @classmethod
    def _positive(cls, value: timedelta) -> timedelta:
        if value <= timedelta(0):
            raise ValueError("must be positive")
        return value

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, value: DatabaseUrl | None) -> DatabaseUrl | None:
        if value is None:
            return None
        url = value.get_secret_value()
        scheme = url.split("://", 1)[0] if "://" in url else ""
        if not (scheme.startswith("sqlite") or scheme in ("postgresql", "postgresql+asyncpg")):
            # The value itself is not repeated: it may hold a password.
            raise ValueError(
                "is not a database URL sessiond supports: write sqlite+aiosqlite:///<file> or "
                "postgresql+asyncpg://user:password@host:port/database"
            )
        return value

    @field_validator("log_level", "log_format", mode="before")
    @classmethod
    def _any_case(cls, value: Any, info: ValidationInfo) -> Any:
        if not isinstance(value, str):
            return value
        return value.strip().upper() if info.field_name == "log_level" else value.strip().lower()

    @field_validator("trusted_proxies", "metrics_allow")
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
        """The URL to connect with, password included: never print it (see
        :attr:`shown_database_url`)."""
        if self.database_url:
            return self.database_url.get_secret_value()
        return f"sqlite+aiosqlite:///{(self.data_dir / 'sessiond.db').resolve()}"

    @property
    def admin_password_value(self) -> str | None:
        """The first administrator's password from the settings (a secret: never print it)."""
        return None if self.admin_password is None else self.admin_password.get_secret_value()

    @property
    def shown_database_url(self) -> str:
        """:attr:`effective_database_url` with its password hidden, for messages."""
        return hide_password(self.effective_database_url)

    @property
    def node_name(self) -> str:
        """This node's name: ``server_code``, else the host name."""
        return self.server_code or socket.gethostname()

    @property
    def database_pools(self) -> DatabasePools:
        """How ``database_connections`` is shared out on PostgreSQL (:func:`share_connections`)."""
        return share_connections(
            self.database_connections,
            self.database_pool_timeout.total_seconds(),
            application_name(self.node_name),
            self.database_connect_timeout.total_seconds(),
            self.database_statement_timeout.total_seconds(),
        )

    @property
    def effective_keys_file(self) -> Path:
        return self.signature_keys_file or self.data_dir / "signature-keys.json"

    @property
    def effective_audit_keys_file(self) -> Path:
        """``audit_keys_file``, else ``audit-keys.json`` beside the signature key ring."""
        return self.audit_keys_file or self.effective_keys_file.parent / "audit-keys.json"

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
        return read_file(path) if path else {}


def load_settings(config_file: str | Path | None = None, **overrides: Any) -> Settings:
    """Build and validate the settings; a readable :class:`SettingsError` if they are wrong:
    one line naming each wrong setting, where it was set, and what it should be (never its
    value, which may be a secret)."""
    token = _config_file.set(str(config_file) if config_file is not None else None)
    file = _config_file.get() or os.environ.get(CONFIG_ENV)
    try:
        settings: Settings | None = Settings(**overrides)
        problems: list[str] = []
    except ValidationError as exc:
        settings, problems = None, [_problem(err, overrides, file) for err in exc.errors()]
    except SourceError as exc:
        # pydantic-settings could not decode a list or table given in the environment.
        found = re.search(r'field "(\w+)"', str(exc))
        name = found.group(1) if found else "?"
        raise SettingsError(
            f"invalid settings: {name} (set by {_env_name((name,))}): is not valid JSON; lists "
            'and tables in the environment are JSON, e.g. \'["10.0.0.0/8", "127.0.0.1"]\' or '
            "'{\"time_cost\": 3}'"
        ) from None
    finally:
        _config_file.reset(token)
    # A wrong value in the file is reported even where the command line or the environment
    # overrides it (the merged settings never see it): the next start without that override
    # reads it.
    if file:
        problems += file_problems(Settings, file, exclude=problems)
    if problems or settings is None:
        raise SettingsError(f"invalid settings: {'; '.join(problems)}")
    return settings


def _env_name(loc: tuple[Any, ...]) -> str:
    return "SESSIOND_" + "__".join(str(p) for p in loc).upper()


def _env_set(name: str) -> str | None:
    """How the environment sets ``name``: ``name`` itself, or ``name__*`` (keys inside it)."""
    wanted = name.upper()
    keys = [key.upper() for key in os.environ]
    if wanted in keys:
        return name
    return f"{name}__*" if any(key.startswith(wanted + "__") for key in keys) else None


def _where(loc: tuple[Any, ...], overrides: Mapping[str, Any], file: str | None) -> str:
    """Which source gave the setting at ``loc``: the command line, the environment or the file."""
    if loc and loc[0] in overrides:
        return "given on the command line"
    for depth in range(len(loc), 0, -1):
        if found := _env_set(_env_name(loc[:depth])):
            return f"set by {found}"
    if file:
        return f"in {file}"
    return ""


def _problem(err: Any, overrides: Mapping[str, Any], file: str | None) -> str:
    loc = tuple(p for p in err["loc"] if isinstance(p, str)) or ("?",)
    name = ".".join(str(p) for p in err["loc"])
    where = _where(loc, overrides, file)
    message = str(err["msg"]).removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        known = _field_names(loc[:-1])
        close = difflib.get_close_matches(str(loc[-1]), known, n=1)
        message = "is not a sessiond setting: remove it or correct its spelling" + (
            f" (did you mean {'.'.join([*map(str, loc[:-1]), close[0]])}?)" if close else ""
        )
    return f"{name} ({where}): {message}" if where else f"{name}: {message}"


# --- the environment -------------------------------------------------------------------------


def _field_names(loc: tuple[Any, ...]) -> list[str]:
    model: type[BaseModel] | None = Settings
    for part in loc:
        field = model.model_fields.get(str(part)) if model else None
        model = model_of(field.annotation) if field else None
    return list(model.model_fields) if model else []


def unknown_environment(environ: Mapping[str, str] | None = None) -> list[str]:
    """``SESSIOND_*`` variables that name no setting (a misspelling such as ``SESSIOND_PROT``),
    each with the closest known name when there is one: ``"SESSIOND_PROT (did you mean
    SESSIOND_PORT?)"``. They are ignored; the command line warns about them."""
    env = os.environ if environ is None else environ
    known = [CONFIG_ENV, *env_names(Settings, "SESSIOND_")]
    found = []
    for name in sorted(env):
        upper = name.upper()
        if not upper.startswith("SESSIOND_") or upper == CONFIG_ENV:
            continue
        parts = upper.removeprefix("SESSIOND_").lower().split("__")
        if env_known(Settings, parts):
            continue
        close = difflib.get_close_matches(upper, known, n=1)
        found.append(name + (f" (did you mean {close[0]}?)" if close else ""))
    return found
