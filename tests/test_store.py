"""The store's read path: batched under load (pipelined on one connection on a single server), correct per caller,
never wedged by a stuck Redis or a killed connection."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
import redis.asyncio as aioredis

from server.embedded import EmbeddedRedis
from server.errors import StoreUnavailable
from server.store import EntitlementRecord, EntitlementStore, GrantCommand
from tests.helpers.services import PROJECT


async def _reads_processed(redis: aioredis.Redis) -> int:
    stats = await redis.info("stats")
    return int(stats["total_reads_processed"])


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> EntitlementStore:
    """A store on the test's Valkey with a short timeout."""
    return EntitlementStore(redis_client, timeout_s=1.0, idempotency_ttl_ms=60_000)


async def test_concurrent_reads_share_round_trips_and_get_their_own_answer(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """200 concurrent reads each get their own entitlement, in far fewer round trips than reads."""
    for i in range(20):
        await store.grant(GrantCommand(PROJECT, f"p{i}", "gold", 0, i + 1, 0, f"k{i}"), "test")
    before = await _reads_processed(redis_client)
    records = await asyncio.gather(*(store.get(PROJECT, f"p{i % 20}", "gold") for i in range(200)))
    socket_reads = await _reads_processed(redis_client) - before - 1  # the INFO call itself
    assert [r.quantity if r else None for r in records] == [i % 20 + 1 for i in range(200)]
    assert socket_reads < 50, f"{socket_reads} socket reads for 200 reads: not batched"


async def test_reads_of_absent_skus_are_none(store: EntitlementStore) -> None:
    """A batch mixing held and absent skus answers None for the absent ones."""
    await store.grant(GrantCommand(PROJECT, "p", "gold", 0, 1, 0, "k"), "test")
    results = await asyncio.gather(*(store.get(PROJECT, "p", sku) for sku in ("gold", "none", "gold", "x")))
    assert [r is not None for r in results] == [True, False, True, False]


async def test_stuck_redis_fails_every_queued_read_then_recovers(
    store: EntitlementStore, embedded_server: EmbeddedRedis
) -> None:
    """Reads queued behind a stuck round trip fail with StoreUnavailable in time, and reads work again after."""
    await store.grant(GrantCommand(PROJECT, "p", "gold", 0, 3, 0, "k"), "test")
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        results = await asyncio.wait_for(
            asyncio.gather(*(store.get(PROJECT, "p", "gold") for _ in range(20)), return_exceptions=True), timeout=5
        )
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    assert all(isinstance(r, StoreUnavailable) for r in results)
    records = await asyncio.gather(*(store.get(PROJECT, "p", "gold") for _ in range(20)))
    assert {r.quantity for r in records if r} == {3}


async def test_single_reads_are_pipelined_on_one_connection_that_recovers_when_killed(
    store: EntitlementStore, redis_client: aioredis.Redis, embedded_server: EmbeddedRedis
) -> None:
    """On a single server, reads go out pipelined on one connection of their own; when Redis kills it, the reads
    waiting on it fail as StoreUnavailable and the next read opens another."""
    await store.grant(GrantCommand(PROJECT, "p", "gold", 0, 4, 0, "k"), "test")
    assert {r.quantity for r in await asyncio.gather(*(store.get(PROJECT, "p", "gold") for _ in range(50))) if r} == {4}
    readers = [line for line in (await redis_client.client_list()) if line["cmd"] == "hget"]
    assert len(readers) == 1, readers
    pending = [asyncio.ensure_future(store.get(PROJECT, "p", "gold")) for _ in range(20)]
    await redis_client.client_kill_filter(_id=readers[0]["id"])
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(
        isinstance(o, StoreUnavailable) or (isinstance(o, EntitlementRecord) and o.quantity == 4) for o in outcomes
    ), outcomes
    assert (await store.get(PROJECT, "p", "gold")) is not None
    after = [line for line in (await redis_client.client_list()) if line["cmd"] == "hget"]
    assert len(after) == 1
    assert after[0]["id"] != readers[0]["id"]
