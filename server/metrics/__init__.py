"""Every Prometheus metric of the service process, on a registry the composition root owns: here, and the change
feed's and its watch streams' in `server.metrics.change_feed` (re-exported).

Labels are bounded (method, code, operation, event type, result, reason, partition, API key name): never a player,
sku or order id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS
from server.metrics.change_feed import WATCH_END_REASONS, FeedMetrics, WatchMetrics

__all__ = [
    "WATCH_END_REASONS",
    "CatalogMetrics",
    "EmbeddedStoreMetrics",
    "FeedMetrics",
    "ServiceMetrics",
    "WatchMetrics",
    "WorkerGroupMetrics",
]

# How long a stream stays open: from a stored state answered at once to the one-hour maximum wait.
_STREAM_BUCKETS = (0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0)
# From the gateway's acceptance of a webhook to its effect: normally milliseconds, minutes when retried.
# Reconciliation grants minutes to hours after the payment.
_PAYMENT_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 21600.0)
# A write and its durability wait (one round trip): a group commit under `appendfsync everysec` waits up to a second.
_DURABILITY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)
_DELAY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)


class ServiceMetrics:
    """The service's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpc_requests = Counter(
            "entitlements_rpc_requests_total",
            "RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "entitlements_rpc_duration_seconds",
            "RPC handling time, by method and gRPC status code.",
            ["method", "code"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "entitlements_rpc_in_flight",
            "RPCs being handled now.",
            ["method"],
            registry=registry,
        )
        self.store_unavailable = Counter(
            "entitlements_store_unavailable_total",
            "Calls answered UNAVAILABLE because Redis could not be reached in time.",
            ["method"],
            registry=registry,
        )
        self.store_up = Gauge(
            "entitlements_store_up",
            "1 while the health service says SERVING (Redis answered the last health check), 0 while NOT_SERVING "
            "(Redis does not answer, or the embedded one is being restarted: calls that need it are UNAVAILABLE).",
            registry=registry,
        )
        # The HTTP/JSON API (server/http_api/): its calls are also counted above, as RPCs; these count what the
        # HTTP layer answered, including what it refused before any RPC (unknown path, bad body, ...).
        self.http_requests = Counter(
            "entitlements_http_requests_total",
            "HTTP/JSON API requests answered, by route (the RPC's name, healthz, openapi, or none when no route "
            "matched) and HTTP status.",
            ["route", "status"],
            registry=registry,
        )
        self.http_event_streams = Gauge(
            "entitlements_http_event_streams",
            "GetOrderStatus event streams (text/event-stream) open on the HTTP/JSON API.",
            registry=registry,
        )
        self.writes = Counter(
            "entitlements_writes_total",
            "Grant and Revoke calls that reached the store, by operation and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )
        # The store's writes (server/store/): each waits until durable as ENTITLEMENTS_WRITE_DURABILITY decided.
        self.write_durability_wait = Histogram(
            "entitlements_write_durability_wait_seconds",
            "Time of store writes and their durability wait (one round trip to one node), by durability mode (local, "
            "replicas): a consumer batch's writes on that node before their XACK, a Grant or Revoke before its answer.",
            ["mode"],
            buckets=_DURABILITY_BUCKETS,
            registry=registry,
        )
        self.writes_not_durable = Counter(
            "entitlements_writes_not_durable_total",
            "Store writes applied but not durable (fsynced, replicated) within the wait: the event was not "
            "acknowledged (it is delivered again), the Grant or Revoke answered UNAVAILABLE (retried with its key).",
            ["mode"],
            registry=registry,
        )
        # The webhook event consumer (server/consumer/). `type` is the event type ("order_paid", ...,
        # "unknown", "invalid"); gauges are per partition of the event log (bounded by the configuration) and
        # describe the whole consumer group, so every replica reports the same values.
        self.events = Counter(
            "entitlements_events_total",
            "Event deliveries handled by this replica's consumer, by event type and result (applied, replayed, "
            "ignored, stale, withheld, canceled_before_paid, error, dead_lettered, missing).",
            ["type", "result"],
            registry=registry,
        )
        self.event_apply = Histogram(
            "entitlements_event_apply_seconds",
            "Time to apply one event (store scripts and status publication), by event type.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.event_delay = Histogram(
            "entitlements_event_delay_seconds",
            "From the gateway accepting a webhook to its event being applied, by event type.",
            ["type"],
            buckets=_DELAY_BUCKETS,
            registry=registry,
        )
        self.payment_to_grant = Histogram(
            "entitlements_payment_to_grant_seconds",
            "From a payment (a webhook's arrival, when a tracker saw the order paid, or the order's creation for the "
            "sweeper) to its items being granted (the store's clock at the commit), once per grant, by who brought the "
            "order: webhook, tracker, sweeper.",
            ["source"],
            buckets=_PAYMENT_BUCKETS,
            registry=registry,
        )
        self.reconcile_orders = Counter(
            "entitlements_reconcile_orders_total",
            "Orders reconciliation looked at, by project, source (tracker, sweeper) and result: examined, applied "
            "(an order_paid queued from the provider's record), undone (an order_canceled queued), already (applied "
            "before, nothing to do), mismatch (this service and the provider disagree: reported, not touched), "
            "unresolved (nobody says whose the order is: reported, never guessed), failed, overflow (a tracker's order "
            "beyond the replica's maximum of pending reconciliations: left to the sweeper), deferred (a tracker's "
            "order handed to a sweep, which can tell sandbox from live), rechecked (returned by a sweep's re-check), "
            "lines_differ (the late webhook of a reconciled order lists other lines than were applied: reported, "
            "nothing more granted).",
            ["project", "source", "result"],
            registry=registry,
        )
        self.reconcile_sweeps = Counter(
            "entitlements_reconcile_sweeps_total",
            "Sweeps of a project's orders at the provider run by this replica, by project and result (ok, failed, "
            "refused, lost_lease).",
            ["project", "result"],
            registry=registry,
        )
        self.reconcile_last_success = Gauge(
            "entitlements_reconcile_last_success_timestamp_seconds",
            "When a sweep of the project last completed (by any replica, as stored in Redis; 0 before the first).",
            ["project"],
            registry=registry,
        )
        self.consumer_lag = Gauge(
            "entitlements_consumer_lag_seconds",
            "Age of the oldest event not yet acknowledged by the consumer group (0 when caught up).",
            ["project", "partition"],
            registry=registry,
        )
        self.consumer_lag_entries = Gauge(
            "entitlements_consumer_lag_entries",
            "Events in the stream not yet delivered to any consumer.",
            ["project", "partition"],
            registry=registry,
        )
        self.consumer_pending = Gauge(
            "entitlements_consumer_pending",
            "Events delivered but not yet acknowledged (being applied, failed, or held by a dead consumer).",
            ["project", "partition"],
            registry=registry,
        )
        self.dead_letters = Counter(
            "entitlements_dead_letters_total",
            "Events this replica moved to the dead-letter stream after too many failed deliveries, by type.",
            ["type"],
            registry=registry,
        )
        self.dead_letters_waiting = Gauge(
            "entitlements_dead_letters_waiting",
            "Events in the dead-letter stream (until replayed or discarded by an operator).",
            ["project", "partition"],
            registry=registry,
        )
        self.grants_applied = Counter(
            "entitlements_grants_applied_total",
            "Order lines granted to players by order_paid events.",
            registry=registry,
        )
        self.grants_undone = Counter(
            "entitlements_grants_undone_total",
            "Order lines whose grant was undone by order_canceled events.",
            registry=registry,
        )
        self.kind_conflicts = Counter(
            "entitlements_order_kind_conflicts_total",
            "Order lines granted as the kind the player already held, not the catalog's kind.",
            registry=registry,
        )
        self.sandbox_events = Counter(
            "entitlements_sandbox_events_total",
            "Test payments applied (sandbox orders, dry-run transactions), by event type and the project's sandbox "
            "policy: ignore (recorded, nothing granted) or grant (granted as a live order).",
            ["type", "policy"],
            registry=registry,
        )
        self.consumer_errors = Counter(
            "entitlements_consumer_errors_total",
            "Redis errors in the consumer loop, by stage (read, claim, ack, maintain); the loop backs off.",
            ["stage"],
            registry=registry,
        )
        # Server-streaming RPCs (GetOrderStatus): counted in rpc_requests/rpc_in_flight like the others, timed here
        # rather than in rpc_duration, whose buckets are for unary latencies.
        self.stream_duration = Histogram(
            "entitlements_stream_duration_seconds",
            "How long server-streaming RPCs stayed open, by method and gRPC status code.",
            ["method", "code"],
            buckets=_STREAM_BUCKETS,
            registry=registry,
        )
        self.stream_messages = Counter(
            "entitlements_stream_messages_total",
            "Messages sent on server-streaming RPCs, by method.",
            ["method"],
            registry=registry,
        )
        # Order tracking for GetOrderStatus (server/tracking).
        self.order_trackers = Gauge(
            "entitlements_order_trackers",
            "Orders this replica follows now (one tracker per order, shared by its streams).",
            registry=registry,
        )
        self.order_watchers = Gauge(
            "entitlements_order_watchers",
            "GetOrderStatus streams following an order on this replica.",
            registry=registry,
        )
        self.order_trackers_refused = Counter(
            "entitlements_order_trackers_refused_total",
            "Streams refused RESOURCE_EXHAUSTED because the replica already follows its maximum of orders.",
            registry=registry,
        )
        # Per API key: the key names are the operator's configuration, a bounded set.
        self.order_streams = Gauge(
            "entitlements_order_streams",
            "GetOrderStatus streams open on this replica, by API key name.",
            ["key"],
            registry=registry,
        )
        self.order_streams_refused = Counter(
            "entitlements_order_streams_refused_total",
            "GetOrderStatus streams refused RESOURCE_EXHAUSTED because their API key already held its maximum of "
            "streams open on this replica (ENTITLEMENTS_ORDER_STREAMS_PER_KEY), by API key name.",
            ["key"],
            registry=registry,
        )
        self.order_updates = Counter(
            "entitlements_order_updates_total",
            "Order updates sent to watchers (once per tracker, not per stream), by the source that saw them.",
            ["source"],
            registry=registry,
        )
        self.order_fallbacks = Counter(
            "entitlements_order_polling_fallbacks_total",
            "Orders that switched from the provider's WebSocket to polling, by reason (connect_timeout, connect_error, "
            "closed, broken, silent).",
            ["reason"],
            registry=registry,
        )
        self.order_feed_messages = Counter(
            "entitlements_order_feed_messages_total",
            "Order-status publications received from the webhook consumers, by result (dispatched, unfollowed, "
            "invalid).",
            ["result"],
            registry=registry,
        )
        self.order_feed_subscribes = Counter(
            "entitlements_order_feed_subscribes_total",
            "Times the order-status subscription to Redis was confirmed (at start and after every reconnect); each "
            "one re-reads the state of every order followed.",
            registry=registry,
        )
        self.order_feed_reconnects = Counter(
            "entitlements_order_feed_reconnects_total",
            "Times the order-status subscription failed and was set up again from scratch (after a backoff).",
            registry=registry,
        )
        # One replica follows each order at the provider (server/tracking/upstream.py).
        self.order_following = Gauge(
            "entitlements_order_following",
            "Orders with a player token this replica follows now, by how (via): provider (it holds the order's lease "
            "and follows it at the provider: socket or polling), channel (another replica does; its statuses arrive "
            "on the order-status channel).",
            ["via"],
            registry=registry,
        )
        self.order_lease_takeovers = Counter(
            "entitlements_order_lease_takeovers_total",
            "Order leases this replica took after finding them held by another replica (the holder died, or stopped "
            "following the order): it follows the order at the provider from then on.",
            registry=registry,
        )
        self.order_upstream_announcements = Counter(
            "entitlements_order_upstream_announcements_total",
            "Statuses the provider reported to this replica as an order's lease holder, recorded and published for "
            "the other replicas, by result (published, retried: Redis failed and it is tried again).",
            ["result"],
            registry=registry,
        )
        self.watch = WatchMetrics(registry)


class EmbeddedStoreMetrics:
    """The embedded Valkey server's supervision (`server/supervisor.py`), registered on `registry` only when the
    service runs one (no REDIS_URL): an external Redis is watched by whoever runs it."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.up = Gauge(
            "entitlements_embedded_store_up",
            "1 while the embedded Valkey server runs; 0 from its unexpected exit until a restart answers.",
            registry=registry,
        )
        self.restarts = Counter(
            "entitlements_embedded_store_restarts_total",
            "Times the embedded Valkey server exited on its own (crash, kill, out of memory) and was started again "
            "on the same data (counted once the restarted server answers).",
            registry=registry,
        )
        self.restart_failures = Counter(
            "entitlements_embedded_store_restart_failures_total",
            "Restart attempts whose server did not come up (exited while loading, or no answer in time); each is "
            "tried again after a backoff.",
            registry=registry,
        )


class WorkerGroupMetrics:
    """The parent of a group of service processes (`server.group`, `ENTITLEMENTS_PROCESSES` > 1), on the parent's
    own endpoint (the metrics port; worker i serves its own at `ENTITLEMENTS_WORKER_METRICS_PORT` + i)."""

    def __init__(self, registry: CollectorRegistry, processes: int) -> None:
        self.configured = Gauge(
            "entitlements_workers_configured",
            "Service processes the group runs (ENTITLEMENTS_PROCESSES).",
            registry=registry,
        )
        self.configured.set(processes)
        self.running = Gauge(
            "entitlements_workers_running",
            "Service processes of the group started and serving (a restarted one counts once it is ready again).",
            registry=registry,
        )
        self.restarts = Counter(
            "entitlements_worker_restarts_total",
            "Times a service process of the group exited on its own (crash, kill, out of memory) and was started "
            "again after a backoff.",
            registry=registry,
        )


class CatalogMetrics:
    """The projects' catalogs (`server/catalog/`), registered on `registry`.

    Args:
        by_project: label the item gauge by project id. Only when the projects are a configured list (the label's
            values are then bounded by the configuration); otherwise the gauge has no label.
    """

    def __init__(self, registry: CollectorRegistry, *, by_project: bool) -> None:
        self.refreshes = Counter(
            "entitlements_catalog_refreshes_total",
            "Reads of a project's catalog from the payment provider, by result (ok, refused: credentials refused, "
            "unavailable: network, rate limit or 5xx, error: credentials missing or unreadable).",
            ["result"],
            registry=registry,
        )
        self.items = Gauge(
            "entitlements_catalog_items",
            "Items the catalog in use knows (the provider's and the local file's)"
            + (", by project." if by_project else ", for the last project loaded."),
            ["project"] if by_project else [],
            registry=registry,
        )
        self.unknown_skus = Counter(
            "entitlements_catalog_unknown_skus_total",
            "Order lines whose sku the catalog did not know, by outcome (learned: known after a refresh; "
            "not_in_catalog: the event fails, to be retried and then dead-lettered).",
            ["outcome"],
            registry=registry,
        )
        self._by_project = by_project

    def set_items(self, project_id: int, count: int) -> None:
        """Records how many items the project's catalog knows."""
        (self.items.labels(str(project_id)) if self._by_project else self.items).set(count)
