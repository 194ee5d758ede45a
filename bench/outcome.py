"""What the store holds at the end of a run, against what the callers were told.

Read behind the services' backs with a cluster client: each order's hash (`status` paid, `granted` 1), each
player's items (`gem`, `coin`, `rpc_gold` quantities) and audit ledger (one `grant` entry per order line, tagged
with the order id; one entry per Grant idempotency key). Then every player's quantities are read again through
every replica's CheckEntitlement, which must agree with the store.

- lost: an order acknowledged (204) that is not applied; a Grant that returned OK with no ledger entry;
- doubled: an order line or a Grant key with more than one ledger entry, or a quantity above what the applied
  orders and granted keys add up to;
- short: a quantity below that sum (a line applied without its quantity, or lost).
"""

from __future__ import annotations

import dataclasses
import json
from collections import Counter
from collections.abc import Collection, Sequence
from typing import Any

from bench.traffic import COIN, GEM, GOLD, GrantCall, Order, answer_of
from core.connections import RedisClient, reply_text
from core.keys import UserKeys, items_key
from entitlements import AsyncEntitlementsClient
from entitlements.errors import EntitlementsError


@dataclasses.dataclass
class Outcome:
    """The counts a run is judged by (see the module docstring)."""

    acknowledged: int = 0
    applied: int = 0
    lost: int = 0
    doubled: int = 0
    grants_ok: int = 0
    grants_present: int = 0
    grants_lost: int = 0
    grants_doubled: int = 0
    quantities_short: int = 0
    quantities_over: int = 0
    checks_disagreeing: int = 0
    #: The first few problems in words, for a failure message.
    problems: list[str] = dataclasses.field(default_factory=list)

    @property
    def exact(self) -> bool:
        """Nothing lost, nothing doubled, every quantity and every check as expected."""
        return not (
            self.lost
            or self.doubled
            or self.grants_lost
            or self.grants_doubled
            or self.quantities_short
            or self.quantities_over
            or self.checks_disagreeing
        )

    def note(self, problem: str) -> None:
        if len(self.problems) < 20:
            self.problems.append(problem)


async def applied_orders(redis: RedisClient, project_id: int, orders: Collection[Order]) -> set[Order]:
    """The orders whose `order_paid` is applied: their hash says paid, with the items granted."""
    pipe = redis.pipeline(transaction=False)
    for order in orders:
        pipe.hmget(UserKeys(project_id, order.player).order(str(order.number)), ["status", "granted"])
    replies = await pipe.execute()
    return {order for order, reply in zip(orders, replies, strict=True) if tuple(reply) == (b"paid", b"1")}


async def judge(
    redis: RedisClient,
    project_id: int,
    *,
    sent: Collection[Order],
    acknowledged: Collection[Order],
    grants: Collection[GrantCall],
    clients: Sequence[AsyncEntitlementsClient],
) -> Outcome:
    """Compares the store (and the replicas' answers) with what the callers were told."""
    outcome = Outcome(acknowledged=len(acknowledged), grants_ok=len(grants))
    applied = await applied_orders(redis, project_id, sent)
    outcome.applied = len(applied)
    for order in sorted(set(acknowledged) - applied, key=lambda o: o.number):
        outcome.lost += 1
        outcome.note(f"order {order.number} of {order.player} acknowledged, not applied")

    expected: dict[str, Counter[str]] = {}
    for order in applied:
        for sku, quantity in order.lines:
            expected.setdefault(order.player, Counter())[sku] += quantity
    for call in grants:
        expected.setdefault(call.player, Counter())[GOLD] += call.quantity
    players = sorted({*expected, *(order.player for order in sent)})
    orders_of: dict[str, list[Order]] = {}
    for order in sent:
        orders_of.setdefault(order.player, []).append(order)
    keys_of: dict[str, list[GrantCall]] = {}
    for call in grants:
        keys_of.setdefault(call.player, []).append(call)

    for player in players:
        entries = await _ledger(redis, project_id, player)
        lines = Counter((e.get("order_id", ""), e.get("sku", "")) for e in entries if e.get("op") == "grant")
        keyed = Counter(e.get("idempotency_key", "") for e in entries if e.get("op") == "grant")
        for order in orders_of.get(player, []):
            for sku, _ in order.lines:
                if lines[(str(order.number), sku)] > 1:
                    outcome.doubled += 1
                    outcome.note(f"order {order.number} line {sku}: {lines[(str(order.number), sku)]} ledger entries")
        for call in keys_of.get(player, []):
            if keyed[call.key] == 0:
                outcome.grants_lost += 1
                outcome.note(f"grant {call.key} returned OK, not in the ledger")
            else:
                outcome.grants_present += 1
            if keyed[call.key] > 1:
                outcome.grants_doubled += 1
                outcome.note(f"grant {call.key}: {keyed[call.key]} ledger entries")
        held = await _quantities(redis, project_id, player)
        for sku in (GEM, COIN, GOLD):
            want, have = expected.get(player, Counter())[sku], held.get(sku, 0)
            if have < want:
                outcome.quantities_short += 1
            elif have > want:
                outcome.quantities_over += 1
            if have != want:
                outcome.note(f"{player} holds {have} {sku}, expected {want}")
            for replica, client in enumerate(clients):
                seen = await _checked(client, player, sku)
                if seen != want:
                    outcome.checks_disagreeing += 1
                    outcome.note(f"replica {replica} says {player} holds {seen} {sku}, expected {want}")
    return outcome


async def _ledger(redis: RedisClient, project_id: int, player: str) -> list[dict[str, str]]:
    entries: Any = await redis.xrange(UserKeys(project_id, player).ledger)
    return [{reply_text(k): reply_text(v, "replace") for k, v in fields.items()} for _, fields in entries]


async def _quantities(redis: RedisClient, project_id: int, player: str) -> dict[str, int]:
    records: Any = await redis.hgetall(items_key(project_id, player))
    return {reply_text(sku): int(json.loads(record)["q"]) for sku, record in records.items()}


async def _checked(client: AsyncEntitlementsClient, player: str, sku: str) -> int | str:
    try:
        reply = await client.check_entitlement(player, sku)
    except EntitlementsError as exc:
        return answer_of(exc)
    return int(reply.entitlement.quantity) if reply.HasField("entitlement") else 0
