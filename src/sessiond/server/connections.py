"""How many connections the server holds open: in all, per client address, and the open-files
limit that has to cover them.

:class:`ConnectionLimits` counts the open connections of one server and says, as each one
opens, whether it may stay (:mod:`sessiond.server.protocol` answers those that may not:
``503 server_busy`` at ``max_connections``, ``429 too_many_connections`` at
``max_connections_per_address``, both with ``Retry-After``). A connection is counted against
its TCP peer's address: the one thing about it a client cannot choose. An IPv6 peer counts
against its /64 (one host can take any address of its /64). A peer that is a trusted proxy
(``trusted_proxies``) counts against the total only, since many clients share its address; the
proxy limits its own clients.

:func:`check_open_files` runs at start: the soft ``RLIMIT_NOFILE`` must cover
``max_connections`` and what else the process keeps open (:func:`open_files_needed`); it is
raised to the hard limit if it does not, and one warning says so if even that is too low.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import resource
import time
from collections.abc import Sequence

from ..errors import ServerBusy, SessiondError, TooManyConnections
from ..settings import Settings
from .addresses import Network, networks

log = logging.getLogger("sessiond.server")

#: ``Retry-After`` on a connection refused for a limit, in seconds: about uvicorn's keep-alive
#: timeout, within which idle connections close and make room.
RETRY_AFTER_SECONDS = 5

#: Refused connections that may linger at once (their answer sent, the rest of the request read
#: and dropped, so that the answer is not lost to a reset). Beyond it, a refused connection is
#: closed as soon as its answer is written: a flood of refusals cannot hold many descriptors.
MAX_LINGERING = 64

#: Descriptors kept for what is not a client connection: the listening socket, the event
#: loop's, log and database files, connections to directories and Kerberos, and the refused
#: connections that linger (at most :data:`MAX_LINGERING`).
RESERVED_FILES = 128

#: At most one warning about refused connections per this many seconds (with a count).
LOG_INTERVAL_SECONDS = 10.0


class ConnectionLimits:
    """The open connections of one server, in all and per address key."""

    def __init__(
        self, max_total: int, max_per_address: int, trusted_proxies: Sequence[Network] = ()
    ) -> None:
        self.max_total = max_total
        self.max_per_address = max_per_address
        self.trusted_proxies = tuple(trusted_proxies)
        self.total = 0
        self.by_address: dict[str, int] = {}
        self.lingering = 0
        self._refused_unlogged = 0
        self._latest: tuple[str | None, SessiondError] | None = None
        self._next_log = 0.0
        self._log_later: asyncio.TimerHandle | None = None

    def address_key(self, peer: str | None) -> str | None:
        """What a connection from ``peer`` is counted against besides the total: the IPv4
        address, the IPv6 /64, or ``None`` (a trusted proxy, a Unix socket)."""
        if not peer:
            return None
        if ":" not in peer and not self.trusted_proxies:
            return peer  # the common case, with no parsing: an IPv4 peer, no proxies
        try:
            address = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
            address = address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
        if any(address in net for net in self.trusted_proxies):
            return None
        if isinstance(address, ipaddress.IPv6Address):
            return str(ipaddress.IPv6Network((int(address) >> 64 << 64, 64)))
        return str(address)

    def admit(self, key: str | None) -> SessiondError | None:
        """Count a new connection counted against ``key``; or the refusal, counting nothing."""
        if self.total >= self.max_total:
            return ServerBusy(
                f"the server has the most connections it accepts open ({self.max_total}); "
                f"try again in {RETRY_AFTER_SECONDS} s, or on another node"
            )
        if key is not None:
            count = self.by_address.get(key, 0)
            if count >= self.max_per_address:
                return TooManyConnections(
                    f"your address has the most connections one address may have open "
                    f"({self.max_per_address}); close or reuse the ones you have, and try "
                    f"again in {RETRY_AFTER_SECONDS} s"
                )
            self.by_address[key] = count + 1
        self.total += 1
        return None

    def release(self, key: str | None) -> None:
        """A connection :meth:`admit` counted has closed."""
        self.total -= 1
        if key is not None:
            count = self.by_address[key] - 1
            if count:
                self.by_address[key] = count
            else:
                del self.by_address[key]

    def refused(self, peer: str | None, error: SessiondError) -> None:
        """Log a refusal: the first at once, then at most one line per
        :data:`LOG_INTERVAL_SECONDS` with how many there were (the last line comes when the
        interval ends, even if the refusals have stopped)."""
        self._refused_unlogged += 1
        self._latest = (peer, error)
        if self._log_later is not None:
            return  # a line is due already
        wait = self._next_log - time.monotonic()
        if wait <= 0:
            self._log_refusals()
        else:
            self._log_later = asyncio.get_running_loop().call_later(wait, self._log_refusals)

    def _log_refusals(self) -> None:
        self._log_later = None
        if not self._refused_unlogged or self._latest is None:
            return
        peer, error = self._latest
        log.warning(
            "refused %d connection(s) for a connection limit since the last such line; the "
            "latest from %s: %s %s (max_connections %d, max_connections_per_address %d, "
            "open now %d)",
            self._refused_unlogged,
            peer or "a local socket",
            error.status,
            error.code,
            self.max_total,
            self.max_per_address,
            self.total,
        )
        self._refused_unlogged = 0
        self._next_log = time.monotonic() + LOG_INTERVAL_SECONDS


def limits_for(settings: Settings) -> ConnectionLimits:
    """The limits of a server with these settings."""
    return ConnectionLimits(
        settings.max_connections,
        settings.max_connections_per_address,
        networks(settings.trusted_proxies),
    )


def open_files_needed(settings: Settings) -> int:
    """Descriptors the process may need at once: every connection the limits allow, the
    database connections, and :data:`RESERVED_FILES`."""
    return settings.max_connections + settings.database_connections + RESERVED_FILES


def check_open_files(settings: Settings) -> tuple[int, int]:
    """At start: raise the soft ``RLIMIT_NOFILE`` to the hard limit when it is below
    :func:`open_files_needed`, and log one warning if it stays below. Returns the soft limit
    and what is needed."""
    needed = open_files_needed(settings)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed and soft != hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (OSError, ValueError) as exc:
            log.debug("cannot raise the open files limit to %s: %s", hard, exc)
        else:
            log.info("raised the open files limit (RLIMIT_NOFILE) from %d to %d", soft, hard)
            soft = hard
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning(
            "the open files limit (RLIMIT_NOFILE) is %d, below the %d that max_connections "
            "(%d) needs with database_connections (%d) and %d more: under load, new "
            "connections will fail before the limits answer them; raise the limit "
            "(systemd: LimitNOFILE=, a container: --ulimit nofile=) or lower max_connections",
            soft,
            needed,
            settings.max_connections,
            settings.database_connections,
            RESERVED_FILES,
        )
    return soft, needed
