"""WatchEntitlements end to end: the real service on a real Valkey (single and cluster), streams opened through
gRPC. Changes are committed as the store and the feed's relay leave them (`tests.helpers.watch.Feed`)."""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import replace
from typing import Any

import grpc
import pytest

from core.connections import RedisClient
from core.feed import FEED_PARTITIONS, FeedKeys, feed_id_key, partition_of
from server.app import Service
from server.embedded import EmbeddedRedis
from server.watch.cursor import Cursor, parse_id
from server.watch.settings import WatchSettings
from tests.helpers.services import PROJECT, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest, node_infos
from tests.helpers.watch import Feed, Watcher, versions, watch_channel, watch_service_settings

OUT_OF_RANGE = grpc.StatusCode.OUT_OF_RANGE


@pytest.fixture
async def service(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """The service on the test's Redis, with the watch tests' Redis bound (`watch_service_settings`)."""
    return await service_factory(**watch_service_settings(redis_server))


@pytest.fixture
def feed(redis_client: RedisClient) -> Feed:
    return Feed(redis_client, PROJECT)


async def test_snapshot_then_changes(service: Service, feed: Feed) -> None:
    """A player added with `snapshot` gets what it holds now, in sku order, with its version; then each later change
    of it with the next version, the record after it, and a cursor."""
    await feed.commit("p1", "sword", 1)
    await feed.commit("p1", "gold", 5)
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["p1"], snapshot=True)
        snapshot = (await watcher.next_of("snapshot")).snapshot
        assert (snapshot.user_id, snapshot.version) == ("p1", 2)
        assert [(e.sku, e.quantity, e.active) for e in snapshot.entitlements] == [("gold", 5, True), ("sword", 1, True)]
        heartbeat = await watcher.next()
        assert heartbeat is not None
        assert heartbeat.WhichOneof("event") == "heartbeat"
        assert heartbeat.cursor
        await feed.commit("p1", "gold", 7)
        await feed.commit("p1", "sword", None, "revoke")
        first, second = await watcher.changes(2)
        assert (first.change.version, first.change.entitlement.quantity, first.change.operation) == (3, 7, "grant")
        assert first.cursor
        assert (second.change.version, second.change.operation) == (4, "revoke")
        assert not second.change.HasField("entitlement")
        assert second.cursor != first.cursor
        watcher.cancel()


async def test_players_added_and_removed_while_open(service: Service, feed: Feed) -> None:
    """Later messages add (with a snapshot) and remove players: only the watched players' changes come."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["p1"])
        await watcher.next_of("heartbeat")
        await feed.commit("p2", "gold", 1)
        await watcher.send(add_user_ids=["p2"], snapshot=True)
        snapshot = (await watcher.next_of("snapshot")).snapshot
        assert (snapshot.user_id, snapshot.version, len(snapshot.entitlements)) == ("p2", 1, 1)
        await feed.commit("p3", "gold", 1)
        await feed.commit("p1", "gold", 1)
        await feed.commit("p2", "gold", 2)
        received = await watcher.changes(2)
        assert sorted((m.change.user_id, m.change.version) for m in received) == [("p1", 1), ("p2", 2)]
        await watcher.send(remove_user_ids=["p1"])
        await feed.commit("p1", "gold", 2)
        await feed.commit("p2", "gold", 3)
        (last,) = await watcher.changes(1)
        assert (last.change.user_id, last.change.version) == ("p2", 3)
        watcher.cancel()


async def test_all_players(service: Service, feed: Feed) -> None:
    """A stream of all_players gets every player's changes, each player's in version order."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(all_players=True)
        await watcher.next_of("heartbeat")
        for index in range(3):
            for user in ("a", "b", "c", "d"):
                await feed.commit(user, "gold", index + 1)
        received = await watcher.changes(12)
        for user in ("a", "b", "c", "d"):
            assert versions(received, user) == [1, 2, 3]
        watcher.cancel()


async def test_resume_across_a_restart_has_no_gap_and_no_duplicate(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, feed: Feed
) -> None:
    """A stream reopened with the last cursor received, on a new service, gets exactly the changes that followed,
    those committed while no service ran included."""
    service = await service_factory(**watch_service_settings(redis_server))
    players = [f"player-{index}" for index in range(6)]
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=players, snapshot=True)
        for _ in players:
            await watcher.next_of("snapshot")
        for player in players:
            await feed.grants(player, 3)
        received = await watcher.changes(18)
        cursor = received[-1].cursor
        watcher.cancel()
    await service.stop(grace_s=0)
    for player in players:
        await feed.grants(player, 2)
    restarted = await service_factory(**watch_service_settings(redis_server))
    async with watch_channel(restarted) as channel:
        watcher = Watcher(channel)
        await watcher.send(cursor=cursor, add_user_ids=players)
        for player in players[:3]:
            await feed.grants(player, 1)
        resumed = await watcher.changes(15)
        watcher.cancel()
    for player in players:
        assert versions(received, player) + versions(resumed, player) == list(range(1, 6 + (player in players[:3])))
    assert sample(restarted, "entitlements_watch_catch_up_reads_total") >= 1


async def test_grant_racing_a_snapshot_is_neither_lost_nor_sent_twice(service: Service, feed: Feed) -> None:
    """Changes committed while players are being added with snapshots: after each snapshot, exactly the versions
    that follow it arrive, in order."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["seed"])
        await watcher.next_of("heartbeat")
        players = [f"racer-{index}" for index in range(20)]

        async def write() -> None:
            for round_ in range(10):
                for player in players:
                    await feed.commit(player, "gold", round_ + 1)

        writer = asyncio.create_task(write())
        for player in players:
            await watcher.send(add_user_ids=[player], snapshot=True)
            await asyncio.sleep(0.005)
        await writer
        seen: dict[str, list[int]] = {}
        floors: dict[str, int] = {}
        while sum(len(v) for v in seen.values()) + sum(floors.values()) < 200 or len(floors) < len(players):
            message = await watcher.next()
            assert message is not None
            event = message.WhichOneof("event")
            if event == "snapshot":
                floors[message.snapshot.user_id] = message.snapshot.version
                assert message.snapshot.user_id not in seen
            elif event == "change":
                seen.setdefault(message.change.user_id, []).append(message.change.version)
        for player in players:
            assert seen.get(player, []) == list(range(floors[player] + 1, 11)), player
        watcher.cancel()


async def test_cursors_that_cannot_resume(service: Service, feed: Feed, redis_client: RedisClient) -> None:
    """A cursor not issued here is INVALID_ARGUMENT naming `cursor`; one of another project, of another store (the
    feed id), or older than the history kept is OUT_OF_RANGE saying to read the players again."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["p1"])
        cursor = (await watcher.next_of("heartbeat")).cursor
        watcher.cancel()
    decoded = Cursor.decode(cursor, PROJECT)
    cases = {
        "garbage": ("%%%", grpc.StatusCode.INVALID_ARGUMENT, "cursor: is not a cursor this service issued"),
        "too long": ("A" * 4097, grpc.StatusCode.INVALID_ARGUMENT, "cursor: must be at most 4096"),
        "another project": (replace(decoded, project_id=PROJECT + 1).encode(), OUT_OF_RANGE, "another project"),
        "another store": (replace(decoded, feed_id="other").encode(), OUT_OF_RANGE, "another store"),
    }
    for name, (text, code, words) in cases.items():
        async with watch_channel(service) as channel:
            watcher = Watcher(channel)
            await watcher.send(cursor=text, add_user_ids=["p1"])
            status, details = await watcher.ended()
            assert status == code, name
            assert words in details, (name, details)
            if code == OUT_OF_RANGE:
                assert "read the players again (a snapshot) and watch without a cursor" in details
    # Trimmed past the cursor (retention): what followed it is gone.
    entries = await feed.grants("p1", 3)
    stream = FeedKeys(PROJECT, partition_of("p1")).stream
    newest: Any = await redis_client.xrevrange(stream, count=1)
    await redis_client.xtrim(stream, minid=newest[0][0], approximate=False)
    assert len(entries) == 3
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(cursor=cursor, add_user_ids=["p1"])
        status, details = await watcher.ended()
    assert status == OUT_OF_RANGE
    assert "older than the history kept" in details


async def test_heartbeats_keep_an_idle_stream_and_resume_after_what_they_passed(
    service: Service, feed: Feed, redis_client: RedisClient
) -> None:
    """An idle stream beats every `heartbeat_interval`; the heartbeat's cursor has passed other players' changes,
    so a stream resumed from it gets only what followed."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["quiet"], heartbeat_s=1)
        first = await watcher.next_of("heartbeat")
        busy = await feed.grants("busy", 3)
        stream = FeedKeys(PROJECT, partition_of("busy")).stream
        newest: Any = await redis_client.xrevrange(stream, count=1)
        last_busy = parse_id(newest[0][0])
        assert busy[-1].version == 3
        # Beats until one has passed the busy player's changes (the tail reads them within a beat or two).
        for _ in range(10):
            beat = await watcher.next(timeout_s=5.0)
            assert beat is not None
            assert beat.WhichOneof("event") == "heartbeat", beat
            cursor = beat.cursor
            if Cursor.decode(cursor, PROJECT).positions[partition_of("busy")] >= last_busy:
                break
        else:
            raise AssertionError("no heartbeat passed the other player's changes")
        assert cursor != first.cursor
        watcher.cancel()
    await feed.grants("busy", 1)  # version 4
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(cursor=cursor, all_players=True)
        (change,) = await watcher.changes(1)
        assert (change.change.user_id, change.change.version) == ("busy", 4)
        watcher.cancel()


async def _xreads(redis: RedisClient) -> int:
    total = 0
    for info in await node_infos(redis, "commandstats"):
        stats = info.get("cmdstat_xread")
        if stats:
            total += int(stats["calls"])
    return total


async def test_streams_share_one_read_loop(
    service: Service, feed: Feed, redis_client: RedisClient, redis_server: StoreUnderTest
) -> None:
    """100 streams of one project on one replica: every change reaches each, read from Redis by one loop (a few
    XREADs per change, not one per stream)."""
    async with watch_channel(service) as channel:
        watchers = [Watcher(channel) for _ in range(100)]
        for index, watcher in enumerate(watchers):
            await watcher.send(add_user_ids=[f"p{index % 10}", "everyone"])
        for watcher in watchers:
            await watcher.next_of("heartbeat")
        before = await _xreads(redis_client)
        reads_before = sample(service, "entitlements_watch_feed_reads_total")
        started = time.monotonic()
        for version in range(5):
            await feed.commit("everyone", "gold", version + 1)
            for watcher in watchers:
                (change,) = await watcher.changes(1)
                assert change.change.version == version + 1
        xreads = await _xreads(redis_client) - before
        feed_reads = sample(service, "entitlements_watch_feed_reads_total") - reads_before
        # Each reader (one; on a cluster, where one XREAD cannot span slots, one per partition) reads once per
        # commit that wakes it, and once per second while idle (its block): never once per stream.
        readers = FEED_PARTITIONS if redis_server.cluster else 1
        allowed = readers * (5 + 2 + math.ceil(time.monotonic() - started))
        assert xreads <= allowed, (xreads, allowed)
        assert feed_reads <= allowed, (feed_reads, allowed)
        assert xreads < 100 * 5
        assert sample(service, "entitlements_watch_streams") == 100
        for watcher in watchers:
            watcher.cancel()


async def test_limits(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> None:
    """Past ENTITLEMENTS_WATCH_MAX_STREAMS a stream is RESOURCE_EXHAUSTED; more than 10,000 ids in a message, a
    later message setting a first-only field, or a bad id are INVALID_ARGUMENT naming the field."""
    service = await service_factory(**watch_service_settings(redis_server), watch=WatchSettings(max_streams=2))
    async with watch_channel(service) as channel:
        open_ = [Watcher(channel) for _ in range(2)]
        for watcher in open_:
            await watcher.send(all_players=True)
            await watcher.next_of("heartbeat")
        refused = Watcher(channel)
        await refused.send(all_players=True)
        status, details = await refused.ended()
        assert status == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "ENTITLEMENTS_WATCH_MAX_STREAMS" in details
        for watcher in open_:
            watcher.cancel()
        await asyncio.sleep(0.2)
        cases: list[tuple[dict[str, Any], dict[str, Any] | None, str]] = [
            ({"add_user_ids": [f"p{i}" for i in range(10_001)]}, None, "add_user_ids: has 10001 ids"),
            ({"add_user_ids": ["ok", ""]}, None, "add_user_ids[1]: "),
            ({"all_players": True, "add_user_ids": ["p"]}, None, "add_user_ids: must be empty"),
            ({"add_user_ids": ["p"], "heartbeat_s": 301}, None, "heartbeat_interval: must be from 1 s to 5 minutes"),
            ({"add_user_ids": ["p"]}, {"cursor": "x"}, "cursor: may be set in the stream's first message only"),
            ({"add_user_ids": ["p"]}, {"add_user_ids": ["\x00"]}, "add_user_ids[0]: "),
            ({"all_players": True}, {"add_user_ids": ["p"]}, "add_user_ids: must stay empty"),
        ]
        for first, second, words in cases:
            watcher = Watcher(channel)
            await watcher.send(**first)
            if second is not None:
                await watcher.next_of("heartbeat")
                await watcher.send(**second)
            status, details = await watcher.ended()
            assert status == grpc.StatusCode.INVALID_ARGUMENT, (first, second, details)
            assert details.startswith(words), details


async def test_a_stream_that_is_not_read_is_ended_and_resumes(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, feed: Feed
) -> None:
    """A caller that stops reading does not make the replica hold its changes without bound: past
    ENTITLEMENTS_WATCH_MAX_QUEUED the stream ends UNAVAILABLE, and reopening it with the last cursor received
    catches up with no gap and no duplicate."""
    service = await service_factory(**watch_service_settings(redis_server), watch=WatchSettings(max_queued=100))
    async with watch_channel(service, small_window=True) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["hog"])
        await watcher.next_of("heartbeat")
        await feed.grants("hog", 600)
        received = []

        async def read_all() -> None:
            while (message := await watcher.next()) is not None:
                if message.WhichOneof("event") == "change":
                    received.append(message)

        with pytest.raises(grpc.aio.AioRpcError) as ended:
            await read_all()
        assert ended.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "fell more than 100 changes behind" in (ended.value.details() or "")
        assert len(received) < 600
        rest = Watcher(channel)
        await rest.send(cursor=received[-1].cursor, add_user_ids=["hog"])
        resumed = await rest.changes(600 - len(received))
        assert versions(received + resumed, "hog") == list(range(1, 601))
        rest.cancel()


async def test_feed_id_is_made_once(service: Service, redis_client: RedisClient) -> None:
    """The project's feed id is made on first use and kept: every stream's cursor carries the same."""
    ids = set()
    async with watch_channel(service) as channel:
        for _ in range(3):
            watcher = Watcher(channel)
            await watcher.send(all_players=True)
            ids.add(Cursor.decode((await watcher.next_of("heartbeat")).cursor, PROJECT).feed_id)
            watcher.cancel()
    stored = await redis_client.get(feed_id_key(PROJECT))
    assert stored is not None
    assert ids == {stored.decode() if isinstance(stored, bytes) else stored}


async def test_redis_stopped_and_started(service: Service, embedded_server: EmbeddedRedis, feed: Feed) -> None:
    """Redis lost: open streams end UNAVAILABLE and new ones are UNAVAILABLE; once it is back, the stream reopened
    with the last cursor gets what was committed meanwhile, nothing twice."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(add_user_ids=["p1"])
        await watcher.next_of("heartbeat")
        await feed.grants("p1", 2)
        received = await watcher.changes(2)
        await embedded_server.stop()
        status, details = await watcher.ended()
        assert status == grpc.StatusCode.UNAVAILABLE, details
        refused = Watcher(channel)
        await refused.send(cursor=received[-1].cursor, add_user_ids=["p1"])
        status, _ = await refused.ended()
        assert status == grpc.StatusCode.UNAVAILABLE
        await embedded_server.start()
        await feed.grants("p1", 3)  # versions 3..5: the store kept the version across the restart
        resumed = Watcher(channel)
        await resumed.send(cursor=received[-1].cursor, add_user_ids=["p1"])
        changes = await resumed.changes(3)
        assert versions(received + changes, "p1") == [1, 2, 3, 4, 5]
        resumed.cancel()


async def test_shutdown_ends_streams_unavailable(service: Service, feed: Feed) -> None:
    """A replica shutting down ends its watch streams UNAVAILABLE at once (their callers resume elsewhere)."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.send(all_players=True)
        await watcher.next_of("heartbeat")
        stopping = asyncio.create_task(service.stop(grace_s=5))
        status, details = await watcher.ended(timeout_s=3.0)
        await stopping
    assert status == grpc.StatusCode.UNAVAILABLE
    assert "shutting down" in details


async def test_a_stream_closed_before_its_first_message(service: Service) -> None:
    """A caller that closes its side without a message is INVALID_ARGUMENT naming the request; one without an API
    key is UNAUTHENTICATED before any message is read."""
    async with watch_channel(service) as channel:
        watcher = Watcher(channel)
        await watcher.call.done_writing()
        status, details = await watcher.ended()
        assert status == grpc.StatusCode.INVALID_ARGUMENT
        assert details == "request: the stream was closed before its first message"
        stranger = Watcher(channel, key="not-a-key")
        status, _ = await stranger.ended()
        assert status == grpc.StatusCode.UNAUTHENTICATED
