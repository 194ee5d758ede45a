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
`INFO` does not tell everything: with `appendfsync no` the server never reports an fsync. The gateway's setting
decides the mode (`webhook_gateway.durability`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from core.connections import RedisClient
from core.keys import DURABILITY_PROBE_KEY

#: One command with its arguments, as redis-py's `execute_command` takes it.
Command = tuple[Any, ...]

#: The modes a writer can be in once decided (the gateway's `auto` resolves to one of them).
MODES = ("local", "replicas", "none")

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
