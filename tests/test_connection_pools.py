"""A burst beyond the Redis pool waits for a connection instead of failing, on a single server and on a cluster; a
call that cannot get one within the Redis timeout is a retryable StoreUnavailable / UNAVAILABLE. Every connection
packs its commands with hiredis."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import grpc
import pytest
import redis.asyncio as aioredis
import redis.asyncio.connection
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from core.connections import BlockingCluster, HiredisPacking, RedisClient, bounded, cluster_primaries, connect
from core.errors import StoreUnavailable
from entitlements import AsyncEntitlementsClient
from tests.helpers.services import ClientFactory, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.sweeps import quantity


async def connections_named(store: StoreUnderTest, name: str) -> list[int]:
    """How many connections named `name` each server (each primary of a cluster) has open."""
    looker = store.client()
    try:
        if store.cluster:
            nodes = await cluster_primaries(looker)  # type: ignore[arg-type]
            lists = [await looker.execute_command("CLIENT", "LIST", target_nodes=node) for node in nodes]
        else:
            lists = [await looker.execute_command("CLIENT", "LIST")]
    finally:
        await looker.aclose()
    return [
        sum(f"name={name} " in line for line in reply.decode().splitlines())
        for reply in (r if isinstance(r, bytes) else str(r).encode() for r in lists)
    ]


def named_client(store: StoreUnderTest, name: str, *, max_connections: int, timeout_s: float) -> RedisClient:
    """The service's kind of client, its connections named `name` (CLIENT LIST shows them)."""
    client = connect(store.url, cluster=store.cluster, timeout_s=timeout_s, max_connections=max_connections)
    if store.cluster:
        client.nodes_manager.connection_kwargs["client_name"] = name  # type: ignore[union-attr]
    else:
        client.connection_pool.connection_kwargs["client_name"] = name  # type: ignore[union-attr]
    return client


async def test_a_burst_of_calls_and_pipelines_waits_for_two_connections(redis_server: StoreUnderTest) -> None:
    """500 commands and 100 pipelines at once on a client of 2 connections all succeed, with at most 2 connections
    open to each server."""
    name = f"pool-{uuid.uuid4().hex[:8]}"
    client = named_client(redis_server, name, max_connections=2, timeout_s=5.0)
    try:
        await asyncio.gather(*(client.set(f"{{u:1:p{i % 7}}}k{i}", i) for i in range(500)))

        async def pipeline(i: int) -> list[object]:
            pipe = client.pipeline(transaction=False)
            pipe.get(f"{{u:1:p{i % 7}}}k{i}")
            pipe.incr(f"{{u:1:p{i % 7}}}n")
            return list(await pipe.execute())

        results = await asyncio.gather(*(pipeline(i) for i in range(100)))
        assert [int(r[0]) for r in results] == list(range(100))  # type: ignore[call-overload]
        assert max(await connections_named(redis_server, name)) <= 2
        counts = [await client.get(f"{{u:1:p{i}}}n") for i in range(7)]
        assert sum(int(count or 0) for count in counts) == 100
    finally:
        await client.aclose()


async def test_a_call_that_gets_no_connection_in_time_is_store_unavailable(redis_server: StoreUnderTest) -> None:
    """With its one connection taken, a call waits the Redis timeout, then fails retryably (redis-py's "No
    connection available", never MaxConnectionsError), and calls work again once the connection is free."""
    client = connect(redis_server.url, cluster=redis_server.cluster, timeout_s=0.3, max_connections=1)
    release, taken = asyncio.Event(), asyncio.Event()

    async def hold() -> None:
        if isinstance(client, BlockingCluster):
            async with client.permit():
                taken.set()
                await release.wait()
            return
        assert isinstance(client, aioredis.Redis)
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
        taken.set()
        try:
            await release.wait()
        finally:
            await client.connection_pool.release(connection)

    try:
        await client.set("{u:1:a}free", 1)  # opens the one connection (and discovers a cluster)
        holder = asyncio.create_task(hold())
        await taken.wait()
        with pytest.raises(redis_errors.ConnectionError, match="No connection available"):
            await client.get("{u:1:a}free")
        with pytest.raises(StoreUnavailable):
            await bounded(client.get("{u:1:a}free"), 2.0)
        release.set()
        await holder
        assert await client.get("{u:1:a}free") == b"1"
    finally:
        await client.aclose()


@pytest.mark.slow
async def test_a_service_with_a_small_pool_serves_a_burst_of_grants(
    service_factory: ServiceFactory, client_factory: ClientFactory, redis_server: StoreUnderTest
) -> None:
    """200 concurrent Grants through a service holding 2 Redis connections all succeed, once each."""
    service = await service_factory(**redis_server.settings, redis_max_connections=2, redis_timeout_s=5.0)
    client: AsyncEntitlementsClient = await client_factory(service)
    answers = await asyncio.gather(
        *(client.grant(f"player-{i % 20}", "gold", quantity=1, idempotency_key=f"burst-{i}") for i in range(200)),
        return_exceptions=True,
    )
    failures = [a for a in answers if isinstance(a, grpc.aio.AioRpcError | Exception)]
    assert failures == []
    assert [await quantity(client, f"player-{i}") for i in range(20)] == [10] * 20


async def test_commands_are_packed_by_hiredis_as_redis_py_packs_them(redis_server: StoreUnderTest) -> None:
    """Every connection of the service's client packs with hiredis, the same bytes redis-py's own packing makes, and
    refuses what redis-py refuses; commands, pipelines and scripts work through it."""
    client = connect(redis_server.url, cluster=redis_server.cluster, timeout_s=2.0, max_connections=4)
    try:
        key = "packed:{x}"
        await client.set(key, "ünï 1")
        pipe = client.pipeline(transaction=False)
        pipe.hset(f"{key}:h", mapping={"a": 1, "b": 2.5})
        pipe.hmget(f"{key}:h", ["a", "b", "c"])
        assert (await pipe.execute())[1] == [b"1", b"2.5", None]
        script = client.register_script("return redis.call('GET', KEYS[1])")
        assert await script(keys=[key]) == "ünï 1".encode()
        connections: list[Any]
        if isinstance(client, RedisCluster):
            connections = [c for node in client.get_nodes() for c in node._connections]
        else:
            connections = list(client.connection_pool._available_connections)
        assert connections
        assert all(isinstance(connection, HiredisPacking) for connection in connections)
        packed, plain = connections[0], redis.asyncio.connection.Connection()
        for command in [
            ("SET", "k", "v"),
            ("EVALSHA", "a" * 40, 2, "k1", "k2", 1.5, -3, 10**14 - 1, "ünï"),
            (b"HGET", b"k", memoryview(b"f")),
            ("CLIENT SETNAME", "name"),
            ("HMGET", "k", *(f"sku-{n}" for n in range(300))),
        ]:
            assert b"".join(packed.pack_command(*command)) == b"".join(plain.pack_command(*command)), command[0]
        for bad in (None, True):
            with pytest.raises(redis_errors.DataError):
                packed.pack_command("SET", "k", bad)
    finally:
        await client.aclose()
