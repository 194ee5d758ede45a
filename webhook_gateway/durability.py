"""What the gateway's 204 waits for: `GATEWAY_DURABILITY` resolved against the store, once
(`core.durability.DurabilityDecider`, which the service's writes share).

- `local`: the event is in the store's append-only file on disk (`WAITAOF 1 0`). Refused at start when the store
  keeps no append-only file, has no WAITAOF (before Redis 7.2), or does not report an fsync in time (its
  `appendfsync` is `no`): the setting is named in the error.
- `replicas`: `GATEWAY_DURABILITY_REPLICAS` replicas have it (`WAIT <n>`; on a cluster, sent to the event's
  shard). Not their fsync: see `core.durability` for why WAITAOF on replicas is not used.
- `none`: no wait, and a warning at start that a 204 can then be lost in a crash or a failover.
- `auto` (the default): `local` when the store keeps an append-only file and fsyncs it (the embedded store of
  `make run` does); otherwise `replicas` when it has a connected replica (on a cluster: when any primary has
  one); otherwise `none`, with the warning.

The decision is made once, at start, and logged (`durability_decided`: setting, mode, replicas, timeout, reason);
change the store's persistence or replicas, restart the gateway. When Redis does not answer at start, the gateway
starts anyway and decides before its first append (webhooks are answered 503 until it can).
"""

from __future__ import annotations

import structlog

from core import durability
from core.connections import RedisClient
from webhook_gateway.config import GatewaySettings
from webhook_gateway.errors import ConfigError

log = structlog.get_logger("webhook_gateway")

_NONE_WARNING = (
    "the gateway answers 204 as soon as Redis holds an event in memory: a 204 can be lost if the Redis host "
    "crashes (before its next fsync) or fails over to a replica the event had not reached, and the provider does "
    "not send it again. Set GATEWAY_DURABILITY to local (an append-only file) or replicas."
)


class DurabilityDecider(durability.DurabilityDecider):
    """Decides the gateway's durability once (`decide` at start, or `current` before the first append).

    Args:
        redis: the gateway's client.
        settings: the gateway's settings (`durability`, `durability_replicas`, `durability_timeout_ms`).
    """

    def __init__(self, redis: RedisClient, settings: GatewaySettings) -> None:
        asked = durability.DurabilityAsked(
            setting="GATEWAY_DURABILITY",
            mode=settings.durability,
            replicas=settings.durability_replicas,
            timeout_ms=settings.durability_timeout_ms,
            redis_timeout_s=settings.redis_timeout_s,
            kept="a 204",
            none_risk=_NONE_WARNING,
            short="webhooks are answered 503 (and retried by the provider)",
        )
        super().__init__(redis, asked, log=log, config_error=ConfigError)
