"""The repair: relays what writes left pending, when their own relay failed or never ran.

A write's intent (`server.feed.relay.Intent`) is in its feed partition's `pending` set from before the write
commits until its changes are relayed. An intent older than `ENTITLEMENTS_FEED_REPAIR_S` means the relay did not
happen: the writer crashed between the commit and the relay, Redis failed during the relay, the relay's queue was
full, or the write itself failed (then there is nothing to relay). The repair reads such a player's version and
the last version relayed, reads the changes between them back from the player's ledger, and relays them with the
same script as the relay, which skips what is already there and removes the intents it was given: every replica
may run it at the same time as the others and as the relay.

Each pass also trims every partition to the retention, so that a partition no write reaches any more still forgets
its old changes.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Iterable
from typing import cast

import structlog

from core.clock import now_ms
from core.connections import RedisClient, bounded, reply_text
from core.errors import StoreUnavailable
from core.feed import FEED_PROJECTS_KEY, FeedEntry, FeedKeys, feed_keys
from core.keys import UserKeys
from core.lifecycle import cancel_and_wait
from server.feed.relay import FeedRelay, ledger_changes
from server.metrics import FeedMetrics

log = structlog.get_logger("server.feed")

#: Intents read per partition per pass (the oldest first); more wait for the next pass.
REPAIR_BATCH = 500
#: An intent this old (s) when a pass finds it is logged (`feed_intent_overdue`, with its partition): it outlived
#: passes that should have relayed it. The alert on `entitlements_feed_oldest_intent_age_seconds` pages later.
OVERDUE_LOG_S = 60.0


class _Seen:
    """What one repair pass found pending: its clock (ms), the stale intents, and the partition of the oldest."""

    def __init__(self, now: int) -> None:
        self.now = now
        self.intents = 0
        self.oldest: FeedKeys | None = None
        self._oldest_ms: int | None = None

    def note(self, keys: FeedKeys, intents: int, oldest_ms: int) -> None:
        self.intents += intents
        if self._oldest_ms is None or oldest_ms < self._oldest_ms:
            self._oldest_ms, self.oldest = oldest_ms, keys

    @property
    def oldest_age_s(self) -> float:
        """The oldest stale intent's age (0 with none)."""
        return 0.0 if self._oldest_ms is None else max(0, self.now - self._oldest_ms) / 1000


class FeedRepair:
    """Relays the changes of writes whose intents are older than `delay_s`, every `delay_s` (with jitter).

    Args:
        redis: the service's client.
        relay: the relay whose script and ledger reading the repair shares.
        delay_s: how old an intent must be to be repaired (`ENTITLEMENTS_FEED_REPAIR_S`): longer than a write and
            its relay take, so that the repair does not race a relay still on its way.
        timeout_s: the bound of one round trip.
        metrics: the feed's metrics.
        projects: the projects configured (their partitions are trimmed even before a write of this store); the
            projects in `FEED_PROJECTS_KEY` are added.
    """

    def __init__(
        self,
        redis: RedisClient,
        relay: FeedRelay,
        *,
        delay_s: float,
        timeout_s: float,
        metrics: FeedMetrics,
        projects: Iterable[int] = (),
    ) -> None:
        self._redis = redis
        self._relay = relay
        self.delay_s = delay_s
        self._delay_ms = int(delay_s * 1000)
        self._timeout_s = timeout_s
        self._metrics = metrics
        self._projects = tuple(projects)
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="feed-repair")

    async def stop(self) -> None:
        if self._task is not None:
            await cancel_and_wait(self._task)
            self._task = None

    async def _loop(self) -> None:
        while True:
            # Jitter: replicas started together do not repair (and trim) in lockstep.
            await asyncio.sleep(self._delay_ms / 1000 * random.uniform(0.5, 1.0))
            try:
                await self.repair()
            except StoreUnavailable as exc:
                log.warning("feed_repair_failed", error=str(exc))
            except Exception:  # a bug in one pass must not end the repairs
                log.exception("feed_repair_error")

    async def repair(self, now: int | None = None) -> int:
        """One pass over every partition of every project: relays what stale intents' players miss, removes those
        intents, trims to the retention. A partition that fails is logged and left to the next pass. The stale
        intents seen and the oldest one's age are the metrics `pending` and `oldest_intent` until the next pass.

        Args:
            now: the clock (ms) to judge intents by (tests); the wall clock by default.

        Returns:
            How many changes were appended to the feed.

        Raises:
            StoreUnavailable: the projects could not be read.
        """
        now = now_ms() if now is None else now
        known = await bounded(self._redis.smembers(FEED_PROJECTS_KEY), self._timeout_s)
        projects = {int(reply_text(member)) for member in known if reply_text(member).isdigit()}
        projects.update(self._projects)
        seen = _Seen(now)
        results = await asyncio.gather(
            *(self._partition(keys, seen) for project in sorted(projects) for keys in feed_keys(project)),
            return_exceptions=True,
        )
        appended = 0
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, StoreUnavailable):
                    log.error("feed_repair_error", error=repr(result))
                continue
            appended += result
        failed = sum(1 for result in results if isinstance(result, BaseException))
        if failed:
            log.warning("feed_repair_partitions_failed", partitions=failed, note="tried again on the next pass")
        stale = seen.intents
        self._metrics.pending.set(stale)
        self._metrics.oldest_intent.set(seen.oldest_age_s)
        if seen.oldest is not None and seen.oldest_age_s >= OVERDUE_LOG_S:
            # Outlived repairs: the partition's relay keeps failing, or a player's gap cannot be filled.
            log.warning(
                "feed_intent_overdue",
                project_id=seen.oldest.project_id,
                partition=seen.oldest.partition,
                age_s=round(seen.oldest_age_s, 1),
            )
        if appended:
            self._metrics.repaired.inc(appended)
            log.warning("feed_repaired", changes=appended, intents=stale)
        return appended

    async def _partition(self, keys: FeedKeys, seen: _Seen) -> int:
        """Repairs one partition, noting its stale intents in `seen` first (so that a partition whose repair fails
        still counts); returns the changes appended."""
        reply = await bounded(
            self._redis.zrange(
                keys.pending,
                "-inf",
                seen.now - self._delay_ms,
                byscore=True,
                offset=0,
                num=REPAIR_BATCH,
                withscores=True,
            ),
            self._timeout_s,
        )
        rows = cast(list[tuple[bytes, float]], reply)  # (member, score), the oldest first
        if rows:
            seen.note(keys, len(rows), int(rows[0][1]))
        await self._relay.trim(keys)
        if not rows:
            return 0
        players: dict[str, list[str]] = {}
        for row, _score in rows:
            member = reply_text(row, errors="replace")
            if len(member) < 18 or member[16] != ":":
                log.error("feed_intent_invalid", member=member[:64], partition=keys.partition)
                await bounded(self._redis.zrem(keys.pending, row), self._timeout_s)
                continue
            players.setdefault(member[17:], []).append(member)
        changes: list[FeedEntry] = []
        for user_id, _members in players.items():
            changes += await self._missing(keys, user_id)
        return await self._relay.relay(keys, changes, [m for ms in players.values() for m in ms])

    async def _missing(self, keys: FeedKeys, user_id: str) -> list[FeedEntry]:
        """The player's changes not relayed yet: versions after the partition's `relayed` one, up to the player's."""
        relayed_raw = await bounded(self._redis.hget(keys.relayed, user_id), self._timeout_s)
        version_raw = await bounded(self._redis.get(UserKeys(keys.project_id, user_id).version), self._timeout_s)
        relayed = int(relayed_raw or 0)
        version = int(version_raw or 0)
        if version <= relayed:
            return []
        return await bounded(
            ledger_changes(self._redis, keys.project_id, user_id, relayed, version), self._timeout_s * 2
        )
