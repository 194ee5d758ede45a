"""Reconciliation from the order tracker, end to end: the real service (its consumer, trackers and reconciler) on a
real Valkey, the real gateway, and the Xsolla simulator over real sockets (WebSocket, Get order, webhooks, the admin
catalog). The simulator drops an order's `order_paid` webhook (lost, delivered late on demand); the grace is
shortened."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from types import MappingProxyType
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.projects import CATALOG_PROVIDER, Project, Projects
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla import CatalogSettings, OrderSettings, WebhookSettings
from server.app import Service
from server.reconcile import OrderIndex
from server.reconcile.settings import ReconcileSettings
from server.tracking.settings import TrackingSettings
from tests.helpers.events import FAST, PARTITIONS, store_of
from tests.helpers.gateway import running_gateway
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from webhook_gateway import GatewaySettings
from xsolla_simulator import XsollaSimulator, admin_bundle, admin_item
from xsolla_simulator.testing import simulator_factory_context

SECRET = "tracker-reconciliation-webhook-secret"
API_KEY = "tracker-reconciliation-admin-key"
PLAYER = "player-1"
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency"}, {"sku": "sword", "quantity": 1}]
CATALOG_ITEMS = [admin_item("gold", consumable=True), admin_item("sword")]
STARTER = admin_bundle("starter_pack", [("gold", 50), ("sword", 1)])

PAID, DONE = pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_DONE
WEBSOCKET, RECONCILIATION = pb.ORDER_STATUS_SOURCE_WEBSOCKET, pb.ORDER_STATUS_SOURCE_RECONCILIATION
WEBHOOK = pb.ORDER_STATUS_SOURCE_WEBHOOK

# The socket is never given up for silence, so Get order is asked only by the reconciliation.
TRACKING = TrackingSettings(ws_silence_s=60.0, poll_interval_s=0.1, max_wait_s=60.0, grant_wait_s=0.2)
# The sweeper off: the tracker's reconciliation applies the orders itself (with it on, a project whose sandbox
# policy grants nothing leaves them to the sweeper: test_a_project_swept_leaves_the_order_to_a_sweep_asked_for_now).
GRACE = ReconcileSettings(grace_s=0.5, sweeper_enabled=False)

Update = tuple[int, int, bool]


def summary(updates: list[pb.OrderStatusUpdate]) -> list[Update]:
    return [(u.status, u.source, u.entitlements_granted) for u in updates]


@dataclass
class Rig:
    """The simulator (its webhooks to the gateway, its admin catalog), and services wired to both."""

    sim: XsollaSimulator
    redis_server: StoreUnderTest
    service_factory: ServiceFactory
    client_factory: ClientFactory

    async def service(self, reconcile: ReconcileSettings = GRACE, **overrides: Any) -> Service:
        """A consuming service whose project reads the simulator's catalog and follows orders at the simulator."""
        project = Project(PROJECT, catalog_source=CATALOG_PROVIDER, provider=MappingProxyType({"api_key": API_KEY}))
        xsolla = OrderSettings(
            project_id=PROJECT,
            store_api=self.sim.store_api_url,
            ws_url=self.sim.ws_url,
            ws_connect_timeout_s=2.0,
            http_timeout_s=2.0,
        )
        settings: dict[str, Any] = {
            "redis_url": self.redis_server.url,
            "event_partitions": PARTITIONS,
            "consumer": FAST,
            "projects": Projects.single(PROJECT, project),
            "tracking": TRACKING,
            "reconcile": reconcile,
            "xsolla": xsolla,
            "xsolla_catalog": CatalogSettings(admin_api=self.sim.store_api_url, http_timeout_s=2.0),
        }
        return await self.service_factory(**(settings | overrides))

    async def follow(self, client: AsyncEntitlementsClient, order_id: int) -> Reader:
        """A stream on the order with the player's token, once the tracker's socket is connected."""
        before = self.sim.websocket_connects_total
        reader = Reader(client.get_order_status(str(order_id), PLAYER, token=self.sim.issue_token(PLAYER)))
        await eventually(lambda: self.sim.websocket_connects_total > before, what="the tracker's socket")
        return reader


class Reader:
    """Reads a stream in the background."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.updates: list[pb.OrderStatusUpdate] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for update in self.stream:
            self.updates.append(update)

    def granted(self) -> bool:
        return any(update.entitlements_granted for update in self.updates)

    async def end(self) -> list[Update]:
        async with asyncio.timeout(30):
            await self.task
        return summary(self.updates)


@pytest.fixture
async def rig(
    redis_server: StoreUnderTest, service_factory: ServiceFactory, client_factory: ClientFactory
) -> AsyncIterator[Rig]:
    """The simulator posting webhooks to a real gateway on the test's Valkey, its catalog with a bundle."""
    settings = GatewaySettings(port=0, metrics_port=None, **redis_server.settings, event_partitions=PARTITIONS)
    async with (
        running_gateway(settings, WebhookSettings(default_secret=SECRET)) as gateway,
        simulator_factory_context() as simulators,
    ):
        sim = await simulators(project_id=PROJECT, webhook_url=gateway.url, webhook_secret=SECRET, time_scale=0.001)
        sim.catalog.set_project(PROJECT, api_key=API_KEY, items=CATALOG_ITEMS, bundles=[STARTER])
        yield Rig(sim, redis_server, service_factory, client_factory)


async def quantity(client: AsyncEntitlementsClient, sku: str, user: str = PLAYER) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


def reconciled(service: Service, result: str) -> float:
    return sample(service, "entitlements_reconcile_orders_total", project=str(PROJECT), source="tracker", result=result)


async def test_a_lost_webhook_is_granted_from_the_tracker_and_the_late_one_changes_nothing(
    rig: Rig, redis_client: aioredis.Redis
) -> None:
    """Paid and done at Xsolla with the webhook lost: after the grace the items are granted from Get order with the
    actor `reconciler`, the stream (kept open past grant_wait_s) says so with the source RECONCILIATION; the late
    webhook replays without doubling anything, and the cancel undoes exactly what was granted."""
    service = await rig.service()
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    rig.sim.drop_webhooks(types=("order_paid",))
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    assert await reader.end() == [(PAID, WEBSOCKET, False), (DONE, WEBSOCKET, False), (DONE, RECONCILIATION, True)]
    assert (await quantity(client, "gold"), await quantity(client, "sword")) == (100, 1)
    ledger = await store_of(service).ledger(PROJECT, PLAYER)
    assert {entry.fields["actor"] for entry in ledger} == {"reconciler"}
    assert reconciled(service, "applied") == 1
    assert rig.sim.get_order_requests(order.order_id) == 1
    assert sample(service, "entitlements_payment_to_grant_seconds_count", source="tracker") == 1
    owner = (await OrderIndex(redis_client, timeout_s=2.0).owners(PROJECT, [str(order.order_id)]))[str(order.order_id)]
    assert (owner.user_id, owner.authoritative) == (PLAYER, False)
    # A stream opened later reads the stored state, which says reconciliation granted it.
    later = [u async for u in client.get_order_status(str(order.order_id), PLAYER)]
    assert summary(later) == [(DONE, RECONCILIATION, True)]

    rig.sim.stop_dropping()
    (delivery,) = await rig.sim.deliver_dropped()
    assert (delivery.type, delivery.status) == ("order_paid", 204)
    replayed = {"type": "order_paid", "result": "replayed"}
    await eventually(lambda: sample(service, "entitlements_events_total", **replayed) == 1, what="the replay")
    assert (await quantity(client, "gold"), await quantity(client, "sword")) == (100, 1)

    await rig.sim.set_status(order.order_id, "canceled")
    await eventually(
        lambda: sample(service, "entitlements_events_total", type="order_canceled", result="applied") == 1,
        what="the cancel",
    )
    assert (await quantity(client, "gold"), await quantity(client, "sword")) == (0, 0)


async def test_the_reconciliation_outlives_a_stream_closed_right_after_paid(rig: Rig) -> None:
    """The launcher closes its stream as soon as it sees PAID; the tracker stops, and the order is still granted."""
    service = await rig.service()
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    rig.sim.drop_webhooks(types=("order_paid",))
    # Get order fails until the tracker is gone: the grant cannot come while it still follows the order.
    rig.sim.fail_get_order(times=None, status=503, order_id=order.order_id)
    stream = client.get_order_status(str(order.order_id), PLAYER, token=rig.sim.issue_token(PLAYER))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the tracker's socket")
    await rig.sim.set_status(order.order_id, "paid")
    first = await anext(stream)
    assert (first.status, first.source) == (PAID, WEBSOCKET)
    await stream.aclose()
    tracking = service.tracking
    assert tracking is not None
    await eventually(lambda: len(tracking) == 0, what="the tracker to stop")
    await eventually(lambda: rig.sim.get_order_requests(order.order_id) >= 1, what="the reconciliation's Get order")
    rig.sim.clear_get_order_faults()
    await eventually(lambda: reconciled(service, "applied") == 1, timeout_s=20, what="the reconciliation")
    await eventually(lambda: granted(client), what="the grant")
    assert (await quantity(client, "gold"), await quantity(client, "sword")) == (100, 1)


async def granted(client: AsyncEntitlementsClient) -> bool:
    return await quantity(client, "gold") == 100


async def test_a_webhook_within_the_grace_leaves_nothing_to_reconcile(rig: Rig) -> None:
    """The webhook is applied before the grace ends: the reconciliation finds it (`already`) and never asks Get
    order; the order is granted once, by the webhook."""
    service = await rig.service(reconcile=replace(GRACE, grace_s=1.0))
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    updates = await reader.end()
    assert updates[-1] == (DONE, WEBHOOK, True)
    await eventually(lambda: reconciled(service, "already") == 1, what="the reconciliation to find the webhook's grant")
    assert rig.sim.get_order_requests(order.order_id) == 0
    assert reconciled(service, "applied") == 0
    assert await quantity(client, "gold") == 100
    ledger = await store_of(service).ledger(PROJECT, PLAYER)
    assert {entry.fields["actor"] for entry in ledger} == {"xsolla-webhook"}


async def test_get_order_failing_is_retried_and_a_bundle_is_granted_as_its_contents(rig: Rig) -> None:
    """Get order answers 503 twice, then the order (a bundle, untyped as Get order lists it): retried with backoff,
    then granted as the bundle's contents from the project's catalog."""
    service = await rig.service()
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, [{"sku": "starter_pack", "quantity": 2, "type": "bundle"}])
    rig.sim.drop_webhooks(types=("order_paid",))
    rig.sim.fail_get_order(times=2, status=503, order_id=order.order_id)
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await eventually(reader.granted, timeout_s=20, what="the reconciliation's grant")
    await rig.sim.set_status(order.order_id, "done")
    assert await reader.end() == [(PAID, WEBSOCKET, False), (PAID, RECONCILIATION, True), (DONE, WEBSOCKET, True)]
    assert rig.sim.get_order_requests(order.order_id) == 3
    assert (await quantity(client, "gold"), await quantity(client, "sword")) == (100, 1)  # the sword is permanent
    assert not (await client.check_entitlement(PLAYER, "starter_pack")).HasField("entitlement")


async def test_a_bundle_new_to_the_catalog_is_read_from_the_catalog_again(rig: Rig) -> None:
    """A bundle added to the store after the catalog was read: the reconciliation reads the catalog once more and
    grants the bundle's contents, not an unknown sku."""
    service = await rig.service()
    client = await rig.client_factory(service)
    catalogs = service.catalogs
    assert catalogs is not None

    async def read() -> bool:
        # The catalogs are read in the background once the service has started.
        return "starter_pack" in (await catalogs.catalog(PROJECT)).bundles

    await eventually(read, what="the catalog's first read")
    mega = admin_bundle("mega_pack", [("gold", 1000)])
    rig.sim.catalog.set_project(PROJECT, api_key=API_KEY, items=CATALOG_ITEMS, bundles=[STARTER, mega])
    order = rig.sim.create_order(PLAYER, [{"sku": "mega_pack", "quantity": 1, "type": "bundle"}])
    rig.sim.drop_webhooks(types=("order_paid",))
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    assert (await reader.end())[-1] == (DONE, RECONCILIATION, True)
    assert await quantity(client, "gold") == 1000


async def test_an_order_canceled_at_xsolla_within_the_grace_is_not_granted(rig: Rig) -> None:
    """Paid, then canceled at Xsolla before the grace ends, every webhook lost: Get order says canceled, nothing is
    granted and nothing is queued."""
    service = await rig.service(reconcile=replace(GRACE, grace_s=1.0))
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    rig.sim.drop_webhooks()
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "canceled")
    assert await reader.end() == [(PAID, WEBSOCKET, False), (pb.ORDER_STATUS_CANCELED, WEBSOCKET, False)]
    await eventually(lambda: reconciled(service, "examined") == 1, what="the reconciliation's Get order")
    assert rig.sim.get_order_requests(order.order_id) == 1
    assert reconciled(service, "applied") == 0
    assert await quantity(client, "gold") == 0
    assert sample(service, "entitlements_events_total", type="order_paid", result="applied") == 0


async def test_two_replicas_following_one_order_grant_it_once(rig: Rig) -> None:
    """Two replicas follow the order: only the holder of its lease follows it at Xsolla and reconciles it; the
    other's stream hears it all through the channel; the items are granted once."""
    first, second = await rig.service(), await rig.service()
    clients = [await rig.client_factory(first), await rig.client_factory(second)]
    order = rig.sim.create_order(PLAYER, ITEMS)
    rig.sim.drop_webhooks(types=("order_paid",))
    readers = [await rig.follow(clients[0], order.order_id)]
    readers.append(Reader(clients[1].get_order_status(str(order.order_id), PLAYER, token=rig.sim.issue_token(PLAYER))))
    await eventually(
        lambda: sample(second, "entitlements_order_following", via="channel") == 1, what="the second replica"
    )
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    for reader in readers:
        assert (await reader.end())[-1] == (DONE, RECONCILIATION, True)
    services = (first, second)
    await eventually(
        lambda: sum(reconciled(s, "applied") + reconciled(s, "already") for s in services) == 1,
        what="the reconciliation",
    )
    assert reconciled(first, "applied") == 1
    assert reconciled(second, "examined") + reconciled(second, "applied") + reconciled(second, "already") == 0
    assert rig.sim.websocket_connects_total == 1
    assert (await quantity(clients[0], "gold"), await quantity(clients[1], "sword")) == (100, 1)
    ledger = await store_of(first).ledger(PROJECT, PLAYER)
    assert [entry.fields["actor"] for entry in ledger].count("reconciler") == 2  # gold and sword, once each


async def test_turned_off_the_tracker_reconciles_nothing(rig: Rig, redis_client: aioredis.Redis) -> None:
    """ENTITLEMENTS_RECONCILE_TRACKER=false: the stream ends grant_wait_s after DONE, nothing is granted, Get order
    is not asked and no claim is recorded."""
    service = await rig.service(reconcile=replace(GRACE, tracker_enabled=False))
    assert service.reconciler is None
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    rig.sim.drop_webhooks(types=("order_paid",))
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    assert await reader.end() == [(PAID, WEBSOCKET, False), (DONE, WEBSOCKET, False)]
    assert rig.sim.get_order_requests(order.order_id) == 0
    assert await quantity(client, "gold") == 0
    owners = await OrderIndex(redis_client, timeout_s=2.0).owners(PROJECT, [str(order.order_id)])
    assert not owners[str(order.order_id)].known


@pytest.mark.parametrize("sandbox", [False, True], ids=["live", "sandbox"])
async def test_a_project_swept_leaves_the_order_to_a_sweep_asked_for_now(rig: Rig, sandbox: bool) -> None:
    """Get order cannot tell a sandbox order from a live one: in a project the sweeper covers, whose sandbox policy
    grants nothing, the tracker asks for a sweep at once after the grace; the sweep reads the order's mode, grants a
    live order (the stream says RECONCILIATION) and withholds a sandbox one."""
    swept = ReconcileSettings(grace_s=0.5, sweep_interval_s=3600.0, requests_per_s=50.0)
    service = await rig.service(swept, xsolla_catalog=CatalogSettings(admin_api=rig.sim.store_api_url))
    sweeper = service.sweeper
    assert sweeper is not None
    # The first sweep (due at start) is over before the order exists; the next is an hour away.
    await eventually(
        lambda: sample(service, "entitlements_reconcile_sweeps_total", project=str(PROJECT), result="ok") == 1,
        what="the first sweep",
    )
    client = await rig.client_factory(service)
    order = rig.sim.create_order(PLAYER, ITEMS, sandbox=sandbox)
    rig.sim.drop_webhooks(types=("order_paid",))
    reader = await rig.follow(client, order.order_id)
    await rig.sim.set_status(order.order_id, "paid")
    await rig.sim.set_status(order.order_id, "done")
    await eventually(lambda: reconciled(service, "deferred") == 1, what="the tracker to hand the order over")
    await eventually(
        lambda: sample(service, "entitlements_reconcile_sweeps_total", project=str(PROJECT), result="ok") == 2,
        what="the sweep asked for",
    )
    updates = await reader.end()
    if sandbox:
        assert (await quantity(client, "gold"), await quantity(client, "sword")) == (0, 0)
        assert updates[-1][0] == DONE
        assert not updates[-1][2]
        assert sample(service, "entitlements_events_total", type="order_paid", result="withheld") == 1
    else:
        assert (await quantity(client, "gold"), await quantity(client, "sword")) == (100, 1)
        assert updates[-1] == (DONE, RECONCILIATION, True)
    assert rig.sim.get_order_requests(order.order_id) == 0  # the sweeper's search, not Get order
    assert (
        sample(service, "entitlements_reconcile_orders_total", project=str(PROJECT), source="sweeper", result="applied")
        == 1
    )
