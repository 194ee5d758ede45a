"""Where a request comes from, and whether that network may send webhooks (an optional allow-list).

The allow-list is off by default: the signature is what authenticates a webhook. Turned on, it is a second
fence, checked before the body is read. Behind a reverse proxy the socket peer is the proxy, so the client's
address must be taken from a header the proxy sets; which header, and how many proxies stand in front, are
explicit settings, because a header the proxy does not overwrite is whatever the client wants it to be.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping, Sequence
from types import MappingProxyType

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_networks(text: str, named: Mapping[str, Sequence[str]] = MappingProxyType({})) -> tuple[Network, ...]:
    """Parses a comma or space separated list of networks (CIDR or single addresses).

    A name of `named` (e.g. the provider's `xsolla`) stands for its list. An empty text means no allow-list.

    Raises:
        ValueError: an entry is neither a name of `named` nor a network.
    """
    networks: list[Network] = []
    for entry in text.replace(",", " ").split():
        listed = named.get(entry.lower())
        if listed is not None:
            networks.extend(ipaddress.ip_network(net) for net in listed)
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            names = "".join(f" or {name!r}" for name in sorted(named))
            raise ValueError(f"{entry!r} is not a network (CIDR), an address{names}") from None
    return tuple(dict.fromkeys(networks))


def parse_address(text: str) -> Address | None:
    """An IP address from a socket peer or a forwarding header entry; None when it is not one."""
    text = text.strip()
    if text.startswith("[") and "]" in text:  # "[2001:db8::1]:443"
        text = text[1 : text.index("]")]
    elif text.count(":") == 1:  # "203.0.113.7:52100"
        text = text.partition(":")[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped  # a dual-stack socket reports IPv4 peers as ::ffff:a.b.c.d
    return address


class SourceFilter:
    """Finds a request's client address and checks it against the allow-list.

    Args:
        networks: the allowed networks; empty allows everyone.
        trusted_header: the header a trusted reverse proxy sets (e.g. "X-Forwarded-For"); None uses the
            socket peer.
        hops: how many trusted proxies append to that header: the client is the `hops`-th address from the
            right (entries further left were written by the client itself and prove nothing).
    """

    def __init__(self, networks: tuple[Network, ...], trusted_header: str | None = None, hops: int = 1) -> None:
        if hops < 1:
            raise ValueError("hops must be >= 1")
        self.networks = networks
        self.trusted_header = trusted_header
        self.hops = hops

    @property
    def enabled(self) -> bool:
        return bool(self.networks)

    def client_address(self, peer: str | None, headers: Mapping[str, str]) -> Address | None:
        """The client's address, or None when it cannot be told (no peer, header missing or garbled)."""
        if self.trusted_header is None:
            return parse_address(peer) if peer else None
        value = headers.get(self.trusted_header)
        if not value:
            return None
        entries = [entry for entry in value.split(",") if entry.strip()]
        if len(entries) < self.hops:
            return None
        return parse_address(entries[-self.hops])

    def allows(self, address: Address | None) -> bool:
        """True when there is no allow-list, or `address` is inside one of its networks."""
        if not self.networks:
            return True
        if address is None:
            return False
        return any(address in network for network in self.networks)
