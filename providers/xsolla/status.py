"""Xsolla's order status words, as the service's own statuses.

Get order answers `{"status": "paid"}` and the order-status WebSocket publishes `{"status": "paid"}`; the words
are Xsolla's order statuses (Store API, "Get order"): `new`, `paid`, `done`, `canceled`, `expired`, in any
case, and `cancelled` as some of Xsolla's pages spell it. Anything else is reported with no status, for the
tracker to log once and ignore.
"""

from __future__ import annotations

from typing import Final

from core.order_sources import ReportedStatus
from entitlements.v1 import entitlements_pb2 as pb

_BY_WORD: Final = {
    "new": int(pb.ORDER_STATUS_NEW),
    "paid": int(pb.ORDER_STATUS_PAID),
    "done": int(pb.ORDER_STATUS_DONE),
    "canceled": int(pb.ORDER_STATUS_CANCELED),
    "cancelled": int(pb.ORDER_STATUS_CANCELED),
    "expired": int(pb.ORDER_STATUS_EXPIRED),
}


def reported(word: str) -> ReportedStatus:
    """Xsolla's status word as the service's OrderStatus value (None when it is not one of Xsolla's words)."""
    return ReportedStatus(_BY_WORD.get(word.strip().lower()), word)
