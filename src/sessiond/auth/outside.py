"""The worlds outside the event loop a sign-in waits on, each on threads of its own.

Password checks block in C libraries: libkrb5 asking the KDC, libldap (python-ldap) talking to a
directory, libargon2 hashing. Each of these gets an :class:`Outside`: a ``ThreadPoolExecutor``
with a fixed number of workers, a bound on the callers waiting for one (beyond it: ``503
service_unavailable`` at once, ``details.cause`` ``kdc_busy`` / ``directory_busy`` /
``argon2_busy``), and a per-call timeout after which the caller gets ``503`` with
``kdc_timeout`` / ``directory_timeout`` and a message naming the setting. So a domain controller
that stops answering takes the Kerberos threads, never the Argon2 ones: a platform administrator
still signs in, and a Windows sign-in is answered within its timeout.

A thread blocked in libkrb5 or in a socket read cannot be cancelled from Python: after the
timeout the caller is answered, but the thread stays busy until the library gives up by
itself, and it still counts against its pool. That is the point of the bounds: a stuck
outside world keeps at most its own workers (and its own queue of callers, answered at their
timeout), and nothing else waits behind it (docs/windows.md, "Timeouts and threads").

One pool per outside world and settings, per process: the Kerberos password check and the
Negotiate acceptor share the KDC's; ``[ldap]`` and ``[windows.directory]`` have one each.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import logging
import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from ..errors import ServiceUnavailable
from ..settings import DirectorySettings, WindowsSettings

log = logging.getLogger("sessiond.auth")

T = TypeVar("T")

#: Callers that may wait for a busy KDC or directory, per worker.
WAITING_PER_WORKER = 4
#: Callers that may wait for an Argon2 thread: a burst of sign-ins is queued, not refused
#: (200 at once with the default cost take about 19 s on 2 cores: docs/benchmarks.md).
ARGON2_WAITING = 1024


class Outside:
    """A bounded executor for one outside world: ``workers`` threads, at most ``waiting``
    more callers queued, each call answered within ``timeout`` seconds (None: no limit)."""

    def __init__(
        self,
        name: str,
        what: str,
        *,
        workers: int,
        waiting: int,
        timeout: float | None = None,
        workers_setting: str | None = None,
        timeout_setting: str | None = None,
        hint: str = "",
    ) -> None:
        self.name = name
        self.what = what
        self.workers = workers
        self.waiting = waiting
        self.timeout = timeout
        self.workers_setting = workers_setting
        self.timeout_setting = timeout_setting
        self.hint = hint
        self._executor = ThreadPoolExecutor(workers, thread_name_prefix=f"sessiond-{name}")
        self._lock = threading.Lock()
        self._in_use = 0  # calls submitted and not finished: running (stuck ones too) or queued

    @property
    def in_use(self) -> int:
        """Calls running (those whose caller has timed out included) or queued."""
        return self._in_use

    async def run(self, func: Callable[..., T], *args: object) -> T:
        """``func(*args)`` on one of this pool's threads (with the caller's context variables,
        as ``asyncio.to_thread``); its exceptions are raised here."""
        with self._lock:
            if self._in_use >= self.workers + self.waiting:
                raise self._busy()
            self._in_use += 1
        context = contextvars.copy_context()
        try:
            submitted = self._executor.submit(context.run, func, *args)
        except BaseException:
            self._done()
            raise
        submitted.add_done_callback(self._done)
        try:
            # On timeout (or cancellation) a call still queued is cancelled; a running one
            # cannot be and runs on (see the module's docstring).
            return await asyncio.wait_for(asyncio.wrap_future(submitted), self.timeout)
        except TimeoutError:
            raise self._timed_out() from None

    def _done(self, _: object = None) -> None:
        with self._lock:
            self._in_use -= 1

    def _busy(self) -> ServiceUnavailable:
        message = (
            f"{self.what} is busy: all {self.workers} of its threads are in use and "
            f"{self.waiting} more calls wait for them; try again shortly"
        )
        if self.workers_setting:
            message += f" (or raise {self.workers_setting})"
        log.warning("refused: %s [%s_busy]", message, self.name)
        return ServiceUnavailable(message, details={"cause": f"{self.name}_busy"})

    def _timed_out(self) -> ServiceUnavailable:
        message = (
            f"{self.what} did not answer within {self.timeout:g} s ({self.timeout_setting})"
            f"{self.hint}"
        )
        log.warning("refused: %s [%s_timeout]", message, self.name)
        return ServiceUnavailable(message, details={"cause": f"{self.name}_timeout"})

    def shutdown(self) -> None:
        """Stop taking calls; threads stuck outside are not waited for."""
        self._executor.shutdown(wait=False, cancel_futures=True)


def kdc(settings: WindowsSettings) -> Outside:
    """The threads that wait on the KDC (Kerberos password checks, Negotiate steps)."""
    return _kdc(
        settings.realm, settings.kerberos_workers, settings.kerberos_timeout.total_seconds()
    )


def directory(settings: DirectorySettings, section: str) -> Outside:
    """The threads that wait on the directory of ``section`` (``ldap`` or
    ``windows.directory``): its searches and binds."""
    return _directory(section, settings.url, settings.workers, settings.timeout.total_seconds())


def windows_check(settings: WindowsSettings) -> Outside:
    """Where a Windows password is checked: the KDC's threads, or the directory's for
    ``password_check = "ldap"``."""
    if settings.password_check == "ldap" and settings.directory is not None:
        return directory(settings.directory, "windows.directory")
    return kdc(settings)


def argon2() -> Outside:
    """The threads that hash passwords: one per usable core (a hash is all CPU and memory:
    more at once would only share the cores, and hold ``memory_cost`` each). No timeout: a
    hash always ends, in the time its cost takes."""
    return _argon2(usable_cores())


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


@functools.cache
def _kdc(realm: str, workers: int, timeout: float) -> Outside:
    return Outside(
        "kdc",
        f"the KDC of {realm}",
        workers=workers,
        waiting=workers * WAITING_PER_WORKER,
        timeout=timeout,
        workers_setting="windows.kerberos_workers",
        timeout_setting="windows.kerberos_timeout",
        hint=": check that the domain controllers answer on port 88 (the kdc lines of "
        "krb5.conf), or raise the setting",
    )


@functools.cache
def _directory(section: str, url: str, workers: int, timeout: float) -> Outside:
    return Outside(
        "directory",
        f"the directory {url}",
        workers=workers,
        waiting=workers * WAITING_PER_WORKER,
        timeout=timeout,
        workers_setting=f"{section}.workers",
        timeout_setting=f"{section}.timeout",
        hint=": check that it answers, or raise the setting",
    )


@functools.cache
def _argon2(workers: int) -> Outside:
    return Outside(
        "argon2",
        "password hashing",
        workers=workers,
        waiting=ARGON2_WAITING,
    )
