"""Session storage: one interface (:class:`Store`), chosen by the database URL."""

from __future__ import annotations

from ..errors import SettingsError
from ..settings import DatabasePools
from .base import (
    AuditQuery,
    AuditRecord,
    BuildInfo,
    SeatRequest,
    SessionDecision,
    SessionFilter,
    SessionOrder,
    SessionQuery,
    SessionRecord,
    SessionUser,
    SignInAttempt,
    Store,
    Throttle,
    Transaction,
    UserRecord,
)
from .chain import ChainAnchor, ChainHead, ChainKeys, ChainReport

__all__ = [
    "AuditQuery",
    "AuditRecord",
    "BuildInfo",
    "ChainAnchor",
    "ChainHead",
    "ChainKeys",
    "ChainReport",
    "SeatRequest",
    "SessionDecision",
    "SessionFilter",
    "SessionOrder",
    "SessionQuery",
    "SessionRecord",
    "SessionUser",
    "SignInAttempt",
    "Store",
    "Throttle",
    "Transaction",
    "UserRecord",
    "create_store",
]


def create_store(
    url: str,
    *,
    create: bool = True,
    pools: DatabasePools | None = None,
    listen_url: str | None = None,
) -> Store:
    """``sqlite+aiosqlite:///path`` (embedded default) or ``postgresql+asyncpg://...``.

    ``create=False``: make nothing on disk (no SQLite folder or file); for commands that work
    on an existing store, which check it first (:func:`.existing.require_store`). ``pools``:
    how many connections PostgreSQL gets (:attr:`.Settings.database_pools`; default: the
    default ``database_connections``); SQLite's pool is its own. ``listen_url``: PostgreSQL, where
    the connection that listens for other nodes' changes goes (``database_listen_url``; default:
    ``url``)."""
    scheme = url.split(":", 1)[0]
    if scheme.startswith("sqlite"):
        from .sqlite import create_sqlite_store

        return create_sqlite_store(url, create=create)
    if scheme in ("postgresql+asyncpg", "postgresql"):
        from .postgres import create_postgres_store

        return create_postgres_store(
            url.replace("postgresql://", "postgresql+asyncpg://", 1), pools, listen_url=listen_url
        )
    raise SettingsError(
        f"unsupported database URL scheme {scheme!r}: use sqlite+aiosqlite:///<file> or "
        "postgresql+asyncpg://user:password@host/database"
    )
