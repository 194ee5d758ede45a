"""The composition root of the service process: settings -> Redis -> store -> gRPC server, start and stop.

It chooses the payment provider whose orders GetOrderStatus follows, whose admin catalog the projects' catalogs
are read from, and whose admin order search the sweeper reads: Xsolla's (`providers.xsolla`), built from its
settings, unless a caller hands in other `core.order_sources.OrderSources`, another `core.catalogs.CatalogSource`
or another `core.reconciliation.OrderSearch`.

Start order: the embedded Redis (when no REDIS_URL), the Redis client, the key layout's check (`core.layout`: a
store written with another layout is refused), the metrics endpoint, the catalogs (read in the background), the
tracker's reconciliation (`server.reconcile.tracked`, unless turned off), order tracking (its Redis subscription),
the gRPC server (EntitlementService, health, reflection: `server.grpc_api`), the HTTP/JSON API that calls it through
a private socket (`server.http_api`, unless turned off), the sweeper (`server.reconcile.sweeper`, unless turned
off), the support console (`server.console`, unless turned off), then the webhook event consumer; the change feed's
relay and repair (`server.feed`) with the store. Stop order is the
reverse, gracefully: the console stops taking requests, the sweeper stops (its progress is saved after every page;
its lease is released), the consumer stops reading and finishes the batch it is applying, GetOrderStatus streams end
with UNAVAILABLE (their clients reopen them on another replica), health goes NOT_SERVING, the HTTP API and the gRPC
server stop taking requests and let in-flight ones finish within the grace period, the feed's relay relays what is
queued (within the grace period; its repair stops), pending reconciliations are
dropped (the sweeper is the backstop), order tracking closes its sockets and subscription, the catalogs stop their
reads, then Redis closes.
The embedded Redis runs under a supervisor (`server.supervisor`) that restarts it whenever it dies; the
supervisor stops first, so a stop never races a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, replace

import grpc
import structlog
from grpc_health.v1._async import HealthServicer as AsyncHealthServicer
from prometheus_client import CollectorRegistry

from core import connections
from core.catalogs import CatalogSource
from core.connections import RedisClient, bounded
from core.durability import DurabilityDecider
from core.eventlog import EventLog
from core.layout import LayoutGate
from core.lifecycle import cancel_and_wait
from core.metrics import MetricsEndpoint
from core.order_sources import OrderSources
from core.projects import SANDBOX_GRANT
from core.reconciliation import OrderSearch
from entitlements.v1 import entitlements_pb2 as pb
from providers import xsolla as xsolla_provider
from server.auth import Authenticator
from server.catalog import Catalogs
from server.config import Settings
from server.console import Console, start_console
from server.consumer import Consumer, ConsumerHooks
from server.consumer.projects import registered_projects
from server.durability import wait_observer, write_durability
from server.embedded import EmbeddedRedis
from server.errors import StoreUnavailable
from server.feed import FeedWriter
from server.fulfillment import Fulfillment
from server.grpc_api import PrivateSocket, set_serving, start_grpc_server, watch_store
from server.http_api import HttpApi
from server.metrics import CatalogMetrics, EmbeddedStoreMetrics, ServiceMetrics
from server.order_effects import OrderEffects
from server.reconcile import OrderIndex, Sweeper, TrackerReconciler, sweeper_for
from server.rpc import RpcRuntime
from server.service import EntitlementServicer, entitlement_message
from server.status_channel import OrderStatusPublisher
from server.store import EntitlementStore
from server.supervisor import EmbeddedSupervisor
from server.tracking import OrderTracking
from server.watch import Watches

log = structlog.get_logger("server.app")

#: Projects beyond those known at start for which the consumer's pool keeps room (their events' readers).
PROJECTS_HEADROOM = 16

SERVICE = pb.DESCRIPTOR.services_by_name["EntitlementService"]
SERVICE_NAME = SERVICE.full_name


@dataclass(frozen=True)
class Endpoints:
    """Where a started service listens (ports resolved when the settings asked for port 0)."""

    grpc_port: int
    metrics_port: int
    redis_url: str
    console_port: int | None = None
    http_port: int | None = None


class Service:
    """One service process's parts. Build it inside the running event loop, then `start()` and `stop()`.

    Args:
        settings: the configuration.
        xsolla: how to reach Xsolla's order APIs, when the provider is Xsolla's (the default).
        order_sources: another provider's order sources, instead of Xsolla's (closed by `stop`).
        xsolla_catalog: how to reach Xsolla's admin catalog API, when the provider is Xsolla's (the default).
        catalog_source: another provider's catalog source, instead of Xsolla's (closed by `stop`).
        order_search: another provider's admin order search, for the sweeper, instead of Xsolla's (closed by
            `stop`).
        consumer_hooks: fault-injection seams for the event consumer (tests only).
    """

    def __init__(
        self,
        settings: Settings,
        xsolla: xsolla_provider.OrderSettings | None = None,
        *,
        order_sources: OrderSources | None = None,
        xsolla_catalog: xsolla_provider.CatalogSettings | None = None,
        catalog_source: CatalogSource | None = None,
        order_search: OrderSearch | None = None,
        consumer_hooks: ConsumerHooks | None = None,
    ) -> None:
        # One default project for the service and Xsolla's order sources: the projects', or else (settings made
        # in code with no project) Xsolla's configured project, which then becomes the one project served.
        xsolla = xsolla or xsolla_provider.OrderSettings()
        settings = replace(settings, projects=settings.projects.or_single(xsolla.project_id))
        xsolla = replace(xsolla, project_id=settings.projects.default_project or 0)
        self.settings = settings
        self.registry = CollectorRegistry()
        self.metrics = ServiceMetrics(self.registry)
        # Nothing opens until an order is followed (sessions and sockets are made on first use).
        self.order_sources = order_sources or xsolla_provider.order_sources(xsolla, self.registry)
        # The provider's name in the ids of the events reconciliation appends (webhooks' ids start with it too).
        self.provider = xsolla_provider.PROVIDER if order_sources is None else order_sources.name.lower()
        admin = xsolla_catalog or xsolla_provider.CatalogSettings()
        self.catalog_source = catalog_source or xsolla_provider.catalog_source(admin, self.registry)
        # The sweeper searches the projects with admin API credentials (no request before the first sweep).
        self.order_search = order_search or xsolla_provider.order_search(admin, self.registry)
        self.catalogs: Catalogs | None = None
        self.sweeper: Sweeper | None = None
        self.console: Console | None = None
        self.embedded: EmbeddedRedis | None = None
        self.supervisor: EmbeddedSupervisor | None = None
        self._embedded_metrics = EmbeddedStoreMetrics(self.registry) if settings.redis_url is None else None
        # Set when the supervisor finds the embedded store dead or back: the health check runs at once.
        self._store_changed = asyncio.Event()
        # False while the group's parent reports its embedded store down (`store_change`, a worker of `server.group`).
        self._store_reported_up = True
        self.redis: RedisClient | None = None
        self.store: EntitlementStore | None = None
        self.feed: FeedWriter | None = None
        self.write_durability: DurabilityDecider | None = None
        self.event_log: EventLog | None = None
        self.order_index: OrderIndex | None = None
        self.reconciler: TrackerReconciler | None = None
        self.health = AsyncHealthServicer()
        self._grpc: grpc.aio.Server | None = None
        self.http_api: HttpApi | None = None
        self._private_socket: PrivateSocket | None = None
        self._metrics_http = MetricsEndpoint(self.registry)
        self._health_task: asyncio.Task[None] | None = None
        self.endpoints: Endpoints | None = None
        self.consumer: Consumer | None = None
        self.tracking: OrderTracking | None = None
        self.watches: Watches | None = None
        self._consumer_redis: RedisClient | None = None
        self._consumer_hooks = consumer_hooks

    def _swept_without_sandbox_grants(self, project_id: int) -> bool:
        """For an order the tracker's reconciliation is about to apply: when the project's sandbox policy grants
        nothing for test orders and this replica sweeps the project, asks for a sweep now and says True: the
        sweeper can tell a sandbox order from a live one (`server.reconcile.tracked`)."""
        project = self.settings.projects.projects.get(project_id)
        if project is None or project.sandbox == SANDBOX_GRANT or self.sweeper is None:
            return False
        return self.sweeper.sweep_soon(project_id)

    def store_change(self, up: bool) -> None:
        """The supervisor (this process's, or a group's parent's) found the embedded store dead or back: health is
        checked at once, and once it is back the loops that wait after Redis failures (the consumer, the
        order-status subscription) retry without waiting out their backoff."""
        self._store_reported_up = up
        self._store_changed.set()
        if up:
            if self.consumer is not None:
                self.consumer.retry_now()
            if self.tracking is not None:
                self.tracking.feed.retry_now()

    async def start(self) -> Endpoints:
        """Starts every part; on failure, stops what was started and re-raises."""
        settings = self.settings
        settings.check_servable()
        try:
            redis_url = settings.redis_url
            if redis_url is None:
                self.embedded = EmbeddedRedis(settings.data_dir, appendfsync=settings.appendfsync)
                await self.embedded.start()
                redis_url = self.embedded.url
                assert self._embedded_metrics is not None
                self.supervisor = EmbeddedSupervisor(self.embedded, self._embedded_metrics, on_change=self.store_change)
                self.supervisor.start()
            self.redis = connections.connect(
                redis_url,
                cluster=settings.redis_cluster,
                timeout_s=settings.redis_timeout_s,
                max_connections=settings.redis_max_connections,
            )
            # Before anything is written: a store of another key layout is refused (LayoutMismatch, a ConfigError).
            layout = LayoutGate(self.redis)
            try:
                await bounded(layout.ensure(), settings.redis_timeout_s * 4)
            except StoreUnavailable as exc:
                # Started anyway, as with Redis down at any time; the store checks before its first operation.
                log.warning("store_layout_unchecked", error=str(exc), note="checked before the first operation")
            # What a write waits for before it counts (`server.durability`); a store that cannot give it: refused.
            self.write_durability = await write_durability(self.redis, settings)
            self.feed = FeedWriter(self.redis, settings, self.registry)
            self.feed.start()
            self.store = EntitlementStore(
                self.redis,
                timeout_s=settings.redis_timeout_s,
                idempotency_ttl_ms=int(settings.idempotency_ttl_days * 86_400_000),
                layout=layout,
                durability=self.write_durability.current,
                on_wait=wait_observer(self.metrics),
                feed=self.feed.relay,
            )
            # Reconciliation appends the orders it applies to the event log, as the gateway does.
            self.event_log = EventLog(self.redis, partitions=settings.event_partitions, layout=layout)
            self.order_index = OrderIndex(self.redis, timeout_s=settings.redis_timeout_s)
            metrics_port = await self._metrics_http.start(settings.metrics_host, settings.metrics_port)
            self.catalogs = Catalogs(
                self.redis,
                settings.projects,
                settings.local_catalogs,
                self.catalog_source,
                CatalogMetrics(self.registry, by_project=settings.projects.listed),
                refresh_interval_s=settings.catalog_refresh_s,
                timeout_s=settings.redis_timeout_s,
            )
            self.catalogs.start()
            if settings.reconcile.tracker_enabled:
                self.reconciler = TrackerReconciler(
                    self.redis,
                    provider=self.provider,
                    lookup=self.order_sources.lookup,
                    catalogs=self.catalogs,
                    event_log=self.event_log,
                    index=self.order_index,
                    metrics=self.metrics,
                    grace_s=settings.reconcile.grace_s,
                    # As many as the orders a replica follows: each tracker hands over at most one.
                    max_pending=settings.tracking.max_trackers,
                    redis_timeout_s=settings.redis_timeout_s,
                    leaves_to_sweeper=self._swept_without_sandbox_grants,
                )
            self.tracking = OrderTracking(
                self.redis,
                settings.tracking,
                self.metrics,
                cluster=settings.redis_cluster,
                redis_timeout_s=settings.redis_timeout_s,
                sources=self.order_sources,
                reconciler=self.reconciler,
            )
            self.tracking.start()
            grpc_port = await self._start_grpc(redis_url, self.store, self.tracking, self.catalogs)
            self._start_sweeper(self.redis, self.event_log, self.order_index, self.catalogs)
            self.console = await start_console(settings, self.store, self.redis, self.catalogs, self.order_index)
            self._health_task = asyncio.get_running_loop().create_task(self._watch_store())
            if settings.consumer.enabled:
                await self._start_consumer(redis_url, self.redis, self.store, self.catalogs)
        except BaseException:
            await self.stop()
            raise
        self.endpoints = Endpoints(
            grpc_port,
            metrics_port,
            redis_url,
            self.console.port if self.console else None,
            self.http_api.port if self.http_api else None,
        )
        log.info(
            "service_started",
            grpc=f"{settings.grpc_host}:{grpc_port}",
            http=f"{settings.http.host}:{self.http_api.port}" if self.http_api else None,
            metrics=f"{settings.metrics_host}:{metrics_port}",
            console=f"{settings.console.host}:{self.console.port}" if self.console else None,
            redis="embedded" if self.embedded or settings.redis_from_group else "external",
            redis_owner="group_parent" if settings.redis_from_group else "self" if self.embedded else None,
            tls=settings.tls is not None,
            mtls=settings.tls is not None and settings.tls.client_ca_file is not None,
            api_keys=len(settings.api_keys),
            consumer=self.consumer.name if self.consumer else None,
            projects=list(settings.projects.ids) or "any",
            default_project=settings.projects.default_project,
        )
        return self.endpoints

    async def _start_consumer(
        self, redis_url: str, redis: RedisClient, store: EntitlementStore, catalogs: Catalogs
    ) -> None:
        settings = self.settings
        # Its own client: blocking reads hold a connection for up to block_ms, and need a socket timeout
        # longer than that. One connection per reader (a partition of a project): those of the projects known
        # now, and room for projects that appear later (connections open only when used).
        known = set(settings.projects.ids)
        with contextlib.suppress(StoreUnavailable):
            known |= set(await bounded(registered_projects(redis), settings.redis_timeout_s))
        self._consumer_redis = connections.connect(
            redis_url,
            cluster=settings.redis_cluster,
            timeout_s=settings.redis_timeout_s + settings.consumer.block_ms / 1000,
            max_connections=settings.event_partitions * (len(known) + PROJECTS_HEADROOM) + 4,
        )
        publisher = OrderStatusPublisher(redis, cluster=settings.redis_cluster)
        self.consumer = Consumer(
            self._consumer_redis,
            Fulfillment(
                store,
                catalogs,
                settings.projects,
                OrderEffects(redis, self.order_index, publisher, timeout_s=settings.redis_timeout_s),
            ),
            self.metrics,
            settings.consumer,
            partitions=settings.event_partitions,
            projects=settings.projects.ids,
            served=settings.projects.serves,
            max_projects=len(known) + PROJECTS_HEADROOM,
            hooks=self._consumer_hooks,
        )
        await self.consumer.start()

    def _start_sweeper(
        self, redis: RedisClient, event_log: EventLog, order_index: OrderIndex, catalogs: Catalogs
    ) -> None:
        """Starts the periodic sweep of the projects' orders at the provider (`server.reconcile.sweeper`)."""
        if self.settings.reconcile.sweeper_enabled:
            search, metrics = self.order_search, self.metrics
            parts = (self.settings, redis, search, event_log, order_index, catalogs, metrics)
            self.sweeper = sweeper_for(*parts, provider=self.provider)
            self.sweeper.start()

    async def _start_grpc(
        self, redis_url: str, store: EntitlementStore, tracking: OrderTracking, catalogs: Catalogs
    ) -> int:
        """Starts the gRPC server (`server.grpc_api`) with WatchEntitlements' streams (`server.watch`) and, unless
        turned off, the HTTP/JSON API that calls it through a private socket (`server.http_api`); returns the gRPC
        port."""
        settings = self.settings
        assert self.redis is not None
        self.watches = Watches.open(redis_url, self.redis, settings, self.metrics, entitlement=entitlement_message)
        authenticator = Authenticator(settings.api_keys, insecure_dev_mode=settings.insecure_dev_mode)
        runtime = RpcRuntime(authenticator, self.metrics, SERVICE, settings.projects)
        servicer = EntitlementServicer(store, runtime, self.metrics, tracking, catalogs, self.watches)
        if settings.http.enabled:
            self._private_socket = PrivateSocket()
            # Built before the gRPC server starts: a google.api.http rule it cannot serve stops the start here.
            target, grace = self._private_socket.target, settings.shutdown_grace_s
            self.http_api = HttpApi(settings.http, settings.tls, SERVICE, target, self.metrics, shutdown_grace_s=grace)
        self._grpc, port = await start_grpc_server(settings, servicer, self.health, private=self._private_socket)
        await set_serving(self.health, (SERVICE_NAME,), serving=True)
        self.metrics.store_up.set(1)
        if self.http_api is not None:
            await self.http_api.start()
        return port

    async def _watch_store(self) -> None:
        """Drives the health service from Redis's answers (`server.grpc_api.watch_store`)."""
        assert self.store is not None
        await watch_store(
            self.store,
            self.health,
            (SERVICE_NAME,),
            self.metrics,
            interval_s=self.settings.health_check_interval_s,
            changed=self._store_changed,
            embedded_up=lambda: self._store_reported_up and (self.supervisor is None or self.supervisor.up),
        )

    async def wait(self) -> None:
        """Returns when the gRPC server has terminated."""
        if self._grpc is not None:
            await self._grpc.wait_for_termination()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stops gracefully: the consumer finishes the batch it is applying (up to `grace_s`), NOT_SERVING,
        in-flight RPCs finish (up to `grace_s`), then Redis closes."""
        grace = self.settings.shutdown_grace_s if grace_s is None else grace_s
        if self.console is not None:
            await self.console.stop()
            self.console = None
        if self.sweeper is not None:
            # Its progress is saved after every page; stopping releases the lease for another replica.
            await self.sweeper.stop()
            self.sweeper = None
        if self.consumer is not None:
            await self.consumer.stop(grace)
            self.consumer = None
        if self._consumer_redis is not None:
            await self._consumer_redis.aclose()
            self._consumer_redis = None
        if self._health_task is not None:
            await cancel_and_wait(self._health_task)
            self._health_task = None
        if self.tracking is not None:
            # Streams would otherwise hold the grace period (they last minutes) and then be cut off CANCELLED.
            self.tracking.close_streams()
        if self.watches is not None:
            self.watches.close_streams()  # UNAVAILABLE: their callers resume with their cursors
        if self._grpc is not None:
            await self.health.enter_graceful_shutdown()
            # Together: the HTTP API stops listening and lets its requests finish, whose RPCs the gRPC server lets
            # finish while it refuses new ones.
            await asyncio.gather(self.http_api.stop() if self.http_api else asyncio.sleep(0), self._grpc.stop(grace))
            self._grpc = None
        elif self.http_api is not None:
            await self.http_api.stop()
        self.http_api = None
        if self._private_socket is not None:
            self._private_socket.close()
            self._private_socket = None
        if self.feed is not None:
            await self.feed.stop(grace)
            self.feed = None
        if self.reconciler is not None:
            # Before the order sources close (tracking.stop): a reconciliation may be reading Get order.
            await self.reconciler.stop()
            self.reconciler = None
        if self.tracking is not None:
            await self.tracking.stop()
            self.tracking = None
        if self.watches is not None:
            await self.watches.stop()
            self.watches = None
        if self.catalogs is not None:
            await self.catalogs.stop()
            self.catalogs = None
        elif self.catalog_source is not None:
            await self.catalog_source.close()
        await self.order_search.close()
        if self.redis is not None:
            await self.redis.aclose()
            self.redis = None
        if self.supervisor is not None:
            await self.supervisor.stop()
            self.supervisor = None
        if self.embedded is not None:
            await self.embedded.stop()
            self.embedded = None
        await self._metrics_http.stop()
        log.info("service_stopped")
