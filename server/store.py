"""The entitlement store: players' items, the audit ledger and idempotency records, in Redis.

Every write is one Lua script (`server/lua/`) that checks the idempotency key, applies the change, appends to the
player's ledger and remembers the result, atomically: concurrent writers, on any number of replicas, never lose
an update, and a replayed key never applies twice. All of one player's keys share a hash tag (`core.keys`), so
the same scripts run unchanged on Redis Cluster.

Reads of single entitlements share round trips under load: while one is in flight, the next ones queue and go
together in one pipeline (`_ReadBatcher`).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Awaitable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import redis.exceptions as redis_errors
from redis.commands.core import AsyncScript

from core import scripts
from core.connections import RedisClient, bounded, reply_code
from core.keys import UserKeys, items_key
from server.errors import FailedPrecondition, IdempotencyConflict

T = TypeVar("T")

CONSUMABLE, PERMANENT, TIME_LIMITED = 1, 2, 3
KIND_NAMES = {CONSUMABLE: "consumable", PERMANENT: "permanent", TIME_LIMITED: "time-limited"}
MAX_CONSUMABLE_TOTAL = 1_000_000_000_000
# Timestamps travel through Lua's cjson, which prints 14 significant digits: keep expiries below 10**14 ms
# (the year 5138) so they stay exact.
MAX_EXPIRES_AT_MS = 10**14 - 1


@dataclass(frozen=True)
class EntitlementRecord:
    """One stored entitlement. Times are milliseconds since the Unix epoch (Redis server clock)."""

    user_id: str
    sku: str
    kind: int
    quantity: int
    granted_at_ms: int
    updated_at_ms: int
    expires_at_ms: int | None = None
    period_ms: int | None = None

    def active(self, now_ms: int) -> bool:
        """True when the entitlement is in force at `now_ms`."""
        if self.quantity <= 0:
            return False
        return self.expires_at_ms is None or now_ms < self.expires_at_ms

    @classmethod
    def decode(cls, user_id: str, sku: str, raw: bytes | str) -> EntitlementRecord:
        data = json.loads(raw)
        return cls(
            user_id=user_id,
            sku=sku,
            kind=int(data["k"]),
            quantity=int(data["q"]),
            granted_at_ms=int(data["g"]),
            updated_at_ms=int(data["u"]),
            expires_at_ms=int(data["e"]) if "e" in data else None,
            period_ms=int(data["p"]) if "p" in data else None,
        )


@dataclass(frozen=True)
class GrantCommand:
    """A validated grant. `kind` 0 lets the store infer it (see EntitlementKind in the .proto)."""

    user_id: str
    sku: str
    kind: int
    quantity: int
    period_ms: int
    idempotency_key: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)

    def fingerprint(self) -> str:
        return _fingerprint(
            "grant",
            [
                self.user_id,
                self.sku,
                self.kind,
                self.quantity,
                self.period_ms,
                self.reason,
                sorted(self.metadata.items()),
            ],
        )


@dataclass(frozen=True)
class RevokeCommand:
    """A validated revoke."""

    user_id: str
    sku: str
    idempotency_key: str
    reason: str = ""

    def fingerprint(self) -> str:
        return _fingerprint("revoke", [self.user_id, self.sku, self.reason])


@dataclass(frozen=True)
class GrantResult:
    entitlement: EntitlementRecord
    replayed: bool


@dataclass(frozen=True)
class RevokeResult:
    previous: EntitlementRecord | None
    replayed: bool


@dataclass(frozen=True)
class OrderLine:
    """One line of a paid order to grant: the catalog's kind (0 for a plain item) and period, and the units."""

    sku: str
    kind: int
    period_ms: int
    quantity: int


@dataclass(frozen=True)
class OrderOutcome:
    """What applying an order event did, and the order's stored state afterwards.

    `result`: "applied"; "replayed" (the event had been applied before: nothing changed); "ignored" (an
    order_paid after the order's cancel: nothing granted); "canceled_before_paid" (a cancel recorded ahead of
    its order_paid).
    """

    result: str
    status: str
    entitlements_granted: bool
    updated_at_ms: int
    lines_changed: int = 0
    kind_conflicts: int = 0


@dataclass(frozen=True)
class SubscriptionOutcome:
    """What recording a subscription event did: "applied", "stale" (older than the stored state, ignored) or
    "replayed"; and the stored record (None only for a replay of an event whose record was since removed)."""

    result: str
    record: dict[str, Any] | None


@dataclass(frozen=True)
class LedgerEntry:
    """One line of a player's audit ledger."""

    entry_id: str
    fields: dict[str, str]


def _fingerprint(operation: str, parts: list[Any]) -> str:
    canonical = json.dumps([operation, *parts], separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class EntitlementStore:
    """Reads and writes entitlements. Every method raises StoreUnavailable when Redis does not answer in time.

    Args:
        redis: a connected client (standalone or cluster), owned by the caller.
        timeout_s: the upper bound of any one store operation, retries included.
        idempotency_ttl_ms: how long a write's idempotency key is remembered.
    """

    def __init__(self, redis: RedisClient, *, timeout_s: float, idempotency_ttl_ms: int) -> None:
        self._redis = redis
        self._timeout_s = timeout_s
        self._idempotency_ttl_ms = idempotency_ttl_ms
        self._grant: AsyncScript = scripts.register(redis, "server", "kinds.lua", "prologue.lua", "grant.lua")
        self._revoke: AsyncScript = scripts.register(redis, "server", "prologue.lua", "revoke.lua")
        self._order_paid: AsyncScript = scripts.register(redis, "server", "kinds.lua", "order.lua", "order_paid.lua")
        self._order_canceled: AsyncScript = scripts.register(
            redis, "server", "kinds.lua", "order.lua", "order_canceled.lua"
        )
        self._subscription: AsyncScript = scripts.register(redis, "server", "kinds.lua", "subscription.lua")
        self._event_ledger: AsyncScript = scripts.register(redis, "server", "kinds.lua", "event_ledger.lua")
        self._reads = _ReadBatcher(redis, timeout_s)

    async def grant(self, command: GrantCommand, actor: str) -> GrantResult:
        """Applies a grant atomically, or replays the result stored under its idempotency key.

        Raises:
            IdempotencyConflict: the key was used for a different request.
            FailedPrecondition: the sku is held as another kind, a total or expiry limit would be passed, or a
                held time-limited sku was granted without a duration.
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(command.user_id)
        args = [
            *self._common_args(command.fingerprint(), "grant", command.sku, actor, command.reason),
            command.idempotency_key,
            command.kind,
            command.quantity,
            command.period_ms,
            MAX_CONSUMABLE_TOTAL,
            json.dumps(dict(command.metadata), separators=(",", ":"), ensure_ascii=False),
            MAX_EXPIRES_AT_MS,
        ]
        reply = await self._run(self._grant(keys=self._write_keys(keys, command.idempotency_key), args=args))
        replayed, payload = _split_reply(reply)
        return GrantResult(EntitlementRecord.decode(command.user_id, command.sku, payload), replayed)

    async def revoke(self, command: RevokeCommand, actor: str) -> RevokeResult:
        """Removes a sku from a player atomically, or replays the stored result.

        Raises:
            IdempotencyConflict: the key was used for a different request.
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(command.user_id)
        args = [
            *self._common_args(command.fingerprint(), "revoke", command.sku, actor, command.reason),
            command.idempotency_key,
        ]
        reply = await self._run(self._revoke(keys=self._write_keys(keys, command.idempotency_key), args=args))
        replayed, payload = _split_reply(reply)
        previous = None if payload == "{}" else EntitlementRecord.decode(command.user_id, command.sku, payload)
        return RevokeResult(previous, replayed)

    async def get(self, user_id: str, sku: str) -> EntitlementRecord | None:
        """Returns the stored entitlement of one sku, expired or not, or None."""
        raw = await self._run(self._reads.hget(items_key(user_id), sku), self_bounded=True)
        return None if raw is None else EntitlementRecord.decode(user_id, sku, raw)

    async def list_page(
        self, user_id: str, after_sku: str | None, count: int
    ) -> tuple[list[EntitlementRecord], str | None]:
        """Reads up to `count` entitlements with skus after `after_sku` (byte order), expired ones included.

        Returns:
            The entitlements, and the sku to continue after, or None once the end was reached.
        """
        keys = UserKeys(user_id)

        async def page() -> tuple[list[EntitlementRecord], str | None]:
            found = await self._redis.zrangebylex(keys.skus, _lex_after(after_sku), b"+", start=0, num=count)
            skus = [_text(sku) for sku in found]
            if not skus:
                return [], None
            raws = await self._redis.hmget(keys.items, skus)
            records = [
                EntitlementRecord.decode(user_id, sku, raw)
                for sku, raw in zip(skus, raws, strict=True)
                if raw is not None  # revoked between the two reads
            ]
            return records, skus[-1] if len(skus) == count else None

        return await self._run(page())

    async def has_sku_after(self, user_id: str, sku: str) -> bool:
        """Whether the player holds any sku after `sku` in byte order."""
        found = await self._run(self._redis.zrangebylex(UserKeys(user_id).skus, _lex_after(sku), b"+", start=0, num=1))
        return bool(found)

    async def all_entitlements(self, user_id: str) -> list[EntitlementRecord]:
        """Returns every stored entitlement of a player, in sku order."""
        raw = await self._run(self._redis.hgetall(UserKeys(user_id).items))
        return sorted(
            (EntitlementRecord.decode(user_id, _text(sku), value) for sku, value in raw.items()),
            key=lambda r: r.sku.encode(),
        )

    async def recurring_subscriptions(self, user_id: str) -> list[dict[str, Any]]:
        """Returns the player's recurring subscriptions as recorded from Xsolla's webhooks."""
        raw = await self._run(self._redis.hgetall(UserKeys(user_id).subscriptions))
        return [json.loads(value) for value in raw.values()]

    async def ledger(self, user_id: str, count: int = 100) -> list[LedgerEntry]:
        """Returns the newest `count` ledger entries of a player, newest first."""
        rows = await self._run(self._redis.xrevrange(UserKeys(user_id).ledger, count=count)) or []
        return [
            LedgerEntry(_text(entry_id or b""), {_text(k): _text(v) for k, v in (values or {}).items()})
            for entry_id, values in rows
        ]

    async def apply_order_paid(
        self,
        user_id: str,
        order_id: str,
        event_id: str,
        actor: str,
        lines: Sequence[OrderLine],
        record: Mapping[str, str],
    ) -> OrderOutcome:
        """Grants a paid order's lines atomically, once: the order hash (`UserKeys.order`) is its idempotency
        record. Kinds follow the Grant rules; a sku held as another kind than the catalog says is granted as the
        held kind (counted in `kind_conflicts`). Each line's change is on the ledger with `event_id` as its key.

        Args:
            record: order fields kept in the order hash for operators (transaction id, amount, lines, ...).

        Raises:
            FailedPrecondition: a line would pass the quantity or expiry limit; nothing was written.
            StoreUnavailable: Redis did not answer in time.
        """
        payload = [{"s": line.sku, "k": line.kind, "p": line.period_ms, "q": line.quantity} for line in lines]
        args = [
            *self._order_args(order_id, event_id, actor, record),
            _json(payload) if payload else "[]",
            MAX_CONSUMABLE_TOTAL,
            MAX_EXPIRES_AT_MS,
        ]
        return await self._run_order(self._order_paid, user_id, order_id, args)

    async def apply_order_canceled(
        self, user_id: str, order_id: str, event_id: str, actor: str, record: Mapping[str, str]
    ) -> OrderOutcome:
        """Undoes exactly what the order's order_paid granted and marks the order canceled, atomically, once.
        A cancel ahead of its order_paid is recorded, and that order_paid will grant nothing.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        args = self._order_args(order_id, event_id, actor, record)
        return await self._run_order(self._order_canceled, user_id, order_id, args)

    async def order(self, user_id: str, order_id: str) -> dict[str, str] | None:
        """The stored order hash (status, granted, grants, timestamps, ...), or None if no event named it."""
        raw = await self._run(self._redis.hgetall(UserKeys(user_id).order(order_id)))
        return {_text(k): _text(v) for k, v in raw.items()} or None

    async def record_subscription_event(
        self, user_id: str, event_id: str, actor: str, action: str, subscription_id: str, fields: Mapping[str, Any]
    ) -> SubscriptionOutcome:
        """Creates or updates a recurring subscription from a provider event, once per `event_id`.

        Args:
            action: "created", "updated", "non_renewing" or "canceled".
            fields: the record's keys the event knows (see `server.service.recurring_subscription`).

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(user_id)
        args: list[Any] = [event_id, self._idempotency_ttl_ms, actor, action, subscription_id, _json(dict(fields))]
        reply = await self._run(
            self._subscription(keys=[keys.subscriptions, keys.applied_event(event_id), keys.ledger], args=args)
        )
        data = json.loads(reply)
        record = data.get("record")
        return SubscriptionOutcome(str(data["r"]), record if isinstance(record, dict) else None)

    async def record_event(self, user_id: str, event_id: str, fields: Mapping[str, str]) -> bool:
        """Appends a ledger entry for an event that grants nothing (payment, refund), once per `event_id`.

        Returns:
            True if appended now, False if the event had been recorded before.

        Raises:
            StoreUnavailable: Redis did not answer in time.
        """
        keys = UserKeys(user_id)
        args: list[Any] = [self._idempotency_ttl_ms]
        for name, value in fields.items():
            args += [name, value]
        reply = await self._run(self._event_ledger(keys=[keys.applied_event(event_id), keys.ledger], args=args))
        return _text(reply) == "applied"

    @staticmethod
    def _order_args(order_id: str, event_id: str, actor: str, record: Mapping[str, str]) -> list[Any]:
        return [event_id, order_id, actor, _json(dict(record)) if record else "{}"]

    async def _run_order(self, script: AsyncScript, user_id: str, order_id: str, args: list[Any]) -> OrderOutcome:
        keys = UserKeys(user_id)
        try:
            reply = await self._run(script(keys=[keys.items, keys.skus, keys.ledger, keys.order(order_id)], args=args))
        except FailedPrecondition as exc:
            # The store's generic message lacks the sku: name it from the script's error.
            cause = exc.__cause__
            words = str(cause).split() if cause is not None else []
            if words and words[0] in ("QUANTITY_LIMIT", "EXPIRY_LIMIT"):
                raise FailedPrecondition(f"order {order_id}: sku {words[-1]!r}: {exc}") from cause
            raise
        data = json.loads(reply)
        return OrderOutcome(
            result=str(data["r"]),
            status=str(data.get("status") or ""),
            entitlements_granted=bool(data.get("granted")),
            updated_at_ms=int(data.get("at") or 0),
            lines_changed=int(data.get("n") or 0),
            kind_conflicts=int(data.get("c") or 0),
        )

    async def ping(self) -> None:
        """Raises StoreUnavailable unless Redis answers."""
        await self._run(self._redis.ping())

    def _common_args(self, fingerprint: str, operation: str, sku: str, actor: str, reason: str) -> list[Any]:
        return [fingerprint, self._idempotency_ttl_ms, operation, sku, actor, reason]

    @staticmethod
    def _write_keys(keys: UserKeys, idempotency_key: str) -> list[str]:
        return [keys.items, keys.skus, keys.idempotency(idempotency_key), keys.ledger]

    async def _run(self, operation: Awaitable[T], *, self_bounded: bool = False) -> T:
        """Awaits a Redis operation within the store timeout, translating Redis errors to domain errors.

        `self_bounded`: the operation enforces the timeout itself (the read batcher does, once per round trip
        rather than once per read).
        """
        try:
            return await bounded(operation, self._timeout_s, self_bounded=self_bounded)
        except redis_errors.ResponseError as exc:
            raise _translate_script_error(exc) from exc


def _json(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _lex_after(sku: str | None) -> bytes:
    return b"-" if sku is None else b"(" + sku.encode()


def _split_reply(reply: bytes | str) -> tuple[bool, str]:
    text = reply.decode() if isinstance(reply, bytes) else reply
    return text[0] == "R", text[1:]


def _translate_script_error(exc: redis_errors.ResponseError) -> Exception:
    words = str(exc).split()
    code = reply_code(exc)
    if code == "IDEMPOTENCY_CONFLICT":
        first = words[1] if len(words) > 1 else "another"
        return IdempotencyConflict(
            f"idempotency_key was already used for a different {first} request; use a new key for a new request"
        )
    if code == "KIND_MISMATCH":
        held, asked = (KIND_NAMES.get(int(w), w) for w in words[1:3])
        return FailedPrecondition(f"the player holds this sku as {held}, so it cannot be granted as {asked}")
    if code == "DURATION_REQUIRED":
        return FailedPrecondition("the player holds this sku as time-limited: duration is required")
    if code == "PERMANENT_QUANTITY":
        return FailedPrecondition("the player holds this sku as permanent: quantity must be 1")
    if code == "QUANTITY_LIMIT":
        return FailedPrecondition(f"the grant would raise the quantity above {MAX_CONSUMABLE_TOTAL}")
    if code == "EXPIRY_LIMIT":
        return FailedPrecondition("the grant would move expires_at beyond the year 5138")
    return exc


class _ReadBatcher:
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
