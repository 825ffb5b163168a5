"""The configuration version: read (cached for a poll interval, re-read at once when another
node announces a change), waited on, incremented."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

from .._version import __version__
from ..errors import SessiondError
from ..models import AuditAction, ConfigurationInfo
from ..settings import Settings
from ..store import AuditQuery, BuildInfo, Store
from .common import Actor, Clock, actor_audit, change_audit, require_admin
from .settings_audit import CHANGED, Hasher, changed_secrets, split_settings

MAX_CONFIGURATION_WAIT = 60.0  # seconds a long poll for a configuration change may hold
log = logging.getLogger("sessiond.service")


class Configuration:
    def __init__(
        self,
        settings: Settings,
        store: Store,
        clock: Clock,
        on_reread: Callable[[], Awaitable[None]],
    ) -> None:
        self.settings = settings
        self.store = store
        self.clock = clock
        self._on_reread = on_reread  # another node or the CLI may have installed a licence
        self._version = 0
        self._read_at = 0.0
        self._interval = self.settings.configuration_poll_interval.total_seconds()  # per request
        self._lock = asyncio.Lock()
        self._failed: tuple[float, SessiondError] | None = None  # the last read, if it failed
        self._changed = asyncio.Event()
        self._rereading: asyncio.Task[None] | None = None
        self._reread_again = False
        self._closed = False

    @property
    def build(self) -> BuildInfo:
        s = self.settings
        return BuildInfo(
            version=s.build_version or __version__,
            name=s.build_name,
            date=None,
            description=s.description,
        )

    async def read(self) -> int:
        if self._read_at:
            await self._on_reread()
        info = await self.store.get_configuration()
        self._saw(info.version)
        self._read_at = time.monotonic()
        return self._version

    def _saw(self, version: int) -> None:
        if version > self._version:
            self._version = version
            # Wake everyone waiting for a change, and give later waiters a fresh event.
            self._changed.set()
            self._changed = asyncio.Event()

    def changed(self, version: int) -> None:
        """Another node announced that the version is now ``version``: re-read it (the store,
        not the announcement, is believed), unless this node already knows it."""
        if version > self._version:
            self.reread_soon()

    def reread_soon(self) -> None:
        """Re-read the version (and the licence with it) now, in the background, instead of
        at the next poll: waiters in :meth:`wait_for_change` wake as soon as it is read."""
        if self._closed:
            return
        if self._rereading is not None and not self._rereading.done():
            self._reread_again = True  # once more after the read under way
            return
        self._rereading = asyncio.create_task(self._reread(), name="sessiond-configuration")

    async def _reread(self) -> None:
        self._reread_again = True
        while self._reread_again:
            self._reread_again = False
            try:
                async with self._lock:
                    await self.read()
            except Exception as exc:  # the poll reads again later
                message = getattr(exc, "message", None) or f"{type(exc).__name__}: {exc}"
                log.warning("re-reading the configuration after a notification: %s", message)

    async def close(self) -> None:
        self._closed = True
        if self._rereading is not None:
            self._rereading.cancel()
            await asyncio.gather(self._rereading, return_exceptions=True)
            self._rereading = None

    @property
    def last_known(self) -> int:
        """The version as last read, without reading: for answers while the store is down."""
        return self._version

    def fresh_version(self) -> int | None:
        """The version without reading or waiting, while the last read is fresher than the
        poll interval; None when :meth:`version` would read it (every request asks)."""
        if time.monotonic() - self._read_at < self._interval:
            return self._version
        return None

    async def version(self) -> int:
        """The current version, re-read from the store at most once per poll interval, so a
        change made by another node or by the CLI shows within that interval (at once when
        the store announces it: :meth:`changed`)."""
        fresh = self.fresh_version()
        if fresh is not None:
            return fresh
        asked = time.monotonic()
        async with self._lock:
            failed = self._failed
            if failed is not None and failed[0] >= asked:
                # The read this request waited for failed (the store is down): its answer,
                # rather than one more wait each, one after another, for every request queued.
                raise failed[1]
            if time.monotonic() - self._read_at >= self._interval:
                try:
                    await self.read()
                except SessiondError as exc:
                    self._failed = (time.monotonic(), exc)
                    raise
                self._failed = None
        return self._version

    async def get(self) -> ConfigurationInfo:
        info = await self.store.get_configuration()
        self._saw(info.version)
        return info

    async def wait_for_change(self, after: int, wait: float) -> int:
        """The version, as soon as it is greater than ``after``, or after ``wait`` seconds
        (a long poll: a client subscribes by asking again with the version it got)."""
        deadline = time.monotonic() + max(0.0, min(wait, MAX_CONFIGURATION_WAIT))
        poll = max(0.05, self.settings.configuration_poll_interval.total_seconds())
        while True:
            version = await self.version()
            remaining = deadline - time.monotonic()
            if version > after or remaining <= 0:
                return version
            # This node's increments wake the wait at once, and so do another node's when the
            # store announces them (PostgreSQL); otherwise they show at the next re-read of
            # the store, one poll interval later at most.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), min(poll, remaining))

    async def record_settings(self, node: str, hasher: Hasher) -> bool:
        """At a server's start: a SettingsChanged record when this node's settings differ from
        those it last started with. Settings are recorded as their values; secrets only as
        set and changed, never in any form derived from them (``settings_audit``); ``hasher``
        keeps the node's own hashes of them, to tell when one changed."""
        snapshot, secrets, secret_names = split_settings(self.settings)
        query = AuditQuery(actions=(AuditAction.SETTINGS_CHANGED,), newest_first=True, limit=200)
        before: dict[str, Any] = {}
        for record in await self.store.list_audit(query):
            if record.details.get("node") == node:
                before = record.details.get("settings") or {}
                break
        try:
            moved = await changed_secrets(self.settings, node, secrets, hasher)
        except OSError as exc:
            log.warning(
                "cannot keep the hashes of this node's secret settings in %s: %s; a change of "
                "a secret setting is recorded only when it is set or unset",
                self.settings.data_dir,
                exc.strerror,
            )
            moved = {
                name
                for name in secret_names
                if (before.get(name) is None) != (snapshot.get(name) is None)
            }
        changed: dict[str, Any] = {
            key: [before.get(key), snapshot.get(key)]
            for key in sorted(before.keys() | snapshot.keys())
            if key not in secret_names and before.get(key) != snapshot.get(key)
        }
        changed.update((name, CHANGED) for name in sorted(moved))
        if not changed:
            return False
        details = {"node": node, "changed": dict(sorted(changed.items())), "settings": snapshot}
        now = self.clock()
        await self.store.add_audit(
            change_audit(AuditAction.SETTINGS_CHANGED, now, Actor.system(), details=details)
        )
        return True

    async def increment(self, actor: Actor) -> ConfigurationInfo:
        require_admin(actor, "increment the configuration version")
        now = self.clock()
        info = await self.store.increment_configuration_version(
            at=now,
            by_id=actor.id,
            by_name=actor.name,
            build=self.build,
            audit=actor_audit(AuditAction.CONFIGURATION_VERSION_INCREMENTED, now, actor),
        )
        self._saw(info.version)
        return info
