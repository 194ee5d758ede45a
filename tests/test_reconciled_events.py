"""Orders reconciled from the provider's own records: the events they become, how the consumer applies them, and
the order index that says whose each order is."""

from __future__ import annotations

import pytest
import redis.asyncio as aioredis
import structlog

from core.order_sources import ReportedStatus
from core.reconciliation import ProviderOrder, ProviderOrderItem
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import events_pb2 as ev
from server.app import Service
from server.errors import SkuNotInCatalog
from server.reconcile import AUTHORITATIVE, CLAIM, OrderIndex, order_event, order_lines
from server.status_channel import RECONCILIATION_SOURCE, read_order_state
from tests.helpers.events import consumer_settings, drained, event_log, store_of
from tests.helpers.events import order_event as webhook_event
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually

PAID = ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid")
BUNDLES = {"starter_pack": (("gold", 50), ("sword", 1))}


def provider_order(order_id: str, *items: ProviderOrderItem, sandbox: bool = False) -> ProviderOrder:
    return ProviderOrder(PROJECT, order_id, PAID, items=items, sandbox=sandbox, currency="USD", amount="4.99")


def reconciled(order: ProviderOrder, user: str, *, canceled: bool = False, origin: int = 2) -> ev.WebhookEvent:
    return order_event(
        "xsolla", order, user, BUNDLES, origin=origin, paid_at_ms=1_000, received_at_ms=2_000, canceled=canceled
    )


def test_bundles_are_expanded_through_the_catalog_typed_or_not() -> None:
    """A bundle (typed by the provider, or untyped but known to the catalog) becomes its line plus its contents times
    its quantity, as a webhook lists them."""
    for item_type in ("bundle", ""):
        order = provider_order("1", ProviderOrderItem("starter_pack", 2, item_type), ProviderOrderItem("gold", 5))
        lines = [(line.sku, line.type, line.quantity, line.is_bundle_content) for line in order_lines(order, BUNDLES)]
        assert lines == [
            ("starter_pack", "bundle", 2, False),
            ("gold", "", 100, True),
            ("sword", "", 2, True),
            ("gold", "", 5, False),
        ]


def test_a_bundle_the_catalog_does_not_know_is_never_guessed() -> None:
    """An item the provider types as a bundle that the catalog cannot expand is SkuNotInCatalog."""
    with pytest.raises(SkuNotInCatalog):
        order_lines(provider_order("1", ProviderOrderItem("mystery_box", 1, "bundle")), BUNDLES)


def test_reconciled_event_carries_its_origin_ids_and_dates() -> None:
    """The event names the order, the player, its origin and when the payment was known; its id is not the
    webhook's, and a reconciled event needs a player and a reconciliation origin."""
    event = reconciled(provider_order("77", ProviderOrderItem("gold", 5), sandbox=True), "player-1", origin=1)
    assert event.event_id == f"xsolla:{PROJECT}:order:77:paid:reconciled"
    assert (event.type, event.origin, event.user_id, event.sandbox) == (
        ev.EVENT_TYPE_ORDER_PAID,
        ev.EVENT_ORIGIN_TRACKER,
        "player-1",
        True,
    )
    assert (event.paid_at.ToMilliseconds(), event.received_at.ToMilliseconds()) == (1_000, 2_000)
    canceled = reconciled(provider_order("77"), "player-1", canceled=True)
    assert canceled.event_id.endswith(":canceled:reconciled")
    assert canceled.type == ev.EVENT_TYPE_ORDER_CANCELED
    with pytest.raises(ValueError, match="player"):
        reconciled(provider_order("77"), "")
    with pytest.raises(ValueError, match="origin"):
        reconciled(provider_order("77"), "player-1", origin=0)


@pytest.fixture
async def consuming(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    return await service_factory(redis_url=redis_server.url, **consumer_settings())


async def quantity(client: AsyncEntitlementsClient, user: str, sku: str) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


async def test_reconciled_order_is_granted_once_then_the_late_webhook_replays_and_a_cancel_undoes_it(
    consuming: Service, client_factory: ClientFactory, redis_client: aioredis.Redis
) -> None:
    """A reconciled order_paid grants through the consumer with the actor `reconciler`; the late webhook of the same
    order changes nothing; a cancel then undoes exactly what the reconciliation granted."""
    client = await client_factory(consuming)
    log = event_log(redis_client)
    order = provider_order("5001", ProviderOrderItem("starter_pack", 1, "bundle"), ProviderOrderItem("gold", 5))
    await log.append(reconciled(order, "player-1"), b"")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 55
    assert await quantity(client, "player-1", "sword") == 1
    ledger = await store_of(consuming).ledger(PROJECT, "player-1")
    assert {entry.fields["actor"] for entry in ledger} == {"reconciler"}
    state = await read_order_state(redis_client, (PROJECT, "player-1", "5001"))
    assert state is not None
    assert state.source == RECONCILIATION_SOURCE
    assert state.entitlements_granted
    assert sample(consuming, "entitlements_payment_to_grant_seconds_count", source="sweeper") == 1

    # The webhook arrives late, with its own event id and lines: stored, consumed, replayed.
    late = webhook_event(
        "paid", "5001", "player-1", [("starter_pack", 1, "bundle"), ("gold", 50), ("sword", 1), ("gold", 5)]
    )
    await log.append(late, b"{}")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 55
    assert sample(consuming, "entitlements_events_total", type="order_paid", result="replayed") == 1
    differ = {"project": str(PROJECT), "source": "sweeper", "result": "lines_differ"}
    assert sample(consuming, "entitlements_reconcile_orders_total", **differ) == 0  # the same lines

    await log.append(webhook_event("canceled", "5001", "player-1"), b"{}")
    await drained(redis_client)
    assert await quantity(client, "player-1", "gold") == 0
    assert await quantity(client, "player-1", "sword") == 0


async def test_the_consumer_records_whose_order_it_is_and_that_it_was_applied(
    consuming: Service, redis_client: aioredis.Redis
) -> None:
    """A webhook's player is authoritative, a reconciled event's a claim; applied orders are listed by time."""
    log = event_log(redis_client)
    await log.append(webhook_event("paid", "6001", "player-1", [("gold", 1)]), b"{}")
    await log.append(reconciled(provider_order("6002", ProviderOrderItem("gold", 1)), "player-2"), b"")
    await drained(redis_client)
    index = OrderIndex(redis_client, timeout_s=2.0)
    owners = await index.owners(PROJECT, ["6001", "6002", "6003"])
    assert (owners["6001"].user_id, owners["6001"].authoritative) == ("player-1", True)
    assert (owners["6002"].user_id, owners["6002"].authoritative) == ("player-2", False)
    assert not owners["6003"].known
    applied = await index.applied_between(PROJECT, 0, 2**62)
    assert sorted(order for order, _ in applied) == ["6001", "6002"]


async def test_the_index_never_guesses_between_disagreeing_records(redis_client: aioredis.Redis) -> None:
    """A claim fills a gap only; another claim makes a conflict; an authoritative record settles claims but not
    another authoritative record; trimming forgets old orders."""
    index = OrderIndex(redis_client, timeout_s=2.0)

    async def record(order: str, user: str, authority: str, at: int = 10) -> tuple[str, bool, bool]:
        owner = await index.record(PROJECT, order, user, authority=authority, applied=False, now_ms=at)
        return owner.user_id, owner.authoritative, owner.conflict

    assert await record("1", "ann", CLAIM) == ("ann", False, False)
    assert await record("1", "ann", CLAIM) == ("ann", False, False)
    assert await record("1", "bob", CLAIM) == ("", False, True)
    assert await record("1", "bob", AUTHORITATIVE) == ("bob", True, False)
    assert await record("1", "ann", CLAIM) == ("bob", True, False)
    assert await record("1", "ann", AUTHORITATIVE) == ("", False, True)
    assert await record("1", "bob", AUTHORITATIVE) == ("", False, True)
    assert await record("2", "cid", CLAIM, at=1_000) == ("cid", False, False)
    assert await index.trim(PROJECT, before_ms=500) == 1
    owners = await index.owners(PROJECT, ["1", "2"])
    assert not owners["1"].known
    assert not owners["1"].conflict
    assert owners["2"].user_id == "cid"


async def test_a_late_webhook_listing_lines_the_reconciliation_did_not_apply_is_reported(
    consuming: Service, client_factory: ClientFactory, redis_client: aioredis.Redis
) -> None:
    """The provider's record left a line out (a bonus item): the late webhook grants nothing more (the order is
    paid), and the difference is counted and logged for an operator."""
    client = await client_factory(consuming)
    log = event_log(redis_client)
    await log.append(reconciled(provider_order("5002", ProviderOrderItem("gold", 5)), "player-2", origin=1), b"")
    await drained(redis_client)
    differ = {"project": str(PROJECT), "source": "tracker", "result": "lines_differ"}
    with structlog.testing.capture_logs() as logs:
        await log.append(webhook_event("paid", "5002", "player-2", [("gold", 5), ("sword", 1)]), b"{}")
        await drained(redis_client)
        # The consumer counts and logs a delivery just after its XACK, which `drained` may see first.
        await eventually(
            lambda: sample(consuming, "entitlements_reconcile_orders_total", **differ) >= 1,
            what="the difference to be counted",
        )
    assert await quantity(client, "player-2", "gold") == 5
    assert await quantity(client, "player-2", "sword") == 0
    assert sample(consuming, "entitlements_reconcile_orders_total", **differ) == 1
    (line,) = [entry for entry in logs if entry["event"] == "order_lines_differ"]
    assert "'sword': 1" in line["difference"]
