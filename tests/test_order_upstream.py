"""One upstream per order across replicas: two services on one Redis (the single server and the cluster) follow an
order for their streams; only the holder of the order's lease follows it at the Xsolla simulator (its WebSocket,
or Get order), the other hears it through the order-status channel, and takes the order over when the holder
stops following it or dies."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from core.projects import Projects
from entitlements import AsyncEntitlementsClient
from entitlements.v1 import entitlements_pb2 as pb
from providers.xsolla import OrderSettings
from server.app import Service
from server.config import ConsumerSettings
from server.reconcile.settings import ReconcileSettings
from server.tracking import OrderTracking
from server.tracking.settings import TrackingSettings
from tests.helpers.processes import ServiceProcess, serving, start_service_process
from tests.helpers.services import READER_KEY, ClientFactory, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory

PROJECT = 12345
PLAYER = "player-1"
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency"}]
NEW, PAID, DONE = pb.ORDER_STATUS_NEW, pb.ORDER_STATUS_PAID, pb.ORDER_STATUS_DONE
WEBSOCKET, POLLING = pb.ORDER_STATUS_SOURCE_WEBSOCKET, pb.ORDER_STATUS_SOURCE_POLLING
LEASE_S = 1.5

Update = tuple[int, int]  # (status, source)


@dataclass
class Rig:
    """The simulator, the test's Redis, and services following orders at the simulator."""

    sim: XsollaSimulator
    store: StoreUnderTest
    start_service: ServiceFactory
    client_factory: ClientFactory

    def xsolla(self, **overrides: Any) -> OrderSettings:
        fields = {"ws_connect_timeout_s": 2.0, "http_timeout_s": 2.0, **overrides}
        return OrderSettings(project_id=PROJECT, store_api=self.sim.store_api_url, ws_url=self.sim.ws_url, **fields)

    async def service(self, **xsolla: Any) -> Service:
        """A replica that follows orders (lease `LEASE_S`, polling every 0.1 s) and consumes nothing."""
        tracking = TrackingSettings(
            ws_silence_s=30.0, poll_interval_s=0.1, max_wait_s=60.0, grant_wait_s=0.0, lease_s=LEASE_S
        )
        return await self.start_service(
            **self.store.settings,
            projects=Projects.single(PROJECT),
            tracking=tracking,
            xsolla=self.xsolla(**xsolla),
            reconcile=ReconcileSettings(tracker_enabled=False, sweeper_enabled=False),
            consumer=ConsumerSettings(enabled=False),
        )


@pytest.fixture
async def rig(
    simulators: SimulatorFactory,
    redis_server: StoreUnderTest,
    service_factory: ServiceFactory,
    client_factory: ClientFactory,
) -> Rig:
    """The simulator (no webhooks: these streams are fed by Xsolla's socket and Get order) on the test's Redis."""
    sim = await simulators(project_id=PROJECT)
    return Rig(sim, redis_server, service_factory, client_factory)


class Reader:
    """Reads a stream in the background."""

    def __init__(self, stream: AsyncIterator[pb.OrderStatusUpdate]) -> None:
        self.updates: list[Update] = []
        self.error: BaseException | None = None
        self.task = asyncio.get_running_loop().create_task(self._read(stream))

    async def _read(self, stream: AsyncIterator[pb.OrderStatusUpdate]) -> None:
        try:
            async for update in stream:
                self.updates.append((update.status, update.source))
        except Exception as exc:
            self.error = exc

    async def count(self, n: int, timeout_s: float = 15.0) -> None:
        await eventually(lambda: len(self.updates) >= n or self.task.done(), timeout_s=timeout_s, what=f"{n} updates")
        assert len(self.updates) >= n, (self.updates, self.error)

    async def end(self, timeout_s: float = 20.0) -> list[Update]:
        async with asyncio.timeout(timeout_s):
            await self.task
        if self.error is not None:
            raise self.error
        return self.updates


def following(service: Service, via: str) -> float:
    return sample(service, "entitlements_order_following", via=via)


def get_orders(service: Service) -> float:
    return sample(service, "entitlements_xsolla_requests_total", operation="get_order", result="ok")


def tracking_of(service: Service) -> OrderTracking:
    assert service.tracking is not None
    return service.tracking


async def open_streams(rig: Rig, first: Service, second: Service, order_id: int) -> tuple[Reader, Reader]:
    """A stream on `first` (which takes the order's lease), then one on `second` (which finds it held)."""
    token = rig.sim.issue_token(PLAYER)
    holder = Reader((await rig.client_factory(first)).get_order_status(str(order_id), PLAYER, token=token))
    await eventually(lambda: following(first, "provider") == 1, what="the first replica to hold the lease")
    other = Reader((await rig.client_factory(second)).get_order_status(str(order_id), PLAYER, token=token))
    await eventually(lambda: following(second, "channel") == 1, what="the second replica to find it held")
    return holder, other


async def test_two_replicas_share_one_websocket_for_an_order(rig: Rig) -> None:
    """Streams on two replicas: one socket at Xsolla, no Get order, and both streams get every status once, in
    order."""
    first, second = await rig.service(), await rig.service()
    order = rig.sim.create_order(PLAYER, ITEMS)
    holder, other = await open_streams(rig, first, second, order.order_id)
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the holder's socket")
    for status in ("new", "paid", "done"):
        await rig.sim.set_status(order.order_id, status, channels=("websocket",))
    expected = [(NEW, WEBSOCKET), (PAID, WEBSOCKET), (DONE, WEBSOCKET)]
    assert await holder.end() == expected
    assert await other.end() == expected
    assert rig.sim.websocket_connects_total == 1
    assert rig.sim.get_order_requests(order.order_id) == 0
    assert sample(second, "entitlements_order_sockets") == 0


async def test_two_replicas_share_one_poller_for_an_order(rig: Rig) -> None:
    """With polling only, only the lease holder asks Get order; the other replica asks nothing and its stream gets
    the same statuses, once each."""
    first, second = await rig.service(ws_enabled=False), await rig.service(ws_enabled=False)
    order = rig.sim.create_order(PLAYER, ITEMS)
    holder, other = await open_streams(rig, first, second, order.order_id)
    await holder.count(1)
    await asyncio.sleep(0.5)  # several poll intervals with both streams open
    await rig.sim.set_status(order.order_id, "paid", channels=("polling",))
    await other.count(2)
    await rig.sim.set_status(order.order_id, "done", channels=("polling",))
    expected = [(NEW, POLLING), (PAID, POLLING), (DONE, POLLING)]
    assert await holder.end() == expected
    assert await other.end() == expected
    assert get_orders(first) >= 3
    assert get_orders(second) == 0
    assert rig.sim.get_order_requests(order.order_id) == get_orders(first)


async def test_the_holders_last_stream_closing_hands_the_order_over(rig: Rig) -> None:
    """The holder's only stream closes: it releases the lease, the other replica takes it within a try interval
    and its stream goes on to DONE from its own socket, without a gap or a repeat."""
    first, second = await rig.service(), await rig.service()
    order = rig.sim.create_order(PLAYER, ITEMS)
    holder, other = await open_streams(rig, first, second, order.order_id)
    await rig.sim.set_status(order.order_id, "new", channels=("websocket",))
    await other.count(1)
    holder.task.cancel()
    await eventually(lambda: len(tracking_of(first)) == 0, what="the holder's tracker to stop")
    released_at = time.monotonic()
    await rig.sim.set_status(order.order_id, "paid", channels=("websocket", "polling"))  # nobody follows it now
    await eventually(lambda: following(second, "provider") == 1, timeout_s=15.0, what="the takeover")
    took_s = time.monotonic() - released_at
    await other.count(2)  # PAID, from the new holder's first read (its socket's history)
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    assert await other.end() == [(NEW, WEBSOCKET), (PAID, WEBSOCKET), (DONE, WEBSOCKET)]
    assert sample(second, "entitlements_order_lease_takeovers_total") == 1
    print(f"lease released -> taken over in {took_s:.2f} s (try interval at most {LEASE_S / 3:.2f} s)")
    assert took_s < LEASE_S + 5.0  # generous: the bound is a try interval; the machine is shared


async def test_a_crashed_holder_is_taken_over_when_its_lease_expires(rig: Rig, tmp_path: Path) -> None:
    """The holder is a `python -m server` process killed with SIGKILL: its lease expires, the other replica takes
    the order over within the lease plus a try interval, and its stream reaches DONE with no gap and no repeat."""
    survivor = await rig.service()
    crashing = await start_replica_process(rig, tmp_path / "holder.log")
    try:
        order = rig.sim.create_order(PLAYER, ITEMS)
        token = rig.sim.issue_token(PLAYER)
        async with AsyncEntitlementsClient(crashing.target, api_key=READER_KEY) as client:
            await eventually(lambda: serving(client, PLAYER), timeout_s=30.0, what="the holder process to serve")
            on_holder = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
            await eventually(lambda: rig.sim.websocket_connections == 1, timeout_s=15.0, what="the holder's socket")
            other = Reader(
                (await rig.client_factory(survivor)).get_order_status(str(order.order_id), PLAYER, token=token)
            )
            await eventually(lambda: following(survivor, "channel") == 1, what="the survivor to find the lease held")
            await rig.sim.set_status(order.order_id, "new", channels=("websocket",))
            await other.count(1)
            await crashing.kill()
            killed_at = time.monotonic()
            # Learned by nobody: the holder is gone, its lease not expired yet.
            await rig.sim.set_status(order.order_id, "paid", channels=("websocket", "polling"))
            await eventually(lambda: following(survivor, "provider") == 1, timeout_s=20.0, what="the takeover")
            took_s = time.monotonic() - killed_at
            await other.count(2)  # PAID, from the new holder's first read (its socket's history)
            await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
            assert await other.end() == [(NEW, WEBSOCKET), (PAID, WEBSOCKET), (DONE, WEBSOCKET)]
            on_holder.task.cancel()
        assert sample(survivor, "entitlements_order_lease_takeovers_total") == 1
        bound_s = LEASE_S + LEASE_S / 3
        print(f"holder killed -> taken over in {took_s:.2f} s (bound: lease + try interval = {bound_s:.2f} s)")
        assert took_s < bound_s + 5.0  # generous: the machine is shared
    finally:
        await crashing.stop()


async def test_a_late_replica_starts_from_what_the_holder_announced(rig: Rig) -> None:
    """A stream opened on another replica after the holder learned PAID starts from PAID (the order's upstream
    record), then gets DONE once."""
    first, second = await rig.service(), await rig.service()
    order = rig.sim.create_order(PLAYER, ITEMS)
    token = rig.sim.issue_token(PLAYER)
    holder = Reader((await rig.client_factory(first)).get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the holder's socket")
    for status in ("new", "paid"):
        await rig.sim.set_status(order.order_id, status, channels=("websocket",))
    await holder.count(2)
    late = Reader((await rig.client_factory(second)).get_order_status(str(order.order_id), PLAYER, token=token))
    await late.count(1)
    await rig.sim.set_status(order.order_id, "done", channels=("websocket",))
    assert await holder.end() == [(NEW, WEBSOCKET), (PAID, WEBSOCKET), (DONE, WEBSOCKET)]
    assert await late.end() == [(PAID, WEBSOCKET), (DONE, WEBSOCKET)]
    assert rig.sim.websocket_connects_total == 1


# --- a replica in a process of its own -------------------------------------------------------------------------


async def start_replica_process(rig: Rig, log_file: Path) -> ServiceProcess:
    """A service process following orders at the simulator, on the test's Redis, consuming nothing."""
    return await start_service_process(
        rig.store,
        log_file,
        ENTITLEMENTS_RECONCILE_TRACKER="false",
        ENTITLEMENTS_RECONCILE_SWEEPER="false",
        ENTITLEMENTS_XSOLLA_PROJECT_ID=str(PROJECT),
        ENTITLEMENTS_XSOLLA_STORE_API=rig.sim.store_api_url,
        ENTITLEMENTS_XSOLLA_WS_URL=rig.sim.ws_url,
        ENTITLEMENTS_ORDER_POLL_INTERVAL_S="0.1",
        ENTITLEMENTS_TRACKING_LEASE_S=str(LEASE_S),
    )
