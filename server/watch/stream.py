"""One WatchEntitlements stream (`WatchStream`): its players, its position, and the messages it sends.

The stream's position (`cursor` on every change and heartbeat) is one stream id per partition: everything up to it
was sent or passed over. Opened with a cursor behind the tail's position, the stream first reads what it missed,
partition by partition (`FeedHistory.read`, which checks in the same step that nothing after the position was
trimmed), then takes the tail's batches; any entry at or below its position is skipped there, so the switch has no
gap and no duplicate.

A snapshot: the player is registered with the tail first, so its changes committed from then on wait in the
stream's queue; then its items and version are read in one step; the snapshot is sent, and the player's changes
whose version is at most the snapshot's are never sent after it (`_floors`), whether they come from the queue or
from a catch-up read.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import TYPE_CHECKING

from google.protobuf.timestamp_pb2 import Timestamp

from core.clock import now_ms
from core.feed import feed_keys
from entitlements.v1 import entitlements_pb2 as pb
from server.errors import InvalidArgument
from server.metrics import WatchMetrics
from server.store import EntitlementRecord
from server.watch.cursor import Cursor, StreamId
from server.watch.history import FeedChange, FeedHistory, Snapshot, check_position
from server.watch.requests import MAX_PLAYERS_PER_STREAM, PlayerChange, WatchOpen, later
from server.watch.tail import FeedTail, Subscriber

if TYPE_CHECKING:
    from server.watch.watches import Watches

#: Entries one catch-up read takes from a partition.
CATCH_UP_COUNT = 500

EntitlementMessage = Callable[[EntitlementRecord, int], pb.Entitlement]


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


class WatchStream:
    """One stream: `run()` yields its messages until the caller leaves or an error ends it.

    Args:
        watches: the replica's watches (tails, settings, history).
        project_id: the stream's project.
        opened: the first message, checked.
        requests: the caller's later messages.
        entitlement: makes the Entitlement message of a record, `active` evaluated at the given time.
    """

    def __init__(
        self,
        watches: Watches,
        project_id: int,
        opened: WatchOpen,
        requests: AsyncIterator[pb.WatchEntitlementsRequest],
        entitlement: EntitlementMessage,
    ) -> None:
        self._watches = watches
        self._history: FeedHistory = watches.history
        self._metrics: WatchMetrics = watches.metrics
        self._project_id = project_id
        self._feed_id = opened.cursor.feed_id if opened.cursor is not None else ""
        self._opened = opened
        self._requests = requests
        self._entitlement = entitlement
        self._subscriber = Subscriber(all_players=opened.all_players, max_queued=watches.settings.max_queued)
        self._players: set[str] = set()
        self._floors: dict[str, int] = {}
        self._control: deque[PlayerChange] = deque()
        self._position: list[StreamId] = []
        self._tail: FeedTail | None = None

    async def run(self) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        opened = self._opened
        subscriber = self._subscriber
        tail = self._tail = await self._watches.attach(self._project_id, subscriber)
        self._feed_id = self._feed_id or tail.feed_id
        reader: asyncio.Task[None] | None = None
        try:
            joined = subscriber.passed
            self._position = list(opened.cursor.positions if opened.cursor is not None else joined)
            async for message in self._change_players(opened.players):
                yield message
            reader = asyncio.get_running_loop().create_task(self._read_requests())
            if opened.cursor is not None:
                async for message in self._catch_up(joined):
                    yield message
            # Once caught up (not before: a cache takes the first heartbeat to mean "current"), and at once when
            # there was nothing to catch up: the caller has a position to resume from even if nothing happens for a
            # while.
            yield self._heartbeat()
            async for message in self._follow():
                yield message
        finally:
            if reader is not None:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await reader
            tail.detach(subscriber, self._players)

    async def _follow(self) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Sends the tail's changes, answers the caller's later messages, and beats when idle."""
        subscriber = self._subscriber
        loop = asyncio.get_running_loop()
        interval = self._opened.heartbeat_s
        deadline = loop.time() + interval
        while True:
            # Cleared before looking: whatever arrives from here on sets it again.
            subscriber.wake.clear()
            if subscriber.error is not None:
                raise subscriber.error
            if self._control:
                async for message in self._change_players(self._control.popleft()):
                    yield message
                deadline = loop.time() + interval
                continue
            changes = subscriber.take()
            if changes is not None:
                sent = False
                for change in changes:
                    passed = self._pass(change)
                    if passed is not None:
                        sent = True
                        yield passed
                if sent:
                    deadline = loop.time() + interval
                elif loop.time() >= deadline:
                    # Only changes it may not send (at or below a snapshot's version) for a whole interval.
                    yield self._heartbeat()
                    deadline = loop.time() + interval
                continue
            # Everything offered was sent: the tail's position is the stream's.
            self._advance(subscriber.passed)
            wait_s = deadline - loop.time()
            if wait_s <= 0:
                yield self._heartbeat()
                deadline = loop.time() + interval
                continue
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait_s):
                    await subscriber.wake.wait()

    async def _catch_up(self, joined: tuple[StreamId, ...]) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Sends what the cursor's position missed, up to where the stream joined the tail."""
        for keys in feed_keys(self._project_id):
            partition = keys.partition
            while self._position[partition] < joined[partition]:
                if self._subscriber.error is not None:
                    raise self._subscriber.error
                after = self._position[partition]
                state, changes, last = await self._history.read(keys, after, joined[partition], CATCH_UP_COUNT)
                self._metrics.catch_up_reads.inc()
                # Trimmed since the cursor was checked: what followed `after` is gone (OUT_OF_RANGE).
                check_position(state, after)
                for change in changes:
                    message = self._pass(change)
                    if message is not None:
                        yield message
                self._position[partition] = joined[partition] if last is None else max(last, after)
                if last is None:
                    break

    def _pass(self, change: FeedChange) -> pb.WatchEntitlementsResponse | None:
        """Moves the position past `change`; its message when the stream sends it (None: skipped)."""
        partition = change.partition
        if change.entry_id <= self._position[partition]:
            return None  # already passed (the switch from catching up to the tail)
        self._position[partition] = change.entry_id
        entry = change.entry
        watched = self._opened.all_players or entry.user_id in self._players
        if not watched or entry.version <= self._floors.get(entry.user_id, 0):
            return None
        message = pb.EntitlementChange(
            user_id=entry.user_id,
            sku=entry.sku,
            version=entry.version,
            operation=entry.operation,
            changed_at=_timestamp(entry.at_ms),
        )
        if change.record is not None:
            message.entitlement.CopyFrom(self._entitlement(change.record, entry.at_ms))
        self._metrics.changes.inc()
        return pb.WatchEntitlementsResponse(change=message, cursor=self._cursor())

    async def _change_players(self, change: PlayerChange) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        """Removes then adds players; sends the added ones' snapshots when asked."""
        tail = self._tail
        assert tail is not None
        removed = [user_id for user_id in dict.fromkeys(change.remove) if user_id in self._players]
        for user_id in removed:
            self._players.discard(user_id)
            self._floors.pop(user_id, None)
        tail.unwatch(self._subscriber, removed)
        added = list(dict.fromkeys(change.add))
        new = [user_id for user_id in added if user_id not in self._players]
        if len(self._players) + len(new) > MAX_PLAYERS_PER_STREAM:
            raise InvalidArgument(
                "add_user_ids", f"would make the stream watch more than {MAX_PLAYERS_PER_STREAM:,} players"
            )
        # Registered before the snapshot is read: changes committed from now on wait in the queue.
        self._players.update(new)
        tail.watch(self._subscriber, new)
        if not (change.snapshot and added):
            return
        snapshots = await self._history.snapshots(self._project_id, added)
        for snapshot in snapshots:
            self._floors[snapshot.user_id] = snapshot.version
            self._metrics.snapshots.inc()
            yield pb.WatchEntitlementsResponse(snapshot=self._snapshot(snapshot))

    def _snapshot(self, snapshot: Snapshot) -> pb.PlayerSnapshot:
        now = now_ms()
        return pb.PlayerSnapshot(
            user_id=snapshot.user_id,
            entitlements=[self._entitlement(record, now) for record in snapshot.records],
            version=snapshot.version,
        )

    async def _read_requests(self) -> None:
        """Takes the caller's later messages; a bad one ends the stream (InvalidArgument naming the field)."""
        try:
            async for request in self._requests:
                self._control.append(later(request, all_players=self._opened.all_players))
                self._subscriber.wake.set()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self._subscriber.fail(exc)

    def _advance(self, passed: tuple[StreamId, ...]) -> None:
        position = self._position
        for partition, entry_id in enumerate(passed):
            if entry_id > position[partition]:
                position[partition] = entry_id

    def _cursor(self) -> str:
        return Cursor(self._project_id, self._feed_id, tuple(self._position)).encode()

    def _heartbeat(self) -> pb.WatchEntitlementsResponse:
        return pb.WatchEntitlementsResponse(heartbeat=pb.Heartbeat(sent_at=_timestamp(now_ms())), cursor=self._cursor())
