"""The sweep's re-checks: orders whose status can still change after the sweep's window has moved past them.

The provider's order search filters by *creation* date, and the periodic window ends a little before the last
watermark (`ENTITLEMENTS_RECONCILE_OVERLAP_S`). An order created at T and paid at T + 20 min (a slow payment page,
3-D Secure, a bank transfer), or refunded two days later, is outside every later window: were its webhook lost,
no window would ever read it again. So each sweep, after its window, searches again the creation seconds of:

- the orders a sweep saw unfinished (`new`, or a status word the service does not know), or paid but left
  unsettled (unresolved, failed: `keep`), kept in
  `core.keys.sweep_pending_key` by creation until a search finds them paid, done, canceled or expired, or until
  they are older than `pending_h` (then forgotten unchecked);
- the orders this service applied in the last `pending_h` hours whose creation a sweep recorded
  (`core.keys.sweep_seen_key`), so that a cancel whose webhook was lost is undone.

A search covers exactly one creation second (the provider's dates are to the second; orders sharing it share the
search). A second is searched again once a quarter of its age at its last search has passed (an order 20 min old
is searched every sweep, one 8 h old every 2 h or so), an applied order's at most once an hour
(`APPLIED_EVERY_MS`): a paid order is caught within about a quarter of its age, at the cost of a few dozen
searches per order over the pending window rather than one per sweep. At most `limit` seconds are searched per
sweep, those searched longest ago first (never searched: newest first), so when more are due than the limit,
successive sweeps take turns. When each search was made is kept in `core.keys.sweep_rechecked_key`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Final, cast

import structlog

from core.connections import RedisClient, bounded, reply_text
from core.keys import sweep_pending_key, sweep_rechecked_key, sweep_seen_key
from core.reconciliation import ProviderOrder
from entitlements.v1 import entitlements_pb2 as pb
from server.reconcile.index import OrderIndex
from server.reconcile.settings import ReconcileSettings

log = structlog.get_logger("server.reconcile")

#: The statuses after which an order that was never applied needs no further search.
FINISHED: Final = frozenset(
    {pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_CANCELED, pb.ORDER_STATUS_EXPIRED}
)
#: A second is searched again once its age at its last search, divided by this, has passed.
BACKOFF: Final = 4
#: The shortest spacing of two searches for an applied order (a late cancel).
APPLIED_EVERY_MS: Final = 3_600_000
#: Orders whose creation is read per round trip.
_CHUNK: Final = 1000


def second_of(created_ms: int) -> int:
    """The start (ms) of the creation second of an order created at `created_ms`."""
    return created_ms - created_ms % 1000


class Rechecks:
    """Keeps the orders to search again, and says which creation seconds a sweep searches.

    Args:
        redis: a connected client, owned by the caller.
        index: the order index (which orders were applied, and when).
        settings: `pending_h` (how long after its creation an order is searched again) and `rechecks` (the most
            seconds searched per sweep; 0: no re-checks).
        timeout_s: upper bound of one Redis call, retries included.
    """

    def __init__(self, redis: RedisClient, index: OrderIndex, settings: ReconcileSettings, *, timeout_s: float):
        self._redis = redis
        self._index = index
        self.pending_ms = int(settings.pending_h * 3_600_000)
        self.limit = settings.rechecks
        self._timeout_s = timeout_s

    async def _call(self, operation: Any) -> Any:
        return await bounded(operation, self._timeout_s, refused="a sweep re-check record")

    async def note(self, project_id: int, orders: Sequence[ProviderOrder], now_ms: int) -> None:
        """Keeps the unfinished orders among `orders` (created within the pending window) and forgets the rest.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if self.limit == 0 or not orders:
            return
        since = now_ms - self.pending_ms
        unfinished = {
            order.order_id: order.created_at_ms
            for order in orders
            if order.status.status not in FINISHED and order.created_at_ms >= since
        }
        finished = [order.order_id for order in orders if order.order_id not in unfinished]
        key = sweep_pending_key(project_id)
        if unfinished:
            await self._call(self._redis.zadd(key, unfinished))
        if finished:
            await self._call(self._redis.zrem(key, *finished))

    async def keep(self, project_id: int, created: Mapping[str, int], now_ms: int) -> None:
        """Keeps paid orders a sweep could not settle (unresolved: nobody says whose; failed: a bundle the catalog
        does not know) with the unfinished ones, so that later sweeps search them again once the window has moved
        past them: a claim, a webhook or a catalog read since may settle them.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        since = now_ms - self.pending_ms
        kept = {order_id: at for order_id, at in created.items() if at >= since}
        if self.limit and kept:
            await self._call(self._redis.zadd(sweep_pending_key(project_id), kept))

    async def due(self, project_id: int, behind_ms: int, now_ms: int, *, forget: bool) -> list[int]:
        """The creation seconds (ms) to search now, at most `limit`: orders kept unfinished or applied in the
        pending window, created before `behind_ms` (the window read the rest), whose cadence has passed.

        Args:
            forget: drop the orders (and search times) older than the pending window first (not in a dry run).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        if self.limit == 0:
            return []
        since = now_ms - self.pending_ms
        pending_key, rechecked_key = sweep_pending_key(project_id), sweep_rechecked_key(project_id)
        if forget:
            forgotten = int(await self._call(self._redis.zremrangebyscore(pending_key, "-inf", f"({since}")))
            await self._call(self._redis.zremrangebyscore(rechecked_key, "-inf", f"({since}"))
            if forgotten:
                log.info("sweep_pending_forgotten", project=project_id, orders=forgotten)
        raw = await self._call(self._redis.zrangebyscore(pending_key, since, f"({behind_ms}", withscores=True))
        unfinished = {second_of(int(score)) for _, score in cast(list[tuple[bytes, float]], raw)}
        applied = await self._applied_seconds(project_id, since, behind_ms, now_ms)
        seconds = sorted(unfinished | applied)
        if not seconds:
            return []
        last = await self._call(self._redis.zmscore(rechecked_key, [str(second) for second in seconds]))
        due: list[tuple[int, int]] = []
        for second, searched in zip(seconds, last, strict=True):
            if searched is None:
                due.append((0, second))
                continue
            spacing = (int(searched) - second) // BACKOFF
            if second not in unfinished:
                spacing = max(spacing, APPLIED_EVERY_MS)
            if now_ms - int(searched) >= spacing:
                due.append((int(searched), second))
        due.sort(key=lambda entry: (entry[0], -entry[1]))
        return [second for _, second in due[: self.limit]]

    async def _applied_seconds(self, project_id: int, since: int, behind_ms: int, now_ms: int) -> set[int]:
        """The creation seconds, before `behind_ms`, of the orders applied here since `since` that a sweep saw."""
        applied = [order_id for order_id, _ in await self._index.applied_between(project_id, since, now_ms)]
        seconds: set[int] = set()
        for start in range(0, len(applied), _CHUNK):
            chunk = applied[start : start + _CHUNK]
            created = await self._call(self._redis.zmscore(sweep_seen_key(project_id), chunk))
            seconds.update(second_of(int(at)) for at in created if at is not None and 0 < at < behind_ms)
        return seconds

    async def checked(self, project_id: int, second_ms: int, now_ms: int) -> None:
        """Records that the creation second `second_ms` was searched at `now_ms`.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        await self._call(self._redis.zadd(sweep_rechecked_key(project_id), {str(second_ms): now_ms}))

    async def pending(self, project_id: int) -> list[tuple[str, int]]:
        """The orders kept unfinished, with their creation (ms), oldest first (for the operator and tests).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        raw = await self._call(self._redis.zrange(sweep_pending_key(project_id), 0, -1, withscores=True))
        return [(reply_text(member), int(score)) for member, score in cast(list[tuple[bytes, float]], raw)]
