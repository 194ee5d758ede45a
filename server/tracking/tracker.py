"""One order followed on this replica: its sources, its best known state, and the streams watching it.

A tracker starts with the first stream that asks for an order and stops with the last one, or when the order
reaches a terminal status. Everything it learns goes through `OrderProgress.offer` (forward-only, no repeats)
and, when new, to every watcher at once. Its sources:

1. The stored state (the order hash the webhook consumer writes), read once when the tracker starts.
2. Webhook updates, pushed by the replica's `OrderStatusFeed` (`server.status_channel`) for the whole life
   of the tracker.
3. With a player token: the provider's socket first (Xsolla's WebSocket); if it cannot connect, fails, or says
   nothing about the order for `ws_silence_s`, polling of the provider's lookup (Get order) every
   `poll_interval_s` until a terminal status. Polling alone when the provider has no socket (or it is turned off).
   Only on the replica holding the order's lease (`server.tracking.upstream`); the others hear what it learns
   through the feed (`upstream`), with the source that saw it, and take the lease over when it is free.

What a tracker needs from the provider is `core.order_sources.OrderSources`. Without a token nothing can report
the provider's DONE; the tracker then takes the applied `order_paid` webhook (paid,
items granted) as the order's completion and reports DONE from that source.

4. With reconciliation on (`reconciler`): when the provider reports the order paid or done and this service has
   not granted it, the tracker hands it to the replica's `server.reconcile.tracked.TrackerReconciler`, which
   outlives the tracker and applies the order from the provider's record after a grace period unless a webhook
   did. Its grant reaches the tracker as any applied order does (the webhook feed), with the source
   RECONCILIATION; after the provider's DONE the tracker waits for it at least until the reconciliation is due.

An order paid but withheld by policy (a sandbox order the project's policy ignores: `OrderState.withheld`) will
never be granted: its webhook completes it the same way (DONE, `entitlements_granted` false), and a provider DONE
does not wait `grant_wait_s` for a grant that cannot come.

All of it runs on the event loop: the callbacks (`webhook`, `socket_status`, `socket_failed`) do not await, so
state changes never interleave.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, Final

import structlog

from core.backoff import Backoff
from core.clock import now_ms
from core.connections import RedisClient
from core.logs import user_ref
from core.order_sources import LookupFailed, OrderSources, OrderUnknown, Player, ReportedStatus, TokenRefused
from server.errors import EntitlementsError, NotFound, ServiceStopping, TokenRejected
from server.metrics import ServiceMetrics
from server.reconcile.tracked import TrackerReconciler
from server.status_channel import RECONCILIATION_SOURCE, OrderState, UpstreamStatus, read_order
from server.tracking.settings import TrackingSettings
from server.tracking.status import (
    CANCELED,
    DONE,
    EXPIRED,
    PAID,
    POLLING,
    RECONCILIATION,
    SOURCE_NAMES,
    STATUS_NAMES,
    STORED,
    WEBHOOK,
    WEBSOCKET,
    OrderProgress,
    rank,
    status_named,
)
from server.tracking.upstream import Upstream
from server.tracking.watcher import Watcher

log = structlog.get_logger("server.tracking")

#: The longest wait between two Get order attempts after failures (unless the poll interval is longer).
_POLL_BACKOFF_CAP_S = 30.0

#: (project id, player id, order id): what one tracker follows.
TrackerKey = tuple[int, str, str]
# The provider's sources, as named in the holder's announcements.
_UPSTREAM_SOURCES: Final = {SOURCE_NAMES[WEBSOCKET]: WEBSOCKET, SOURCE_NAMES[POLLING]: POLLING}


class OrderTracker:
    """Follows one order for every stream watching it on this replica.

    Args:
        key: (project id, player id, order id).
        redis: for the stored state.
        settings: timings.
        sources: the provider's order lookup and sockets (the sockets shared per player).
        metrics: counters and gauges.
        on_stopped: called once when the tracker stops (finished, or no watcher left).
        redis_timeout_s: bound on the stored-state read.
        upstream: the order leases, and where the holder announces what it learns.
        reconciler: the replica's reconciliation of orders the provider reports paid; None: turned off.
    """

    def __init__(
        self,
        key: TrackerKey,
        *,
        redis: RedisClient,
        settings: TrackingSettings,
        sources: OrderSources,
        metrics: ServiceMetrics,
        on_stopped: Callable[[OrderTracker], None],
        redis_timeout_s: float,
        upstream: Upstream,
        reconciler: TrackerReconciler | None = None,
    ) -> None:
        self.key = key
        self.project_id, self.user_id, self.order_id = key
        self.progress = OrderProgress()
        self._redis = redis
        self._settings = settings
        self._sources = sources
        self._metrics = metrics
        self._on_stopped = on_stopped
        self._redis_timeout_s = redis_timeout_s
        self._upstream = upstream
        self._reconciler = reconciler
        self._reconcile_asked = False
        # When the provider first said paid (or done), here or to the lease holder (ms since the epoch).
        self._paid_seen_at_ms: int | None = None
        self._watchers: dict[Watcher, None] = {}  # insertion-ordered set
        self._player: Player | None = None
        self._refused_tokens: set[str] = set()
        self._unknown_seen: set[tuple[str, str]] = set()
        self._task: asyncio.Task[None] | None = None
        self._stored_read = False
        self._grant_timer: asyncio.TimerHandle | None = None
        # The consumer recorded the order as paid and granting nothing by policy: no grant will follow.
        self._withheld = False
        self._stopped = False
        # The WebSocket phase: woken by every status or failure the socket reports for this order.
        self._socket_wakeup = asyncio.Event()
        self._socket_failure: str | None = None
        self._socket_heard_at = 0.0
        self._log = log.bind(order_id=self.order_id, project_id=self.project_id, user=user_ref(self.user_id))

    # --- watchers ------------------------------------------------------------------------------------------

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    @property
    def stopped(self) -> bool:
        return self._stopped

    @property
    def task(self) -> asyncio.Task[None] | None:
        """What follows the order now (reading the stored state, the socket, polling), if anything."""
        return self._task

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._guarded(self._run()))

    def join(self, token: str) -> Watcher:
        """A new stream: it first gets the best state known, then every update."""
        watcher = Watcher(self, token)
        self._watchers[watcher] = None
        self._metrics.order_watchers.inc()
        if self.progress.current is not None:
            watcher.push(self.progress.current)
        if token and self._player is None and token not in self._refused_tokens:
            self._player = Player(self.project_id, self.user_id, token)
            if self._stored_read and (self._task is None or self._task.done()):
                self._task = asyncio.get_running_loop().create_task(self._guarded(self._follow_upstream()))
        return watcher

    def leave(self, watcher: Watcher) -> None:
        if self._watchers.pop(watcher, False) is not False:
            self._metrics.order_watchers.dec()
        if not self._watchers:
            self._stop()

    def _end_watchers(self, error: EntitlementsError | None, *, token: str | None = None) -> None:
        """Ends every stream (or only those that gave `token`) after what they already have."""
        for watcher in list(self._watchers):
            if token is None or watcher.token == token:
                watcher.end(error)
                del self._watchers[watcher]
                self._metrics.order_watchers.dec()
        if not self._watchers:
            self._stop()

    def shut_down(self) -> None:
        """Ends every stream with UNAVAILABLE: the replica is stopping (the client reopens elsewhere)."""
        self._end_watchers(ServiceStopping("the service is shutting down; open the stream again"))

    def _stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        if self._grant_timer is not None:
            self._grant_timer.cancel()
            self._grant_timer = None
        self._cancel_task()
        self._on_stopped(self)

    def _cancel_task(self) -> None:
        task, self._task = self._task, None
        if task is not None and task is not asyncio.current_task():
            task.cancel()

    # --- what sources report -------------------------------------------------------------------------------

    def webhook(self, state: OrderState, *, stored: bool = False) -> None:
        """A state from the webhook consumer: a publication, a re-read after a resubscribe, or the stored state."""
        status = status_named(state.status)
        if status is None:
            self._unknown_status("webhook", state.status)
            return
        if state.withheld:
            self._withheld = True
        if status == PAID and (state.entitlements_granted or state.withheld) and self._player is None:
            # Nothing else can tell this tracker that the provider delivered the order, and the provider (Xsolla)
            # considers an order delivered once its order_paid webhook is acknowledged: the grant (or the policy's
            # decision to grant nothing) completes it.
            status = DONE
        # Reconciliation applied the order (the publication or the order hash says so): the stream says so too.
        reconciled = state.source == RECONCILIATION_SOURCE
        source = RECONCILIATION if reconciled else STORED if stored else WEBHOOK
        self._offer(status, source, state.observed_at_ms or now_ms(), state.entitlements_granted)
        current = self.progress.current
        if self._withheld and not self._stopped and current is not None and current.status == DONE:
            # The provider's DONE came first and its streams wait for a grant this order will never get.
            self._log.info("order_tracking_finished", status="done", source="webhook", withheld=state.withheld)
            self._end_watchers(None)

    def upstream(self, heard: UpstreamStatus) -> None:
        """A status the provider reported to the replica holding the order's lease (published, or its record)."""
        status, source = status_named(heard.status), _UPSTREAM_SOURCES.get(heard.source)
        if status is None or source is None:
            self._unknown_status("upstream", f"{heard.status}/{heard.source}")
            return
        if status in (PAID, DONE) and self._paid_seen_at_ms is None:
            self._paid_seen_at_ms = heard.observed_at_ms
        self._offer(status, source, heard.observed_at_ms or now_ms(), heard=True)

    def socket_status(self, reported: ReportedStatus) -> None:
        self._socket_heard_at = asyncio.get_running_loop().time()
        if reported.status is None:
            self._unknown_status("websocket", reported.word)
        else:
            self._offer(reported.status, WEBSOCKET, now_ms())
        self._socket_wakeup.set()

    def socket_failed(self, reason: str) -> None:
        self._socket_failure = reason
        self._socket_wakeup.set()

    def _unknown_status(self, source: str, text: str) -> None:
        # Once per source and string: polling would otherwise repeat it every interval.
        if (source, text) not in self._unknown_seen:
            self._unknown_seen.add((source, text))
            self._log.warning("order_status_unknown", source=source, status=text[:32])

    def _offer(
        self, status: int, source: int, observed_at_ms: int, granted: bool | None = None, *, heard: bool = False
    ) -> None:
        """Offers what a source saw; `heard`: the lease holder saw it (on another replica, or before a restart)."""
        if self._stopped:
            return
        learned = source in (WEBSOCKET, POLLING) and not heard  # this replica holds the lease: it announces
        if learned and status in (PAID, DONE):
            self._paid_seen_at_ms = self._paid_seen_at_ms or observed_at_ms
            self._reconcile(self._paid_seen_at_ms)
        update = self.progress.offer(status, source, observed_at_ms, granted)
        if update is None:
            return
        if learned:
            heard_as = UpstreamStatus(
                self.project_id, self.order_id, self.user_id, STATUS_NAMES[status], SOURCE_NAMES[source], observed_at_ms
            )
            self._upstream.announcer.announce(heard_as, rank(status))
        self._metrics.order_updates.labels(SOURCE_NAMES[source]).inc()
        for watcher in self._watchers:
            watcher.push(update)
        if update.status in (CANCELED, EXPIRED) or (
            update.status == DONE
            and (update.entitlements_granted or self._withheld or self._settings.grant_wait_s <= 0)
        ):
            self._log.info("order_tracking_finished", status=STATUS_NAMES[update.status], source=SOURCE_NAMES[source])
            self._end_watchers(None)
        elif update.status == DONE and self._grant_timer is None:
            # The provider is done with the order; only this service's grant (a webhook) can still change the picture.
            self._cancel_task()
            wait_s = self._settings.grant_wait_s
            if self._reconciler is not None:
                # A reconciliation of the order grants it up to its grace plus a margin from now: wait for it (the
                # lease holder's, on another replica: as due from when it saw the order paid).
                due_s = self._reconciler.due_in_s(self.project_id, self.order_id)
                if due_s is None and self._paid_seen_at_ms is not None:
                    due_s = self._reconciler.due_after_s(self._paid_seen_at_ms)
                wait_s = max(wait_s, due_s or 0.0)
            self._grant_timer = asyncio.get_running_loop().call_later(wait_s, self._end_watchers, None)

    def _reconcile(self, paid_seen_at_ms: int) -> None:
        """The provider reported the order paid (or done): unless this service has granted it (or withheld it by
        policy, or it ended), the replica's reconciler applies it after the grace if no webhook does. Once per
        tracker; the reconciler keeps one per order."""
        current = self.progress.current
        if (
            self._reconciler is None
            or self._reconcile_asked
            or self._player is None
            or self._withheld
            or (current is not None and (current.entitlements_granted or current.status in (CANCELED, EXPIRED)))
        ):
            return
        self._reconcile_asked = True
        self._reconciler.submit(self._player, self.order_id, paid_seen_at_ms)

    # --- following the order at the provider ---------------------------------------------------------------

    async def _guarded(self, work: Coroutine[Any, Any, None]) -> None:
        try:
            await work
        except asyncio.CancelledError:
            raise
        except Exception:
            # A bug, not a condition of the order: the streams keep their webhook updates and their max wait.
            self._log.exception("order_tracker_failed")

    async def _run(self) -> None:
        await self._read_stored()
        self._stored_read = True
        if self._player is not None and not self._finished:
            await self._follow_upstream()

    async def _follow_upstream(self) -> None:
        """Follows the order at the provider while this replica holds its lease (`server.tracking.upstream`)."""
        await self._upstream.follow(self.key, self._follow, lambda: self._player is None or self._finished, self._log)

    @property
    def _finished(self) -> bool:
        current = self.progress.current
        return self._stopped or (current is not None and current.terminal)

    async def _read_stored(self) -> None:
        """The order hash, then the lease holder's record of the provider's status (a replica followed it there)."""
        try:
            async with asyncio.timeout(self._redis_timeout_s * 2):
                found = await read_order(self._redis, self.key)
        except Exception as exc:  # the feed re-reads it after (re)subscribing; sources still run
            self._log.warning("order_stored_state_unavailable", error=repr(exc))
            return
        for message in found:
            if isinstance(message, OrderState):
                self.webhook(message, stored=True)
            else:
                self.upstream(message)

    async def _follow(self) -> None:
        use_socket = self._sources.sockets is not None
        while self._player is not None and not self._finished:
            player = self._player
            try:
                if use_socket:
                    reason = await self._follow_socket(player)
                    use_socket = False
                    if reason is not None:
                        self._metrics.order_fallbacks.labels(reason).inc()
                        self._log.info("order_polling_fallback", reason=reason)
                    continue
                await self._poll(player)
            except TokenRefused:
                self._drop_token(player.token, TokenRejected(f"{self._sources.name} rejected the token"))
            except OrderUnknown:
                self._drop_token(
                    player.token,
                    NotFound(f"{self._sources.name} does not know order {self.order_id} in project {self.project_id}"),
                )

    def _drop_token(self, token: str, error: EntitlementsError) -> None:
        """Ends the streams that gave `token`, and goes on with another stream's token, if any."""
        self._log.info("order_token_refused", error=str(error))
        self._refused_tokens.add(token)
        self._player = None
        self._end_watchers(error, token=token)
        for watcher in self._watchers:
            if watcher.token and watcher.token not in self._refused_tokens:
                self._player = Player(self.project_id, self.user_id, watcher.token)
                break

    async def _follow_socket(self, player: Player) -> str | None:
        """Follows the order on the player's socket; returns why to fall back to polling, or None when done."""
        loop = asyncio.get_running_loop()
        self._socket_failure = None
        self._socket_heard_at = loop.time()
        self._socket_wakeup.clear()
        try:
            assert self._sources.sockets is not None  # `_follow` asks for the socket only when there is one
            lease = self._sources.sockets.acquire(player, self.order_id, self)
        except Exception as exc:
            self._log.warning("order_socket_unusable", error=repr(exc))
            return "connect_error"
        try:
            while not self._finished:
                if self._socket_failure is not None:
                    return self._socket_failure
                remaining = self._socket_heard_at + self._settings.ws_silence_s - loop.time()
                if remaining <= 0:
                    return "silent"
                try:
                    async with asyncio.timeout(remaining):
                        await self._socket_wakeup.wait()
                except TimeoutError:
                    continue
                self._socket_wakeup.clear()
            return None
        finally:
            lease.release()

    async def _poll(self, player: Player) -> None:
        """Polls Get order until a terminal status.

        Raises:
            TokenRefused, OrderUnknown: from Get order.
        """
        # After n failures in a row: the poll interval doubled per failure, up to 30 s, with equal jitter, so
        # many orders failing together spread out.
        interval = self._settings.poll_interval_s
        backoff = Backoff(base_s=interval, cap_s=max(_POLL_BACKOFF_CAP_S, interval))
        failures = 0
        while not self._finished:
            try:
                reported = await self._sources.lookup.status(player, self.order_id)
            except LookupFailed as exc:
                failures += 1
                delay = backoff.delay_s(failures)
                self._log.info("order_poll_failed", error=str(exc), failures=failures, retry_in_s=round(delay, 3))
                await asyncio.sleep(delay)
                continue
            failures = 0
            if reported.status is None:
                self._unknown_status("polling", reported.word)
            else:
                self._offer(reported.status, POLLING, now_ms())
            if self._finished:
                return
            await asyncio.sleep(self._settings.poll_interval_s)


__all__: Final = ["OrderTracker", "TrackerKey", "Watcher"]
