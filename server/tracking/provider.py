"""What a tracker needs from a payment provider, so that a second provider is a new module, not edits across
the tree: a lookup of one order's status (polled), and a per-player socket that pushes status changes.

Xsolla's implementations are `server.tracking.xsolla_orders` (Get order) and `server.tracking.xsolla_socket`
(the Centrifugo order-status WebSocket).

ProviderError
├── OrderUnknown        the provider does not know the order in that project (Xsolla: 404); ends the stream
├── TokenRefused        the provider rejected the player's token (Xsolla: 401, 403); ends the stream
└── LookupFailed        network error, timeout, 5xx, or an answer that cannot be read; retried with backoff
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True, slots=True)
class Player:
    """Whom a socket or a lookup acts for: the project, the player and the player's token (never logged)."""

    project_id: int
    user_id: str
    token: str

    def __repr__(self) -> str:
        return f"Player(project_id={self.project_id}, user_id=<{len(self.user_id)} chars>, token=<hidden>)"


class ProviderError(Exception):
    """A status lookup did not produce a status."""


class OrderUnknown(ProviderError):
    """The provider does not know the order."""


class TokenRefused(ProviderError):
    """The provider rejected the token."""


class LookupFailed(ProviderError):
    """A temporary failure: worth trying again later."""


class OrderLookup(Protocol):
    """Reads one order's status from the provider (short polling)."""

    async def status(self, player: Player, order_id: str) -> str:
        """Returns the provider's status string for the order.

        Raises:
            OrderUnknown, TokenRefused, LookupFailed.
        """
        ...


class SocketListener(Protocol):
    """What a socket tells one order's tracker. Called on the socket's read loop: must not block or raise."""

    def socket_status(self, status: str) -> None:
        """The socket reported a status (a provider string) for this order."""

    def socket_failed(self, reason: str) -> None:
        """The socket cannot be relied on any more (could not connect, closed for good, or broke)."""


class SocketLease(Protocol):
    """One order's use of a shared player socket."""

    def release(self) -> None:
        """Stops delivering to this order; the socket closes when no order uses it. Idempotent."""


class SocketPool(Protocol):
    """Shares one status socket per player among the orders followed for that player."""

    def acquire(self, player: Player, order_id: str, listener: SocketListener) -> SocketLease:
        """Delivers the order's statuses (those already seen by the player's socket first) to `listener`."""
        ...

    async def close(self) -> None:
        """Closes every socket."""
