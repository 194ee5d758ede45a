"""The order index: what this service knows of each order of a project beyond the player's own keys.

A player's orders live under the player's keys (`core.keys.UserKeys.order`), which only a caller who knows the
player can read. Reconciliation starts from the provider's orders, and the provider does not always say whose an
order is (Xsolla's admin order search may leave `user.id` out). So for every order it learns of, the service
records, per project:

- whom the order belongs to (`core.keys.order_players_key`): from a signed webhook or the provider's own record
  (authoritative), or from a GetOrderStatus stream whose order the provider confirmed with the player's token (a
  claim, kept only where nothing was known). Claims that disagree, or two authoritative records that do, leave a
  conflict: the order is then reported as unresolved, never given to either player;
- when it first learned of it (`core.keys.known_orders_key`), so entries past the retention are trimmed;
- which orders' `order_paid` it applied, and when (`core.keys.applied_orders_key`), so the sweeper can report orders
  applied here that the provider does not know.

The three keys share the project's hash tag, so one script updates them atomically on Redis Cluster too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, cast

from core import scripts
from core.connections import RedisClient, bounded, reply_text
from core.keys import applied_orders_key, known_orders_key, order_players_key

#: Who says whom an order belongs to.
AUTHORITATIVE: Final = "w"
CLAIM: Final = "s"
_CONFLICTS: Final = frozenset({"x", "X"})

#: How long the index remembers an order, by default: well past the sweeper's window and the provider's retries.
DEFAULT_RETENTION_MS: Final = 30 * 86_400_000


@dataclass(frozen=True, slots=True)
class OrderOwner:
    """Whom the index says an order belongs to.

    Attributes:
        user_id: the player; "" when unknown or disputed.
        authoritative: the player comes from a signed webhook or the provider's own record.
        conflict: records disagree about the player (never resolved by guessing).
    """

    user_id: str = ""
    authoritative: bool = False
    conflict: bool = False

    @property
    def known(self) -> bool:
        return bool(self.user_id)

    @classmethod
    def parse(cls, value: str | None) -> OrderOwner:
        if not value:
            return cls()
        if value in _CONFLICTS:
            return cls(conflict=True)
        authority, _, user_id = value.partition(":")
        return cls(user_id, authoritative=authority == AUTHORITATIVE)


class OrderIndex:
    """Reads and writes the order index.

    Args:
        redis: a connected client, owned by the caller.
        timeout_s: upper bound of one call, retries included.
    """

    def __init__(self, redis: RedisClient, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._record = scripts.register(redis, "server", "order_index.lua")

    async def record(
        self, project_id: int, order_id: str, user_id: str, *, authority: str, applied: bool, now_ms: int
    ) -> OrderOwner:
        """Records that `order_id` belongs to `user_id` (per `authority`: `AUTHORITATIVE` or `CLAIM`), and, when
        `applied`, that its order_paid was applied here at `now_ms`. Idempotent. Returns the owner afterwards.

        Raises:
            StoreUnavailable: Redis did not answer in time or refused the write.
        """
        keys, args = self._record_arguments(project_id, order_id, user_id, authority, applied, now_ms)
        after = await bounded(self._record(keys=keys, args=args), self._timeout_s, refused="the order index write")
        return OrderOwner.parse(reply_text(after))

    def record_command(
        self, project_id: int, order_id: str, user_id: str, *, authority: str, applied: bool, now_ms: int
    ) -> tuple[str | int, ...]:
        """`record` as one command (EVALSHA) to send in a pipeline to the node of `order_players_key(project_id)`,
        with other commands of the project; its reply is read by `OrderOwner.parse`. A NOSCRIPT reply (the store
        restarted) means nothing was written: call `record`, which loads the script."""
        keys, args = self._record_arguments(project_id, order_id, user_id, authority, applied, now_ms)
        return ("EVALSHA", self._record.sha, len(keys), *keys, *args)

    @staticmethod
    def _record_arguments(
        project_id: int, order_id: str, user_id: str, authority: str, applied: bool, now_ms: int
    ) -> tuple[list[str], list[str | int]]:
        if authority not in (AUTHORITATIVE, CLAIM):
            raise ValueError(f"authority must be {AUTHORITATIVE!r} or {CLAIM!r}")
        keys = [order_players_key(project_id), known_orders_key(project_id), applied_orders_key(project_id)]
        return keys, [order_id, user_id, authority, now_ms, "1" if applied else "0"]

    async def owners(self, project_id: int, order_ids: Sequence[str]) -> dict[str, OrderOwner]:
        """Whom each of `order_ids` belongs to, as far as the index knows (one round trip).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if not order_ids:
            return {}
        raw = await bounded(self._redis.hmget(order_players_key(project_id), list(order_ids)), self._timeout_s)
        return {
            order_id: OrderOwner.parse(None if value is None else reply_text(value))
            for order_id, value in zip(order_ids, raw, strict=True)
        }

    async def applied_between(self, project_id: int, from_ms: int, until_ms: int) -> list[tuple[str, int]]:
        """The orders whose order_paid was first applied here in [`from_ms`, `until_ms`], with when, oldest first.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        raw = await bounded(
            self._redis.zrangebyscore(applied_orders_key(project_id), from_ms, until_ms, withscores=True),
            self._timeout_s,
        )
        return [(reply_text(member), int(score)) for member, score in cast(list[tuple[bytes, float]], raw)]

    async def trim(self, project_id: int, before_ms: int) -> int:
        """Forgets the orders first learned of before `before_ms`; returns how many.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        known = known_orders_key(project_id)
        old = await bounded(
            self._redis.zrangebyscore(known, "-inf", f"({before_ms}", start=0, num=1000), self._timeout_s
        )
        if not old:
            return 0
        members = [reply_text(member) for member in cast(list[bytes], old)]
        await bounded(self._redis.hdel(order_players_key(project_id), *members), self._timeout_s)
        await bounded(self._redis.zrem(applied_orders_key(project_id), *members), self._timeout_s)
        await bounded(self._redis.zrem(known, *members), self._timeout_s)
        return len(members)
