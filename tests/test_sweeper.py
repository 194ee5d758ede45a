"""The sweeper against the simulator's admin order search over real sockets, with the real gateway, consumer and
Redis: orders paid with every webhook lost are granted once, canceled ones undone, orders it cannot settle
reported; its lease, pacing and rate limits; the operator command."""

from __future__ import annotations

import asyncio
import itertools
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

import pytest
import redis.asyncio as aioredis

from providers.xsolla import CatalogSettings
from server.app import Service
from server.embedded import EmbeddedRedis
from server.reconcile import AUTHORITATIVE, CLAIM, LeaseLost, OrderIndex, SweeperLease, SweepRecords
from tests.helpers.events import consumer_settings, drained, event_log, order_event, store_of
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, sample
from tests.helpers.sweeps import SWEPT, orders, pay, quantity, reconcile, shop_context, swept
from tests.helpers.waiting import eventually
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory


@pytest.fixture
async def shop(redis_server: EmbeddedRedis, simulators: SimulatorFactory) -> AsyncIterator[XsollaSimulator]:
    """The simulator, its webhooks sent to a real gateway on the test's Redis (`tests.helpers.sweeps`)."""
    async with shop_context(redis_server.url, simulators) as sim:
        yield sim


async def sweeping(
    service_factory: ServiceFactory, redis_server: EmbeddedRedis, sim: XsollaSimulator, **overrides: Any
) -> Service:
    """A consuming service that sweeps the simulator's orders."""
    return await service_factory(
        redis_url=redis_server.url,
        xsolla_catalog=CatalogSettings(admin_api=sim.store_api_url, http_timeout_s=5.0),
        reconcile=reconcile(**overrides),
        **consumer_settings(SWEPT),
    )


async def grants_per_order(service: Service, users: list[str]) -> Counter[str]:
    """How many grant entries each order has on its players' ledgers."""
    counted: Counter[str] = Counter()
    for user in users:
        for entry in await store_of(service).ledger(PROJECT, user, 10_000):
            if entry.fields["op"] == "grant":
                counted[entry.fields["order_id"]] += 1
    return counted


async def test_paid_orders_whose_webhooks_were_lost_are_granted_once_and_canceled_ones_undone(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """200 orders paid with every webhook lost are all granted by the first sweep; the webhooks delivered late
    double nothing; orders then canceled at the provider (webhooks lost too) are undone by the next sweep, exactly."""
    users = [f"player-{n}" for n in range(20)]
    shop.drop_webhooks(share=1.0)
    ids = [await pay(shop, users[n % 20]) for n in range(200)]
    assert len(shop.dropped()) == 200
    service = await sweeping(service_factory, redis_server, shop, sweep_interval_s=2.0)
    client = await client_factory(service)
    # 200 orders applied one by one: 7-8 s on a cluster with the machine loaded (the default 10 s was too close).
    await eventually(lambda: swept(service) >= 1, timeout_s=30.0, what="the first sweep")
    assert orders(service, "applied") == 200
    await drained(redis_client)
    assert [await quantity(client, user) for user in users] == [100] * 20
    # Counted just after each XACK: the stream can be drained a moment before the last one is.
    await eventually(
        lambda: sample(service, "entitlements_payment_to_grant_seconds_count", source="sweeper") == 200,
        what="every sweeper grant timed",
    )

    shop.stop_dropping()
    assert len(await shop.deliver_dropped()) == 200
    await drained(redis_client)
    assert [await quantity(client, user) for user in users] == [100] * 20
    assert sample(service, "entitlements_events_total", type="order_paid", result="replayed") == 200

    shop.drop_webhooks(share=1.0)
    for order_id in ids[:30]:
        await shop.set_status(int(order_id), "canceled")
    await eventually(lambda: orders(service, "undone") == 30, what="30 orders undone")
    await drained(redis_client)
    expected = [100 - 10 * sum(1 for n in range(30) if n % 20 == u) for u in range(20)]
    assert [await quantity(client, user) for user in users] == expected
    assert await grants_per_order(service, users) == Counter(dict.fromkeys(ids, 1))
    assert orders(service, "mismatch") == orders(service, "unresolved") == orders(service, "failed") == 0


async def test_without_user_id_the_known_player_is_used_and_the_rest_reported(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """With `user.id` absent, orders whose player the index knows (a stream's claim, a webhook's record) are applied;
    an unknown player or disagreeing claims leave the order unresolved, reported, never applied."""
    shop.order_search.include_user_id = False
    shop.drop_webhooks(share=1.0)
    claimed, recorded, unknown, disputed = [await pay(shop, f"buyer-{n}") for n in range(4)]
    index = OrderIndex(redis_client, timeout_s=2.0)
    await index.record(PROJECT, claimed, "buyer-0", authority=CLAIM, applied=False, now_ms=1)
    await index.record(PROJECT, recorded, "buyer-1", authority=AUTHORITATIVE, applied=False, now_ms=1)
    for user in ("buyer-3", "someone-else"):
        await index.record(PROJECT, disputed, user, authority=CLAIM, applied=False, now_ms=1)
    service = await sweeping(service_factory, redis_server, shop)
    client = await client_factory(service)
    await eventually(lambda: swept(service) >= 1, what="a sweep")
    await drained(redis_client)
    assert [await quantity(client, f"buyer-{n}") for n in range(4)] == [10, 10, 0, 0]
    assert orders(service, "unresolved") == 2
    reports = {r.order_id: r for r in await SweepRecords(redis_client, timeout_s=2.0).reports(PROJECT)}
    assert set(reports) == {unknown, disputed}
    assert {r.result for r in reports.values()} == {"unresolved"}
    assert "never guessed" in reports[unknown].why


async def test_an_order_applied_here_that_the_provider_does_not_know_is_reported_not_touched(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """An order applied here that the provider's search never returns is a mismatch, reported; its grant stays."""
    service = await sweeping(service_factory, redis_server, shop, overlap_s=0.0)
    client = await client_factory(service)
    await eventually(lambda: swept(service) >= 1, what="a first sweep")
    await event_log(redis_client).append(order_event("paid", "990001", "ghost", [("gold", 7)]), b"{}")
    await drained(redis_client)
    await eventually(lambda: orders(service, "mismatch") >= 1, what="the mismatch to be reported")
    reports = await SweepRecords(redis_client, timeout_s=2.0).reports(PROJECT)
    assert [(r.order_id, r.result, r.player) for r in reports] == [("990001", "mismatch", "ghost")]
    assert await quantity(client, "ghost") == 7


async def test_rate_limits_are_waited_out_and_the_request_rate_is_kept(
    service_factory: ServiceFactory,
    redis_server: EmbeddedRedis,
    redis_client: aioredis.Redis,
    client_factory: ClientFactory,
    shop: XsollaSimulator,
) -> None:
    """A 429 is retried no sooner than its Retry-After, for the same page; requests are spaced by requests_per_s."""
    shop.drop_webhooks(share=1.0)
    for n in range(40):
        await pay(shop, f"payer-{n % 4}")
    shop.order_search.rate_limit(per_s=1.0, burst=2)
    # A lease far longer than the sweep: a renewal held up on a loaded machine must not restart it (that is
    # test_a_holder_that_loses_its_lease_...), or the first page would be asked for twice.
    service = await sweeping(
        service_factory, redis_server, shop, requests_per_s=4.0, sweep_interval_s=60.0, lease_s=30.0
    )
    client = await client_factory(service)
    await eventually(lambda: swept(service) >= 1, timeout_s=30.0, what="a sweep through the rate limit")
    await drained(redis_client)
    assert [await quantity(client, f"payer-{n}") for n in range(4)] == [100] * 4
    calls = shop.order_search.calls_for(PROJECT)
    limited = [n for n, call in enumerate(calls) if call.status == 429]
    assert limited, "the simulator's rate limit never answered 429"
    # Arrival times at the simulator: a request held up on its way (a loaded machine) arrives closer to the next
    # one than it was sent; so each gap is bounded with room for that, and the rate over the whole sweep exactly.
    jitter_s = 0.1
    for n in limited:
        assert calls[n + 1].offset == calls[n].offset
        assert calls[n + 1].at - calls[n].at >= 1.0 - jitter_s
    assert all(later.at - earlier.at >= 0.25 - jitter_s for earlier, later in itertools.pairwise(calls))
    paced, waited = len(calls) - 1 - len(limited), len(limited)
    assert calls[-1].at - calls[0].at >= 0.25 * paced + 1.0 * waited - jitter_s
    assert sorted(call.offset or 0 for call in calls if call.status == 200) == [0, 10, 20, 30]


async def test_a_holder_that_loses_its_lease_stops_at_once_and_writes_no_progress(
    redis_client: aioredis.Redis,
) -> None:
    """One holder at a time; a holder whose lease was taken stops its work and cannot move the progress."""
    first = SweeperLease(redis_client, PROJECT, lease_s=0.6, timeout_s=1.0)
    second = SweeperLease(redis_client, PROJECT, lease_s=0.6, timeout_s=1.0)
    assert await first.acquire()
    assert not await second.acquire()
    records = SweepRecords(redis_client, timeout_s=1.0)
    await records.begin(first, PROJECT, 0, 1_000, 1)
    stopped = asyncio.Event()

    async def work() -> None:
        try:
            await asyncio.sleep(30)
        finally:
            stopped.set()

    running = asyncio.ensure_future(first.run(work()))
    await asyncio.sleep(0)
    await redis_client.set(first.key, second.holder, px=60_000)  # taken over, as after a long pause
    with pytest.raises(LeaseLost, match="another replica"):
        await running
    assert stopped.is_set()
    with pytest.raises(LeaseLost):
        await records.advanced(first, PROJECT, 50)
    assert (await records.progress(PROJECT)).offset == 0
    assert await redis_client.get(first.key) == second.holder.encode()  # the loser's release took nothing


async def test_a_lease_that_expired_before_its_renewal_is_lost_and_says_so(redis_client: aioredis.Redis) -> None:
    """A renewal that finds the lease gone (it came too late, or the key was removed) stops the work."""
    lease = SweeperLease(redis_client, PROJECT, lease_s=0.6, timeout_s=1.0)
    assert await lease.acquire()
    running = asyncio.ensure_future(lease.run(asyncio.sleep(30)))
    await asyncio.sleep(0)
    await redis_client.delete(lease.key)
    with pytest.raises(LeaseLost, match="expired before it was renewed"):
        await running
