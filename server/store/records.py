"""The store's records: entitlement kinds and limits, the commands a write takes, and what reads and writes return.

Times are milliseconds since the Unix epoch on the Redis server's clock, as the Lua scripts write them.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from core.limits import MAX_CONSUMABLE_TOTAL

CONSUMABLE, PERMANENT, TIME_LIMITED = 1, 2, 3
KIND_NAMES = {CONSUMABLE: "consumable", PERMANENT: "permanent", TIME_LIMITED: "time-limited"}
__all__ = ["MAX_CONSUMABLE_TOTAL"]  # re-exported: the store's own limit, defined with the others in core.limits
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
    # A time-limited item whose period is calendar months (a catalog's "month" or "year") has this instead of
    # `period_ms`.
    period_months: int | None = None

    def active(self, now_ms: int) -> bool:
        """True when the entitlement is in force at `now_ms`."""
        if self.quantity <= 0:
            return False
        return self.expires_at_ms is None or now_ms < self.expires_at_ms

    @classmethod
    def decode(cls, user_id: str, sku: str, raw: bytes | str) -> EntitlementRecord:
        return cls(user_id, sku, *stored_fields(raw))


#: What the items hash stores of one entitlement, in EntitlementRecord's order after user_id and sku: kind,
#: quantity, granted_at_ms, updated_at_ms, expires_at_ms, period_ms, period_months.
StoredFields = tuple[int, int, int, int, int | None, int | None, int | None]


def stored_fields(raw: bytes | str) -> StoredFields:
    """The fields of an entitlement as the items hash stores it (JSON written by the Lua scripts), without building
    an EntitlementRecord: the batch read path fills its response from them directly."""
    # A str skips json's detection of the bytes' encoding (the store writes UTF-8), a measurable part of a read.
    data = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
    expires, period, months = data.get("e"), data.get("p"), data.get("m")
    return (
        int(data["k"]),
        int(data["q"]),
        int(data["g"]),
        int(data["u"]),
        None if expires is None else int(expires),
        None if period is None else int(period),
        None if months is None else int(months),
    )


@dataclass(frozen=True)
class GrantCommand:
    """A validated grant in one project. `kind` 0 lets the store infer it (see EntitlementKind in the .proto).

    The period is `period_ms`, or `period_months` calendar months. `period_from_catalog`: the request gave no
    duration and the period is the catalog's; the request's fingerprint is then the request's own (no period), so
    a retry after the catalog changed replays instead of conflicting.
    """

    project_id: int
    user_id: str
    sku: str
    kind: int
    quantity: int
    period_ms: int
    idempotency_key: str
    reason: str = ""
    metadata: Mapping[str, str] = field(default_factory=dict)
    period_months: int = 0
    period_from_catalog: bool = False

    def fingerprint(self) -> str:
        return _fingerprint(
            "grant",
            [
                self.user_id,
                self.sku,
                self.kind,
                self.quantity,
                0 if self.period_from_catalog else self.period_ms,
                self.reason,
                sorted(self.metadata.items()),
            ],
        )


@dataclass(frozen=True)
class RevokeCommand:
    """A validated revoke in one project."""

    project_id: int
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
    """One line of a paid order to grant: the catalog's kind (0 for a plain item) and period (`period_ms`, or
    `period_months` calendar months), and the units."""

    sku: str
    kind: int
    period_ms: int
    quantity: int
    period_months: int = 0


@dataclass(frozen=True)
class OrderOutcome:
    """What applying an order event did, and the order's stored state afterwards.

    `result`: "applied"; "replayed" (the event had been applied before: nothing changed); "ignored" (an
    order_paid after the order's cancel: nothing granted); "withheld" (a paid order that grants nothing by
    policy, e.g. a sandbox order the project ignores); "canceled_before_paid" (a cancel recorded ahead of its
    order_paid). `withheld` is the stored reason the order grants nothing by policy ("sandbox"), "" otherwise.
    """

    result: str
    status: str
    entitlements_granted: bool
    updated_at_ms: int
    lines_changed: int = 0
    kind_conflicts: int = 0
    withheld: str = ""
    paid_event_id: str = ""
    paid_at_ms: int = 0

    @classmethod
    def from_reply(cls, reply: bytes | str) -> OrderOutcome:
        """Reads an order script's reply (`server/lua/order.lua`): JSON {r, status, granted, at, n, c, w, pe, pa}."""
        data = json.loads(reply)
        return cls(
            result=str(data["r"]),
            status=str(data.get("status") or ""),
            entitlements_granted=bool(data.get("granted")),
            updated_at_ms=int(data.get("at") or 0),
            lines_changed=int(data.get("n") or 0),
            kind_conflicts=int(data.get("c") or 0),
            withheld=str(data.get("w") or ""),
            paid_event_id=str(data.get("pe") or ""),
            paid_at_ms=int(data.get("pa") or 0),
        )


@dataclass(frozen=True)
class LedgerEntry:
    """One line of a player's audit ledger."""

    entry_id: str
    fields: dict[str, str]


def _fingerprint(operation: str, parts: list[Any]) -> str:
    canonical = compact_json([operation, *parts])
    return hashlib.sha256(canonical.encode()).hexdigest()


def compact_json(value: Any) -> str:
    """`value` as the store writes JSON: no spaces, non-ASCII kept as it is (what Lua's cjson reads back)."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)
