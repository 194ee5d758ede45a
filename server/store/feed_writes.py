"""The change feed around the store's writes: what a write that may change entitlements carries to the feed, and
what happens to its changes once it answered.

On a single server a script may touch keys of any slot: the write script appends its changes to the player's feed
partition itself, atomically with them, in the write's one round trip (`FEED` in `server/lua/index.lua`; `prepare`
adds the partition's keys and the script's feed arguments to the call). Only a change that cannot go there yet (an
earlier one of the player is missing from the feed) is left to the relay, with the intent the script recorded.

On a cluster the partition's slot is in general on another node than the player's: each write's intent (a ZADD to
the partition's `pending` set, `server.feed.Intent`) goes in one round trip before the batch (one more on the
caller's path; a write whose intent could not be recorded is not sent), and every write's changes go to the relay.

`settle` hands the changes of a whole batch of writes to the relay (`FeedRelay.submit`) in one go: the relay
appends them in the background, batched; the writes wait for nothing more.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from redis.asyncio.cluster import RedisCluster

from core.connections import RedisClient, bounded, reply_text
from core.errors import StoreUnavailable
from core.feed import FeedEntry
from server.feed.relay import FeedRelay, Intent

if TYPE_CHECKING:  # writes.py imports this module for FeedPart
    from server.store.writes import ScriptCall, ScriptWriter

#: Reads a write script's reply into the changes it made (none: a replay, or nothing changed), and what the script
#: did with them (`server/lua/index.lua`'s feed_reply): 1 appended to the feed itself; an intent (str) it recorded,
#: the changes being the relay's to append; 0 nothing (a cluster: the writer's intent, the relay's changes).
ChangesOf = Callable[[Any], tuple[Sequence[FeedEntry], int | str]]


@dataclass(frozen=True, slots=True)
class FeedPart:
    """What a write that may change a player's entitlements needs for the feed: the player and how to read the
    changes from its reply."""

    project_id: int
    user_id: str
    changes: ChangesOf


class FeedWrites:
    """The feed's side of the store's writes (see the module's docstring).

    Args:
        redis: the store's client.
        relay: the relay (`server.feed`).
        timeout_s: the bound of one round trip (the intents' on a cluster).
    """

    def __init__(self, redis: RedisClient, relay: FeedRelay, *, timeout_s: float) -> None:
        self._redis = redis
        self._relay = relay
        self._timeout_s = timeout_s
        self._cluster = isinstance(redis, RedisCluster)

    async def run_many(self, writer: ScriptWriter, calls: Sequence[ScriptCall]) -> list[Any]:
        """`writer.run_many(calls)` with the feed: `prepare` before, `settle` after; a call whose intent could not
        be recorded is not sent (its reply: StoreUnavailable)."""
        sent, intents, replies = await self.prepare(calls)
        todo = [i for i, refused in enumerate(replies) if refused is None]
        for i, reply in zip(todo, await writer.run_many([sent[i] for i in todo]), strict=True):
            replies[i] = reply
        self.settle(calls, replies, intents)
        return replies

    async def prepare(self, calls: Sequence[Any]) -> tuple[list[Any], list[Intent | None], list[Exception | None]]:
        """The calls as they are to be sent, the intent of each (a cluster), and the error of each call that must
        not be sent (its intent could not be recorded).

        Args:
            calls: `server.store.writes.ScriptCall`s; those with a `feed` part go with the feed.
        """
        sent: list[Any] = list(calls)
        intents: list[Intent | None] = [None] * len(calls)
        refused: list[Exception | None] = [None] * len(calls)
        for i, call in enumerate(calls):
            part: FeedPart | None = call.feed
            if part is None:
                continue
            try:
                if self._cluster:
                    intents[i] = await self._relay.intent(part.project_id, part.user_id)
                else:
                    keys = await self._relay.partition(part.project_id, part.user_id)
                    # The scripts that take the feed have five keys of their own, then the index keys.
                    sent[i] = replace(
                        call,
                        keys=[*call.keys[:5], keys.stream, keys.relayed, keys.pending, *call.keys[5:]],
                        args=[*call.args, self._relay.retention_ms, part.user_id],
                    )
            except StoreUnavailable as exc:
                refused[i] = exc
        recorded = [intent for intent in intents if intent is not None]
        if recorded:
            try:
                await bounded(self._record(recorded), self._timeout_s)
            except StoreUnavailable as exc:
                refused = [exc if intent is not None else error for intent, error in zip(intents, refused, strict=True)]
                intents = [None] * len(calls)
        return sent, intents, refused

    async def _record(self, intents: Sequence[Intent]) -> None:
        # One pipeline: on a cluster redis-py sends each node's commands together, the nodes concurrently.
        pipe = self._redis.pipeline(transaction=False)
        for intent in intents:
            pipe.execute_command(*intent.command())
        await pipe.execute()

    def settle(self, calls: Sequence[Any], replies: Sequence[Any], intents: Sequence[Intent | None]) -> None:
        """Hands the changes of answered writes to the relay, all in one `submit`; counts those the scripts
        appended themselves. A write that failed with Redis unavailable may have been applied: its intent stays
        for the repair. A write its script refused changed nothing: its intent goes."""
        writes: list[tuple[Intent, Sequence[FeedEntry]]] = []
        appended = 0
        for call, reply, intent in zip(calls, replies, intents, strict=True):
            part: FeedPart | None = call.feed
            if part is None:
                continue
            if isinstance(reply, Exception):
                if intent is not None and not isinstance(reply, StoreUnavailable):
                    writes.append((intent, ()))
                continue
            made, done = part.changes(reply)
            if intent is not None:
                writes.append((intent, made))
            elif done == 1:
                appended += len(made)
            elif isinstance(done, str):
                keys = self._relay.partition_keys(part.project_id, part.user_id)
                writes.append((Intent(part.project_id, part.user_id, keys, done), made))
        if appended:
            self._relay.appended_by_writes(appended)
        if writes:
            self._relay.submit(writes)


def grant_part(project_id: int, user_id: str, sku: str, operation: str) -> FeedPart:
    """The feed part of a grant or a revoke (`operation`) of one sku."""
    record = operation == "grant"
    return FeedPart(project_id, user_id, lambda reply: grant_changes(reply, user_id, sku, operation, record=record))


def order_part(project_id: int, user_id: str, operation: str) -> FeedPart:
    """The feed part of an order event's write (`operation`: order_paid or order_canceled)."""
    return FeedPart(project_id, user_id, lambda reply: order_changes(reply, user_id, operation))


def grant_changes(
    reply: Any, user_id: str, sku: str, operation: str, *, record: bool
) -> tuple[list[FeedEntry], int | str]:
    """A grant's or revoke's reply (`server/lua/prologue.lua`) for the feed (`ChangesOf`): [payload, version,
    at_ms, feed] for a change (the record after is the payload for a grant, none for a revoke); [payload, version,
    feed] for a replay the feed may lack: a probe (`_probe`); else nothing."""
    if not isinstance(reply, list):
        return [], 1
    if len(reply) == 3:
        return _probe(user_id, int(reply[1])), _feed_done(reply[2])
    payload, version, at_ms, done = reply
    after = reply_text(payload)[1:] if record else ""
    return [FeedEntry(user_id, sku, int(version), operation, int(at_ms), after)], _feed_done(done)


def order_changes(reply: Any, user_id: str, operation: str) -> tuple[list[FeedEntry], int | str]:
    """An order script's reply (`server/lua/order.lua`) for the feed: its changes (`f`, each made at `at`) or the
    probe of a replay (`pv`), and what the script did with them (`h`)."""
    data = json.loads(reply)
    done = _feed_done(data.get("h", 1))
    if "pv" in data:
        return _probe(user_id, int(data["pv"])), done
    at_ms = int(data.get("at") or 0)
    made = [FeedEntry(user_id, sku, int(version), operation, at_ms, after) for version, sku, after in data.get("f", ())]
    return made, done


def _feed_done(value: Any) -> int | str:
    """index.lua's feed_reply() as read back: 1, 0, or the intent's member."""
    if isinstance(value, (bytes, str)):
        return reply_text(value)
    return int(value)


def _probe(user_id: str, version: int) -> list[FeedEntry]:
    """A replay's probe for the relay (operation ""; never appended): the player's version, so that changes of the
    first call that were never relayed (it was applied after its caller gave up) are found and relayed."""
    return [FeedEntry(user_id, "", version, "", 0, "")]
