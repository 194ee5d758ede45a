"""What the store's listings return: one page of entitlements, one page of subscriptions, each read from its Lua
script's reply (`server/lua/list_page.lua`, `server/lua/list_subscriptions.lua`).

Only the page's records are decoded: the scripts read them through the player's indexes (`server/lua/index.lua`),
so the work of a page does not grow with the player's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from core.connections import reply_text
from server.store.records import EntitlementRecord
from server.store.subscriptions import RecurringSubscription


@dataclass(frozen=True)
class EntitlementPage:
    """One page of a player's entitlements, in sku order (byte order of the UTF-8).

    Attributes:
        records: the page. A page of active items may hold fewer than were asked for (even none) when the
            listing skipped many expired ones; `next_after` then still says where to continue.
        next_after: the sku to continue after, or None when nothing follows.
    """

    records: list[EntitlementRecord]
    next_after: str | None

    @classmethod
    def from_reply(cls, user_id: str, reply: Sequence[Any]) -> EntitlementPage:
        """Reads `list_page.lua`'s reply {status, next, sku, record, ...}."""
        status, next_sku = reply_text(reply[0]), reply_text(reply[1])
        records = [
            EntitlementRecord.decode(user_id, reply_text(reply[i]), reply[i + 1])
            for i in range(2, len(reply), 2)
            if reply[i + 1] is not None
        ]
        return cls(records, next_sku if status == "more" else None)


@dataclass(frozen=True)
class SubscriptionPage:
    """One page of a player's subscriptions: the recurring ones come first in the listing, then the time-limited
    items (non-renewing subscriptions).

    Attributes:
        recurring: the page's recurring subscriptions, newest first.
        timed: the page's time-limited items, newest grant first.
        total: how many subscriptions the whole listing holds (both kinds), for `has_more`.
    """

    recurring: list[RecurringSubscription]
    timed: list[EntitlementRecord]
    total: int

    @classmethod
    def from_reply(cls, user_id: str, reply: Sequence[Any]) -> SubscriptionPage:
        """Reads `list_subscriptions.lua`'s reply {recurring total, timed total, n, id, record, ..., sku, ...}."""
        recurring_total, timed_total, recurring_count = int(reply[0]), int(reply[1]), int(reply[2])
        pairs = [(reply[i], reply[i + 1]) for i in range(3, len(reply), 2)]
        recurring = [RecurringSubscription.from_json(raw) for _, raw in pairs[:recurring_count] if raw is not None]
        timed = [
            EntitlementRecord.decode(user_id, reply_text(sku), raw)
            for sku, raw in pairs[recurring_count:]
            if raw is not None
        ]
        return cls(recurring, timed, recurring_total + timed_total)


def lex_after(sku: str | None) -> bytes:
    """The `ZRANGEBYLEX` bound of the skus after `sku` (exclusive), or of all of them when None."""
    return b"-" if sku is None else b"(" + sku.encode()
