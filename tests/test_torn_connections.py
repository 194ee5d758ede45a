"""A connection closed while a command is being sent on it (what the cluster client does to a node's connections
when a primary dies under load) is Redis being unavailable, not a bug.

redis-py 8.1 then raises `AttributeError: 'NoneType' object has no attribute 'writelines'` from inside its
connection code; `core.connections` raises it as the `ConnectionError` it is, so the RPC is UNAVAILABLE (it was
INTERNAL, seen when a primary was killed in tests/test_cluster_failover.py). Here the close is made to land in
that window for real: the command's write is scheduled as a task of its own (redis-py's `wait_for`), and the
connection is closed between the turns of the event loop that start the command and run that write.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster

from core.connections import bounded, connect
from core.errors import StoreUnavailable
from server.embedded import EmbeddedRedis
from tests.helpers.stores import SELECTED_KINDS
from tools.cluster import LocalCluster

KEY = "{torn}key"


async def test_a_connection_closed_under_a_command_is_store_unavailable(single_redis: EmbeddedRedis) -> None:
    """The connection closed between the command's start and its write: `bounded` says StoreUnavailable, naming
    the closed connection, where redis-py raised AttributeError."""
    client = aioredis.Redis.from_url(single_redis.url, socket_timeout=2.0)
    try:
        connection = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py leaves it untyped
        await connection.connect()
        sending = asyncio.create_task(bounded(connection.send_packed_command(connection.pack_command("PING")), 2.0))
        await asyncio.sleep(0)  # the command starts and schedules its write
        await connection.disconnect(nowait=True)
        with pytest.raises(StoreUnavailable, match="ConnectionError") as raised:
            await sending
        assert isinstance(raised.value.__cause__, redis_errors.ConnectionError)
        assert isinstance(raised.value.__cause__.__cause__, AttributeError)
        await client.connection_pool.release(connection)
        assert await client.ping()  # the connection reconnects on its next use
    finally:
        await client.aclose()


@pytest.mark.skipif("cluster" not in SELECTED_KINDS, reason="ENTITLEMENTS_TEST_STORES leaves the cluster out")
async def test_the_cluster_client_raises_a_torn_connection_as_a_connection_error(shared_cluster: LocalCluster) -> None:
    """A node's connections closed at each turn of the event loop after a GET started: every GET either answers
    or raises ConnectionError (some do, from the torn connection), never AttributeError; the client goes on."""
    shared_cluster.flush()
    client = connect(shared_cluster.url, cluster=True, timeout_s=2.0, max_connections=8)
    assert isinstance(client, RedisCluster)
    try:
        await client.set(KEY, "1")
        node = client.get_node_from_key(KEY)
        assert node is not None
        torn = 0
        for turns in range(12):
            call: asyncio.Task[Any] = asyncio.ensure_future(client.get(KEY))
            for _ in range(turns):
                await asyncio.sleep(0)
            for connection in list(node._connections):
                await connection.disconnect(nowait=True)
            try:
                assert await call == b"1"
            except redis_errors.ConnectionError as exc:
                torn += isinstance(exc.__cause__, AttributeError)
        assert torn >= 1  # the close did land inside a write (the case this is about)
        assert await client.get(KEY) == b"1"
    finally:
        await client.aclose()
