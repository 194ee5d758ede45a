"""The change feed's write side: every committed change reaches the player's feed partition once, in version order,
with the record after it; a lost or failed relay is repaired; a replay relays nothing; the feed is trimmed by MINID."""

from __future__ import annotations

import asyncio
import json
import os
import signal
from collections.abc import AsyncIterator, Sequence
from typing import Any

import pytest
from prometheus_client import CollectorRegistry

from core.clock import now_ms
from core.connections import connect, reply_text
from core.feed import FEED_PROJECTS_KEY, FeedEntry, FeedKeys, partition_of
from core.keys import UserKeys
from server.config import Settings
from server.embedded import EmbeddedRedis
from server.errors import ConfigError, FailedPrecondition, StoreUnavailable
from server.feed import FeedRelay, FeedRepair, FeedSettings, Intent
from server.metrics import FeedMetrics
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED, EntitlementStore, GrantCommand, OrderLine, RevokeCommand
from tests.helpers.events import consumer_settings, drained, event_log, order_event
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

HOUR_MS = 3_600_000
Write = tuple[Intent, Sequence[FeedEntry]]


class HeldRelay(FeedRelay):
    """A relay that keeps what the store hands it instead of relaying it: the test relays it (in any order), or
    drops it, as a writer that crashed between the commit and the relay would."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.held: list[Write] = []

    def submit(self, writes: Any) -> None:
        self.held.extend(writes)


def _options(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {"timeout_s": 2.0, "retention_s": 86_400.0, "metrics": FeedMetrics(CollectorRegistry()), **kwargs}


def _relay(redis: Any, **kwargs: Any) -> FeedRelay:
    return FeedRelay(redis, **_options(kwargs))


def _held(redis: Any, **kwargs: Any) -> HeldRelay:
    return HeldRelay(redis, **_options(kwargs))


@pytest.fixture
async def relay(redis_client: Any) -> AsyncIterator[FeedRelay]:
    """The relay on the test's Redis; closed after the test."""
    relay = _relay(redis_client)
    yield relay
    await relay.close(2.0)


@pytest.fixture
def store(redis_client: Any, relay: FeedRelay) -> EntitlementStore:
    """A store whose writes hand their changes to `relay`."""
    return EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=relay)


async def _feed(redis: Any, user_id: str) -> list[FeedEntry]:
    """The player's changes in its feed partition, in stream order."""
    rows = await redis.xrange(FeedKeys(PROJECT, partition_of(user_id)).stream)
    entries = [FeedEntry.from_fields({reply_text(k): reply_text(v) for k, v in fields.items()}) for _, fields in rows]
    return [entry for entry in entries if entry.user_id == user_id]


async def _pending(redis: Any, user_id: str) -> list[bytes]:
    return list(await redis.zrange(FeedKeys(PROJECT, partition_of(user_id)).pending, 0, -1))


def _grant(user: str, sku: str, key: str, quantity: int = 1, kind: int = CONSUMABLE) -> GrantCommand:
    return GrantCommand(PROJECT, user, sku, kind, quantity, HOUR_MS if kind == TIME_LIMITED else 0, key)


async def test_each_write_kind_gives_one_entry_with_its_version_record_and_operation(
    store: EntitlementStore, relay: FeedRelay, redis_client: Any
) -> None:
    """Grant, revoke, an order_paid of 3 lines and its cancel: one feed entry per sku change, versions 1..8 in
    order, each with the record after it ("" once removed) and the ledger's version of that change."""
    await store.grant(_grant("ann", "gold", "k1", 5), "test")
    await store.grant(_grant("ann", "sword", "k2", kind=PERMANENT), "test")
    await store.revoke(RevokeCommand(PROJECT, "ann", "sword", "k3"), "test")
    lines = [
        OrderLine("gold", 0, 0, 10),
        OrderLine("pass", TIME_LIMITED, HOUR_MS, 1),
        OrderLine("cape", PERMANENT, 0, 1),
    ]
    await store.apply_order_paid(PROJECT, "ann", "o1", "e1", "consumer", lines, {})
    await store.apply_order_canceled(PROJECT, "ann", "o1", "e2", "consumer", {})
    await relay.flush()
    feed = await _feed(redis_client, "ann")
    assert [(e.version, e.sku, e.operation) for e in feed] == [
        (1, "gold", "grant"),
        (2, "sword", "grant"),
        (3, "sword", "revoke"),
        (4, "gold", "order_paid"),
        (5, "pass", "order_paid"),
        (6, "cape", "order_paid"),
        (7, "cape", "order_canceled"),  # undone newest line first
        (8, "pass", "order_canceled"),
        (9, "gold", "order_canceled"),
    ]
    records = {(e.version): e.record_json for e in feed}
    assert [json.loads(records[v])["q"] for v in (1, 4, 9)] == [5, 15, 5]
    assert [records[v] for v in (3, 7, 8)] == ["", "", ""]
    items = await redis_client.hgetall(UserKeys(PROJECT, "ann").items)
    assert {k.decode(): v.decode() for k, v in items.items()} == {"gold": records[9]}
    assert int(await redis_client.get(UserKeys(PROJECT, "ann").version)) == 9
    ledger = await store.ledger(PROJECT, "ann", 100)
    assert sorted(int(e.fields["v"]) for e in ledger if "v" in e.fields) == list(range(1, 10))
    assert all(e.at_ms > 0 for e in feed)
    assert await _pending(redis_client, "ann") == []
    assert await redis_client.smembers(FEED_PROJECTS_KEY) == {str(PROJECT).encode()}


async def test_fifty_concurrent_grants_of_one_player_reach_the_feed_once_each_in_order(
    store: EntitlementStore, relay: FeedRelay, redis_client: Any
) -> None:
    """50 concurrent grants of one player: versions 1..50 in the feed in that order, none twice, quantities
    adding up along it; no intent left."""
    await asyncio.gather(*(store.grant(_grant("bob", "gold", f"k{i}"), "test") for i in range(50)))
    await relay.flush()
    feed = await _feed(redis_client, "bob")
    assert [e.version for e in feed] == list(range(1, 51))
    assert [json.loads(e.record_json)["q"] for e in feed] == list(range(1, 51))
    assert await _pending(redis_client, "bob") == []


def _unfed(redis: Any) -> EntitlementStore:
    """A store without the feed (a writer that never relays): its changes are only in the ledger."""
    return EntitlementStore(redis, timeout_s=2.0, idempotency_ttl_ms=60_000)


async def test_writes_relayed_out_of_order_reach_the_feed_in_version_order(
    redis_client: Any, redis_server: StoreUnderTest
) -> None:
    """A player's change that is not in the feed yet (written without it, or relayed late) and a later one: the
    later one's relay reads the earlier from the ledger and appends it first (on a single server the later write's
    script leaves it to the relay, with its intent); a late relay of the earlier one then adds nothing."""
    relay = _held(redis_client)
    store = EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=relay)
    await _unfed(redis_client).grant(_grant("cat", "gold", "k0", 1), "test")
    await store.grant(_grant("cat", "gold", "k1", 2), "test")
    await store.grant(_grant("cat", "gold", "k2", 3), "test")
    (first, first_changes), (second, second_changes) = relay.held
    assert [c.version for c in [*first_changes, *second_changes]] == [2, 3]
    assert len(await _pending(redis_client, "cat")) == 2
    assert await relay.relay(second.keys, second_changes, [second.member]) == 3
    assert await relay.relay(first.keys, first_changes, [first.member]) == 0
    feed = await _feed(redis_client, "cat")
    assert [(e.version, json.loads(e.record_json)["q"]) for e in feed] == [(1, 1), (2, 3), (3, 6)]
    assert feed[1] == first_changes[0]
    assert await _pending(redis_client, "cat") == []
    # Caught up: the next write is appended at once (by its own script on a single server).
    fed = _relay(redis_client)
    await EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=fed).grant(
        _grant("cat", "gold", "k3", 4), "test"
    )
    await fed.close(2.0)
    assert [e.version for e in await _feed(redis_client, "cat")] == [1, 2, 3, 4]
    assert await _pending(redis_client, "cat") == []


async def test_a_relay_that_never_happened_is_repaired(redis_client: Any) -> None:
    """A writer that crashed between the commit and the relay (grant, order, revoke done; nothing relayed): its
    intents stay pending, the repair relays every change once they are older than its delay, then removes them."""
    relay = _held(redis_client)
    store = EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=relay)
    # On a single server the scripts append to the feed themselves, atomically: a change reaches the relay (and may
    # be lost with it) only behind one missing from the feed, as this first one written without the feed.
    await _unfed(redis_client).grant(_grant("dan", "gold", "k1", 4), "test")
    lines = [OrderLine("gold", 0, 0, 1), OrderLine("x", 0, 0, 1)]
    await store.apply_order_paid(PROJECT, "dan", "o1", "e1", "c", lines, {})
    await store.revoke(RevokeCommand(PROJECT, "dan", "x", "k2"), "test")
    assert len(await _pending(redis_client, "dan")) == 2
    repair = FeedRepair(redis_client, relay, delay_s=5.0, timeout_s=2.0, metrics=FeedMetrics(CollectorRegistry()))
    assert await repair.repair() == 0  # younger than the delay: a relay may be on its way
    assert await _feed(redis_client, "dan") == []
    assert await repair.repair(now=now_ms() + 6_000) == 4
    feed = await _feed(redis_client, "dan")
    assert [(e.version, e.sku, e.operation) for e in feed] == [
        (1, "gold", "grant"),
        (2, "gold", "order_paid"),
        (3, "x", "order_paid"),
        (4, "x", "revoke"),
    ]
    assert await _pending(redis_client, "dan") == []
    assert await repair.repair(now=now_ms() + 6_000) == 0  # idempotent: nothing twice
    # The writer's relay, had it survived after all, adds nothing either.
    for intent, changes in relay.held:
        assert await relay.relay(intent.keys, changes, [intent.member]) == 0
    assert len(await _feed(redis_client, "dan")) == 4


async def test_a_replayed_write_relays_nothing(store: EntitlementStore, relay: FeedRelay, redis_client: Any) -> None:
    """A grant retried with its idempotency key, a redelivered order_paid and cancel: one entry each, no intent left."""
    for _ in range(3):
        await store.grant(_grant("eve", "gold", "k1", 2), "test")
        await store.apply_order_paid(PROJECT, "eve", "o1", "e1", "c", [OrderLine("gem", 0, 0, 1)], {})
    await store.apply_order_canceled(PROJECT, "eve", "o1", "e2", "c", {})
    await store.apply_order_canceled(PROJECT, "eve", "o1", "e2", "c", {})
    await relay.flush()
    assert [(e.version, e.sku) for e in await _feed(redis_client, "eve")] == [(1, "gold"), (2, "gem"), (3, "gem")]
    assert await _pending(redis_client, "eve") == []


async def test_a_replay_of_a_write_that_never_reached_the_feed_relays_it(
    store: EntitlementStore, relay: FeedRelay, redis_client: Any
) -> None:
    """A write applied without reaching the feed (its caller gave up; here: written without it), then retried with
    its key: the replay carries the player's version and the relay appends the missing change from the ledger."""
    await _unfed(redis_client).grant(_grant("liv", "gold", "k1", 2), "test")
    await _unfed(redis_client).apply_order_paid(PROJECT, "liv", "o1", "e1", "c", [OrderLine("gem", 0, 0, 1)], {})
    await store.grant(_grant("liv", "gold", "k1", 2), "test")
    await relay.flush()
    assert [(e.version, e.operation) for e in await _feed(redis_client, "liv")] == [(1, "grant"), (2, "order_paid")]
    assert await _pending(redis_client, "liv") == []
    await store.apply_order_paid(PROJECT, "liv", "o1", "e1", "c", [OrderLine("gem", 0, 0, 1)], {})
    await relay.flush()
    assert len(await _feed(redis_client, "liv")) == 2


async def test_a_refused_write_leaves_no_intent(store: EntitlementStore, relay: FeedRelay, redis_client: Any) -> None:
    """A grant the script refuses (another kind held) changes nothing, in the feed or in `pending`."""
    await store.grant(_grant("fay", "sword", "k1", kind=PERMANENT), "test")
    with pytest.raises(FailedPrecondition):
        await store.grant(_grant("fay", "sword", "k2", kind=CONSUMABLE), "test")
    await relay.flush()
    assert [e.version for e in await _feed(redis_client, "fay")] == [1]
    assert await _pending(redis_client, "fay") == []


async def test_retention_trims_by_minid(redis_client: Any) -> None:
    """Changes older than the retention are trimmed from the partition by MINID (XINFO STREAM's
    max-deleted-entry-id says up to where), by the relay and by the repair of an idle partition."""
    relay = _relay(redis_client, retention_s=60.0)
    try:
        keys = FeedKeys(PROJECT, partition_of("gus"))
        old = now_ms() - 120_000
        await redis_client.xadd(keys.stream, {"u": "old"}, id=f"{old}-0")
        await redis_client.xadd(keys.stream, {"u": "old"}, id=f"{old}-1")
        fresh = await redis_client.xadd(keys.stream, {"u": "fresh"}, id=f"{now_ms() - 30_000}-0")
        change = FeedEntry("gus", "gold", 1, "grant", now_ms(), '{"k":1,"q":1}')
        assert await relay.relay(keys, [change], []) == 1
        info = await redis_client.xinfo_stream(keys.stream)
        assert info["max-deleted-entry-id"] == f"{old}-1".encode()
        assert next(row[0] for row in await redis_client.xrange(keys.stream)) == fresh
        idle = FeedKeys(PROJECT, (keys.partition + 1) % 16)
        await redis_client.xadd(idle.stream, {"u": "old"}, id=f"{old}-0")
        metrics = FeedMetrics(CollectorRegistry())
        repair = FeedRepair(redis_client, relay, delay_s=5.0, timeout_s=2.0, metrics=metrics, projects=[PROJECT])
        await repair.repair()
        assert await redis_client.xlen(idle.stream) == 0
        assert (await redis_client.xinfo_stream(idle.stream))["max-deleted-entry-id"] == f"{old}-0".encode()
    finally:
        await relay.close(1.0)


async def test_a_relay_with_redis_down_is_counted_and_repaired_later(
    redis_client: Any, redis_server: StoreUnderTest
) -> None:
    """The relay fails (its Redis unreachable) after the write committed: the write's caller saw success, the
    failure is counted and logged, never raised; the intent stays and the repair relays the change."""
    dead = connect("redis://127.0.0.1:1/0", cluster=False, timeout_s=0.3, max_connections=2)
    metrics = FeedMetrics(CollectorRegistry())
    broken = _relay(dead, metrics=metrics, timeout_s=0.3)
    held = _held(redis_client)
    store = EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=held)
    try:
        await _unfed(redis_client).grant(_grant("hal", "gold", "k0", 1), "test")  # so the next goes to the relay
        await store.grant(_grant("hal", "gold", "k1", 7), "test")
        broken.submit(held.held)  # the relay of the committed write, to a Redis that does not answer
        await asyncio.wait_for(broken.flush(), 5)
        assert metrics.failures._value.get() == 1
        assert len(await _pending(redis_client, "hal")) == 1
        repair = FeedRepair(redis_client, held, delay_s=5.0, timeout_s=2.0, metrics=metrics)
        assert await repair.repair(now=now_ms() + 6_000) == 2
        assert [e.version for e in await _feed(redis_client, "hal")] == [1, 2]
        assert metrics.repaired._value.get() == 2
    finally:
        await broken.close(1.0)
        await dead.aclose()


async def test_the_embedded_store_stopped_during_the_relay(redis_client: Any, embedded_server: EmbeddedRedis) -> None:
    """The store itself stops answering between the commit and the relay: the relay fails within its timeout
    without raising; once the store is back the repair relays the change."""
    metrics = FeedMetrics(CollectorRegistry())
    held = _held(redis_client, metrics=metrics, timeout_s=0.5)
    store = EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000, feed=held)
    relay = _relay(redis_client, metrics=metrics, timeout_s=0.5)
    await _unfed(redis_client).grant(_grant("ida", "gold", "k0", 1), "test")  # so the next goes to the relay
    await store.grant(_grant("ida", "gold", "k1", 7), "test")
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        relay.submit(held.held)
        await asyncio.wait_for(relay.flush(), 5)
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    try:
        assert metrics.failures._value.get() == 1
        repair = FeedRepair(redis_client, relay, delay_s=5.0, timeout_s=2.0, metrics=metrics)
        assert await repair.repair(now=now_ms() + 6_000) == 2
        assert [e.version for e in await _feed(redis_client, "ida")] == [1, 2]
    finally:
        await relay.close(1.0)


async def test_a_write_with_redis_down_is_unavailable_and_leaves_the_feed_alone(
    redis_client: Any, embedded_server: EmbeddedRedis, relay: FeedRelay, store: EntitlementStore
) -> None:
    """A grant while Redis does not answer is StoreUnavailable, as before the feed; once Redis is back its retry
    (same key) is applied and relayed once."""
    await store.grant(_grant("jo", "gold", "k0"), "test")  # the project is known to the relay
    assert embedded_server.pid is not None
    os.kill(embedded_server.pid, signal.SIGSTOP)
    try:
        with pytest.raises(StoreUnavailable):
            await store.grant(_grant("jo", "gold", "k1", 2), "test")
    finally:
        os.kill(embedded_server.pid, signal.SIGCONT)
    await store.grant(_grant("jo", "gold", "k1", 2), "test")
    await relay.flush()
    assert [e.version for e in await _feed(redis_client, "jo")] == [1, 2]


async def test_the_services_grants_and_consumed_orders_reach_the_feed(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, client_factory: ClientFactory, redis_client: Any
) -> None:
    """Through the real service: a Grant over gRPC and an order_paid consumed from the event log reach the
    player's feed partition, one entry each sku, and the feed's metrics count them."""
    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    client = await client_factory(service)
    await client.grant("kim", "gold", quantity=3, idempotency_key="g1")
    await event_log(redis_client).append(order_event("paid", "2001", "kim", [("gold", 10), ("castle", 1)]), b"{}")
    await drained(redis_client)

    async def relayed() -> bool:
        return len(await _feed(redis_client, "kim")) == 3

    await eventually(relayed, what="the three changes in the feed")
    feed = await _feed(redis_client, "kim")
    assert [(e.version, e.sku, e.operation) for e in feed] == [
        (1, "gold", "grant"),
        (2, "gold", "order_paid"),
        (3, "castle", "order_paid"),
    ]
    assert json.loads(feed[1].record_json)["q"] == 13
    assert service.feed is not None
    metrics = service.feed.metrics
    # On a single server the write scripts append them themselves; on a cluster the relay does.
    assert (metrics.appended if not redis_server.cluster else metrics.relayed)._value.get() == 3
    assert await _pending(redis_client, "kim") == []


def test_feed_settings_are_validated_at_start() -> None:
    """A retention under a minute, or a repair delay set within which a write may still be on its way, is refused
    with the settings named and the value it would take unset."""
    assert Settings.from_env({}).feed == FeedSettings(retention_s=86_400.0, repair_s=None)
    with pytest.raises(ConfigError, match="ENTITLEMENTS_FEED_RETENTION_S"):
        Settings.from_env({"ENTITLEMENTS_FEED_RETENTION_S": "30"})
    with pytest.raises(ConfigError, match="ENTITLEMENTS_FEED_REPAIR_S"):
        Settings.from_env({"ENTITLEMENTS_FEED_REPAIR_S": "soon"})
    env = {"ENTITLEMENTS_FEED_REPAIR_S": "2.5", "ENTITLEMENTS_INSECURE_DEV_MODE": "1"}
    settings = Settings.from_env({**env, "ENTITLEMENTS_REDIS_TIMEOUT_S": "2"})
    refused = (
        r"ENTITLEMENTS_FEED_REPAIR_S \(2.5 s\) must be above .*\(3 s: ENTITLEMENTS_REDIS_TIMEOUT_S.* unset for 5 s"
    )
    with pytest.raises(ConfigError, match=refused):
        settings.check_servable()
    raised = Settings.from_env({**env, "ENTITLEMENTS_FEED_REPAIR_S": "3.5"})
    raised.check_servable()
    assert raised.feed.repair_delay_s(raised.write_bound_s) == 3.5


@pytest.mark.parametrize(
    ("env", "write_bound_s", "repair_s"),
    [
        ({}, 3.0, 5.0),  # 2 s timeout + 1 s wait: the floor
        ({"ENTITLEMENTS_REDIS_TIMEOUT_S": "0.5"}, 0.75, 5.0),
        ({"ENTITLEMENTS_REDIS_TIMEOUT_S": "5"}, 6.0, 8.0),
        ({"ENTITLEMENTS_REDIS_TIMEOUT_S": "30", "ENTITLEMENTS_WRITE_DURABILITY_TIMEOUT_MS": "20000"}, 50.0, 52.0),
    ],
)
def test_an_unset_repair_delay_follows_the_longest_a_write_may_take(
    env: dict[str, str], write_bound_s: float, repair_s: float
) -> None:
    """Unset, the repair delay is the Redis timeout plus the durability wait plus a margin, at least 5 s: raising
    the Redis timeout alone starts."""
    settings = Settings.from_env({**env, "ENTITLEMENTS_INSECURE_DEV_MODE": "1"})
    settings.check_servable()
    assert settings.write_bound_s == write_bound_s
    assert settings.feed.repair_delay_s(settings.write_bound_s) == repair_s


async def test_a_service_with_a_long_redis_timeout_starts_with_its_repair_delay_above_it(
    service_factory: ServiceFactory, redis_server: StoreUnderTest
) -> None:
    """A service given a 5 s Redis timeout and no repair delay starts, and its repair waits 8 s (5 s, the 1 s
    durability wait, the margin) before it takes an intent for a lost relay."""
    service = await service_factory(**redis_server.settings, redis_timeout_s=5.0)
    assert service.feed is not None
    assert service.feed.repair.delay_s == 8.0
