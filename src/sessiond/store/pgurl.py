"""The PostgreSQL database URL, read once: every connection sessiond makes goes where it says.

The engine (SQLAlchemy, through ``async_creator``), the pool of validation reads, the listening
connection and the command line's look at the store all connect with the arguments of one
:class:`DatabaseAddress`, so that none of them can end up on another server than the others.

The host list may be written in any of the forms libpq and asyncpg document:

- ``postgresql+asyncpg://user:password@h1:5432,h2:5433/db``
- ``postgresql+asyncpg://user:password@/db?host=h1:5432&host=h2:5433``
- ``postgresql+asyncpg://user:password@/db?host=h1,h2&port=5432,5433``

a host being a name, an address (IPv6 in brackets when a port follows) or the folder of a Unix
socket (``/run/postgresql``, percent-encoded in the part before the path). Hosts are tried in
order, as libpq does, each within its share of the connect timeout
(:meth:`DatabaseAddress.connect`).

``target_session_attrs`` says which of them to use. sessiond writes, and its validation reads
and notifications must see every write at once, so it always needs the primary: ``primary``
and ``read-write`` are kept as written; nothing (or ``any``) means ``primary``, with one host
as with several, so that no connection is ever kept to a standby; a URL asking for a standby
(``standby``, ``read-only``, ``prefer-standby``) is refused at start.

Every other query parameter (``sslmode``, ``sslrootcert``, ...) is handed to asyncpg as it is;
one it does not know becomes a server setting of the connection (as asyncpg does).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qsl, quote, unquote, urlencode, urlsplit

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ..errors import SettingsError

DEFAULT_PORT = 5432
#: asyncpg's own default for ``timeout`` (seconds), when a caller gives none.
DEFAULT_TIMEOUT = 60.0
_NOT_PRIMARY = asyncpg.exceptions.TargetServerAttributeNotMatched
#: What moves a connection attempt on to the next host (as libpq does): the host answered as
#: a standby, or is starting up or shutting down.
_NEXT_HOST = (_NOT_PRIMARY, asyncpg.exceptions.CannotConnectNowError)
#: What sessiond accepts in ``target_session_attrs``, and what each means for it.
USABLE = {"primary": "primary", "read-write": "read-write", "any": "primary"}
STANDBY = ("standby", "read-only", "prefer-standby")
_SCHEMES = ("postgresql", "postgresql+asyncpg", "postgres")
#: Query parameters that say where and as whom to connect (the rest go to asyncpg as they are).
_ADDRESS_KEYS = ("host", "port", "user", "password", "dbname", "database", "target_session_attrs")
_FORMS = (
    "postgresql+asyncpg://user:password@host1:5432,host2:5432/database, "
    "postgresql+asyncpg://user:password@/database?host=host1:5432&host=host2:5432, or "
    "postgresql+asyncpg://user:password@/database?host=host1,host2&port=5432,5432"
)


@dataclass(frozen=True, slots=True)
class DatabaseAddress:
    """Where and as whom to connect; :meth:`connect` opens one asyncpg connection there."""

    #: (host, port) in the order they are tried; a host starting with "/" is a socket folder.
    hosts: tuple[tuple[str, int], ...]
    user: str | None
    password: str | None = field(repr=False)
    database: str | None
    #: ``primary`` or ``read-write``: asyncpg's check of each host before it is used
    target_session_attrs: str
    #: the other query parameters, for asyncpg (``sslmode`` and the like)
    options: tuple[tuple[str, str], ...] = ()

    @property
    def shown(self) -> str:
        """The address as a URL without its password, for messages and logs."""
        auth = quote(self.user or "", safe="")
        if self.password:
            auth += ":***"
        hosts = ",".join(_show_host(host, port) for host, port in self.hosts)
        query = urlencode([("target_session_attrs", self.target_session_attrs), *self.options])
        at = f"{auth}@" if auth else ""
        return f"postgresql+asyncpg://{at}{hosts}/{quote(self.database or '')}?{query}"

    def connect_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``asyncpg.connect`` (and ``create_pool``) for this
        address; a caller adds its own (``timeout``, ``server_settings``, ...)."""
        arguments: dict[str, Any] = {
            "user": self.user,
            "password": self.password,
            "database": self.database,
            "target_session_attrs": self.target_session_attrs,
        }
        if self.hosts:
            arguments["host"] = [host for host, _ in self.hosts]
            arguments["port"] = [port for _, port in self.hosts]
        if self.options:
            # Only the query: asyncpg reads sslmode and the rest from it, hosts come above.
            arguments["dsn"] = "postgresql://?" + urlencode(self.options)
        return arguments

    async def connect(self, _dsn: None = None, **extra: Any) -> asyncpg.Connection:
        """One connection to the first host, in order, that answers and is what
        :attr:`target_session_attrs` asks for. ``timeout`` (``extra``) bounds the whole attempt
        and is shared out between the hosts, so that a host that answers nothing (a frozen
        or cut-off old primary) leaves time for the next one; asyncpg would spend all of it
        on the first. (``_dsn``: what asyncpg's pool passes first; it has none.)"""
        if len(self.hosts) < 2:
            one: asyncpg.Connection = await asyncpg.connect(**self.connect_arguments(), **extra)
            return one
        each = extra.pop("timeout", DEFAULT_TIMEOUT) / len(self.hosts)
        failures: list[BaseException] = []
        for host, port in self.hosts:
            arguments = {**self.connect_arguments(), "host": [host], "port": [port]}
            try:
                connection: asyncpg.Connection = await asyncpg.connect(
                    **arguments, timeout=each, **extra
                )
                return connection
            except (OSError, TimeoutError, *_NEXT_HOST) as exc:
                failures.append(exc)
        # A host that answered as a standby says more than one that did not answer.
        raise next((f for f in failures if isinstance(f, _NOT_PRIMARY)), failures[-1])

    def pool_arguments(self) -> dict[str, Any]:
        """The keyword arguments of ``asyncpg.create_pool`` that make its connections as
        :meth:`connect` does."""
        return {"connect": self.connect}

    def creator(self, **extra: Any) -> Callable[[], Awaitable[asyncpg.Connection]]:
        """A function that opens a connection here with ``extra``: SQLAlchemy's
        ``async_creator``."""

        async def create() -> asyncpg.Connection:
            return await self.connect(**extra)

        return create

    def engine(
        self, connect: dict[str, Any], *, adapter: dict[str, Any] | None = None, **options: Any
    ) -> AsyncEngine:
        """An engine whose every connection is :meth:`connect` with ``connect``; ``adapter``:
        what SQLAlchemy's asyncpg adapter takes beside the connection (its statement cache,
        how it names statements), which ``async_creator`` alone cannot pass; ``options`` are
        ``create_async_engine``'s (the pool's size and waits)."""
        create = self.creator(**connect)
        if not adapter:
            return create_async_engine("postgresql+asyncpg://", async_creator=create, **options)
        made: list[AsyncEngine] = []

        def creator() -> Any:  # what async_creator does, with the adapter's arguments
            dbapi: Any = made[0].sync_engine.dialect.dbapi
            return dbapi.connect(async_creator_fn=create, **adapter)

        made.append(create_async_engine("postgresql+asyncpg://", creator=creator, **options))
        return made[0]


def parse(url: str) -> DatabaseAddress:
    """The address ``url`` names; :class:`SettingsError` (with the URL's password hidden)
    when it is not one sessiond can use."""
    try:
        parts = urlsplit(url)
    except ValueError:  # an unbalanced "[" of an IPv6 address
        raise _refused("is not a URL that can be read") from None
    if parts.scheme not in _SCHEMES:
        raise _refused("is not a PostgreSQL URL")
    auth, at, hostspec = parts.netloc.rpartition("@")
    if not at:
        auth, hostspec = "", parts.netloc
    user, colon, password = auth.partition(":")
    query = _query(parts.query)
    hosts = _hosts(hostspec, query.get("host"), query.get("port"))
    attrs = query.get("target_session_attrs", "").strip().lower()
    if attrs in STANDBY:
        raise _refused(
            f"asks for a standby (target_session_attrs={attrs}); sessiond writes, and reads "
            "what it wrote, so it needs the primary: write target_session_attrs=primary or "
            "read-write, or leave it out (then sessiond asks for the primary)",
            forms=False,
        )
    if attrs and attrs not in USABLE:
        raise _refused(
            f"has target_session_attrs={attrs!r}, which is not one of primary, read-write, "
            "any (sessiond needs the primary)",
            forms=False,
        )
    database = query.get("dbname") or query.get("database") or unquote(parts.path[1:]) or None
    return DatabaseAddress(
        hosts=hosts,
        user=query.get("user") or unquote(user) or None,
        password=query.get("password") or (unquote(password) if colon else None),
        database=database,
        target_session_attrs=USABLE[attrs or "any"],
        options=tuple(
            (k, v)
            for k, v in query.items()
            if k not in _ADDRESS_KEYS or (k == "port" and not hosts)
        ),
    )


def _show_host(host: str, port: int) -> str:
    if host.startswith("/"):
        return f"{quote(host, safe='')}:{port}"
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _refused(why: str, *, forms: bool = True) -> SettingsError:
    # The URL itself is never repeated: it may hold a password.
    return SettingsError(
        f"database_url {why}" + (f"; the forms sessiond reads: {_FORMS}" if forms else "")
    )


def _query(text: str) -> dict[str, str]:
    """The query's parameters; ``host`` may be repeated (its values are joined with commas,
    as one libpq list), no other may."""
    found: dict[str, str] = {}
    try:
        pairs = parse_qsl(text, keep_blank_values=True, strict_parsing=bool(text))
    except ValueError:
        raise _refused("has a query that cannot be read") from None
    for key, value in pairs:
        if key in found:
            if key != "host":
                raise _refused(f"gives {key} more than once")
            found[key] += "," + value
        else:
            found[key] = value
    return found


def _hosts(
    hostspec: str, query_hosts: str | None, query_ports: str | None
) -> tuple[tuple[str, int], ...]:
    """(host, port) pairs from the part before the path or from ``host=`` (not both), with
    ``port=`` giving the port of each host that names none (one port for all, or one each)."""
    if hostspec and query_hosts is not None:
        raise _refused("names hosts both before the path and in host=; keep one of them")
    if query_hosts is not None:
        entries = [_split(entry, unquoted=True) for entry in query_hosts.split(",")]
    elif hostspec:
        entries = [_split(entry, unquoted=False) for entry in hostspec.split(",")]
    else:
        entries = []
    ports = [p.strip() for p in query_ports.split(",")] if query_ports else []
    if entries and ports and len(ports) not in (1, len(entries)):
        raise _refused(f"names {len(entries)} hosts and {len(ports)} ports in port=")
    if not entries:
        return ()  # asyncpg's defaults (PGHOST, the usual socket folders; port= if given)
    pairs = []
    for index, (host, port) in enumerate(entries):
        if not host:
            raise _refused("has an empty host in its host list")
        if port is None:
            given = ports[0] if len(ports) == 1 else (ports[index] if ports else "")
            port = _port(given)
        pairs.append((host, port))
    return tuple(pairs)


def _split(entry: str, *, unquoted: bool) -> tuple[str, int | None]:
    """``host``, ``host:port``, ``[v6]:port``, ``/socket/folder`` (before the path:
    ``%2Fsocket%2Ffolder:port``): the host and its port."""
    entry = entry.strip()
    if not unquoted and entry.startswith("%2"):  # a socket folder, still encoded
        folder, colon, port = entry.rpartition(":")
        if colon and port.isdigit():
            return unquote(folder), _port(port)
        return unquote(entry), None
    if entry.startswith("/"):
        return entry, None
    if entry.startswith("["):
        host, bracket, rest = entry[1:].partition("]")
        if not bracket or (rest and not rest.startswith(":")):
            raise _refused("has an IPv6 host that is not written [address] or [address]:port")
        return host, _port(rest[1:]) if rest else None
    if entry.count(":") == 1:
        host, _, port = entry.partition(":")
        return host, _port(port)
    return entry, None  # a name, an IPv4 address, or a bare IPv6 address


def _port(text: str) -> int:
    if not text:
        return DEFAULT_PORT
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise _refused(f"has a port that is not a number from 1 to 65535 ({text[:10]!r})")
    return int(text)
