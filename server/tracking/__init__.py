"""Order tracking for GetOrderStatus: one tracker per order per replica, fed by webhooks (through Redis pub/sub),
Xsolla's order-status WebSocket and polling of Xsolla's Get order API. See docs/ORDER_STATUS.md.

- `status`: statuses, sources and the forward-only rule.
- `tracker`: one order's tracker and the watchers (streams) it feeds.
- `trackers`: the replica's trackers (`OrderTracking`), with the cap.
- `provider`: what a tracker needs from a payment provider; `xsolla_orders` and `xsolla_socket` implement it.

The webhook source is the replica's single subscription to the consumer's order-status publications
(`server.status_channel.OrderStatusFeed`), which `OrderTracking` owns.
"""

from server.tracking.provider import OrderLookup, Player, SocketPool
from server.tracking.status import Observation, OrderProgress, parse_status
from server.tracking.tracker import OrderTracker, Watcher
from server.tracking.trackers import OrderTracking

__all__ = [
    "Observation",
    "OrderLookup",
    "OrderProgress",
    "OrderTracker",
    "OrderTracking",
    "Player",
    "SocketPool",
    "Watcher",
    "parse_status",
]
