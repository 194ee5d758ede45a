"""What the order-status channels carry: an order's state as this service applied it (`OrderState`, kept in the
order hash), and a status the provider reported to the replica following the order there (`UpstreamStatus`, kept
in the order's upstream record); both read back from Redis after a (re)subscribe."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from core import scripts
from core.connections import RedisClient, bounded, reply_text
from core.keys import UserKeys

#: (project id, player id, order id)
OrderRef = tuple[int, str, str]

#: `OrderState.source`: a webhook applied the order event, or reconciliation did (`server.reconcile`).
WEBHOOK_SOURCE = "webhook"
RECONCILIATION_SOURCE = "reconciliation"
# The order hash's `granted_by` values of reconciled orders (`server.fulfillment.ORIGIN_NAMES`).
_RECONCILERS = frozenset({"tracker", "sweeper"})
#: How long an order's upstream record outlives its last write: the longest a stream may follow an order.
UPSTREAM_RECORD_TTL_S = 3600


@dataclass(frozen=True)
class OrderState:
    """One order's status as this service knows it from webhooks.

    Attributes:
        project_id: the provider's project the order belongs to.
        status: "paid" or "canceled" (Xsolla's order statuses, lower case).
        entitlements_granted: True while the order's items are granted to the player (false once canceled).
        observed_at_ms: when the consumer applied the event that set this state (Redis server clock, ms).
        source: `WEBHOOK_SOURCE` when a webhook set it, `RECONCILIATION_SOURCE` when reconciliation applied the
            order from the provider's own record (`server.reconcile`); read back from the order hash's
            `granted_by` for a paid order.
        withheld: why the paid order grants nothing by policy ("sandbox"); "" when it grants as usual.
    """

    project_id: int
    order_id: str
    user_id: str
    status: str
    entitlements_granted: bool
    observed_at_ms: int
    source: str = WEBHOOK_SOURCE
    withheld: str = ""

    @property
    def ref(self) -> OrderRef:
        return (self.project_id, self.user_id, self.order_id)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"), ensure_ascii=False)

    @classmethod
    def from_json(cls, data: str | bytes) -> OrderState:
        """Parses a published message.

        Raises:
            ValueError: not a message of this shape.
        """
        return cls.from_raw(json.loads(data))

    @classmethod
    def from_raw(cls, raw: Any) -> OrderState:
        """The state in a decoded message.

        Raises:
            ValueError: not a message of this shape.
        """
        try:
            return cls(
                project_id=int(raw["project_id"]),
                order_id=str(raw["order_id"]),
                user_id=str(raw["user_id"]),
                status=str(raw["status"]),
                entitlements_granted=bool(raw["entitlements_granted"]),
                observed_at_ms=int(raw["observed_at_ms"]),
                source=str(raw.get("source", WEBHOOK_SOURCE)),
                withheld=str(raw.get("withheld") or ""),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an order status message: {exc!r}") from exc

    @classmethod
    def from_hash(cls, ref: OrderRef, fields: Mapping[str, str]) -> OrderState | None:
        """The state kept in an order hash (decoded to text), or None when the hash holds no status."""
        status = fields.get("status")
        if not status:
            return None
        project_id, user_id, order_id = ref
        return cls(
            project_id=project_id,
            order_id=order_id,
            user_id=user_id,
            status=status,
            entitlements_granted=fields.get("granted") == "1",
            observed_at_ms=int(fields.get("updated_at_ms") or 0),
            source=RECONCILIATION_SOURCE if fields.get("granted_by") in _RECONCILERS else WEBHOOK_SOURCE,
            withheld=fields.get("withheld", ""),
        )


@dataclass(frozen=True)
class UpstreamStatus:
    """A status the provider reported for an order to the replica that follows it there (the holder of the order's
    lease, `server.tracking.upstream`), for the other replicas following it.

    Published as `{"project_id", "order_id", "user_id", "upstream": "paid", "source": "websocket",
    "observed_at_ms"}`: without `entitlements_granted`, so a replica that knows only `OrderState` counts it
    invalid instead of taking it for a webhook.

    Attributes:
        status: the service's status name ("new", "paid", "done", "canceled", "expired").
        source: what reported it at the provider: "websocket" or "polling".
        observed_at_ms: when the holder heard it (ms since the epoch).
    """

    project_id: int
    order_id: str
    user_id: str
    status: str
    source: str
    observed_at_ms: int

    @property
    def ref(self) -> OrderRef:
        return (self.project_id, self.user_id, self.order_id)

    def to_json(self) -> str:
        return json.dumps(
            {
                "project_id": self.project_id,
                "order_id": self.order_id,
                "user_id": self.user_id,
                "upstream": self.status,
                "source": self.source,
                "observed_at_ms": self.observed_at_ms,
            },
            separators=(",", ":"),
            ensure_ascii=False,
        )

    @classmethod
    def from_raw(cls, raw: Any) -> UpstreamStatus:
        """The status in a decoded message.

        Raises:
            ValueError: not a message of this shape.
        """
        try:
            return cls(
                project_id=int(raw["project_id"]),
                order_id=str(raw["order_id"]),
                user_id=str(raw["user_id"]),
                status=str(raw["upstream"]),
                source=str(raw["source"]),
                observed_at_ms=int(raw["observed_at_ms"]),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"not an upstream status message: {exc!r}") from exc


#: What a channel carries.
ChannelMessage = OrderState | UpstreamStatus


def parse_message(data: str | bytes) -> ChannelMessage:
    """Parses a message of an order-status channel.

    Raises:
        ValueError: neither an `OrderState` nor an `UpstreamStatus`.
    """
    try:
        raw = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ValueError(f"not JSON: {exc}") from exc
    if isinstance(raw, dict) and "upstream" in raw:
        return UpstreamStatus.from_raw(raw)
    return OrderState.from_raw(raw)


_STATE_FIELDS = ("status", "granted", "updated_at_ms", "withheld", "granted_by")


def _state(ref: OrderRef, raw: list[Any]) -> OrderState | None:
    fields = {name: reply_text(value) for name, value in zip(_STATE_FIELDS, raw, strict=True) if value is not None}
    return OrderState.from_hash(ref, fields)


def _upstream(ref: OrderRef, raw: Any) -> UpstreamStatus | None:
    if raw is None:
        return None
    try:
        message = parse_message(raw)
    except ValueError:
        return None
    return message if isinstance(message, UpstreamStatus) and message.ref == ref else None


async def read_order_state(redis: RedisClient, ref: OrderRef) -> OrderState | None:
    """Reads the stored state of the order `ref` (project, player, order), or None if no order event named it yet."""
    project_id, user_id, order_id = ref
    return _state(ref, await redis.hmget(UserKeys(project_id, user_id).order(order_id), list(_STATE_FIELDS)))


async def read_upstream_status(redis: RedisClient, ref: OrderRef) -> UpstreamStatus | None:
    """Reads the furthest status the provider reported for the order `ref` to a replica following it there, or None
    (nobody followed it there, or not within `UPSTREAM_RECORD_TTL_S`). A record that cannot be read is None."""
    project_id, user_id, order_id = ref
    return _upstream(ref, await redis.hget(UserKeys(project_id, user_id).order_upstream(order_id), "message"))


async def read_order(redis: RedisClient, ref: OrderRef) -> list[ChannelMessage]:
    """What Redis keeps of the order `ref`, in one round trip (both keys are in the player's slot): its applied
    state and its upstream status, each when there is one."""
    project_id, user_id, order_id = ref
    keys = UserKeys(project_id, user_id)
    pipe = redis.pipeline(transaction=False)
    pipe.hmget(keys.order(order_id), list(_STATE_FIELDS))
    pipe.hget(keys.order_upstream(order_id), "message")
    state, upstream = await pipe.execute()
    return [message for message in (_state(ref, state), _upstream(ref, upstream)) if message is not None]


class UpstreamRecords:
    """Keeps each order's furthest upstream status (`UserKeys.order_upstream`), forward-only
    (`server/lua/upstream.lua`), so that a replica that starts following the order, or subscribes again, reads what
    it missed.

    Args:
        redis: a connected client, owned by the caller.
        timeout_s: bound on one write.
    """

    def __init__(self, redis: RedisClient, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._script = scripts.register(redis, "server", "upstream.lua")

    async def record(self, status: UpstreamStatus, rank: int) -> bool:
        """Records `status` unless the record holds a status of this `rank` or beyond; True when recorded.

        Raises:
            StoreUnavailable: Redis did not answer in time, or refused the write.
        """
        key = UserKeys(status.project_id, status.user_id).order_upstream(status.order_id)
        args: list[str | int] = [rank, status.to_json(), UPSTREAM_RECORD_TTL_S * 1000]
        return bool(await bounded(self._script(keys=[key], args=args), self._timeout_s, refused="the upstream record"))
