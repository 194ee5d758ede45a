"""What the gateway's 204 waits for: `GATEWAY_DURABILITY` resolved against the store, once.

- `local`: the event is in the store's append-only file on disk (`WAITAOF 1 0`). Refused at start when the store
  keeps no append-only file, has no WAITAOF (before Redis 7.2), or does not report an fsync in time (its
  `appendfsync` is `no`): the setting is named in the error.
- `replicas`: `GATEWAY_DURABILITY_REPLICAS` replicas have it (`WAIT <n>`; on a cluster, sent to the event's
  shard). Not their fsync: see `core.durability` for why WAITAOF on replicas is not used.
- `none`: no wait, and a warning at start that a 204 can then be lost in a crash or a failover.
- `auto` (the default): `local` when the store keeps an append-only file and fsyncs it (the embedded store of
  `make run` does); otherwise `replicas` when it has a connected replica (on a cluster: when any primary has
  one); otherwise `none`, with the warning.

The decision is made once, at start, and logged (`durability_decided`: mode, replicas, timeout, reason);
change the store's persistence or replicas, restart the gateway. When Redis does not answer at start, the gateway
starts anyway and decides before its first append (webhooks are answered 503 until it can).
"""

from __future__ import annotations

import asyncio

import redis.exceptions as redis_errors
import structlog

from core.connections import RedisClient, bounded
from core.durability import Durability, StoreFacts, probe, read_facts
from core.errors import StoreUnavailable
from webhook_gateway.config import GatewaySettings
from webhook_gateway.errors import ConfigError

log = structlog.get_logger("webhook_gateway")

# A probe waits like a webhook (the configured timeout); under `appendfsync everysec` a wait that starts just after
# a background fsync can take a little longer than a second, so a probe that falls short is tried again.
_PROBE_ATTEMPTS = 3

_NONE_WARNING = (
    "the gateway answers 204 as soon as Redis holds an event in memory: a 204 can be lost if the Redis host "
    "crashes (before its next fsync) or fails over to a replica the event had not reached, and the provider does "
    "not send it again. Set GATEWAY_DURABILITY to local (an append-only file) or replicas."
)


class DurabilityDecider:
    """Decides the gateway's durability once (`decide` at start, or `current` before the first append).

    Args:
        redis: the gateway's client.
        settings: the gateway's settings (`durability`, `durability_replicas`, `durability_timeout_ms`).
    """

    def __init__(self, redis: RedisClient, settings: GatewaySettings) -> None:
        self._redis = redis
        self._settings = settings
        self._lock = asyncio.Lock()
        self.decided: Durability | None = None
        probe_s = settings.redis_timeout_s + settings.durability_timeout_ms / 1000
        # INFO, then the probes with their retries.
        self._budget_s = settings.redis_timeout_s + 2 * _PROBE_ATTEMPTS * probe_s

    async def decide(self) -> Durability:
        """Decides, and logs the decision, unless decided before.

        Raises:
            ConfigError: the store cannot give the durability the setting asks for (named in the message).
            StoreUnavailable: Redis did not answer; call again later.
        """
        if self.decided is not None:
            return self.decided
        async with self._lock:
            if self.decided is None:
                durability = await bounded(self._resolve(), self._budget_s)
                _log_decision(durability)
                if durability.mode == "local":
                    await self._warn_everysec()
                self.decided = durability
        return self.decided

    async def current(self) -> Durability:
        """The decision, for the event log before an append (`core.eventlog.DurabilitySource`).

        Raises:
            StoreUnavailable: Redis did not answer, or the store cannot give the durability asked for (logged as
                an error): the event must not be acknowledged.
        """
        if self.decided is not None:
            return self.decided
        try:
            return await self.decide()
        except ConfigError as exc:
            log.error("durability_refused", error=str(exc))
            raise StoreUnavailable(f"the durability asked for cannot be reached: {exc}") from exc

    async def _resolve(self) -> Durability:
        settings = self._settings
        if settings.durability == "none":
            return Durability("none", reason="GATEWAY_DURABILITY=none")
        try:
            facts = await read_facts(self._redis)
            if settings.durability == "local":
                problem = await self._local_problem(facts)
                if problem is not None:
                    raise ConfigError(
                        f"GATEWAY_DURABILITY=local cannot be reached: {problem}. Turn the store's append-only file "
                        "on (appendonly yes, appendfsync everysec or always), or set GATEWAY_DURABILITY to replicas "
                        "or none"
                    )
                return self._local("GATEWAY_DURABILITY=local")
            if settings.durability == "replicas":
                return self._replicas(facts, "GATEWAY_DURABILITY=replicas")
            problem = await self._local_problem(facts)
            if problem is None:
                return self._local("auto: the store keeps an append-only file and fsyncs it")
            if facts.replicas >= 1 or (facts.cluster and facts.replicas_somewhere):
                return self._replicas(facts, f"auto: {problem}; the store has a connected replica")
            return Durability("none", reason=f"auto: {problem}, and the store has no connected replica")
        except redis_errors.ResponseError as exc:
            # INFO or a probe refused (an ACL without it, a renamed command): not something a retry changes.
            raise ConfigError(
                f"GATEWAY_DURABILITY={settings.durability}: the store refused a command needed to decide or to reach "
                f"it ({exc}); allow INFO, SET, WAIT and WAITAOF, or set GATEWAY_DURABILITY=none"
            ) from exc

    async def _warn_everysec(self) -> None:
        """Warns when the store fsyncs once a second: Valkey (8.1) answers WAITAOF before that fsync, so `local`
        then survives a crash of the Redis process but not of its host. Best effort: CONFIG may be refused."""
        try:
            reply = await bounded(self._redis.config_get("appendfsync"), self._settings.redis_timeout_s)
        except (redis_errors.RedisError, StoreUnavailable):
            return
        values = {str(v.decode() if isinstance(v, bytes) else v) for v in dict(reply).values()}
        if "everysec" in values:
            log.warning(
                "durability_weaker_than_asked",
                mode="local",
                appendfsync="everysec",
                message="the store answers WAITAOF before its once-a-second fsync: a 204 survives a crash of Redis, "
                "not of its host; set appendfsync always (ENTITLEMENTS_REDIS_APPENDFSYNC=always for the embedded "
                "store, its default)",
            )

    def _local(self, reason: str) -> Durability:
        return Durability("local", timeout_ms=self._settings.durability_timeout_ms, reason=reason)

    async def _local_problem(self, facts: StoreFacts) -> str | None:
        """Why `local` cannot be reached on this store, or None when a probe write was fsynced in time."""
        if not facts.aof:
            return "the store keeps no append-only file (aof_enabled:0)"
        if not facts.has_waitaof:
            return f"the store has no WAITAOF (redis_version {facts.version_text}; 7.2 or later has it)"
        local = self._local("probe")
        for _ in range(_PROBE_ATTEMPTS):
            (reply,) = await probe(self._redis, [local.wait_command])
            if isinstance(reply, Exception):
                return f"WAITAOF failed ({reply})"
            if local.shortfall(reply) is None:
                return None
        return (
            f"the store did not report its append-only file fsynced within {local.timeout_ms} ms, "
            f"{_PROBE_ATTEMPTS} times (appendfsync no?)"
        )

    def _replicas(self, facts: StoreFacts, reason: str) -> Durability:
        settings = self._settings
        wanted = settings.durability_replicas
        timeout_ms = settings.durability_timeout_ms
        if facts.replicas < wanted:
            log.warning(
                "durability_replicas_missing",
                replicas=wanted,
                connected=facts.replicas,
                message=f"GATEWAY_DURABILITY waits for {wanted} replica(s) and the store has {facts.replicas} "
                "connected: webhooks are answered 503 (and retried by the provider) until enough are",
            )
        return Durability("replicas", wanted, timeout_ms, reason=reason)


def _log_decision(durability: Durability) -> None:
    if durability.waits:
        log.info("durability_decided", **durability.describe())
    else:
        log.warning("durability_decided", **durability.describe(), message=_NONE_WARNING)
