"""GetOrderStatus end to end: the real service on a real Valkey, driven through the project's client, against the
Xsolla simulator (its Centrifugo WebSocket and Get order over real sockets) and, for webhooks, the real gateway
and consumer. Timings are shortened (polling every 0.1 s, a silent socket given up after 1 s)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, fields, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from redis.typing import EncodableT, FieldT

from core.errors import ConfigError as CoreConfigError
from core.keys import UserKeys
from core.order_sources import ReportedStatus
from core.projects import Projects
from entitlements import AsyncEntitlementsClient
from entitlements.errors import (
    AuthenticationError,
    InvalidArgumentError,
    NotFoundError,
    ResourceExhaustedError,
    UnavailableError,
)
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla import OrderSettings, WebhookSettings
from providers.xsolla.status import reported as xsolla_status
from server.app import Service
from server.config import Settings
from server.reconcile.settings import ReconcileSettings
from server.status_channel import read_order_state
from server.tracking import Observation, OrderProgress, OrderTracking
from server.tracking.settings import TrackingSettings
from tests.helpers.events import PARTITIONS, consumer_settings
from tests.helpers.gateway import running_gateway
from tests.helpers.processes import ServiceProcess, serving, start_service_process
from tests.helpers.services import READER_KEY, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest, on_every_primary
from tests.helpers.waiting import eventually
from webhook_gateway import GatewaySettings
from webhook_gateway.app import Gateway
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory

PROJECT = 12345
SECRET = "order-status-webhook-secret"
PLAYER = "player-1"
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency"}]

NEW, PAID, DONE, CANCELED = pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_DONE, pb.ORDER_STATUS_CANCELED
STORED, WEBHOOK = pb.ORDER_STATUS_SOURCE_STORED, pb.ORDER_STATUS_SOURCE_WEBHOOK
WEBSOCKET, POLLING = pb.ORDER_STATUS_SOURCE_WEBSOCKET, pb.ORDER_STATUS_SOURCE_POLLING

FAST = TrackingSettings(ws_silence_s=1.0, poll_interval_s=0.1, max_wait_s=15.0, grant_wait_s=2.0)
FAST_XSOLLA = OrderSettings(project_id=PROJECT, ws_connect_timeout_s=2.0, http_timeout_s=2.0)

# Tasks that exist whether or not a stream ran: grpc.aio's wait for the next call (a new task per call), and the
# simulator's end of the keep-alive connections the service's HTTP session keeps for the next poll.
IDLE_INFRASTRUCTURE = frozenset({"AioServer._request_registered_call", "RequestHandler.start"})

Update = tuple[int, int, bool]  # (status, source, entitlements_granted)


def summary(updates: list[pb.OrderStatusUpdate]) -> list[Update]:
    return [(u.status, u.source, u.entitlements_granted) for u in updates]


def statuses(updates: list[pb.OrderStatusUpdate]) -> list[int]:
    return [u.status for u in updates]


@dataclass
class Rig:
    """A simulator, the gateway its webhooks go to, and a way to start services wired to both."""

    sim: XsollaSimulator
    gateway: Gateway | None
    redis_server: StoreUnderTest
    start_service: Callable[..., Awaitable[Service]]
    client_factory: ClientFactory

    async def service(self, *, consumer: bool = True, projects: Projects | None = None, **tracking: Any) -> Service:
        """A service on the test's Valkey following orders at the simulator, with overrides of its tracking
        settings and of Xsolla's (`OrderSettings`) by field name, and of the projects it serves. The tracker's
        reconciliation is off: these tests are about what the stream reports (tests/test_tracker_reconciliation.py
        has it on)."""
        xsolla_fields = {f.name for f in fields(OrderSettings)}
        xsolla = replace(
            FAST_XSOLLA,
            store_api=self.sim.store_api_url,
            ws_url=self.sim.ws_url,
            **{name: value for name, value in tracking.items() if name in xsolla_fields},
        )
        settings = replace(FAST, **{name: value for name, value in tracking.items() if name not in xsolla_fields})
        overrides = consumer_settings()
        overrides["reconcile"] = ReconcileSettings(tracker_enabled=False)
        # The simulator's project, unless the test asks for none (project_id=0) or for other projects.
        overrides["projects"] = projects or Projects.single(xsolla.project_id or None)
        if not consumer:
            overrides["consumer"] = replace(overrides["consumer"], enabled=False)
        return await self.start_service(redis_url=self.redis_server.url, tracking=settings, xsolla=xsolla, **overrides)

    async def client(self, service: Service) -> AsyncEntitlementsClient:
        return await self.client_factory(service)


@pytest.fixture
async def rig(
    simulators: SimulatorFactory,
    redis_server: StoreUnderTest,
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
) -> AsyncIterator[Rig]:
    """The simulator posting its webhooks to a real gateway on the test's Valkey (retries 1000x faster)."""
    settings = GatewaySettings(
        port=0,
        metrics_port=None,
        redis_url=redis_server.url,
        redis_cluster=redis_server.cluster,
        event_partitions=PARTITIONS,
    )
    async with running_gateway(settings, WebhookSettings(default_secret=SECRET)) as gateway:
        sim = await simulators(project_id=PROJECT, webhook_url=gateway.url, webhook_secret=SECRET, time_scale=0.001)
        yield Rig(sim, gateway, redis_server, service_factory, client_factory)


async def collect(stream: AsyncIterator[pb.OrderStatusUpdate], timeout_s: float = 20.0) -> list[pb.OrderStatusUpdate]:
    """Every update of a stream until the server ends it."""
    async with asyncio.timeout(timeout_s):
        return [update async for update in stream]


def tracking_of(service: Service) -> OrderTracking:
    assert service.tracking is not None
    return service.tracking


class Reader:
    """Reads a stream in the background, so a test can act while updates arrive."""

    def __init__(self, stream: AsyncIterator[pb.OrderStatusUpdate]) -> None:
        self.updates: list[pb.OrderStatusUpdate] = []
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[pb.OrderStatusUpdate]) -> None:
        try:
            async for update in stream:
                self.updates.append(update)
        except Exception as exc:
            self.error = exc

    async def count(self, n: int, timeout_s: float = 10.0) -> None:
        await eventually(lambda: len(self.updates) >= n or self.task.done(), timeout_s=timeout_s, what=f"{n} updates")
        assert len(self.updates) >= n, (summary(self.updates), self.error)

    async def end(self, timeout_s: float = 20.0) -> list[pb.OrderStatusUpdate]:
        async with asyncio.timeout(timeout_s):
            await self.task
        if self.error is not None:
            raise self.error
        return self.updates


# --- each source alone ------------------------------------------------------------------------------------------


async def test_websocket_alone_drives_the_stream_to_done(rig: Rig) -> None:
    """With the socket only (nothing polled, no webhook), new -> paid -> done arrive from the WebSocket and end it."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    for status in ("new", "paid", "done"):
        await rig.sim.set_status(order.order_id, status, channels=("websocket",))
    updates = await reader.end()
    assert summary(updates) == [(NEW, WEBSOCKET, False), (PAID, WEBSOCKET, False), (DONE, WEBSOCKET, False)]
    assert rig.sim.get_order_requests(order.order_id) == 0
    assert all(u.order_id == str(order.order_id) and u.observed_at.seconds > 0 for u in updates)
    await eventually(lambda: rig.sim.websocket_connections == 0, what="the socket to close")
    assert len(tracking_of(service)) == 0


async def test_polling_alone_drives_the_stream_to_done(rig: Rig) -> None:
    """With the WebSocket off, Get order is polled: new, paid, done, each once, from POLLING; no socket is opened."""
    service = await rig.service(ws_enabled=False, grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await reader.count(1)
    await rig.sim.set_status(order.order_id, "paid", channels=("polling",))
    await reader.count(2)
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    updates = await reader.end()
    assert summary(updates) == [(NEW, POLLING, False), (PAID, POLLING, False), (DONE, POLLING, False)]
    assert rig.sim.websocket_connects_total == 0
    polls = rig.sim.get_order_requests(order.order_id)
    await asyncio.sleep(0.3)
    assert rig.sim.get_order_requests(order.order_id) == polls  # stopped by the terminal status


async def test_webhooks_alone_drive_a_stream_without_token_to_done(rig: Rig) -> None:
    """Without a token only webhooks feed the stream: the applied order_paid (items granted) completes it as DONE."""
    service = await rig.service()
    client = await rig.client(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 1, what="the tracker")
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
    updates = await reader.end()
    assert summary(updates) == [(DONE, WEBHOOK, True)]
    assert (await client.check_entitlement(PLAYER, "gold")).entitlement.quantity == 100
    assert rig.sim.websocket_connects_total == 0
    assert rig.sim.get_order_requests(order.order_id) == 0


async def test_stored_state_comes_first(rig: Rig) -> None:
    """A stream opened after the webhook was applied starts with the stored state (paid, granted), then Xsolla's."""
    service = await rig.service()
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "paid")
    await eventually(lambda: stored_status(rig, order.order_id), what="the order_paid webhook to be applied")
    # Counted once applied and published: the publication cannot reach the stream opened next.
    applied = {"type": "order_paid", "result": "applied"}
    await eventually(lambda: sample(service, "entitlements_events_total", **applied) == 1, what="its publication")
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await reader.count(1)
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    updates = await reader.end()
    assert summary(updates) == [(PAID, STORED, True), (DONE, WEBSOCKET, True)]


async def test_a_stream_opened_on_a_canceled_order_sends_it_and_ends(rig: Rig) -> None:
    """The stored state is terminal (canceled): the stream sends it and ends without asking Xsolla."""
    service = await rig.service()
    client = await rig.client(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
    await rig.sim.set_status(order.order_id, "canceled", channels=("webhook",))
    await eventually(lambda: stored_status(rig, order.order_id, "canceled"), what="the cancel to be applied")
    applied = {"type": "order_canceled", "result": "applied"}
    await eventually(lambda: sample(service, "entitlements_events_total", **applied) == 1, what="its publication")
    token = rig.sim.issue_token(PLAYER)
    updates = await collect(client.get_order_status(str(order.order_id), PLAYER, token=token))
    assert summary(updates) == [(CANCELED, STORED, False)]
    assert rig.sim.get_order_requests(order.order_id) == 0


# --- fallbacks --------------------------------------------------------------------------------------------------


async def test_a_websocket_broken_mid_order_hands_over_to_polling(rig: Rig) -> None:
    """The socket breaks after paid: polling takes over and the stream still ends at DONE, paid not repeated."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket", "polling"))
    await reader.count(1)
    await rig.sim.break_websockets(code=3001, reason="shutdown", refuse_for_s=30.0)
    await eventually(lambda: rig.sim.get_order_requests(order.order_id) >= 2, what="polling to start")
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    updates = await reader.end()
    assert summary(updates) == [(PAID, WEBSOCKET, False), (DONE, POLLING, False)]
    assert sample(service, "entitlements_order_polling_fallbacks_total", reason="broken") == 1


async def test_a_silent_websocket_hands_over_to_polling(rig: Rig) -> None:
    """A socket that says nothing about the order for ws_silence_s gives way to polling."""
    service = await rig.service(ws_silence_s=0.5, grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "paid", channels=("polling",))
    # The stream runs until max_wait (PAID is not final without a grant to wait for); 4 s leave a stalled machine
    # room for the socket, its 0.5 s of silence and the poll (1.5 s did not, once).
    updates = await collect(
        client.get_order_status(str(order.order_id), PLAYER, token=token, max_wait=timedelta(seconds=4))
    )
    assert summary(updates)[0] == (PAID, POLLING, False)
    assert sample(service, "entitlements_order_polling_fallbacks_total", reason="silent") == 1
    assert rig.sim.websocket_connects_total == 1


async def test_a_websocket_that_cannot_connect_hands_over_to_polling(rig: Rig) -> None:
    """Socket upgrades refused (503) until the connect timeout: the order is polled instead and reaches DONE."""
    service = await rig.service(ws_connect_timeout_s=0.5, grant_wait_s=0)
    client = await rig.client(service)
    await rig.sim.break_websockets(refuse_for_s=30.0)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    updates = await collect(client.get_order_status(str(order.order_id), PLAYER, token=token))
    assert summary(updates) == [(DONE, POLLING, False)]
    assert sample(service, "entitlements_order_polling_fallbacks_total", reason="connect_timeout") == 1
    assert rig.sim.websocket_connects_total == 0


async def test_polling_retries_network_errors_and_5xx_with_backoff(rig: Rig) -> None:
    """Two 503s from Get order are retried, not fatal: the stream still reaches DONE."""
    service = await rig.service(ws_enabled=False, grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    rig.sim.fail_get_order(times=2, status=503)
    updates = await collect(client.get_order_status(str(order.order_id), PLAYER, token=token))
    assert summary(updates) == [(DONE, POLLING, False)]
    answered = [request.status for request in rig.sim.get_order_requests_for(order.order_id)]
    assert answered == [503, 503, 200]
    assert sample(service, "entitlements_xsolla_requests_total", operation="get_order", result="5xx") == 2


# --- ordering and duplicates ------------------------------------------------------------------------------------


async def test_out_of_order_and_duplicate_statuses_from_three_sources_move_forward_once(rig: Rig) -> None:
    """Stale and repeated statuses from the socket, webhooks and polling are dropped; the grant is sent once."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    oid = order.order_id
    reader = Reader(client.get_order_status(str(oid), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(oid, "paid", channels=("websocket", "polling"))
    await reader.count(1)
    await rig.sim.send_webhook(oid)  # order_paid: the grant
    await reader.count(2)
    # Duplicates and stale statuses on every source.
    await rig.sim.send_webhook(oid)
    await rig.sim.publish_status(oid, "paid")
    await rig.sim.publish_status(oid, "new")
    await rig.sim.publish_status(oid, "PAID")
    await rig.sim.wait_webhooks_settled(5.0)
    await rig.sim.break_websockets(code=3001, refuse_for_s=30.0)  # polling answers "paid" again
    await eventually(lambda: rig.sim.get_order_requests(oid) >= 3, what="polling")
    await rig.sim.publish_status(oid, "new")
    await rig.sim.set_status(oid, "done", channels=("polling",))
    updates = await reader.end()
    assert summary(updates) == [(PAID, WEBSOCKET, False), (PAID, WEBHOOK, True), (DONE, POLLING, True)]


async def test_unknown_statuses_are_ignored(rig: Rig) -> None:
    """A status string Xsolla never documented is logged and ignored; the known ones still arrive."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.publish_status(order.order_id, "refunded-maybe")
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    assert summary(await reader.end()) == [(DONE, WEBSOCKET, False)]


async def test_a_cancel_ends_the_stream(rig: Rig) -> None:
    """paid then canceled (on every channel): CANCELED ends the stream at once; the grant is undone."""
    service = await rig.service()
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket",))
    await reader.count(1)
    await rig.sim.set_status(order.order_id, "canceled")
    updates = await reader.end()
    assert statuses(updates) == [PAID, CANCELED]
    assert not updates[-1].entitlements_granted
    assert len(tracking_of(service)) == 0


# --- the grant ------------------------------------------------------------------------------------------------


async def test_done_before_the_grant_waits_for_it(rig: Rig) -> None:
    """DONE from Xsolla before this service granted the order: the stream stays open until the webhook's grant."""
    service = await rig.service(grant_wait_s=10.0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    await reader.count(1)
    await asyncio.sleep(0.3)
    assert not reader.task.done()
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))  # the order_paid webhook, late
    updates = await reader.end()
    assert summary(updates) == [(DONE, WEBSOCKET, False), (DONE, WEBHOOK, True)]
    await eventually(lambda: rig.sim.websocket_connections == 0, what="the socket to close")


async def test_done_without_the_grant_ends_after_the_grant_wait(rig: Rig) -> None:
    """No grant comes: the stream ends normally grant_wait_s after DONE."""
    service = await rig.service(grant_wait_s=0.5)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    started = time.monotonic()
    updates = await collect(client.get_order_status(str(order.order_id), PLAYER, token=token))
    assert summary(updates) == [(DONE, WEBSOCKET, False)]
    assert 0.4 < time.monotonic() - started < 5.0


async def test_an_ignored_sandbox_order_completes_a_stream_without_token_ungranted(rig: Rig) -> None:
    """A sandbox order the project ignores: its order_paid webhook ends a token-less stream as done, not granted."""
    service = await rig.service()
    client = await rig.client(service)
    order = rig.sim.create_order(PLAYER, ITEMS, sandbox=True)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 1, what="the tracker")
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
    updates = await reader.end()
    assert summary(updates) == [(DONE, WEBHOOK, False)]
    assert not (await client.check_entitlement(PLAYER, "gold")).HasField("entitlement")


async def test_a_sandbox_order_done_at_xsolla_does_not_wait_for_a_grant(rig: Rig) -> None:
    """DONE from Xsolla, then the ignored sandbox order's webhook: the stream ends then, not after grant_wait_s."""
    service = await rig.service(grant_wait_s=600.0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS, sandbox=True)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    await reader.count(1)
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))  # the order_paid webhook, late
    updates = await reader.end()
    assert summary(updates) == [(DONE, WEBSOCKET, False)]
    assert not any(update.timed_out for update in updates)


async def test_an_ignored_sandbox_order_ends_the_stream_at_xsolla_done(rig: Rig) -> None:
    """The ignored sandbox order's webhook first (paid, not granted), then Xsolla's DONE ends the stream at once."""
    service = await rig.service(grant_wait_s=600.0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS, sandbox=True)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
    await reader.count(1)
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    updates = await reader.end()
    assert summary(updates) == [(PAID, WEBHOOK, False), (DONE, WEBSOCKET, False)]
    assert not any(update.timed_out for update in updates)


# --- sharing ----------------------------------------------------------------------------------------------------


async def test_a_late_watcher_first_gets_the_best_state_known(rig: Rig) -> None:
    """A second stream on a followed order starts with the current state, as its source saw it; one tracker."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    first = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket",))
    await first.count(1)
    second = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await second.count(1)
    assert len(tracking_of(service)) == 1
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    expected = [(PAID, WEBSOCKET, False), (DONE, WEBSOCKET, False)]
    assert summary(await first.end()) == expected
    assert summary(await second.end()) == expected
    assert rig.sim.websocket_connects_total == 1


async def test_one_socket_per_player_shared_by_their_orders(rig: Rig) -> None:
    """Two orders of one player share one socket; an order followed later gets what the socket already saw."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    first, second = rig.sim.create_order(PLAYER, ITEMS), rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(first.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(second.order_id, "paid", channels=("websocket",))
    await asyncio.sleep(0.2)
    assert reader.updates == []  # another order's publication
    later = Reader(client.get_order_status(str(second.order_id), PLAYER, token=token))
    await later.count(1)
    assert summary(later.updates) == [(PAID, WEBSOCKET, False)]
    assert rig.sim.websocket_connects_total == 1
    assert len(tracking_of(service)) == 2
    await rig.sim.set_status(first.order_id, "done", channels=("websocket",))
    await rig.sim.set_status(second.order_id, "done", channels=("websocket",))
    await reader.end()
    await later.end()
    await eventually(lambda: rig.sim.websocket_connections == 0, what="the socket to close")


async def test_a_thousand_watchers_share_one_tracker_and_one_poll_per_interval(rig: Rig) -> None:
    """1,000 streams on one order: one tracker, one Get order per interval, and every stream gets every update."""
    service = await rig.service(ws_enabled=False, grant_wait_s=0, poll_interval_s=0.1)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    readers = [Reader(client.get_order_status(str(order.order_id), PLAYER, token=token)) for _ in range(1000)]
    tracking = tracking_of(service)
    await eventually(lambda: all(r.updates for r in readers), timeout_s=20.0, what="every stream's first update")
    assert len(tracking) == 1
    (tracker,) = tracking.trackers()
    assert tracker.watchers == 1000
    before, started = rig.sim.get_order_requests(order.order_id), time.monotonic()
    await asyncio.sleep(1.0)
    polls, elapsed = rig.sim.get_order_requests(order.order_id) - before, time.monotonic() - started
    assert polls <= elapsed / 0.1 + 1
    await rig.sim.set_status(order.order_id, "paid", channels=("polling",))
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    results = await asyncio.gather(*(r.end() for r in readers))
    for updates in results:
        assert (updates[0].status, updates[0].source) == (NEW, POLLING)
        assert statuses(updates)[-1] == DONE
        assert statuses(updates) in ([NEW, PAID, DONE], [NEW, DONE])  # paid may fall between two polls
    assert len({tuple(statuses(updates)) for updates in results}) == 1  # everyone got the same updates
    assert len(tracking) == 0


async def test_a_watcher_that_cancels_leaves_nothing_running(rig: Rig) -> None:
    """Cancelled streams (socket, then polling) leave no task, tracker, socket or watcher behind."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    # Warm up the client's channel and the service's lazily created parts (HTTP session, feed).
    await client.check_entitlement(PLAYER, "gold")
    await eventually(lambda: tracking_of(service).feed.subscribed.is_set(), what="the feed")
    baseline = set(asyncio.all_tasks())

    stream = client.get_order_status(str(order.order_id), PLAYER, token=token)
    reader = Reader(stream)
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket", "polling"))
    await reader.count(1)
    stream.cancel()
    await reader.end()
    await eventually(lambda: rig.sim.websocket_connections == 0, what="the socket to close")
    await eventually(lambda: len(tracking_of(service)) == 0, what="the tracker to stop")

    # Polling this time: the socket is refused, the tracker falls back, then the stream is cancelled.
    await rig.sim.break_websockets(refuse_for_s=30.0)
    stream = client.get_order_status(str(order.order_id), PLAYER, token=token)
    reader = Reader(stream)
    await eventually(lambda: rig.sim.get_order_requests(order.order_id) >= 2, timeout_s=10, what="polling")
    stream.cancel()
    await reader.end()
    polls = rig.sim.get_order_requests(order.order_id)

    def leftovers() -> set[asyncio.Task[Any]]:
        return {
            task
            for task in asyncio.all_tasks() - baseline
            if task is not asyncio.current_task()
            and not task.done()
            and getattr(task.get_coro(), "__qualname__", "") not in IDLE_INFRASTRUCTURE
        }

    with contextlib.suppress(AssertionError):
        await eventually(lambda: not leftovers(), what="every task of the streams to end")
    assert not leftovers()
    assert len(tracking_of(service)) == 0
    assert sample(service, "entitlements_order_watchers") == 0
    assert sample(service, "entitlements_order_trackers") == 0
    assert sample(service, "entitlements_order_sockets") == 0
    await asyncio.sleep(0.3)
    assert rig.sim.get_order_requests(order.order_id) == polls


async def test_a_webhook_applied_on_one_replica_reaches_a_stream_on_another(rig: Rig, tmp_path: Path) -> None:
    """Replica A (consuming) applies the order_paid; a stream held by replica B, another process, gets it."""
    await rig.service()  # replica A: consumes the webhook events
    replica_b = await start_replica_process(rig.redis_server, tmp_path / "replica-b.log")
    try:
        async with AsyncEntitlementsClient(replica_b.target, api_key=READER_KEY) as client:
            await eventually(lambda: serving(client, PLAYER), timeout_s=20.0, what="replica B to serve")
            order = rig.sim.create_order(PLAYER, ITEMS)
            reader = Reader(client.get_order_status(str(order.order_id), PLAYER))
            await asyncio.sleep(0.3)  # the stream is open on B
            await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
            updates = await reader.end()
        assert summary(updates) == [(DONE, WEBHOOK, True)]
    finally:
        await replica_b.stop()


async def test_the_webhook_feed_rereads_what_it_missed_after_losing_redis(rig: Rig) -> None:
    """The feed's Redis connection is killed: it subscribes again and re-reads the hash of every followed order."""
    service = await rig.service(consumer=False)
    client = await rig.client(service)
    feed = tracking_of(service).feed
    await eventually(feed.subscribed.is_set, what="the subscription")
    reader = Reader(client.get_order_status("777", PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 1, what="the tracker")
    # The re-read after the first subscription is over (it found nothing): the state written below can reach the
    # stream only through the re-read after the next one.
    await eventually(lambda: PROJECT in feed.projects and not feed._resync_tasks, what="the first re-read")
    redis = rig.redis_server.client()
    try:
        # A state written while nobody announces it (as if its publication was lost), then the connection drops.
        fields: dict[FieldT, EncodableT] = {"status": "paid", "granted": "1", "updated_at_ms": "1767225600000"}
        await redis.hset(UserKeys(PROJECT, PLAYER).order("777"), mapping=fields)
        assert sum(await on_every_primary(redis, "CLIENT", "KILL", "TYPE", "pubsub")) >= 1
    finally:
        await redis.aclose()
    updates = await reader.end()
    assert summary(updates) == [(DONE, WEBHOOK, True)]
    assert updates[0].observed_at.ToMilliseconds() == 1767225600000
    assert sample(service, "entitlements_order_feed_subscribes_total") >= 2


# --- limits and errors ------------------------------------------------------------------------------------------


async def test_max_wait_ends_the_stream_with_a_timed_out_message(rig: Rig) -> None:
    """After max_wait the stream ends OK with a last message repeating the last status, timed_out set."""
    service = await rig.service(ws_enabled=False)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    started = time.monotonic()
    updates = await collect(
        client.get_order_status(str(order.order_id), PLAYER, token=token, max_wait=timedelta(seconds=0.5))
    )
    assert 0.45 < time.monotonic() - started < 3.0
    assert [(u.status, u.timed_out) for u in updates] == [(NEW, False), (NEW, True)]
    assert len(tracking_of(service)) == 0

    # Nothing known at all (no token, nothing stored): UNSPECIFIED; and the configured default applies.
    service = await rig.service(max_wait_s=0.3)
    client = await rig.client(service)
    updates = await collect(client.get_order_status("424242", PLAYER))
    assert [(u.status, u.timed_out) for u in updates] == [(pb.ORDER_STATUS_UNSPECIFIED, True)]


async def test_each_stream_has_its_own_max_wait(rig: Rig) -> None:
    """Two streams on one tracker: the shorter max_wait ends only its own stream."""
    service = await rig.service(ws_enabled=False, grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    long = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    short = await collect(
        client.get_order_status(str(order.order_id), PLAYER, token=token, max_wait=timedelta(seconds=0.3))
    )
    assert short[-1].timed_out
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    assert summary(await long.end()) == [(NEW, POLLING, False), (DONE, POLLING, False)]


async def test_a_token_xsolla_rejects_ends_the_stream_unauthenticated(rig: Rig) -> None:
    """Get order answers 401 (the socket refuses the token too, which alone is not fatal): UNAUTHENTICATED."""
    service = await rig.service()
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    rig.sim.revoke_token(token)
    order = rig.sim.create_order(PLAYER, ITEMS)
    with pytest.raises(AuthenticationError, match="Xsolla rejected the token"):
        await collect(client.get_order_status(str(order.order_id), PLAYER, token=token))
    assert rig.sim.websocket_stats.connect_errors_total >= 1
    assert len(tracking_of(service)) == 0


async def test_an_order_xsolla_does_not_know_ends_the_stream_not_found(rig: Rig) -> None:
    """Get order answers 404: NOT_FOUND, naming the order and the project."""
    service = await rig.service(ws_enabled=False)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    with pytest.raises(NotFoundError, match=f"Xsolla does not know order 987654 in project {PROJECT}"):
        await collect(client.get_order_status("987654", PLAYER, token=token))


async def test_a_refused_token_ends_only_the_streams_that_gave_it(rig: Rig) -> None:
    """On one order, a stream without a token keeps following webhooks when another stream's token is refused."""
    service = await rig.service(ws_enabled=False)
    client = await rig.client(service)
    order = rig.sim.create_order(PLAYER, ITEMS)
    quiet = Reader(client.get_order_status(str(order.order_id), PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 1, what="the tracker")
    with pytest.raises(AuthenticationError):
        await collect(client.get_order_status(str(order.order_id), PLAYER, token="not-a-token"))
    assert not quiet.task.done()
    await rig.sim.set_status(order.order_id, "paid", channels=("webhook",))
    assert summary(await quiet.end()) == [(DONE, WEBHOOK, True)]


async def test_the_tracker_cap_refuses_new_orders_but_not_new_watchers(rig: Rig) -> None:
    """At the cap a stream on a new order is RESOURCE_EXHAUSTED; one on a followed order is served."""
    service = await rig.service(max_trackers=2, streams_per_key=10)  # the key's own cap would be 1
    client = await rig.client(service)
    first = Reader(client.get_order_status("1001", PLAYER))
    second = Reader(client.get_order_status("1002", PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 2, what="two trackers")
    with pytest.raises(ResourceExhaustedError, match="maximum of 2 orders"):
        await collect(client.get_order_status("1003", PLAYER))
    joined = client.get_order_status("1001", PLAYER)
    third = Reader(joined)
    (followed,) = [t for t in tracking_of(service).trackers() if t.order_id == "1001"]
    await eventually(lambda: followed.watchers == 2, what="the join")
    assert sample(service, "entitlements_order_trackers_refused_total") == 1
    for reader in (first, second, third):
        reader.task.cancel()
    joined.cancel()
    await eventually(lambda: len(tracking_of(service)) == 0, what="the trackers to stop")
    Reader(client.get_order_status("1003", PLAYER))
    await eventually(lambda: len(tracking_of(service)) == 1, what="room again")


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"order_id": ""}, "order_id"),
        ({"user_id": "a\x00b"}, "user_id"),
        ({"project_id": -1}, "project_id"),
        ({"max_wait": timedelta(hours=2)}, "max_wait"),
        ({"max_wait": timedelta(seconds=-1)}, "max_wait"),
        ({"token": "tok\nen"}, "token"),
    ],
)
async def test_bad_arguments_are_invalid_argument(rig: Rig, kwargs: dict[str, Any], field: str) -> None:
    """Malformed requests are INVALID_ARGUMENT naming the field, before anything is followed."""
    service = await rig.service()
    client = await rig.client(service)
    request: dict[str, Any] = {"order_id": "1", "user_id": PLAYER, **kwargs}
    with pytest.raises(InvalidArgumentError, match=field):
        await collect(client.get_order_status(request.pop("order_id"), request.pop("user_id"), **request))
    assert len(tracking_of(service)) == 0


async def test_a_stream_needs_a_project(rig: Rig) -> None:
    """No project configured and none given: INVALID_ARGUMENT naming project_id, with a token or without, and nothing
    followed; a stream naming its project is followed."""
    service = await rig.service(project_id=0)
    client = await rig.client(service)
    for token in ("some-token", ""):
        with pytest.raises(InvalidArgumentError, match=r"project_id: is 0, .* no default project; set project_id"):
            await collect(client.get_order_status("1", PLAYER, token=token))
    assert len(tracking_of(service)) == 0
    updates = await collect(client.get_order_status("1", PLAYER, project_id=PROJECT, max_wait=timedelta(seconds=0.2)))
    assert updates[-1].timed_out


async def test_streams_need_the_read_scope(rig: Rig, client_factory: ClientFactory) -> None:
    """GetOrderStatus is authenticated like every RPC: no key is UNAUTHENTICATED."""
    service = await rig.service()
    anonymous = await client_factory(service, api_key=None)
    with pytest.raises(AuthenticationError, match="API key"):
        await collect(anonymous.get_order_status("1", PLAYER))


async def test_stopping_the_service_ends_streams_unavailable(rig: Rig) -> None:
    """A replica shutting down ends its streams UNAVAILABLE (clients reopen them elsewhere) and closes its sockets."""
    service = await rig.service()
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    reader = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket",))
    await reader.count(1)  # a stream that sent nothing yet would be retried by the client's policy instead
    await service.stop(grace_s=1.0)
    with pytest.raises(UnavailableError, match="shutting down"):
        await reader.end()
    await eventually(lambda: rig.sim.websocket_connections == 0, what="the socket to close")


# --- the rules, without a server ----------------------------------------------------------------------------------


def test_statuses_only_move_forward_and_the_grant_is_news_once() -> None:
    """OrderProgress: lower or equal statuses are dropped, terminal ones absorb, the grant flips once."""
    progress = OrderProgress()
    assert progress.offer(PAID, WEBSOCKET, 1) == Observation(PAID, WEBSOCKET, 1, False)
    assert progress.offer(NEW, POLLING, 2) is None
    assert progress.offer(PAID, POLLING, 3) is None
    assert progress.offer(PAID, WEBHOOK, 4, granted=True) == Observation(PAID, WEBHOOK, 4, True)
    assert progress.offer(PAID, WEBHOOK, 5, granted=True) is None
    assert progress.offer(DONE, POLLING, 6) == Observation(DONE, POLLING, 6, True)  # the grant is remembered
    assert progress.offer(CANCELED, WEBHOOK, 7, granted=False) is None  # DONE is terminal
    canceled = OrderProgress()
    assert canceled.offer(CANCELED, STORED, 1, granted=False) is not None
    assert canceled.offer(PAID, WEBHOOK, 2, granted=True) is None
    assert canceled.offer(pb.ORDER_STATUS_EXPIRED, POLLING, 3) is None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("new", NEW),
        ("PAID", PAID),
        (" Done ", DONE),
        ("canceled", CANCELED),
        ("cancelled", CANCELED),
        ("expired", pb.ORDER_STATUS_EXPIRED),
    ],
)
def test_xsolla_status_strings_map_case_insensitively(text: str, expected: int) -> None:
    """Xsolla's status strings map to OrderStatus whatever their case."""
    assert xsolla_status(text) == ReportedStatus(expected, text)


@pytest.mark.parametrize("text", ["", "refunded", "pending"])
def test_unknown_status_strings_map_to_nothing(text: str) -> None:
    """Anything else is not a status (the tracker logs and ignores it)."""
    assert xsolla_status(text) == ReportedStatus(None, text)


def test_tracking_settings_come_from_the_environment() -> None:
    """Every ENTITLEMENTS_ tracking variable is read, with its unit, and checked."""
    env = {
        "ENTITLEMENTS_XSOLLA_PROJECT_ID": "308077",
        "ENTITLEMENTS_XSOLLA_STORE_API": "https://store.example/api/",
        "ENTITLEMENTS_XSOLLA_WS_URL": "wss://ws.example/connection/websocket",
        "ENTITLEMENTS_XSOLLA_WS_ENABLED": "false",
        "ENTITLEMENTS_ORDER_POLL_INTERVAL_S": "1.5",
        "ENTITLEMENTS_ORDER_WS_SILENCE_S": "60",
        "ENTITLEMENTS_ORDER_MAX_WAIT_S": "3600",
        "ENTITLEMENTS_MAX_ORDER_TRACKERS": "5",
        "ENTITLEMENTS_ORDER_GRANT_WAIT_S": "0",
        "ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS": "5000",
    }
    settings = Settings.from_env(env)
    tracking, xsolla = settings.tracking, OrderSettings.from_env(env)
    assert (xsolla.project_id, xsolla.store_api, xsolla.ws_enabled) == (308077, "https://store.example/api", False)
    assert xsolla.ws_url == "wss://ws.example/connection/websocket"
    assert (tracking.poll_interval_s, tracking.ws_silence_s, tracking.max_wait_s) == (1.5, 60.0, 3600.0)
    assert (tracking.max_trackers, tracking.grant_wait_s) == (5, 0.0)
    assert (settings.grpc_max_pending_requests, settings.grpc_max_pending_requests_hard_limit) == (5000, 10000)
    defaults = Settings.from_env({}).tracking
    assert defaults == TrackingSettings()
    assert (defaults.poll_interval_s, defaults.ws_silence_s, defaults.max_wait_s) == (3.0, 300.0, 600.0)
    xsolla_defaults = OrderSettings.from_env({})
    assert xsolla_defaults == OrderSettings()
    assert xsolla_defaults.ws_url == "wss://ws-store.xsolla.com/connection/websocket"
    assert xsolla_defaults.store_api == "https://store.xsolla.com/api"


@pytest.mark.parametrize(
    "env",
    [
        {"ENTITLEMENTS_ORDER_MAX_WAIT_S": "3601"},
        {"ENTITLEMENTS_ORDER_POLL_INTERVAL_S": "nan"},
        {"ENTITLEMENTS_XSOLLA_WS_URL": "https://not-a-socket.example"},
        {"ENTITLEMENTS_XSOLLA_STORE_API": "store.xsolla.com"},
        {"ENTITLEMENTS_MAX_ORDER_TRACKERS": "0"},
        {"ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS": "5000", "ENTITLEMENTS_GRPC_MAX_PENDING_REQUESTS_HARD_LIMIT": "10"},
    ],
)
def test_bad_tracking_settings_are_refused(env: dict[str, str]) -> None:
    """Out-of-range or malformed tracking variables stop the service at start, naming the variable."""

    def read() -> None:
        Settings.from_env(env)
        OrderSettings.from_env(env)

    with pytest.raises(CoreConfigError, match=next(iter(env)) if len(env) == 1 else "HARD_LIMIT"):
        read()


# --- helpers ----------------------------------------------------------------------------------------------------


async def stored_status(rig: Rig, order_id: int, status: str = "paid") -> bool:
    redis = rig.redis_server.client()
    try:
        state = await read_order_state(redis, (PROJECT, PLAYER, str(order_id)))
    finally:
        await redis.aclose()
    return state is not None and state.status == status


async def start_replica_process(store: StoreUnderTest, log_file: Path) -> ServiceProcess:
    """A service process on the same Redis that does not consume (it only serves gRPC)."""
    return await start_service_process(
        store,
        log_file,
        ENTITLEMENTS_EVENT_PARTITIONS=str(PARTITIONS),
        ENTITLEMENTS_XSOLLA_PROJECT_ID=str(PROJECT),
    )
