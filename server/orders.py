"""Order status as the webhook consumer records and announces it, for GetOrderStatus on any replica.

The order hash (`UserKeys.order(order_id)`, written atomically with the grants by `server/lua/order_*.lua`) is
the source of truth: `status` ("paid" or "canceled"), `granted` ("1" while the order's items are granted),
`updated_at_ms`, and the events and grants behind them. After each applied order event, and again on every
redelivery of one, the consumer publishes the hash's new state as a small JSON message on the channel
`ORDER_STATUS_CHANNEL` (`ent:order-status`):

    {"order_id": "689810880", "user_id": "a1b2c3", "status": "paid", "entitlements_granted": true,
     "observed_at_ms": 1767225600000, "source": "webhook"}

`PUBLISH` on a standalone Redis, `SPUBLISH` (sharded pub/sub, served by the node owning the channel's slot) on a
Redis Cluster. Pub/sub delivers at most once: a replica that is disconnected when a message goes out misses it.
So a subscriber reads the order hash (`read_order_state`) after every (re)subscribe and treats messages as
wake-ups carrying the same state; statuses only move forward (paid -> canceled), so applying a message or a
read twice, or in either order, converges. Publication happens after the commit and before the XACK, so a
crash in between republishes on redelivery.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass

from core.connections import RedisClient
from core.keys import ORDER_STATUS_CHANNEL, UserKeys

__all__ = ["ORDER_STATUS_CHANNEL", "OrderState", "OrderStatusPublisher", "read_order_state"]


@dataclass(frozen=True)
class OrderState:
    """One order's status as this service knows it from webhooks.

    Attributes:
        status: "paid" or "canceled" (Xsolla's order statuses, lower case).
        entitlements_granted: True while the order's items are granted to the player (false once canceled).
        observed_at_ms: when the consumer applied the event that set this state (Redis server clock, ms).
        source: always "webhook" here.
    """

    order_id: str
    user_id: str
    status: str
    entitlements_granted: bool
    observed_at_ms: int
    source: str = "webhook"

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> OrderState:
        """Parses a published message.

        Raises:
            ValueError: not a message of this shape.
        """
        raw = json.loads(data)
        try:
            return cls(
                order_id=str(raw["order_id"]),
                user_id=str(raw["user_id"]),
                status=str(raw["status"]),
                entitlements_granted=bool(raw["entitlements_granted"]),
                observed_at_ms=int(raw["observed_at_ms"]),
                source=str(raw.get("source", "webhook")),
            )
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an order status message: {exc}") from exc

    @classmethod
    def from_hash(cls, user_id: str, order_id: str, fields: Mapping[str, str]) -> OrderState | None:
        """The state kept in an order hash (decoded to text), or None when the hash holds no status."""
        status = fields.get("status")
        if not status:
            return None
        return cls(
            order_id=order_id,
            user_id=user_id,
            status=status,
            entitlements_granted=fields.get("granted") == "1",
            observed_at_ms=int(fields.get("updated_at_ms") or 0),
        )


async def read_order_state(redis: RedisClient, user_id: str, order_id: str) -> OrderState | None:
    """Reads an order's stored state, or None if no order event named it yet."""
    raw = await redis.hmget(UserKeys(user_id).order(order_id), ["status", "granted", "updated_at_ms"])
    fields = {
        name: value.decode() if isinstance(value, bytes) else str(value)
        for name, value in zip(("status", "granted", "updated_at_ms"), raw, strict=True)
        if value is not None
    }
    return OrderState.from_hash(user_id, order_id, fields)


class OrderStatusPublisher:
    """Publishes order states on `ORDER_STATUS_CHANNEL`.

    Args:
        redis: a connected client, owned by the caller.
        cluster: whether `redis` is a Redis Cluster client (sharded pub/sub is used then).
    """

    def __init__(self, redis: RedisClient, *, cluster: bool) -> None:
        self._redis = redis
        self._cluster = cluster
        self.channel = ORDER_STATUS_CHANNEL

    async def publish(self, state: OrderState) -> int:
        """Publishes `state`; returns how many subscribers received it (on Cluster: on the channel's shard)."""
        message = state.to_json()
        if self._cluster:
            return int(await self._redis.spublish(self.channel, message))
        return int(await self._redis.publish(self.channel, message))
