"""Running the store's write scripts, one at a time or many in one round trip per Redis node, each write counted
only once it is durable as `ENTITLEMENTS_WRITE_DURABILITY` decided (`server.durability`).

A write is a `ScriptCall` (a Lua script of `server/lua/`, its keys and arguments). `ScriptWriter.run_many` sends a
batch's calls grouped by the node that holds their keys (one group on a single Redis; on a cluster one per
primary), each group on one connection as `EVALSHA ...` in the given order followed by one wait (`WAITAOF 1 0` or
`WAIT <n>`), so that the wait covers every write before it on that connection. Calls on one player's keys share a
slot, hence a group and a connection: they run in the order given. Groups run concurrently. On a single server the
groups go out on the store's pipelined write connections (`server.store.pipelined.PipelinedWrites`: no redis-py
pipeline per write), elsewhere as a redis-py pipeline (`core.durability.on_one_connection`).

Every reply comes back per call, never raised: the script's result, its domain error (`server.errors`), or
`StoreUnavailable` (the group's connection failed or timed out; `NotDurable` when the group's wait fell short).
A batch's scripts are loaded first when this writer has not loaded them yet. A call refused because the script is
not loaded (the store restarted) or because its slot moved is sent once more, after loading the script or learning
the slot's new node: then, and only then, a player's later call of the same batch may have run before it (the
store's rules are written for events that arrive out of order, as they may from several replicas).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript

from core.connections import TRANSIENT_REPLIES, RedisClient, bounded, reply_code
from core.durability import NO_WAIT, Durability, DurabilitySource, on_one_connection
from core.errors import NotDurable, StoreUnavailable
from core.layout import LayoutGate
from server.store.feed_writes import FeedPart
from server.store.pipelined import pipelined_writes
from server.store.replies import script_error

#: Told of every durability wait: the mode, the seconds of the writes and their wait, and whether they were durable.
WaitObserver = Callable[[str, float, bool], None]


@dataclass(frozen=True, slots=True)
class ScriptCall:
    """One write: a registered script, its keys (the first one names the node) and its arguments; `feed`, for a
    write that may change entitlements, what the change feed needs of it (`server.store.feed_writes`)."""

    script: AsyncScript
    keys: Sequence[str]
    args: Sequence[Any]
    feed: FeedPart | None = None

    def command(self) -> tuple[Any, ...]:
        # EVALSHA as such (a script object in a pipeline asks SCRIPT EXISTS first: a second round trip each time).
        return ("EVALSHA", self.script.sha, len(self.keys), *self.keys, *self.args)


class ScriptWriter:
    """Runs write scripts with the durability wait after them.

    Args:
        redis: a connected client (standalone or cluster), owned by the caller.
        timeout_s: the upper bound of one round trip (the wait's own timeout is added to it).
        layout: the process's layout check, passed before the first write (None: the caller checked).
        durability: what a write waits for, or the callable that decides it on first use.
        on_wait: told of every durability wait (the metrics).
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        timeout_s: float,
        layout: LayoutGate | None = None,
        durability: DurabilitySource = NO_WAIT,
        on_wait: WaitObserver | None = None,
    ) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._layout = layout
        self._durability = durability
        self._on_wait = on_wait
        self._pipelined = pipelined_writes(redis)
        # Scripts loaded by this writer (on every primary). A batch's scripts are loaded before it is sent: a
        # script missing from the middle of a pipeline while loaded for its later calls (another task loading it
        # meanwhile) would let a player's later event run before an earlier one, resent after it.
        self._loaded: set[str] = set()

    async def run(self, call: ScriptCall) -> Any:
        """Runs one write and returns its reply.

        Raises:
            NotDurable: the script ran but its write is not durable as asked within the wait.
            StoreUnavailable: Redis did not answer in time.
            A script's domain error (`server.errors`), or the ResponseError no domain error matches.
        """
        reply = (await self.run_many([call]))[0]
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Runs `calls`, one round trip per node, those of one node in the given order; returns each call's reply
        or its error as an exception object (see the module's docstring). Never raises for Redis's failures.
        """
        if not calls:
            return []
        try:
            durability = await self._decided()
            if self._layout is not None and not self._layout.passed:
                await self._layout.before_use(self._timeout_s)
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        try:
            await self._load([call.script for call in calls if call.script.sha not in self._loaded])
        except StoreUnavailable as exc:
            return [exc] * len(calls)
        replies: list[Any] = [None] * len(calls)
        todo = list(range(len(calls)))
        for attempt in (1, 2):
            try:
                groups = await self._groups([calls[i].keys[0] for i in todo])
            except Exception as exc:  # the cluster's layout could not be read
                failure = StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}")
                for i in todo:
                    replies[i] = failure
                return replies
            sent = [[todo[j] for j in group] for group in groups]
            if len(sent) == 1:  # a single server, or one node: no task to gather
                results = [await self._send(calls, sent[0], durability)]
            else:
                results = await asyncio.gather(*(self._send(calls, group, durability) for group in sent))
            again: list[int] = []
            for group, group_replies in zip(sent, results, strict=True):
                for i, reply in zip(group, group_replies, strict=True):
                    replies[i] = reply
                    if attempt == 1 and await self._resend(calls[i], reply):
                        again.append(i)
            if not again:
                break
            todo = again
        return [self._translated(reply) for reply in replies]

    async def _load(self, scripts: Sequence[AsyncScript]) -> None:
        """Loads scripts not known to be loaded (SCRIPT LOAD goes to every primary of a cluster)."""
        for script in {script.sha: script for script in scripts}.values():
            await bounded(self._redis.script_load(script.script), self._timeout_s)
            self._loaded.add(script.sha)

    async def _decided(self) -> Durability:
        durability = self._durability
        if not isinstance(durability, Durability):
            durability = await durability()
        return durability

    async def _groups(self, first_keys: Sequence[str]) -> list[list[int]]:
        """The positions of `first_keys` grouped by the node that holds them, each group in the given order."""
        if not isinstance(self._redis, RedisCluster):
            return [list(range(len(first_keys)))]
        await self._redis.initialize()
        by_node: dict[str, list[int]] = {}
        for position, key in enumerate(first_keys):
            node = self._redis.get_node_from_key(key)
            by_node.setdefault(node.name if node is not None else "", []).append(position)
        return list(by_node.values())

    async def _send(self, calls: Sequence[ScriptCall], group: Sequence[int], durability: Durability) -> list[Any]:
        """One node's calls on one connection, with the wait after them; each reply (or the failure) per call."""
        commands = [calls[i].command() for i in group]
        if durability.waits:
            commands.append(durability.wait_command)
        # The wait's own timeout, on top of the writes': the server blocks the connection for up to that long.
        timeout_s = self._timeout_s + (durability.timeout_ms / 1000 if durability.waits else 0)
        started = time.perf_counter()
        try:
            if self._pipelined is not None:
                sending = self._pipelined.send(commands, waits=durability.waits, timeout_s=timeout_s)
                replies = await bounded(sending, timeout_s, self_bounded=True)
            else:
                replies = await bounded(on_one_connection(self._redis, calls[group[0]].keys[0], commands), timeout_s)
        except StoreUnavailable as exc:
            return [exc] * len(group)
        except redis_errors.ResponseError as exc:  # not a reply of one command: the whole round trip was refused
            return [exc] * len(group)
        if not durability.waits:
            return replies
        writes, waited = replies[:-1], replies[-1]
        waited_s = time.perf_counter() - started
        if isinstance(waited, Exception):
            code = reply_code(waited) if isinstance(waited, redis_errors.ResponseError) else ""
            shortfall: str | None = f"the wait failed ({code or type(waited).__name__})"
        else:
            shortfall = durability.shortfall(waited)
        if self._on_wait is not None and not all(isinstance(reply, Exception) for reply in writes):
            # (Writes that all failed, e.g. for a script to load first, wrote nothing to wait for.)
            self._on_wait(durability.mode, waited_s, shortfall is None)
        if shortfall is None:
            return writes
        not_durable = NotDurable(
            f"the write was applied but is not durable yet ({shortfall}) and could be lost in a failover: retry "
            "with the same idempotency key; the retry waits again and answers the stored result",
            mode=durability.mode,
            waited_s=waited_s,
        )
        # A write that failed changed nothing: its own error says more than the wait's.
        return [reply if isinstance(reply, Exception) else not_durable for reply in writes]

    async def _resend(self, call: ScriptCall, reply: Any) -> bool:
        """Whether a first attempt's reply says to send the call again (after loading its script or learning where
        its slot moved): the call wrote nothing."""
        try:
            if isinstance(reply, redis_errors.NoScriptError):  # the store restarted, or a node was added
                self._loaded.discard(call.script.sha)
                await self._load([call.script])
                return True
            if isinstance(reply, redis_errors.MovedError) and isinstance(self._redis, RedisCluster):
                # As redis-py does on a MOVED reply; the call then goes to the new node, with that node's wait.
                await self._redis.nodes_manager.move_slot(reply)
                return True
        except StoreUnavailable:
            return False  # the reply stays, translated to StoreUnavailable or its error
        return False

    @staticmethod
    def _translated(reply: Any) -> Any:
        """A reply as the caller sees it: a result, a domain error, or StoreUnavailable."""
        if isinstance(reply, StoreUnavailable) or not isinstance(reply, Exception):
            return reply
        if isinstance(reply, (redis_errors.AskError, redis_errors.TryAgainError)):
            return _unavailable(f"Redis is unavailable: the slot is moving ({type(reply).__name__})", reply)
        if isinstance(reply, redis_errors.ResponseError):
            if reply_code(reply) in TRANSIENT_REPLIES:
                return _unavailable(f"Redis is unavailable: {reply_code(reply)}", reply)
            domain = script_error(reply)
            if domain is not reply:
                domain.__cause__ = reply
            return domain
        return _unavailable(f"Redis is unavailable: {type(reply).__name__}", reply)


def _unavailable(message: str, cause: BaseException) -> StoreUnavailable:
    error = StoreUnavailable(message)
    error.__cause__ = cause
    return error
