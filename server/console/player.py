"""What the console shows of one player: entitlements, orders with their status timeline, subscriptions and the
ledger in plain words, read from the store as the RPCs read it.

A player's orders are the order hashes under the player's hash tag (`core.keys.UserKeys.order`), found with SCAN on
that tag's prefix (in a Cluster, on the node holding the player's slot), bounded to `MAX_SCAN_CALLS` calls, plus
the orders the ledger page names; when the scan stops at its bound, the page says so.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from redis.asyncio.cluster import RedisCluster

from core.connections import RedisClient, bounded, reply_text
from core.keys import UserKeys
from server.ledger_view import LedgerLine, ledger_page
from server.store import EntitlementRecord, EntitlementStore, RecurringSubscription

#: Entitlements shown on the page (the first ones in sku order).
MAX_ENTITLEMENTS = 500
#: Orders shown, newest first.
MAX_ORDERS = 100
#: SCAN calls (each examining about `SCAN_COUNT` keys) spent finding a player's orders.
MAX_SCAN_CALLS = 50
SCAN_COUNT = 1000
#: Ledger lines per page.
LEDGER_PAGE_SIZE = 50
#: Subscriptions shown.
MAX_SUBSCRIPTIONS = 100
_GLOB_SPECIAL = str.maketrans({c: "\\" + c for c in "*?[]\\"})


@dataclass(frozen=True)
class Step:
    """One status of an order's timeline: when, what, and where it came from."""

    at_ms: int
    status: str
    source: str
    note: str = ""


@dataclass(frozen=True)
class OrderView:
    """One of the player's orders as the order hash records it."""

    order_id: str
    status: str
    granted: bool
    withheld: str
    amount: str
    currency: str
    transaction_id: str
    sandbox: bool
    lines: str
    updated_at_ms: int
    timeline: list[Step]

    @classmethod
    def from_hash(cls, order_id: str, raw: dict[str, str]) -> OrderView:
        """Reads an order hash (`server/lua/order.lua` and the consumer's record of the order)."""
        return cls(
            order_id=order_id,
            status=raw.get("status", ""),
            granted=raw.get("granted") == "1",
            withheld=raw.get("withheld", ""),
            amount=raw.get("amount", ""),
            currency=raw.get("currency", ""),
            transaction_id=raw.get("transaction_id", ""),
            sandbox=raw.get("sandbox") == "1",
            lines=_lines(raw.get("lines") or raw.get("canceled_lines") or ""),
            updated_at_ms=_int(raw.get("updated_at_ms")),
            timeline=timeline(raw),
        )


def timeline(raw: dict[str, str]) -> list[Step]:
    """An order's statuses in time order, each with the source that brought it (webhook, tracker, sweeper)."""
    steps: list[Step] = []
    paid_at, canceled_at = _int(raw.get("paid_at_ms")), _int(raw.get("canceled_at_ms"))
    if paid_at:
        if raw.get("withheld"):
            note = f"nothing granted: {raw['withheld']} order (the project's policy)"
        else:
            note = "granted" if raw.get("grants", "[]") != "[]" else "paid; no line to grant"
        steps.append(Step(paid_at, "paid", raw.get("granted_by", "webhook"), note))
    if canceled_at:
        note = "before its payment: nothing to undo" if raw.get("canceled_before_paid") == "1" else "grants undone"
        steps.append(Step(canceled_at, "canceled", raw.get("canceled_by", "webhook"), note))
    paid_seen = _int(raw.get("paid_seen_at_ms"))
    if raw.get("paid_after_cancel") == "1" and paid_seen:
        steps.append(Step(paid_seen, "paid", raw.get("granted_by", "webhook"), "after its cancel: nothing granted"))
    return sorted(steps, key=lambda step: step.at_ms)


@dataclass(frozen=True)
class PlayerView:
    """Everything the player page shows."""

    user_id: str
    entitlements: list[EntitlementRecord]
    more_entitlements: bool
    orders: list[OrderView]
    orders_cut_short: bool
    recurring: list[RecurringSubscription]
    timed: list[EntitlementRecord]
    ledger: list[LedgerLine]
    ledger_next: str
    known: bool = True


async def player_view(
    store: EntitlementStore, redis: RedisClient, project_id: int, user_id: str, ledger_token: str, timeout_s: float
) -> PlayerView:
    """Reads what the player page shows.

    Raises:
        StoreUnavailable: Redis did not answer in time.
        InvalidArgument: `ledger_token` is not a token of this player's ledger.
    """
    page = await store.list_page(project_id, user_id, None, MAX_ENTITLEMENTS, include_expired=True)
    subscriptions = await store.subscriptions_page(project_id, user_id, 0, MAX_SUBSCRIPTIONS, include_inactive=True)
    lines, next_token = await ledger_page(store, project_id, user_id, LEDGER_PAGE_SIZE, ledger_token or "")
    order_ids, cut_short = await _order_ids(redis, UserKeys(project_id, user_id), timeout_s)
    order_ids |= {line.order_id for line in lines if line.order_id}
    orders = []
    for order_id in sorted(order_ids):
        raw = await store.order(project_id, user_id, order_id)
        if raw is not None:
            orders.append(OrderView.from_hash(order_id, raw))
    orders.sort(key=lambda order: (order.updated_at_ms, order.order_id), reverse=True)
    return PlayerView(
        user_id=user_id,
        entitlements=page.records,
        more_entitlements=page.next_after is not None,
        orders=orders[:MAX_ORDERS],
        orders_cut_short=cut_short or len(orders) > MAX_ORDERS,
        recurring=subscriptions.recurring,
        timed=subscriptions.timed,
        ledger=lines,
        ledger_next=next_token or "",
        known=bool(page.records or orders or subscriptions.total or lines or ledger_token),
    )


async def _order_ids(redis: RedisClient, keys: UserKeys, timeout_s: float) -> tuple[set[str], bool]:
    """The ids of the player's order hashes, and whether the scan stopped at its bound before the end."""
    prefix = keys.order_prefix
    pattern = prefix.translate(_GLOB_SPECIAL) + "*"
    found: set[str] = set()
    cursor: Any = 0
    for _ in range(MAX_SCAN_CALLS):
        if isinstance(redis, RedisCluster):
            node = redis.get_node_from_key(prefix)
            reply: Any = await bounded(
                redis.scan(cursor, match=pattern, count=SCAN_COUNT, target_nodes=node), timeout_s
            )
            cursors, keys_found = reply
            cursor = next(iter(cursors.values())) if isinstance(cursors, dict) else cursors
        else:
            cursor, keys_found = await bounded(redis.scan(cursor, match=pattern, count=SCAN_COUNT), timeout_s)
        for key in keys_found:
            found.add(reply_text(key, "replace")[len(prefix) :])
        if not int(cursor) or len(found) > MAX_ORDERS:
            return found, len(found) > MAX_ORDERS
    return found, True


def _int(value: str | None) -> int:
    try:
        return int(value or 0)
    except ValueError:
        return 0


def _lines(raw: str) -> str:
    """An order's lines as "gold x100, castle x1" (the stored JSON as it is when it cannot be read)."""
    if not raw:
        return ""
    try:
        lines = json.loads(raw)
        return ", ".join(f"{line['sku']} x{line.get('quantity', 1)}" for line in lines)
    except (ValueError, TypeError, KeyError):
        return raw
