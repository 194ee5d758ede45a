"""The sweeper: orders paid at the provider that no webhook brought are applied, canceled ones undone, orders it
cannot settle reported; one replica at a time, resuming where a dead one stopped."""

from __future__ import annotations

import time
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis

from core.order_sources import ReportedStatus
from core.projects import Project
from core.reconciliation import ProviderOrder, ProviderOrderItem, SearchPage, SearchRateLimited
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from server.app import Service
from server.config import ReconcileSettings
from server.embedded import EmbeddedRedis
from tests.helpers.events import consumer_settings, drained, event_log, order_event, store_of
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.waiting import eventually

PAID = ReportedStatus(int(pb.ORDER_STATUS_PAID), "paid")
DONE = ReportedStatus(int(pb.ORDER_STATUS_DONE), "done")
CANCELED = ReportedStatus(int(pb.ORDER_STATUS_CANCELED), "canceled")
NEW = ReportedStatus(int(pb.ORDER_STATUS_NEW), "new")


class ScriptedSearch:
    """An order search over orders held in memory, paged as the provider pages (an OrderSearch)."""

    max_page_size = 10

    def __init__(self) -> None:
        self.orders: dict[str, ProviderOrder] = {}
        self.requests: list[tuple[int, float]] = []
        self.rate_limited: list[float] = []

    def configured(self, project: Project) -> bool:
        return True

    def add(self, order: ProviderOrder) -> None:
        self.orders[order.order_id] = order

    async def search(
        self, project: Project, created_from_ms: int, created_until_ms: int, *, offset: int, limit: int
    ) -> SearchPage:
        self.requests.append((offset, time.monotonic()))
        if self.rate_limited:
            raise SearchRateLimited("429", self.rate_limited.pop(0))
        matching = sorted(
            (o for o in self.orders.values() if created_from_ms <= o.created_at_ms <= created_until_ms),
            key=lambda o: (o.created_at_ms, o.order_id),
        )
        page = matching[offset : offset + limit]
        return SearchPage(tuple(page), offset + len(page) < len(matching), len(matching))

    async def close(self) -> None:
        pass


def paid(order_id: str, user: str = "", *items: ProviderOrderItem, status: ReportedStatus = PAID) -> ProviderOrder:
    return ProviderOrder(
        PROJECT,
        order_id,
        status,
        user_id=user,
        created_at_ms=int(time.time() * 1000) - 60_000,
        items=items or (ProviderOrderItem("gold", 10, "virtual_currency"),),
    )


def reconcile(**overrides: Any) -> ReconcileSettings:
    settings = ReconcileSettings(sweep_interval_s=1.0, requests_per_s=200.0, lease_s=1.0, overlap_s=0.0)
    return replace(settings, **overrides)


async def quantity(client: AsyncEntitlementsClient, user: str, sku: str) -> int:
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


async def sweeping(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, search: ScriptedSearch, **overrides: Any
) -> Service:
    return await service_factory(
        redis_url=redis_server.url, order_search=search, reconcile=reconcile(**overrides), **consumer_settings()
    )


async def test_paid_orders_without_webhooks_are_granted_once_and_canceled_ones_undone(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
) -> None:
    """Paid orders no webhook brought are granted by the sweep, exactly; late webhooks replay; cancels undo."""
    search = ScriptedSearch()
    for n in range(25):
        search.add(paid(f"{n}", f"player-{n % 5}"))
    service = await sweeping(service_factory, redis_server, search, overlap_s=600.0)
    client = await client_factory(service)
    await eventually(
        lambda: sample(service, "entitlements_reconcile_sweeps_total", project=str(PROJECT), result="ok") >= 1,
        what="a sweep",
    )
    await drained(redis_client)
    for user in range(5):
        assert await quantity(client, f"player-{user}", "gold") == 50
    log = event_log(redis_client)
    for n in range(25):
        await log.append(order_event("paid", f"{n}", f"player-{n % 5}", [("gold", 10, "virtual_currency")]), b"{}")
    await drained(redis_client)
    for user in range(5):
        assert await quantity(client, f"player-{user}", "gold") == 50
    for n in range(5):
        search.add(replace(search.orders[str(n)], status=CANCELED))
    await eventually(
        lambda: (
            sample(
                service, "entitlements_reconcile_orders_total", project=str(PROJECT), source="sweeper", result="undone"
            )
            == 5
        ),
        what="5 undone",
    )
    await drained(redis_client)
    for user in range(5):
        assert await quantity(client, f"player-{user}", "gold") == 40
    ledger = await store_of(service).ledger(PROJECT, "player-0")
    assert {e.fields["actor"] for e in ledger} == {"reconciler"}
