"""The relay: committed changes to the project's change feed (`core.feed`), exactly once, in each player's order.

On a single server the write scripts append their changes to the feed themselves (`server.store.feed_writes`); the relay
only gets the changes that could not go there yet, behind a gap. On a cluster every write that may change a
player's entitlements goes with an intent (`Intent`): a member of its feed partition's `pending` set, recorded in a
round trip of its own just before the write (the partition's slot is elsewhere). Once the write has answered, the
store hands its changes to `FeedRelay.submit` and returns: the relay runs in the background, so the caller waits
for nothing more. Writes submitted while a relay is in flight go together in the next one: one script call
(`server/lua/feed_relay.lua`) per partition per batch (on a single server one for all partitions), appending each
change whose version is the player's relayed one + 1, skipping duplicates, and removing the batch's intents.

When the script finds a gap (a player's change that follows one not relayed yet: two writes of a player relayed
out of order by two replicas, or an earlier change written without the feed), the relay reads the missing changes
from the player's ledger, where every change is recorded with its version (`ledger_changes`), and relays them,
then the rest. A relay that fails (Redis down) is logged and counted, never raised to the writer: the intents
stay, and the repair (`server.feed.repair`) relays what their players are missing."""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import structlog
from redis.asyncio.cluster import RedisCluster

from core import scripts
from core.clock import now_ms
from core.connections import RedisClient, bounded, reply_text
from core.errors import StoreUnavailable
from core.feed import FEED_PROJECTS_KEY, FeedEntry, FeedKeys, partition_of
from core.keys import UserKeys
from core.lifecycle import cancel_and_wait
from server.metrics import FeedMetrics

log = structlog.get_logger("server.feed")

#: The most changes (and the most intents) one script call carries: a larger batch is split. Bounds the script's
#: time on Redis and its Lua stack (`unpack`).
MAX_PER_CALL = 500
#: Ledger entries read per round trip when the relay looks back for a player's missing changes.
LEDGER_PAGE = 100
#: Operation of a ledger entry -> the change's operation in the feed (an order's lines are written to the ledger as
#: `grant` and `cancel` with an `order_id`: in the feed they say which event made them).
_ORDER_OPERATIONS = {"grant": "order_paid", "cancel": "order_canceled"}


@dataclass(frozen=True)
class Intent:
    """A write's intent: the member of its player's feed partition's `pending` set (`<16 hex digits>:<user id>`),
    scored by when it was added (ms). The random prefix makes each write's intent its own, so removing it once
    relayed never removes another write's."""

    project_id: int
    user_id: str
    keys: FeedKeys
    member: str

    def command(self) -> tuple[Any, ...]:
        """The ZADD that records it."""
        return ("ZADD", self.keys.pending, now_ms(), self.member)


def ledger_change(user_id: str, fields: dict[str, str]) -> FeedEntry | None:
    """The feed entry of one ledger entry (fields decoded), or None when the entry changed no sku (no `v`)."""
    version = fields.get("v")
    if not version:
        return None
    operation = fields.get("op", "")
    if fields.get("order_id"):
        operation = _ORDER_OPERATIONS.get(operation, operation)
    return FeedEntry(
        user_id=user_id,
        sku=fields.get("sku", ""),
        version=int(version),
        operation=operation,
        at_ms=int(fields.get("at_ms") or 0),
        record_json=fields.get("after", ""),
    )


async def ledger_changes(redis: RedisClient, project_id: int, user_id: str, after: int, upto: int) -> list[FeedEntry]:
    """The player's changes with versions in (`after`, `upto`], read back from its ledger (newest first, a page at a
    time, until a version at or below `after`), in version order.

    Raises:
        redis.exceptions.RedisError, OSError: Redis failed (the caller bounds and translates).
    """
    key = UserKeys(project_id, user_id).ledger
    found: list[FeedEntry] = []
    newest = "+"
    while True:
        rows = await redis.xrevrange(key, max=newest, min="-", count=LEDGER_PAGE) or []
        for _entry_id, values in rows:
            change = ledger_change(user_id, {reply_text(k): reply_text(v) for k, v in (values or {}).items()})
            if change is None or change.version > upto:
                continue
            if change.version <= after:
                return sorted(found, key=lambda c: c.version)
            found.append(change)
        if len(rows) < LEDGER_PAGE:
            return sorted(found, key=lambda c: c.version)
        newest = "(" + reply_text(rows[-1][0] or b"")


@dataclass
class _Batch:
    """Changes and intents of one partition of one project: queued, or in one script call."""

    keys: FeedKeys
    changes: list[FeedEntry] = field(default_factory=list)
    members: list[str] = field(default_factory=list)


class FeedRelay:
    """Relays committed changes to the change feed in the background, batched per partition.

    Args:
        redis: the service's client (standalone or cluster).
        timeout_s: the bound of one round trip.
        retention_s: how long the feed keeps a change (`ENTITLEMENTS_FEED_RETENTION_S`): each call trims to it.
        metrics: the feed's metrics.
        max_queued: changes and intents queued at most; beyond, a write's relay is left to the repair (its intent
            is in `pending`) rather than let memory grow while Redis is slow.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        timeout_s: float,
        retention_s: float,
        metrics: FeedMetrics,
        max_queued: int = 100_000,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self.retention_ms = int(retention_s * 1000)
        self._metrics = metrics
        self._max_queued = max_queued
        self._script = scripts.register(redis, "server", "feed_relay.lua")
        self._queued: dict[tuple[int, int], _Batch] = {}
        self._queued_count = 0
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._worker: asyncio.Task[None] | None = None
        self._closed = False
        self._known_projects: set[int] = set()
        self._cluster = isinstance(redis, RedisCluster)
        self._keys: dict[tuple[int, int], FeedKeys] = {}
        self._prefix = secrets.token_hex(4)
        self._intents = 0

    async def partition(self, project_id: int, user_id: str) -> FeedKeys:
        """The keys of the player's feed partition. The first call for a project in this process adds the project
        to `FEED_PROJECTS_KEY` first, so the repair of any replica looks at its partitions.

        Raises:
            StoreUnavailable: Redis did not answer in time (on a project's first call only).
        """
        if project_id not in self._known_projects:
            await bounded(self._redis.sadd(FEED_PROJECTS_KEY, project_id), self._timeout_s)
            self._known_projects.add(project_id)
        return self.partition_keys(project_id, user_id)

    def partition_keys(self, project_id: int, user_id: str) -> FeedKeys:
        """The keys of the player's feed partition (after `partition`: no round trip)."""
        partition = partition_of(user_id)
        keys = self._keys.get((project_id, partition))
        if keys is None:
            keys = self._keys[(project_id, partition)] = FeedKeys(project_id, partition)
        return keys

    async def intent(self, project_id: int, user_id: str) -> Intent:
        """A new intent for a write of `user_id`, for the writer to record before the write (a cluster).

        Raises:
            StoreUnavailable: as `partition`.
        """
        keys = await self.partition(project_id, user_id)
        # Unique per write: this process's random prefix and a counter (no system call per write).
        self._intents += 1
        return Intent(project_id, user_id, keys, f"{self._prefix}{self._intents & 0xFFFFFFFF:08x}:{user_id}")

    def appended_by_writes(self, count: int) -> None:
        """Counts changes a write script appended to the feed itself (a single server: `server.store.feed_writes`)."""
        self._metrics.appended.inc(count)

    def submit(self, writes: Iterable[tuple[Intent, Sequence[FeedEntry]]]) -> None:
        """Queues the changes of committed writes (each with its intent; no changes: a replay, or a write refused:
        only the intent is removed) for the next relay. Never raises and never waits."""
        if self._closed:
            return
        for intent, changes in writes:
            if self._queued_count >= self._max_queued:
                self._metrics.dropped.inc()  # its intent stays: the repair relays it
                continue
            batch = self._queued.get((intent.project_id, intent.keys.partition))
            if batch is None:
                batch = self._queued[(intent.project_id, intent.keys.partition)] = _Batch(intent.keys)
            batch.changes.extend(changes)
            batch.members.append(intent.member)
            self._queued_count += len(changes) + 1
        if self._queued:
            self._idle.clear()
            self._wake.set()
            if self._worker is None:
                self._worker = asyncio.get_running_loop().create_task(self._run(), name="feed-relay")

    async def flush(self) -> None:
        """Waits until everything submitted so far has been relayed (or has failed, left to the repair)."""
        await self._idle.wait()

    async def close(self, timeout_s: float) -> None:
        """Relays what is queued (up to `timeout_s`; the rest is left to the repair), then stops."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout_s):
                await self.flush()
        self._closed = True
        if self._worker is not None:
            await cancel_and_wait(self._worker)
            self._worker = None

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batches, self._queued, self._queued_count = self._queued, {}, 0
            try:
                await self.relay_parts(list(batches.values()))
            except StoreUnavailable as exc:
                self._metrics.failures.inc()
                log.warning("feed_relay_failed", error=str(exc), writes=len(batches), note="left to the repair")
            except Exception:  # a bug must not stop the relay of later writes; the repair retries these
                self._metrics.failures.inc()
                log.exception("feed_relay_error")
            if not self._queued:
                self._idle.set()

    async def relay(self, keys: FeedKeys, changes: Sequence[FeedEntry], members: Sequence[str]) -> int:
        """Relays `changes` to one partition and removes `members` (intents), filling any gap from the players'
        ledgers first. Safe to repeat: a change already relayed is skipped.

        Returns:
            How many changes were appended to the feed.

        Raises:
            StoreUnavailable: Redis did not answer in time; what was not relayed stays pending.
        """
        return await self.relay_parts([_Batch(keys, list(changes), list(members))])

    async def trim(self, keys: FeedKeys) -> None:
        """Trims one partition to the retention (the relay does it with every call; the repair, for idle ones).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        await self._call([_Batch(keys)])

    async def relay_parts(self, parts: Sequence[_Batch]) -> int:
        """Relays the changes of several partitions: on a single server in one script call for all of them (a
        script may touch any key there), on a cluster one per partition, concurrently. Then fills the gaps.

        Raises:
            StoreUnavailable: Redis did not answer in time (on a cluster: for one of the partitions at least).
        """
        calls = self._calls(parts)
        if len(calls) == 1:
            return await self._relay_call(calls[0])
        results = await asyncio.gather(*(self._relay_call(call) for call in calls), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result
        return sum(cast(int, result) for result in results)

    def _calls(self, parts: Sequence[_Batch]) -> list[list[_Batch]]:
        """The script calls that carry `parts`: a player's changes and intents always in one call (an intent is never
        removed before its change is relayed), in version order; about MAX_PER_CALL changes and intents per call
        unless one player has more; on a cluster, one partition per call."""
        calls: list[list[_Batch]] = []
        current: list[_Batch] = []
        size = 0
        for part in parts:
            if self._cluster and current:
                calls.append(current)
                current, size = [], 0
            players: dict[str, tuple[list[FeedEntry], list[str]]] = {}
            for change in part.changes:
                players.setdefault(change.user_id, ([], []))[0].append(change)
            for member in part.members:
                players.setdefault(member[17:], ([], []))[1].append(member)
            piece = _Batch(part.keys)
            for player_changes, player_members in players.values():
                piece.changes += sorted(player_changes, key=lambda change: change.version)
                piece.members += player_members
                size += len(player_changes) + len(player_members)
                if size >= MAX_PER_CALL:
                    calls.append([*current, piece])
                    current, size, piece = [], 0, _Batch(part.keys)
            if piece.changes or piece.members or not players:
                current.append(piece)
        if current:
            calls.append(current)
        return calls

    async def _relay_call(self, parts: list[_Batch]) -> int:
        appended = 0
        for part, (added, gaps) in zip(parts, await self._call(parts), strict=True):
            appended += added
            for user_id, relayed in gaps:
                upto = max(change.version for change in part.changes if change.user_id == user_id)
                appended += await self._fill_gap(part.keys, user_id, relayed, upto, part.members)
        return appended

    async def _fill_gap(self, keys: FeedKeys, user_id: str, relayed: int, upto: int, members: list[str]) -> int:
        """Relays a player's changes after `relayed` up to `upto` from its ledger, with the intents of the player
        that the first call left in place."""
        missing = await bounded(
            ledger_changes(self._redis, keys.project_id, user_id, relayed, upto), self._timeout_s * 2
        )
        own = [member for member in members if member[17:] == user_id]
        [(added, gaps)] = await self._call([_Batch(keys, missing, own)])
        self._metrics.gaps.inc()
        if gaps:
            # The ledger lacks a version (an operator removed entries): relaying past it would make every watcher
            # see a jump. The intents stay; an operator is needed.
            log.error("feed_gap_unfillable", partition=keys.partition, relayed=gaps[0][1], wanted=upto)
        return added

    async def _call(self, parts: Sequence[_Batch]) -> list[tuple[int, list[tuple[str, int]]]]:
        """One feed_relay.lua call for `parts`; for each, the changes appended and the gaps (player, relayed)."""
        keys: list[str] = []
        args: list[Any] = [self.retention_ms]
        for part in parts:
            keys += [part.keys.stream, part.keys.relayed, part.keys.pending]
            args += [len(part.changes), len(part.members)]
            for change in part.changes:
                args += [change.user_id, change.sku, change.version, change.operation, change.at_ms, change.record_json]
            args += part.members
        started = time.perf_counter()
        reply = await bounded(self._script(keys=keys, args=args), self._timeout_s, refused="the relay")
        self._metrics.call_seconds.observe(time.perf_counter() - started)
        now = int(reply[0])
        results = []
        for number, part in enumerate(parts):
            appended, gap_list = reply[1 + 2 * number], reply[2 + 2 * number]
            for index in appended:
                self._metrics.lag.observe(max(0, now - part.changes[int(index) - 1].at_ms) / 1000)
            self._metrics.relayed.inc(len(appended))
            gaps = [(reply_text(gap_list[i]), int(gap_list[i + 1])) for i in range(0, len(gap_list), 2)]
            results.append((len(appended), gaps))
        return results
