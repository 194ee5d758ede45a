"""The entitlement store: players' items, the audit ledger, orders, recurring subscriptions and idempotency
records, in Redis.

- `records`: entitlement kinds and limits, the commands a write takes and what reads and writes return.
- `subscriptions`: the recurring-subscription record and the change one provider event makes to it.
- `entitlement_store`: `EntitlementStore`, every read and write (each write one Lua script of `server/lua/`).
- `pages`: what the listings return, one page of entitlements or subscriptions read through the player's indexes.
- `replies`: the write scripts' flagged replies, and their error replies translated to `server.errors`.
- `pipelined`: single-entitlement reads pipelined on one connection of their own (a single server).
- `batcher`: single-entitlement reads sharing round trips under load (a cluster), and batches of (player, sku) pairs
  read at once (CheckEntitlements).
- `writes`: running write scripts with their durability wait, one at a time or a batch per node.
- `feed_writes`: the change feed around the writes (`server.feed`): the player's partition or intent before, the
  changes to the relay after.
"""

from server.store.entitlement_store import EntitlementStore
from server.store.pages import EntitlementPage, SubscriptionPage
from server.store.records import (
    CONSUMABLE,
    KIND_NAMES,
    MAX_CONSUMABLE_TOTAL,
    MAX_EXPIRES_AT_MS,
    PERMANENT,
    TIME_LIMITED,
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
from server.store.subscriptions import RecurringSubscription, SubscriptionChange, SubscriptionOutcome
from server.store.writes import ScriptCall, ScriptWriter, WaitObserver

__all__ = [
    "CONSUMABLE",
    "KIND_NAMES",
    "MAX_CONSUMABLE_TOTAL",
    "MAX_EXPIRES_AT_MS",
    "PERMANENT",
    "TIME_LIMITED",
    "EntitlementPage",
    "EntitlementRecord",
    "EntitlementStore",
    "GrantCommand",
    "GrantResult",
    "LedgerEntry",
    "OrderLine",
    "OrderOutcome",
    "RecurringSubscription",
    "RevokeCommand",
    "RevokeResult",
    "ScriptCall",
    "ScriptWriter",
    "StoredFields",
    "SubscriptionChange",
    "SubscriptionOutcome",
    "SubscriptionPage",
    "WaitObserver",
    "compact_json",
]
