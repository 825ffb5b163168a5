"""Starting, waiting on and stopping the test servers' processes (shared by tests/infra)."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from types import TracebackType
from typing import Self

from tests.infra._net import LOOPBACK, port_answers


class Stoppable:
    """A ``with`` block around a test server: ``__enter__`` returns it, ``__exit__`` calls
    :meth:`stop` (which a subclass defines; it must be safe to call more than once)."""

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def wait_for_ports(
    proc: subprocess.Popen[bytes],
    ports: list[int],
    *,
    timeout: float,
    what: str,
    log_file: str | None = None,
    host: str = LOOPBACK,
) -> None:
    """Wait until every port in ``ports`` on ``host`` accepts TCP connections, or fail.

    Raises ``RuntimeError`` (with the tail of ``log_file``) if ``proc`` exits first or if the
    ports do not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        check_running(proc, what, log_file)
        pending = [p for p in pending if not port_answers(p, host)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not answer on port(s) {pending} within {timeout:.0f}s"
                + log_tail(log_file)
            )
        time.sleep(0.05)


def check_running(proc: subprocess.Popen[bytes], what: str, log_file: str | None = None) -> None:
    """Raise ``RuntimeError`` (with the tail of ``log_file``) if ``proc`` has exited."""
    code = proc.poll()
    if code is not None:
        raise RuntimeError(f"{what} exited with code {code} during start-up{log_tail(log_file)}")


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    reap(proc, timeout=timeout)


def reap(proc: subprocess.Popen[bytes], *, timeout: float = 5.0) -> None:
    """Wait ``timeout`` seconds for ``proc`` to exit, then SIGKILL it and reap it."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def log_tail(log_file: str | None, lines: int = 40) -> str:
    """The last ``lines`` lines of ``log_file`` under a header, for an error message ("" if
    there is no file)."""
    if not log_file:
        return ""
    try:
        with open(log_file, encoding="utf-8", errors="replace") as fh:
            tail = fh.readlines()[-lines:]
    except OSError:
        return ""
    return f"\n--- {log_file} ---\n" + "".join(tail)


def descendants(root: int) -> list[int]:
    """``root`` and every live process below it (by parent pid), root first."""
    children: dict[int, list[int]] = {}
    for pid, _, parent, _ in _live_processes():
        children.setdefault(parent, []).append(pid)
    found, pending = [], [root]
    while pending:
        pid = pending.pop(0)
        found.append(pid)
        pending.extend(children.get(pid, []))
    return found


def group_members(group: int) -> list[int]:
    """Live (not zombie) processes of process group ``group``."""
    return [pid for pid, _, _, pgrp in _live_processes() if pgrp == group]


def _live_processes() -> Iterator[tuple[int, str, int, int]]:
    """(pid, state, parent pid, process group) of every process but zombies, from /proc."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", encoding="utf-8", errors="replace") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z":
            yield int(entry), fields[0], int(fields[1]), int(fields[2])
