"""What the service's writes wait for before they count: `ENTITLEMENTS_WRITE_DURABILITY` resolved against the store,
once, as the gateway resolves its own (`core.durability.DurabilityDecider`).

A write counts when the consumer acknowledges the event it applied (XACK) and when Grant or Revoke answer. Redis
replicates asynchronously and fsyncs its append-only file on its own schedule, so without a wait a failover (or a
crash under `appendfsync everysec`) right after can lose a grant that was acknowledged or answered OK:

- `local`: the write is in the player's node's append-only file on disk (`WAITAOF 1 0`);
- `replicas`: `ENTITLEMENTS_WRITE_DURABILITY_REPLICAS` replicas of that node have it (`WAIT <n>`);
- `none`: no wait (a warning at start says what can be lost);
- `auto` (the default): `local` when the store keeps an append-only file and fsyncs it (the embedded store and
  `tools.cluster.LocalCluster` do), else `replicas` when it has a connected replica, else `none`.

The wait runs on the connection of the write, right after it, in one round trip (`server.store`); a write not
durable in time raises `NotDurable`: the event stays pending (delivered again, its apply replays and waits again),
Grant and Revoke answer UNAVAILABLE (the retry with the same idempotency key replays and waits again).
"""

from __future__ import annotations

import structlog

from core import durability
from core.connections import RedisClient
from core.errors import StoreUnavailable
from server.config import Settings
from server.errors import ConfigError
from server.metrics import ServiceMetrics
from server.store import WaitObserver

log = structlog.get_logger("server")

_NONE_WARNING = (
    "the service acknowledges events and answers Grant and Revoke as soon as Redis holds the write in memory: a "
    "grant can be lost if the Redis host crashes (before its next fsync) or fails over to a replica the write had "
    "not reached. Set ENTITLEMENTS_WRITE_DURABILITY to local (an append-only file) or replicas."
)


async def write_durability(redis: RedisClient, settings: Settings) -> durability.DurabilityDecider:
    """The decider of the service's write durability, decided now; with Redis down, left to the first write (which
    is UNAVAILABLE until Redis answers).

    Raises:
        ConfigError: the store cannot give the durability the setting asks for: the service does not start.
    """
    asked = durability.DurabilityAsked(
        setting="ENTITLEMENTS_WRITE_DURABILITY",
        mode=settings.write_durability,
        replicas=settings.write_durability_replicas,
        timeout_ms=settings.write_wait_ms,
        redis_timeout_s=settings.redis_timeout_s,
        kept="an acknowledged event or a Grant's answer",
        none_risk=_NONE_WARNING,
        short="Grant and Revoke answer UNAVAILABLE and events stay pending",
    )
    decider = durability.DurabilityDecider(redis, asked, log=log, config_error=ConfigError)
    try:
        await decider.decide()
    except StoreUnavailable as exc:
        log.warning("durability_undecided", error=str(exc), note="decided before the first write")
    return decider


def wait_observer(metrics: ServiceMetrics) -> WaitObserver:
    """Counts each write's durability wait in the metrics."""

    def observe(mode: str, waited_s: float, durable: bool) -> None:
        metrics.write_durability_wait.labels(mode).observe(waited_s)
        if not durable:
            metrics.writes_not_durable.labels(mode).inc()

    return observe
