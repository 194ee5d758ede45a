"""What a watch reads from Redis besides the shared tail: the project's feed id, the state of a partition (to check
a cursor and to start a tail), the entries a resuming stream missed, and players' snapshots.

Every read is bounded by the Redis timeout and fails as `StoreUnavailable` (UNAVAILABLE) when Redis does not answer.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog
from redis.commands.core import AsyncScript

from core import scripts
from core.connections import RedisClient, bounded
from core.feed import FeedEntry, FeedKeys, feed_id_key, feed_keys
from core.keys import UserKeys
from server.errors import OutOfRange
from server.store import EntitlementRecord
from server.watch.cursor import REREAD, ZERO, Cursor, StreamId, format_id, parse_id

log = structlog.get_logger("server.watch")

#: Players whose snapshots go in one pipeline.
SNAPSHOT_BATCH = 500
_SNAPSHOT_SOURCE = scripts.lua_source("server", "player_snapshot.lua")
_RANGE_SOURCE = scripts.lua_source("server", "feed_range.lua")


@dataclass(frozen=True, slots=True)
class FeedChange:
    """One entry of a partition of the feed, with its record decoded (None when the sku was removed)."""

    partition: int
    entry_id: StreamId
    entry: FeedEntry
    record: EntitlementRecord | None


@dataclass(frozen=True, slots=True)
class PartitionState:
    """What tells whether a partition still holds everything after a position: its last generated id, the greatest
    id deleted from it (XDEL; `ZERO` for none), its first entry's id (`ZERO` when empty), how many entries it holds
    and how many were ever added (the difference were trimmed or deleted)."""

    last: StreamId
    deleted: StreamId
    first: StreamId
    length: int
    added: int

    def resumable_after(self, position: StreamId) -> bool:
        """Whether every entry after `position` is still held. Trimming (the writer's retention) removes the oldest
        entries: with some removed, a position before the first entry held may have been followed by one of them,
        so it counts as too old (at worst a position whose own entry was the last one trimmed, of a partition
        that was then quiet for the retention)."""
        if position < self.deleted:
            return False
        if self.added == self.length:
            return True  # nothing ever removed
        if self.length == 0:
            return position == self.last
        return position >= self.first


@dataclass(frozen=True, slots=True)
class Snapshot:
    """What one player held at one moment, in sku order, and its version then."""

    user_id: str
    records: tuple[EntitlementRecord, ...]
    version: int


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def parse_entries(partition: int, raw: Sequence[Any]) -> tuple[list[FeedChange], StreamId | None]:
    """Feed entries as XRANGE/XREAD (or a script) return them, and the last id among them (None when there are
    none). An entry that is not a feed entry is skipped (its id still counts as passed)."""
    changes: list[FeedChange] = []
    last: StreamId | None = None
    for entry_id, fields in raw:
        last = parse_id(entry_id)
        if isinstance(fields, list):  # from a script: the fields flat, as Redis sends them
            fields = dict(zip(fields[::2], fields[1::2], strict=True))
        try:
            entry = FeedEntry.from_fields({_text(k): _text(v) for k, v in (fields or {}).items()})
            record = (
                EntitlementRecord.decode(entry.user_id, entry.sku, entry.record_json) if entry.record_json else None
            )
        except (KeyError, ValueError, TypeError, UnicodeDecodeError):
            log.error("feed_entry_unreadable", partition=partition, entry_id=format_id(last))
            continue
        changes.append(FeedChange(partition, last, entry, record))
    return changes, last


class FeedHistory:
    """Reads of one store's change feed for watches.

    Args:
        redis: the process's client.
        timeout_s: the bound of each read.
    """

    def __init__(self, redis: RedisClient, *, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._range: AsyncScript = scripts.register(redis, "server", "feed_range.lua")

    async def feed_id(self, project_id: int) -> str:
        """The project's feed id, made now (SET NX) if the feed has none yet."""
        made = secrets.token_urlsafe(12)
        previous = await bounded(self._redis.set(feed_id_key(project_id), made, nx=True, get=True), self._timeout_s)
        return made if previous is None else _text(previous)

    async def known_feed_id(self, project_id: int) -> str | None:
        """The project's feed id, or None when none was made yet (nothing written)."""
        value = await bounded(self._redis.get(feed_id_key(project_id)), self._timeout_s)
        return None if value is None else _text(value)

    async def read(
        self, keys: FeedKeys, after: StreamId, until: StreamId, count: int
    ) -> tuple[PartitionState, list[FeedChange], StreamId | None]:
        """The partition's state, and up to `count` of its entries in (`after`, `until`], in one atomic step; the
        last id read (None when none)."""
        reply = await bounded(
            self._range(keys=[keys.stream], args=[format_id(after), format_id(until), count]), self._timeout_s
        )
        changes, last = parse_entries(keys.partition, reply[5] or [])
        return _state(reply), changes, last

    async def states(self, project_id: int) -> list[PartitionState]:
        """The state of every partition of the project's feed, in partition order: one pipeline (one round trip per
        node on a cluster) rather than a call per partition, each on a connection of its own."""
        pipe = self._redis.pipeline(transaction=False)
        for keys in feed_keys(project_id):
            # The source rather than its digest: a pipeline cannot load a script that a node lacks (a fresh node, a
            # failover), and every partition of a cluster may sit on a node that never ran it.
            pipe.eval(_RANGE_SOURCE, 1, keys.stream, format_id(ZERO), format_id(ZERO), 0)
        return [_state(reply) for reply in await bounded(pipe.execute(), self._timeout_s)]

    async def check_cursor(self, cursor: Cursor) -> None:
        """Refuses a cursor that cannot resume without a gap: of another store (feed id), or older than the history
        kept in one of its partitions (an entry after it was trimmed away), or ahead of what the store holds.

        Raises:
            OutOfRange: it cannot.
            StoreUnavailable: Redis did not answer.
        """
        feed_id = await self.known_feed_id(cursor.project_id)
        if feed_id != cursor.feed_id:
            raise OutOfRange("cursor", f"was issued by another store, or before this one was emptied; {REREAD}")
        for keys, state in zip(feed_keys(cursor.project_id), await self.states(cursor.project_id), strict=True):
            check_position(state, cursor.positions[keys.partition])

    async def snapshots(self, project_id: int, user_ids: Sequence[str]) -> list[Snapshot]:
        """Each player's items and version, each player's read atomically (one script per player, pipelined)."""
        found: list[Snapshot] = []
        for start in range(0, len(user_ids), SNAPSHOT_BATCH):
            batch = user_ids[start : start + SNAPSHOT_BATCH]
            pipe = self._redis.pipeline(transaction=False)
            for user_id in batch:
                keys = UserKeys(project_id, user_id)
                pipe.eval(_SNAPSHOT_SOURCE, 2, keys.items, keys.version)
            replies = await bounded(pipe.execute(), self._timeout_s)
            for user_id, (flat, version) in zip(batch, replies, strict=True):
                pairs = sorted((_text(flat[i]).encode(), flat[i + 1]) for i in range(0, len(flat or []), 2))
                records = tuple(EntitlementRecord.decode(user_id, sku.decode(), raw) for sku, raw in pairs)
                found.append(Snapshot(user_id, records, int(_text(version))))
        return found


def _state(reply: Sequence[Any]) -> PartitionState:
    """A partition's state from a `feed_range.lua` reply."""
    last_id, deleted, first, length, added = reply[:5]
    return PartitionState(parse_id(last_id), parse_id(deleted), parse_id(first), int(length), int(added))


def check_position(state: PartitionState, position: StreamId) -> None:
    """Refuses `position` in a partition of `state` when an entry after it may have been removed, or it is past the
    last.

    Raises:
        OutOfRange: either.
    """
    if not state.resumable_after(position):
        raise OutOfRange("cursor", f"is older than the history kept; {REREAD}")
    if position > state.last:
        raise OutOfRange("cursor", f"is ahead of this store's history (issued by another store?); {REREAD}")
