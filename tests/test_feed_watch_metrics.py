"""The metrics the change feed's alerts stand on (deploy/prometheus/alerts.yml, docs/OPERATIONS.md): why each
WatchEntitlements stream ended (`entitlements_watch_streams_ended_total{reason}`), on the real service through
gRPC, and the age of the oldest write intent the repair found (`entitlements_feed_oldest_intent_age_seconds`),
including intents the repair cannot clear and partitions whose relay fails."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import grpc
import pytest
import structlog
from prometheus_client import CollectorRegistry

from core.clock import now_ms
from core.connections import RedisClient
from core.errors import StoreUnavailable
from core.feed import FeedEntry, FeedKeys, partition_of
from core.keys import UserKeys
from server.app import Service
from server.embedded import EmbeddedRedis
from server.feed import FeedRelay, FeedRepair
from server.metrics import WATCH_END_REASONS, FeedMetrics
from server.store import CONSUMABLE, EntitlementStore, GrantCommand
from server.watch.cursor import Cursor
from server.watch.settings import WatchSettings
from tests.helpers.services import PROJECT, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from tests.helpers.watch import Feed, Watcher, watch_channel, watch_service_settings

ENDED = "entitlements_watch_streams_ended_total"
DELAY_S = 5.0


def ended(service: Service) -> dict[str, float]:
    """The streams ended so far, by reason (every reason, 0 included)."""
    return {reason: sample(service, ENDED, reason=reason) for reason in WATCH_END_REASONS}


async def ended_with(service: Service, before: dict[str, float], **expected: int) -> None:
    """Waits until exactly `expected` streams more than `before` have ended, by reason (the count lands when the
    service has finished the stream, just after its caller saw the status)."""
    wanted = {reason: before[reason] + expected.get(reason, 0) for reason in WATCH_END_REASONS}
    await eventually(lambda: ended(service) == wanted, what=f"streams ended {expected}")


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """The service on the test's Redis, with the watch tests' Redis bound (`watch_service_settings`)."""
    return await service_factory(**watch_service_settings(redis_server))


async def test_every_end_reason_and_the_oldest_intent_are_exported_at_zero(service: Service) -> None:
    """A fresh service exports every end reason and the oldest intent's age at 0, so that a rate or an alert sees
    the first stream that ends."""
    for reason in WATCH_END_REASONS:
        assert service.registry.get_sample_value(ENDED, {"reason": reason}) == 0.0, reason
    assert service.registry.get_sample_value("entitlements_feed_oldest_intent_age_seconds") == 0.0


async def test_streams_ended_by_their_caller_a_cursor_or_an_invalid_message(
    service_factory: ServiceFactory, redis_server: StoreUnderTest
) -> None:
    """A stream its caller cancels is `caller`; a cursor of another store `out_of_range`; an invalid later message
    `invalid_argument`; a stream refused at ENTITLEMENTS_WATCH_MAX_STREAMS is counted as refused, not as ended."""
    service = await service_factory(**watch_service_settings(redis_server), watch=WatchSettings(max_streams=2))
    before = ended(service)
    async with watch_channel(service) as channel:
        first = Watcher(channel)
        await first.send(add_user_ids=["p1"])
        cursor = (await first.next_of("heartbeat")).cursor
        first.cancel()
        await ended_with(service, before, caller=1)

        stranger = Watcher(channel)
        await stranger.send(cursor=replace(Cursor.decode(cursor, PROJECT), feed_id="other").encode(), all_players=True)
        assert (await stranger.ended())[0] == grpc.StatusCode.OUT_OF_RANGE
        await ended_with(service, before, caller=1, out_of_range=1)

        invalid = Watcher(channel)
        await invalid.send(add_user_ids=["p1"])
        await invalid.next_of("heartbeat")
        await invalid.send(cursor="x")
        assert (await invalid.ended())[0] == grpc.StatusCode.INVALID_ARGUMENT
        await ended_with(service, before, caller=1, out_of_range=1, invalid_argument=1)

        held = [Watcher(channel) for _ in range(2)]
        for watcher in held:
            await watcher.send(all_players=True)
            await watcher.next_of("heartbeat")
        refused = Watcher(channel)
        await refused.send(all_players=True)
        assert (await refused.ended())[0] == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert sample(service, "entitlements_watch_streams_refused_total") == 1
        for watcher in held:
            watcher.cancel()
        await ended_with(service, before, caller=3, out_of_range=1, invalid_argument=1)
    assert sample(service, "entitlements_watch_streams") == 0


async def test_a_slow_reader_is_counted_fell_behind(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: RedisClient
) -> None:
    """A caller that stops reading is ended as `fell_behind` once ENTITLEMENTS_WATCH_MAX_QUEUED changes wait."""
    service = await service_factory(**watch_service_settings(redis_server), watch=WatchSettings(max_queued=100))
    before = ended(service)
    async with watch_channel(service, small_window=True) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["hog"])
        await watcher.next_of("heartbeat")
        await Feed(redis_client, PROJECT).grants("hog", 600)
        status, details = await watcher.ended(timeout_s=20.0)
    assert status == grpc.StatusCode.UNAVAILABLE, details
    await ended_with(service, before, fell_behind=1)


async def test_redis_lost_then_a_shutdown(service: Service, embedded_server: EmbeddedRedis) -> None:
    """Redis lost under an open stream is `store_unavailable`, and so is a stream opened while it is down; a
    replica shutting down ends its streams as `stopping`."""
    before = ended(service)
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["p1"])
        await watcher.next_of("heartbeat")
        await embedded_server.stop()
        assert (await watcher.ended())[0] == grpc.StatusCode.UNAVAILABLE
        refused = Watcher(channel)
        await refused.send(add_user_ids=["p1"])
        assert (await refused.ended())[0] == grpc.StatusCode.UNAVAILABLE
        await ended_with(service, before, store_unavailable=2)
        await embedded_server.start()
        last = Watcher(channel)
        await last.send(all_players=True)
        await last.next_of("heartbeat")
        stopping = asyncio.create_task(service.stop(grace_s=5))
        assert (await last.ended(timeout_s=5.0))[0] == grpc.StatusCode.UNAVAILABLE
        await stopping
    await ended_with(service, before, store_unavailable=2, stopping=1)


class FailingRelay(FeedRelay):
    """A relay whose every relay call fails as Redis down would (trimming still works)."""

    async def relay(self, keys: FeedKeys, changes: Sequence[FeedEntry], members: Sequence[str]) -> int:
        raise StoreUnavailable("the relay's Redis did not answer")


def _repair(redis: RedisClient, relay: FeedRelay, metrics: FeedMetrics) -> FeedRepair:
    return FeedRepair(redis, relay, delay_s=DELAY_S, timeout_s=2.0, metrics=metrics, projects=[PROJECT])


def _relay(redis: RedisClient, metrics: FeedMetrics, kind: type[FeedRelay] = FeedRelay) -> FeedRelay:
    return kind(redis, timeout_s=2.0, retention_s=86_400.0, metrics=metrics)


async def _intent(redis: RedisClient, user_id: str, at_ms: int, prefix: str = "0123456789abcdef") -> str:
    """Records a write's intent for `user_id` as the writer does before a write on a cluster (its relay never came)."""
    member = f"{prefix}:{user_id}"
    await redis.zadd(FeedKeys(PROJECT, partition_of(user_id)).pending, {member: at_ms})
    return member


def _age(metrics: FeedMetrics) -> float:
    return float(metrics.oldest_intent._value.get())


async def test_the_oldest_stale_intent_is_reported_until_the_repair_clears_it(redis_client: RedisClient) -> None:
    """Intents younger than the repair delay are not stale (0); a pass reports the oldest stale one's age and how
    many there were, clears them (their players miss nothing), and the next pass reports 0."""
    metrics = FeedMetrics(CollectorRegistry())
    relay = _relay(redis_client, metrics)
    try:
        now = now_ms()
        await _intent(redis_client, "young", now - 1_000)
        repair = _repair(redis_client, relay, metrics)
        await repair.repair(now=now)
        assert (_age(metrics), metrics.pending._value.get()) == (0.0, 0.0)
        await _intent(redis_client, "old", now - 40_000)
        await _intent(redis_client, "older", now - 90_000)
        await repair.repair(now=now)
        assert _age(metrics) == 90.0
        assert metrics.pending._value.get() == 2
        await repair.repair(now=now)
        assert (_age(metrics), metrics.pending._value.get()) == (0.0, 0.0)
    finally:
        await relay.close(1.0)


async def test_an_intent_the_repair_cannot_clear_keeps_aging_and_is_logged(redis_client: RedisClient) -> None:
    """A player whose ledger lost an entry (removed by hand: the gap cannot be filled) keeps its intent: each pass
    reports it older, logs `feed_intent_overdue` with its partition past a minute, and relays nothing of it, until
    an operator takes the runbook's step."""
    metrics = FeedMetrics(CollectorRegistry())
    relay = _relay(redis_client, metrics)
    store = EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000)  # writes without the feed
    try:
        for number in (1, 2):
            await store.grant(GrantCommand(PROJECT, "eve", "gold", CONSUMABLE, 1, 0, f"k{number}"), "test")
        ledger = UserKeys(PROJECT, "eve").ledger
        oldest: Any = await redis_client.xrange(ledger, count=1)
        await redis_client.xdel(ledger, oldest[0][0])
        now = now_ms()
        await _intent(redis_client, "eve", now - 30_000)
        repair = _repair(redis_client, relay, metrics)
        with structlog.testing.capture_logs() as logs:
            assert await repair.repair(now=now) == 0
            assert _age(metrics) == 30.0
            assert not [line for line in logs if line["event"] == "feed_intent_overdue"]
            assert await repair.repair(now=now + 60_000) == 0
        assert _age(metrics) == 90.0
        assert metrics.pending._value.get() == 1
        (overdue,) = [line for line in logs if line["event"] == "feed_intent_overdue"]
        assert (overdue["project_id"], overdue["partition"], overdue["age_s"]) == (PROJECT, partition_of("eve"), 90.0)
        assert any(line["event"] == "feed_gap_unfillable" for line in logs)
        keys = FeedKeys(PROJECT, partition_of("eve"))
        assert await redis_client.zcard(keys.pending) == 1

        # The runbook's step (docs/OPERATIONS.md, "Feed changes not relayed"): let the feed jump over the missing
        # version. The next pass relays the rest and removes the intent (it reports what it found before relaying),
        # and the pass after it finds nothing.
        await redis_client.hset(keys.relayed, "eve", 1)
        assert await repair.repair(now=now + 65_000) == 1
        assert await redis_client.zcard(keys.pending) == 0
        assert await repair.repair(now=now + 70_000) == 0
        assert (_age(metrics), metrics.pending._value.get()) == (0.0, 0.0)
        entries: Any = await redis_client.xrange(keys.stream)
        assert [(fields[b"u"], fields[b"v"]) for _, fields in entries] == [(b"eve", b"2")]
    finally:
        await relay.close(1.0)


async def test_a_partition_whose_relay_fails_still_reports_its_intents(redis_client: RedisClient) -> None:
    """Redis failing the repair's relay of a partition: the pass still reports that partition's stale intents and
    the oldest one's age (the alert must see a repair that keeps failing), and the intent stays for the next pass."""
    metrics = FeedMetrics(CollectorRegistry())
    relay = _relay(redis_client, metrics, FailingRelay)
    try:
        now = now_ms()
        member = await _intent(redis_client, "ivy", now - 20_000)
        repair = _repair(redis_client, relay, metrics)
        assert await repair.repair(now=now) == 0
        assert (_age(metrics), metrics.pending._value.get()) == (20.0, 1.0)
        pending = await redis_client.zrange(FeedKeys(PROJECT, partition_of("ivy")).pending, 0, -1)
        assert [reply.decode() if isinstance(reply, bytes) else reply for reply in pending] == [member]
    finally:
        await relay.close(1.0)
