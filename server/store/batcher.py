"""Reads of entitlements that share round trips: `ReadBatcher` for single reads (under load, reads that arrive
while one is in flight go together in the next pipeline, so CheckEntitlement's round trips are shared), and
`read_pairs` for a batch of (player, sku) pairs read at once (CheckEntitlements)."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from core.connections import RedisClient
from core.keys import items_key
from server.store.records import StoredFields, stored_fields


class ReadBatcher:
    """Keeps one HGET round trip in flight per process; reads that arrive meanwhile go together in the next one.

    Idle, a read is a plain HGET: no extra task, no pipeline, no added latency. Under load, every read queued
    while a round trip is in flight is sent in the next pipeline, so the per-read cost of redis-py (pool checkout,
    command packing, socket reads) and of the event loop is shared by the whole batch. Batching by "what arrived
    during the previous round trip" rather than by event-loop turn matters: gRPC hands requests to the loop in
    different turns, so per-turn batches hold a single read.

    Every round trip runs under `timeout_s`, so a read waits at most for the round trip in flight when it arrived
    and then its own: under two timeouts, never indefinitely. Expiry raises TimeoutError.
    """

    def __init__(self, redis: RedisClient, timeout_s: float) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._busy = False
        self._queue: list[tuple[str, str, asyncio.Future[bytes | None]]] = []

    async def hget(self, key: str, field_name: str) -> bytes | None:
        """The value of `field_name` in hash `key`, or None.

        Raises:
            TimeoutError: a round trip it waited for, or its own, passed `timeout_s`.
            redis.exceptions.RedisError: Redis failed the read (the whole batch's, or this read's).
        """
        if self._busy:
            future: asyncio.Future[bytes | None] = asyncio.get_running_loop().create_future()
            self._queue.append((key, field_name, future))
            return await future
        self._busy = True
        try:
            async with asyncio.timeout(self._timeout_s):
                result = await self._redis.hget(key, field_name)
            return result.encode() if isinstance(result, str) else result
        finally:
            self._hand_over()

    def _hand_over(self) -> None:
        if not self._queue:
            self._busy = False
            return
        task = asyncio.get_running_loop().create_task(self._drain())
        # Keep a reference until done: the loop holds tasks only weakly.
        _BACKGROUND.add(task)
        task.add_done_callback(_BACKGROUND.discard)

    async def _drain(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                # Callers that gave up (deadline, cancellation) while queued are not read for.
                batch = [item for item in batch if not item[2].done()]
                if batch:
                    await self._execute(batch)
        except BaseException:
            for _, _, future in self._queue:
                future.cancel()
            self._queue = []
            raise
        finally:
            self._busy = False

    async def _execute(self, batch: list[tuple[str, str, asyncio.Future[bytes | None]]]) -> None:
        try:
            pipe = self._redis.pipeline(transaction=False)
            for key, field_name, _ in batch:
                pipe.hget(key, field_name)
            async with asyncio.timeout(self._timeout_s):
                results: list[Any] = await pipe.execute(raise_on_error=False)
        except Exception as exc:
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for _, _, future in batch:
                future.cancel()
            raise
        for (_, _, future), result in zip(batch, results, strict=True):
            if future.done():  # the caller gave up (deadline, cancellation)
                continue
            if isinstance(result, Exception):
                future.set_exception(result)
            else:
                future.set_result(result)


_BACKGROUND: set[asyncio.Task[None]] = set()


#: Sends one command and returns its reply (`server.store.pipelined.PipelinedReads.command`).
Command = Callable[[tuple[Any, ...]], Awaitable[Any]]


async def read_pairs(
    redis: RedisClient,
    script: AsyncScript,
    project_id: int,
    pairs: list[tuple[str, str]],
    *,
    command: Command | None = None,
) -> list[StoredFields | None]:
    """What is stored of each (user_id, sku) pair in `project_id`, in their order (None: not held).

    One HMGET of the player's items hash per distinct player, naming each of its skus once. On a single server,
    all of them run in one command: `script` (`server/lua/check_pairs.lua`), one round trip whose reply, the
    records' fields as integers, hiredis parses at once (a pipeline of HMGETs costs redis-py tens of µs per
    command, and parsing the records' JSON here about as much again). On a Redis Cluster the players' keys live in
    many slots, which one script may not touch: the HMGETs go in one pipeline, which redis-py's cluster client sends
    as one round trip per node holding any of the players, concurrently. Either way each answer is as of one moment
    of that player; a pair that repeats is decoded once.

    The skus must be identifiers (`core.limits`: no control character), as validated requests' are. `command`, on
    a single server, sends the script's EVALSHA on the store's pipelined read connection instead of through
    redis-py's client (a script not loaded, after a restart of Redis, is loaded and the read sent again).

    Raises:
        redis.exceptions.RedisError: Redis failed the read or one of its commands.
    """
    skus_by_user: dict[str, dict[str, None]] = {}
    for user_id, sku in pairs:
        skus = skus_by_user.get(user_id)
        if skus is None:
            skus = skus_by_user[user_id] = {}
        skus[sku] = None
    values: list[Any]
    if isinstance(redis, RedisCluster):
        pipe = redis.pipeline(transaction=False)
        for user_id, skus in skus_by_user.items():
            pipe.hmget(items_key(project_id, user_id), list(skus))
        replies = await pipe.execute(raise_on_error=True)
        values = [None if raw is None else stored_fields(raw) for reply in replies for raw in reply]
    else:
        keys = [items_key(project_id, user_id) for user_id in skus_by_user]
        args = ["\n".join(skus) for skus in skus_by_user.values()]
        if command is None:
            reply = await script(keys=keys, args=args)
        else:
            try:
                reply = await command(("EVALSHA", script.sha, len(keys), *keys, *args))
            except redis_errors.NoScriptError:
                await script.registered_client.script_load(script.script)
                reply = await command(("EVALSHA", script.sha, len(keys), *keys, *args))
        values = [None if fields is None else tuple(fields) for fields in reply]
    if len(values) == len(pairs) == len(skus_by_user):  # no player named twice: the values are in the pairs' order
        return values
    found: dict[tuple[str, str], StoredFields | None] = {}
    position = 0
    for user_id, skus in skus_by_user.items():
        for sku in skus:
            found[user_id, sku] = values[position]
            position += 1
    if position != len(values):
        raise redis_errors.ResponseError(f"check_pairs answered {len(values)} values for {position} pairs")
    return [found[pair] for pair in pairs]
