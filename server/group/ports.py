"""The ports a group of service processes shares, held by the group's parent so that no other process joins them.

The workers of a group listen on one gRPC port (and one HTTP port) with SO_REUSEPORT, and the kernel spreads the
incoming connections over their listening sockets. SO_REUSEPORT lets any process of the same user that also sets
it bind the port: a second group started on the same port by mistake would silently take part of the connections.
So before a worker starts, the parent:

1. checks that the port is free: it binds a plain socket (SO_REUSEADDR only, as servers set it, so connections
   of an earlier run lingering in TIME_WAIT do not count) and closes it. Anything listening there, whether it set
   SO_REUSEPORT or not, makes that bind fail;
2. binds a socket with SO_REUSEPORT only, and keeps it (never listening, so it takes no connection) for as long
   as the group runs. Its workers, which set SO_REUSEPORT too, can bind beside it; another process's check (step
   1, or a server without SO_REUSEPORT, such as a single service) cannot, because that socket lacks SO_REUSEADDR.

With port 0, the first address's bind chooses the port, and the workers are given it. A single service
(`ENTITLEMENTS_PROCESSES` = 1) holds nothing and binds without SO_REUSEPORT, as always.
"""

from __future__ import annotations

import contextlib
import socket
from dataclasses import dataclass, field

from server.errors import ConfigError, PortInUse


@dataclass
class HeldPort:
    """A port held for a group (`hold_port`): `port` is the one bound (chosen by the kernel when 0 was asked)."""

    host: str
    port: int
    _sockets: list[socket.socket] = field(default_factory=list, repr=False)

    def close(self) -> None:
        for held in self._sockets:
            held.close()
        self._sockets.clear()


def _addresses(host: str, port: int) -> list[tuple[socket.AddressFamily, tuple[str, int]]]:
    """The addresses `host:port` binds (both families for a name such as localhost), in getaddrinfo's order."""
    try:
        found = socket.getaddrinfo(host.strip("[]") or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise ConfigError(f"cannot resolve the listen address {host!r}: {exc.strerror}") from None
    unique: list[tuple[socket.AddressFamily, tuple[str, int]]] = []
    for family, _, _, _, address in found:
        entry = (family, (str(address[0]), int(address[1])))
        if entry not in unique:
            unique.append(entry)
    return unique


def hold_port(host: str, port: int, what: str) -> HeldPort:
    """Checks that `host:port` is free and holds it for a group's workers (see the module docstring).

    Args:
        host: the listen host, as the setting gives it (an IPv6 address may be in brackets).
        port: the port, or 0 for one the kernel chooses.
        what: the setting that names the port, for the error.

    Raises:
        PortInUse: another process listens there (or holds it for its own group).
        ConfigError: the host does not resolve.
    """
    held = HeldPort(host, port)
    try:
        for family, address in _addresses(host, port):
            address = (address[0], held.port or address[1])
            with socket.socket(family, socket.SOCK_STREAM) as probe:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    probe.bind(address)
                except OSError as exc:
                    raise PortInUse(
                        f"{what}: {address[0]}:{address[1]} is in use by another process ({exc.strerror})"
                    ) from None
                if not held.port:
                    held.port = int(probe.getsockname()[1])
                    address = (address[0], held.port)
            holder = socket.socket(family, socket.SOCK_STREAM)
            held._sockets.append(holder)
            holder.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            try:
                holder.bind(address)
            except OSError as exc:  # taken between the check and now
                raise PortInUse(f"{what}: {address[0]}:{address[1]} was taken meanwhile ({exc.strerror})") from None
    except BaseException:
        with contextlib.suppress(OSError):
            held.close()
        raise
    return held
