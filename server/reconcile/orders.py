"""Orders from the provider's own records, as the events the consumer applies.

Reconciliation never writes to a player's keys itself: it builds the `WebhookEvent` the provider's webhook would
have produced and appends it to the project's event log (`core.eventlog.EventLog`), so the consumer applies it
through the same atomic path (`server.fulfillment`, `order_paid.lua`), publishes the order's status, retries and
dead-letters it like any event. What differs:

- the event id, `<provider>:<project>:order:<order id>:paid:reconciled` (`:canceled:reconciled`): not the
  webhook's, so a late webhook is still stored and consumed, and replays harmlessly because `order_paid.lua`
  replays on the order's status, not on the event id;
- `origin` (TRACKER or SWEEPER), which makes the ledger's actor `reconciler`, and `paid_at` for the
  payment-to-grant delay;
- the lines: the provider's record names a bundle as one item, where its webhook lists the bundle and then each
  of its contents as lines of their own. The bundle's contents come from the project's catalog
  (`server.catalog.Catalog.bundles`), each content quantity times the bundle's; a bundle the catalog does not
  know is `SkuNotInCatalog`, never granted as a guess.
"""

from __future__ import annotations

from collections.abc import Mapping

from core.limits import MAX_CONSUMABLE_TOTAL, identifier_problem, quantity_problem
from core.reconciliation import BUNDLE, ProviderOrder
from entitlements.v1 import events_pb2
from server.errors import SkuNotInCatalog

ET = events_pb2.EventType
Origin = events_pb2.EventOrigin

#: A catalog's bundles: bundle sku -> ((content sku, quantity), ...) (`server.catalog.Catalog.bundles`).
Bundles = Mapping[str, tuple[tuple[str, int], ...]]

#: The suffix of a reconciled event's id.
RECONCILED = "reconciled"


def reconciled_event_id(provider: str, project_id: int, order_id: str, *, canceled: bool = False) -> str:
    """The event id of a reconciled order_paid (or order_canceled)."""
    return f"{provider}:{project_id}:order:{order_id}:{'canceled' if canceled else 'paid'}:{RECONCILED}"


def order_lines(order: ProviderOrder, bundles: Mapping[str, tuple[tuple[str, int], ...]]) -> list[events_pb2.OrderLine]:
    """The order's lines as its webhook would list them: each bundle, then its contents from the catalog.

    An item is a bundle when the provider types it so, or, untyped (Get order), when the catalog knows its sku as
    one.

    Raises:
        SkuNotInCatalog: an item typed as a bundle that the catalog does not know.
    """
    lines: list[events_pb2.OrderLine] = []
    for item in order.items:
        contents = bundles.get(item.sku)
        if item.type == BUNDLE and contents is None:
            raise SkuNotInCatalog(item.sku)
        line = events_pb2.OrderLine(
            sku=item.sku,
            type=BUNDLE if contents is not None else item.type,
            quantity=item.quantity,
            amount=item.amount,
            is_free=item.is_free,
            is_bonus=item.is_bonus,
        )
        lines.append(line)
        for sku, quantity in contents or ():
            lines.append(events_pb2.OrderLine(sku=sku, quantity=quantity * item.quantity, is_bundle_content=True))
    return lines


def order_event(
    provider: str,
    order: ProviderOrder,
    user_id: str,
    bundles: Mapping[str, tuple[tuple[str, int], ...]],
    *,
    origin: int,
    paid_at_ms: int,
    received_at_ms: int,
    canceled: bool = False,
) -> events_pb2.WebhookEvent:
    """The order_paid (or, `canceled`, order_canceled) event that applies `order` to `user_id`.

    Args:
        provider: the provider's name in event ids ("xsolla").
        order: the provider's record of the order.
        user_id: the player, as the provider or the order index says (never guessed).
        bundles: the project's bundles (the catalog's).
        origin: `EventOrigin.EVENT_ORIGIN_TRACKER` or `EVENT_ORIGIN_SWEEPER`.
        paid_at_ms: when the payment was first known (0: unknown).
        received_at_ms: now.

    Raises:
        SkuNotInCatalog: the order names a bundle the catalog does not know.
        ValueError: no player, or an origin that is not reconciliation.
    """
    if not user_id:
        raise ValueError("a reconciled order needs its player")
    if origin not in (Origin.EVENT_ORIGIN_TRACKER, Origin.EVENT_ORIGIN_SWEEPER):
        raise ValueError("a reconciled event's origin is the tracker or the sweeper")
    event = events_pb2.WebhookEvent(
        event_id=reconciled_event_id(provider, order.project_id, order.order_id, canceled=canceled),
        type=ET.EVENT_TYPE_ORDER_CANCELED if canceled else ET.EVENT_TYPE_ORDER_PAID,
        provider=provider,
        project_id=order.project_id,
        user_id=user_id,
        notification_type=f"order_{'canceled' if canceled else 'paid'}:{RECONCILED}",
        sandbox=order.sandbox,
        origin=origin,  # type: ignore[arg-type]  # an EventOrigin value
        order=events_pb2.OrderEvent(
            order_id=order.order_id,
            status=order.status.word,
            currency=order.currency,
            amount=order.amount,
            invoice_id=order.invoice_id,
            lines=order_lines(order, bundles),
        ),
    )
    event.received_at.FromMilliseconds(received_at_ms)
    if paid_at_ms > 0:
        event.paid_at.FromMilliseconds(paid_at_ms)
    return event


def unusable(order: ProviderOrder) -> str | None:
    """What makes the provider's record unusable as an event (the consumer would dead-letter it), or None."""
    problem = identifier_problem(order.order_id)
    if problem is not None:
        return f"order_id {problem}"
    for index, item in enumerate(order.items):
        problem = identifier_problem(item.sku) or quantity_problem(item.quantity, MAX_CONSUMABLE_TOTAL)
        if problem is not None:
            return f"items[{index}] {problem}"
    return None
