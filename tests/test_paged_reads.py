"""Listings whose work is bounded by the page, not by the player's history: a player with 20,000 expired items,
on real Redis. Work is counted in Redis commands (INFO commandstats), never timed."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.connections import reply_text
from core.keys import UserKeys
from entitlements import AsyncEntitlementsClient
from server.store import GrantCommand, OrderLine, RevokeCommand, SubscriptionChange
from server.store.entitlement_store import EXPIRED_BUDGET, INDEX_BUILD_STEP, EntitlementStore
from tests.helpers.services import PROJECT, data_keys

HOARDER = "hoarder"
EXPIRED = 20_000
DAY_MS = 86_400_000
#: What the hoarder holds that is in force, in sku order: one before the expired passes, one among them, one after.
LIVE = ["a_gold", "pass_09999_live", "zz_season"]


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def timed(granted_ms: int, expires_ms: int) -> str:
    return json.dumps({"k": 3, "q": 1, "g": granted_ms, "u": granted_ms, "e": expires_ms, "p": DAY_MS})


def plain(granted_ms: int, quantity: int = 5) -> str:
    return json.dumps({"k": 1, "q": quantity, "g": granted_ms, "u": granted_ms})


async def write_old_layout(redis: aioredis.Redis, user_id: str, records: Mapping[str, str]) -> None:
    """Writes records as the store did before the indexes existed: the items hash and `skus`, nothing else."""
    keys = UserKeys(PROJECT, user_id)
    items = list(records.items())
    async with redis.pipeline(transaction=False) as pipe:
        for start in range(0, len(items), 1000):
            chunk: dict[Any, Any] = dict(items[start : start + 1000])
            pipe.hset(keys.items, mapping=chunk)
            pipe.zadd(keys.skus, dict.fromkeys(chunk, 0))
        await pipe.execute()


async def write_indexed(redis: aioredis.Redis, user_id: str, records: Mapping[str, str]) -> None:
    """Writes records with their indexes as the store's scripts leave them when each record was written while in
    force: time-limited items that have expired since are still in `live` and `expiry` (nothing looked since)."""
    keys = UserKeys(PROJECT, user_id)
    await write_old_layout(redis, user_id, records)
    decoded = {sku: json.loads(raw) for sku, raw in records.items()}
    async with redis.pipeline(transaction=False) as pipe:
        pipe.zadd(keys.live, dict.fromkeys(records, 0))
        pipe.zadd(keys.expiry, {sku: r["e"] for sku, r in decoded.items() if r["k"] == 3})
        pipe.zadd(keys.timed, {sku: -r["g"] for sku, r in decoded.items() if r["k"] == 3})
        pipe.set(keys.index_state, "ready")
        await pipe.execute()


def hoard(now: int) -> dict[str, str]:
    """20,000 passes that expired yesterday (granted one ms apart, so their order is known), and LIVE."""
    records = {f"pass_{i:05d}": timed(now - 2 * DAY_MS + i, now - DAY_MS + i) for i in range(EXPIRED)}
    records["a_gold"] = plain(now - 3 * DAY_MS)
    records["pass_09999_live"] = timed(now - 10_000, now + DAY_MS)
    records["zz_season"] = timed(now - 20_000, now + DAY_MS)
    return records


async def commands(redis: aioredis.Redis) -> dict[str, int]:
    """Calls per command since the last reset, the INFO call itself left out."""
    stats = await redis.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items() if name != "cmdstat_info"}


async def counted(redis: aioredis.Redis) -> dict[str, int]:
    calls = await commands(redis)
    await redis.config_resetstat()
    return calls


@pytest.fixture
async def store(redis_client: aioredis.Redis) -> EntitlementStore:
    return EntitlementStore(redis_client, timeout_s=5.0, idempotency_ttl_ms=60_000)


@pytest.fixture(params=["indexed", "old layout"])
async def hoarder(request: pytest.FixtureRequest, redis_client: aioredis.Redis) -> dict[str, str]:
    """The hoarder's records: with the indexes the writes left (every expired pass still in `live`, the worst case
    for a listing), or in the layout from before the indexes (indexed on first use)."""
    records = hoard(now_ms())
    write = write_indexed if request.param == "indexed" else write_old_layout
    await write(redis_client, HOARDER, records)
    return records


async def index_view(redis: aioredis.Redis, user_id: str) -> dict[str, dict[str, float]]:
    keys = UserKeys(PROJECT, user_id)
    view = {}
    for name in ("skus", "live", "expiry", "timed", "subscriptions_order", "subscriptions_active"):
        pairs: Any = await redis.zrange(getattr(keys, name), 0, -1, withscores=True)
        view[name] = {reply_text(member): float(score) for member, score in pairs}
    return view


async def hash_of(redis: aioredis.Redis, key: str) -> dict[str, str]:
    raw: Any = await redis.hgetall(key)
    return {reply_text(k): reply_text(v) for k, v in raw.items()}


async def assert_indexes_right(redis: aioredis.Redis, user_id: str) -> None:
    """The indexes say what the items and subscriptions hashes say (an expired pass may still wait in `live` and
    `expiry`, with its expiry, until a listing or a write sees it)."""
    keys = UserKeys(PROJECT, user_id)
    assert await redis.get(keys.index_state) == b"ready"
    items = {k: json.loads(v) for k, v in (await hash_of(redis, keys.items)).items()}
    subs = {k: json.loads(v) for k, v in (await hash_of(redis, keys.subscriptions)).items()}
    view = await index_view(redis, user_id)
    now = now_ms()
    assert set(view["skus"]) == set(items)
    assert view["timed"] == {sku: -r["g"] for sku, r in items.items() if r["k"] == 3}
    assert set(view["expiry"]) <= set(view["live"]) <= set(items)
    for sku, record in items.items():
        if record["k"] != 3:
            assert sku in view["live"], sku
            assert sku not in view["expiry"], sku
        elif record["e"] > now:
            assert sku in view["live"], sku
            assert view["expiry"].get(sku) == record["e"], sku
        else:
            assert view["expiry"].get(sku, record["e"]) == record["e"], sku
    assert view["subscriptions_order"] == {i: -(s.get("date_create_ms") or 0) for i, s in subs.items()}
    in_force = {i for i, s in subs.items() if s["status"] in ("active", "non_renewing")}
    assert set(view["subscriptions_active"]) == in_force


async def test_a_page_reads_a_bounded_amount_however_many_items_expired(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """With 20,000 expired items still in the index, one page of active items is one script of a few dozen
    commands that touches at most the expired budget; where more expired items lie ahead the page is short and
    says where to go on."""
    await write_indexed(redis_client, HOARDER, hoard(now_ms()))
    await assert_indexes_right(redis_client, HOARDER)
    live = UserKeys(PROJECT, HOARDER).live
    before = await redis_client.zcard(live)
    await store.list_page(
        PROJECT, "warm-up", None, 1, include_expired=False
    )  # the script is loaded: one EVALSHA a call
    await redis_client.config_resetstat()

    first = await store.list_page(PROJECT, HOARDER, None, 1, include_expired=False)
    calls = await counted(redis_client)
    assert [r.sku for r in first.records] == ["a_gold"]
    assert (first.next_after or "") >= "a_gold"
    assert calls["evalsha"] == 1
    assert sum(calls.values()) <= 40, calls
    assert not {"hgetall", "hscan", "hkeys", "hvals", "zrange"} & set(calls)

    second = await store.list_page(PROJECT, HOARDER, first.next_after, 1, include_expired=False)
    calls = await counted(redis_client)
    assert second.records == []  # 10,000 expired passes lie between a_gold and the next live item
    assert (second.next_after or "") > "a_gold"
    assert calls["evalsha"] == 1
    assert sum(calls.values()) <= 40, calls
    # Two calls pruned and skipped at most their budget each, out of 20,000.
    assert await redis_client.zcard(live) >= before - 4 * EXPIRED_BUDGET
    await assert_indexes_right(redis_client, HOARDER)


async def test_paging_returns_every_live_item_once_in_bounded_pages(
    client: AsyncEntitlementsClient, hoarder: dict[str, str]
) -> None:
    """Paging with page_size=1 through the hoarder's items returns each live one exactly once, in sku order, in a
    number of pages bounded by the expired budget; include_expired lists all 20,003."""
    seen: list[str] = []
    token, pages = "", 0
    while True:
        page = await client.list_entitlements(HOARDER, page_size=1, page_token=token)
        pages += 1
        seen += [e.sku for e in page.entitlements]
        assert all(e.active for e in page.entitlements)
        token = page.next_page_token
        if not token:
            break
    assert seen == LIVE
    assert pages <= len(LIVE) + EXPIRED // EXPIRED_BUDGET + 1
    everything = [e.sku async for e in client.iter_entitlements(HOARDER, page_size=500, include_expired=True)]
    assert everything == sorted(hoarder, key=str.encode)
    again = await client.list_entitlements(HOARDER, page_size=10)
    assert [e.sku for e in again.entitlements] == LIVE  # everything expired was pruned on the way
    assert not again.next_page_token


async def test_list_subscriptions_reads_only_its_page(
    store: EntitlementStore, redis_client: aioredis.Redis, hoarder: dict[str, str]
) -> None:
    """ListSubscriptions of the hoarder reads the page's records only, through the indexes, in the order the
    listing always had: recurring first, then time-limited items newest grant first; offsets reach anywhere."""
    await store.record_subscription_event(
        PROJECT, HOARDER, "e1", "t", "created", SubscriptionChange("s-old", date_create_ms=1)
    )
    await store.record_subscription_event(
        PROJECT, HOARDER, "e2", "t", "created", SubscriptionChange("s-new", date_create_ms=2)
    )
    await store.record_subscription_event(PROJECT, HOARDER, "e3", "t", "canceled", SubscriptionChange("s-old"))
    await store.build_index(PROJECT, HOARDER)
    await store.subscriptions_page(PROJECT, "warm-up", 0, 1, include_inactive=False)  # the script is loaded
    await redis_client.config_resetstat()

    active = await store.subscriptions_page(PROJECT, HOARDER, 0, 15, include_inactive=False)
    calls = await counted(redis_client)
    assert [s.id for s in active.recurring] == ["s-new"]
    assert [r.sku for r in active.timed] == ["pass_09999_live", "zz_season"]  # granted 10 s and 20 s ago
    assert active.total == 3
    assert calls["evalsha"] == 1
    assert sum(calls.values()) <= 20, calls
    assert not {"hgetall", "hscan", "hkeys", "hvals"} & set(calls)

    timed = sorted(
        (sku for sku, raw in hoarder.items() if json.loads(raw)["k"] == 3),
        key=lambda sku: (-json.loads(hoarder[sku])["g"], sku.encode()),
    )
    deep = await store.subscriptions_page(PROJECT, HOARDER, 10_000, 5, include_inactive=True)
    calls = await counted(redis_client)
    assert deep.recurring == []
    assert [r.sku for r in deep.timed] == timed[10_000 - 2 : 10_000 + 3]
    assert deep.total == 2 + len(timed)
    assert sum(calls.values()) <= 20, calls
    head = await store.subscriptions_page(PROJECT, HOARDER, 0, 3, include_inactive=True)
    assert [s.id for s in head.recurring] == ["s-new", "s-old"]
    assert [r.sku for r in head.timed] == timed[:1]


async def test_a_player_written_before_the_indexes_is_indexed_once_in_bounded_steps(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """The first listing of a player in the old layout builds the indexes, one bounded script per step (about
    INDEX_BUILD_STEP entries each), and lists right; the next listing is one script."""
    await write_old_layout(redis_client, HOARDER, hoard(now_ms()))
    await store.list_page(PROJECT, "warm-up", None, 1, include_expired=False)
    await store.build_index(PROJECT, "warm-up")
    await redis_client.config_resetstat()
    page = await store.list_page(PROJECT, HOARDER, None, 10, include_expired=False)
    calls = await counted(redis_client)
    assert [r.sku for r in page.records] == LIVE
    steps = calls["evalsha"] - 2  # the listing ran twice: before and after the build
    assert EXPIRED // INDEX_BUILD_STEP // 2 <= steps <= 2 * EXPIRED // INDEX_BUILD_STEP + 2
    assert calls["hscan"] == steps
    assert "hgetall" not in calls
    await assert_indexes_right(redis_client, HOARDER)
    assert await redis_client.zcard(UserKeys(PROJECT, HOARDER).live) == len(LIVE)  # the build left out what had expired
    await store.list_page(PROJECT, HOARDER, None, 10, include_expired=False)
    assert (await counted(redis_client))["evalsha"] == 1


async def test_writes_during_a_partial_build_end_in_right_indexes(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """A player written before the indexes, changed while they are half built, lists what it holds."""
    now = now_ms()
    records = {f"old_{i:04d}": timed(now - DAY_MS, now + (DAY_MS if i >= 200 else -1)) for i in range(600)}
    records |= {f"gem_{i:03d}": plain(now - DAY_MS) for i in range(100)}
    await write_old_layout(redis_client, "p", records)
    assert not await store.build_index(PROJECT, "p", max_steps=1)
    await store.revoke(RevokeCommand(PROJECT, "p", "old_0599", "r1"), "t")
    await store.revoke(RevokeCommand(PROJECT, "p", "gem_000", "r2"), "t")
    await store.grant(GrantCommand(PROJECT, "p", "old_0000", 3, 1, DAY_MS, "g1"), "t")  # expired: a new period
    await store.grant(GrantCommand(PROJECT, "p", "new_pass", 3, 1, DAY_MS, "g2"), "t")
    await store.grant(GrantCommand(PROJECT, "p", "gem_099", 1, 1, 0, "g3"), "t")
    assert not await store.build_index(PROJECT, "p", max_steps=1)
    await store.grant(GrantCommand(PROJECT, "p", "old_0001", 3, 1, DAY_MS, "g4"), "t")
    await asyncio.sleep(0.01)
    held, after = [], None
    while True:
        page = await store.list_page(PROJECT, "p", after, 50, include_expired=False)
        held += [r.sku for r in page.records]
        if page.next_after is None:
            break
        after = page.next_after
    now = now_ms()
    expected = sorted(
        sku
        for sku, raw in (await hash_of(redis_client, UserKeys(PROJECT, "p").items)).items()
        if json.loads(raw).get("e", now + 1) > now
    )
    assert held == expected
    assert {"old_0000", "old_0001", "new_pass", "gem_099"} <= set(held)
    assert not {"old_0599", "gem_000"} & set(held)
    await assert_indexes_right(redis_client, "p")


async def test_the_build_indexes_an_old_player_as_the_writes_would(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """A player written by the store today and the same data in the old layout, once built, have the same
    indexes (but for expired passes the writes have not seen expire yet)."""
    for i in range(200):
        kind, period = [(1, 0), (2, 0), (3, 1), (3, DAY_MS)][i % 4]
        await store.grant(GrantCommand(PROJECT, "now", f"sku_{i:03d}", kind, 1, period, f"k{i}"), "t")
    for n, (action, sub) in enumerate([("created", "a"), ("created", "b"), ("canceled", "a"), ("non_renewing", "c")]):
        change = SubscriptionChange(sub, date_create_ms=1_700_000_000_000 + n)
        await store.record_subscription_event(PROJECT, "now", f"e{n}", "t", action, change)
    await asyncio.sleep(0.01)  # the 1 ms passes have expired
    keys = UserKeys(PROJECT, "now")
    await write_old_layout(redis_client, "old", await hash_of(redis_client, keys.items))
    subscriptions: Any = await hash_of(redis_client, keys.subscriptions)
    await redis_client.hset(UserKeys(PROJECT, "old").subscriptions, mapping=subscriptions)
    assert await store.build_index(PROJECT, "old")
    written, built = await index_view(redis_client, "now"), await index_view(redis_client, "old")
    expired = {f"sku_{i:03d}" for i in range(2, 200, 4)}
    assert set(written["live"]) - expired == set(built["live"])
    assert {s: e for s, e in written["expiry"].items() if s not in expired} == built["expiry"]
    for name in ("skus", "timed", "subscriptions_order", "subscriptions_active"):
        assert written[name] == built[name], name
    await assert_indexes_right(redis_client, "now")
    await assert_indexes_right(redis_client, "old")


async def test_every_write_script_keeps_the_indexes(store: EntitlementStore, redis_client: aioredis.Redis) -> None:
    """Grant, revoke, order_paid, order_canceled and subscription events each leave the indexes right."""
    await store.grant(GrantCommand(PROJECT, "w", "pass", 3, 1, 1, "a"), "t")
    await assert_indexes_right(redis_client, "w")
    await asyncio.sleep(0.01)
    await store.grant(GrantCommand(PROJECT, "w", "pass", 3, 1, DAY_MS, "b"), "t")  # expired: a new period
    assert (await redis_client.zscore(UserKeys(PROJECT, "w").expiry, "pass") or 0) > now_ms()
    await assert_indexes_right(redis_client, "w")
    lines = [OrderLine("pass", 3, DAY_MS, 1), OrderLine("gold", 0, 0, 10), OrderLine("skin", 2, 0, 1)]
    await store.apply_order_paid(PROJECT, "w", "o1", "ev1", "t", lines, {})
    await assert_indexes_right(redis_client, "w")
    await store.apply_order_canceled(PROJECT, "w", "o1", "ev2", "t", {})
    await assert_indexes_right(redis_client, "w")
    assert set((await index_view(redis_client, "w"))["live"]) == {"pass"}
    await store.revoke(RevokeCommand(PROJECT, "w", "pass", "c"), "t")
    await assert_indexes_right(redis_client, "w")
    view = await index_view(redis_client, "w")
    assert not any(view[name] for name in ("skus", "live", "expiry", "timed"))
    await store.record_subscription_event(
        PROJECT, "w", "s1", "t", "created", SubscriptionChange("sub", date_create_ms=5)
    )
    await store.record_subscription_event(PROJECT, "w", "s2", "t", "canceled", SubscriptionChange("sub"))
    await assert_indexes_right(redis_client, "w")


async def test_listing_a_player_without_data_leaves_no_key(
    store: EntitlementStore, redis_client: aioredis.Redis
) -> None:
    """Listings of a player the store knows nothing about are empty and write nothing (no index key per id)."""
    before = await data_keys(redis_client)
    page = await store.list_page(PROJECT, "nobody", None, 10, include_expired=False)
    subscriptions = await store.subscriptions_page(PROJECT, "nobody", 0, 15, include_inactive=True)
    assert (page.records, page.next_after) == ([], None)
    assert (subscriptions.recurring, subscriptions.timed, subscriptions.total) == ([], [], 0)
    assert await store.build_index(PROJECT, "nobody")
    assert await data_keys(redis_client) == before
