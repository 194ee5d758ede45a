"""`follow_order` of both Python clients: reopening a broken order stream without repeating a status."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from datetime import timedelta
from typing import Any

import grpc
import pytest
from grpc import aio

from entitlements import (
    AsyncEntitlementsClient,
    EntitlementsClient,
    FollowPolicy,
    InvalidArgumentError,
    OrderStatus,
    UnavailableError,
)
from entitlements.v1 import entitlements_pb2 as pb

FAST = FollowPolicy(initial_backoff_s=0.01, max_backoff_s=0.05)
NEW, PAID, DONE = OrderStatus.ORDER_STATUS_NEW, OrderStatus.ORDER_STATUS_PAID, OrderStatus.ORDER_STATUS_DONE


def update(status: pb.OrderStatus.ValueType, granted: bool = False, timed_out: bool = False) -> pb.OrderStatusUpdate:
    return pb.OrderStatusUpdate(order_id="o-1", status=status, entitlements_granted=granted, timed_out=timed_out)


class _Orders:
    """Answers each GetOrderStatus call with the next script: updates, then an optional error (the service's
    other methods are not served)."""

    def __init__(self, scripts: list[tuple[list[pb.OrderStatusUpdate], grpc.StatusCode | None]]) -> None:
        self.scripts = scripts
        self.requests: list[pb.GetOrderStatusRequest] = []

    async def GetOrderStatus(
        self, request: pb.GetOrderStatusRequest, context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.OrderStatusUpdate]:
        self.requests.append(request)
        updates, error = self.scripts.pop(0) if self.scripts else ([], grpc.StatusCode.UNAVAILABLE)
        for item in updates:
            yield item
        if error is not None:
            await context.abort(error, "scripted")


async def _serve(servicer: _Orders) -> tuple[aio.Server, str]:
    server = aio.server()
    handler = grpc.unary_stream_rpc_method_handler(
        servicer.GetOrderStatus,
        request_deserializer=pb.GetOrderStatusRequest.FromString,
        response_serializer=pb.OrderStatusUpdate.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("entitlements.v1.EntitlementService", {"GetOrderStatus": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    return server, f"127.0.0.1:{port}"


async def _follow(
    servicer: _Orders, max_wait: timedelta | None = None
) -> tuple[list[tuple[pb.OrderStatus.ValueType, bool, bool]], int]:
    server, target = await _serve(servicer)
    try:
        async with AsyncEntitlementsClient(target) as client:
            follower = client.follow_order("o-1", "player-1", max_wait=max_wait, policy=FAST)
            seen = [(u.status, u.entitlements_granted, u.timed_out) async for u in follower]
            return seen, follower.opens
    finally:
        await server.stop(None)


async def test_a_broken_stream_is_reopened_and_repeats_are_skipped() -> None:
    """UNAVAILABLE mid-stream: the follower reopens, skips the stored state it already gave, and goes on."""
    servicer = _Orders(
        [
            ([update(NEW), update(PAID)], grpc.StatusCode.UNAVAILABLE),
            ([], grpc.StatusCode.UNAVAILABLE),  # the replica is still down
            ([update(PAID), update(PAID, granted=True), update(DONE, granted=True)], None),
        ]
    )
    seen, opens = await _follow(servicer, max_wait=timedelta(seconds=60))
    assert seen == [(NEW, False, False), (PAID, False, False), (PAID, True, False), (DONE, True, False)]
    # The second call failed before any update, so gRPC's own retry policy made the third within the same open.
    assert (opens, len(servicer.requests)) == (2, 3)
    waits = [request.max_wait.ToTimedelta() for request in servicer.requests]
    assert waits[0] == timedelta(seconds=60)
    assert all(timedelta(seconds=50) < wait < timedelta(seconds=60) for wait in waits[1:]), waits


async def test_the_granted_flag_alone_is_news_but_not_twice() -> None:
    """The same status is delivered again only when entitlements_granted turns true, and only once."""
    servicer = _Orders(
        [
            ([update(PAID, granted=True)], grpc.StatusCode.UNAVAILABLE),
            ([update(PAID, granted=True), update(DONE, granted=True)], None),
        ]
    )
    seen, opens = await _follow(servicer)
    assert seen == [(PAID, True, False), (DONE, True, False)]
    assert opens == 2


async def test_a_stream_the_server_cancelled_is_reopened() -> None:
    """CANCELLED that the follower did not cause (a stopping server cancels calls reaching it) is reopened too."""
    servicer = _Orders([([update(NEW)], grpc.StatusCode.CANCELLED), ([update(NEW), update(DONE, granted=True)], None)])
    seen, opens = await _follow(servicer)
    assert seen == [(NEW, False, False), (DONE, True, False)]
    assert opens == 2


async def test_other_errors_end_the_follower() -> None:
    """An error other than UNAVAILABLE is raised at once, with no reopening."""
    servicer = _Orders([([update(NEW)], grpc.StatusCode.INVALID_ARGUMENT)])
    server, target = await _serve(servicer)
    try:
        async with AsyncEntitlementsClient(target) as client:
            follower = client.follow_order("o-1", "player-1", policy=FAST)
            assert (await anext(follower)).status == NEW
            with pytest.raises(InvalidArgumentError):
                await anext(follower)
            assert follower.opens == 1
    finally:
        await server.stop(None)


async def test_unavailable_past_max_wait_is_raised() -> None:
    """A service that stays down ends the follower with UNAVAILABLE once max_wait has passed."""
    servicer = _Orders([])
    server, target = await _serve(servicer)
    try:
        async with AsyncEntitlementsClient(target, retry_policy=None) as client:
            follower = client.follow_order("o-1", "player-1", max_wait=timedelta(seconds=0.5), policy=FAST)
            with pytest.raises(UnavailableError):
                async for _ in follower:
                    pass
            assert follower.opens >= 3
    finally:
        await server.stop(None)


async def test_the_final_timed_out_message_is_delivered() -> None:
    """A stream that ends on max_wait passes its timed_out message on, even with a status seen before."""
    servicer = _Orders([([update(NEW), update(NEW, timed_out=True)], None)])
    seen, _ = await _follow(servicer)
    assert seen == [(NEW, False, False), (NEW, False, True)]


@pytest.fixture
def threaded_target() -> Iterator[tuple[_Orders, str]]:
    """The scripted server in a thread of its own, for the blocking client."""
    servicer = _Orders(
        [([update(NEW)], grpc.StatusCode.UNAVAILABLE), ([update(NEW), update(DONE, granted=True)], None)]
    )
    loop = asyncio.new_event_loop()
    started = threading.Event()
    holder: dict[str, Any] = {}

    def run() -> None:
        asyncio.set_event_loop(loop)
        holder["server"], holder["target"] = loop.run_until_complete(_serve(servicer))
        started.set()
        loop.run_forever()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    started.wait(10)
    yield servicer, holder["target"]
    asyncio.run_coroutine_threadsafe(holder["server"].stop(None), loop).result(10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(10)
    loop.close()  # its self-pipe sockets, which would otherwise be left to the garbage collector


def test_the_blocking_follower_reopens_too(threaded_target: tuple[_Orders, str]) -> None:
    """EntitlementsClient.follow_order follows the same rules."""
    _, target = threaded_target
    with EntitlementsClient(target) as client:
        follower = client.follow_order("o-1", "player-1", policy=FAST)
        seen = [(u.status, u.entitlements_granted) for u in follower]
    assert seen == [(NEW, False), (DONE, True)]
    assert follower.opens == 2


def test_the_policy_refuses_nonsense() -> None:
    """A backoff that is not positive, or shrinks, is a ValueError."""
    with pytest.raises(ValueError, match="FollowPolicy"):
        FollowPolicy(initial_backoff_s=0)
    with pytest.raises(ValueError, match="FollowPolicy"):
        FollowPolicy(initial_backoff_s=3, max_backoff_s=1)
