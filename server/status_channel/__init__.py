"""The order-status channels: how every replica hears of an order's new status, whichever replica learned it.

The order hash (`UserKeys(project, user).order(order_id)`, written atomically with the grants by
`server/lua/order_*.lua`) is the source of truth: `status` ("paid" or "canceled"), `granted` ("1" while the
order's items are granted), `updated_at_ms`, and the events and grants behind them. After each applied order
event, and again on every redelivery of one, the consumer publishes the hash's new state as a small JSON message
on its project's channel, `order_status_channel(project)` (`ent:{p:<project>}:order-status`), with
`OrderStatusPublisher`:

    {"project_id": 308077, "order_id": "689810880", "user_id": "a1b2c3", "status": "paid",
     "entitlements_granted": true, "observed_at_ms": 1767225600000, "source": "webhook", "withheld": ""}

`withheld` names why a paid order grants nothing by policy ("sandbox"): a test payment the project's sandbox policy
ignores: no grant will follow, so a stream following the order need not wait for one.

The same channel carries what the provider reports about an order to the one replica that follows it there (the
holder of the order's lease, `server.tracking.upstream`), for the other replicas' streams on it (`UpstreamStatus`):

    {"project_id": 308077, "order_id": "689810880", "user_id": "a1b2c3", "upstream": "paid",
     "source": "websocket", "observed_at_ms": 1767225600000}

kept first, forward-only, in the order's upstream record (`UserKeys.order_upstream`, `UpstreamRecords`).

`PUBLISH`/`SUBSCRIBE` on a standalone Redis, `SPUBLISH`/`SSUBSCRIBE` (sharded pub/sub, served by the node owning
the channel's slot) on a Redis Cluster. Each replica holds one subscription (`OrderStatusFeed`) to the channels of
the projects it follows orders of, and only while it does: a project's channel is subscribed when the replica
starts following its first order and unsubscribed when it stops following its last. Each message goes to the
trackers of that (project, player, order) on this replica; a message that names another project than its channel
is dropped. Pub/sub delivers at most once: a replica that is disconnected (or not yet subscribed) when a message
goes out misses it. So the feed reads the order hash and the upstream record (`read_order`) of every order of a
project followed on its replica after every (re)subscribe to that project's channel, and treats messages as
wake-ups carrying the same state; statuses only move forward, so applying a message or a read twice, or in either
order, converges. Publication happens after the commit (after the record), and before the XACK, so a crash in
between republishes on redelivery. A lost connection is set up again with backoff; on a Cluster, after reading the
slot map again, so that a channel whose slot moved or whose node failed is subscribed on its new owner.

Modules: `states` (the messages, what Redis keeps of them, reading it back), `channel` (the channels on a
standalone server or a Cluster, the publisher), `feed` (the subscription).
"""

from server.status_channel.channel import Channel, OrderStatusPublisher
from server.status_channel.feed import ChannelLost, OrderStatusFeed
from server.status_channel.states import (
    RECONCILIATION_SOURCE,
    UPSTREAM_RECORD_TTL_S,
    WEBHOOK_SOURCE,
    ChannelMessage,
    OrderRef,
    OrderState,
    UpstreamRecords,
    UpstreamStatus,
    parse_message,
    read_order,
    read_order_state,
    read_upstream_status,
)

__all__ = [
    "RECONCILIATION_SOURCE",
    "UPSTREAM_RECORD_TTL_S",
    "WEBHOOK_SOURCE",
    "Channel",
    "ChannelLost",
    "ChannelMessage",
    "OrderRef",
    "OrderState",
    "OrderStatusFeed",
    "OrderStatusPublisher",
    "UpstreamRecords",
    "UpstreamStatus",
    "parse_message",
    "read_order",
    "read_order_state",
    "read_upstream_status",
]
