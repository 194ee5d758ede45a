"""The Python client's entitlement cache against a scripted WatchEntitlements server: snapshots, versions, gaps,
resuming with a cursor, a lost history, the staleness clock, and the errors that stop it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import timedelta

import grpc
import pytest

from entitlements import (
    AsyncEntitlementCache,
    AsyncEntitlementsClient,
    AuthenticationError,
    CacheClosedError,
    CacheState,
    DeadlineExceededError,
    EntitlementsClient,
    FollowPolicy,
    InvalidArgumentError,
    NotCachedError,
    ServerError,
    StaleError,
)
from entitlements.client._cache_stream import ACCEPT_WAIT_S
from entitlements.v1 import entitlements_pb2 as pb
from tests.helpers.waiting import eventually
from tests.helpers.watch_script import (
    ScriptedStream,
    WatchScript,
    change,
    entitlement,
    heartbeat,
    scripted_server,
    snapshot,
)

FAST = FollowPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)


@dataclass
class Harness:
    script: WatchScript
    client: AsyncEntitlementsClient
    states: list[CacheState]

    def cache(self, players: list[str], **options: object) -> AsyncEntitlementCache:
        options.setdefault("policy", FAST)
        return self.client.entitlement_cache(players, on_state=self.states.append, **options)  # type: ignore[arg-type]

    async def started(
        self, players: list[str], *snapshots: pb.WatchEntitlementsResponse, **options: object
    ) -> tuple[AsyncEntitlementCache, ScriptedStream]:
        """A cache started on `players`, its first stream answered with `snapshots`, ready."""
        cache = self.cache(players, **options)
        await cache.start(wait=False)
        stream = await self.script.next_stream()
        await stream.request()
        stream.send(*snapshots, heartbeat("h0"))  # as the service opens a stream: snapshots, then a heartbeat
        await cache.wait_ready()
        return cache, stream


@pytest.fixture
async def harness() -> AsyncIterator[Harness]:
    script = WatchScript()
    async with scripted_server(script) as target, AsyncEntitlementsClient(target, api_key="k", project_id=7) as client:
        yield Harness(script, client, [])


async def test_a_cache_is_filled_by_the_snapshots_it_asks_for(harness: Harness) -> None:
    """The first message asks a snapshot of every player, with the project and a heartbeat of a third of the
    staleness bound; checks then answer from memory, in sku order, NotCached for anyone else."""
    cache = harness.cache(["p1", "p2"], max_staleness=6.0)
    entering = asyncio.create_task(cache.__aenter__())
    stream = await harness.script.next_stream()
    first = await stream.request()
    assert (first.project_id, first.cursor, sorted(first.add_user_ids), first.snapshot) == (7, "", ["p1", "p2"], True)
    assert first.heartbeat_interval.ToTimedelta().total_seconds() == 2.0
    assert stream.metadata["authorization"] == "Bearer k"
    await asyncio.sleep(0.05)
    assert not entering.done()  # waits for every snapshot
    stream.send(snapshot("p1", 3, entitlement("p1", "sword"), entitlement("p1", "axe")), snapshot("p2", 0))
    await asyncio.sleep(0.1)
    assert not entering.done()  # live from the stream's first heartbeat, which follows the opening snapshots
    stream.send(heartbeat("h0"))
    async with asyncio.timeout(20):
        assert await entering is cache
    try:
        assert cache.check("p1", "sword").active
        assert cache.check("p1", "sword").entitlement.sku == "sword"  # type: ignore[union-attr]
        assert cache.check("p2", "sword") == cache.check("p1", "shield")
        assert not cache.check("p2", "sword").active
        assert cache.check("p2", "sword").entitlement is None
        assert [item.sku for item in cache.entitlements("p1")] == ["axe", "sword"]
        with pytest.raises(NotCachedError, match="p3"):
            cache.check("p3", "sword")
        assert harness.states == [CacheState.CONNECTED]
        assert cache.counters.snapshots == 2
    finally:
        await cache.close()
    with pytest.raises(CacheClosedError):
        cache.check("p1", "sword")
    await asyncio.wait_for(stream.ended.wait(), 20)


async def test_changes_apply_in_version_order_and_repeats_are_ignored(harness: Harness) -> None:
    """A change at version + 1 applies (grant, then revoke); one at or below the version is ignored and counted."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 5))
    try:
        stream.send(change("p1", "sword", 6, "c6", entitlement("p1", "sword")))
        await eventually(lambda: cache.check("p1", "sword").active, what="the grant")
        stream.send(change("p1", "sword", 6, "c6", None), change("p1", "sword", 7, "c7", None))
        await eventually(lambda: not cache.check("p1", "sword").active, what="the revoke")
        assert (cache.counters.changes_applied, cache.counters.duplicates, cache.counters.gaps) == (2, 1, 0)
    finally:
        await cache.close()


async def test_a_version_gap_reads_the_player_again(harness: Harness) -> None:
    """A skipped version asks a fresh snapshot of that player; it is Stale until the snapshot arrives (other players
    answer), and a change newer than the snapshot that came before it is applied after it."""
    cache, stream = await harness.started(["p1", "p2"], snapshot("p1", 1), snapshot("p2", 1))
    try:
        stream.send(change("p1", "gem", 3, "c3", entitlement("p1", "gem", 3)))
        asked = await stream.request()
        assert (list(asked.add_user_ids), asked.snapshot, asked.cursor) == (["p1"], True, "")
        with pytest.raises(StaleError, match="read again"):
            cache.check("p1", "gem")
        assert not cache.check("p2", "gem").active
        stream.send(change("p1", "gem", 4, "c4", entitlement("p1", "gem", 9)))  # before the snapshot: kept
        stream.send(snapshot("p1", 3, entitlement("p1", "gem", 3)))
        await eventually(lambda: "p1" in cache._ready, what="the snapshot")
        assert cache.check("p1", "gem").entitlement.quantity == 9  # type: ignore[union-attr]
        assert (cache.counters.gaps, cache.counters.duplicates) == (1, 0)
    finally:
        await cache.close()


async def test_a_broken_stream_resumes_from_the_last_cursor(harness: Harness) -> None:
    """UNAVAILABLE: the cache refuses while resuming, reopens with the last cursor and its players without
    snapshots, and answers again once the new stream speaks."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        stream.send(change("p1", "sword", 1, "c1", entitlement("p1", "sword")), heartbeat("c1h"))
        await eventually(lambda: cache.check("p1", "sword").active, what="the grant")
        stream.fail(grpc.StatusCode.UNAVAILABLE)
        second = await harness.script.next_stream()
        resumed = await second.request()
        assert (resumed.cursor, list(resumed.add_user_ids), resumed.snapshot) == ("c1h", ["p1"], False)
        with pytest.raises(StaleError, match="resuming"):
            cache.check("p1", "sword")
        second.send(change("p1", "sword", 2, "c2", None))  # caught up before the stream's first heartbeat
        await eventually(lambda: cache.counters.changes_applied == 2, what="the change caught up")
        with pytest.raises(StaleError, match="resuming"):
            cache.check("p1", "sword")
        second.send(heartbeat("c2"))
        await eventually(lambda: cache.state is CacheState.CONNECTED, what="the resumed stream")
        assert not cache.check("p1", "sword").active
        assert cache.counters.reopenings == 1
        assert harness.states == [CacheState.CONNECTED, CacheState.RESUMING, CacheState.CONNECTED]
    finally:
        await cache.close()


async def test_a_stream_the_server_cancelled_is_reopened(harness: Harness) -> None:
    """CANCELLED from a stopping server, or the stream ending, is a break like UNAVAILABLE."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        stream.send(heartbeat("h1"))
        stream.fail(grpc.StatusCode.CANCELLED)
        second = await harness.script.next_stream()
        assert (await second.request()).cursor == "h1"
        second.finish()
        third = await harness.script.next_stream()
        assert (await third.request()).cursor == "h1"
        assert cache.counters.reopenings == 2
    finally:
        await cache.close()


async def test_out_of_range_reads_every_player_again(harness: Harness) -> None:
    """OUT_OF_RANGE: reopen without a cursor, a snapshot of every player; each is Stale until its snapshot replaces
    its state."""
    cache, stream = await harness.started(
        ["p1", "p2"], snapshot("p1", 4, entitlement("p1", "sword")), snapshot("p2", 0)
    )
    try:
        stream.send(heartbeat("old"))
        await eventually(lambda: cache._cursor == "old", what="the heartbeat")
        stream.fail(grpc.StatusCode.OUT_OF_RANGE)
        second = await harness.script.next_stream()
        again = await second.request()
        assert (again.cursor, sorted(again.add_user_ids), again.snapshot) == ("", ["p1", "p2"], True)
        second.send(snapshot("p2", 9), heartbeat("h1"))
        await eventually(lambda: cache.state is CacheState.CONNECTED, what="p2's snapshot and the heartbeat")
        with pytest.raises(StaleError):
            cache.check("p1", "sword")
        assert not cache.check("p2", "sword").active
        second.send(snapshot("p1", 20))
        await eventually(lambda: "p1" in cache._ready, what="p1's snapshot")
        assert not cache.check("p1", "sword").active  # replaced: the revoke it missed is in the snapshot
    finally:
        await cache.close()


async def test_silence_past_max_staleness_refuses_then_reopens(harness: Harness) -> None:
    """Nothing heard for max_staleness: checks raise Stale naming how long, the state says so, and the stream is
    opened again (a connection that went silent is presumed dead)."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0), max_staleness=2.0)
    try:
        stream.send(heartbeat("h1"))
        assert not cache.check("p1", "x").active
        await eventually(lambda: harness.states[-1] is not CacheState.CONNECTED, timeout_s=4, what="the stale state")
        with pytest.raises(StaleError) as raised:
            cache.check("p1", "x")
        assert raised.value.staleness_s >= 2.0
        assert cache.staleness() >= 2.0
        assert CacheState.STALE in harness.states
        second = await harness.script.next_stream()
        assert (await second.request()).cursor == "h1"
        second.send(heartbeat("h2"))
        await eventually(lambda: cache.state is CacheState.CONNECTED, what="the reopened stream")
        assert not cache.check("p1", "x").active
    finally:
        await cache.close()


async def test_a_busy_event_loop_cannot_make_the_cache_answer_stale(harness: Harness) -> None:
    """The loop kept busy past max_staleness (no timer or message can run): checks made then already refuse, because
    freshness is kept by a thread of its own."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0), max_staleness=2.0)
    try:
        stream.send(heartbeat("h"))
        await eventually(lambda: cache._cursor == "h", what="the heartbeat")
        assert not cache.check("p1", "x").active
        time.sleep(3.0)  # noqa: ASYNC251  # the point: the event loop does nothing meanwhile
        with pytest.raises(StaleError):
            cache.check("p1", "x")
    finally:
        await cache.close()


@pytest.mark.parametrize(
    ("code", "error"),
    [(grpc.StatusCode.UNAUTHENTICATED, AuthenticationError), (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError)],
)
async def test_an_error_no_reopening_cures_stops_the_cache(
    harness: Harness, code: grpc.StatusCode, error: type[Exception]
) -> None:
    """UNAUTHENTICATED or INVALID_ARGUMENT: no reopening; every later check raises the error."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        stream.fail(code)
        await eventually(lambda: cache.state is CacheState.FAILED, what="the failure")
        for _ in range(3):
            with pytest.raises(error):
                cache.check("p1", "sword")
        with pytest.raises(error):
            await cache.add_players(["p2"])
        await asyncio.sleep(0.2)
        assert harness.script.opened == 1
        assert cache.counters.reopenings == 0
    finally:
        await cache.close()
    assert cache.state is CacheState.CLOSED
    with pytest.raises(CacheClosedError):
        cache.check("p1", "sword")


async def test_entering_raises_the_error_that_stopped_the_cache(harness: Harness) -> None:
    """A key the service refuses for the project fails the `async with` itself."""
    cache = harness.cache(["p1"])
    entering = asyncio.create_task(cache.__aenter__())
    stream = await harness.script.next_stream()
    await stream.request()  # the project is in the first message: the service refuses once it has read it
    stream.fail(grpc.StatusCode.PERMISSION_DENIED)
    with pytest.raises(Exception, match="PERMISSION_DENIED"):
        await asyncio.wait_for(entering, 20)
    with pytest.raises(CacheClosedError):
        cache.check("p1", "x")


async def test_entering_gives_up_at_the_deadline(harness: Harness) -> None:
    """Snapshots that never come: entering fails with DeadlineExceeded after the timeout, and the cache is closed."""
    cache = harness.cache(["p1"], timeout_s=0.3)
    with pytest.raises(DeadlineExceededError, match="1 players without their snapshot"):
        await cache.__aenter__()
    assert cache.state is CacheState.CLOSED


async def test_players_are_added_and_removed_while_watching(harness: Harness) -> None:
    """An added player is NotCached until its snapshot (wait=True waits for it); a removed one is dropped at once
    and the server is told."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        adding = asyncio.create_task(cache.add_players(["p2", "p1"], wait=True))
        asked = await stream.request()
        assert (list(asked.add_user_ids), asked.snapshot) == (["p2"], True)
        with pytest.raises(NotCachedError, match="not arrived"):
            cache.check("p2", "x")
        stream.send(snapshot("p2", 2, entitlement("p2", "x")))
        await asyncio.wait_for(adding, 20)
        assert cache.check("p2", "x").active
        cache.remove_players(["p1", "nobody"])
        with pytest.raises(NotCachedError):
            cache.check("p1", "x")
        assert list((await stream.request()).remove_user_ids) == ["p1"]
        stream.send(change("p1", "x", 1, "c1", entitlement("p1", "x")))  # in flight when removed: ignored
        stream.send(heartbeat("h"))
        await eventually(lambda: cache._cursor == "h", what="the heartbeat")
        assert cache.players == frozenset({"p2"})
    finally:
        await cache.close()


async def test_players_added_while_the_stream_is_down_are_asked_on_reopening(harness: Harness) -> None:
    """Players added between two streams get their snapshot on the next opening; the others resume without."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        stream.send(heartbeat("h1"))
        await eventually(lambda: cache._cursor == "h1", what="the heartbeat")
        stream.fail(grpc.StatusCode.UNAVAILABLE)
        await eventually(lambda: cache.state is CacheState.RESUMING, what="the break")
        await cache.add_players(["p2"])
        second = await harness.script.next_stream()
        messages = [await second.request()]
        if messages[0].snapshot is False and "p2" not in messages[0].add_user_ids:
            messages.append(await second.request())
        by_flag = {m.snapshot: sorted(m.add_user_ids) for m in messages}
        assert by_flag == {False: ["p1"], True: ["p2"]}
        assert messages[0].cursor == "h1"
    finally:
        await cache.close()


async def test_a_time_limited_item_expires_in_the_cache_on_time(harness: Harness) -> None:
    """Active before its expires_at by the local clock, inactive from it on, with no change sent."""
    item = entitlement("p1", "vip", expires_in_s=3.0)  # room for a slow start on a loaded machine
    cache, stream = await harness.started(["p1"], snapshot("p1", 1, item))
    try:
        assert cache.check("p1", "vip").active
        assert cache.check("p1", "vip").entitlement.active  # type: ignore[union-attr]
        await asyncio.sleep(item.expires_at.ToDatetime().timestamp() - time.time() + 0.05)
        stream.send(heartbeat("h"))  # still fresh: the answer changes because of the clock alone
        assert not cache.check("p1", "vip").active
        assert not cache.entitlements("p1")[0].active
        assert cache.counters.changes_applied == 0
    finally:
        await cache.close()


async def test_bad_players_are_refused_before_anything_is_sent(harness: Harness) -> None:
    """A bad player id is InvalidArgument naming it, and neither the cache nor the stream changes."""
    with pytest.raises(InvalidArgumentError, match=r"players\[1\]: must be 1..256 bytes"):
        harness.cache(["ok", ""])
    with pytest.raises(ValueError, match="max_staleness"):
        harness.cache(["ok"], max_staleness=1.5)
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        with pytest.raises(InvalidArgumentError, match=r"user_ids\[0\]: must not contain control characters"):
            await cache.add_players(["a\nb"])
        with pytest.raises(InvalidArgumentError, match="user_ids: must be a list"):
            await cache.add_players("p2")
        assert cache.players == frozenset({"p1"})
        assert stream.requests.empty()
    finally:
        await cache.close()


async def test_a_service_that_sends_its_headers_only_with_its_first_answer_is_written_to_after_a_wait() -> None:
    """The cache writes its first message once the service accepted the stream (its response headers); a service
    of an earlier version sends them only with its first answer, which waits for that message: the cache writes
    anyway after `ACCEPT_WAIT_S` and fills as usual."""
    script = WatchScript(early_headers=False)
    async with scripted_server(script) as target, AsyncEntitlementsClient(target, api_key="k", project_id=7) as client:
        cache = client.entitlement_cache(["p1"], policy=FAST)
        entering = asyncio.create_task(cache.__aenter__())
        stream = await script.next_stream()
        started = time.monotonic()
        first = await stream.request()
        assert time.monotonic() - started >= ACCEPT_WAIT_S * 0.9
        assert list(first.add_user_ids) == ["p1"]
        stream.send(snapshot("p1", 0), heartbeat("h0"))
        try:
            assert await asyncio.wait_for(entering, 20) is cache
            assert not cache.check("p1", "sword").active
        finally:
            await cache.close()


async def test_the_blocking_client_has_the_same_cache_on_a_thread() -> None:
    """EntitlementsClient.entitlement_cache: the same stream and rules, run on a thread; checks from any thread."""
    script = WatchScript()
    async with scripted_server(script) as target:
        with EntitlementsClient(target, api_key="k", project_id=3) as client:
            cache = client.entitlement_cache(["p1"], policy=FAST)
            entering = asyncio.create_task(asyncio.to_thread(cache.__enter__))
            stream = await script.next_stream()
            first = await stream.request()
            assert (first.project_id, list(first.add_user_ids), first.snapshot) == (3, ["p1"], True)
            assert stream.metadata["authorization"] == "Bearer k"
            stream.send(snapshot("p1", 0), heartbeat("h0"))
            assert await asyncio.wait_for(entering, 20) is cache
            try:
                assert not cache.check("p1", "sword").active
                stream.send(change("p1", "sword", 1, "c1", entitlement("p1", "sword")))
                await eventually(lambda: cache.check("p1", "sword").active, what="the grant")
                assert await asyncio.to_thread(cache.check, "p1", "sword") == cache.check("p1", "sword")
                adding = asyncio.create_task(asyncio.to_thread(cache.add_players, ["p2"], wait=True))
                assert list((await stream.request()).add_user_ids) == ["p2"]
                stream.send(snapshot("p2", 4))
                await asyncio.wait_for(adding, 20)
                await asyncio.to_thread(cache.remove_players, ["p1"])
                with pytest.raises(NotCachedError):
                    cache.check("p1", "sword")
                assert cache.counters.changes_applied == 1
            finally:
                await asyncio.to_thread(cache.close)
            with pytest.raises(CacheClosedError):
                cache.check("p2", "sword")
            await asyncio.wait_for(stream.ended.wait(), 20)


async def test_the_raw_watch_stream_is_one_call_the_caller_drives(harness: Harness) -> None:
    """watch_entitlements: the first message as asked, the messages as sent, players added and removed while it is
    open, a failure raised as the client's error, and no reopening."""
    ids = [f"p{i}" for i in range(10_001)]
    async with harness.client.watch_entitlements(
        user_ids=ids, snapshot=True, cursor="c0", heartbeat_interval=timedelta(seconds=2)
    ) as watch:
        stream = await harness.script.next_stream()
        first, second = await stream.request(), await stream.request()
        assert (first.project_id, first.cursor, len(first.add_user_ids), first.snapshot) == (7, "c0", 10_000, True)
        assert first.heartbeat_interval.ToTimedelta() == timedelta(seconds=2)
        assert (list(second.add_user_ids), second.snapshot, second.cursor) == (["p10000"], True, "")
        stream.send(snapshot("p1", 3), change("p1", "sword", 4, "c4", entitlement("p1", "sword")))
        assert (await anext(watch)).snapshot.version == 3
        assert (await anext(watch)).cursor == "c4"
        await watch.add_players(["q"], snapshot=True)
        await watch.remove_players(["p1"])
        added, removed = await stream.request(), await stream.request()
        assert (list(added.add_user_ids), added.snapshot) == (["q"], True)
        assert list(removed.remove_user_ids) == ["p1"]
        stream.fail(grpc.StatusCode.OUT_OF_RANGE)
        with pytest.raises(ServerError) as raised:
            await anext(watch)
        assert raised.value.code is grpc.StatusCode.OUT_OF_RANGE
        with pytest.raises(StopAsyncIteration):
            await anext(watch)
    async with harness.client.watch_entitlements(all_players=True) as watch:
        stream = await harness.script.next_stream()
        assert (await stream.request()).all_players
        await watch.aclose()
        assert [message async for message in watch] == []
    assert harness.script.opened == 2


async def test_a_player_removed_and_added_back_is_answered_from_the_last_snapshot_asked(harness: Harness) -> None:
    """Removed and added back while its first snapshot was on the way: the earlier snapshot (answering the first
    ask, from before the removal) is passed over; the player answers from the one asked last."""
    cache, stream = await harness.started(["p1"], snapshot("p1", 0))
    try:
        await cache.add_players(["p2"])
        cache.remove_players(["p2"])
        await cache.add_players(["p2"])
        asked = [await stream.request() for _ in range(3)]
        assert [(list(m.add_user_ids), list(m.remove_user_ids)) for m in asked] == [
            (["p2"], []),
            ([], ["p2"]),
            (["p2"], []),
        ]
        stream.send(snapshot("p2", 1, entitlement("p2", "gem")), heartbeat("h1"))
        await eventually(lambda: cache._cursor == "h1", what="the first snapshot")
        with pytest.raises(NotCachedError):
            cache.check("p2", "gem")
        stream.send(snapshot("p2", 2))
        await eventually(lambda: "p2" in cache._ready, what="the second snapshot")
        assert not cache.check("p2", "gem").active
        assert cache.counters.snapshots == 2  # p1's and p2's last
    finally:
        await cache.close()
