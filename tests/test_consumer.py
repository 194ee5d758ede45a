"""The webhook event consumer inside the real service: events go on the real streams (as the gateway writes them),
the results are read back through the Python client, the ledger and the order hash."""

from __future__ import annotations

import asyncio
import json
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.connections import RedisClient
from core.keys import UserKeys, order_status_channel
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.catalog import Catalog, CatalogItem
from server.config import ConsumerSettings, Settings
from server.errors import ConfigError
from server.status_channel import OrderState, read_order_state
from server.store import CONSUMABLE, PERMANENT, TIME_LIMITED
from tests.helpers.events import (
    DAY_MS,
    consumer_settings,
    dead_letters,
    drained,
    event_log,
    order_event,
    store_of,
    subscription_event,
    transaction_event,
    xadd,
    xadd_raw,
)
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest, all_keys, subscribed
from tests.helpers.waiting import eventually


@pytest.fixture
async def consuming(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """The service on the test's Valkey, consuming two partitions with the test catalog and fast timings."""
    return await service_factory(redis_url=redis_server.url, **consumer_settings())


@pytest.fixture
async def client(consuming: Service, client_factory: ClientFactory) -> AsyncEntitlementsClient:
    """A read+write client on the consuming service."""
    return await client_factory(consuming)


async def quantity(client: AsyncEntitlementsClient, user: str, sku: str) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


async def expires_ms(client: AsyncEntitlementsClient, user: str, sku: str) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.expires_at.ToMilliseconds()


def now_ms() -> int:
    return int(time.time() * 1000)


async def test_order_paid_grants_lines_but_not_bundle_lines(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """order_paid grants each line by its catalog kind; a bundle line is recorded, its contents are granted."""
    event = order_event(
        "paid",
        "1001",
        "player-1",
        [("starter_bundle", 1, "bundle"), ("gold", 500, "virtual_currency"), ("castle", 1), ("vip_pass", 1)],
    )
    await event_log(redis_client).append(event, b"{}")
    await drained(redis_client)

    assert await quantity(client, "player-1", "gold") == 500
    assert (await client.check_entitlement("player-1", "castle")).entitlement.kind == PERMANENT
    assert not (await client.check_entitlement("player-1", "starter_bundle")).HasField("entitlement")
    vip = (await client.check_entitlement("player-1", "vip_pass")).entitlement
    assert vip.kind == TIME_LIMITED
    assert vip.active
    assert abs(vip.expires_at.ToMilliseconds() - (now_ms() + 30 * DAY_MS)) < 60_000

    order = await store_of(consuming).order(PROJECT, "player-1", "1001")
    assert order is not None
    assert (order["status"], order["granted"], order["paid_event_id"]) == ("paid", "1", event.event_id)
    assert [line["sku"] for line in json.loads(order["lines"])] == ["starter_bundle", "gold", "castle", "vip_pass"]
    assert [grant["s"] for grant in json.loads(order["grants"])] == ["gold", "castle", "vip_pass"]
    ledger = await store_of(consuming).ledger(PROJECT, "player-1")
    assert {(e.fields["sku"], e.fields["op"]) for e in ledger} == {
        ("gold", "grant"),
        ("castle", "grant"),
        ("vip_pass", "grant"),
    }
    assert {e.fields["idempotency_key"] for e in ledger} == {event.event_id}
    assert {e.fields["actor"] for e in ledger} == {"xsolla-webhook"}
    assert sample(consuming, "entitlements_grants_applied_total") == 3
    assert sample(consuming, "entitlements_events_total", type="order_paid", result="applied") == 1


async def test_time_limited_order_extends_an_active_item_by_catalog_period_times_quantity(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """A time-limited line extends an active item by the catalog period times the quantity (periods add up)."""
    await client.grant("player-1", "vip_pass", duration=timedelta(days=10))
    before = await expires_ms(client, "player-1", "vip_pass")
    await event_log(redis_client).append(order_event("paid", "1002", "player-1", [("vip_pass", 2)]), b"{}")
    await drained(redis_client)
    assert await expires_ms(client, "player-1", "vip_pass") == before + 60 * DAY_MS


async def test_redelivered_event_with_a_new_entry_id_grants_once(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """The same event appended again past the gateway's dedup (new entry id, same event id) changes nothing."""
    event = order_event("paid", "1003", "player-1", [("gold", 10)])
    await event_log(redis_client).append(event, b"{}")
    await drained(redis_client)
    await xadd(redis_client, event)
    await xadd(redis_client, event)
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 10
    assert len(await store_of(consuming).ledger(PROJECT, "player-1")) == 1
    assert sample(consuming, "entitlements_events_total", type="order_paid", result="replayed") == 2


@pytest.mark.slow
async def test_fifty_concurrent_copies_on_two_replicas_grant_once(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    client_factory: ClientFactory,
    redis_client: aioredis.Redis,
) -> None:
    """The same order_paid stored 50 times at once (dedup bypassed) and consumed by two replicas grants once."""
    first = await service_factory(redis_url=redis_server.url, **consumer_settings())
    await service_factory(redis_url=redis_server.url, **consumer_settings())
    event = order_event("paid", "1004", "player-1", [("gold", 100), ("vip_pass", 1), ("castle", 1)])
    log = event_log(redis_client)
    stored = await asyncio.gather(*(log.append(event, b"{}") for _ in range(50)))
    assert sum(not result.duplicate for result in stored) == 1
    await asyncio.gather(*(xadd(redis_client, event) for _ in range(50)))
    await drained(redis_client)

    client = await client_factory(first)
    assert await quantity(client, "player-1", "gold") == 100
    assert abs(await expires_ms(client, "player-1", "vip_pass") - (now_ms() + 30 * DAY_MS)) < 60_000
    assert len(await store_of(first).ledger(PROJECT, "player-1")) == 3


async def test_cancel_after_paid_undoes_exactly_that_order(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """order_canceled takes back exactly the order's grants: quantities, a new permanent item, the added time."""
    await client.grant("player-1", "gold", quantity=5)
    await client.grant("player-1", "sword", kind=pb.ENTITLEMENT_KIND_PERMANENT)
    await client.grant("player-1", "vip_pass", duration=timedelta(days=10))
    vip_before = await expires_ms(client, "player-1", "vip_pass")
    paid = order_event("paid", "2001", "player-1", [("gold", 100), ("sword", 1), ("castle", 1), ("vip_pass", 1)])
    log = event_log(redis_client)
    await log.append(paid, b"{}")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 105
    await client.grant("player-1", "gold", quantity=7)  # a grant after the order stays

    await log.append(order_event("canceled", "2001", "player-1", [("gold", 100)]), b"{}")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 12
    assert (await client.check_entitlement("player-1", "sword")).active  # held before the order: kept
    assert not (await client.check_entitlement("player-1", "castle")).HasField("entitlement")
    assert await expires_ms(client, "player-1", "vip_pass") == vip_before
    order = await store_of(consuming).order(PROJECT, "player-1", "2001")
    assert order is not None
    assert (order["status"], order["granted"]) == ("canceled", "0")
    cancels = [e for e in await store_of(consuming).ledger(PROJECT, "player-1") if e.fields["op"] == "cancel"]
    assert {e.fields["sku"] for e in cancels} == {"gold", "castle", "vip_pass"}
    assert sample(consuming, "entitlements_grants_undone_total") == 3


async def test_cancel_removes_items_the_order_created_and_keeps_later_extensions(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """Undoing a time-limited line moves the expiry back by the order's period; a later extension survives."""
    log = event_log(redis_client)
    await log.append(order_event("paid", "2002", "player-1", [("vip_pass", 1), ("gold", 3)]), b"{}")
    await log.append(order_event("paid", "2003", "player-2", [("vip_pass", 1)]), b"{}")
    await drained(redis_client)
    await client.grant("player-2", "vip_pass", duration=timedelta(days=5))
    player_2 = await expires_ms(client, "player-2", "vip_pass")

    await log.append(order_event("canceled", "2002", "player-1"), b"{}")
    await log.append(order_event("canceled", "2003", "player-2"), b"{}")
    await drained(redis_client)
    for sku in ("vip_pass", "gold"):
        assert not (await client.check_entitlement("player-1", sku)).HasField("entitlement")
    assert await expires_ms(client, "player-2", "vip_pass") == player_2 - 30 * DAY_MS


async def test_cancel_before_paid_means_the_late_paid_grants_nothing(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """A cancel that arrives first is remembered; the order_paid that follows grants nothing and stays canceled."""
    log = event_log(redis_client)
    await log.append(order_event("canceled", "3001", "player-1", [("gold", 50)]), b"{}")
    await drained(redis_client)
    await log.append(order_event("paid", "3001", "player-1", [("gold", 50)]), b"{}")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 0
    order = await store_of(consuming).order(PROJECT, "player-1", "3001")
    assert order is not None
    assert (order["status"], order["canceled_before_paid"], order["paid_after_cancel"]) == ("canceled", "1", "1")
    assert sample(consuming, "entitlements_events_total", type="order_paid", result="ignored") == 1


async def test_each_applied_order_event_publishes_the_order_status(
    consuming: Service, redis_client: aioredis.Redis
) -> None:
    """Paid and canceled are published on the order-status channel as JSON, and kept in the order hash."""
    async with subscribed(redis_client, order_status_channel(PROJECT)) as channel:
        log = event_log(redis_client)
        await log.append(order_event("paid", "4001", "player-1", [("gold", 1)]), b"{}")
        states = []
        for _ in range(2):
            message = await channel.next(timeout_s=5.0)
            assert message is not None
            states.append(OrderState.from_json(message["data"]))
            if len(states) == 1:
                await log.append(order_event("canceled", "4001", "player-1"), b"{}")
    assert [(s.order_id, s.user_id, s.status, s.entitlements_granted, s.source) for s in states] == [
        ("4001", "player-1", "paid", True, "webhook"),
        ("4001", "player-1", "canceled", False, "webhook"),
    ]
    assert states[0].observed_at_ms <= states[1].observed_at_ms
    assert await read_order_state(redis_client, (PROJECT, "player-1", "4001")) == states[1]
    assert await read_order_state(redis_client, (PROJECT, "player-1", "no-such-order")) is None


async def test_subscription_lifecycle_shows_in_list_subscriptions(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """Subscription events drive ListSubscriptions' recurring entry; a late older update does not revive a cancel."""
    log = event_log(redis_client)
    june, july = datetime(2026, 6, 1, tzinfo=UTC), datetime(2026, 7, 1, tzinfo=UTC)

    async def apply(event: ev.WebhookEvent) -> pb.Subscription:
        await log.append(event, b"{}")
        await drained(redis_client)
        (subscription,) = (await client.list_subscriptions("player-1", include_inactive=True)).subscriptions
        return subscription

    created = await apply(subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_CREATED, "player-1", "10", next_charge=june))
    assert (created.id, created.status, created.plan_external_id, created.product_id) == (
        "10",
        "active",
        "b5dac9c8",
        42,
    )
    assert created.kind == pb.SUBSCRIPTION_KIND_RECURRING
    assert created.date_next_charge.ToDatetime(UTC) == june
    updated = await apply(subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_UPDATED, "player-1", "10", next_charge=july))
    assert (updated.status, updated.date_next_charge.ToDatetime(UTC)) == ("active", july)
    non_renewing = await apply(
        subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING, "player-1", "10", next_charge=july)
    )
    assert non_renewing.status == "non_renewing"
    assert len((await client.list_subscriptions("player-1")).subscriptions) == 1  # still in force
    canceled = await apply(subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_CANCELED, "player-1", "10", date_end=july))
    assert canceled.status == "canceled"
    assert not (await client.list_subscriptions("player-1")).subscriptions
    late = await apply(subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_UPDATED, "player-1", "10", next_charge=june))
    assert late.status == "canceled"
    renewed = datetime(2026, 9, 1, tzinfo=UTC)
    again = await apply(subscription_event(ev.EVENT_TYPE_SUBSCRIPTION_UPDATED, "player-1", "10", next_charge=renewed))
    assert (again.status, again.date_next_charge.ToDatetime(UTC)) == ("active", renewed)
    assert sample(consuming, "entitlements_events_total", type="subscription_updated", result="stale") == 1


async def test_payments_and_refunds_are_on_the_ledger_and_grant_nothing(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """payment, refund and partial_refund each add one ledger entry (once), and no entitlement."""
    log = event_log(redis_client)
    events = [
        transaction_event(ev.EVENT_TYPE_PAYMENT, "player-1", "2103276197"),
        transaction_event(ev.EVENT_TYPE_REFUND, "player-1", "2103276197"),
        transaction_event(ev.EVENT_TYPE_PARTIAL_REFUND, "player-1", "2103276198", amount="0.50"),
    ]
    for event in events:
        await log.append(event, b"{}")
    await xadd(redis_client, events[0])  # redelivered
    await drained(redis_client)
    ledger = await store_of(consuming).ledger(PROJECT, "player-1")
    assert sorted(e.fields["op"] for e in ledger) == ["partial_refund", "payment", "refund"]
    refund = next(e for e in ledger if e.fields["op"] == "refund")
    assert (refund.fields["transaction_id"], refund.fields["amount"], refund.fields["refund_code"]) == (
        "2103276197",
        "1.99",
        "1",
    )
    assert refund.fields["idempotency_key"] == events[1].event_id
    assert not (await client.list_entitlements("player-1")).entitlements


async def test_unknown_event_types_are_acknowledged_and_counted(
    consuming: Service, redis_client: aioredis.Redis
) -> None:
    """An event of a type this version does not apply is acknowledged and counted, never dead-lettered."""
    event = ev.WebhookEvent(
        event_id="xsolla:308077:raw:abc",
        type=ev.EVENT_TYPE_UNKNOWN,
        provider="xsolla",
        project_id=PROJECT,
        user_id="player-1",
    )
    await event_log(redis_client).append(event, b'{"notification_type":"user_search"}')
    await drained(redis_client)
    # Counted just after the XACK: the stream can be drained a moment before it is.
    await eventually(
        lambda: sample(consuming, "entitlements_events_total", type="unknown", result="ignored") == 1,
        what="the ignored event counted",
    )
    assert await dead_letters(redis_client) == []


async def test_kind_conflict_grants_as_the_held_kind_and_is_counted(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """A sku the player holds as another kind than the catalog's is granted as the held kind, not dead-lettered."""
    await client.grant("player-1", "vip_pass", quantity=2, kind=pb.ENTITLEMENT_KIND_CONSUMABLE)
    await event_log(redis_client).append(order_event("paid", "5001", "player-1", [("vip_pass", 3)]), b"{}")
    await drained(redis_client)
    check = await client.check_entitlement("player-1", "vip_pass")
    assert (check.entitlement.kind, check.entitlement.quantity) == (CONSUMABLE, 5)
    assert sample(consuming, "entitlements_order_kind_conflicts_total") == 1
    assert await dead_letters(redis_client) == []


async def test_an_invalid_order_line_is_dead_lettered_without_partial_grants(
    consuming: Service, client: AsyncEntitlementsClient, redis_client: aioredis.Redis
) -> None:
    """An order whose line cannot be granted (bad sku) grants none of its lines and ends in the dead letters."""
    event = order_event("paid", "5002", "player-1", [("gold", 1), ("bad\x01sku", 1)])
    await event_log(redis_client).append(event, b"{}")
    await drained(redis_client)
    (letter,) = await dead_letters(redis_client)
    assert b"InvalidEvent" in letter[1][b"error"]
    assert letter[1][b"deliveries"] == b"3"
    assert await quantity(client, "player-1", "gold") == 0


async def test_events_written_before_the_service_started_are_applied(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """The group starts at the beginning of the stream: events stored before any consumer ran are applied."""
    await event_log(redis_client).append(order_event("paid", "6001", "player-1", [("gold", 4)]), b"{}")
    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    await drained(redis_client)
    record = await store_of(service).get(PROJECT, "player-1", "gold")
    assert record is not None
    assert record.quantity == 4


async def test_consumer_gauges_report_pending_and_lag(consuming: Service, redis_client: aioredis.Redis) -> None:
    """The pending, lag and dead-letter gauges describe the group; they read zero once everything is applied."""
    await event_log(redis_client).append(order_event("paid", "6002", "player-1", [("gold", 1)]), b"{}")
    await drained(redis_client)
    assert consuming.consumer is not None
    await consuming.consumer.maintain()
    for partition in ("0", "1"):
        assert sample(consuming, "entitlements_consumer_pending", partition=partition) == 0
        assert sample(consuming, "entitlements_consumer_lag_seconds", partition=partition) == 0
        assert sample(consuming, "entitlements_dead_letters_waiting", partition=partition) == 0
    assert sample(consuming, "entitlements_event_apply_seconds_count", type="order_paid") == 1


async def test_disabled_consumer_reads_nothing(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """With the consumer disabled the service serves gRPC only and leaves the streams alone."""
    service = await service_factory(redis_url=redis_server.url, **consumer_settings(enabled=False))
    assert service.consumer is None
    await event_log(redis_client).append(order_event("paid", "6003", "player-1", [("gold", 1)]), b"{}")
    await asyncio.sleep(0.2)
    assert await group_undelivered(redis_client) == 1


async def group_undelivered(redis: RedisClient) -> int:
    total = 0
    for key in await all_keys(redis, "ent:{ev:*}:events"):
        total += int(await redis.xlen(key))
        assert await redis.xinfo_groups(key) == []
    return total


def test_user_keys_of_orders_and_events_share_the_player_slot() -> None:
    """Order hashes and applied-event markers carry the player's hash tag, like every other player key."""
    keys = UserKeys(PROJECT, "a}b")
    assert keys.order("1").startswith(f"ent:{keys.tag}:")
    assert keys.applied_event("e").startswith(f"ent:{keys.tag}:")


# Configuration.


def test_catalog_toml_and_json_files(tmp_path: Path) -> None:
    """The catalog reads TOML or JSON: kinds (Xsolla's names too) and periods in several notations."""
    toml = tmp_path / "catalog.toml"
    toml.write_text(
        "[items.vip_pass]\nkind = 'time_limited'\nperiod = 'P30D'\n"
        "[items.booster]\nkind = 'non_renewing_subscription'\nperiod = 3600\n"
        "[items.sword]\nkind = 'non_consumable'\n"
        "[items.gold]\nkind = 'consumable'\n"
    )
    catalog = Catalog.load(toml)
    assert catalog.lookup("vip_pass") == CatalogItem(TIME_LIMITED, 30 * DAY_MS)
    assert catalog.lookup("booster") == CatalogItem(TIME_LIMITED, 3_600_000)
    assert catalog.lookup("sword") == CatalogItem(PERMANENT)
    assert catalog.lookup("gold") == CatalogItem(CONSUMABLE)
    assert catalog.lookup("other") is None
    as_json = tmp_path / "catalog.json"
    as_json.write_text(json.dumps({"items": {"pass": {"kind": "time_limited", "period": "12h"}}}))
    assert Catalog.load(as_json).lookup("pass") == CatalogItem(TIME_LIMITED, 12 * 3_600_000)


@pytest.mark.parametrize(
    ("period", "months"), [("1mo", 1), ("3 months", 3), ("P1M", 1), ("1y", 12), ("2 years", 24), ("P1Y6M", 18)]
)
def test_catalog_calendar_periods(period: str, months: int) -> None:
    """Months and years are calendar periods, kept as a number of months rather than a length."""
    catalog = Catalog.from_mapping({"items": {"pass": {"kind": "time_limited", "period": period}}})
    assert catalog.lookup("pass") == CatalogItem(TIME_LIMITED, 0, months)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[items.vip]\nkind = 'time_limited'\n", "items.vip: a time_limited item needs a period"),
        ("[items.vip]\nkind = 'time_limited'\nperiod = 'P1M2D'\n", "in months/years or in fixed units, not both"),
        ("[items.vip]\nkind = 'time_limited'\nperiod = '1201mo'\n", "at most 36,500 days"),
        ("[items.vip]\nkind = 'time_limited'\nperiod = '-3d'\n", "items.vip: period must be"),
        ("[items.gold]\nkind = 'consumable'\nperiod = '1d'\n", "only time_limited items take a period"),
        ("[items.gold]\nkind = 'coins'\n", "items.gold: kind must be consumable, permanent or time_limited"),
        ("[item.gold]\nkind = 'consumable'\n", "unknown top-level keys ['item']"),
        ("items = [", "not valid TOML"),
    ],
)
def test_catalog_errors_name_the_sku_and_the_problem(tmp_path: Path, text: str, message: str) -> None:
    """An invalid catalog stops the service at start with a message naming the sku and what is wrong."""
    path = tmp_path / "catalog.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        Settings.from_env({"ENTITLEMENTS_CATALOG_FILE": str(path)})


def test_consumer_settings_from_env(tmp_path: Path) -> None:
    """The consumer's settings come from ENTITLEMENTS_* variables with documented defaults."""
    defaults = Settings.from_env({})
    assert defaults.consumer == ConsumerSettings()
    assert (defaults.event_partitions, defaults.local_catalogs) == (1, {})
    assert (defaults.consumer.claim_idle_s, defaults.consumer.max_deliveries) == (30.0, 5)
    path = tmp_path / "c.toml"
    path.write_text("[items.gold]\nkind = 'consumable'\n")
    env: dict[str, Any] = {
        "ENTITLEMENTS_CATALOG_FILE": str(path),
        "ENTITLEMENTS_EVENT_PARTITIONS": "8",
        "ENTITLEMENTS_CONSUMER_ENABLED": "false",
        "ENTITLEMENTS_CONSUMER_BATCH": "10",
        "ENTITLEMENTS_CONSUMER_BLOCK_MS": "250",
        "ENTITLEMENTS_CONSUMER_CLAIM_IDLE_S": "5",
        "ENTITLEMENTS_CONSUMER_MAX_DELIVERIES": "2",
        "ENTITLEMENTS_EVENT_RETENTION_DAYS": "0",
    }
    custom = Settings.from_env(env)
    assert custom.consumer == ConsumerSettings(
        enabled=False, batch=10, block_ms=250, claim_idle_s=5.0, max_deliveries=2, retention_days=0.0
    )
    assert (custom.event_partitions, len(custom.local_catalogs[0])) == (8, 1)
    for name, value in [("ENTITLEMENTS_CONSUMER_BLOCK_MS", "0"), ("ENTITLEMENTS_CONSUMER_MAX_DELIVERIES", "x")]:
        with pytest.raises(ConfigError, match=name):
            Settings.from_env({name: value})
    with pytest.raises(ConfigError, match="cannot read"):
        Settings.from_env({"ENTITLEMENTS_CATALOG_FILE": str(tmp_path / "missing.toml")})


async def test_malformed_entry_is_listed_with_its_error(
    consuming: Service, redis_client: aioredis.Redis, redis_server: StoreUnderTest
) -> None:
    """An entry whose event field is not a WebhookEvent is dead-lettered; the operator's list shows why."""
    import io

    from server.__main__ import dead_letters_command

    await xadd_raw(redis_client, "player-1", {"event": b"\xff\xfe not protobuf", "raw": b"{}", "type": "?"})
    await drained(redis_client)
    settings = Settings(**redis_server.settings, event_partitions=2)
    out = io.StringIO()
    assert await dead_letters_command(settings, PROJECT, "list", None, out=out) == 0
    (row,) = [json.loads(line) for line in out.getvalue().splitlines()]
    assert row["error"].startswith("InvalidEvent: the `event` field is not a serialized WebhookEvent")
    assert (row["type"], row["deliveries"]) == ("?", 3)
    assert sample(consuming, "entitlements_dead_letters_total", type="invalid") == 1
    out = io.StringIO()
    assert await dead_letters_command(settings, PROJECT, "discard", None, out=out) == 0
    assert json.loads(out.getvalue()) == {"discarded": 1, "project_id": PROJECT}
    assert await dead_letters(redis_client) == []


async def test_webhook_through_the_gateway_is_granted_once(
    consuming: Service, client: AsyncEntitlementsClient, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """End to end: Xsolla's order_paid (the sandbox capture, paid for real), posted twice to the gateway, is granted
    once."""
    import aiohttp

    from providers.xsolla import WebhookSettings
    from tests.helpers.gateway import post, running_gateway
    from webhook_gateway import GatewaySettings

    capture = json.loads((Path(__file__).parent / "fixtures" / "xsolla" / "order_paid_combined.json").read_bytes())
    capture["order"]["mode"] = "default"  # a live payment: sandbox orders follow the sandbox policy (test_sandbox)
    del capture["billing"]["transaction"]["dry_run"]
    body = json.dumps(capture).encode()
    secret = "e2e-secret-0123456789"
    settings = GatewaySettings(port=0, metrics_port=None, **redis_server.settings, event_partitions=2)
    async with (
        running_gateway(settings, WebhookSettings(default_secret=secret)) as gateway,
        aiohttp.ClientSession() as http,
    ):
        for _ in range(2):
            assert (await post(http, gateway.url, body, secret=secret)).status == 204
    await drained(redis_client)
    user = "a1b2c3d4-0000-4000-8000-019fb6caa51e"
    assert await quantity(client, user, "artifact_centaurs_axe") == 1
    state = await read_order_state(redis_client, (PROJECT, user, "689810880"))
    assert state is not None
    assert (state.status, state.entitlements_granted) == ("paid", True)
