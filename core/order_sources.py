"""The seam between order tracking (GetOrderStatus) and a payment provider: what a tracker asks of a provider.

A provider package (today `providers.xsolla`) supplies `OrderSources`: a lookup of one order's status (polled,
`OrderLookup`) and, when the provider has one, a per-player socket that pushes status changes (`SocketPool`).
Both report statuses in the service's own vocabulary (`ReportedStatus`, an `entitlements.v1.OrderStatus`
value), so the generic tracker (`server.tracking`) never parses a provider's words. The service's composition
root chooses the provider.

ProviderError
├── OrderUnknown        the provider does not know the order in that project (e.g. HTTP 404); ends the stream
├── TokenRefused        the provider rejected the player's token (e.g. HTTP 401, 403); ends the stream
└── LookupFailed        network error, timeout, 5xx, or an answer that cannot be read; retried with backoff
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from core.reconciliation import ProviderOrder


@dataclass(frozen=True, slots=True)
class Player:
    """Whom a socket or a lookup acts for: the project, the player and the player's token (never logged)."""

    project_id: int
    user_id: str
    token: str

    def __repr__(self) -> str:
        return f"Player(project_id={self.project_id}, user_id=<{len(self.user_id)} chars>, token=<hidden>)"


@dataclass(frozen=True, slots=True)
class ReportedStatus:
    """An order status as a provider reported it.

    Attributes:
        status: the `entitlements.v1.OrderStatus` value it stands for, or None for a word the provider's
            vocabulary does not hold (the tracker logs it once and ignores it).
        word: what the provider said, for that log line.
    """

    status: int | None
    word: str


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

    async def status(self, player: Player, order_id: str) -> ReportedStatus:
        """Returns the order's status at the provider.

        Raises:
            OrderUnknown, TokenRefused, LookupFailed.
        """
        ...

    async def order(self, player: Player, order_id: str) -> ProviderOrder:
        """Returns the order with its items, as the provider records it (for reconciliation,
        `core.reconciliation`); `user_id` is the player's, whose token read it.

        Raises:
            OrderUnknown, TokenRefused, LookupFailed.
        """
        ...

    async def close(self) -> None:
        """Releases what the lookup holds (an HTTP session)."""
        ...


class SocketListener(Protocol):
    """What a socket tells one order's tracker. Called on the socket's read loop: must not block or raise."""

    def socket_status(self, reported: ReportedStatus) -> None:
        """The socket reported a status for this order."""

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
        ...


@dataclass(frozen=True)
class OrderSources:
    """What one provider gives order tracking.

    Attributes:
        name: the provider's name as players and operators know it ("Xsolla"), for error messages.
        lookup: the order-status lookup (polling).
        sockets: the per-player sockets, or None to follow orders by polling only.
        default_project_id: the project a GetOrderStatus request means when it leaves `project_id` at 0 (0: none).
    """

    name: str
    lookup: OrderLookup
    sockets: SocketPool | None
    default_project_id: int = 0

    async def close(self) -> None:
        """Closes the sockets, then the lookup."""
        if self.sockets is not None:
            await self.sockets.close()
        await self.lookup.close()
