"""The store's writes on a single server go out on pipelined connections of their own
(`server.store.pipelined.PipelinedWrites`): each write with its durability wait on one connection, a connection per
wait in flight up to a limit, and no write lost, doubled or answered to another caller when a connection is killed,
Redis stops answering, restarts, or a caller gives up."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import pytest

from core.connections import RedisClient, connect
from core.durability import Durability
from core.keys import UserKeys
from server.embedded import EmbeddedRedis
from server.errors import StoreUnavailable
from server.store import EntitlementStore, GrantCommand, GrantResult
from tests.helpers.services import PROJECT

DURABLE = Durability("local", timeout_ms=2000, reason="test")


@pytest.fixture
async def service_client(embedded_server: EmbeddedRedis) -> AsyncIterator[RedisClient]:
    """A client built as the service builds its own (blocking pool of 8 connections, hiredis packing) on the single
    server (on a cluster the writes are redis-py pipelines: these tests run on the single server only)."""
    client = connect(embedded_server.url, cluster=False, timeout_s=1.0, max_connections=8)
    yield client
    await client.aclose()


def durable_store(client: RedisClient, waits: list[bool] | None = None, *, timeout_s: float = 1.0) -> EntitlementStore:
    """A store whose writes wait for the append-only file (the embedded server fsyncs every write)."""
    observe = None if waits is None else (lambda mode, seconds, durable: waits.append(durable))
    return EntitlementStore(client, timeout_s=timeout_s, idempotency_ttl_ms=60_000, durability=DURABLE, on_wait=observe)


def grant(user: str, key: str, quantity: int = 1) -> GrantCommand:
    return GrantCommand(PROJECT, user, "gold", 0, quantity, 0, key)


async def writers(redis: RedisClient) -> list[dict[str, Any]]:
    """The connections whose last command was a write script or its wait."""
    return [c for c in await redis.client_list() if c["cmd"] in ("evalsha", "waitaof", "wait")]


async def quantity(store: EntitlementStore, user: str) -> int:
    record = await store.get(PROJECT, user, "gold")
    return 0 if record is None else record.quantity


async def grant_entries(redis: RedisClient, user: str) -> int:
    """The player's ledger entries of grants."""
    entries = await redis.xrange(UserKeys(PROJECT, user).ledger) or []
    return len([fields for _, fields in entries if fields and fields.get(b"op") == b"grant"])


async def test_concurrent_durable_writes_each_get_their_own_answer_after_their_wait(
    service_client: RedisClient, redis_client: RedisClient
) -> None:
    """100 concurrent grants to 20 players each answer their own player, each after a wait that was durable, on at
    most half of the pool's connections."""
    waits: list[bool] = []
    store = durable_store(service_client, waits)
    waitaofs_before = await waitaof_calls(redis_client)
    results = await asyncio.gather(*(store.grant(grant(f"p{i % 20}", f"k{i}", i % 3 + 1), "test") for i in range(100)))
    assert [(r.entitlement.user_id, r.replayed) for r in results] == [(f"p{i % 20}", False) for i in range(100)]
    assert waits == [True] * 100
    assert await waitaof_calls(redis_client) - waitaofs_before == 100
    for player in range(20):
        assert await quantity(store, f"p{player}") == sum(i % 3 + 1 for i in range(player, 100, 20))
    assert 1 <= len(await writers(redis_client)) <= 4  # half of the 8 connections of the pool


async def waitaof_calls(redis: RedisClient) -> int:
    stats = await redis.info("commandstats")
    return int(stats.get("cmdstat_waitaof", {}).get("calls", 0))


async def test_writes_without_a_wait_share_one_connection(
    service_client: RedisClient, redis_client: RedisClient
) -> None:
    """Without a durability wait nothing blocks a connection: 100 concurrent grants go out on one."""
    store = EntitlementStore(service_client, timeout_s=1.0, idempotency_ttl_ms=60_000)
    results = await asyncio.gather(*(store.grant(grant(f"p{i % 10}", f"k{i}"), "test") for i in range(100)))
    assert [r.entitlement.user_id for r in results] == [f"p{i % 10}" for i in range(100)]
    assert len(await writers(redis_client)) == 1


async def test_a_killed_write_connection_fails_its_writes_and_their_retries_apply_each_once(
    service_client: RedisClient, redis_client: RedisClient
) -> None:
    """Grants in flight on a write connection that Redis kills fail as StoreUnavailable (or answer, if they came
    back first); retried with their keys, each applies exactly once, on a new connection."""
    store = durable_store(service_client)
    await store.grant(grant("p", "warm"), "test")
    (connection,) = await writers(redis_client)
    await redis_client.execute_command("CLIENT", "PAUSE", 300, "WRITE")  # the writes below wait in Redis, sent
    pending = [asyncio.ensure_future(store.grant(grant("p", f"k{i}"), "test")) for i in range(30)]
    await asyncio.sleep(0.05)
    await redis_client.client_kill_filter(_id=connection["id"])
    outcomes = await asyncio.gather(*pending, return_exceptions=True)
    assert all(isinstance(o, StoreUnavailable | GrantResult) for o in outcomes), outcomes
    assert any(isinstance(o, StoreUnavailable) for o in outcomes)
    retried = await asyncio.gather(*(store.grant(grant("p", f"k{i}"), "test") for i in range(30)))
    assert all(r.entitlement.user_id == "p" for r in retried)
    assert await quantity(store, "p") == 31
    assert await grant_entries(redis_client, "p") == 31
    assert connection["id"] not in {c["id"] for c in await writers(redis_client)}


async def test_a_frozen_redis_fails_writes_in_time_and_writes_work_again_after(
    service_client: RedisClient, redis_client: RedisClient, embedded_server: EmbeddedRedis
) -> None:
    """While Redis does not answer, grants fail as StoreUnavailable within their timeout; once it answers again,
    their retries apply each grant once."""
    store = durable_store(service_client)
    await store.grant(grant("p", "warm"), "test")
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        outcomes = await asyncio.wait_for(
            asyncio.gather(*(store.grant(grant("p", f"k{i}"), "test") for i in range(10)), return_exceptions=True),
            timeout=6,  # the store's 1 s plus the wait's 2 s, with room
        )
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
    await asyncio.gather(*(store.grant(grant("p", f"k{i}"), "test") for i in range(10)))
    assert await quantity(store, "p") == 11
    assert await grant_entries(redis_client, "p") == 11


async def test_writes_after_a_restart_of_redis_load_their_script_again(
    service_client: RedisClient, embedded_server: EmbeddedRedis
) -> None:
    """After Redis restarts (connections gone, scripts forgotten), the next grants reconnect, load the script and
    apply; a grant in flight at the crash is applied once by its retry."""
    store = durable_store(service_client)
    await store.grant(grant("p", "before"), "test")
    assert embedded_server.pid is not None
    in_flight = asyncio.ensure_future(store.grant(grant("p", "crash"), "test"))
    os.kill(embedded_server.pid, signal.SIGKILL)
    await embedded_server.wait_exit()
    outcome = await asyncio.gather(in_flight, return_exceptions=True)
    assert isinstance(outcome[0], StoreUnavailable | GrantResult), outcome
    await embedded_server.restart()
    results = await asyncio.gather(*(store.grant(grant("p", key), "test") for key in ("crash", "after1", "after2")))
    assert [r.entitlement.user_id for r in results] == ["p"] * 3
    assert await quantity(store, "p") == 4  # before, crash (once), after1, after2: appendfsync always kept them


async def test_callers_that_give_up_leave_every_other_answer_in_place(
    service_client: RedisClient, redis_client: RedisClient
) -> None:
    """Grants cancelled while their replies are owed do not shift the replies of the others on the connection."""
    store = durable_store(service_client)
    tasks = [asyncio.ensure_future(store.grant(grant(f"p{i}", f"k{i}", i + 1), "test")) for i in range(40)]
    await asyncio.sleep(0)
    for task in tasks[::2]:
        task.cancel()
    outcomes = await asyncio.gather(*tasks, return_exceptions=True)
    for i in range(1, 40, 2):
        result = outcomes[i]
        assert isinstance(result, GrantResult), result
        assert (result.entitlement.user_id, result.entitlement.quantity) == (f"p{i}", i + 1)
    after = await asyncio.gather(*(store.grant(grant(f"p{i}", f"again{i}"), "test") for i in range(40)))
    for i, result in enumerate(after):
        assert result.entitlement.user_id == f"p{i}"
        assert result.entitlement.quantity in ((i + 1) + 1, 1)  # the first grant applied (cancelled late) or not


async def test_a_pool_of_two_connections_still_serves_many_durable_writes(embedded_server: EmbeddedRedis) -> None:
    """With one write connection allowed, concurrent durable grants queue behind each other's waits and all
    answer, each its own."""
    client = connect(embedded_server.url, cluster=False, timeout_s=2.0, max_connections=2)
    try:
        store = durable_store(client, timeout_s=2.0)
        results = await asyncio.gather(*(store.grant(grant(f"p{i}", f"k{i}"), "test") for i in range(20)))
        assert [r.entitlement.user_id for r in results] == [f"p{i}" for i in range(20)]
    finally:
        await client.aclose()
