"""Durable writes: waiting, after a write, until the store holds it on disk or on replicas.

Redis answers a write once it is in its memory (and, with the append-only file on, handed to the kernel). A
crash of the machine before the next fsync (up to a second with `appendfsync everysec`), or a failover to a
replica the write had not reached, loses a write that was answered. Where an answer promises that something is
kept (the gateway's 204 to a webhook, after which the provider never sends it again), the writer waits first:

- `local`: `WAITAOF 1 0 <timeout>`: the server's append-only file holds the write on disk (fsynced). Only as
  good as the server's WAITAOF: under `appendfsync everysec`, Valkey 8.1 answers it once the write is in the
  kernel, before the fsync (redis/redis#13793, fixed in Redis, measured on Valkey 8.1.8); `always` is exact;
- `replicas`: `WAIT <n> <timeout>`: n replicas hold it (in memory: the write survives the loss of the primary);
- `none`: no wait.

Not `WAITAOF 0 <n>` (n replicas fsynced it): a Valkey replica answers the primary's request for an acknowledgment
(`REPLCONF GETACK`) as soon as it reads it, before the fsync of the write just before it, and otherwise
acknowledges once a second (`replicationCron`); so at a low webhook rate every such wait lasts most of a second,
even with `appendfsync always` on the replica (870 ms measured, against 2 ms for `WAIT 1`), past a 1 s timeout
for a good share of webhooks.

WAIT and WAITAOF wait for the calling *connection's* last write, not the server's (Valkey records a client's
write offset after each command that propagated something, `c->woff`), so the wait must run on the connection
that wrote, right after the write: `on_one_connection` sends both in one pipeline, one round trip. Writers on
other connections wait at the same time, and one fsync, or one round of replica acknowledgments, releases them
all (group commit). A write that changed nothing moves no offset: a writer that may write nothing must write
something anyway before it waits (see `core/lua/append_event.lua`).

What the store can do is found at start (`read_facts`: `INFO`, which managed services keep when they rename
`CONFIG`), then confirmed by a probe: one small write (`DURABILITY_PROBE_KEY`) and the wait (`probe`), because
`INFO` does not tell everything: with `appendfsync no` the server never reports an fsync. `DurabilityDecider` turns
a process's setting (the gateway's `GATEWAY_DURABILITY`, the service's `ENTITLEMENTS_WRITE_DURABILITY`) into the
mode, once, at start:

- `local`: refused (`ConfigError`, naming the setting) when the store keeps no append-only file, has no WAITAOF
  (before Redis 7.2), or does not report an fsync in time (its `appendfsync` is `no`);
- `replicas`: n replicas (`WAIT <n>`; on a cluster, sent to the written key's shard);
- `none`: no wait, and a warning at start saying what can be lost;
- `auto`: `replicas` on a Redis Cluster whose every primary has a connected replica (a failover replaces a primary
  by its replica: only what the replica holds survives it); otherwise `local` when the store keeps an append-only
  file and fsyncs it; otherwise `replicas` when it has a connected replica (on a cluster: when any primary has
  one); otherwise `none`, with the warning.

The decision is logged (`durability_decided`: setting, mode, replicas, timeout, reason); change the store's
persistence or replicas, restart the process. When Redis does not answer at start, the process starts anyway and
decides before its first durable write (`current`).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from core.connections import RedisClient, bounded
from core.errors import ConfigError, StoreUnavailable
from core.keys import DURABILITY_PROBE_KEY

#: One command with its arguments, as redis-py's `execute_command` takes it.
Command = tuple[Any, ...]

#: The modes a writer can be in once decided (`auto` resolves to one of them).
MODES = ("local", "replicas", "none")
#: The modes a setting may ask for.
SETTING_MODES = ("auto", *MODES)

# A probe waits like a write (the configured timeout); under `appendfsync everysec` a wait that starts just after a
# background fsync can take a little longer than a second, so a probe that falls short is tried again.
_PROBE_ATTEMPTS = 3

# How long the probe's write is kept: long enough to be a write, short enough to leave nothing behind.
_PROBE_TTL_MS = 60_000


@dataclass(frozen=True)
class Durability:
    """What a write waits for before it counts as stored.

    Attributes:
        mode: `local`, `replicas` or `none`.
        replicas: how many replicas must hold the write (`replicas` mode).
        timeout_ms: how long one wait may last.
        reason: why this mode, for the start-up log line.
    """

    mode: str = "none"
    replicas: int = 0
    timeout_ms: int = 0
    reason: str = ""

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"durability mode must be one of {', '.join(MODES)}")
        if self.mode != "none" and self.timeout_ms < 1:
            raise ValueError("a durability wait needs a timeout of at least 1 ms (0 would wait forever)")
        if self.mode == "replicas" and self.replicas < 1:
            raise ValueError("replicas mode waits for at least one replica")

    @property
    def waits(self) -> bool:
        """Whether a write waits at all."""
        return self.mode != "none"

    @property
    def wait_command(self) -> Command:
        """The command sent after the write, on its connection."""
        if self.mode == "local":
            return ("WAITAOF", 1, 0, self.timeout_ms)
        if self.mode == "replicas":
            return ("WAIT", self.replicas, self.timeout_ms)
        raise ValueError("durability `none` sends no wait")

    def shortfall(self, reply: Any) -> str | None:
        """What the wait's reply says was not reached; None when the write is durable as asked.

        Raises:
            ValueError: the reply is not a WAIT/WAITAOF answer.
        """
        try:
            if self.mode == "local":
                fsynced = int(reply[0]) >= 1
                return None if fsynced else f"the append-only file was not fsynced within {self.timeout_ms} ms"
            count = int(reply)
        except (TypeError, IndexError, ValueError) as exc:
            raise ValueError(f"not a wait reply: {reply!r}") from exc
        if count >= self.replicas:
            return None
        return f"{count} of {self.replicas} replicas acknowledged the write within {self.timeout_ms} ms"

    def describe(self) -> dict[str, Any]:
        """The fields of the start-up log line."""
        fields: dict[str, Any] = {"mode": self.mode, "reason": self.reason}
        if self.waits:
            fields["timeout_ms"] = self.timeout_ms
        if self.mode == "replicas":
            fields["replicas"] = self.replicas
        return fields


NO_WAIT = Durability("none", reason="no durability asked")

#: The durability of a writer's writes: decided (`Durability`), or decided on first use by this callable (which
#: raises `StoreUnavailable` while it cannot decide: `DurabilityDecider.current`, when Redis was down at start).
DurabilitySource = Durability | Callable[[], Awaitable[Durability]]


@dataclass(frozen=True)
class StoreFacts:
    """What `INFO` says of the store (for a cluster, of its primaries: the weakest of them).

    Attributes:
        version: `redis_version` as a tuple (Valkey reports the Redis version it is compatible with).
        aof: the append-only file is on (`aof_enabled`), on every primary.
        replicas: connected replicas (`connected_slaves`), the fewest of any primary.
        replicas_somewhere: at least one primary has a connected replica.
        cluster: the store is a Redis Cluster (`cluster_enabled`).
    """

    version: tuple[int, ...]
    aof: bool
    replicas: int
    replicas_somewhere: bool
    cluster: bool

    @property
    def has_waitaof(self) -> bool:
        """WAITAOF exists from Redis 7.2 (every Valkey)."""
        return self.version >= (7, 2)

    @property
    def version_text(self) -> str:
        return ".".join(map(str, self.version))


def _version(text: Any) -> tuple[int, ...]:
    parts = []
    for part in str(text).split("."):
        digits = "".join(ch for ch in part if ch.isdigit())
        parts.append(int(digits) if digits else 0)
    return tuple(parts)


async def read_facts(redis: RedisClient) -> StoreFacts:
    """Reads `INFO` (its default sections: server, persistence, replication, cluster) from the store, or from every
    primary of a cluster.

    Raises:
        redis.exceptions.RedisError, OSError: Redis failed (the caller bounds and translates).
    """
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        reply = await redis.info(target_nodes=RedisCluster.PRIMARIES)
        # One primary: its INFO; several: INFO by node name.
        infos = list(reply.values()) if all(isinstance(value, dict) for value in reply.values()) else [reply]
    else:
        infos = [await redis.info()]
    counts = [int(info.get("connected_slaves", 0)) for info in infos]
    return StoreFacts(
        version=min(_version(info.get("redis_version", "0")) for info in infos),
        aof=all(int(info.get("aof_enabled", 0)) == 1 for info in infos),
        replicas=min(counts),
        replicas_somewhere=max(counts) > 0,
        cluster=any(int(info.get("cluster_enabled", 0)) == 1 for info in infos),
    )


async def on_one_connection(redis: RedisClient, key: str, commands: Sequence[Command]) -> list[Any]:
    """Sends `commands`, in order, on one connection to the server that holds `key` (on a cluster, its slot's
    primary), in one round trip.

    redis-py routes a pipeline's keyless commands (WAIT, WAITAOF) on a cluster to every primary (and a pipeline
    refuses that), so on a cluster each command names the key's node (`target_nodes`): the commands of one node
    go on one connection, in order. Redirections are not followed: a MOVED reply is returned like any error,
    and following it would send the write to another node than the wait.

    Returns:
        The replies in order; an error reply is its exception object, not raised.

    Raises:
        redis.exceptions.RedisError, OSError: the connection failed (the caller bounds and translates).
    """
    if isinstance(redis, RedisCluster):
        await redis.initialize()
        node = redis.get_node_from_key(key)
        cluster_pipe = redis.pipeline(transaction=False)
        for command in commands:
            cluster_pipe.execute_command(*command, target_nodes=node)
        return list(await cluster_pipe.execute(raise_on_error=False, allow_redirections=False))
    pipe = redis.pipeline(transaction=False)
    for command in commands:
        pipe.execute_command(*command)
    return list(await pipe.execute(raise_on_error=False))


async def probe(redis: RedisClient, waits: Sequence[Command]) -> list[Any]:
    """Writes `DURABILITY_PROBE_KEY`, sends `waits` right after it on the same connection, then deletes the key (it
    expires within a minute anyway).

    Returns:
        The replies of `waits`, in order (an error reply as its exception object).

    Raises:
        redis.exceptions.RedisError, OSError: the connection failed, or the probe's write was refused.
    """
    key = DURABILITY_PROBE_KEY
    write, *replies, _ = await on_one_connection(
        redis, key, [("SET", key, "1", "PX", _PROBE_TTL_MS), *waits, ("DEL", key)]
    )
    if isinstance(write, Exception):
        raise write
    return replies


@dataclass(frozen=True)
class DurabilityAsked:
    """A process's durability setting, and how its log lines and errors speak of it.

    Attributes:
        setting: the setting's name (`GATEWAY_DURABILITY`); `<setting>_REPLICAS` and `<setting>_TIMEOUT_MS` go
            with it.
        mode: `auto`, `local`, `replicas` or `none`.
        replicas: how many replicas `replicas` waits for.
        timeout_ms: how long one wait may last.
        redis_timeout_s: the process's Redis timeout (bounds the decision with the probes).
        kept: what the wait keeps, as a subject ("a 204"), for the warnings.
        none_risk: the warning of `none`: what can be lost, and what to set instead.
        short: what callers see while a wait falls short ("webhooks are answered 503 ..."), for the warning that
            the store has fewer replicas than asked.
    """

    setting: str
    mode: str
    replicas: int
    timeout_ms: int
    redis_timeout_s: float
    kept: str
    none_risk: str
    short: str


class DurabilityDecider:
    """Decides a process's durability once (`decide` at start, or `current` before the first durable write).

    Args:
        redis: the process's client.
        asked: its setting.
        log: its logger (the decision and the warnings are logged there).
        config_error: the process's own ConfigError, raised when the store cannot give what the setting asks.
    """

    def __init__(
        self,
        redis: RedisClient,
        asked: DurabilityAsked,
        *,
        log: Any,
        config_error: type[ConfigError] = ConfigError,
    ) -> None:
        self._redis = redis
        self._asked = asked
        self._log = log
        self._config_error = config_error
        self._lock = asyncio.Lock()
        self.decided: Durability | None = None
        probe_s = asked.redis_timeout_s + asked.timeout_ms / 1000
        # INFO, then the probes with their retries.
        self._budget_s = asked.redis_timeout_s + 2 * _PROBE_ATTEMPTS * probe_s

    async def decide(self) -> Durability:
        """Decides, and logs the decision, unless decided before.

        Raises:
            ConfigError: (the process's) the store cannot give the durability the setting asks for (named in the
                message).
            StoreUnavailable: Redis did not answer; call again later.
        """
        if self.decided is not None:
            return self.decided
        async with self._lock:
            if self.decided is None:
                durability = await bounded(self._resolve(), self._budget_s)
                self._log_decision(durability)
                if durability.mode == "local":
                    await self._warn_everysec()
                self.decided = durability
        return self.decided

    async def current(self) -> Durability:
        """The decision, for a writer about to write (a `DurabilitySource`).

        Raises:
            StoreUnavailable: Redis did not answer, or the store cannot give the durability asked for (logged as
                an error): the write must not be reported as kept.
        """
        if self.decided is not None:
            return self.decided
        try:
            return await self.decide()
        except ConfigError as exc:
            self._log.error("durability_refused", setting=self._asked.setting, error=str(exc))
            raise StoreUnavailable(f"the durability asked for cannot be reached: {exc}") from exc

    async def _resolve(self) -> Durability:
        asked = self._asked
        setting = asked.setting
        if asked.mode == "none":
            return Durability("none", reason=f"{setting}=none")
        try:
            facts = await read_facts(self._redis)
            if asked.mode == "local":
                problem = await self._local_problem(facts)
                if problem is not None:
                    raise self._config_error(
                        f"{setting}=local cannot be reached: {problem}. Turn the store's append-only file on "
                        f"(appendonly yes, appendfsync everysec or always), or set {setting} to replicas or none"
                    )
                return self._local(f"{setting}=local")
            if asked.mode == "replicas":
                return self._replicas(facts, f"{setting}=replicas")
            if facts.cluster and facts.replicas >= 1:
                # A Cluster replaces a failed primary by its replica: only a write the replica holds survives it.
                return self._replicas(facts, "auto: a Redis Cluster whose every primary has a connected replica")
            problem = await self._local_problem(facts)
            if problem is None:
                return self._local("auto: the store keeps an append-only file and fsyncs it")
            if facts.replicas >= 1 or (facts.cluster and facts.replicas_somewhere):
                return self._replicas(facts, f"auto: {problem}; the store has a connected replica")
            return Durability("none", reason=f"auto: {problem}, and the store has no connected replica")
        except redis_errors.ResponseError as exc:
            # INFO or a probe refused (an ACL without it, a renamed command): not something a retry changes.
            raise self._config_error(
                f"{setting}={asked.mode}: the store refused a command needed to decide or to reach it ({exc}); "
                f"allow INFO, SET, WAIT and WAITAOF, or set {setting}=none"
            ) from exc

    async def _warn_everysec(self) -> None:
        """Warns when the store fsyncs once a second: Valkey (8.1) answers WAITAOF before that fsync, so `local`
        then survives a crash of the Redis process but not of its host. Best effort: CONFIG may be refused."""
        try:
            reply = await bounded(self._redis.config_get("appendfsync"), self._asked.redis_timeout_s)
        except (redis_errors.RedisError, StoreUnavailable):
            return
        values = {str(v.decode() if isinstance(v, bytes) else v) for v in dict(reply).values()}
        if "everysec" in values:
            self._log.warning(
                "durability_weaker_than_asked",
                setting=self._asked.setting,
                mode="local",
                appendfsync="everysec",
                message=f"the store answers WAITAOF before its once-a-second fsync: {self._asked.kept} survives a "
                "crash of Redis, not of its host; set appendfsync always (ENTITLEMENTS_REDIS_APPENDFSYNC=always for "
                "the embedded store, its default)",
            )

    def _local(self, reason: str) -> Durability:
        return Durability("local", timeout_ms=self._asked.timeout_ms, reason=reason)

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
        asked = self._asked
        if facts.replicas < asked.replicas:
            self._log.warning(
                "durability_replicas_missing",
                setting=asked.setting,
                replicas=asked.replicas,
                connected=facts.replicas,
                message=f"{asked.setting} waits for {asked.replicas} replica(s) and the store has {facts.replicas} "
                f"connected: {asked.short} until enough are",
            )
        return Durability("replicas", asked.replicas, asked.timeout_ms, reason=reason)

    def _log_decision(self, durability: Durability) -> None:
        if durability.waits:
            self._log.info("durability_decided", setting=self._asked.setting, **durability.describe())
        else:
            self._log.warning(
                "durability_decided",
                setting=self._asked.setting,
                **durability.describe(),
                message=self._asked.none_risk,
            )
