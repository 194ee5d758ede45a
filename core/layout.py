"""The key layout's version: checked by both processes at start, and the migration from layout 1.

Layout 1 keyed every record by the player alone (`ent:{u:<user>}:...`, event log `ent:{ev:<partition>}:...`);
layout 2 (`core.keys`) namespaces everything by project. A process of layout 2 that wrote into a layout-1 store
would split every player's data in two, so a store is checked before anything is written (`check_layout`):

- an empty store is marked with `LAYOUT_KEY` = 2 (SET NX, so two processes starting at once agree);
- a store marked 2 is served;
- a store written by layout 1 (no mark, but layout-1 keys found: the event stream `ent:{ev:0}:events`, or any
  `ent:{u:...}` / `ent:{ev:...}` key within a bounded SCAN) or marked with another version is refused with
  `LayoutMismatch`, whose one-line message says what to do.

A process whose Redis does not answer at start still starts (as it always has): its `LayoutGate` runs the check
before the first write instead, and the writes wait for it.

`migrate_layout` moves a layout-1 store into one project's namespace (`python -m server migrate-layout --project
<id>`), with the service and the gateway stopped. It first lists the keys to move in `MIGRATION_KEY` (a set, so
that the list survives an interruption), then moves each with DUMP + RESTORE (its TTL kept) + DEL, which works
across Redis Cluster slots, and removes it from the list; run again after an interruption, it carries on where it
stopped. Last, it registers the project in `PROJECTS_KEY` and marks the store with layout 2.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, RedisCluster

from core.connections import RedisClient, bounded, cluster_primaries, reply_text
from core.errors import ConfigError, StoreUnavailable
from core.keys import LAYOUT_KEY, LAYOUT_VERSION, PREFIX, PROJECTS_KEY
from core.projects import project_id_problem

#: Hash: a migration in progress (`project`, `phase`: "listing" then "moving"). The set `MIGRATION_KEY + ":keys"`
#: holds the layout-1 keys not moved yet.
MIGRATION_KEY = f"{PREFIX}:migration"
_MIGRATION_KEYS = f"{MIGRATION_KEY}:keys"
#: The SCAN of the start-up check: at most this many calls of `SCAN_COUNT` keys each (per Cluster node).
CHECK_SCAN_CALLS = 20
SCAN_COUNT = 1000
#: What a layout-1 key looks like: the player's or the partition's tag, with no project in it.
_V1_USER = re.compile(rb"^ent:\{u:(?P<user>[^}]*)\}(?P<rest>.*)$", re.DOTALL)
_V1_EVENTS = re.compile(rb"^ent:\{ev:(?P<partition>\d+)\}(?P<rest>.*)$", re.DOTALL)
_V2_USER_TAG = re.compile(rb"^\d+:")
_V1_PATTERNS = (f"{PREFIX}:{{u:*", f"{PREFIX}:{{ev:*")

_COMMAND = "python -m server migrate-layout --project <project id>"


class LayoutMismatch(ConfigError):
    """The store was written with another key layout; the message says what to do."""


@dataclass(frozen=True)
class Migration:
    """What `migrate_layout` did."""

    project_id: int
    moved: int
    already_current: bool = False


class LayoutGate:
    """The layout check, run once before a process's first use of the store: at start when Redis answers, else
    before the first operation (`ensure`). Shared by whatever writes (the store, the event log).

    Args:
        redis: the process's client.
    """

    def __init__(self, redis: RedisClient) -> None:
        self._redis = redis
        self._lock = asyncio.Lock()
        #: True once the store's layout was found to be the current one.
        self.passed = False

    async def ensure(self) -> None:
        """Checks the layout unless it passed before.

        Raises:
            LayoutMismatch: the store has another layout (see `check_layout`).
            redis.exceptions.RedisError, OSError: Redis failed; the next call checks again.
        """
        if self.passed:
            return
        async with self._lock:
            if not self.passed:
                await check_layout(self._redis)
                self.passed = True

    async def before_use(self, timeout_s: float) -> None:
        """`ensure`, within `timeout_s`, before an operation on the store (the store's, the event log's).

        Raises:
            StoreUnavailable: Redis did not answer in time, or the store has another layout (it is refused: the
                operation must not run, and the caller must not report success).
        """
        if self.passed:
            return
        try:
            await bounded(self.ensure(), timeout_s)
        except LayoutMismatch as exc:
            raise StoreUnavailable(f"the store is refused: {exc}") from exc


async def check_layout(redis: RedisClient, *, mark: bool = True) -> None:
    """Marks an empty store with the current layout, accepts one marked with it, refuses any other.

    `mark`: False for a caller that only reads (an operator's listing, a dry run): an unmarked store that holds
    no layout-1 keys is accepted as it is, and nothing is written.

    Raises:
        LayoutMismatch: the store holds layout-1 keys, another version, or an interrupted migration; or it is a
            Redis Cluster reached by a standalone client (REDIS_CLUSTER unset).
        StoreUnavailable, redis.exceptions.RedisError: Redis failed (the caller's to report).
    """
    await _refuse_a_cluster_reached_standalone(redis)
    try:
        version = await redis.get(LAYOUT_KEY)
    except redis_errors.AskError as exc:  # MOVED (or ASK): INFO was refused, and the key lives on another node
        raise LayoutMismatch(_CLUSTER_UNSET) from exc
    if version is not None:
        text = reply_text(version, errors="replace")
        if text == str(LAYOUT_VERSION):
            return
        raise LayoutMismatch(
            f"the store was written with key layout {text!r} and this version uses layout {LAYOUT_VERSION}: "
            "run the version that wrote it, or restore a backup made for this one"
        )
    migration = await redis.hgetall(MIGRATION_KEY)
    if migration:
        project = reply_text(migration.get(b"project", b"?"), errors="replace")
        raise LayoutMismatch(
            f"a migration of the key layout into project {project} was interrupted: run "
            f"`python -m server migrate-layout --project {project}` again to finish it"
        )
    if await _holds_layout_1(redis):  # (layout-2 keys in an unmarked store: written before a first check)
        raise LayoutMismatch(
            f"the store was written with key layout 1 (keys without a project) and this version uses layout "
            f"{LAYOUT_VERSION}: stop the service and the gateway, then run `{_COMMAND}` to move its data into "
            "that project"
        )
    if not mark:
        return
    await redis.set(LAYOUT_KEY, str(LAYOUT_VERSION), nx=True)
    # Another process may have marked it meanwhile, with another version in a mixed roll-out: check again.
    if reply_text(await redis.get(LAYOUT_KEY) or b"") != str(LAYOUT_VERSION):
        await check_layout(redis)


_CLUSTER_UNSET = "REDIS_URL names a node of a Redis Cluster: set REDIS_CLUSTER=true (and give it one or more seeds)"


async def _refuse_a_cluster_reached_standalone(redis: RedisClient) -> None:
    """A standalone client on a Cluster node would fail on every key of another node's slots (MOVED): refused at
    start, by what the node says of itself (`INFO cluster`; where INFO is refused, the first MOVED says it)."""
    if isinstance(redis, RedisCluster):
        return
    try:
        info = await redis.info("cluster")
    except redis_errors.ResponseError:
        return
    if int(info.get("cluster_enabled", 0)) == 1:
        raise LayoutMismatch(_CLUSTER_UNSET)


async def _holds_layout_1(redis: RedisClient) -> bool:
    # Every store that received a webhook under layout 1 has partition 0's stream (or its dead letters); a store
    # written by Grant alone has player keys, which the bounded SCAN finds unless they are a tiny part of it.
    for name in (f"{PREFIX}:{{ev:0}}:events", f"{PREFIX}:{{ev:0}}:dead"):
        if await redis.exists(name):  # one EXISTS each: keys of different slots on Redis Cluster
            return True
    for pattern in _V1_PATTERNS:
        async for key in _scan(redis, pattern, max_calls=CHECK_SCAN_CALLS):
            if _only_layout_1(key):
                return True
    return False


def _only_layout_1(key: bytes) -> bool:
    """Whether a key can only have been written by layout 1: a partition tag without a project (`{ev:N}`), or a
    player tag that does not start with a project (`{u:<digits>:`). A layout-1 player whose id itself starts
    with digits and a colon looks like layout 2 here; the event streams and the other players give such a store
    away."""
    if _V1_EVENTS.match(key):
        return True
    match = _V1_USER.match(key)
    return match is not None and _V2_USER_TAG.match(match["user"]) is None


def layout_2_name(key: bytes, project_id: int) -> bytes | None:
    """The layout-2 name of a layout-1 key, moved into `project_id`; None for a key that is not layout 1."""
    if match := _V1_USER.match(key):
        return b"ent:{u:%d:%s}%s" % (project_id, match["user"], match["rest"])
    if match := _V1_EVENTS.match(key):
        return b"ent:{ev:%d:%s}%s" % (project_id, match["partition"], match["rest"])
    return None


async def migrate_layout(
    redis: RedisClient, project_id: int, *, progress: Callable[[int], None] | None = None
) -> Migration:
    """Moves every layout-1 player and event-log key into `project_id`'s namespace, then marks the store with
    layout 2. Idempotent, and resumable after an interruption. The service and the gateway must be stopped.

    Args:
        progress: called with the count of keys moved so far, every `SCAN_COUNT` keys.

    Raises:
        ValueError: `project_id` is not a project id.
        LayoutMismatch: the store is marked with another version, or an interrupted migration was into another
            project; or it is a Redis Cluster reached by a standalone client (REDIS_CLUSTER unset).
    """
    problem = project_id_problem(project_id)
    if problem is not None:
        raise ValueError(f"--project {problem}")
    await _refuse_a_cluster_reached_standalone(redis)  # it would move only the keys of the node it reached
    try:
        version = await redis.get(LAYOUT_KEY)
    except redis_errors.AskError as exc:  # MOVED (or ASK): INFO was refused, and the key lives on another node
        raise LayoutMismatch(_CLUSTER_UNSET) from exc
    if version is not None:
        if reply_text(version, errors="replace") == str(LAYOUT_VERSION):
            return Migration(project_id, 0, already_current=True)
        await check_layout(redis)  # raises, naming the version
    state = {reply_text(k): reply_text(v) for k, v in (await redis.hgetall(MIGRATION_KEY)).items()}
    if state and state.get("project") != str(project_id):
        raise LayoutMismatch(
            f"a migration into project {state.get('project')} was interrupted: finish it with --project "
            f"{state.get('project')} (moving the rest elsewhere would split the players' data)"
        )
    if state.get("phase") != "moving":
        # Listing: nothing has moved yet, so every layout-1-shaped key is one to move. Repeating it is harmless.
        await redis.hset(MIGRATION_KEY, mapping={"project": str(project_id), "phase": "listing"})
        batch: list[bytes] = []
        for pattern in _V1_PATTERNS:
            async for key in _scan(redis, pattern, max_calls=None):
                if layout_2_name(key, project_id) is not None:
                    batch.append(key)
                if len(batch) >= SCAN_COUNT:
                    await redis.sadd(_MIGRATION_KEYS, *batch)
                    batch.clear()
        if batch:
            await redis.sadd(_MIGRATION_KEYS, *batch)
        await redis.hset(MIGRATION_KEY, "phase", "moving")
    moved = 0
    while True:
        keys: Any = await redis.srandmember(_MIGRATION_KEYS, SCAN_COUNT)
        if not keys:
            break
        for key in keys:
            target = layout_2_name(key, project_id)
            if target is not None and await _move(redis, key, target):
                moved += 1
            await redis.srem(_MIGRATION_KEYS, key)
        if progress is not None:
            progress(moved)
    await redis.sadd(PROJECTS_KEY, str(project_id))
    await redis.set(LAYOUT_KEY, str(LAYOUT_VERSION))
    await redis.delete(MIGRATION_KEY)
    return Migration(project_id, moved)


async def _move(redis: RedisClient, source: bytes, target: bytes) -> bool:
    """Copies `source` to `target` with its TTL, then deletes `source`. False when `source` is gone (moved by an
    interrupted run before it could be taken off the list). A `target` left by such a run is replaced: the source
    is still the truth until it is deleted."""
    dump: Any = await redis.dump(source)
    if dump is None:
        return False
    ttl_ms = int(await redis.pttl(source))
    if ttl_ms == -2:
        return False  # expired between the two reads
    await redis.restore(target, max(ttl_ms, 0), dump, replace=True)
    await redis.delete(source)
    return True


async def _scan(redis: RedisClient, pattern: str, *, max_calls: int | None) -> AsyncIterator[bytes]:
    """The keys matching `pattern`, over every node of a Cluster; at most `max_calls` SCAN calls per node."""
    nodes: list[ClusterNode] | list[None] = [None]
    if isinstance(redis, RedisCluster):
        nodes = await cluster_primaries(redis)
    for node in nodes:
        cursor: int = 0
        calls = 0
        while True:
            if node is None:
                cursor, found = await redis.scan(cursor, match=pattern, count=SCAN_COUNT)
            else:
                cursors, found = await redis.scan(cursor, match=pattern, count=SCAN_COUNT, target_nodes=node)
                cursor = next(iter(cursors.values())) if isinstance(cursors, dict) else cursors
            for key in found:
                yield key if isinstance(key, bytes) else str(key).encode()
            calls += 1
            if not cursor or (max_calls is not None and calls >= max_calls):
                break
