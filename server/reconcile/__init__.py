"""Reconciliation with the provider: orders it reports paid that no webhook brought are applied from its own records.

- `orders`: a provider's record of an order as the event the consumer applies (bundles expanded through the
  catalog), appended to the event log like a webhook;
- `index`: which player each order belongs to and which orders were applied here, per project;
- `tracked`: the tracker's reconciliation (`TrackerReconciler`): an order a GetOrderStatus stream saw paid at the
  provider, that no webhook brought within a grace period, applied from the provider's Get order.
"""

from server.reconcile.index import AUTHORITATIVE, CLAIM, OrderIndex, OrderOwner
from server.reconcile.orders import order_event, order_lines, reconciled_event_id
from server.reconcile.tracked import TrackerReconciler

__all__ = [
    "AUTHORITATIVE",
    "CLAIM",
    "OrderIndex",
    "OrderOwner",
    "TrackerReconciler",
    "order_event",
    "order_lines",
    "reconciled_event_id",
]
