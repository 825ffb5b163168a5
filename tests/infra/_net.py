"""Small loopback networking helpers shared by the test infrastructure."""

from __future__ import annotations

import socket
import subprocess
import time

LOOPBACK = "127.0.0.1"


def free_port(*, udp_too: bool = False) -> int:
    """Return a TCP port on 127.0.0.1 that is free right now (and, if asked, free for UDP too).

    The port is picked by the kernel (bind to port 0) and released again, so there is a tiny
    window in which another process could take it; callers retry their start-up on failure.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((LOOPBACK, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((LOOPBACK, port))
                except OSError:
                    continue
                return port
    raise RuntimeError("could not find a free loopback port")


def port_answers(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_for_ports(
    proc: subprocess.Popen[bytes],
    ports: list[int],
    *,
    timeout: float,
    what: str,
    log_file: str | None = None,
) -> None:
    """Wait until every port in ``ports`` accepts TCP connections, or fail.

    Raises ``RuntimeError`` (with the tail of ``log_file``) if ``proc`` exits first or if the
    ports do not answer within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    pending = list(ports)
    while pending:
        code = proc.poll()
        if code is not None:
            raise RuntimeError(
                f"{what} exited with code {code} during start-up{_log_tail(log_file)}"
            )
        pending = [p for p in pending if not port_answers(p)]
        if not pending:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{what} did not answer on port(s) {pending} within {timeout:.0f}s"
                + _log_tail(log_file)
            )
        time.sleep(0.05)


def stop_process(proc: subprocess.Popen[bytes] | None, *, timeout: float = 5.0) -> None:
    """Terminate ``proc`` (SIGTERM, then SIGKILL after ``timeout`` seconds) and reap it."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=timeout)


def _log_tail(log_file: str | None, lines: int = 30) -> str:
    if not log_file:
        return ""
    try:
        with open(log_file, encoding="utf-8", errors="replace") as fh:
            tail = fh.readlines()[-lines:]
    except OSError:
        return ""
    return "\n--- " + log_file + " ---\n" + "".join(tail)
