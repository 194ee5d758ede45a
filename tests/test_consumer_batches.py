"""The consumer's batches: entries read together are written together (one round trip and one durability wait per
node), one player's events still apply in stream order, a bad entry fails alone, and a crash or Redis failing in the
middle of a batch loses nothing and applies nothing twice."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.eventlog import partition_for
from core.keys import UserKeys
from core.limits import MAX_CONSUMABLE_TOTAL
from server.app import Service
from server.consumer import ConsumerHooks, StreamEntry
from server.embedded import EmbeddedRedis
from tests.helpers.events import (
    PARTITIONS,
    consumer_settings,
    dead_letters,
    drained,
    event_log,
    group_state,
    order_event,
    store_of,
    xadd_raw,
)
from tests.helpers.services import PROJECT, base_settings
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.slow

ServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def start_service(redis_server: StoreUnderTest) -> AsyncIterator[ServiceFactory]:
    """Starts consuming services (consumer settings overridden by keyword) with consumer hooks on the test's store;
    stops them all at the end."""
    started: list[Service] = []

    async def start(hooks: ConsumerHooks | None = None, **consumer_overrides: Any) -> Service:
        settings = base_settings(redis_url=redis_server.url, **consumer_settings(**consumer_overrides))
        service = Service(settings, consumer_hooks=hooks)
        await service.start()
        started.append(service)
        return service

    yield start
    for service in reversed(started):
        await service.stop(grace_s=0)


async def gold(service: Service, user: str) -> int:
    record = await store_of(service).get(PROJECT, user, "gold")
    return 0 if record is None else record.quantity


def sample(service: Service, name: str, **labels: str) -> float:
    return service.registry.get_sample_value(name, labels) or 0.0


def players_of_partition(partition: int, count: int) -> list[str]:
    """`count` player ids whose events go to `partition`."""
    found = [f"player-{n}" for n in range(1000) if partition_for(f"player-{n}", PARTITIONS) == partition]
    return found[:count]


async def test_a_batch_of_many_players_is_written_with_one_durability_wait_per_node(
    start_service: ServiceFactory, redis_client: aioredis.Redis
) -> None:
    """60 orders of 12 players stored before the consumer starts are read in a few batches, each written with one
    durability wait per node (not one per event), and every player gets exactly what was paid."""
    users = [f"player-{n}" for n in range(12)]
    log = event_log(redis_client)
    for n in range(60):
        await log.append(order_event("paid", f"b{n}", users[n % 12], [("gold", n + 1)]), b"{}")
    service = await start_service(batch=64)
    await drained(redis_client)
    for u, user in enumerate(users):
        assert await gold(service, user) == sum(n + 1 for n in range(60) if n % 12 == u)
    assert sample(service, "entitlements_events_total", type="order_paid", result="applied") == 60
    waits = sum(
        sample(service, "entitlements_write_durability_wait_seconds_count", mode=mode) for mode in ("local", "replicas")
    )
    # Two partitions, each read in one batch of up to 64 entries; on a cluster one wait per node of each batch.
    assert 0 < waits <= 2 * 3
    assert sample(service, "entitlements_payment_to_grant_seconds_count", source="webhook") == 60


async def test_one_players_events_in_one_batch_apply_in_stream_order(
    start_service: ServiceFactory, redis_client: aioredis.Redis
) -> None:
    """A player's paid, canceled and paid again, read in one batch among other players' events, apply in stream
    order: the cancel undoes the first order (it is not taken for a cancel before its payment)."""
    log = event_log(redis_client)
    for n in range(10):
        await log.append(order_event("paid", f"o{n}", f"other-{n}", [("gold", 1)]), b"{}")
        if n == 3:
            await log.append(order_event("paid", "p1", "player-1", [("gold", 5)]), b"{}")
        if n == 5:
            await log.append(order_event("canceled", "p1", "player-1", [("gold", 5)]), b"{}")
        if n == 7:
            await log.append(order_event("paid", "p2", "player-1", [("gold", 7)]), b"{}")
    service = await start_service(batch=64)
    await drained(redis_client)
    assert await gold(service, "player-1") == 7
    first = await store_of(service).order(PROJECT, "player-1", "p1")
    assert first is not None
    assert (first["status"], first.get("canceled_before_paid"), first["granted"]) == ("canceled", None, "0")
    ledger = await store_of(service).ledger(PROJECT, "player-1")
    assert [(e.fields["op"], e.fields["order_id"]) for e in reversed(ledger)] == [
        ("grant", "p1"),
        ("cancel", "p1"),
        ("grant", "p2"),
    ]
    assert sample(service, "entitlements_events_total", type="order_canceled", result="applied") == 1


async def test_bad_entries_in_the_middle_of_a_batch_fail_alone(
    start_service: ServiceFactory, redis_client: aioredis.Redis
) -> None:
    """An order past the store's limit (refused by its script inside the batch's pipeline) and a malformed entry, in
    the middle of a batch, are retried and dead-lettered; the batch's other entries, the same player's later order
    included, are applied and acknowledged at once."""
    (user, other, third) = players_of_partition(0, 3)
    log = event_log(redis_client)
    await log.append(order_event("paid", "g1", user, [("gold", 1)]), b"{}")
    over = order_event("paid", "over", other, [("gold", MAX_CONSUMABLE_TOTAL), ("gold", MAX_CONSUMABLE_TOTAL)])
    await log.append(over, b"{}")
    await xadd_raw(
        redis_client, other, {"event": b"\x00not a protobuf", "raw": b"{}", "type": b"EVENT_TYPE_ORDER_PAID"}
    )
    await log.append(order_event("paid", "g2", other, [("gold", 2)]), b"{}")
    await log.append(order_event("paid", "g3", third, [("gold", 3)]), b"{}")
    # A long claim delay: the good entries must not wait for the bad ones' retries.
    service = await start_service(batch=64, claim_idle_s=30.0)

    async def pending_only_the_bad_ones() -> bool:
        return await group_state(redis_client) == (2, 0)

    await eventually(pending_only_the_bad_ones, what="the good entries acknowledged")
    assert [await gold(service, u) for u in (user, other, third)] == [1, 2, 3]
    # Both are order_paid by their stream entry's type.
    assert sample(service, "entitlements_events_total", type="order_paid", result="error") == 2
    await service.stop(grace_s=0)

    retrying = await start_service(batch=64, claim_idle_s=0.05, max_deliveries=2)
    await drained(redis_client)
    letters = await dead_letters(redis_client)
    errors = sorted(fields[b"error"].decode().split(":")[0] for _, fields in letters)
    assert errors == ["FailedPrecondition", "InvalidEvent"]
    assert await gold(retrying, other) == 2  # nothing of the order past the limit was written


async def test_a_crash_after_the_batch_is_written_and_before_its_xack_applies_and_times_each_grant_once(
    start_service: ServiceFactory, redis_client: aioredis.Redis
) -> None:
    """A consumer stopped hard after its batch was written and published, before the XACK, leaves the entries
    pending; the next one claims them, replays them (nothing granted twice), and times each grant once: the
    redelivered entry is the one that granted its order, and its first delivery never reported it."""
    reached = asyncio.Event()

    async def hang(entry: StreamEntry) -> None:
        reached.set()
        await asyncio.Event().wait()  # stuck until the service is stopped (cancelled)

    log = event_log(redis_client)
    for n in range(8):
        await log.append(order_event("paid", f"c{n}", f"player-{n % 3}", [("gold", 10)]), b"{}")
    first = await start_service(ConsumerHooks(before_ack=hang), batch=64)
    await asyncio.wait_for(reached.wait(), 5)
    await first.stop(grace_s=0)
    pending, _ = await group_state(redis_client)
    assert pending == 8
    committed = [await redis_client.hget(UserKeys(PROJECT, f"player-{n}").items, "gold") for n in range(3)]
    assert all(value is not None for value in committed)  # the batch was written before the hook held it

    second = await start_service(batch=64)
    await drained(redis_client)
    assert [await gold(second, f"player-{n}") for n in range(3)] == [30, 30, 20]
    assert sample(second, "entitlements_events_total", type="order_paid", result="replayed") == 8
    assert sample(second, "entitlements_payment_to_grant_seconds_count", source="webhook") == 8
    assert sample(first, "entitlements_payment_to_grant_seconds_count", source="webhook") == 0


async def test_redis_failing_in_the_middle_of_a_batch_loses_nothing_and_grants_nothing_twice(
    start_service: ServiceFactory, redis_client: aioredis.Redis, embedded_server: EmbeddedRedis
) -> None:
    """Redis killed while a batch is being read (before its writes go out), then restarted: the batch is retried,
    every event applied exactly once, and the failure counted as Redis's (nothing dead-lettered)."""
    seen = 0
    killed = asyncio.Event()

    async def kill_on_fifth(entry: StreamEntry) -> None:
        nonlocal seen
        seen += 1
        if seen == 5:
            killed.set()
            await embedded_server.kill()

    log = event_log(redis_client)
    for n in range(30):
        await log.append(order_event("paid", f"r{n}", f"player-{n % 4}", [("gold", 1)]), b"{}")
    service = await start_service(ConsumerHooks(before_apply=kill_on_fifth), batch=64)
    await asyncio.wait_for(killed.wait(), 5)
    await asyncio.sleep(0.3)  # the batch's writes meet the dead Redis; the reader backs off
    await embedded_server.start()
    consumer = service.consumer
    assert consumer is not None
    consumer.retry_now()
    await drained(redis_client, timeout_s=20)
    assert sum([await gold(service, f"player-{n}") for n in range(4)]) == 30
    ledgers = [await store_of(service).ledger(PROJECT, f"player-{n}") for n in range(4)]
    assert sum(len(entries) for entries in ledgers) == 30
    assert sum(sample(service, "entitlements_consumer_errors_total", stage=s) for s in ("apply", "read", "ack")) >= 1
    assert await dead_letters(redis_client) == []
