"""A player's audit ledger in plain words: what `ListLedger`, `python -m server ledger` and the support console show.

The ledger stream (`UserKeys.ledger`) holds what the write scripts recorded, in the store's own encoding: the
item record before and after as JSON (`{k kind, q quantity, g granted_at, u updated_at, e expires_at, p period,
m months}`), or a subscription record, or a payment's fields. `describe` turns one entry into a `LedgerLine`:
quantities and expiries before and after, and one sentence a support agent can read to a player ("granted 100
gold (0 -> 100)", "extended vip_pass to 2026-12-31 14:00 UTC (+30 days)"). It never raises: an entry it cannot
read (one written by an older version, or damaged) keeps its operation, sku, actor and reason, and its summary
is "<op> on <sku>".

`ledger_page` reads one page, newest first, continuing after a page token bound to the project and the player.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from server import validation
from server.store import CONSUMABLE, MAX_EXPIRES_AT_MS, PERMANENT, TIME_LIMITED, EntitlementStore, LedgerEntry

#: Fields every entry may carry that `LedgerLine` shows in its own attributes; the rest go to `details`.
_SHOWN = frozenset({"op", "sku", "kind", "idempotency_key", "actor", "reason", "at_ms", "before", "after", "order_id"})
_ITEM_OPS = frozenset({"grant", "revoke", "cancel"})
_MONEY_OPS = {"payment": "payment", "refund": "refund", "partial_refund": "partial refund"}
_UNITS = ((86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1000, "second"), (1, "ms"))
#: Calendar arithmetic in Python stops at the year 9999; later instants are shown as milliseconds.
_LAST_DATE_MS = 253_402_300_799_000
#: The largest number a record's field may hold to be shown (an int64); instants: the last expiry the store writes.
_MOST = 2**63 - 1


@dataclass(frozen=True)
class LedgerLine:
    """One ledger entry in plain words.

    Attributes:
        entry_id: the entry's stream id (`<ms>-<sequence>`), unique in the player's ledger.
        at_ms: when it was written, ms since the epoch (the Redis server's clock).
        operation: what was recorded, as the store names it: "grant", "revoke", "cancel" (an item taken back when
            its order was canceled), "order_paid" and "order_canceled" (an order that changed no item),
            "subscription", "payment", "refund", "partial_refund", or another name a later version wrote.
        sku: the item, or "" when the entry changes no item.
        kind: the item's kind (1 consumable, 2 permanent, 3 time-limited), 0 when no item or not known.
        quantity_before, quantity_after: the units held before and after (0: not held); None when the entry
            changes no item.
        expires_before_ms, expires_after_ms: a time-limited item's expiry before and after; None when it was not
            held then, or the item is not time-limited.
        actor: who made the change: an API key's name, `console:<operator>`, or the event's source.
        reason: the reason recorded with the change.
        idempotency_key: the key of the request or event that made it.
        order_id: the provider's order, when the entry comes from one; else "".
        summary: one sentence saying what changed.
        details: the entry's other recorded fields (a grant's metadata, a payment's transaction and amount, a
            subscription's id, ...), as stored.
    """

    entry_id: str
    at_ms: int
    operation: str
    sku: str
    kind: int
    quantity_before: int | None
    quantity_after: int | None
    expires_before_ms: int | None
    expires_after_ms: int | None
    actor: str
    reason: str
    idempotency_key: str
    order_id: str
    summary: str
    details: Mapping[str, str] = field(default_factory=dict)


def describe(entry: LedgerEntry) -> LedgerLine:
    """The plain-words form of one ledger entry. Never raises: an entry it cannot read keeps its raw operation."""
    fields = entry.fields
    try:
        return _describe(entry.entry_id, fields)
    except (ValueError, TypeError, KeyError, AttributeError, ArithmeticError, RecursionError):
        # A ledger is history: an entry written by an older version (or by hand) is still shown, as recorded.
        return _line(entry.entry_id, fields, summary=_fallback_summary(fields))


async def ledger_page(
    store: EntitlementStore, project_id: int, user_id: str, page_size: int, page_token: str
) -> tuple[list[LedgerLine], str]:
    """One page of a player's ledger, newest first.

    Args:
        page_size: entries per page, 1..500 (0: 50).
        page_token: "" for the newest entries, else the token the previous page returned.

    Returns:
        The page's lines and the token of the next (older) page, "" when this page is the last. A player with no
        ledger has an empty page.

    Raises:
        InvalidArgument: `page_size` out of range, or `page_token` not made by this function for this project and
            player.
        StoreUnavailable: Redis did not answer in time.
    """
    size = validation.ledger_page_size(page_size)
    before = validation.decode_ledger_token(page_token, project_id, user_id) if page_token else None
    # One more than the page: whether it comes back says whether an older page exists.
    entries = await store.ledger(project_id, user_id, size + 1, before=before)
    lines = [describe(entry) for entry in entries[:size]]
    token = validation.encode_ledger_token(project_id, user_id, lines[-1].entry_id) if len(entries) > size else ""
    return lines, token


def format_time(ms: int) -> str:
    """An instant as "2026-12-31 14:00 UTC" (to the minute; to the second when it has seconds)."""
    if not 0 <= ms <= _LAST_DATE_MS:
        return f"{ms} ms since 1970"
    moment = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC" if moment.second else "%Y-%m-%d %H:%M UTC")


def format_span(ms: int) -> str:
    """A length of time in the largest unit that divides it: "30 days", "1 hour", "90 minutes", "1500 ms"."""
    for unit_ms, unit in _UNITS:
        if ms % unit_ms == 0:
            count = ms // unit_ms
            return f"{count} {unit}" if count == 1 or unit == "ms" else f"{count} {unit}s"
    return f"{ms} ms"  # pragma: no cover - 1 ms divides every int


def _describe(entry_id: str, fields: Mapping[str, str]) -> LedgerLine:
    op = fields.get("op", "")
    if op in _ITEM_OPS and fields.get("sku"):
        return _item_line(entry_id, fields, op)
    if op in ("order_paid", "order_canceled"):
        return _line(entry_id, fields, summary=_order_summary(fields, op))
    if op == "subscription":
        return _line(entry_id, fields, summary=_subscription_summary(fields))
    if op in _MONEY_OPS:
        return _line(entry_id, fields, summary=_money_summary(fields, op))
    return _line(entry_id, fields, summary=_fallback_summary(fields))


def _line(entry_id: str, fields: Mapping[str, str], *, summary: str, **item: Any) -> LedgerLine:
    """A line with the fields every entry has; `item` sets kind, quantities and expiries."""
    return LedgerLine(
        entry_id=entry_id,
        at_ms=_at_ms(entry_id, fields),
        operation=fields.get("op") or "unknown",
        sku=fields.get("sku", ""),
        kind=item.get("kind", 0),
        quantity_before=item.get("quantity_before"),
        quantity_after=item.get("quantity_after"),
        expires_before_ms=item.get("expires_before_ms"),
        expires_after_ms=item.get("expires_after_ms"),
        actor=fields.get("actor", ""),
        reason=fields.get("reason", ""),
        idempotency_key=fields.get("idempotency_key", ""),
        order_id=fields.get("order_id", ""),
        summary=summary,
        details={name: value for name, value in fields.items() if name not in _SHOWN},
    )


def _at_ms(entry_id: str, fields: Mapping[str, str]) -> int:
    """The entry's time: its `at_ms`, else the stream id's milliseconds (both the Redis server's clock)."""
    for text in (fields.get("at_ms", ""), entry_id.partition("-")[0]):
        if text.isascii() and text.isdigit() and len(text) <= 15 and int(text) <= MAX_EXPIRES_AT_MS:
            return int(text)
    return 0


def _record(text: str) -> dict[str, Any] | None:
    """A stored record (JSON object), None for "" (nothing held).

    Raises:
        ValueError: not a JSON object.
    """
    if not text:
        return None
    record = json.loads(text)
    if not isinstance(record, dict):
        raise ValueError("not a record")
    return record


def _number(record: Mapping[str, Any] | None, name: str, *, most: int = _MOST) -> int | None:
    """An integer field of a record, None when absent.

    Raises:
        TypeError: the field is not a number.
        ValueError: it is outside 0..`most`.
    """
    if record is None or record.get(name) is None:
        return None
    value = record[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{name} is not a number")
    number = int(value)
    if not 0 <= number <= most:
        raise ValueError(f"{name} is out of range")
    return number


def _item_line(entry_id: str, fields: Mapping[str, str], op: str) -> LedgerLine:
    before, after = _record(fields.get("before", "")), _record(fields.get("after", ""))
    kind = _number(after, "k") or _number(before, "k") or 0
    if kind not in (CONSUMABLE, PERMANENT, TIME_LIMITED):
        raise ValueError(f"unknown kind {kind}")
    q_before, q_after = _number(before, "q") or 0, _number(after, "q") or 0
    e_before, e_after = _number(before, "e", most=MAX_EXPIRES_AT_MS), _number(after, "e", most=MAX_EXPIRES_AT_MS)
    at = _at_ms(entry_id, fields)
    sku = fields["sku"]
    if op == "grant":
        summary = _grant_summary(sku, kind, before, after, q_before, q_after, e_before, e_after, at, fields)
    elif op == "revoke":
        summary = _revoke_summary(sku, kind, q_before, e_before, at)
    else:
        summary = _cancel_summary(sku, kind, q_before, q_after, e_before, e_after, fields)
    return _line(
        entry_id,
        fields,
        summary=summary,
        kind=kind,
        quantity_before=q_before,
        quantity_after=q_after,
        expires_before_ms=e_before if kind == TIME_LIMITED else None,
        expires_after_ms=e_after if kind == TIME_LIMITED else None,
    )


def _grant_summary(
    sku: str,
    kind: int,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    q_before: int,
    q_after: int,
    e_before: int | None,
    e_after: int | None,
    at: int,
    fields: Mapping[str, str],
) -> str:
    if after is None:
        raise ValueError("a grant with no record after it")
    if kind == CONSUMABLE:
        return f"granted {q_after - q_before} {sku} ({q_before} -> {q_after})"
    if kind == PERMANENT:
        return f"granted {sku} again: already owned (permanent)" if before else f"granted {sku} (permanent)"
    if e_after is None:
        raise ValueError("a time-limited record without an expiry")
    months, periods = _number(after, "m") or 0, fields.get("quantity", "")
    if e_before is not None and e_before > at:
        added = _added(e_after - e_before, months, periods)
        return f"extended {sku} to {format_time(e_after)} (+{added})"
    added = _added(e_after - at, months, periods)
    if e_before is not None:
        return f"granted {sku} until {format_time(e_after)} (+{added}; the last period ended {format_time(e_before)})"
    return f"granted {sku} until {format_time(e_after)} (+{added})"


def _added(span_ms: int, months: int, periods: str) -> str:
    """The time a grant added: whole calendar months when its period is months, else the span."""
    if months and periods.isascii() and periods.isdigit():
        total = months * int(periods)
        return f"{total} month" if total == 1 else f"{total} months"
    return format_span(span_ms)


def _revoke_summary(sku: str, kind: int, q_before: int, e_before: int | None, at: int) -> str:
    if kind == CONSUMABLE:
        return f"revoked {q_before} {sku} ({q_before} -> 0)"
    if kind == PERMANENT:
        return f"revoked {sku} (permanent)"
    if e_before is not None and e_before > at:
        return f"revoked {sku} (was active until {format_time(e_before)})"
    if e_before is not None:
        return f"revoked {sku} (had expired {format_time(e_before)})"
    return f"revoked {sku}"


def _cancel_summary(
    sku: str,
    kind: int,
    q_before: int,
    q_after: int,
    e_before: int | None,
    e_after: int | None,
    fields: Mapping[str, str],
) -> str:
    why = f"order {fields['order_id']} canceled" if fields.get("order_id") else "its order was canceled"
    if kind == CONSUMABLE:
        return f"took back {q_before - q_after} {sku} ({q_before} -> {q_after}): {why}"
    if kind == PERMANENT or e_after is None:
        return f"took back {sku}: {why}"
    if e_before is not None and e_after < e_before:
        return f"shortened {sku} to {format_time(e_after)} (-{format_span(e_before - e_after)}): {why}"
    return f"restored {sku} to its expiry before the order, {format_time(e_after)}: {why}"


def _order_summary(fields: Mapping[str, str], op: str) -> str:
    order = f"order {fields['order_id']}" if fields.get("order_id") else "an order"
    withheld = fields.get("withheld", "")
    if op == "order_paid" and withheld:
        lines = _order_lines(fields.get("lines", ""))
        listed = f" ({lines})" if lines else ""
        return f"{order} paid as a {withheld} order: nothing granted, by the project's {withheld} policy{listed}"
    if op == "order_paid":
        return f"{order} paid after its cancel: nothing granted"
    if withheld:
        return f"{order} canceled: a {withheld} order that granted nothing, nothing to undo"
    return f"{order} canceled before its payment arrived: nothing to undo, and its payment will grant nothing"


def _order_lines(text: str) -> str:
    """An order's lines as "gold x100, vip_pass x1" ("" when none are recorded)."""
    if not text:
        return ""
    lines = json.loads(text)
    if not isinstance(lines, list):
        raise ValueError("order lines are not a list")
    return ", ".join(f"{line['sku']} x{line.get('quantity', 1)}" for line in lines)


def _subscription_summary(fields: Mapping[str, str]) -> str:
    after = _record(fields.get("after", "")) or {}
    sub_id = fields.get("subscription_id") or str(after.get("id", ""))
    action = fields.get("reason", "").partition(" subscription ")[0] or "changed"
    name = f"subscription {sub_id}" if sub_id else "a subscription"
    if fields.get("applied") == "0":
        why = fields.get("why", "")
        return f"{name}: a {action.replace('_', ' ')} event ignored" + (f" ({why})" if why else "")
    plan = str(after.get("plan_external_id") or "")
    next_charge = _number(after, "date_next_charge_ms", most=_LAST_DATE_MS)
    ends = _number(after, "date_end_ms", most=_LAST_DATE_MS)
    if action == "canceled":
        return f"{name} canceled" + (f" (ends {format_time(ends)})" if ends is not None else "")
    if action == "non_renewing":
        until = ends if ends is not None else next_charge
        return f"{name} set not to renew" + (f" (ends {format_time(until)})" if until is not None else "")
    verb = "started" if action == "created" else "updated"
    details = [f"plan {plan}"] if plan else []
    if next_charge is not None:
        details.append(f"next charge {format_time(next_charge)}")
    return f"{name} {verb}" + (f" ({', '.join(details)})" if details else "")


def _money_summary(fields: Mapping[str, str], op: str) -> str:
    amount = " ".join(part for part in (fields.get("amount", ""), fields.get("currency", "")) if part)
    words = [f"{_MONEY_OPS[op]} of {amount}" if amount else _MONEY_OPS[op]]
    if fields.get("transaction_id"):
        words.append(f"transaction {fields['transaction_id']}")
    if fields.get("order_id"):
        words.append(f"order {fields['order_id']}")
    if fields.get("refund_reason"):
        words.append(f"reason: {fields['refund_reason']}")
    sandbox = " (sandbox)" if fields.get("sandbox") == "1" else ""
    return ", ".join(words) + sandbox + "; no item changed"


def _fallback_summary(fields: Mapping[str, str]) -> str:
    op = fields.get("op") or "unknown"
    return f"{op} on {fields['sku']}" if fields.get("sku") else op
