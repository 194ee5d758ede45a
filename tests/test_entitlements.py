"""Grant, Revoke, CheckEntitlement, ListEntitlements and ListSubscriptions through the client, on real Redis."""

from __future__ import annotations

import asyncio
import json
from datetime import timedelta

import pytest
import redis.asyncio as aioredis
from google.protobuf.timestamp_pb2 import Timestamp

from core.keys import UserKeys
from entitlements import (
    AsyncEntitlementsClient,
    ConflictError,
    EntitlementKind,
    InvalidArgumentError,
)
from server.app import Service
from server.embedded import EmbeddedRedis
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory

HOUR = timedelta(hours=1)


def ms(timestamp: Timestamp) -> int:
    """Milliseconds since the epoch of a protobuf Timestamp."""
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


async def test_grant_consumable_adds_up(client: AsyncEntitlementsClient) -> None:
    """Consumable grants add their quantities, and CheckEntitlement reports the total."""
    first = await client.grant("player-1", "gold_100", quantity=100)
    second = await client.grant("player-1", "gold_100", quantity=50)
    assert first.entitlement.quantity == 100
    assert second.entitlement.quantity == 150
    assert second.entitlement.kind == EntitlementKind.ENTITLEMENT_KIND_CONSUMABLE
    assert not second.replayed
    check = await client.check_entitlement("player-1", "gold_100")
    assert check.active
    assert check.entitlement.quantity == 150
    assert ms(check.entitlement.granted_at) == ms(first.entitlement.granted_at)


async def test_grant_permanent_is_owned_once(client: AsyncEntitlementsClient) -> None:
    """A permanent item granted twice is still one item."""
    await client.grant("player-1", "skin_red", kind=EntitlementKind.ENTITLEMENT_KIND_PERMANENT)
    again = await client.grant("player-1", "skin_red")
    assert again.entitlement.kind == EntitlementKind.ENTITLEMENT_KIND_PERMANENT
    assert again.entitlement.quantity == 1
    assert not again.entitlement.HasField("expires_at")


async def test_check_unknown_sku_is_inactive(client: AsyncEntitlementsClient) -> None:
    """A sku the player never held is not active and carries no entitlement."""
    check = await client.check_entitlement("player-1", "never")
    assert not check.active
    assert not check.HasField("entitlement")


async def test_time_limited_active_grant_extends_expiry(client: AsyncEntitlementsClient) -> None:
    """Granting an active time-limited item again adds the period to the old expiry."""
    first = await client.grant("player-1", "vip_pass", duration=HOUR)
    second = await client.grant("player-1", "vip_pass", duration=HOUR)
    third = await client.grant("player-1", "vip_pass", duration=timedelta(minutes=30), quantity=2)
    assert first.entitlement.kind == EntitlementKind.ENTITLEMENT_KIND_TIME_LIMITED
    assert ms(second.entitlement.expires_at) == ms(first.entitlement.expires_at) + 3_600_000
    assert ms(third.entitlement.expires_at) == ms(second.entitlement.expires_at) + 3_600_000
    assert third.entitlement.quantity == 1
    assert third.entitlement.period.seconds == 1800


async def test_time_limited_expired_grant_restarts_from_now(client: AsyncEntitlementsClient) -> None:
    """A time-limited item granted after it expired starts a new period from now, not from the old expiry."""
    first = await client.grant("player-1", "vip_pass", duration=timedelta(milliseconds=200))
    await asyncio.sleep(0.3)
    check = await client.check_entitlement("player-1", "vip_pass")
    assert not check.active, "past expires_at the item is not active"
    assert check.entitlement.quantity == 1
    second = await client.grant("player-1", "vip_pass", duration=HOUR)
    regrant_at = ms(second.entitlement.updated_at)
    assert ms(second.entitlement.expires_at) == regrant_at + 3_600_000
    assert regrant_at >= ms(first.entitlement.expires_at)
    assert (await client.check_entitlement("player-1", "vip_pass")).active


async def test_revoke_removes_completely(client: AsyncEntitlementsClient) -> None:
    """Revoke removes an item whatever its quantity; revoking again reports nothing was there."""
    await client.grant("player-1", "gold_100", quantity=7)
    revoked = await client.revoke("player-1", "gold_100", reason="chargeback")
    assert revoked.revoked
    assert revoked.previous.quantity == 7
    check = await client.check_entitlement("player-1", "gold_100")
    assert not check.active
    assert not check.HasField("entitlement")
    again = await client.revoke("player-1", "gold_100")
    assert not again.revoked
    assert not again.HasField("previous")


async def test_revoke_time_limited_then_grant_starts_fresh(client: AsyncEntitlementsClient) -> None:
    """After a revoke, a time-limited grant starts a new period from now."""
    await client.grant("player-1", "vip_pass", duration=HOUR, quantity=10)
    await client.revoke("player-1", "vip_pass")
    fresh = await client.grant("player-1", "vip_pass", duration=HOUR)
    assert ms(fresh.entitlement.expires_at) == ms(fresh.entitlement.updated_at) + 3_600_000


async def test_replay_returns_first_result_and_changes_nothing(client: AsyncEntitlementsClient) -> None:
    """The same idempotency key and request returns the first response, marked replayed, and grants once."""
    first = await client.grant("player-1", "gold_100", quantity=5, idempotency_key="order-1:line-1")
    await client.grant("player-1", "gold_100", quantity=1)
    replay = await client.grant("player-1", "gold_100", quantity=5, idempotency_key="order-1:line-1")
    assert replay.replayed
    assert replay.entitlement.quantity == first.entitlement.quantity == 5
    assert (await client.check_entitlement("player-1", "gold_100")).entitlement.quantity == 6
    revoke = await client.revoke("player-1", "gold_100", idempotency_key="rv-1")
    revoke_replay = await client.revoke("player-1", "gold_100", idempotency_key="rv-1")
    assert revoke.revoked
    assert revoke_replay.revoked
    assert revoke_replay.replayed
    assert revoke_replay.previous.quantity == 6


async def test_key_reuse_with_different_request_is_rejected(
    client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """An idempotency key replayed with a different request is ALREADY_EXISTS and writes nothing."""
    await client.grant("player-1", "gold_100", quantity=5, idempotency_key="k-1")
    ledger_before = await redis_client.xlen(UserKeys(PROJECT, "player-1").ledger)
    with pytest.raises(ConflictError, match="idempotency_key was already used") as caught:
        await client.grant("player-1", "gold_100", quantity=6, idempotency_key="k-1")
    assert caught.value.code is not None
    assert caught.value.code.name == "ALREADY_EXISTS"
    with pytest.raises(ConflictError):
        await client.revoke("player-1", "gold_100", idempotency_key="k-1")
    assert (await client.check_entitlement("player-1", "gold_100")).entitlement.quantity == 5
    assert await redis_client.xlen(UserKeys(PROJECT, "player-1").ledger) == ledger_before


async def test_kind_mismatch_is_failed_precondition(client: AsyncEntitlementsClient) -> None:
    """Granting a held sku as another kind is refused with the kind it is held as."""
    await client.grant("player-1", "sword", kind=EntitlementKind.ENTITLEMENT_KIND_PERMANENT)
    with pytest.raises(ConflictError, match="holds this sku as permanent") as caught:
        await client.grant("player-1", "sword", duration=HOUR)
    assert caught.value.code is not None
    assert caught.value.code.name == "FAILED_PRECONDITION"
    await client.grant("player-1", "pass", duration=HOUR)
    with pytest.raises(ConflictError, match="duration is required"):
        await client.grant("player-1", "pass")


async def test_grant_idempotency_survives_key_ttl_setting(
    client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """An idempotency record is kept for the configured window (7 days by default)."""
    await client.grant("player-1", "gold_100", idempotency_key="ttl-check")
    ttl_ms = await redis_client.pttl(UserKeys(PROJECT, "player-1").idempotency("ttl-check"))
    assert 7 * 86_400_000 - 60_000 < ttl_ms <= 7 * 86_400_000


async def test_concurrent_grants_from_four_clients_add_up_exactly(
    service: Service, client_factory: ClientFactory
) -> None:
    """4 clients x 50 concurrent grants of quantity 1 end at exactly 200."""
    clients = [await client_factory(service) for _ in range(4)]
    results = await asyncio.gather(*(c.grant("player-1", "gold_1") for c in clients for _ in range(50)))
    assert not any(r.replayed for r in results)
    assert sorted(r.entitlement.quantity for r in results) == list(range(1, 201))
    assert (await clients[0].check_entitlement("player-1", "gold_1")).entitlement.quantity == 200


async def test_concurrent_grants_across_two_replicas(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, client_factory: ClientFactory
) -> None:
    """Two service replicas on one Redis, hammered concurrently, never lose an update."""
    url = redis_server.url
    replicas = [await service_factory(redis_url=url) for _ in range(2)]
    clients = [await client_factory(r) for r in replicas for _ in range(2)]
    await asyncio.gather(*(c.grant("player-1", "gold_1") for c in clients for _ in range(50)))
    check = await clients[0].check_entitlement("player-1", "gold_1")
    assert check.entitlement.quantity == 200


async def test_same_key_fifty_times_at_once_grants_once(client: AsyncEntitlementsClient) -> None:
    """The same grant sent 50 times concurrently with one key applies once; the rest are replays."""
    results = await asyncio.gather(
        *(client.grant("player-1", "gem", quantity=3, idempotency_key="dup") for _ in range(50))
    )
    assert sum(not r.replayed for r in results) == 1
    assert {r.entitlement.quantity for r in results} == {3}
    assert (await client.check_entitlement("player-1", "gem")).entitlement.quantity == 3


async def test_ledger_records_every_change(client: AsyncEntitlementsClient, service: Service) -> None:
    """Each grant and revoke appends who/what/why/before/after to the player's ledger; replays do not."""
    await client.grant("player-1", "gold", quantity=2, reason="quest", metadata={"quest": "q7"}, idempotency_key="a")
    await client.grant("player-1", "gold", quantity=2, reason="quest", metadata={"quest": "q7"}, idempotency_key="a")
    await client.revoke("player-1", "gold", reason="refund", idempotency_key="b")
    await client.revoke("player-1", "gold", reason="refund", idempotency_key="c")  # nothing held
    assert service.store is not None
    entries = await service.store.ledger(PROJECT, "player-1")
    assert [e.fields["op"] for e in entries] == ["revoke", "grant"]
    revoke, grant = entries
    assert grant.fields["actor"] == "writer"
    assert grant.fields["reason"] == "quest"
    assert grant.fields["idempotency_key"] == "a"
    assert json.loads(grant.fields["metadata"]) == {"quest": "q7"}
    assert grant.fields["before"] == ""
    assert json.loads(grant.fields["after"])["q"] == 2
    assert json.loads(revoke.fields["before"])["q"] == 2
    assert revoke.fields["after"] == ""


async def test_list_entitlements_pages_in_sku_order(client: AsyncEntitlementsClient) -> None:
    """ListEntitlements walks every sku once, in order, page by page."""
    skus = [f"item_{i:03d}" for i in range(23)]
    await asyncio.gather(*(client.grant("player-1", sku) for sku in skus))
    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = await client.list_entitlements("player-1", page_size=5, page_token=token)
        pages += 1
        seen += [e.sku for e in page.entitlements]
        token = page.next_page_token
        if not token:
            break
    assert seen == skus
    assert pages == 5
    everything = [e.sku async for e in client.iter_entitlements("player-1", page_size=7)]
    assert everything == skus


async def test_list_entitlements_hides_expired_unless_asked(client: AsyncEntitlementsClient) -> None:
    """Expired time-limited items are left out of a listing unless include_expired is set."""
    await client.grant("player-1", "a_old_pass", duration=timedelta(milliseconds=50))
    await client.grant("player-1", "b_gold", quantity=3)
    await client.grant("player-1", "c_pass", duration=HOUR)
    await asyncio.sleep(0.1)
    page = await client.list_entitlements("player-1")
    assert [e.sku for e in page.entitlements] == ["b_gold", "c_pass"]
    assert all(e.active for e in page.entitlements)
    full = await client.list_entitlements("player-1", include_expired=True)
    assert [(e.sku, e.active) for e in full.entitlements] == [
        ("a_old_pass", False),
        ("b_gold", True),
        ("c_pass", True),
    ]
    one = await client.list_entitlements("player-1", page_size=1)
    assert [e.sku for e in one.entitlements] == ["b_gold"]
    rest = await client.list_entitlements("player-1", page_size=1, page_token=one.next_page_token)
    assert [e.sku for e in rest.entitlements] == ["c_pass"]


async def test_list_subscriptions_shows_time_limited_items(client: AsyncEntitlementsClient) -> None:
    """Time-limited items are listed as non-renewing subscriptions with Xsolla's fields, paged by offset."""
    await client.grant("player-1", "gold", quantity=5)
    await client.grant("player-1", "pass_month", duration=timedelta(days=30))
    await asyncio.sleep(0.01)  # distinct date_create, so "newest first" is well defined
    await client.grant("player-1", "pass_old", duration=timedelta(milliseconds=50))
    await asyncio.sleep(0.1)
    await client.grant("player-1", "pass_hour", duration=HOUR)
    listing = await client.list_subscriptions("player-1")
    assert [s.id for s in listing.subscriptions] == ["pass_hour", "pass_month"]
    assert not listing.has_more
    month = listing.subscriptions[1]
    assert month.kind == 2  # SUBSCRIPTION_KIND_NON_RENEWING
    assert month.status == "active"
    assert month.plan_external_id == "pass_month"
    assert (month.period.value, month.period.unit) == (30, "day")
    assert ms(month.date_next_charge) == ms(month.date_create) + 30 * 86_400_000
    with_inactive = await client.list_subscriptions("player-1", include_inactive=True)
    assert [(s.id, s.status) for s in with_inactive.subscriptions] == [
        ("pass_hour", "active"),
        ("pass_old", "expired"),
        ("pass_month", "active"),
    ]
    first = await client.list_subscriptions("player-1", include_inactive=True, limit=2)
    assert first.has_more
    assert len(first.subscriptions) == 2
    last = await client.list_subscriptions("player-1", include_inactive=True, limit=2, offset=2)
    assert not last.has_more
    assert [s.id for s in last.subscriptions] == ["pass_month"]


async def test_list_subscriptions_includes_recurring_first(
    client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """Recurring subscriptions recorded from webhooks come before non-renewing ones."""
    record = {
        "id": "10",
        "plan_id": 54321,
        "plan_external_id": "vip_monthly",
        "plan_name": "VIP",
        "status": "active",
        "date_create_ms": 1_700_000_000_000,
        "date_next_charge_ms": 1_702_592_000_000,
        "charge_amount": "9.99",
        "charge_currency": "USD",
        "period_value": 1,
        "period_unit": "month",
    }
    await redis_client.hset(UserKeys(PROJECT, "player-1").subscriptions, "10", json.dumps(record))
    await client.grant("player-1", "pass", duration=HOUR)
    listing = await client.list_subscriptions("player-1", locale="en")
    assert [s.id for s in listing.subscriptions] == ["10", "pass"]
    vip = listing.subscriptions[0]
    assert vip.kind == 1  # SUBSCRIPTION_KIND_RECURRING
    assert (vip.plan_id, vip.plan_external_id, vip.charge.amount, vip.charge.currency) == (
        54321,
        "vip_monthly",
        "9.99",
        "USD",
    )
    assert (vip.period.value, vip.period.unit) == (1, "month")


async def test_get_order_status_checks_its_arguments(client: AsyncEntitlementsClient) -> None:
    """GetOrderStatus without an order id is INVALID_ARGUMENT, naming the field."""
    with pytest.raises(InvalidArgumentError, match="order_id"):
        async for _ in client.get_order_status("", "player-1"):
            pass


async def test_players_are_isolated(client: AsyncEntitlementsClient) -> None:
    """One player's grants, including ids that look like hash tags, never show up for another."""
    await client.grant("a}b", "gold", quantity=1)
    await client.grant("a", "gold", quantity=2)
    await client.grant("{a}", "gold", quantity=3)
    assert (await client.check_entitlement("a}b", "gold")).entitlement.quantity == 1
    assert (await client.check_entitlement("a", "gold")).entitlement.quantity == 2
    assert (await client.check_entitlement("{a}", "gold")).entitlement.quantity == 3
