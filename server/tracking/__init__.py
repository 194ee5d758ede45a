"""Order tracking for GetOrderStatus: one tracker per order per replica, fed by webhooks (through Redis pub/sub)
and by the payment provider's order sources (`core.order_sources`: Xsolla's order-status WebSocket and polling
of its Get order API). See docs/ORDER_STATUS.md.

- `status`: statuses, sources and the forward-only rule.
- `tracker`: one order's tracker, which hands an order the provider reports paid but nobody granted to the
  replica's reconciliation (`server.reconcile.tracked`).
- `watcher`: one stream's view of a tracker (`Watcher`).
- `trackers`: the replica's trackers (`OrderTracking`), with the cap.
- `settings`: `TrackingSettings`, read with the service's others (`server.config`).

The webhook source is the replica's single subscription to the consumer's order-status publications
(`server.status_channel.OrderStatusFeed`), which `OrderTracking` owns.
"""

from server.tracking.status import Observation, OrderProgress, status_named
from server.tracking.tracker import OrderTracker
from server.tracking.trackers import OrderTracking
from server.tracking.watcher import Watcher

__all__ = [
    "Observation",
    "OrderProgress",
    "OrderTracker",
    "OrderTracking",
    "Watcher",
    "status_named",
]
