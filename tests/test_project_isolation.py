"""Projects as tenants, end to end on a real Valkey: webhooks of two projects through the real gateway into one
running service never touch each other's players, orders, order-status streams or dead letters, and the consumer
reads a project that first appears after it started, and not one it does not serve."""

from __future__ import annotations

import asyncio
import io
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from types import MappingProxyType

import aiohttp
import pytest
import redis.asyncio as aioredis

from core.keys import EventKeys, UserKeys
from core.projects import Projects
from entitlements.v1 import entitlements_pb2 as pb
from server.__main__ import dead_letters_command
from server.app import Service
from server.config import Settings
from server.consumer import ConsumerHooks, StreamEntry
from tests.helpers.events import (
    CATALOG_PROJECTS,
    PARTITIONS,
    consumer_of,
    consumer_settings,
    dead_letters,
    drained,
    event_log,
    order_event,
    store_of,
)
from tests.helpers.gateway import PROJECT_SECRET, fixture, gateway_settings, post, running_gateway, xsolla_settings
from tests.helpers.services import PROJECT, ClientFactory, ServiceFactory, base_settings
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from webhook_gateway import Gateway

A, B = PROJECT, 310000
SECRET_B = "project-310000-secret-0123456789"
TWO = Projects.from_mapping({"default_project": A, "projects": {str(A): {}, str(B): {}}}, "xsolla")


def order_paid(order_id: int, user_id: str, sku: str, quantity: int) -> bytes:
    """An order_paid notification (the fact sheet's, one line) for `user_id`."""
    body = json.loads(fixture("order_paid_separate"))
    body["order"]["id"] = order_id
    body["items"] = [{"sku": sku, "type": "virtual_good", "is_pre_order": False, "quantity": quantity, "amount": "1"}]
    body["user"]["external_id"] = user_id
    return json.dumps(body).encode()


@dataclass
class TwoProjects:
    """One consuming service serving projects A and B, and the gateway that Xsolla posts both projects' webhooks
    to, each on its project's path and signed with its project's secret."""

    service: Service
    gateway: Gateway
    http: aiohttp.ClientSession

    async def pay(self, project_id: int, order_id: int, user_id: str, sku: str, quantity: int) -> None:
        secret = PROJECT_SECRET if project_id == A else SECRET_B
        body = order_paid(order_id, user_id, sku, quantity)
        answer = await post(self.http, f"{self.gateway.url}/{project_id}", body, secret=secret)
        assert answer.status == 204, answer.body


@pytest.fixture
async def two(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, http: aiohttp.ClientSession
) -> AsyncIterator[TwoProjects]:
    service = await service_factory(redis_url=redis_server.url, **consumer_settings(TWO))
    secrets = xsolla_settings(
        default_secret=None, project_secrets=MappingProxyType({A: (PROJECT_SECRET,), B: (SECRET_B,)})
    )
    settings = gateway_settings(redis_url=redis_server.url, event_partitions=PARTITIONS)
    async with running_gateway(settings, secrets) as gateway:
        yield TwoProjects(service, gateway, http)


async def test_the_same_player_and_sku_in_two_projects_are_two_inventories(
    two: TwoProjects, redis_client: aioredis.Redis
) -> None:
    """order_paid of A and of B, same order id, player and sku: each grants in its own project only."""
    await two.pay(A, 7, "player-1", "gold", 5)
    await two.pay(B, 7, "player-1", "gold", 100)
    await drained(redis_client, projects=(A, B))
    store = store_of(two.service)
    a, b = await store.get(A, "player-1", "gold"), await store.get(B, "player-1", "gold")
    assert (a and a.quantity, b and b.quantity) == (5, 100)
    order_a, order_b = await store.order(A, "player-1", "7"), await store.order(B, "player-1", "7")
    assert order_a is not None
    assert order_b is not None
    assert (order_a["project_id"], order_b["project_id"]) == (str(A), str(B))
    assert [len(await store.ledger(p, "player-1")) for p in (A, B)] == [1, 1]
    assert await store.get(A + B, "player-1", "gold") is None


async def test_order_updates_of_one_project_never_reach_a_stream_on_another(
    two: TwoProjects, client_factory: ClientFactory, redis_client: aioredis.Redis
) -> None:
    """Streams on A and on B follow order 42 of the same player: A's payment ends A's stream only; B's stream ends
    with B's own payment, whose time it reports."""
    client = await client_factory(two.service)
    tracking = two.service.tracking
    assert tracking is not None
    reader_b = asyncio.get_running_loop().create_task(_read(client.get_order_status("42", "player-1", project_id=B)))
    await eventually(lambda: len(tracking) == 1, what="B's tracker")
    reader_a = asyncio.get_running_loop().create_task(_read(client.get_order_status("42", "player-1", project_id=A)))
    await eventually(lambda: len(tracking) == 2, what="A's tracker")
    await eventually(lambda: tracking.feed.projects == {A, B}, what="both projects' channels")

    await two.pay(A, 42, "player-1", "sword", 1)
    updates_a = await asyncio.wait_for(reader_a, 20)
    assert [(u.status, u.source) for u in updates_a] == [(pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_WEBHOOK)]
    assert not reader_b.done()
    await two.pay(B, 42, "player-1", "sword", 1)
    updates_b = await asyncio.wait_for(reader_b, 20)
    assert [(u.status, u.source) for u in updates_b] == [(pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_SOURCE_WEBHOOK)]
    order_b = await store_of(two.service).order(B, "player-1", "42")
    assert order_b is not None
    assert updates_b[0].observed_at.ToMilliseconds() == int(order_b["updated_at_ms"])
    assert await store_of(two.service).get(B, "player-1", "sword") is not None


async def _read(stream: AsyncIterator[pb.OrderStatusUpdate]) -> list[pb.OrderStatusUpdate]:
    return [update async for update in stream]


async def test_the_consumer_reads_a_project_that_appears_after_it_started(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """A project whose first event is appended after the consumer started is read without a restart."""
    overrides = consumer_settings(Projects.single(None, CATALOG_PROJECTS.template), projects_refresh_s=0.1)
    service = await service_factory(redis_url=redis_server.url, **overrides)
    consumer = consumer_of(service)
    await eventually(lambda: consumer.running, what="the consumer")
    assert consumer.projects == frozenset()
    await event_log(redis_client).append(order_event("paid", "1", "player-1", [("gold", 4)], project_id=B), b"{}")

    async def granted() -> bool:
        record = await store_of(service).get(B, "player-1", "gold")
        return record is not None and record.quantity == 4

    await eventually(granted, what="the new project's event to be applied")
    assert consumer.projects == {B}
    await drained(redis_client, projects=(B,))


async def test_the_consumer_leaves_alone_a_project_it_does_not_serve(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """A registered project the service does not serve is not read: its event waits in its stream, unapplied."""
    other = 320000
    service = await service_factory(redis_url=redis_server.url, **consumer_settings(TWO, projects_refresh_s=0.05))
    consumer = consumer_of(service)
    await event_log(redis_client).append(order_event("paid", "1", "player-1", [("gold", 4)], project_id=other), b"{}")
    await eventually(lambda: other in consumer.unread_projects, what="the unserved project to be seen")
    assert consumer.projects == {A, B}
    assert await store_of(service).get(other, "player-1", "gold") is None
    streams = [EventKeys(other, partition).stream for partition in range(PARTITIONS)]
    assert sum([await redis_client.xlen(stream) for stream in streams]) == 1


async def test_the_consumer_reads_no_more_projects_than_its_connections_allow(
    service_factory: ServiceFactory,
    redis_server: StoreUnderTest,
    redis_client: aioredis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Past the room its pool was sized for, a new project is not read (until a restart) instead of failing."""
    monkeypatch.setattr("server.app.PROJECTS_HEADROOM", 1)
    overrides = consumer_settings(Projects.single(None, CATALOG_PROJECTS.template), projects_refresh_s=0.05)
    service = await service_factory(redis_url=redis_server.url, **overrides)
    consumer = consumer_of(service)
    log = event_log(redis_client)
    await log.append(order_event("paid", "1", "player-1", [("gold", 4)], project_id=B), b"{}")
    await eventually(lambda: consumer.projects == {B}, what="the first new project to be read")
    await log.append(order_event("paid", "2", "player-1", [("gold", 4)], project_id=A), b"{}")
    await eventually(lambda: A in consumer.unread_projects, what="the second new project to be passed over")
    assert consumer.projects == {B}
    assert await store_of(service).get(A, "player-1", "gold") is None


async def test_dead_letters_are_listed_and_replayed_per_project(
    service_factory: ServiceFactory, redis_server: StoreUnderTest, redis_client: aioredis.Redis
) -> None:
    """A dead letter of B is listed and replayed with B's project only; the replay applies it in B."""
    broken = asyncio.Event()
    broken.set()

    async def fail(entry: StreamEntry) -> None:
        if broken.is_set():
            raise RuntimeError("grant backend misconfigured")

    settings = base_settings(redis_url=redis_server.url, **consumer_settings(TWO))
    service = Service(settings, consumer_hooks=ConsumerHooks(before_apply=fail))
    await service.start()
    try:
        await event_log(redis_client).append(order_event("paid", "1", "player-1", [("gold", 3)], project_id=B), b"{}")
        await eventually(lambda: _has_dead_letter(redis_client, B), what="B's dead letter")
        assert await dead_letters(redis_client, A) == []
        operator = Settings(**redis_server.settings, event_partitions=PARTITIONS, projects=TWO)
        out = io.StringIO()
        assert await dead_letters_command(operator, A, "list", None, out=out) == 0
        assert out.getvalue() == ""
        assert await dead_letters_command(operator, B, "list", None, out=out) == 0
        (listed,) = [json.loads(line) for line in out.getvalue().splitlines()]
        assert (listed["project_id"], listed["user_id"]) == (B, "player-1")
        assert await dead_letters_command(operator, A, "replay", listed["id"], out=io.StringIO()) == 1

        broken.clear()
        out = io.StringIO()
        assert await dead_letters_command(operator, B, "replay", listed["id"], out=out) == 0
        assert json.loads(out.getvalue())["project_id"] == B
        await drained(redis_client, projects=(B,))
        record = await store_of(service).get(B, "player-1", "gold")
        assert record is not None
        assert record.quantity == 3
        assert await store_of(service).get(A, "player-1", "gold") is None
        assert (
            await redis_client.xlen(EventKeys(B, 0).dead_letters)
            + await redis_client.xlen(EventKeys(B, 1).dead_letters)
            == 0
        )
        assert await redis_client.exists(UserKeys(A, "player-1").ledger) == 0
    finally:
        await service.stop(grace_s=0)


async def _has_dead_letter(redis: aioredis.Redis, project_id: int) -> bool:
    return bool(await dead_letters(redis, project_id))
