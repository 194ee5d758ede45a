"""The metrics of the change feed (docs/FEED.md): its write side (`FeedMetrics`: appends, the relay, the repair) and
the WatchEntitlements streams that read it (`WatchMetrics`, docs/WATCH.md). Re-exported by `server.metrics`."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS

# From a change's commit to its append: milliseconds for the relay, the repair delay (5 s by default) and more for
# the repair's appends.
_LAG_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0)

#: Why a WatchEntitlements stream ended (`entitlements_watch_streams_ended_total{reason}`): the caller closed or
#: cancelled it; it fell ENTITLEMENTS_WATCH_MAX_QUEUED changes behind (a slow reader); its cursor could not resume
#: (OUT_OF_RANGE); a message was invalid (a limit included); Redis was lost; the replica shut down; anything else.
WATCH_END_REASONS = (
    "caller",
    "fell_behind",
    "out_of_range",
    "invalid_argument",
    "store_unavailable",
    "stopping",
    "error",
)


class FeedMetrics:
    """The change feed's write side (`server/feed/`): appends, the relay, its repair."""

    def __init__(self, registry: CollectorRegistry) -> None:
        def counter(name: str, text: str) -> Counter:
            return Counter(f"entitlements_feed_{name}_total", text, registry=registry)

        self.appended = counter("appended", "Changes the write scripts appended to the change feed themselves.")
        self.relayed = counter("relayed", "Changes the relay (or the repair) appended to the change feed.")
        self.repaired = counter("repaired", "Changes the repair appended: their relay failed or never ran.")
        self.failures = counter("relay_failures", "Relay batches that failed (Redis unavailable): left to the repair.")
        self.dropped = counter("relay_dropped", "Writes not queued for the relay (its queue full): left to the repair.")
        self.gaps = counter("gaps", "Gaps the relay filled from a player's ledger (changes relayed out of order).")
        self.lag = Histogram(
            "entitlements_feed_lag_seconds",
            "From a change's commit to its append by the relay.",
            buckets=_LAG_BUCKETS,
            registry=registry,
        )
        self.call_seconds = Histogram(
            "entitlements_feed_relay_call_seconds", "One relay script call.", buckets=LATENCY_BUCKETS, registry=registry
        )
        self.pending = Gauge(
            "entitlements_feed_pending", "Stale intents seen by this replica's last repair pass.", registry=registry
        )
        self.oldest_intent = Gauge(
            "entitlements_feed_oldest_intent_age_seconds",
            "Age of the oldest stale intent (a write whose relay to the change feed is unconfirmed after "
            "ENTITLEMENTS_FEED_REPAIR_S) seen by this replica's last repair pass, 0 when none. A repair that works "
            "keeps it under twice the repair delay; above that, the intent outlived repairs.",
            registry=registry,
        )


class WatchMetrics:
    """The WatchEntitlements streams of the replica (`server/watch/`)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.streams = Gauge(
            "entitlements_watch_streams", "WatchEntitlements streams open on this replica.", registry=registry
        )
        self.refused = Counter(
            "entitlements_watch_streams_refused_total",
            "WatchEntitlements streams refused because the replica held ENTITLEMENTS_WATCH_MAX_STREAMS.",
            registry=registry,
        )
        self.ended = Counter(
            "entitlements_watch_streams_ended_total",
            "WatchEntitlements streams ended, by reason: caller (closed or cancelled by its caller), fell_behind "
            "(ENTITLEMENTS_WATCH_MAX_QUEUED changes not read), out_of_range (a cursor that cannot resume), "
            "invalid_argument, store_unavailable (Redis lost), stopping (the replica shut down), error. Refusals at "
            "ENTITLEMENTS_WATCH_MAX_STREAMS are counted apart.",
            ["reason"],
            registry=registry,
        )
        for reason in WATCH_END_REASONS:
            self.ended.labels(reason)  # every reason exported from the start, at 0
        self.changes = Counter(
            "entitlements_watch_changes_sent_total", "Entitlement changes sent on watch streams.", registry=registry
        )
        self.snapshots = Counter(
            "entitlements_watch_snapshots_total", "Player snapshots sent on watch streams.", registry=registry
        )
        self.catch_up_reads = Counter(
            "entitlements_watch_catch_up_reads_total",
            "Reads of the change feed by streams resuming from a cursor behind the replica's tail.",
            registry=registry,
        )
        self.feed_reads = Counter(
            "entitlements_watch_feed_reads_total",
            "Blocking reads (XREAD) of the change feed by the replica's shared tails, one loop per project watched.",
            registry=registry,
        )
