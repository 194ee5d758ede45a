"""Reconciliation with the provider: orders it reports paid that no webhook brought are applied from its own records.

- `orders`: a provider's record of an order as the event the consumer applies (bundles expanded through the
  catalog), appended to the event log like a webhook;
- `index`: which player each order belongs to and which orders were applied here, per project.
"""

from server.reconcile.index import AUTHORITATIVE, CLAIM, OrderIndex, OrderOwner
from server.reconcile.orders import order_event, order_lines, reconciled_event_id

__all__ = ["AUTHORITATIVE", "CLAIM", "OrderIndex", "OrderOwner", "order_event", "order_lines", "reconciled_event_id"]
