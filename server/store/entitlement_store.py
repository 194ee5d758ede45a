"""The entitlement store: players' items, the audit ledger and idempotency records, in Redis.

Every write is one Lua script (`server/lua/`) that checks the idempotency key, applies the change, appends to the
player's ledger and remembers the result, atomically: concurrent writers, on any number of replicas, never lose
an update, and a replayed key never applies twice. Every method takes the project first: the same player id in
two projects is two players. All of one player's keys in a project share a hash tag (`core.keys`), so the same
scripts run unchanged on Redis Cluster.

Single reads and CheckEntitlements' pairs (read at once: `read_pairs`) go pipelined on one connection on a single
server (`server.store.pipelined`; on a cluster single reads share round trips, `server.store.batcher`). Listings
read one page through the player's indexes (`server/lua/index.lua`, kept by every write script), one script per
page: their work is bounded by the page, not the history; a player written before the indexes is indexed first.

Every write counts once durable as `ENTITLEMENTS_WRITE_DURABILITY` decided (`server.durability`): the script and
its WAIT/WAITAOF go on one connection to the player's node in one round trip (`server.store.writes`; pipelined on a
single server); a wait that falls short raises `NotDurable` (the write stays; its retry, a replay, writes and
waits again). The consumer acks, and Grant and Revoke answer, only after that; the consumer writes in batches.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any, TypeVar, cast

import redis.exceptions as redis_errors
from redis.commands.core import AsyncScript

from core import scripts
from core.connections import RedisClient, bounded, reply_text
from core.durability import NO_WAIT, DurabilitySource
from core.errors import StoreUnavailable
from core.keys import UserKeys, items_key
from core.layout import LayoutGate
from core.logs import user_ref
from server.errors import FailedPrecondition
from server.feed.relay import FeedRelay
from server.store.batcher import read_pairs
from server.store.feed_writes import FeedPart, FeedWrites, grant_part, order_part
from server.store.pages import EntitlementPage, SubscriptionPage, lex_after
from server.store.pipelined import PipelinedReads, single_reads
from server.store.records import (
    MAX_CONSUMABLE_TOTAL,
    MAX_EXPIRES_AT_MS,
    EntitlementRecord,
    GrantCommand,
    GrantResult,
    LedgerEntry,
    OrderLine,
    OrderOutcome,
    RevokeCommand,
    RevokeResult,
    StoredFields,
    compact_json,
)
from server.store.replies import script_error, split_reply
from server.store.subscriptions import SubscriptionChange, SubscriptionOutcome
from server.store.writes import ScriptCall, ScriptWriter, WaitObserver

T = TypeVar("T")

#: How many entries of a player's items (then subscriptions) one step of `build_index` scans, about.
INDEX_BUILD_STEP = 250
#: How many expired entries one ListEntitlements page may prune from the indexes, and skip while walking them.
EXPIRED_BUDGET = 500


class EntitlementStore:
    """Reads and writes entitlements. Every method raises StoreUnavailable when Redis does not answer in time.

    Args:
        redis: a connected client (standalone or cluster), owned by the caller.
        timeout_s: the upper bound of any one store operation, retries included.
        idempotency_ttl_ms: how long a write's idempotency key is remembered.
        layout: the process's layout check, passed before the first operation (None: the caller checked).
        durability: what a write waits for before it returns (default: nothing), or the callable that decides it
            on first use (`core.durability.DurabilityDecider.current`).
        on_wait: told of every durability wait (the metrics).
        feed: the change feed's relay (`server.feed`, around the writes: `server.store.feed_writes`); None: none.
    """

    def __init__(
        self,
        redis: RedisClient,
        *,
        timeout_s: float,
        idempotency_ttl_ms: int,
        layout: LayoutGate | None = None,
        durability: DurabilitySource = NO_WAIT,
        on_wait: WaitObserver | None = None,
        feed: FeedRelay | None = None,
    ) -> None:
        self._redis = redis
        self._feed = None if feed is None else FeedWrites(redis, feed, timeout_s=timeout_s)
        self._writer = ScriptWriter(redis, timeout_s=timeout_s, layout=layout, durability=durability, on_wait=on_wait)
        self._layout = layout
        self._timeout_s = timeout_s
        self._idempotency_ttl_ms = idempotency_ttl_ms
        # index.lua goes before every script that writes the items or subscriptions hash, and reads the indexes.
        self._grant: AsyncScript = self._script("kinds.lua", "index.lua", "prologue.lua", "grant.lua")
        self._revoke: AsyncScript = self._script("index.lua", "prologue.lua", "revoke.lua")
        self._order_paid: AsyncScript = self._script("kinds.lua", "index.lua", "order.lua", "order_paid.lua")
        self._order_canceled: AsyncScript = self._script("kinds.lua", "index.lua", "order.lua", "order_canceled.lua")
        self._subscription: AsyncScript = self._script("kinds.lua", "index.lua", "subscription.lua")
        self._index_build: AsyncScript = self._script("kinds.lua", "index.lua", "index_build.lua")
        self._list_page: AsyncScript = self._script("kinds.lua", "index.lua", "list_page.lua")
        self._list_subscriptions: AsyncScript = self._script("kinds.lua", "index.lua", "list_subscriptions.lua")
        self._event_ledger: AsyncScript = self._script("kinds.lua", "event_ledger.lua")
        self._check_pairs: AsyncScript = self._script("check_pairs.lua")
        self._reads = single_reads(redis, timeout_s)
        self._reads_by = self._reads.command if isinstance(self._reads, PipelinedReads) else None

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Applies a grant atomically, or replays the result stored under its idempotency key.

        Raises:
            IdempotencyConflict: the key was used for a different request.
            FailedPrecondition: the sku is held as another kind, a total or expiry limit would be passed, or a
                held time-limited sku was granted without a duration.
            StoreUnavailable: Redis did not answer in time.
            NotDurable: (a StoreUnavailable) the grant was applied (or replayed) but is not durable as asked in
                time; retry it with the same idempotency key.
        """
        keys = UserKeys(command.project_id, command.user_id)
        args = [
            *self._common_args(command.fingerprint(), "grant", command.sku, actor, command.reason),
            command.idempotency_key,
            command.kind,
            command.quantity,
            command.period_ms,
            MAX_CONSUMABLE_TOTAL,
            compact_json(dict(command.metadata)),
            MAX_EXPIRES_AT_MS,
            command.period_months,
        ]
        part = grant_part(command.project_id, command.user_id, command.sku, "grant")
        reply = await self._write(self._grant, self._write_keys(keys, command.idempotency_key), args, part)
        replayed, payload = split_reply(reply[0] if isinstance(reply, list) else reply)
        return GrantResult(EntitlementRecord.decode(command.user_id, command.sku, payload), replayed)

    async def revoke(self, command: RevokeCommand, actor: str) -> RevokeResult:
        """Removes a sku from a player atomically, or replays the stored result.

        Raises:
            IdempotencyConflict: the key was used for a different request.
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(command.project_id, command.user_id)
        args = [
            *self._common_args(command.fingerprint(), "revoke", command.sku, actor, command.reason),
            command.idempotency_key,
        ]
        part = grant_part(command.project_id, command.user_id, command.sku, "revoke")
        reply = await self._write(self._revoke, self._write_keys(keys, command.idempotency_key), args, part)
        replayed, payload = split_reply(reply[0] if isinstance(reply, list) else reply)
        previous = None if payload == "{}" else EntitlementRecord.decode(command.user_id, command.sku, payload)
        return RevokeResult(previous, replayed)

    async def get(self, project_id: int, user_id: str, sku: str) -> EntitlementRecord | None:
        """Returns the stored entitlement of one sku, expired or not, or None."""
        raw = await self._run(self._reads.hget(items_key(project_id, user_id), sku), self_bounded=True)
        return None if raw is None else EntitlementRecord.decode(user_id, sku, raw)

    async def get_many(self, project_id: int, pairs: list[tuple[str, str]]) -> list[StoredFields | None]:
        """What is stored (or None) of each (user_id, sku) pair, in order (`server.store.batcher.read_pairs`)."""
        return await self._run(read_pairs(self._redis, self._check_pairs, project_id, pairs, command=self._reads_by))

    async def list_page(
        self, project_id: int, user_id: str, after_sku: str | None, page_size: int, *, include_expired: bool
    ) -> EntitlementPage:
        """Reads one page of a player's entitlements with skus after `after_sku` (byte order), in one script.

        With `include_expired`, every held sku, `page_size` of them unless the end comes first. Without, the active
        ones: expired items are skipped through the indexes without being read, at most `EXPIRED_BUDGET` of them
        per call (and as many pruned from the indexes), so the page may be short, even empty, while more follow.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(project_id, user_id)
        args = ["all" if include_expired else "live", lex_after(after_sku), page_size, EXPIRED_BUDGET]
        reply = await self._read_indexed(project_id, user_id, lambda: self._list_page(keys=keys.indexes, args=args))
        return EntitlementPage.from_reply(user_id, reply)

    async def subscriptions_page(
        self, project_id: int, user_id: str, offset: int, limit: int, *, include_inactive: bool
    ) -> SubscriptionPage:
        """Reads one page of a player's subscriptions (recurring ones, then time-limited items), by offset.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(project_id, user_id)
        args = ["1" if include_inactive else "0", offset, limit]
        reply = await self._read_indexed(
            project_id, user_id, lambda: self._list_subscriptions(keys=keys.indexes, args=args)
        )
        return SubscriptionPage.from_reply(user_id, reply)

    async def build_index(self, project_id: int, user_id: str, *, max_steps: int | None = None) -> bool:
        """Indexes the data of a player written before the indexes existed, one bounded script per step
        (`INDEX_BUILD_STEP` entries each), so that Redis is never held long whatever the player's history; a
        no-op once they are complete. The listings call it when they need it.

        Returns:
            True once the indexes are complete; False when `max_steps` steps were not enough.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(project_id, user_id).indexes
        steps = 0
        while max_steps is None or steps < max_steps:
            steps += 1
            if int(await self._run(self._index_build(keys=keys, args=[INDEX_BUILD_STEP]))) == 1:
                return True
        return False

    async def _read_indexed(self, project_id: int, user_id: str, read: Callable[[], Awaitable[Any]]) -> Sequence[Any]:
        """Runs a listing script, building the player's indexes first when it answers that they are not."""
        reply = await self._run(read())
        if reply_text(reply[0]) == "unindexed":
            await self.build_index(project_id, user_id)
            reply = await self._run(read())
            if reply_text(reply[0]) == "unindexed":  # the state key was removed meanwhile (an operator)
                raise StoreUnavailable(f"the indexes of player {user_ref(user_id)} were removed while being read")
        return cast(Sequence[Any], reply)

    async def ledger(
        self, project_id: int, user_id: str, count: int = 100, *, before: str | None = None
    ) -> list[LedgerEntry]:
        """Returns the newest `count` ledger entries of a player, newest first; with `before` (an entry id), the
        newest `count` older than that entry (exclusive: it is not repeated)."""
        newest = f"({before}" if before else "+"
        key = UserKeys(project_id, user_id).ledger
        rows = await self._run(self._redis.xrevrange(key, max=newest, min="-", count=count)) or []
        return [
            LedgerEntry(reply_text(entry_id or b""), {reply_text(k): reply_text(v) for k, v in (values or {}).items()})
            for entry_id, values in rows
        ]

    def order_paid_call(
        self,
        project_id: int,
        user_id: str,
        order_id: str,
        event_id: str,
        actor: str,
        lines: Sequence[OrderLine],
        record: Mapping[str, str],
        *,
        withheld: str = "",
        withheld_reason: str = "",
    ) -> ScriptCall:
        """The write that grants a paid order's lines atomically, once: the order hash (`UserKeys.order`) is its
        idempotency record. Kinds follow the Grant rules; a sku held as another kind than the catalog says is
        granted as the held kind (counted in `kind_conflicts`). Each line's change is on the ledger with
        `event_id` as its key. Its reply is read by `order_outcome`, which raises FailedPrecondition when a line
        would pass the quantity or expiry limit (nothing was written then).

        Args:
            record: order fields kept in the order hash for operators (transaction id, amount, lines, ...).
            withheld: when set ("sandbox"), the order grants nothing by policy: it is recorded as paid with
                `withheld` and no grants (result "withheld"), with one ledger entry saying `withheld_reason` and
                listing the record's `lines`; `lines` are then not needed.
        """
        payload = [
            {"s": line.sku, "k": line.kind, "p": line.period_ms, "m": line.period_months, "q": line.quantity}
            for line in lines
        ]
        args = [
            *self._order_args(order_id, event_id, actor, record),
            compact_json(payload) if payload else "[]",
            MAX_CONSUMABLE_TOTAL,
            MAX_EXPIRES_AT_MS,
            withheld,
            withheld_reason,
        ]
        return self._order_call(self._order_paid, "order_paid", project_id, user_id, order_id, args)

    async def apply_order_paid(
        self,
        project_id: int,
        user_id: str,
        order_id: str,
        event_id: str,
        actor: str,
        lines: Sequence[OrderLine],
        record: Mapping[str, str],
        *,
        withheld: str = "",
        withheld_reason: str = "",
    ) -> OrderOutcome:
        """Runs `order_paid_call` (see there) and reads its reply.

        Raises:
            FailedPrecondition: a line would pass the quantity or expiry limit; nothing was written.
            StoreUnavailable: Redis did not answer in time.
        """
        policy = {"withheld": withheld, "withheld_reason": withheld_reason}
        call = self.order_paid_call(project_id, user_id, order_id, event_id, actor, lines, record, **policy)
        return self.order_outcome(await self._settled(call), order_id)

    def order_canceled_call(
        self, project_id: int, user_id: str, order_id: str, event_id: str, actor: str, record: Mapping[str, str]
    ) -> ScriptCall:
        """The write that undoes exactly what the order's order_paid granted and marks the order canceled,
        atomically, once. A cancel ahead of its order_paid is recorded, and that order_paid will grant nothing.
        Its reply is read by `order_outcome`."""
        args = self._order_args(order_id, event_id, actor, record)
        return self._order_call(self._order_canceled, "order_canceled", project_id, user_id, order_id, args)

    async def apply_order_canceled(
        self, project_id: int, user_id: str, order_id: str, event_id: str, actor: str, record: Mapping[str, str]
    ) -> OrderOutcome:
        """Runs `order_canceled_call` and reads its reply.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        call = self.order_canceled_call(project_id, user_id, order_id, event_id, actor, record)
        return self.order_outcome(await self._settled(call), order_id)

    async def write_many(self, calls: Sequence[ScriptCall]) -> list[Any]:
        """Runs many writes in one round trip per node, with one durability wait per node (`ScriptWriter.run_many`):
        each call's reply, or its error as an exception object (never raised), for `order_outcome`,
        `subscription_outcome` or `event_recorded` to read."""
        return await self._run_many(calls)

    @staticmethod
    def order_outcome(reply: Any, order_id: str) -> OrderOutcome:
        """What an order write did, from its reply (`write_many`).

        Raises:
            The reply's error: FailedPrecondition (naming the sku past a limit), StoreUnavailable, NotDurable, ...
        """
        if isinstance(reply, FailedPrecondition):
            # The store's generic message lacks the sku: name it from the script's error.
            cause = reply.__cause__
            words = str(cause).split() if cause is not None else []
            if words and words[0] in ("QUANTITY_LIMIT", "EXPIRY_LIMIT"):
                raise FailedPrecondition(f"order {order_id}: sku {words[-1]!r}: {reply}") from cause
        if isinstance(reply, Exception):
            raise reply
        return OrderOutcome.from_reply(reply)

    async def order(self, project_id: int, user_id: str, order_id: str) -> dict[str, str] | None:
        """The stored order hash (status, granted, grants, timestamps, ...), or None if no event named it."""
        raw = await self._run(self._redis.hgetall(UserKeys(project_id, user_id).order(order_id)))
        return {reply_text(k): reply_text(v) for k, v in raw.items()} or None

    def subscription_call(
        self, project_id: int, user_id: str, event_id: str, actor: str, action: str, change: SubscriptionChange
    ) -> ScriptCall:
        """The write that creates or updates a recurring subscription from a provider event, once per `event_id`.

        Args:
            action: "created", "updated", "non_renewing" or "canceled".
            change: what the event says about the subscription (`change.id` names it).
        """
        keys = UserKeys(project_id, user_id)
        args: list[Any] = [event_id, self._idempotency_ttl_ms, actor, action, change.id, compact_json(change.fields())]
        return ScriptCall(
            self._subscription, [keys.subscriptions, keys.applied_event(event_id), keys.ledger, *keys.indexes], args
        )

    async def record_subscription_event(
        self, project_id: int, user_id: str, event_id: str, actor: str, action: str, change: SubscriptionChange
    ) -> SubscriptionOutcome:
        """Runs `subscription_call` and reads its reply.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        call = self.subscription_call(project_id, user_id, event_id, actor, action, change)
        return SubscriptionOutcome.from_reply(await self._settled(call))

    def event_call(self, project_id: int, user_id: str, event_id: str, fields: Mapping[str, str]) -> ScriptCall:
        """The write that appends a ledger entry for an event that grants nothing (payment, refund), once per
        `event_id`. Its reply is "applied" when appended now (`reply_text`), "replayed" when recorded before."""
        keys = UserKeys(project_id, user_id)
        args: list[Any] = [self._idempotency_ttl_ms]
        for name, value in fields.items():
            args += [name, value]
        return ScriptCall(self._event_ledger, [keys.applied_event(event_id), keys.ledger], args)

    async def record_event(self, project_id: int, user_id: str, event_id: str, fields: Mapping[str, str]) -> bool:
        """Runs `event_call`. Returns True if appended now, False if the event had been recorded before.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        return reply_text(await self._settled(self.event_call(project_id, user_id, event_id, fields))) == "applied"

    @staticmethod
    def _order_args(order_id: str, event_id: str, actor: str, record: Mapping[str, str]) -> list[Any]:
        return [event_id, order_id, actor, compact_json(dict(record)) if record else "{}"]

    @staticmethod
    def _order_call(
        script: AsyncScript, operation: str, project_id: int, user_id: str, order_id: str, args: list[Any]
    ) -> ScriptCall:
        keys = UserKeys(project_id, user_id)
        order_keys = [keys.items, keys.skus, keys.ledger, keys.order(order_id), keys.version, *keys.indexes]
        return ScriptCall(script, order_keys, args, order_part(project_id, user_id, operation))

    async def _settled(self, call: ScriptCall) -> Any:
        """A write's reply, or its error as an exception object (for the readers of replies to raise)."""
        return (await self._run_many([call]))[0]

    async def _run_many(self, calls: Sequence[ScriptCall]) -> list[Any]:  # with the feed, if any, around it
        return await (self._writer.run_many(calls) if self._feed is None else self._feed.run_many(self._writer, calls))

    async def ping(self) -> None:
        """Raises StoreUnavailable unless Redis answers."""
        await self._run(self._redis.ping())

    def _script(self, *names: str) -> AsyncScript:
        return scripts.register(self._redis, "server", *names)

    def _common_args(self, fingerprint: str, operation: str, sku: str, actor: str, reason: str) -> list[Any]:
        return [fingerprint, self._idempotency_ttl_ms, operation, sku, actor, reason]

    @staticmethod
    def _write_keys(keys: UserKeys, idempotency_key: str) -> list[str]:
        return [keys.items, keys.skus, keys.idempotency(idempotency_key), keys.ledger, keys.version, *keys.indexes]

    async def _write(self, script: AsyncScript, keys: list[str], args: list[Any], feed: FeedPart) -> Any:
        """Runs a write script with its durability wait and the feed (`_run_many`); raises NotDurable,
        StoreUnavailable or a script's domain error."""
        reply = await self._settled(ScriptCall(script, keys, args, feed))
        if isinstance(reply, Exception):
            raise reply
        return reply

    async def _run(self, operation: Awaitable[T], *, self_bounded: bool = False) -> T:
        """Awaits a Redis operation within the store timeout, translating Redis errors to domain errors.

        `self_bounded`: the operation enforces the timeout itself (the read batcher does, once per round trip).
        """
        if self._layout is not None and not self._layout.passed:
            try:
                await self._layout.before_use(self._timeout_s)
            finally:
                if not self._layout.passed and inspect.iscoroutine(operation):
                    operation.close()  # never started
        try:
            return await bounded(operation, self._timeout_s, self_bounded=self_bounded)
        except redis_errors.ResponseError as exc:
            raise script_error(exc) from exc
