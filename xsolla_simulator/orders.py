"""Orders as the simulator keeps them, and the Store API's view of one (the Get order body).

An order has two statuses: `status`, the latest one set on it (the truth), and `polling_status`, what Get order
answers. They differ only when a status change was announced without the `polling` channel, which is how a test
makes the Store API lag behind the WebSocket.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from xsolla_simulator.errors import InvalidRequest, UnknownOrder

#: Every status an order can have: the four of Get order's documentation, and `expired` (admin order search).
STATUSES: Final = ("new", "paid", "done", "canceled", "expired")

#: Item types of the order webhooks (`items[].type`).
ITEM_TYPES: Final = ("virtual_good", "virtual_currency", "game_key", "bundle", "physical_good")

DEFAULT_ITEM_PRICE: Final = Decimal("1.99")


@dataclass(frozen=True)
class OrderItem:
    """One line of an order.

    Attributes:
        price: the price of one unit in the order's currency; the line costs `price * quantity`.
    """

    sku: str
    quantity: int
    type: str = "virtual_good"
    price: Decimal = DEFAULT_ITEM_PRICE
    is_free: bool = False

    @property
    def amount(self) -> Decimal:
        """What the line costs (zero when free)."""
        return Decimal(0) if self.is_free else self.price * self.quantity

    @classmethod
    def parse(cls, raw: OrderItem | Mapping[str, Any]) -> OrderItem:
        """An item from `{"sku", "quantity", "type"?, "price"?, "is_free"?}` (or an `OrderItem`, unchanged).

        Raises:
            InvalidRequest: a field is missing or malformed.
        """
        if isinstance(raw, OrderItem):
            return raw
        sku = raw.get("sku")
        if not isinstance(sku, str) or not sku:
            raise InvalidRequest("item sku must be a non-empty string")
        quantity = raw.get("quantity", 1)
        if not isinstance(quantity, int) or isinstance(quantity, bool) or quantity < 1:
            raise InvalidRequest(f"item {sku!r}: quantity must be an integer >= 1")
        item_type = raw.get("type", "virtual_good")
        if item_type not in ITEM_TYPES:
            raise InvalidRequest(f"item {sku!r}: type must be one of {', '.join(ITEM_TYPES)}")
        try:
            price = Decimal(str(raw.get("price", DEFAULT_ITEM_PRICE)))
        except InvalidOperation:
            raise InvalidRequest(f"item {sku!r}: price must be a decimal number") from None
        if not price.is_finite() or price < 0:
            raise InvalidRequest(f"item {sku!r}: price must be a non-negative number")
        return cls(sku=sku, quantity=quantity, type=item_type, price=price, is_free=bool(raw.get("is_free", False)))


@dataclass(frozen=True)
class StatusChange:
    """One status change of an order, and the channels that announced it."""

    status: str
    channels: tuple[str, ...]
    at: datetime


@dataclass(eq=False)
class SimOrder:
    """An order on the simulator: a live view, updated as its status changes.

    Attributes:
        order_id: Xsolla's order id (`order.id` in webhooks, `order_id` in Get order and WebSocket messages),
            unique across the simulator's projects.
        project_id: the project the order belongs to (only its Get order, channels and webhooks see it).
        user_id: the player (`user.external_id` in order webhooks, `user.id` in payment webhooks).
        status: the latest status set.
        polling_status: the status Get order answers.
        invoice_id: the payment's transaction id (`order.invoice_id`, `billing.transaction.id`).
        created_at: when the order was created (`date_created` in the admin order search); tests may backdate it.
        changes: every status change, oldest first (creation counts as the first, "new").
        refund_code, refund_reason: what the refund of a cancellation says (`refund_details`).
    """

    order_id: int
    project_id: int
    user_id: str
    items: tuple[OrderItem, ...]
    invoice_id: int
    currency: str = "USD"
    sandbox: bool = False
    status: str = "new"
    polling_status: str = "new"
    created_at: datetime = field(default_factory=lambda: datetime.now(UTC))
    changes: list[StatusChange] = field(default_factory=list)
    refund_code: int = 1
    refund_reason: str = "Cancellation by the request of user / game"

    @property
    def amount(self) -> Decimal:
        """The order's total."""
        return sum((item.amount for item in self.items), Decimal(0))

    @property
    def is_free(self) -> bool:
        return self.amount == 0


class OrderBook:
    """Every order of one simulator (all its projects), by id.

    Args:
        first_order_id: the id of the first order; the next ones count up from it.
    """

    def __init__(self, *, first_order_id: int = 10_000_001, first_invoice_id: int = 2_100_000_001) -> None:
        self._orders: dict[int, SimOrder] = {}
        self._order_ids = itertools.count(first_order_id)
        self._invoice_ids = itertools.count(first_invoice_id)

    def create(
        self,
        user_id: str,
        items: Iterable[OrderItem | Mapping[str, Any]],
        *,
        project_id: int,
        currency: str = "USD",
        sandbox: bool = False,
        created_at: datetime | None = None,
    ) -> SimOrder:
        """A new order of `project_id` in status `new`, created now or at `created_at` (backdated).

        Raises:
            InvalidRequest: no items, a malformed item, an empty user id, or a `created_at` without a time zone.
        """
        if not user_id:
            raise InvalidRequest("user_id must be a non-empty string")
        if created_at is not None and created_at.utcoffset() is None:
            raise InvalidRequest("created_at must carry a time zone")
        parsed = tuple(OrderItem.parse(item) for item in items)
        if not parsed:
            raise InvalidRequest("an order needs at least one item")
        order = SimOrder(
            order_id=next(self._order_ids),
            project_id=project_id,
            user_id=user_id,
            items=parsed,
            invoice_id=next(self._invoice_ids),
            currency=currency,
            sandbox=sandbox,
            created_at=created_at or datetime.now(UTC),
        )
        order.changes.append(StatusChange("new", (), order.created_at))
        self._orders[order.order_id] = order
        return order

    def get(self, order_id: int) -> SimOrder:
        """The order with that id.

        Raises:
            UnknownOrder: there is none.
        """
        try:
            return self._orders[order_id]
        except KeyError:
            raise UnknownOrder(order_id) from None

    def find(self, order_id: int) -> SimOrder | None:
        """The order with that id, or None."""
        return self._orders.get(order_id)

    def __iter__(self) -> Iterator[SimOrder]:
        return iter(self._orders.values())

    def __len__(self) -> int:
        return len(self._orders)


def check_status(status: str) -> str:
    """`status` when it is one of `STATUSES`.

    Raises:
        InvalidRequest: it is not.
    """
    if status not in STATUSES:
        raise InvalidRequest(f"status must be one of {', '.join(STATUSES)}, not {status!r}")
    return status


def get_order_body(order: SimOrder) -> dict[str, Any]:
    """The Store API's Get order answer for `order`, as documented (`order_id`, `status`, `content`)."""
    return {
        "order_id": order.order_id,
        "status": order.polling_status,
        "content": {
            "price": _price(order.amount, order.currency),
            "virtual_price": None,
            "is_free": order.is_free,
            "items": [
                {
                    "sku": item.sku,
                    "quantity": item.quantity,
                    "is_free": item.is_free,
                    "price": _price(Decimal(0) if item.is_free else item.price, order.currency),
                }
                for item in order.items
            ],
        },
    }


def plain(amount: Decimal) -> str:
    """An amount the way Get order writes it: "30", "1.99"."""
    return format(amount.normalize(), "f")


def _price(amount: Decimal, currency: str) -> dict[str, str]:
    return {"amount": plain(amount), "amount_without_discount": plain(amount), "currency": currency}
