"""Order statuses as GetOrderStatus reports them, and the forward-only rule every tracker applies.

Statuses only move forward: NEW < PAID < DONE, and CANCELED and EXPIRED end an order from any earlier status.
DONE, CANCELED and EXPIRED are terminal: nothing moves an order out of them. A status equal to or below the
current one is not reported again, whichever source saw it. The one exception is the grant: when this service
grants the order's items while the status stays where it is ("paid at Xsolla" became "in the inventory"), that
is reported once more with the same status and `entitlements_granted` set.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Final

from entitlements.v1 import entitlements_pb2 as pb

# OrderStatus and OrderStatusSource values as plain ints (the generated enums' values are distinct NewTypes).
NEW: Final = int(pb.ORDER_STATUS_NEW)
PAID: Final = int(pb.ORDER_STATUS_PAID)
DONE: Final = int(pb.ORDER_STATUS_DONE)
CANCELED: Final = int(pb.ORDER_STATUS_CANCELED)
EXPIRED: Final = int(pb.ORDER_STATUS_EXPIRED)

STORED: Final = int(pb.ORDER_STATUS_SOURCE_STORED)
WEBHOOK: Final = int(pb.ORDER_STATUS_SOURCE_WEBHOOK)
WEBSOCKET: Final = int(pb.ORDER_STATUS_SOURCE_WEBSOCKET)
POLLING: Final = int(pb.ORDER_STATUS_SOURCE_POLLING)
RECONCILIATION: Final = int(pb.ORDER_STATUS_SOURCE_RECONCILIATION)

# Both terminal failures share the top rank: neither follows the other.
_RANK: Final = {NEW: 1, PAID: 2, DONE: 3, CANCELED: 4, EXPIRED: 4}
TERMINAL: Final = frozenset({DONE, CANCELED, EXPIRED})

SOURCE_NAMES: Final = {
    STORED: "stored",
    WEBHOOK: "webhook",
    WEBSOCKET: "websocket",
    POLLING: "polling",
    RECONCILIATION: "reconciliation",
}
#: The service's own names of the statuses: in logs, and in the order hash the webhook consumer writes.
STATUS_NAMES: Final = {NEW: "new", PAID: "paid", DONE: "done", CANCELED: "canceled", EXPIRED: "expired"}
_BY_NAME: Final = {name: status for status, name in STATUS_NAMES.items()}


def status_named(name: str) -> int | None:
    """The OrderStatus value of one of the service's own status names (`STATUS_NAMES`, as the webhook consumer
    stores them), or None for anything else (the caller logs and ignores it)."""
    return _BY_NAME.get(name.strip().lower())


def rank(status: int) -> int:
    """How far an order with `status` is (NEW 1 < PAID 2 < DONE 3 < CANCELED, EXPIRED 4): what the forward-only rule
    compares, here and in Redis (`server/lua/upstream.lua`)."""
    return _RANK[status]


@dataclass(frozen=True, slots=True)
class Observation:
    """One update of an order, as sent to watchers.

    Attributes:
        status: an OrderStatus value.
        source: the OrderStatusSource that saw it.
        observed_at_ms: when the source saw it (ms since the epoch).
        entitlements_granted: whether this service has granted the order's items, as last known.
    """

    status: int
    source: int
    observed_at_ms: int
    entitlements_granted: bool

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def to_message(self, order_id: str, *, timed_out: bool = False) -> pb.OrderStatusUpdate:
        message = pb.OrderStatusUpdate(
            order_id=order_id,
            status=self.status,  # type: ignore[arg-type]  # an OrderStatus value
            source=self.source,  # type: ignore[arg-type]  # an OrderStatusSource value
            entitlements_granted=self.entitlements_granted,
            timed_out=timed_out,
        )
        message.observed_at.FromMilliseconds(self.observed_at_ms)
        return message


class OrderProgress:
    """The best known state of one order; `offer` applies the forward-only rule."""

    __slots__ = ("current",)

    def __init__(self) -> None:
        self.current: Observation | None = None

    @property
    def granted(self) -> bool:
        return self.current is not None and self.current.entitlements_granted

    def offer(self, status: int, source: int, observed_at_ms: int, granted: bool | None = None) -> Observation | None:
        """Offers what a source saw; returns the update to send, or None when it tells nothing new.

        Args:
            status: an OrderStatus value.
            source: who saw it.
            observed_at_ms: when.
            granted: whether the order's items are granted, when the source knows (webhooks and the stored
                state); None keeps what is known (Xsolla's WebSocket and Get order cannot tell).
        """
        current = self.current
        known_granted = self.granted if granted is None else granted
        if current is None or (not current.terminal and _RANK[status] > _RANK[current.status]):
            self.current = Observation(status, source, observed_at_ms, known_granted)
            return self.current
        # Same or lower status: only the grant is news, and only while the order can still be delivered.
        if granted and not current.entitlements_granted and current.status in (NEW, PAID, DONE):
            self.current = replace(current, source=source, observed_at_ms=observed_at_ms, entitlements_granted=True)
            return self.current
        return None
