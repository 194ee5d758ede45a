"""GetOrderStatus over the HTTP/JSON API as Server-Sent Events, on the real service (real Valkey, single server and
cluster) and, where an order is paid, the Xsolla simulator and the real gateway (`rig`, tests/test_order_status.py)."""

from __future__ import annotations

import asyncio
from typing import Any

import aiohttp
import grpc
import pytest
from google.protobuf import json_format

from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc
from server.app import Service
from server.config import HttpSettings
from server.http_api.sse import CONTENT_TYPE
from server.rpc import ANNOUNCE_ACCEPTANCE, STREAM_ACCEPTED
from server.tracking import OrderTracking
from server.tracking.settings import TrackingSettings
from tests.helpers.http_api import Event, bearer, call, events, http_base
from tests.helpers.services import READER_KEY, ServiceFactory, sample
from tests.helpers.stores import StoreUnderTest
from tests.helpers.waiting import eventually
from tests.test_order_status import ITEMS, PLAYER, Reader, Rig, rig  # noqa: F401  # the simulator rig fixture

STATUS_PATH = "/v1/orders:status"


class EventReader:
    """Reads an event stream in the background, so a test can act while events arrive."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.events: list[Event] = []
        self.task = asyncio.get_running_loop().create_task(self._read())

    async def _read(self) -> None:
        async for item in events(self.response):
            self.events.append(item)

    def named(self, name: str) -> list[Any]:
        return [e.data for e in self.events if e.name == name]

    async def end(self, timeout_s: float = 20.0) -> list[Event]:
        async with asyncio.timeout(timeout_s):
            await self.task
        return [e for e in self.events if e.name != "comment"]


async def open_stream(
    http: aiohttp.ClientSession, service: Service, body: dict[str, Any], key: str | None = READER_KEY
) -> aiohttp.ClientResponse:
    response = await http.post(http_base(service) + STATUS_PATH, json=body, headers=bearer(key))
    assert response.status == 200, await response.text()
    assert response.content_type == CONTENT_TYPE
    assert response.headers["Cache-Control"].startswith("no-cache")
    return response


def tracking_of(service: Service) -> OrderTracking:
    assert service.tracking is not None
    return service.tracking


@pytest.fixture
async def stream_service(service_factory: ServiceFactory, redis_server: StoreUnderTest) -> Service:
    """A service whose streams send a keepalive comment every 0.2 s, following orders by webhooks only (no token)."""
    return await service_factory(
        **redis_server.settings,
        http=HttpSettings(port=0, sse_heartbeat_s=0.2),
        tracking=TrackingSettings(max_trackers=2, streams_per_key=10),
    )


async def test_a_stream_follows_the_order_to_done_as_grpc_does(rig: Rig, http: aiohttp.ClientSession) -> None:  # noqa: F811
    """While the simulator pays, the event stream carries new, paid, done (the updates a gRPC stream on the same
    order gets, field for field), then `end`."""
    service = await rig.service(grant_wait_s=0)
    client = await rig.client(service)
    token = rig.sim.issue_token(PLAYER)
    order = rig.sim.create_order(PLAYER, ITEMS)
    body = {"orderId": str(order.order_id), "userId": PLAYER, "token": token}
    reader = EventReader(await open_stream(http, service, body))
    over_grpc = Reader(client.get_order_status(str(order.order_id), PLAYER, token=token))
    await eventually(lambda: rig.sim.websocket_connections == 1, what="the socket")
    (tracker,) = tracking_of(service).trackers()
    await eventually(lambda: tracker.watchers == 2, what="both streams")
    for status in ("new", "paid", "done"):
        await rig.sim.set_status(order.order_id, status, channels=("websocket",))
    got = await reader.end()
    assert [e.name for e in got] == ["update", "update", "update", "end"]
    assert [e.data["status"] for e in got[:3]] == ["ORDER_STATUS_NEW", "ORDER_STATUS_PAID", "ORDER_STATUS_DONE"]
    assert got[-1].data == {}
    assert [e.data for e in got[:3]] == [json_format.MessageToDict(u) for u in await over_grpc.end()]
    await eventually(lambda: len(tracking_of(service)) == 0, what="the tracker to stop")


async def test_refusals_before_the_stream_starts_are_plain_json(
    stream_service: Service, http: aiohttp.ClientSession
) -> None:
    """No key, a bad argument, the replica's cap: the JSON Status with its HTTP status, no event stream."""
    url = http_base(stream_service) + STATUS_PATH
    request = {"orderId": "1", "userId": PLAYER}
    no_key = await call(http, "POST", url, None, json=request)
    assert (no_key.status, no_key.body["code"], no_key.headers["WWW-Authenticate"]) == (401, 16, "Bearer")
    bad = await call(http, "POST", url, READER_KEY, json={**request, "maxWait": "7200s"})
    assert (bad.status, bad.body["code"]) == (400, 3)
    assert "max_wait" in bad.body["message"]
    streams = [await open_stream(http, stream_service, {**request, "orderId": str(n)}) for n in (1, 2)]
    full = await call(http, "POST", url, READER_KEY, json={**request, "orderId": "3"})
    assert (full.status, full.body["code"]) == (429, 8)
    assert "maximum of 2 orders" in full.body["message"]
    for response in streams:
        response.close()
    await eventually(lambda: len(tracking_of(stream_service)) == 0, what="the trackers to stop")


async def test_keepalives_then_the_timed_out_update_then_end(
    stream_service: Service, http: aiohttp.ClientSession
) -> None:
    """An idle stream gets `: keepalive` comments; after max_wait, the timed_out update and `end`."""
    response = await open_stream(http, stream_service, {"orderId": "77", "userId": PLAYER, "maxWait": "1s"})
    reader = EventReader(response)
    got = await reader.end()
    assert reader.named("comment").count("keepalive") >= 3
    assert [(e.name, e.data) for e in got] == [
        ("update", {"orderId": "77", "timedOut": True}),
        ("end", {}),
    ]


async def test_an_error_after_the_stream_started_is_an_error_event(rig: Rig, http: aiohttp.ClientSession) -> None:  # noqa: F811
    """Xsolla does not know the order (found by polling after the stream started): `event: error` with NOT_FOUND."""
    service = await rig.service(ws_enabled=False)
    token = rig.sim.issue_token(PLAYER)
    reader = EventReader(await open_stream(http, service, {"orderId": "987654", "userId": PLAYER, "token": token}))
    got = await reader.end()
    assert [e.name for e in got] == ["error"]
    assert got[0].data["code"] == 5
    assert "does not know order 987654" in got[0].data["message"]
    assert got[0].data["details"] == []


async def test_a_replica_shutting_down_ends_its_streams_unavailable(
    stream_service: Service, http: aiohttp.ClientSession
) -> None:
    """Stopping the service ends an open event stream with an `error` event, code 14 (UNAVAILABLE): reopen it."""
    reader = EventReader(await open_stream(http, stream_service, {"orderId": "5", "userId": PLAYER}))
    await eventually(lambda: len(tracking_of(stream_service)) == 1, what="the tracker")
    await stream_service.stop(grace_s=2.0)
    got = await reader.end()
    assert [(e.name, e.data["code"]) for e in got] == [("error", 14)]


async def test_a_client_that_goes_away_cancels_the_stream(stream_service: Service, http: aiohttp.ClientSession) -> None:
    """Closing the connection cancels the gRPC call: the watcher and its tracker go, nothing stays open."""
    response = await open_stream(http, stream_service, {"orderId": "9", "userId": PLAYER})
    await eventually(lambda: len(tracking_of(stream_service)) == 1, what="the tracker")
    assert sample(stream_service, "entitlements_http_event_streams") == 1
    response.close()
    await eventually(lambda: len(tracking_of(stream_service)) == 0, what="the tracker to stop")
    await eventually(
        lambda: sample(stream_service, "entitlements_http_event_streams") == 0, what="the stream to be counted closed"
    )
    await eventually(
        lambda: (
            sample(stream_service, "entitlements_rpc_requests_total", method="GetOrderStatus", code="CANCELLED") == 1
        ),
        what="the RPC to end CANCELLED",
    )


async def test_only_a_caller_that_asks_is_told_early_that_its_stream_is_accepted(stream_service: Service) -> None:
    """With ANNOUNCE_ACCEPTANCE the accepted stream's initial metadata comes before any update; without it, gRPC
    callers get it with the first message (so their retry policy can still retry a stream that received nothing)."""
    assert stream_service.endpoints is not None
    request = pb.GetOrderStatusRequest(order_id="11", user_id=PLAYER)
    key = ("authorization", f"Bearer {READER_KEY}")
    async with grpc.aio.insecure_channel(f"127.0.0.1:{stream_service.endpoints.grpc_port}") as channel:
        stub = entitlements_pb2_grpc.EntitlementServiceStub(channel)
        told = stub.GetOrderStatus(request, metadata=(key, ANNOUNCE_ACCEPTANCE))
        async with asyncio.timeout(5):
            assert STREAM_ACCEPTED in tuple(await told.initial_metadata())
        quiet = stub.GetOrderStatus(request, metadata=(key,))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                await quiet.initial_metadata()
        told.cancel()
        quiet.cancel()
