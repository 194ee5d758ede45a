"""Webhook bodies for order status changes, in the combined-mode shapes of Xsolla's order webhooks.

`order_paid` follows a real sandbox capture (xsolla-ai-kit `skills/webhooks-impl/fixtures/order_paid.json`):
`items`, `order`, `user.external_id`, and the payment in `billing`. `order_canceled` has the same structure (as
in Xsolla's PHP SDK tests) with the refund in `billing`; its exact combined-mode `billing` was not captured, so
that part is modelled on the `refund` webhook.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from xsolla_simulator.orders import SimOrder

#: The order webhook sent when an order reaches a status; other statuses send none.
NOTIFICATION_FOR_STATUS: Final = {"paid": "order_paid", "canceled": "order_canceled"}

# Refund code 1: "cancellation by the user or game request (from Publisher Account)".
_REFUND_CODE: Final = 1


def order_notification(
    order: SimOrder,
    notification_type: str,
    *,
    project_id: int,
    merchant_id: int,
    at: datetime | None = None,
) -> dict[str, Any]:
    """The body of an `order_paid` or `order_canceled` webhook for `order`.

    Args:
        at: the payment (or refund) time written in `billing`; now by default.

    Raises:
        ValueError: `notification_type` is neither.
    """
    if notification_type not in ("order_paid", "order_canceled"):
        raise ValueError(f"not an order notification type: {notification_type!r}")
    moment = (at or datetime.now(UTC)).isoformat(timespec="seconds")
    items = []
    for item in order.items:
        line: dict[str, Any] = {
            "sku": item.sku,
            "type": item.type,
            "is_pre_order": False,
            "quantity": item.quantity,
            "amount": _four_places(item.amount),
            "promotions": [],
        }
        if item.is_free:
            line["is_free"] = True
        items.append(line)
    transaction: dict[str, Any] = {
        "id": order.invoice_id,
        "payment_method_order_id": str(10**17 + order.invoice_id),
        "agreement": 1,
        "payment_date": moment,
        "payment_method": 1380,
        "payment_method_name": "Bank card",
    }
    if order.sandbox:
        transaction["dry_run"] = 1  # absent for real payments
    total = {"currency": order.currency, "amount": float(order.amount)}
    billing: dict[str, Any] = {
        "notification_type": "payment" if notification_type == "order_paid" else "refund",
        "settings": {"project_id": project_id, "merchant_id": merchant_id},
        "purchase": {"total": total},
        "transaction": transaction,
        "payment_details": {"payment": total, "payout": total},
    }
    if notification_type == "order_canceled":
        billing["refund_details"] = {"code": _REFUND_CODE, "reason": "Cancellation by the request of user / game"}
    return {
        "notification_type": notification_type,
        "items": items,
        "order": {
            "id": order.order_id,
            "mode": "sandbox" if order.sandbox else "default",
            "currency_type": "real",
            "currency": order.currency,
            "amount": _four_places(order.amount),
            "status": "paid" if notification_type == "order_paid" else "canceled",
            "platform": "xsolla",
            "comment": None,
            "invoice_id": str(order.invoice_id),
            "promotions": [],
        },
        "user": {"external_id": order.user_id, "country": "US"},
        "billing": billing,
    }


def _four_places(amount: Decimal) -> str:
    """An amount the way order webhooks write it: "1.9900"."""
    return str(amount.quantize(Decimal("0.0001")))
