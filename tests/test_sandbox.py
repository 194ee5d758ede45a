"""Sandbox orders and dry-run payments follow their project's sandbox policy: the real gateway takes Xsolla's
sandbox capture, the real consumer applies it on a real Valkey, and the results are read back through the client,
the ledger, the order hash, the order-status channel and the metrics."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from types import MappingProxyType

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.projects import SANDBOX_GRANT, Project, Projects
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import events_pb2 as ev
from providers.xsolla import WebhookSettings
from server.config import Settings
from server.errors import ConfigError
from server.status_channel import read_order_state
from tests.helpers.events import (
    PARTITIONS,
    consumer_settings,
    drained,
    event_log,
    order_event,
    store_of,
    transaction_event,
)
from tests.helpers.gateway import fixture, post, running_gateway
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from webhook_gateway import GatewaySettings
from webhook_gateway.app import Gateway

SECRET = "sandbox-secret-0123456789"
# The capture's player and order (tests/fixtures/xsolla/order_paid_combined.json: order.mode "sandbox", dry_run 1).
PLAYER = "a1b2c3d4-0000-4000-8000-019fb6caa51e"
ORDER = "689810880"
SKU = "artifact_centaurs_axe"


@pytest.fixture
async def gateway(redis_server: StoreUnderTest) -> AsyncIterator[Gateway]:
    """The real gateway on the test's Valkey, with one secret for every project."""
    settings = GatewaySettings(port=0, metrics_port=None, **redis_server.settings, event_partitions=PARTITIONS)
    async with running_gateway(settings, WebhookSettings(default_secret=SECRET)) as started:
        yield started


def live_capture() -> bytes:
    """The sandbox capture made a live payment: `order.mode` "default" and no `dry_run`."""
    body = json.loads(fixture("order_paid_combined"))
    body["order"]["mode"] = "default"
    del body["billing"]["transaction"]["dry_run"]
    return json.dumps(body).encode()


async def quantity(client: AsyncEntitlementsClient, user: str, sku: str) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


async def test_ignored_sandbox_order_grants_nothing_and_is_recorded(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    gateway: Gateway,
    http: aiohttp.ClientSession,
) -> None:
    """By default a sandbox order_paid grants nothing; the ledger lists its lines, the order hash and the published
    state say paid and not granted, the metric counts it; its order_canceled then has nothing to undo."""
    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    client = await client_factory(service)
    for _ in range(2):  # a redelivery counts once
        assert (await post(http, gateway.url, fixture("order_paid_combined"), secret=SECRET)).status == 204
    await drained(redis_client)

    assert await quantity(client, PLAYER, SKU) == 0
    order = await store_of(service).order(PROJECT, PLAYER, ORDER)
    assert order is not None
    assert (order["status"], order["granted"], order["withheld"], order["sandbox"], order["grants"]) == (
        "paid",
        "0",
        "sandbox",
        "1",
        "[]",
    )
    (entry,) = await store_of(service).ledger(PROJECT, PLAYER)
    assert (entry.fields["op"], entry.fields["withheld"], entry.fields["order_id"]) == ("order_paid", "sandbox", ORDER)
    assert "sandbox order, nothing granted" in entry.fields["reason"]
    assert [line["sku"] for line in json.loads(entry.fields["lines"])] == [SKU]
    state = await read_order_state(redis_client, (PROJECT, PLAYER, ORDER))
    assert state is not None
    assert (state.status, state.entitlements_granted, state.withheld) == ("paid", False, "sandbox")
    assert sample(service, "entitlements_sandbox_events_total", type="order_paid", policy="ignore") == 1
    assert sample(service, "entitlements_events_total", type="order_paid", result="withheld") == 1
    assert sample(service, "entitlements_grants_applied_total") == 0

    cancel = order_event("canceled", ORDER, PLAYER, [(SKU, 1)])
    cancel.sandbox = True
    await event_log(redis_client).append(cancel, b"{}")
    await drained(redis_client)
    order = await store_of(service).order(PROJECT, PLAYER, ORDER)
    assert order is not None
    assert (order["status"], order["granted"], order["withheld"]) == ("canceled", "0", "sandbox")
    newest = (await store_of(service).ledger(PROJECT, PLAYER))[0]
    assert (newest.fields["op"], newest.fields["idempotency_key"]) == ("order_canceled", cancel.event_id)
    assert "nothing to undo" in newest.fields["reason"]
    assert sample(service, "entitlements_sandbox_events_total", type="order_canceled", policy="ignore") == 1
    assert sample(service, "entitlements_grants_undone_total") == 0


async def test_a_project_that_grants_sandbox_orders_grants_them_once(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    gateway: Gateway,
    http: aiohttp.ClientSession,
) -> None:
    """With the policy "grant" a sandbox order_paid is granted as a live one (once, though posted twice)."""
    projects = Projects.single(PROJECT, template=Project(0, sandbox=SANDBOX_GRANT))
    service = await service_factory(redis_url=redis_server.url, **consumer_settings(projects))
    client = await client_factory(service)
    for _ in range(2):
        assert (await post(http, gateway.url, fixture("order_paid_combined"), secret=SECRET)).status == 204
    await drained(redis_client)
    assert await quantity(client, PLAYER, SKU) == 1
    state = await read_order_state(redis_client, (PROJECT, PLAYER, ORDER))
    assert state is not None
    assert (state.status, state.entitlements_granted, state.withheld) == ("paid", True, "")
    assert sample(service, "entitlements_sandbox_events_total", type="order_paid", policy="grant") == 1


async def test_a_live_order_is_granted_whatever_the_policy(
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    gateway: Gateway,
    http: aiohttp.ClientSession,
) -> None:
    """In a project that ignores sandbox orders, the same order paid for real is granted and counts as no test."""
    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    client = await client_factory(service)
    assert (await post(http, gateway.url, live_capture(), secret=SECRET)).status == 204
    await drained(redis_client)
    assert await quantity(client, PLAYER, SKU) == 1
    order = await store_of(service).order(PROJECT, PLAYER, ORDER)
    assert order is not None
    assert (order["granted"], order["sandbox"], "withheld" in order) == ("1", "0", False)
    assert sample(service, "entitlements_sandbox_events_total", type="order_paid", policy="ignore") == 0


async def test_each_project_has_its_own_policy(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
) -> None:
    """The policy is the event's project's: a test project grants its sandbox orders, the live project does not."""
    live, test = 308077, 310000
    projects = Projects(
        MappingProxyType({live: Project(live), test: Project(test, sandbox=SANDBOX_GRANT)}), live, listed=True
    )
    service = await service_factory(redis_url=redis_server.url, **consumer_settings(projects))
    for project, player in ((live, "player-live"), (test, "player-test")):
        event = order_event("paid", f"{project}-1", player, [("gold", 10)], event_id=f"xsolla:{project}:order:1:paid")
        event.project_id, event.sandbox = project, True
        await event_log(redis_client).append(event, b"{}")
    await drained(redis_client, projects=(live, test))
    assert await store_of(service).get(live, "player-live", "gold") is None
    granted = await store_of(service).get(test, "player-test", "gold")
    assert granted is not None
    assert granted.quantity == 10
    assert sample(service, "entitlements_sandbox_events_total", type="order_paid", policy="ignore") == 1
    assert sample(service, "entitlements_sandbox_events_total", type="order_paid", policy="grant") == 1


async def test_dry_run_payments_are_recorded_and_counted(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """A dry-run payment and refund are on the ledger as any (marked sandbox) and counted as test payments."""
    service = await service_factory(redis_url=redis_server.url, **consumer_settings())
    for event_type in (ev.EVENT_TYPE_PAYMENT, ev.EVENT_TYPE_REFUND):
        event = transaction_event(event_type, "player-1", "2103276197")
        event.sandbox = True
        await event_log(redis_client).append(event, b"{}")
    await drained(redis_client)
    ledger = await store_of(service).ledger(PROJECT, "player-1")
    assert sorted((e.fields["op"], e.fields["sandbox"]) for e in ledger) == [("payment", "1"), ("refund", "1")]
    assert sample(service, "entitlements_sandbox_events_total", type="payment", policy="ignore") == 1
    assert sample(service, "entitlements_sandbox_events_total", type="refund", policy="ignore") == 1


def test_the_sandbox_policy_of_the_single_project_comes_from_the_environment() -> None:
    """ENTITLEMENTS_SANDBOX_POLICY sets the policy of projects served without a projects file; a bad value is named."""
    assert Settings.from_env({}).projects.get(308077) == Project(308077)
    granting = Settings.from_env({"ENTITLEMENTS_SANDBOX_POLICY": "grant"}).projects.get(308077)
    assert granting is not None
    assert granting.sandbox == SANDBOX_GRANT
    with pytest.raises(ConfigError, match="ENTITLEMENTS_SANDBOX_POLICY must be ignore or grant, not 'maybe'"):
        Settings.from_env({"ENTITLEMENTS_SANDBOX_POLICY": "maybe"})
