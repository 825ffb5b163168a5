"""Small loopback networking helpers shared by the test infrastructure."""

from __future__ import annotations

import socket

LOOPBACK = "127.0.0.1"


def free_port(*, udp_too: bool = False, host: str = LOOPBACK) -> int:
    """Return a TCP port on ``host`` that is free right now (and, if asked, free for UDP too).

    The port is picked by the kernel (bind to port 0) and released again, so there is a tiny
    window in which another process could take it; callers retry their start-up on failure.
    """
    for _ in range(50):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as tcp:
            tcp.bind((host, 0))
            port = int(tcp.getsockname()[1])
            if not udp_too:
                return port
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
                try:
                    udp.bind((host, port))
                except OSError:
                    continue
                return port
    raise RuntimeError(f"could not find a free port on {host}")


def port_answers(port: int, host: str = LOOPBACK, timeout: float = 0.5) -> bool:
    """True if a TCP connection to ``host:port`` can be opened."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def tcp_port_free(host: str, port: int) -> bool:
    """True if ``host:port`` can be bound for listening (with SO_REUSEADDR, as servers do)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True
