"""A player's ledger in plain words (`server.ledger_view`), page by page: the entries the real write scripts make,
described; entries the view cannot read, still shown; paging and its tokens."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import timedelta

import pytest
import redis.asyncio as aioredis

from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient, EntitlementKind, EntitlementsClient, InvalidArgumentError
from entitlements import LedgerEntry as LedgerMessage
from server.app import Service
from server.errors import InvalidArgument
from server.ledger_view import LedgerLine, describe, format_span, format_time, ledger_page
from server.store import (
    CONSUMABLE,
    PERMANENT,
    TIME_LIMITED,
    EntitlementStore,
    GrantCommand,
    LedgerEntry,
    OrderLine,
    RevokeCommand,
    SubscriptionChange,
)
from tests.helpers.services import PROJECT, READER_KEY, ClientFactory, store_changes

DAY_MS = 86_400_000
PLAYER = "player-1"


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> EntitlementStore:
    """A store on the test's Valkey."""
    return EntitlementStore(redis_client, timeout_s=2.0, idempotency_ttl_ms=60_000)


async def lines_of(store: EntitlementStore, user_id: str = PLAYER) -> list[LedgerLine]:
    """Every ledger line of a player, newest first."""
    lines, token = await ledger_page(store, PROJECT, user_id, 500, "")
    assert token == ""
    return lines


async def grant(store: EntitlementStore, sku: str, kind: int, quantity: int = 1, period_ms: int = 0) -> None:
    """A grant through the store, as the Grant RPC makes it."""
    key = f"k-{time.monotonic_ns()}"
    await store.grant(GrantCommand(PROJECT, PLAYER, sku, kind, quantity, period_ms, key, reason="support"), "agent")


def test_times_and_spans_read_as_people_write_them() -> None:
    """Instants print in UTC to the minute (seconds when present); spans in the largest unit that divides them."""
    assert format_time(1_798_725_600_000) == "2026-12-31 14:00 UTC"
    assert format_time(1_798_725_607_000) == "2026-12-31 14:00:07 UTC"
    assert format_span(30 * DAY_MS) == "30 days"
    assert format_span(3_600_000) == "1 hour"
    assert format_span(90 * 60_000) == "90 minutes"
    assert format_span(1500) == "1500 ms"
    assert format_time(10**15) == "1000000000000000 ms since 1970"


async def test_consumable_grants_and_revoke_show_quantities(store: EntitlementStore) -> None:
    """Grants of a consumable say how many were added and the total before and after; a revoke says what it took."""
    await grant(store, "gold", CONSUMABLE, 100)
    await grant(store, "gold", CONSUMABLE, 50)
    await store.revoke(RevokeCommand(PROJECT, PLAYER, "gold", "r-1", reason="chargeback"), "agent")
    revoke, second, first = await lines_of(store)
    assert first.summary == "granted 100 gold (0 -> 100)"
    assert (first.quantity_before, first.quantity_after, first.kind) == (0, 100, CONSUMABLE)
    assert second.summary == "granted 50 gold (100 -> 150)"
    assert revoke.summary == "revoked 150 gold (150 -> 0)"
    assert (revoke.operation, revoke.actor, revoke.reason, revoke.idempotency_key) == (
        "revoke",
        "agent",
        "chargeback",
        "r-1",
    )
    assert (revoke.expires_before_ms, revoke.expires_after_ms) == (None, None)
    assert json.loads(first.details["metadata"]) == {}
    assert first.details["quantity"] == "100"
    assert first.at_ms <= second.at_ms <= revoke.at_ms
    assert revoke.entry_id.startswith(f"{revoke.at_ms}-")


async def test_permanent_items_say_permanent(store: EntitlementStore) -> None:
    """A permanent item granted, granted again and revoked reads as such."""
    await grant(store, "skin", PERMANENT)
    await grant(store, "skin", PERMANENT)
    await store.revoke(RevokeCommand(PROJECT, PLAYER, "skin", "r-2"), "agent")
    assert [line.summary for line in await lines_of(store)] == [
        "revoked skin (permanent)",
        "granted skin again: already owned (permanent)",
        "granted skin (permanent)",
    ]


async def test_time_limited_items_show_expiry_before_and_after(store: EntitlementStore) -> None:
    """A time-limited grant says until when; a second one extends it by its period; a revoke says until when it
    was active."""
    await grant(store, "vip_pass", TIME_LIMITED, 1, 30 * DAY_MS)
    await grant(store, "vip_pass", TIME_LIMITED, 2, 30 * DAY_MS)
    await store.revoke(RevokeCommand(PROJECT, PLAYER, "vip_pass", "r-3"), "agent")
    revoke, extend, first = await lines_of(store)
    assert first.expires_before_ms is None
    assert first.expires_after_ms == first.at_ms + 30 * DAY_MS
    assert first.summary == f"granted vip_pass until {format_time(first.expires_after_ms)} (+30 days)"
    assert extend.expires_before_ms == first.expires_after_ms
    assert extend.expires_after_ms == first.expires_after_ms + 60 * DAY_MS
    assert extend.summary == f"extended vip_pass to {format_time(extend.expires_after_ms)} (+60 days)"
    assert (revoke.expires_before_ms, revoke.expires_after_ms) == (extend.expires_after_ms, None)
    assert revoke.summary == f"revoked vip_pass (was active until {format_time(extend.expires_after_ms)})"
    assert (revoke.quantity_before, revoke.quantity_after) == (1, 0)


async def test_orders_read_as_what_they_granted_and_took_back(store: EntitlementStore) -> None:
    """An order's lines are grants naming the order; its cancel takes back what it added (newest line first); an
    order that changed no item (withheld as sandbox, canceled before paid, paid after its cancel) says why."""
    lines = [OrderLine("gold", CONSUMABLE, 0, 100), OrderLine("pass", TIME_LIMITED, 7 * DAY_MS, 1)]
    await grant(store, "gold", CONSUMABLE, 5)
    await store.apply_order_paid(PROJECT, PLAYER, "o-1", "ev-1", "webhook", lines, {})
    await store.apply_order_canceled(PROJECT, PLAYER, "o-1", "ev-2", "webhook", {})
    record = {"lines": json.dumps([{"sku": "gold", "quantity": 100}])}
    await store.apply_order_paid(
        PROJECT, PLAYER, "o-2", "ev-3", "webhook", [], record, withheld="sandbox", withheld_reason="sandbox order"
    )
    await store.apply_order_canceled(PROJECT, PLAYER, "o-2", "ev-4", "webhook", {})
    await store.apply_order_canceled(PROJECT, PLAYER, "o-3", "ev-5", "webhook", {})
    await store.apply_order_paid(PROJECT, PLAYER, "o-3", "ev-6", "webhook", lines, {})
    paid_late, canceled_first, sandbox_cancel, sandbox, gold_back, pass_back, pass_paid, gold_paid, _ = await lines_of(
        store
    )
    assert gold_paid.summary == "granted 100 gold (5 -> 105)"
    assert (gold_paid.order_id, gold_paid.idempotency_key, gold_paid.reason) == ("o-1", "ev-1", "order_paid o-1")
    assert pass_paid.summary == f"granted pass until {format_time(pass_paid.at_ms + 7 * DAY_MS)} (+7 days)"
    assert gold_back.summary == "took back 100 gold (105 -> 5): order o-1 canceled"
    assert (gold_back.operation, gold_back.quantity_before, gold_back.quantity_after) == ("cancel", 105, 5)
    assert pass_back.summary == "took back pass: order o-1 canceled"
    assert pass_back.expires_after_ms is None
    assert sandbox.summary == (
        "order o-2 paid as a sandbox order: nothing granted, by the project's sandbox policy (gold x100)"
    )
    assert (sandbox.sku, sandbox.quantity_before, sandbox.kind) == ("", None, 0)
    assert sandbox_cancel.summary == "order o-2 canceled: a sandbox order that granted nothing, nothing to undo"
    assert canceled_first.summary == (
        "order o-3 canceled before its payment arrived: nothing to undo, and its payment will grant nothing"
    )
    assert paid_late.summary == "order o-3 paid after its cancel: nothing granted"


async def test_subscriptions_and_payments_change_no_item(store: EntitlementStore) -> None:
    """Subscription events say what became of the subscription (an older event: that it was ignored, and why);
    payments and refunds say the amount and the transaction, and leave quantities and expiries unset."""
    next_charge = 1_798_725_600_000
    created = SubscriptionChange(id="s-1", plan_external_id="gold_plan", date_next_charge_ms=next_charge)
    await store.record_subscription_event(PROJECT, PLAYER, "ev-s1", "webhook", "created", created)
    ended = SubscriptionChange(id="s-1", date_end_ms=next_charge)
    await store.record_subscription_event(PROJECT, PLAYER, "ev-s2", "webhook", "canceled", ended)
    payment = {"op": "payment", "sku": "", "actor": "webhook", "reason": "payment t-9", "before": "", "after": ""}
    await store.record_event(
        PROJECT, PLAYER, "ev-p", {**payment, "transaction_id": "t-9", "amount": "9.99", "currency": "USD"}
    )
    refund = {**payment, "op": "refund", "transaction_id": "t-9", "amount": "9.99", "currency": "USD"}
    await store.record_event(PROJECT, PLAYER, "ev-r", {**refund, "refund_reason": "fraud", "sandbox": "1"})
    refunded, paid, canceled, started = await lines_of(store)
    assert started.summary == f"subscription s-1 started (plan gold_plan, next charge {format_time(next_charge)})"
    assert canceled.summary == f"subscription s-1 canceled (ends {format_time(next_charge)})"
    assert started.details["subscription_id"] == "s-1"
    assert paid.summary == "payment of 9.99 USD, transaction t-9; no item changed"
    assert refunded.summary == "refund of 9.99 USD, transaction t-9, reason: fraud (sandbox); no item changed"
    assert {(line.quantity_before, line.expires_after_ms, line.kind) for line in (paid, started)} == {(None, None, 0)}


@pytest.mark.parametrize(
    ("fields", "summary"),
    [
        ({"op": "grant", "sku": "gold", "after": "{not json"}, "grant on gold"),
        ({"op": "grant", "sku": "gold", "after": "[1, 2]"}, "grant on gold"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 1, "q": "lots"}'}, "grant on gold"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 9, "q": 1}'}, "grant on gold"),
        ({"op": "grant", "sku": "pass", "after": '{"k": 3, "q": 1}'}, "grant on pass"),
        ({"op": "revoke", "sku": "gold"}, "revoke on gold"),
        ({"op": "order_paid", "order_id": "o", "withheld": "sandbox", "lines": "{}"}, "order_paid"),
        ({"op": "subscription", "after": '"text"'}, "subscription"),
        (
            {"op": "subscription", "after": '{"date_end_ms": "soon"}', "reason": "canceled subscription s"},
            "subscription",
        ),
        ({"op": "gift", "sku": "gold", "before": "{", "after": "}"}, "gift on gold"),
        ({"op": "migrated"}, "migrated"),
        ({}, "unknown"),
        ({"op": "grant", "sku": "x", "after": "[" * 100_000}, "grant on x"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 1, "q": 1e30}'}, "grant on gold"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 1, "q": -5}'}, "grant on gold"),
        ({"op": "grant", "sku": "pass", "after": '{"k": 3, "q": 1, "e": 1e300}'}, "grant on pass"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 1, "q": NaN}'}, "grant on gold"),
        ({"op": "grant", "sku": "gold", "after": '{"k": 1, "q": Infinity}'}, "grant on gold"),
        ({"op": "payment", "at_ms": "9" * 40}, "payment; no item changed"),
    ],
)
def test_an_entry_the_view_cannot_read_keeps_its_raw_operation(fields: dict[str, str], summary: str) -> None:
    """An entry written by an older version, or damaged (numbers out of range included), is still shown: raw
    operation, sku, actor and reason, no quantities, and "<op> on <sku>" as its summary; describing it never
    raises."""
    line = describe(LedgerEntry("1785478223000-0", {**fields, "actor": "old", "reason": fields.get("reason", "r")}))
    assert line.summary == summary
    assert line.operation == (fields.get("op") or "unknown")
    assert (line.quantity_before, line.quantity_after, line.kind) == (None, None, 0)
    assert line.actor == "old"
    assert line.at_ms == 1785478223000  # its at_ms when it reads as one, else the entry id's


async def test_pages_walk_the_ledger_newest_first_once(store: EntitlementStore) -> None:
    """Pages of 3 walk 7 entries newest first, each once; the last page has no token; a player with no ledger has
    an empty page."""
    for n in range(7):
        await grant(store, f"item_{n}", CONSUMABLE, n + 1)
    seen: list[str] = []
    token, pages = "", 0
    while True:
        lines, token = await ledger_page(store, PROJECT, PLAYER, 3, token)
        pages += 1
        seen += [line.sku for line in lines]
        if not token:
            break
    assert seen == [f"item_{n}" for n in reversed(range(7))]
    assert pages == 3
    assert await ledger_page(store, PROJECT, "nobody", 0, "") == ([], "")
    exact, token = await ledger_page(store, PROJECT, PLAYER, 7, "")
    assert (len(exact), token) == (7, "")


async def test_foreign_or_forged_tokens_and_bad_sizes_are_refused(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """A token of another player or project, or one ledger_page did not make, is InvalidArgument naming
    page_token; a page size past 500 names page_size; nothing is read or written."""
    for n in range(3):
        await grant(store, f"item_{n}", CONSUMABLE)
    _, token = await ledger_page(store, PROJECT, PLAYER, 1, "")
    assert token
    for user, project in (("player-2", PROJECT), (PLAYER, PROJECT + 1)):
        with pytest.raises(InvalidArgument, match="belongs to a different project or player") as refused:
            await ledger_page(store, project, user, 1, token)
        assert refused.value.field == "page_token"
    forged = [
        "not a token!",
        "e30",  # {}
        "x" * 5000,
        "eyJwIjozMDgwNzcsInUiOiJ4IiwibCI6ImFiYyJ9",  # an entry id that is not one
        token[:-2],
    ]
    for bad in forged:
        with pytest.raises(InvalidArgument, match="page_token"):
            await ledger_page(store, PROJECT, PLAYER, 1, bad)
    for size in (-1, 501):
        with pytest.raises(InvalidArgument, match=f"must be between 0 and 500, not {size}") as refused:
            await ledger_page(store, PROJECT, PLAYER, size, "")
        assert refused.value.field == "page_size"
    assert await redis_client.xlen(UserKeys(PROJECT, PLAYER).ledger) == 3


def ms(message: LedgerMessage, name: str) -> int | None:
    """A Timestamp field of a ledger entry in ms, None when unset."""
    if not message.HasField(name):  # type: ignore[arg-type]  # the names below are the message's fields
        return None
    stamp = getattr(message, name)
    return int(stamp.seconds * 1000 + stamp.nanos // 1_000_000)


async def test_list_ledger_pages_the_history_in_plain_words(
    service: Service, client: AsyncEntitlementsClient, client_factory: ClientFactory
) -> None:
    """ListLedger (read scope) pages a player's ledger newest first, each entry with its before and after, who,
    why and a summary; unset optional fields where the entry has none; a player with no ledger has an empty page."""
    await client.grant(PLAYER, "gold", quantity=100, reason="compensation", idempotency_key="g-1", metadata={"t": "7"})
    await client.grant(PLAYER, "vip_pass", duration=timedelta(days=30), idempotency_key="g-2")
    await client.revoke(PLAYER, "gold", reason="chargeback", idempotency_key="r-1")
    reader = await client_factory(service, api_key=READER_KEY)
    first = await reader.list_ledger(PLAYER, page_size=2)
    assert first.entries[0].summary == "revoked 100 gold (100 -> 0)"
    assert first.next_page_token
    second = await reader.list_ledger(PLAYER, page_size=2, page_token=first.next_page_token)
    assert second.next_page_token == ""
    revoke, vip = first.entries
    (gold,) = second.entries
    assert (gold.operation, gold.sku, gold.kind) == ("grant", "gold", EntitlementKind.ENTITLEMENT_KIND_CONSUMABLE)
    assert (gold.quantity_before, gold.quantity_after, gold.actor, gold.reason) == (0, 100, "writer", "compensation")
    assert (gold.idempotency_key, gold.summary) == ("g-1", "granted 100 gold (0 -> 100)")
    assert json.loads(gold.details["metadata"]) == {"t": "7"}
    assert ms(gold, "expires_before") is None
    assert ms(gold, "expires_after") is None
    assert ms(vip, "expires_before") is None
    expiry = ms(vip, "expires_after")
    assert expiry == ms(vip, "at") + 30 * 86_400_000  # type: ignore[operator]
    assert vip.summary == f"granted vip_pass until {format_time(expiry)} (+30 days)"
    assert (revoke.quantity_before, revoke.quantity_after, revoke.HasField("quantity_after")) == (100, 0, True)
    assert [e.entry_id for e in (revoke, vip, gold)] == sorted((e.entry_id for e in (revoke, vip, gold)), reverse=True)
    empty = await reader.list_ledger("nobody")
    assert (list(empty.entries), empty.next_page_token) == ([], "")


async def test_a_payment_entry_leaves_quantities_unset(service: Service, client: AsyncEntitlementsClient) -> None:
    """An entry that changes no item (a payment) has no quantity or expiry fields set, and says so in words."""
    assert service.store is not None
    fields = {"op": "payment", "sku": "", "actor": "webhook", "reason": "payment t-1", "before": "", "after": ""}
    await service.store.record_event(PROJECT, PLAYER, "ev-1", {**fields, "amount": "5", "currency": "EUR"})
    (entry,) = (await client.list_ledger(PLAYER)).entries
    assert not any(entry.HasField(name) for name in ("quantity_before", "quantity_after", "expires_after"))
    assert entry.summary == "payment of 5 EUR; no item changed"
    assert entry.kind == EntitlementKind.ENTITLEMENT_KIND_UNSPECIFIED


async def test_list_ledger_refuses_bad_requests_naming_the_field(
    service: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """A page size past 500, a token of another player, a forged token or a bad user id is INVALID_ARGUMENT naming
    the field, and writes nothing."""
    for n in range(3):
        await client.grant(PLAYER, f"item_{n}")
    token = (await client.list_ledger(PLAYER, page_size=1)).next_page_token
    changes = await store_changes(redis_client)
    refused = [
        ({"page_size": 501}, PLAYER, r"^INVALID_ARGUMENT: page_size: must be between 0 and 500, not 501$"),
        ({"page_size": -1}, PLAYER, r"^INVALID_ARGUMENT: page_size: "),
        (
            {"page_token": token},
            "player-2",
            r"^INVALID_ARGUMENT: page_token: belongs to a different project or player$",
        ),
        ({"page_token": "bogus!"}, PLAYER, r"^INVALID_ARGUMENT: page_token: is not a token returned by ListLedger$"),
        ({}, "", r"^INVALID_ARGUMENT: user_id: "),
        ({}, "x" * 257, r"^INVALID_ARGUMENT: user_id: "),
    ]
    for kwargs, user, message in refused:
        with pytest.raises(InvalidArgumentError, match=message):
            await client.list_ledger(user, **kwargs)  # type: ignore[arg-type]
    assert await store_changes(redis_client) == changes


async def test_the_blocking_client_lists_the_ledger(service: Service, client: AsyncEntitlementsClient) -> None:
    """EntitlementsClient.list_ledger returns the same page as the async client."""
    await client.grant(PLAYER, "gold", quantity=3)
    assert service.endpoints is not None

    def blocking() -> list[str]:
        with EntitlementsClient(f"127.0.0.1:{service.endpoints.grpc_port}", api_key=READER_KEY) as sync:  # type: ignore[union-attr]
            return [entry.summary for entry in sync.list_ledger(PLAYER).entries]

    assert await asyncio.to_thread(blocking) == ["granted 3 gold (0 -> 3)"]
