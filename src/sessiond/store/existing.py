"""Looking at a store without creating or changing anything: is there one, at which revision.

The administrative commands work only on a store that ``sessiond serve`` or ``sessiond init``
made; they must not create one where their settings happen to point (the wrong working folder,
a database that was never set up), nor migrate one behind the server's back.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from urllib.parse import quote

import sqlalchemy as sa
from alembic.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError, DBAPIError

from ..errors import ServiceUnavailable, SettingsError, StoreMissing, StoreReadOnly
from . import pgurl
from .health import READ_ONLY, read_only

MIGRATIONS = Path(__file__).parent / "migrations"
CONNECT_TIMEOUT = 10.0  # seconds; a closed port answers at once, a dropped packet does not


def _scripts() -> ScriptDirectory:
    return ScriptDirectory(str(MIGRATIONS))


def newest_revision() -> str:
    """The schema revision this sessiond creates and expects."""
    heads = _scripts().get_heads()
    assert len(heads) == 1, heads
    return heads[0]


def known_revision(revision: str) -> bool:
    """Whether ``revision`` is one of this sessiond's migrations (older or newest)."""
    return any(script.revision == revision for script in _scripts().walk_revisions())


async def store_revision(url: str) -> str | None:
    """The schema revision of the sessiond store at ``url``; None when there is none (no SQLite
    file, or a database without sessiond's ``alembic_version`` table). Creates, migrates and
    writes nothing.

    :class:`ServiceUnavailable` when the database cannot be reached; :class:`StoreMissing` when
    the SQLite file is not a database."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise SettingsError(
            "database_url is not a URL: write sqlite+aiosqlite:///<file> or "
            "postgresql+asyncpg://user:password@host:port/database"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        return _sqlite_revision(parsed.database)
    return await _server_revision(pgurl.parse(url))


def _sqlite_revision(database: str | None) -> str | None:
    if not database or database == ":memory:":
        return None
    path = Path(database)
    if not path.is_file():
        return None
    # mode=rw: open an existing file only, never create one.
    uri = f"file:{quote(str(path.resolve()))}?mode=rw"
    try:
        conn = sqlite3.connect(uri, uri=True)
    except sqlite3.Error as exc:
        raise ServiceUnavailable(f"cannot open the database {path}: {exc}") from None
    try:
        has_table = conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'alembic_version'"
        ).fetchone()
        if not has_table:
            return None
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
        return str(row[0]) if row else None
    except sqlite3.DatabaseError as exc:
        raise StoreMissing(
            f"{path} is not a sessiond database ({exc}): point data_dir (--data-dir, "
            "SESSIOND_DATA_DIR) or database_url at the server's store"
        ) from None
    finally:
        conn.close()


async def _server_revision(address: pgurl.DatabaseAddress) -> str | None:
    """Read on the server the store's own connections would use (the primary among the URL's
    hosts), never a standby's copy. No prepared statement kept by name: through PgBouncer in
    transaction pooling the next command's connection may find it taken on the server
    connection this one leaves."""
    engine = address.engine(
        {"timeout": CONNECT_TIMEOUT, "statement_cache_size": 0},
        adapter={"prepared_statement_cache_size": 0, "prepared_statement_name_func": _unnamed},
    )
    try:
        async with engine.connect() as conn:
            return await conn.run_sync(_current_revision)
    except Exception as exc:
        if read_only(exc):
            raise StoreReadOnly(f"{READ_ONLY} (database {address.shown})") from None
        if not isinstance(exc, TimeoutError | OSError | DBAPIError):
            raise
        reason = str(exc.orig if isinstance(exc, DBAPIError) else exc) or type(exc).__name__
        if address.password:
            reason = reason.replace(address.password, "***")
        raise ServiceUnavailable(
            f"cannot reach the database {address.shown} (database_url): "
            f"{reason.splitlines()[0]}; start the database, or correct database_url"
        ) from None
    finally:
        await engine.dispose()


def _current_revision(conn: sa.Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def _unnamed() -> str:
    return ""
