"""The sweeper's re-checks against the simulator over real sockets, with the real gateway, consumer and Redis: an
order paid (or canceled) with its webhook lost after the sweep's window moved past its creation is still granted
(or undone), and the re-checks stay within their per-sweep bound and pending window."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from core.clock import now_ms
from core.keys import sweep_pending_key, sweep_rechecked_key
from core.projects import Project
from providers.xsolla import CatalogSettings
from server.app import Service
from server.embedded import EmbeddedRedis
from server.reconcile import OrderIndex, Rechecks, SweepOutcome
from server.reconcile.recheck import second_of
from server.reconcile.settings import ReconcileSettings
from tests.helpers.events import consumer_settings, drained
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.sweeps import GOLD, SWEPT, quantity, reconcile, shop_context, swept
from tests.helpers.waiting import eventually
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.order_search import SearchCall
from xsolla_simulator.testing import SimulatorFactory

HOUR_MS = 3_600_000


@pytest.fixture
async def shop(redis_server: EmbeddedRedis, simulators: SimulatorFactory) -> AsyncIterator[XsollaSimulator]:
    """The simulator, every webhook dropped, its admin API open (`tests.helpers.sweeps`)."""
    async with shop_context(redis_server.url, simulators) as sim:
        sim.drop_webhooks(share=1.0)
        yield sim


async def sweeping(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, sim: XsollaSimulator, **overrides: Any
) -> Service:
    """A consuming service whose sweeper sweeps once at start (then hourly: later sweeps are the test's), no
    overlap, so that its window moves past an order at once."""
    settings = {"sweep_interval_s": 3600.0, "overlap_s": 0.0, **overrides}
    service = await service_factory(
        redis_url=redis_server.url,
        xsolla_catalog=CatalogSettings(admin_api=sim.store_api_url, http_timeout_s=5.0),
        reconcile=reconcile(**settings),
        **consumer_settings(SWEPT),
    )
    await eventually(lambda: swept(service) >= 1, timeout_s=30.0, what="the first sweep")
    return service


async def sweep(service: Service) -> SweepOutcome:
    """One sweep of the stored window now, as the periodic loop would."""
    assert service.sweeper is not None
    project = service.settings.projects.get(PROJECT)
    assert isinstance(project, Project)
    return await service.sweeper.sweep_once(project, collect=False)


def rechecks_of(redis: aioredis.Redis) -> Rechecks:
    """The re-check records on the test's Redis (to read the pending orders)."""
    return Rechecks(redis, OrderIndex(redis, timeout_s=2.0), ReconcileSettings(), timeout_s=2.0)


def searched_seconds(calls: list[SearchCall]) -> list[int]:
    """The creation seconds (ms) that one-second searches among `calls` asked for, in order (the window's own
    search, over the last moments, left out)."""
    recent = now_ms() - 60_000
    seconds = []
    for call in calls:
        assert call.created_from is not None
        assert call.created_until is not None
        since, until = datetime.fromisoformat(call.created_from), datetime.fromisoformat(call.created_until)
        if until - since == timedelta(seconds=1) and since.timestamp() * 1000 < recent:
            seconds.append(int(since.timestamp() * 1000))
    return seconds


def created(order_created_at: datetime) -> int:
    """An order's creation in ms, as the provider's search reports it (to the second)."""
    return int(order_created_at.timestamp()) * 1000


async def test_an_order_paid_after_the_window_moved_past_it_is_granted_by_a_recheck(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """An order seen new, then paid with its webhook lost once the window has moved past its creation, is granted
    by the next sweep's search of its creation second; the pending set then forgets it and it is not searched
    again at once."""
    order = shop.create_order("late-payer", GOLD, created_at=datetime.now(UTC) - timedelta(hours=1, seconds=0.4))
    service = await sweeping(service_factory, redis_server, shop)
    client = await client_factory(service)
    second = created(order.created_at)
    assert await rechecks_of(redis_client).pending(PROJECT) == [(str(order.order_id), second)]

    await shop.set_status(order.order_id, "paid")
    assert len(shop.dropped()) == 1
    before = len(shop.order_search.calls_for(PROJECT))
    outcome = await sweep(service)
    calls = shop.order_search.calls_for(PROJECT)[before:]
    assert outcome.rechecks == 1
    assert searched_seconds(calls) == [second]
    assert (outcome.counts["rechecked"], outcome.counts["applied"]) == (1, 1)
    await drained(redis_client)
    assert await quantity(client, "late-payer") == 10
    assert sample(service, "entitlements_payment_to_grant_seconds_count", source="sweeper") == 1
    assert await rechecks_of(redis_client).pending(PROJECT) == []

    again = await sweep(service)
    assert again.rechecks == 0
    assert await quantity(client, "late-payer") == 10


async def test_an_unresolved_order_is_searched_again_and_applied_once_its_player_is_known(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """A paid order whose player nobody names is reported unresolved and kept for the re-checks; once a claim says
    whose it is, the next sweep's search of its creation second applies it, after the window moved past it."""
    shop.order_search.include_user_id = False
    order = shop.create_order("anonymous", GOLD, created_at=datetime.now(UTC) - timedelta(hours=1))
    await shop.set_status(order.order_id, "paid")
    service = await sweeping(service_factory, redis_server, shop)
    client = await client_factory(service)
    assert (
        sample(
            service, "entitlements_reconcile_orders_total", project=str(PROJECT), source="sweeper", result="unresolved"
        )
        == 1
    )
    assert await rechecks_of(redis_client).pending(PROJECT) == [(str(order.order_id), created(order.created_at))]

    index = OrderIndex(redis_client, timeout_s=2.0)
    await index.record(PROJECT, str(order.order_id), "anonymous", authority="s", applied=False, now_ms=now_ms())
    outcome = await sweep(service)
    assert (outcome.counts["rechecked"], outcome.counts["applied"]) == (1, 1)
    await drained(redis_client)
    assert await quantity(client, "anonymous") == 10
    assert await rechecks_of(redis_client).pending(PROJECT) == []


async def test_an_applied_order_canceled_after_the_window_moved_past_it_is_undone_within_its_cadence(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """An applied order is searched again once the window has moved past it, then at most once an hour: a cancel
    whose webhook was lost is undone by the first search after the hour, exactly."""
    order = shop.create_order("refunded", GOLD, created_at=datetime.now(UTC) - timedelta(hours=2))
    await shop.set_status(order.order_id, "paid")
    kept = shop.create_order("kept", GOLD, created_at=datetime.now(UTC) - timedelta(hours=2, seconds=5))
    await shop.set_status(kept.order_id, "paid")
    service = await sweeping(service_factory, redis_server, shop)
    client = await client_factory(service)
    await drained(redis_client)
    assert [await quantity(client, user) for user in ("refunded", "kept")] == [10, 10]

    first = await sweep(service)
    assert (first.rechecks, first.counts["already"]) == (2, 2)
    await shop.set_status(order.order_id, "canceled")
    assert len(shop.dropped()) == 3
    within_the_hour = await sweep(service)
    assert within_the_hour.rechecks == 0
    await drained(redis_client)
    assert await quantity(client, "refunded") == 10

    second = created(order.created_at)
    await redis_client.zadd(sweep_rechecked_key(PROJECT), {str(second): now_ms() - 40 * 60_000})
    assert (await sweep(service)).rechecks == 0  # a quarter of its age has passed, not the hour
    await redis_client.zadd(sweep_rechecked_key(PROJECT), {str(second): now_ms() - HOUR_MS - 1})
    after_the_hour = await sweep(service)
    assert (after_the_hour.rechecks, after_the_hour.counts["undone"]) == (1, 1)
    await drained(redis_client)
    assert [await quantity(client, user) for user in ("refunded", "kept")] == [0, 10]


async def test_rechecks_are_bounded_per_sweep_take_turns_and_forget_orders_past_the_pending_window(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    shop: XsollaSimulator,
) -> None:
    """With more pending seconds than the per-sweep limit, each sweep searches at most the limit, newest first,
    orders sharing a second share one search, and successive sweeps search every second once; orders older than
    the pending window are forgotten without a search."""
    base = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=30)
    moments = [base + timedelta(seconds=2 * n) for n in range(7)]
    orders = [shop.create_order(f"browser-{n}", GOLD, created_at=at) for n, at in enumerate(moments)]
    orders.append(shop.create_order("browser-twin", GOLD, created_at=moments[3]))
    old = shop.create_order("browser-old", GOLD, created_at=base - timedelta(hours=2))
    stale = now_ms() - 2 * HOUR_MS
    await redis_client.zadd(sweep_pending_key(PROJECT), {"424242": stale})  # seen new 2 h ago
    service = await sweeping(service_factory, redis_server, shop, pending_h=1.0, rechecks=3)
    pending = await rechecks_of(redis_client).pending(PROJECT)
    assert sorted(order_id for order_id, _ in pending) == sorted(str(o.order_id) for o in orders)

    seconds = [created(at) for at in moments]
    searched: list[list[int]] = []
    for _ in range(3):
        before = len(shop.order_search.calls_for(PROJECT))
        outcome = await sweep(service)
        searched.append(searched_seconds(shop.order_search.calls_for(PROJECT)[before:]))
        assert outcome.rechecks == len(searched[-1]) <= 3
    assert searched == [seconds[::-1][:3], seconds[::-1][3:6], seconds[::-1][6:]]
    assert not {created(old.created_at), second_of(stale)} & {second for seconds in searched for second in seconds}
    assert (await sweep(service)).rechecks == 0
    labels = {"project": str(PROJECT), "source": "sweeper", "result": "rechecked"}
    assert sample(service, "entitlements_reconcile_orders_total", **labels) == 8
    pending = await rechecks_of(redis_client).pending(PROJECT)
    assert sorted(order_id for order_id, _ in pending) == sorted(str(o.order_id) for o in orders)
