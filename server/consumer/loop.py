"""The consumer's reader loop: one task per partition of each project reads, claims, applies and acknowledges
entries, and dead-letters those that keep failing (see `server.consumer` for how it runs as a whole).
"""

from __future__ import annotations

import asyncio
import os
import secrets
import socket
from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
import structlog

from core.backoff import Backoff, Wakeup
from core.connections import RedisClient, reply_text
from core.keys import CONSUMER_GROUP, EventKeys
from core.lifecycle import cancel_and_wait
from server.config import ConsumerSettings
from server.consumer.batches import BatchApplier, acknowledge
from server.consumer.deliveries import ConsumerHooks, StreamEntry, is_transient
from server.consumer.projects import ProjectDirectory
from server.consumer.upkeep import HOUSEKEEPING_INTERVAL_S, StreamUpkeep
from server.deadletters import DeadLetters
from server.fulfillment import Fulfillment
from server.metrics import ServiceMetrics

log = structlog.get_logger("server.consumer")

CLAIM_INTERVAL_MAX_S = 5.0
# Until the gateway creates a partition's stream, check for it at least this often.
JOIN_POLL_MAX_S = 1.0
# During an outage, log the first failure and then every 20th in a row.
_FAILURE_LOG_EVERY = 20


def default_consumer_name() -> str:
    """A consumer name unique to this process: host, pid and a random suffix (pids are reused by containers)."""
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"


#: The wait after consecutive Redis failures: 25-50 ms after the first, doubling up to 2.5-5 s.
DEFAULT_BACKOFF = Backoff(base_s=0.05, cap_s=5.0)


@dataclass
class _Partition:
    """A reader task's state for one partition."""

    keys: EventKeys
    task: asyncio.Task[None] | None = None
    group_ready: bool = False
    # Re-read this consumer's own pending entries (after a Redis failure) before new ones, from after this id.
    own_backlog: bool = False
    backlog_cursor: str = "0"
    claim_cursor: str = "0-0"
    next_claim: float = 0.0
    next_gauges: float = 0.0
    next_housekeeping: float = 0.0
    failures: int = 0
    # True while waiting on Redis for new entries: stopping cancels the wait at once.
    blocked: bool = False
    stage: str = "read"


class Consumer:
    """Consumes the partitions of every project's event log with the consumer group `CONSUMER_GROUP`.

    The projects are those configured (`projects`) and those in `PROJECTS_KEY` (where the gateway registers a
    project before its first event), re-read every `settings.projects_refresh_s`: a project's first webhook is
    consumed without a restart. A registered project this service does not serve (`served`) is not read: its
    events wait in its stream for a service that serves it (said once in the log). Past `max_projects`, a new
    project is not read either, and an error says to restart (the caller's pool is sized for that many).

    Args:
        redis: a client for the stream commands, owned by the caller; its socket timeout must exceed `block_ms`,
            and its pool must hold a connection for each reader (partitions x projects).
        fulfillment: applies decoded events.
        metrics: the service's metrics.
        settings: batch size, block time, claim idle time, delivery limit, retention, projects refresh.
        partitions: the event log's partition count (must equal the gateway's).
        projects: the configured projects, read from the start.
        served: whether this service serves a project found in `PROJECTS_KEY`; None: every project.
        max_projects: the most projects read at once (the pool's room); None: no limit.
        name: this consumer's name in the group; unique per process by default.
        hooks: fault-injection seams for tests.
        backoff: the wait after consecutive Redis failures.
    """

    def __init__(
        self,
        redis: RedisClient,
        fulfillment: Fulfillment,
        metrics: ServiceMetrics,
        settings: ConsumerSettings,
        *,
        partitions: int,
        projects: Collection[int] = (),
        served: Callable[[int], bool] | None = None,
        max_projects: int | None = None,
        name: str | None = None,
        hooks: ConsumerHooks | None = None,
        backoff: Backoff = DEFAULT_BACKOFF,
    ) -> None:
        self.name = name or default_consumer_name()
        self.settings = settings
        self._redis = redis
        self._fulfillment = fulfillment
        self._metrics = metrics
        self._hooks = hooks or ConsumerHooks()
        self._backoff = backoff
        self._dead_letters = DeadLetters(redis, partitions)
        self._batches = BatchApplier(redis, fulfillment, metrics, self._dead_letters, settings, self._hooks, self.name)
        self._upkeep = StreamUpkeep(redis, metrics, self._dead_letters, settings)
        self._configured = tuple(sorted(set(projects)))
        self._directory = ProjectDirectory(redis, served=served, max_projects=max_projects)
        # (project, partition) -> its reader's state.
        self._parts: dict[tuple[int, int], _Partition] = {}
        self._discovery: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()
        self._wakeup = Wakeup()
        self._claim_idle_ms = max(1, int(settings.claim_idle_s * 1000))
        self._claim_interval_s = min(max(settings.claim_idle_s / 2, 0.01), CLAIM_INTERVAL_MAX_S)
        self._gauge_interval_s = min(CLAIM_INTERVAL_MAX_S, max(0.2, self._claim_interval_s))

    @property
    def running(self) -> bool:
        """Whether a reader, or the task that finds new projects, runs."""
        discovering = self._discovery is not None and not self._discovery.done()
        return discovering or any(part.task is not None and not part.task.done() for part in self._parts.values())

    @property
    def projects(self) -> frozenset[int]:
        """The projects whose event streams this consumer reads now."""
        return frozenset(project for project, _ in self._parts)

    @property
    def unread_projects(self) -> frozenset[int]:
        """The projects registered in `PROJECTS_KEY` that this consumer does not read (not served, or no room)."""
        return frozenset(self._directory.passed_over)

    async def start(self) -> None:
        """Starts one reader task per partition of each configured project, and the task that finds the projects
        added since. Returns at once; Redis need not be reachable yet."""
        self._stopping.clear()
        for project_id in self._configured:
            self._add_project(project_id)
        self._discovery = asyncio.get_running_loop().create_task(self._discover(), name="consumer-projects")
        log.info(
            "consumer_started",
            consumer=self.name,
            partitions=self._dead_letters.partitions,
            projects=list(self._configured),
        )

    def _add_project(self, project_id: int) -> None:
        """Starts the readers of a project's partitions (once)."""
        loop = asyncio.get_running_loop()
        for keys in self._dead_letters.keys_of(project_id):
            if (project_id, keys.partition) in self._parts:
                continue
            part = _Partition(keys)
            self._parts[(project_id, keys.partition)] = part
            part.task = loop.create_task(self._run(part), name=f"consumer-{project_id}-{keys.partition}")

    async def _discover(self) -> None:
        """Every `projects_refresh_s`, starts reading the projects that appeared in `PROJECTS_KEY`."""
        while not self._stopping.is_set():
            for project_id in await self._directory.registered():
                if (project_id, 0) not in self._parts and self._directory.admits(
                    project_id, len(self.projects), self.name
                ):
                    self._add_project(project_id)
            await self._pause(self.settings.projects_refresh_s)

    async def stop(self, grace_s: float) -> None:
        """Stops reading. A reader applying entries it has read finishes them within `grace_s`, then is cancelled;
        whatever it had not acknowledged stays pending and is claimed by another consumer."""
        self._stopping.set()
        self._wakeup.wake()
        if self._discovery is not None:
            await cancel_and_wait(self._discovery)
            self._discovery = None
        parts = list(self._parts.values())
        tasks = [part.task for part in parts if part.task is not None]
        for part in parts:
            if part.blocked and part.task is not None:
                part.task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=grace_s)
            await cancel_and_wait(*tasks)
        for part in parts:
            part.task = None
        await self._upkeep.release([part.keys for part in parts if part.group_ready], self.name)
        self._parts.clear()
        log.info("consumer_stopped", consumer=self.name)

    def retry_now(self) -> None:
        """Ends the readers' waits after failures at once: Redis is known to be back (the embedded store restarted)."""
        self._wakeup.wake()

    async def maintain(self) -> None:
        """Runs the periodic maintenance now on every joined partition: gauges, stale consumers, retention trim."""
        for part in list(self._parts.values()):
            if part.group_ready:
                await self._upkeep.observe(part.keys)
                await self._upkeep.housekeeping(part.keys)

    # The reader loop.

    async def _run(self, part: _Partition) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping.is_set():
            try:
                if not part.group_ready:
                    part.stage = "join"
                    if not await self._join_group(part):
                        await self._pause(min(self.settings.block_ms / 1000, JOIN_POLL_MAX_S))
                        continue
                now = loop.time()
                if now >= part.next_claim:
                    part.stage = "claim"
                    part.next_claim = now + self._claim_interval_s
                    await self._claim(part)
                if now >= part.next_gauges:
                    part.stage = "maintain"
                    part.next_gauges = now + self._gauge_interval_s
                    await self._upkeep.observe(part.keys)
                if now >= part.next_housekeeping:
                    part.stage = "maintain"
                    part.next_housekeeping = now + HOUSEKEEPING_INTERVAL_S
                    await self._upkeep.housekeeping(part.keys)
                if self._stopping.is_set():
                    break
                part.stage = "read"
                if part.own_backlog:
                    # One pass over this consumer's pending list; entries that fail again wait for a claim.
                    entries = await self._read(part, part.backlog_cursor, None)
                    part.own_backlog = bool(entries)
                    part.backlog_cursor = reply_text(entries[-1][0]) if entries else "0"
                    await self._process(part, entries, fresh=False)
                else:
                    wait_ms = max(1, min(self.settings.block_ms, int((part.next_claim - loop.time()) * 1000)))
                    await self._process(part, await self._read(part, ">", wait_ms), fresh=True)
                if part.failures:
                    log.info("consumer_recovered", **_where(part), failures=part.failures)
                    part.failures = 0
            except redis_errors.ResponseError as exc:
                if str(exc).startswith("NOGROUP"):
                    # The stream or the group was deleted (or Redis restarted without its data): join again.
                    log.warning("consumer_group_missing", **_where(part), stream=part.keys.stream)
                    part.group_ready = False
                    continue
                await self._failed(part, exc)
            except Exception as exc:
                if is_transient(exc):
                    part.own_backlog, part.backlog_cursor = True, "0"
                else:  # a bug: keep consuming, loudly
                    log.error("consumer_loop_error", **_where(part), stage=part.stage, exc_info=exc)
                await self._failed(part, exc)

    async def _failed(self, part: _Partition, exc: BaseException) -> None:
        part.failures += 1
        self._metrics.consumer_errors.labels(part.stage).inc()
        if part.failures == 1 or part.failures % _FAILURE_LOG_EVERY == 0:
            log.warning(
                "consumer_redis_error",
                **_where(part),
                stage=part.stage,
                error=f"{type(exc).__name__}: {exc}",
                consecutive_failures=part.failures,
            )
        await self._pause(self._backoff.delay_s(part.failures - 1))

    async def _pause(self, seconds: float) -> None:
        """Sleeps up to `seconds`, returning early when the consumer stops or `retry_now` is called."""
        if not self._stopping.is_set():
            await self._wakeup.sleep(seconds)

    async def _join_group(self, part: _Partition) -> bool:
        """Creates the group at id 0 if missing. Returns False while the stream does not exist yet."""
        try:
            await self._redis.xgroup_create(part.keys.stream, CONSUMER_GROUP, id="0")
        except redis_errors.ResponseError as exc:
            message = str(exc)
            if "requires the key to exist" in message:
                return False
            if not message.startswith("BUSYGROUP"):
                raise
        part.group_ready = True
        part.claim_cursor = "0-0"
        log.info("consumer_joined", **_where(part), stream=part.keys.stream, consumer=self.name)
        return True

    async def _read(self, part: _Partition, from_id: str, block_ms: int | None) -> list[tuple[Any, Any]]:
        part.blocked = block_ms is not None
        try:
            reply: Any = await self._redis.xreadgroup(
                CONSUMER_GROUP,
                self.name,
                {part.keys.stream: from_id},
                count=self.settings.batch,
                block=block_ms,
            )
        finally:
            part.blocked = False
        if not reply:
            return []
        # RESP2: [[stream, [(id, fields), ...]]]; RESP3: {stream: [[(id, fields), ...]]}
        if isinstance(reply, dict):
            streams = list(reply.values())
            return list(streams[0][0]) if streams and streams[0] else []
        return list(reply[0][1])

    async def _claim(self, part: _Partition) -> None:
        """Claims entries idle longer than `claim_idle_s` (from any consumer, this one included) and applies them."""
        reply = await self._redis.xautoclaim(
            part.keys.stream,
            CONSUMER_GROUP,
            self.name,
            self._claim_idle_ms,
            start_id=part.claim_cursor,
            count=self.settings.batch,
        )
        cursor = reply_text(reply[0])
        claimed = list(reply[1])
        deleted = list(reply[2]) if len(reply) > 2 else []
        part.claim_cursor = cursor
        if cursor != "0-0":
            part.next_claim = 0.0  # more of the pending list to scan: continue on the next turn
        if deleted:
            # Removed from the stream (trimmed by a length cap) before anyone applied them.
            self._metrics.events.labels("invalid", "missing").inc(len(deleted))
            log.error(
                "event_entries_missing",
                **_where(part),
                entry_ids=[reply_text(i) for i in deleted][:20],
                count=len(deleted),
            )
        if claimed:
            log.info("events_claimed", **_where(part), count=len(claimed), consumer=self.name)
            await self._process(part, claimed, fresh=False)

    async def _delivery_counts(self, part: _Partition, entry_ids: Sequence[str]) -> dict[str, int]:
        pipe = self._redis.pipeline(transaction=False)
        for entry_id in entry_ids:
            pipe.xpending_range(part.keys.stream, CONSUMER_GROUP, entry_id, entry_id, 1)
        counts: dict[str, int] = {}
        for rows in await pipe.execute():
            for row in rows or []:
                counts[reply_text(row["message_id"])] = int(row["times_delivered"])
        return counts

    async def _process(self, part: _Partition, entries: list[tuple[Any, Any]], *, fresh: bool) -> None:
        """Applies entries as one batch (`BatchApplier`). `fresh`: first deliveries (XREADGROUP >), otherwise their
        delivery counts are read."""
        if not entries:
            return
        ids = [reply_text(entry_id) for entry_id, _ in entries]
        counts = {} if fresh else await self._delivery_counts(part, ids)
        missing: list[str] = []
        batch: list[StreamEntry] = []
        for entry_id, (_, fields) in zip(ids, entries, strict=True):
            if not fields:
                # Deleted from the stream while pending: nothing to apply, drop it from the pending list.
                missing.append(entry_id)
                continue
            deliveries = 1 if fresh else counts.get(entry_id, 1)
            batch.append(StreamEntry(part.keys.project_id, part.keys.partition, entry_id, dict(fields), deliveries))
        if missing:
            part.stage = "ack"
            await acknowledge(self._redis, part.keys, missing)
            self._metrics.events.labels("invalid", "missing").inc(len(missing))
            for entry_id in missing:
                log.error("event_entry_missing", **_where(part), entry_id=entry_id)

        def stage(name: str) -> None:
            part.stage = name

        await self._batches.apply(part.keys, batch, stage)


def _where(part: _Partition) -> dict[str, int]:
    """The log fields naming a reader's stream."""
    return {"project_id": part.keys.project_id, "partition": part.keys.partition}
