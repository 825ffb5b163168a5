"""Who is calling: the peer's address, or the client a trusted proxy names."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def peer_address(
    peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]
) -> str | None:
    """``X-Forwarded-For`` is believed only from a proxy listed in ``trusted_proxies``."""
    if peer and forwarded_for and trusted:
        try:
            peer_ip = ipaddress.ip_address(peer)
        except ValueError:
            return peer
        if any(peer_ip in net for net in trusted):
            return forwarded_for.split(",")[0].strip()[:64] or peer
    return peer
