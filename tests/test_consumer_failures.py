"""The consumer under failure: a consumer killed between reading and acknowledging, poison events and the dead-letter
stream, Redis restarting under it, deleted streams, retention and shutdown."""

from __future__ import annotations

import asyncio
import io
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.keys import CONSUMER_GROUP, EventKeys, UserKeys
from server.__main__ import dead_letters_command, events_status
from server.app import Service
from server.config import Settings
from server.consumer import ConsumerHooks, StreamEntry
from server.embedded import EmbeddedRedis
from tests.helpers.events import (
    PARTITIONS,
    consumer_of,
    consumer_settings,
    dead_letters,
    drained,
    event_log,
    group_state,
    order_event,
    store_of,
)
from tests.helpers.services import PROJECT, base_settings
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

pytestmark = pytest.mark.slow

HookedServiceFactory = Callable[..., Awaitable[Service]]


@pytest.fixture
async def hooked_service_factory(redis_server: StoreUnderTest) -> AsyncIterator[HookedServiceFactory]:
    """Starts consuming services (consumer settings overridden by keyword) with consumer hooks on the test's
    Valkey; stops them all at the end."""
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


async def gold(service: Service, user: str = "player-1") -> int:
    record = await store_of(service).get(PROJECT, user, "gold")
    return 0 if record is None else record.quantity


def operator_settings(redis_server: StoreUnderTest) -> Settings:
    return Settings(**redis_server.settings, event_partitions=PARTITIONS)


@pytest.mark.parametrize("stage", ["before_apply", "before_ack"])
async def test_consumer_killed_between_read_and_ack_is_applied_exactly_once(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis, stage: str
) -> None:
    """A consumer killed between read and XACK leaves the entry pending; another replica applies it exactly once."""
    reached = asyncio.Event()

    async def hang(entry: StreamEntry) -> None:
        reached.set()
        await asyncio.Event().wait()  # stuck here until the service is stopped (cancelled)

    first = await hooked_service_factory(ConsumerHooks(**{stage: hang}))
    event = order_event("paid", "7001", "player-1", [("gold", 25), ("castle", 1)])
    await event_log(redis_client).append(event, b"{}")
    await asyncio.wait_for(reached.wait(), 5)
    started = time.monotonic()
    await first.stop(grace_s=0)
    assert time.monotonic() - started < 1.0
    assert await group_state(redis_client) == (1, 0)  # read, never acknowledged
    committed = await redis_client.hget(UserKeys(PROJECT, "player-1").items, "gold")
    assert (committed is not None) == (stage == "before_ack")

    second = await hooked_service_factory()
    await drained(redis_client)
    assert await gold(second) == 25
    ledger = await store_of(second).ledger(PROJECT, "player-1")
    assert sorted(e.fields["sku"] for e in ledger) == ["castle", "gold"]
    expected = "applied" if stage == "before_apply" else "replayed"
    assert second.registry.get_sample_value("entitlements_events_total", {"type": "order_paid", "result": expected})


async def test_poison_event_is_dead_lettered_then_replayed_once_after_the_fix(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis, redis_server: StoreUnderTest
) -> None:
    """A poison entry is dead-lettered after max_deliveries, others flow; after the fix, replay applies it once."""
    broken = {"xsolla:308077:order:8001:paid"}
    deliveries: list[int] = []

    async def fail_while_broken(entry: StreamEntry) -> None:
        from core.eventlog import decode_event

        if decode_event(entry.fields).event_id in broken:
            deliveries.append(entry.deliveries)
            raise RuntimeError("grant backend misconfigured")

    service = await hooked_service_factory(ConsumerHooks(before_apply=fail_while_broken))
    log = event_log(redis_client)
    await log.append(order_event("paid", "8001", "player-1", [("gold", 40)]), b'{"raw": true}')
    await log.append(order_event("paid", "8002", "player-2", [("gold", 2)]), b"{}")
    await drained(redis_client)
    assert deliveries == [1, 2, 3]
    (letter,) = await dead_letters(redis_client)
    fields = letter[1]
    assert fields[b"error"] == b"RuntimeError: grant backend misconfigured"
    assert (fields[b"deliveries"], fields[b"raw"], fields[b"type"]) == (
        b"3",
        b'{"raw": true}',
        b"EVENT_TYPE_ORDER_PAID",
    )
    assert await gold(service, "player-2") == 2
    assert await gold(service) == 0
    labels = {"type": "order_paid"}
    assert service.registry.get_sample_value("entitlements_dead_letters_total", labels) == 1

    broken.clear()
    out = io.StringIO()
    assert (
        await dead_letters_command(operator_settings(redis_server), PROJECT, "replay", letter[0].decode(), out=out) == 0
    )
    assert json.loads(out.getvalue())["replayed"] == letter[0].decode()
    await drained(redis_client)
    assert await gold(service) == 40
    assert await dead_letters(redis_client) == []
    assert await dead_letters_command(operator_settings(redis_server), PROJECT, "replay", letter[0].decode()) == 1
    # Replaying an event that was in fact applied already changes nothing.
    await log.append(order_event("paid", "8003", "player-1", [("gold", 1)]), b"{}")
    await drained(redis_client)
    assert await gold(service) == 41


async def test_replay_all_and_events_status(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis, redis_server: StoreUnderTest
) -> None:
    """`dead-letters replay --all` replays every partition's dead letters; `events status` shows the group."""
    failing = True

    async def fail(entry: StreamEntry) -> None:
        if failing:
            raise RuntimeError("down for maintenance")

    service = await hooked_service_factory(ConsumerHooks(before_apply=fail), max_deliveries=1)
    log = event_log(redis_client)
    for n, user in enumerate(["player-1", "player-2", "player-3", "player-4"]):
        await log.append(order_event("paid", f"900{n}", user, [("gold", 1)]), b"{}")
    await drained(redis_client)
    assert len(await dead_letters(redis_client)) == 4
    failing = False
    out = io.StringIO()
    assert await dead_letters_command(operator_settings(redis_server), PROJECT, "replay", None, out=out) == 0
    assert len(out.getvalue().splitlines()) == 4
    await drained(redis_client)
    for user in ["player-1", "player-2", "player-3", "player-4"]:
        assert await gold(service, user) == 1
    out = io.StringIO()
    await events_status(operator_settings(redis_server), PROJECT, out=out)
    rows = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [row["partition"] for row in rows] == list(range(PARTITIONS))
    assert sum(row["length"] for row in rows) == 8
    assert all(row["pending"] == 0 for row in rows)
    assert all(row["consumers"][0]["name"] == consumer_of(service).name for row in rows)


async def test_redis_restart_while_consuming_loses_nothing(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis, embedded_server: EmbeddedRedis
) -> None:
    """Redis killed between an entry's commit and its XACK, then restarted: every event is applied exactly once."""
    seen = 0
    killed = asyncio.Event()

    async def kill_on_tenth(entry: StreamEntry) -> None:
        nonlocal seen
        seen += 1
        if seen == 10:
            killed.set()
            await embedded_server.kill()

    service = await hooked_service_factory(ConsumerHooks(before_ack=kill_on_tenth))
    log = event_log(redis_client)
    for n in range(20):
        await log.append(order_event("paid", f"a{n}", "player-1", [("gold", 1)]), b"{}")
    await asyncio.wait_for(killed.wait(), 5)
    await asyncio.sleep(0.3)  # the consumer meets the dead Redis and backs off
    await embedded_server.start()
    for n in range(20, 40):
        await log.append(order_event("paid", f"a{n}", f"player-{n % 3}", [("gold", 1)]), b"{}")
    await drained(redis_client, timeout_s=20)
    assert sum([await gold(service, f"player-{n}") for n in range(3)]) == 40
    ledgers = [await store_of(service).ledger(PROJECT, f"player-{n}") for n in range(3)]
    assert sum(len(entries) for entries in ledgers) == 40
    assert service.registry.get_sample_value("entitlements_events_total", {"type": "order_paid", "result": "replayed"})


async def test_deleted_stream_is_joined_again(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis
) -> None:
    """If a stream and its group disappear, the consumer waits for the stream to come back and consumes it."""
    service = await hooked_service_factory()
    log = event_log(redis_client)
    await log.append(order_event("paid", "b1", "player-1", [("gold", 1)]), b"{}")
    await drained(redis_client)
    await redis_client.delete(*[EventKeys(PROJECT, p).stream for p in range(PARTITIONS)])
    await asyncio.sleep(0.2)
    await log.append(order_event("paid", "b2", "player-1", [("gold", 1)]), b"{}")
    await drained(redis_client)
    assert await gold(service) == 2


async def test_retention_trims_only_acknowledged_entries(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis
) -> None:
    """Maintenance trims acknowledged entries past the retention (approximately), never a pending one."""
    count = 250
    held = asyncio.Event()

    async def hold_last(entry: StreamEntry) -> None:
        from core.eventlog import decode_event

        if decode_event(entry.fields).event_id.endswith(f":c{count - 1}:paid"):
            held.set()
            await asyncio.Event().wait()

    # A retention of 0.1 s.
    service = await hooked_service_factory(ConsumerHooks(before_apply=hold_last), retention_days=0.1 / 86_400)
    log = event_log(redis_client)
    stream = log.keys_for(PROJECT, "player-1").stream
    for n in range(count):
        await log.append(order_event("paid", f"c{n}", "player-1", [("gold", 1)]), b"{}")
    await asyncio.wait_for(held.wait(), 10)
    await asyncio.sleep(0.2)
    assert service.consumer is not None
    await service.consumer.maintain()
    rows: Any = await redis_client.xrange(stream)
    remaining = [entry_id for entry_id, _ in rows]
    pending = await redis_client.xpending_range(stream, CONSUMER_GROUP, "-", "+", count)
    held_ids = [row["message_id"] for row in pending]
    # The held entry, and the entries read in its batch (held with it before their writes), are all kept.
    assert held_ids
    assert held_ids[-1] == remaining[-1]
    assert remaining[-len(held_ids) :] == held_ids
    assert len(remaining) < count
    assert await gold(service) == count - len(held_ids)


async def test_stop_is_prompt_and_leaves_no_consumer_tasks(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis
) -> None:
    """Stopping returns at once, leaves no consumer task, and removes the idle consumer's name from the group."""
    await event_log(redis_client).append(order_event("paid", "d1", "player-1", [("gold", 1)]), b"{}")
    service = await hooked_service_factory(block_ms=5000)
    await drained(redis_client)
    consumer = service.consumer
    assert consumer is not None
    assert consumer.running
    started = time.monotonic()
    await service.stop()
    assert time.monotonic() - started < 1.0
    assert not consumer.running
    assert not [t for t in asyncio.all_tasks() if (t.get_name() or "").startswith("consumer-")]
    stream = event_log(redis_client).keys_for(PROJECT, "player-1").stream
    assert await redis_client.xinfo_consumers(stream, CONSUMER_GROUP) == []


async def test_consumer_waits_for_redis_at_start(
    hooked_service_factory: HookedServiceFactory, redis_client: aioredis.Redis, embedded_server: EmbeddedRedis
) -> None:
    """A service started while Redis is down starts anyway; its consumer joins once Redis is back."""
    await embedded_server.stop()
    service = await hooked_service_factory()
    await asyncio.sleep(0.2)
    await embedded_server.start()
    await event_log(redis_client).append(order_event("paid", "e1", "player-1", [("gold", 3)]), b"{}")
    await eventually(lambda: _gold_is(service, 3), timeout_s=20, what="the order to be applied")
    await drained(redis_client)


async def _gold_is(service: Service, value: int) -> bool:
    try:
        return await gold(service) == value
    except Exception:
        return False
