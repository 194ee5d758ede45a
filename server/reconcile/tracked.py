"""Reconciliation from the order tracker: an order that a GetOrderStatus stream learned from the provider is paid
(its socket or Get order said paid or done), and that no `order_paid` has been applied for after a grace period,
is applied from the provider's own record of it.

A tracker (`server.tracking.tracker`) hands such an order to the replica's `TrackerReconciler` with the player,
the player's token and when it saw the order paid. The reconciler outlives the tracker (a launcher that closes its
stream right after "paid" does not stop it), keeps one reconciliation per (project, order), and holds at most
`max_pending` of them (beyond: counted `overflow` and logged; the sweeper is the backstop). For each order:

1. At once, the player is recorded in the order index as a claim (`server.reconcile.index`, `CLAIM`): the provider
   confirmed the order with this player's token, which is what the sweeper relies on when the provider's search
   does not name the player.
2. After the grace (`ENTITLEMENTS_RECONCILE_GRACE_S`, from when the tracker saw it paid): if the order hash says an
   `order_paid` (or a cancel) was applied, nothing to do (`already`). Otherwise the order is read with its items
   (Get order, with the player's token); unless the provider by then says canceled or expired, it becomes the
   reconciled `order_paid` (`server.reconcile.orders.order_event`, origin TRACKER, bundles expanded through the
   project's catalog, refreshed once when it does not know a bundle) appended to the project's event log, where
   the consumer applies it as it applies a webhook (`applied`). The late webhook then replays harmlessly; another
   replica's reconciliation of the same order is a duplicate at the event log (`already`).

An order the index gives to another player, or whose players disagree, is `unresolved` (never guessed); so is one
whose record holds no item or a bundle the catalog does not know. Redis or the provider failing is retried with
backoff, `ATTEMPTS` times over a few minutes, then given up (`failed`, the sweeper is the backstop); the provider
refusing the token or not knowing the order gives up at once. The token is held in memory only, never logged or
stored.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import structlog

from core.backoff import Backoff
from core.clock import now_ms
from core.connections import RedisClient, bounded
from core.errors import StoreUnavailable
from core.eventlog import EventLog
from core.lifecycle import cancel_and_wait
from core.logs import user_ref
from core.order_sources import LookupFailed, OrderLookup, OrderUnknown, Player, TokenRefused
from core.reconciliation import ProviderOrder
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2
from server.catalog import Catalogs
from server.errors import SkuNotInCatalog
from server.metrics import ServiceMetrics
from server.reconcile.index import CLAIM, OrderIndex
from server.reconcile.orders import order_event
from server.status_channel import read_order_state

log = structlog.get_logger("server.reconcile")

#: The metric's `source` label of this reconciliation.
SOURCE: Final = "tracker"
#: Tries of one order after the grace before giving up (Redis or the provider failing).
ATTEMPTS: Final = 8
#: Between two tries: 1 s doubling up to 60 s, with equal jitter (about two to four minutes over ATTEMPTS).
RETRY: Final = Backoff(base_s=1.0, cap_s=60.0)
#: Beyond the grace, how long a reconciliation may take to grant: one Get order (within its timeout), the append,
#: and the consumer's apply and publication. A stream after the provider's DONE waits this long for it.
GRANT_MARGIN_S: Final = 15.0
# Statuses at the provider under which the order is applied.
_PAID: Final = frozenset({int(pb.ORDER_STATUS_PAID), int(pb.ORDER_STATUS_DONE)})
_TRACKER_ORIGIN: Final = int(events_pb2.EventOrigin.EVENT_ORIGIN_TRACKER)
# Lines named in the log line, at most.
_LOGGED_LINES: Final = 20


@dataclass
class _Job:
    """One order's reconciliation."""

    player: Player
    order_id: str
    paid_at_ms: int
    due: float  # the event loop's time at which the grace ends
    claimed: bool = False
    order: ProviderOrder | None = None
    refreshed: bool = False
    task: asyncio.Task[None] | None = field(default=None, repr=False)


class _GiveUp(Exception):
    """Trying again cannot help (the provider refused the token or does not know the order)."""


class TrackerReconciler:
    """The replica's reconciliations of orders its trackers saw paid.

    Args:
        redis: the process's Redis client (the order hash).
        provider: the provider's name in event ids ("xsolla").
        lookup: the provider's Get order (`OrderLookup.order`).
        catalogs: the projects' catalogs (bundles).
        event_log: where the reconciled event is appended (the service's, with its partitions).
        index: the order index (the claim).
        metrics: `reconcile_orders{project, source="tracker", result}`.
        grace_s: how long after the order was seen paid a webhook has to be applied before the order is applied.
        max_pending: reconciliations held at once; beyond, an order is counted `overflow` and left to the sweeper.
        redis_timeout_s: bound on one Redis read.
        retry: the wait between tries.
        attempts: tries after the grace before giving up.
        leaves_to_sweeper: called after the grace for an order still not applied; True when it asked the
            sweeper to sweep the project now and leaves the order to it (`deferred`). Get order does not say whether
            an order is a sandbox one, so where the project's sandbox policy grants nothing for them and the sweeper
            (whose search says) covers the project, the order is the sweeper's; the player's claim recorded at once
            lets it find the player. Elsewhere a sandbox order is applied as a live one.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        provider: str,
        lookup: OrderLookup,
        catalogs: Catalogs,
        event_log: EventLog,
        index: OrderIndex,
        metrics: ServiceMetrics,
        grace_s: float,
        max_pending: int,
        redis_timeout_s: float,
        retry: Backoff = RETRY,
        attempts: int = ATTEMPTS,
        leaves_to_sweeper: Callable[[int], bool] = lambda project_id: False,
    ) -> None:
        self._leaves_to_sweeper = leaves_to_sweeper
        self._redis = redis
        self._provider = provider
        self._lookup = lookup
        self._catalogs = catalogs
        self._event_log = event_log
        self._index = index
        self._metrics = metrics
        self.grace_s = grace_s
        self._max_pending = max_pending
        self._redis_timeout_s = redis_timeout_s
        self._retry = retry
        self._attempts = attempts
        self._jobs: dict[tuple[int, str], _Job] = {}
        self._stopped = False

    def __len__(self) -> int:
        """Reconciliations pending now."""
        return len(self._jobs)

    def submit(self, player: Player, order_id: str, paid_at_ms: int) -> None:
        """Reconciles the order of `player` unless it already is being reconciled here.

        Args:
            player: the project, the player, and the token the provider confirmed the order with.
            order_id: the provider's order id.
            paid_at_ms: when the tracker saw the order paid (ms since the epoch): the grace runs from then, and it
                is the payment's time in the payment-to-grant delay.
        """
        key = (player.project_id, order_id)
        if self._stopped or key in self._jobs:
            return
        if len(self._jobs) >= self._max_pending:
            self._count(player.project_id, "overflow")
            log.warning(
                "order_reconcile_overflow",
                project_id=player.project_id,
                order_id=order_id,
                user=user_ref(player.user_id),
                pending=len(self._jobs),
                note="left to the sweeper",
            )
            return
        waited_s = max(0.0, (now_ms() - paid_at_ms) / 1000)
        loop = asyncio.get_running_loop()
        job = _Job(player, order_id, paid_at_ms, due=loop.time() + max(0.0, self.grace_s - waited_s))
        self._jobs[key] = job
        job.task = loop.create_task(self._run(key, job))

    def due_in_s(self, project_id: int, order_id: str) -> float | None:
        """How long from now the order's pending reconciliation may take to grant it (what is left of the grace,
        plus `GRANT_MARGIN_S`); None when none is pending here."""
        job = self._jobs.get((project_id, order_id))
        if job is None:
            return None
        return max(0.0, job.due - asyncio.get_running_loop().time()) + GRANT_MARGIN_S

    def due_after_s(self, paid_at_ms: int) -> float:
        """How long from now a reconciliation of an order seen paid at `paid_at_ms` (ms since the epoch) may take to
        grant it, when another replica holds it (the order's lease holder, `server.tracking.upstream`)."""
        return max(0.0, self.grace_s - (now_ms() - paid_at_ms) / 1000) + GRANT_MARGIN_S

    async def stop(self) -> None:
        """Cancels the pending reconciliations (the sweeper is the backstop) and refuses new ones."""
        self._stopped = True
        tasks = [job.task for job in self._jobs.values() if job.task is not None]
        if tasks:
            log.info("order_reconcile_stopped", pending=len(tasks), note="left to the sweeper")
        await cancel_and_wait(*tasks)

    # --- one order ---------------------------------------------------------------------------------------------

    async def _run(self, key: tuple[int, str], job: _Job) -> None:
        project_id = job.player.project_id
        bound = log.bind(project_id=project_id, order_id=job.order_id, user=user_ref(job.player.user_id))
        try:
            result = await self._reconcile(job, bound)
        except asyncio.CancelledError:
            raise
        except Exception:
            bound.exception("order_reconcile_failed")  # a bug: the sweeper is the backstop
            result = "failed"
        finally:
            if self._jobs.get(key) is job:
                del self._jobs[key]
        if result is not None:
            self._count(project_id, result)

    async def _reconcile(self, job: _Job, bound: structlog.typing.FilteringBoundLogger) -> str | None:
        """Claims the order, waits out the grace, then tries; returns the result to count (None: none)."""
        try:
            await self._claim(job)
        except StoreUnavailable as exc:
            bound.info("order_claim_deferred", error=str(exc))  # tried again after the grace
        await asyncio.sleep(max(0.0, job.due - asyncio.get_running_loop().time()))
        failure = ""
        for attempt in range(self._attempts):
            if attempt:
                await asyncio.sleep(self._retry.delay_s(attempt - 1))
            try:
                return await self._attempt(job, bound)
            except (StoreUnavailable, LookupFailed) as exc:
                failure = str(exc)
                bound.info("order_reconcile_retry", error=failure, attempt=attempt + 1)
            except _GiveUp as exc:
                bound.warning("order_reconcile_given_up", error=str(exc), note="left to the sweeper")
                return "failed"
        bound.warning("order_reconcile_given_up", error=failure, attempts=self._attempts, note="left to the sweeper")
        return "failed"

    async def _claim(self, job: _Job) -> None:
        player = job.player
        await self._index.record(
            player.project_id, job.order_id, player.user_id, authority=CLAIM, applied=False, now_ms=now_ms()
        )
        job.claimed = True

    async def _attempt(self, job: _Job, bound: structlog.typing.FilteringBoundLogger) -> str | None:
        """One try.

        Raises:
            StoreUnavailable, LookupFailed: worth trying again.
            _GiveUp: not worth trying again.
        """
        player = job.player
        project_id, user_id = player.project_id, player.user_id
        if not job.claimed:
            await self._claim(job)
        state = await bounded(read_order_state(self._redis, (project_id, user_id, job.order_id)), self._redis_timeout_s)
        if state is not None:
            return "already"  # its order_paid (or a cancel) was applied: a webhook came in time
        if self._leaves_to_sweeper(project_id):
            # Get order cannot tell a sandbox order from a live one; the sweeper's search can, and sweeps now.
            bound.info("order_reconcile_deferred", note="left to the sweeper, asked to sweep now")
            return "deferred"
        if job.order is None:
            try:
                job.order = await self._lookup.order(player, job.order_id)
            except (TokenRefused, OrderUnknown) as exc:
                raise _GiveUp(f"Get order: {exc}") from exc
            self._count(project_id, "examined")
        order = job.order
        if order.status.status not in _PAID:
            bound.info("order_reconcile_not_paid", status=order.status.word[:32])
            return None
        why = self._unreadable(order)
        if why is None:
            owner = (await self._index.owners(project_id, [job.order_id]))[job.order_id]
            if owner.conflict or (owner.known and owner.user_id != user_id):
                why = "the order index gives the order to another player, or its records disagree"
        if why is not None:
            bound.warning("order_reconcile_unresolved", reason=why)
            return "unresolved"
        event = await self._event(job, order)
        if event is None:
            bound.warning("order_reconcile_unresolved", reason="a bundle the project's catalog does not know")
            return "unresolved"
        appended = await self._event_log.append(event, b"")
        if appended.duplicate:
            return "already"  # another replica reconciled it first
        lines = [f"{line.sku} x{line.quantity}" for line in event.order.lines]
        bound.info("order_reconciled", source=SOURCE, lines=lines[:_LOGGED_LINES], line_count=len(lines))
        return "applied"

    @staticmethod
    def _unreadable(order: ProviderOrder) -> str | None:
        """Why the provider's record cannot be applied as it is, or None. An order applied with no line would
        make its late webhook replay and grant nothing."""
        if not order.items:
            return "the provider's record of the order lists no item"
        if any(not item.sku or item.quantity < 1 for item in order.items):
            return "the provider's record of the order has an item without a sku or a quantity"
        return None

    async def _event(self, job: _Job, order: ProviderOrder) -> events_pb2.WebhookEvent | None:
        """The reconciled order_paid; None when a bundle stays unknown after one refresh of the catalog.

        Get order does not type its items: a bundle is known as one only from the catalog. So a sku the catalog
        knows neither as an item nor as a bundle (one added to the store since the catalog was read) makes it read
        the catalog again once before the order is applied; a sku it still does not know is then the consumer's
        to judge, as in a webhook.

        Raises:
            StoreUnavailable: the catalog could not be read or stored.
        """
        project_id = job.player.project_id
        while True:
            catalog = await self._catalogs.catalog(project_id)
            unknown = any(item.sku not in catalog.bundles and catalog.lookup(item.sku) is None for item in order.items)
            try:
                event: events_pb2.WebhookEvent | None = order_event(
                    self._provider,
                    order,
                    job.player.user_id,
                    catalog.bundles,
                    origin=_TRACKER_ORIGIN,
                    paid_at_ms=job.paid_at_ms,
                    received_at_ms=now_ms(),
                )
            except SkuNotInCatalog:
                event = None
            if job.refreshed or (event is not None and not unknown):
                return event
            await self._catalogs.refresh(project_id)
            job.refreshed = True

    def _count(self, project_id: int, result: str) -> None:
        self._metrics.reconcile_orders.labels(str(project_id), SOURCE, result).inc()


__all__: Final = ["ATTEMPTS", "GRANT_MARGIN_S", "SOURCE", "TrackerReconciler"]
