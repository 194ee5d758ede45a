"""Webhook bodies for what happens to orders, in the shapes of Xsolla's order and payment webhooks.

* `order_paid` / `order_canceled`, combined mode: a real sandbox capture (xsolla-ai-kit
  `skills/webhooks-impl/fixtures/order_paid.json`): `items`, `order`, `user.external_id`, and the payment in
  `billing` (with `settings.project_id`). `order_canceled` has the same structure (as in Xsolla's PHP SDK tests)
  with the refund in `billing`; its exact combined-mode `billing` was not captured, so that part is modelled on
  the `refund` webhook.
* `order_paid` / `order_canceled`, separate mode: Xsolla's docs example (PHP SDK `OrderPaidMessageTest`):
  `items`, `order`, `user`, and nothing else; the payment came in its own webhook.
* `payment`: a real sandbox capture (xsolla-ai-kit `fixtures/payment.json`): `settings`, `purchase`, `user.id`,
  `transaction` (`dry_run: 1` for a test payment, absent for a real one), `payment_details`.
* `refund` / `partial_refund`: the PHP SDK's `RefundMessageTest` shape, with `refund_details`.

A sandbox order is marked where Xsolla marks it: `order.mode = "sandbox"` (`"default"` otherwise) and
`transaction.dry_run = 1` (combined `billing.transaction`, separate `payment` / `refund`).
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, Final

from xsolla_simulator.orders import SimOrder
from xsolla_simulator.projects import SimProject

#: The order webhook sent when an order reaches a status; other statuses send none.
NOTIFICATION_FOR_STATUS: Final = {"paid": "order_paid", "canceled": "order_canceled"}

#: The payment webhook that comes first in separate mode, per order webhook.
TRANSACTION_BEFORE: Final = {"order_paid": "payment", "order_canceled": "refund"}

#: Refund codes and their meanings, as the `refund` webhook's page lists them.
REFUND_REASONS: Final = {
    1: "Cancellation by the request of user / game",
    2: "Chargeback",
    3: "Integration error",
    4: "Potential fraud",
    5: "Test payment",
    6: "User invoice expired",
    7: "Fraud notification from PS",
    8: "Cancellation by the request of PS",
    9: "Cancellation by the request of user",
    10: "Cancellation by the request of game",
    11: "Account holder called to report fraud",
    12: "Friendly fraud",
    13: "Duplicate",
}

#: The refund codes a partial refund may carry.
PARTIAL_REFUND_CODES: Final = frozenset({1, 3, 5, 7, 9, 10})


def order_notification(
    order: SimOrder, notification_type: str, *, project: SimProject, at: datetime | None = None
) -> dict[str, Any]:
    """The body of an `order_paid` or `order_canceled` webhook for `order`, in `project`'s delivery mode.

    Args:
        at: the payment (or refund) time written in combined mode's `billing`; now by default.

    Raises:
        ValueError: `notification_type` is neither.
    """
    if notification_type not in TRANSACTION_BEFORE:
        raise ValueError(f"not an order notification type: {notification_type!r}")
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
    body: dict[str, Any] = {
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
    }
    if not project.separate:
        billing = transaction_notification(order, TRANSACTION_BEFORE[notification_type], project=project, at=at)
        billing.pop("user")  # the order's `user` says who; `billing` carries the payment only
        body["billing"] = billing
    return body


def transaction_notification(
    order: SimOrder,
    notification_type: str,
    *,
    project: SimProject,
    at: datetime | None = None,
    amount: Decimal | None = None,
    refund: tuple[int, str] | None = None,
) -> dict[str, Any]:
    """The body of a `payment`, `refund` or `partial_refund` webhook for `order`'s transaction.

    Args:
        at: the payment (or refund) time; now by default.
        amount: what a partial refund gives back (written as its `purchase.total`); the order's total otherwise.
        refund: the refund's (code, reason); the order's `refund_code` and `refund_reason` by default.

    Raises:
        ValueError: `notification_type` is none of them.
    """
    if notification_type not in ("payment", "refund", "partial_refund"):
        raise ValueError(f"not a transaction notification type: {notification_type!r}")
    moment = (at or datetime.now(UTC)).isoformat(timespec="seconds")
    total = {"currency": order.currency, "amount": float(order.amount if amount is None else amount)}
    transaction: dict[str, Any] = {
        "id": order.invoice_id,
        "payment_method_order_id": str(10**17 + order.invoice_id),
        "agreement": 1,
    }
    if order.sandbox:
        transaction["dry_run"] = 1  # absent for real payments
    if notification_type == "payment":
        transaction.update(payment_date=moment, payment_method=1380, payment_method_name="Bank card")
    else:
        transaction["date"] = moment
    body: dict[str, Any] = {
        "notification_type": notification_type,
        "settings": {"project_id": project.project_id, "merchant_id": project.merchant_id},
        "purchase": {"checkout": total, "total": total},
        "user": {"id": order.user_id, "country": "US"},
        "transaction": transaction,
        "payment_details": {"payment": total, "payout": total},
    }
    if notification_type != "payment":
        code, reason = refund or (order.refund_code, order.refund_reason)
        body["refund_details"] = {"code": code, "reason": reason}
    return body


def _four_places(amount: Decimal) -> str:
    """An amount the way order webhooks write it: "1.9900"."""
    return str(amount.quantize(Decimal("0.0001")))
