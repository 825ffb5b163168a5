"""Who is calling: the peer's address, or the client a trusted proxy names.

The one place that reads ``X-Forwarded-For``. :class:`ClientAddress` wraps the whole ASGI
application and settles ``scope["client"]`` before anything else reads it; everything behind
it (the validation handler, the routes, the audit trail) reads only ``scope["client"]``.
uvicorn's own proxy-header handling is switched off (``sessiond serve``), so this is the only
rewrite.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence

from starlette.types import ASGIApp, Receive, Scope, Send

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address

_FORWARDED_FOR = b"x-forwarded-for"


def networks(entries: Iterable[str]) -> list[Network]:
    """The ``trusted_proxies`` setting as networks (the settings checked each entry)."""
    return [ipaddress.ip_network(entry) for entry in entries]


def _address(text: str) -> Address | None:
    try:
        address = ipaddress.ip_address(text.strip())
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            return None  # a zone names an interface of the proxy, not a client
        if address.ipv4_mapped:
            return address.ipv4_mapped  # a dual-stack socket's view of an IPv4 peer
    return address


def _trusted(address: Address, trusted: Sequence[Network]) -> bool:
    return any(address in net for net in trusted)


def client_address(peer: str, forwarded_for: Sequence[bytes], trusted: Sequence[Network]) -> str:
    """The client's address, given the TCP peer and the ``X-Forwarded-For`` header lines.

    The header is believed only when the peer is inside ``trusted``. Its lines are joined in
    order (RFC 7230 3.2.2) and the chain is walked from the right, past the addresses that are
    themselves trusted proxies: the first one that is not is the client (if all are, the
    left-most). Each entry must be an IP address (no port, no zone); one that is not makes the
    whole header unbelievable, and the peer is the client. Empty list elements are skipped.
    """
    if not forwarded_for or not trusted:
        return peer
    peer_ip = _address(peer)
    if peer_ip is None or not _trusted(peer_ip, trusted):
        return peer
    chain: list[Address] = []
    for line in forwarded_for:
        for entry in line.decode("latin-1").split(","):
            if not entry.strip():
                continue
            address = _address(entry)
            if address is None:
                return peer
            chain.append(address)
    if not chain:
        return peer
    for address in reversed(chain):
        if not _trusted(address, trusted):
            return str(address)
    return str(chain[0])


class ClientAddress:
    """ASGI middleware: ``scope["client"]`` becomes the address :func:`client_address` finds.

    The port stays the peer's: it names the TCP connection (NTLM's legs share one), not the
    client behind the proxy.
    """

    def __init__(self, app: ASGIApp, trusted_proxies: Sequence[Network]) -> None:
        self.app = app
        self.trusted_proxies = tuple(trusted_proxies)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        client = scope.get("client")
        if self.trusted_proxies and client and scope["type"] in ("http", "websocket"):
            forwarded = [value for name, value in scope["headers"] if name == _FORWARDED_FOR]
            address = client_address(client[0], forwarded, self.trusted_proxies)
            if address != client[0]:
                scope = {**scope, "client": (address, client[1])}
        await self.app(scope, receive, send)
