"""The Redis a test runs on: the single embedded server, or a Redis Cluster of 3 primaries with 1 replica each
(`tools.cluster.LocalCluster`) shared by the whole run and emptied before each test.

Every test that touches Redis through the `redis_server` fixture (tests/conftest.py) runs once on each; a test
that needs the single server's process itself (stopping, killing or restarting it) asks for `single_redis`, and a
test that kills a node of a cluster starts its own with `private_cluster`.

The settings factories (`base_settings`, `gateway_settings`) set `redis_cluster` from the URL when a test does not: a
URL of a cluster started here is known by `is_cluster_url`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from core.connections import RedisClient, cluster_primaries, connect
from server.embedded import EmbeddedRedis
from tools.cluster import LocalCluster

#: The parameter ids of `redis_server`: `pytest -k cluster` runs the cluster half only.
STORE_KINDS = ("single", "cluster")

#: `ENTITLEMENTS_TEST_STORES=single` (or `cluster`) runs one half only, for a quick local run.
SELECTED_KINDS = tuple(os.environ.get("ENTITLEMENTS_TEST_STORES", ",".join(STORE_KINDS)).split(","))

_cluster_urls: set[str] = set()


@dataclass
class StoreUnderTest:
    """The Redis of one test: its URL, whether it is a cluster, and the server or cluster behind it."""

    url: str
    cluster: bool
    embedded: EmbeddedRedis | None = None
    local_cluster: LocalCluster | None = None

    @property
    def settings(self) -> dict[str, Any]:
        """The service's or gateway's settings that point it at this store."""
        return {"redis_url": self.url, "redis_cluster": self.cluster}

    def client(self) -> RedisClient:
        """A plain redis-py client (a cluster client on a cluster); the caller closes it."""
        return client_for(self.url, cluster=self.cluster)


def register_cluster(cluster: LocalCluster) -> None:
    """Marks every node address of `cluster` as a cluster URL for `is_cluster_url`."""
    _cluster_urls.update(f"redis://{address}/0" for address in cluster.seeds)


def forget_cluster(cluster: LocalCluster) -> None:
    """Undoes `register_cluster` once the cluster is stopped: a server started later may get one of its ports."""
    _cluster_urls.difference_update(f"redis://{address}/0" for address in cluster.seeds)


def is_cluster_url(url: str | None) -> bool:
    """Whether `url` names a node of a cluster a test fixture started."""
    return url is not None and url in _cluster_urls


def client_for(url: str, *, cluster: bool) -> RedisClient:
    """A plain client for looking behind the service's back (on a cluster, the service's own kind of client:
    `core.connections.BlockingCluster`, which waits for the cluster's discovery before its first calls)."""
    if cluster:
        return connect(url, cluster=True, timeout_s=5.0, max_connections=64)
    return aioredis.Redis.from_url(url, socket_timeout=5.0)


async def key_count(redis: RedisClient) -> int:
    """DBSIZE of the store: of every primary, summed, on a cluster (redis-py sends a bare DBSIZE to one node)."""
    if isinstance(redis, RedisCluster):
        nodes = await cluster_primaries(redis)
        return sum([int(await redis.execute_command("DBSIZE", target_nodes=node)) for node in nodes])
    return int(await redis.dbsize())


async def all_keys(redis: RedisClient, pattern: str = "*") -> list[bytes]:
    """Every key matching `pattern` (on a cluster: on every primary), sorted."""
    if isinstance(redis, RedisCluster):
        found: list[bytes] = []
        for node in await cluster_primaries(redis):
            found.extend(await redis.execute_command("KEYS", pattern, target_nodes=node))
        return sorted(found)
    return sorted(cast("list[bytes]", await redis.keys(pattern)))


async def node_infos(redis: RedisClient, section: str) -> list[dict[str, Any]]:
    """INFO `section` of the store: one dict, or one per primary of a cluster."""
    if isinstance(redis, RedisCluster):
        nodes = await cluster_primaries(redis)
        return [dict(await redis.execute_command("INFO", section, target_nodes=node)) for node in nodes]
    return [dict(await redis.info(section))]


async def on_every_primary(redis: RedisClient, *command: Any) -> list[Any]:
    """Runs a keyless command (CONFIG SET, CLIENT KILL, ...) on the store: on every primary of a cluster (redis-py
    sends a keyless command to one node of its choosing), once on a single server. Returns each node's reply."""
    if isinstance(redis, RedisCluster):
        nodes = await cluster_primaries(redis)
        return [await redis.execute_command(*command, target_nodes=node) for node in nodes]
    return [await redis.execute_command(*command)]  # type: ignore[no-untyped-call]  # redis-py leaves it untyped


class ChannelReader:
    """One channel subscribed as the service publishes on it: PUBLISH/SUBSCRIBE on a single server, sharded
    (SPUBLISH/SSUBSCRIBE, served by the node owning the channel's slot) on a cluster."""

    def __init__(self, pubsub: Any, *, sharded: bool) -> None:
        self._pubsub = pubsub
        self._sharded = sharded

    async def next(self, timeout_s: float) -> dict[str, Any] | None:
        """The next message (subscription confirmations skipped), or None if none came within `timeout_s`."""
        if self._sharded:
            message = await self._pubsub.get_sharded_message(ignore_subscribe_messages=True, timeout=timeout_s)
        else:
            message = await self._pubsub.get_message(ignore_subscribe_messages=True, timeout=timeout_s)
        return message if isinstance(message, dict) else None


@contextlib.asynccontextmanager
async def subscribed(redis: RedisClient, channel: str, timeout_s: float = 5.0) -> AsyncIterator[ChannelReader]:
    """Subscribes to `channel` (sharded on a cluster) and yields once the subscription is confirmed."""
    sharded = isinstance(redis, RedisCluster)
    if isinstance(redis, RedisCluster):
        await cluster_primaries(redis)  # redis-py's cluster pub/sub finds a channel's node in the discovered slots
    pubsub: Any = redis.pubsub()
    try:
        if sharded:
            await pubsub.ssubscribe(channel)
            confirmation = await pubsub.get_sharded_message(timeout=timeout_s)
        else:
            await pubsub.subscribe(channel)
            confirmation = await pubsub.get_message(timeout=timeout_s)
        kind = (confirmation or {}).get("type")
        assert kind in ("ssubscribe", b"ssubscribe", "subscribe", b"subscribe"), f"not subscribed: {confirmation}"
        yield ChannelReader(pubsub, sharded=sharded)
    finally:
        await pubsub.aclose()
