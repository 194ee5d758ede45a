"""The Python client against a real grpc.aio server running a scripted servicer (no service, no Redis).

These tests pin down what the client itself promises: status codes become the right exceptions, gRPC's
retries resend the same idempotency key, the API key travels as bearer metadata, deadlines apply, streams
translate errors and cancel their call when closed, and TLS settings reach the channel.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import socket
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from grpc import aio

from entitlements import (
    AsyncEntitlementsClient,
    AuthenticationError,
    CallCancelledError,
    ConflictError,
    DeadlineExceededError,
    EntitlementKind,
    EntitlementsClient,
    EntitlementsError,
    InvalidArgumentError,
    NotFoundError,
    OrderStatus,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryPolicy,
    ServerError,
    TLSConfig,
    UnavailableError,
    UnimplementedError,
)
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc

_Context = aio.ServicerContext[Any, Any]


class _Servicer(pb_grpc.EntitlementServiceServicer):
    """Answers from a script and records what it received; shared with the test through its attributes."""

    def __init__(self) -> None:
        self.requests: defaultdict[str, list[Any]] = defaultdict(list)
        self.metadata: list[list[tuple[str, str | bytes]]] = []
        # Popped one per call (each retry attempt is a call here) before the call answers.
        self.failures: list[tuple[grpc.StatusCode, str]] = []
        self.delay_s = 0.0
        self.entitlements = [pb.Entitlement(user_id="player-1", sku=f"sku-{i}", quantity=1) for i in range(5)]
        self.order_updates: list[pb.OrderStatusUpdate] = []
        self.order_abort: tuple[grpc.StatusCode, str] | None = None
        self.order_hang = False
        # threading.Event: the sync tests run this servicer in another thread's event loop.
        self.order_cancelled = threading.Event()

    async def _begin(self, method: str, request: Any, context: _Context) -> None:
        self.requests[method].append(request)
        self.metadata.append([(key, value) for key, value in context.invocation_metadata() or ()])
        if self.failures:
            code, details = self.failures.pop(0)
            await context.abort(code, details)
        if self.delay_s:
            await asyncio.sleep(self.delay_s)

    async def Grant(self, request: pb.GrantRequest, context: _Context) -> pb.GrantResponse:
        await self._begin("Grant", request, context)
        entitlement = pb.Entitlement(user_id=request.user_id, sku=request.sku, quantity=request.quantity or 1)
        return pb.GrantResponse(entitlement=entitlement)

    async def Revoke(self, request: pb.RevokeRequest, context: _Context) -> pb.RevokeResponse:
        await self._begin("Revoke", request, context)
        return pb.RevokeResponse(revoked=True)

    async def CheckEntitlement(
        self, request: pb.CheckEntitlementRequest, context: _Context
    ) -> pb.CheckEntitlementResponse:
        await self._begin("CheckEntitlement", request, context)
        return pb.CheckEntitlementResponse(active=True)

    async def ListEntitlements(
        self, request: pb.ListEntitlementsRequest, context: _Context
    ) -> pb.ListEntitlementsResponse:
        await self._begin("ListEntitlements", request, context)
        start = int(request.page_token or "0")
        end = start + (request.page_size or 50)
        next_token = str(end) if end < len(self.entitlements) else ""
        return pb.ListEntitlementsResponse(entitlements=self.entitlements[start:end], next_page_token=next_token)

    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: _Context
    ) -> pb.ListSubscriptionsResponse:
        await self._begin("ListSubscriptions", request, context)
        return pb.ListSubscriptionsResponse(subscriptions=[pb.Subscription(id="sub-1")], has_more=True)

    async def ListLedger(self, request: pb.ListLedgerRequest, context: _Context) -> pb.ListLedgerResponse:
        await self._begin("ListLedger", request, context)
        return pb.ListLedgerResponse(entries=[pb.LedgerEntry(entry_id="1-0", summary="granted 1 gold (0 -> 1)")])

    async def CheckEntitlements(
        self, request: pb.CheckEntitlementsRequest, context: _Context
    ) -> pb.CheckEntitlementsResponse:
        await self._begin("CheckEntitlements", request, context)
        return pb.CheckEntitlementsResponse(results=[pb.CheckEntitlementResponse(active=True) for _ in request.checks])

    async def WatchEntitlements(
        self, requests: AsyncIterator[pb.WatchEntitlementsRequest], context: _Context
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        await context.abort(grpc.StatusCode.UNIMPLEMENTED, "not scripted")
        yield pb.WatchEntitlementsResponse()

    async def GetOrderStatus(
        self, request: pb.GetOrderStatusRequest, context: _Context
    ) -> AsyncIterator[pb.OrderStatusUpdate]:
        await self._begin("GetOrderStatus", request, context)
        try:
            for update in self.order_updates:
                yield update
            if self.order_abort is not None:
                await context.abort(*self.order_abort)
            if self.order_hang:
                await asyncio.sleep(30)
        except asyncio.CancelledError:
            self.order_cancelled.set()
            raise


@dataclasses.dataclass
class _Server:
    servicer: _Servicer
    target: str


async def _start_server(
    servicer: _Servicer, credentials: grpc.ServerCredentials | None = None
) -> tuple[aio.Server, int]:
    server = aio.server()
    pb_grpc.add_EntitlementServiceServicer_to_server(servicer, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


def _updates(*statuses: pb.OrderStatus.ValueType) -> list[pb.OrderStatusUpdate]:
    return [pb.OrderStatusUpdate(order_id="order-1", status=status) for status in statuses]


@pytest.fixture
async def transport_server() -> AsyncIterator[_Server]:
    """A grpc.aio server with a fresh scripted servicer on 127.0.0.1, in the test's event loop."""
    servicer = _Servicer()
    server, port = await _start_server(servicer)
    yield _Server(servicer, f"127.0.0.1:{port}")
    await server.stop(grace=None)


@pytest.fixture
async def make_async_client(
    transport_server: _Server,
) -> AsyncIterator[Callable[..., AsyncEntitlementsClient]]:
    """Makes async clients of `transport_server`; closes them at the end."""
    made: list[AsyncEntitlementsClient] = []

    def make(**kwargs: Any) -> AsyncEntitlementsClient:
        client = AsyncEntitlementsClient(transport_server.target, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        await client.close()


@pytest.fixture
def threaded_server() -> Iterator[_Server]:
    """A grpc.aio server with a scripted servicer in a background thread's own event loop (sync tests)."""
    servicer = _Servicer()
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="transport-server", daemon=True)
    thread.start()
    server, port = asyncio.run_coroutine_threadsafe(_start_server(servicer), loop).result(timeout=5)
    yield _Server(servicer, f"127.0.0.1:{port}")
    asyncio.run_coroutine_threadsafe(server.stop(grace=None), loop).result(timeout=5)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=5)
    loop.close()


@pytest.fixture
def make_sync_client(threaded_server: _Server) -> Iterator[Callable[..., EntitlementsClient]]:
    """Makes sync clients of `threaded_server`; closes them at the end."""
    made: list[EntitlementsClient] = []

    def make(**kwargs: Any) -> EntitlementsClient:
        client = EntitlementsClient(threaded_server.target, **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


STATUS_CASES = [
    (grpc.StatusCode.INVALID_ARGUMENT, InvalidArgumentError),
    (grpc.StatusCode.UNAUTHENTICATED, AuthenticationError),
    (grpc.StatusCode.PERMISSION_DENIED, PermissionDeniedError),
    (grpc.StatusCode.NOT_FOUND, NotFoundError),
    (grpc.StatusCode.ALREADY_EXISTS, ConflictError),
    (grpc.StatusCode.FAILED_PRECONDITION, ConflictError),
    (grpc.StatusCode.RESOURCE_EXHAUSTED, ResourceExhaustedError),
    (grpc.StatusCode.UNAVAILABLE, UnavailableError),
    (grpc.StatusCode.DEADLINE_EXCEEDED, DeadlineExceededError),
    (grpc.StatusCode.CANCELLED, CallCancelledError),
    (grpc.StatusCode.UNIMPLEMENTED, UnimplementedError),
    (grpc.StatusCode.INTERNAL, ServerError),
    (grpc.StatusCode.UNKNOWN, ServerError),
    (grpc.StatusCode.DATA_LOSS, ServerError),
    (grpc.StatusCode.ABORTED, ServerError),
    (grpc.StatusCode.OUT_OF_RANGE, ServerError),
]
RETRYABLE_CODES = {
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.RESOURCE_EXHAUSTED,
}


@pytest.mark.parametrize(("code", "error_class"), STATUS_CASES, ids=[code.name for code, _ in STATUS_CASES])
async def test_status_code_maps_to_exception(
    transport_server: _Server,
    make_async_client: Callable[..., AsyncEntitlementsClient],
    code: grpc.StatusCode,
    error_class: type[EntitlementsError],
) -> None:
    """Each status code raises its exception class, carrying the code and the server's message."""
    client = make_async_client(retry_policy=None)
    transport_server.servicer.failures.append((code, f"scripted {code.name}"))

    with pytest.raises(error_class) as caught:
        await client.check_entitlement("player-1", "sku-1")

    error = caught.value
    assert type(error) is error_class
    assert error.code is code
    assert error.details == f"scripted {code.name}"
    assert error.retryable == (code in RETRYABLE_CODES)
    assert isinstance(error.__cause__, grpc.RpcError)


async def test_unavailable_is_retried_with_the_same_idempotency_key(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """UNAVAILABLE twice then success: the grant succeeds and all three attempts carry one idempotency key."""
    client = make_async_client()
    transport_server.servicer.failures += [(grpc.StatusCode.UNAVAILABLE, "store timeout")] * 2

    response = await client.grant("player-1", "gold", quantity=10)

    assert response.entitlement.quantity == 10
    keys = [request.idempotency_key for request in transport_server.servicer.requests["Grant"]]
    assert len(keys) == 3
    assert len(set(keys)) == 1
    assert keys[0]


async def test_retries_stop_after_max_attempts(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """When every attempt is UNAVAILABLE, the call fails with UnavailableError after max_attempts tries."""
    client = make_async_client(retry_policy=RetryPolicy(max_attempts=3, initial_backoff_s=0.01))
    transport_server.servicer.failures += [(grpc.StatusCode.UNAVAILABLE, "store timeout")] * 5

    with pytest.raises(UnavailableError, match="store timeout"):
        await client.revoke("player-1", "gold", idempotency_key="refund-7")

    keys = [request.idempotency_key for request in transport_server.servicer.requests["Revoke"]]
    assert keys == ["refund-7"] * 3


async def test_codes_outside_the_policy_are_not_retried(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """A non-retryable code (ALREADY_EXISTS) is raised after a single attempt."""
    client = make_async_client()
    transport_server.servicer.failures.append((grpc.StatusCode.ALREADY_EXISTS, "key reused"))

    with pytest.raises(ConflictError):
        await client.grant("player-1", "gold", idempotency_key="order-1:1")

    assert len(transport_server.servicer.requests["Grant"]) == 1


async def test_generated_idempotency_keys_are_fresh_per_call(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """Without an explicit key every write gets its own non-empty UUID key; an explicit key is sent as is."""
    client = make_async_client()

    await client.grant("player-1", "gold")
    await client.grant("player-1", "gold")
    await client.revoke("player-1", "gold")
    await client.grant("player-1", "gold", idempotency_key="order-9:line-1")

    requests = transport_server.servicer.requests
    generated = [r.idempotency_key for r in requests["Grant"][:2] + requests["Revoke"]]
    assert len(set(generated)) == 3
    for key in generated:
        assert str(uuid.UUID(key)) == key
    assert requests["Grant"][2].idempotency_key == "order-9:line-1"


async def test_api_key_is_sent_as_bearer_metadata(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """The API key arrives as `authorization: Bearer <key>`; without a key no authorization is sent."""
    await make_async_client(api_key="k-123").check_entitlement("player-1", "sku-1")
    await make_async_client().check_entitlement("player-1", "sku-1")

    with_key, without_key = transport_server.servicer.metadata
    assert ("authorization", "Bearer k-123") in with_key
    assert all(key != "authorization" for key, _ in without_key)


async def test_request_fields_reach_the_server(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """Arguments become request fields: timedelta to Duration, unset optionals stay unset."""
    client = make_async_client()

    await client.grant(
        "player-1",
        "season_pass",
        quantity=2,
        duration=datetime.timedelta(days=30),
        kind=EntitlementKind.ENTITLEMENT_KIND_TIME_LIMITED,
        reason="purchase",
        metadata={"order_id": "42"},
    )
    await client.grant("player-1", "gold")
    await client.list_subscriptions("player-1", limit=5, offset=10, locale="ru", include_inactive=True)

    full, bare = transport_server.servicer.requests["Grant"]
    assert full.quantity == 2
    assert full.duration.ToTimedelta() == datetime.timedelta(days=30)
    assert full.kind == EntitlementKind.ENTITLEMENT_KIND_TIME_LIMITED
    assert full.reason == "purchase"
    assert dict(full.metadata) == {"order_id": "42"}
    assert not bare.HasField("quantity")
    assert not bare.HasField("duration")
    assert bare.kind == EntitlementKind.ENTITLEMENT_KIND_UNSPECIFIED
    (subscriptions,) = transport_server.servicer.requests["ListSubscriptions"]
    assert (subscriptions.limit, subscriptions.offset, subscriptions.locale) == (5, 10, "ru")
    assert subscriptions.include_inactive


async def test_duration_must_be_a_timedelta(
    make_async_client: Callable[..., AsyncEntitlementsClient],
) -> None:
    """A duration that is not a timedelta is a TypeError before anything is sent."""
    client = make_async_client()

    with pytest.raises(TypeError, match="duration"):
        await client.grant("player-1", "season_pass", duration=30)  # type: ignore[arg-type]  # deliberately wrong


async def test_default_deadline_raises_deadline_exceeded(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """A servicer slower than the client's timeout_s makes the call fail with DeadlineExceededError."""
    client = make_async_client(timeout_s=0.2)
    transport_server.servicer.delay_s = 5

    started = time.monotonic()
    with pytest.raises(DeadlineExceededError) as caught:
        await client.check_entitlement("player-1", "sku-1")

    assert time.monotonic() - started < 2
    assert caught.value.retryable


async def test_per_call_timeout_overrides_the_default(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """A call's own timeout_s replaces the client's default deadline."""
    client = make_async_client(timeout_s=30)
    transport_server.servicer.delay_s = 5

    with pytest.raises(DeadlineExceededError):
        await client.list_entitlements("player-1", timeout_s=0.2)


async def test_unreachable_server_raises_unavailable() -> None:
    """A target nobody listens on fails with UnavailableError, not a raw gRPC error."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    async with AsyncEntitlementsClient(f"127.0.0.1:{port}", retry_policy=None, timeout_s=5) as client:
        with pytest.raises(UnavailableError):
            await client.check_entitlement("player-1", "sku-1")


async def test_iter_entitlements_follows_page_tokens(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """iter_entitlements yields every entitlement across pages, passing each next_page_token on."""
    client = make_async_client()

    skus = [e.sku async for e in client.iter_entitlements("player-1", page_size=2)]

    assert skus == [f"sku-{i}" for i in range(5)]
    tokens = [r.page_token for r in transport_server.servicer.requests["ListEntitlements"]]
    assert tokens == ["", "2", "4"]


async def test_closed_client_refuses_calls(make_async_client: Callable[..., AsyncEntitlementsClient]) -> None:
    """After close() a call raises RuntimeError; close() is idempotent."""
    client = make_async_client()
    await client.check_entitlement("player-1", "sku-1")
    await client.close()
    await client.close()

    with pytest.raises(RuntimeError, match="closed"):
        await client.check_entitlement("player-1", "sku-1")


async def test_closing_the_client_fails_calls_in_flight(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """Closing the client under a running call or stream raises CallCancelledError, not CancelledError."""
    client = make_async_client()
    transport_server.servicer.order_hang = True
    stream = client.get_order_status("order-1", "player-1")
    reader = asyncio.create_task(anext(stream))
    transport_server.servicer.delay_s = 5
    call = asyncio.create_task(client.check_entitlement("player-1", "sku-1"))
    await asyncio.sleep(0.1)

    await client.close()

    with pytest.raises(CallCancelledError, match="closed"):
        await call
    with pytest.raises(CallCancelledError, match="closed"):
        await reader


async def test_stream_yields_updates_until_the_server_ends_it(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """get_order_status yields each update and stops when the server ends the stream."""
    client = make_async_client()
    transport_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW, OrderStatus.ORDER_STATUS_DONE)

    updates = [u async for u in client.get_order_status("order-1", "player-1", max_wait=datetime.timedelta(minutes=2))]

    assert [u.status for u in updates] == [OrderStatus.ORDER_STATUS_NEW, OrderStatus.ORDER_STATUS_DONE]
    (request,) = transport_server.servicer.requests["GetOrderStatus"]
    assert request.max_wait.ToTimedelta() == datetime.timedelta(minutes=2)


async def test_stream_abort_mid_stream_is_translated(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """An abort after the first update raises the translated error on the next read, without a retry."""
    client = make_async_client()
    transport_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_PAID)
    transport_server.servicer.order_abort = (grpc.StatusCode.UNAVAILABLE, "lost the store")

    stream = client.get_order_status("order-1", "player-1")
    first = await anext(stream)
    with pytest.raises(UnavailableError, match="lost the store"):
        await anext(stream)

    assert first.status == OrderStatus.ORDER_STATUS_PAID
    assert len(transport_server.servicer.requests["GetOrderStatus"]) == 1


async def test_stream_unimplemented_raises_on_first_read(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """A server answering UNIMPLEMENTED (as the first versions do) raises UnimplementedError when iterated."""
    client = make_async_client()
    transport_server.servicer.failures.append((grpc.StatusCode.UNIMPLEMENTED, "not yet"))

    stream = client.get_order_status("order-1", "player-1")
    with pytest.raises(UnimplementedError):
        await anext(stream)


async def test_closing_stream_early_cancels_the_call(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """aclose() after the first update cancels the server's handler, and iteration then stops cleanly."""
    client = make_async_client()
    transport_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW)
    transport_server.servicer.order_hang = True

    stream = client.get_order_status("order-1", "player-1")
    first = await anext(stream)
    await stream.aclose()

    assert first.status == OrderStatus.ORDER_STATUS_NEW
    assert await asyncio.to_thread(transport_server.servicer.order_cancelled.wait, 5)
    with pytest.raises(StopAsyncIteration):
        await anext(stream)


async def test_leaving_stream_context_cancels_the_call(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """Breaking out of `async with client.get_order_status(...)` cancels the call."""
    client = make_async_client()
    transport_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW)
    transport_server.servicer.order_hang = True

    async with client.get_order_status("order-1", "player-1") as updates:
        async for _update in updates:
            break

    assert await asyncio.to_thread(transport_server.servicer.order_cancelled.wait, 5)


async def test_cancel_from_another_task_ends_iteration(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """cancel() while another task waits for the next update ends that task's loop normally."""
    client = make_async_client()
    transport_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW)
    transport_server.servicer.order_hang = True
    stream = client.get_order_status("order-1", "player-1")
    first_seen = asyncio.Event()

    async def consume() -> list[pb.OrderStatus.ValueType]:
        statuses = []
        async for update in stream:
            statuses.append(update.status)
            first_seen.set()
        return statuses

    consumer = asyncio.create_task(consume())
    await asyncio.wait_for(first_seen.wait(), 5)
    stream.cancel()

    assert await asyncio.wait_for(consumer, 5) == [OrderStatus.ORDER_STATUS_NEW]


async def test_cancelling_the_reading_task_cancels_the_call(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """Cancelling the task that reads the stream raises CancelledError there and cancels the call."""
    client = make_async_client()
    transport_server.servicer.order_hang = True
    stream = client.get_order_status("order-1", "player-1")

    reader = asyncio.create_task(anext(stream))
    await asyncio.sleep(0.1)
    reader.cancel()

    with pytest.raises(asyncio.CancelledError):
        await reader
    assert await asyncio.to_thread(transport_server.servicer.order_cancelled.wait, 5)


def test_sync_client_calls_and_translates_errors(
    threaded_server: _Server, make_sync_client: Callable[..., EntitlementsClient]
) -> None:
    """The sync client returns responses, sends the bearer key and raises translated errors."""
    client = make_sync_client(api_key="k-sync")
    threaded_server.servicer.failures.append((grpc.StatusCode.PERMISSION_DENIED, "needs write"))

    with pytest.raises(PermissionDeniedError, match="needs write") as caught:
        client.grant("player-1", "gold")
    response = client.list_subscriptions("player-1")

    assert caught.value.code is grpc.StatusCode.PERMISSION_DENIED
    assert response.has_more
    assert ("authorization", "Bearer k-sync") in threaded_server.servicer.metadata[0]
    assert [e.sku for e in client.iter_entitlements("player-1", page_size=3)] == [f"sku-{i}" for i in range(5)]


def test_sync_unavailable_is_retried_with_the_same_idempotency_key(
    threaded_server: _Server, make_sync_client: Callable[..., EntitlementsClient]
) -> None:
    """The sync client's retries also resend one idempotency key until the call succeeds."""
    client = make_sync_client()
    threaded_server.servicer.failures += [(grpc.StatusCode.UNAVAILABLE, "store timeout")] * 2

    assert client.revoke("player-1", "gold").revoked

    keys = {request.idempotency_key for request in threaded_server.servicer.requests["Revoke"]}
    assert len(threaded_server.servicer.requests["Revoke"]) == 3
    assert len(keys) == 1


def test_sync_deadline_raises_deadline_exceeded(
    threaded_server: _Server, make_sync_client: Callable[..., EntitlementsClient]
) -> None:
    """The sync client's default deadline also ends slow calls with DeadlineExceededError."""
    client = make_sync_client(timeout_s=0.2)
    threaded_server.servicer.delay_s = 5

    with pytest.raises(DeadlineExceededError):
        client.check_entitlement("player-1", "sku-1")


def test_sync_stream_yields_and_translates_abort(
    threaded_server: _Server, make_sync_client: Callable[..., EntitlementsClient]
) -> None:
    """The sync stream yields updates, then raises the translated error of a mid-stream abort."""
    client = make_sync_client()
    threaded_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW, OrderStatus.ORDER_STATUS_PAID)
    threaded_server.servicer.order_abort = (grpc.StatusCode.INTERNAL, "poller crashed")

    stream = client.get_order_status("order-1", "player-1")
    received = [next(stream).status, next(stream).status]
    with pytest.raises(ServerError, match="poller crashed"):
        next(stream)

    assert received == [OrderStatus.ORDER_STATUS_NEW, OrderStatus.ORDER_STATUS_PAID]


def test_sync_stream_close_cancels_the_call(
    threaded_server: _Server, make_sync_client: Callable[..., EntitlementsClient]
) -> None:
    """Closing the sync stream from another thread while it blocks cancels the call and ends iteration."""
    client = make_sync_client()
    threaded_server.servicer.order_updates = _updates(OrderStatus.ORDER_STATUS_NEW)
    threaded_server.servicer.order_hang = True

    received = []
    with client.get_order_status("order-1", "player-1") as stream:
        for update in stream:
            received.append(update.status)
            threading.Timer(0.05, stream.close).start()

    assert received == [OrderStatus.ORDER_STATUS_NEW]
    assert threaded_server.servicer.order_cancelled.wait(5)


def test_async_client_built_outside_an_event_loop(threaded_server: _Server) -> None:
    """An async client constructed with no loop running opens its channel later, in the loop that uses it."""
    client = AsyncEntitlementsClient(threaded_server.target)

    async def use() -> bool:
        async with client:
            return (await client.check_entitlement("player-1", "sku-1")).active

    assert asyncio.run(use())


def test_retry_policy_renders_service_config() -> None:
    """RetryPolicy becomes a service config with a retryPolicy for the whole service, and enables retries."""
    policy = RetryPolicy(max_attempts=4, initial_backoff_s=0.1, max_backoff_s=2.5, backoff_multiplier=3)

    options = dict(policy.channel_options())
    (method_config,) = json.loads(options["grpc.service_config"])["methodConfig"]

    assert options["grpc.enable_retries"] == 1
    assert method_config["name"] == [{"service": "entitlements.v1.EntitlementService"}]
    assert method_config["retryPolicy"] == {
        "maxAttempts": 4,
        "initialBackoff": "0.1s",
        "maxBackoff": "2.5s",
        "backoffMultiplier": 3,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_attempts": 1},
        {"max_attempts": 6},
        {"initial_backoff_s": 0},
        {"backoff_multiplier": -1},
        {"retryable_status_codes": ()},
        {"retryable_status_codes": ("OK",)},
        {"retryable_status_codes": ("UNAVAILBLE",)},
    ],
)
def test_retry_policy_rejects_invalid_values(kwargs: dict[str, Any]) -> None:
    """RetryPolicy refuses values gRPC would reject or silently ignore."""
    with pytest.raises(ValueError):  # noqa: PT011  # each case has its own message
        RetryPolicy(**kwargs)


def _write_pki(directory: Path) -> dict[str, Path]:
    """Writes a CA, a server certificate for "entitlements.test" and a client certificate, all PEM."""
    now = datetime.datetime.now(datetime.UTC)
    ca_key, server_key, client_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test-ca")])

    def issue(common_name: str, key: ec.EllipticCurvePrivateKey, *, dns_name: str | None = None) -> bytes:
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        builder = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
        )
        if key is ca_key:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        if dns_name is not None:
            san = x509.SubjectAlternativeName([x509.DNSName(dns_name)])
            builder = builder.add_extension(san, critical=False)
        return builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)

    def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
        return key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    files = {
        "ca": issue("test-ca", ca_key),
        "server_cert": issue("server", server_key, dns_name="entitlements.test"),
        "server_key": private_pem(server_key),
        "client_cert": issue("game-server", client_key),
        "client_key": private_pem(client_key),
    }
    paths = {label: directory / f"{label}.pem" for label in files}
    for label, data in files.items():
        paths[label].write_bytes(data)
    return paths


async def test_mutual_tls_from_files(tmp_path: Path) -> None:
    """TLSConfig.from_files sets up mTLS: the override name is verified, the client certificate accepted."""
    pki = _write_pki(tmp_path)
    servicer = _Servicer()
    server_credentials = grpc.ssl_server_credentials(
        [(pki["server_key"].read_bytes(), pki["server_cert"].read_bytes())],
        root_certificates=pki["ca"].read_bytes(),
        require_client_auth=True,
    )
    server, port = await _start_server(servicer, server_credentials)
    try:
        tls = TLSConfig.from_files(
            root_certificates_file=pki["ca"],
            private_key_file=pki["client_key"],
            certificate_chain_file=pki["client_cert"],
            server_name_override="entitlements.test",
        )
        async with AsyncEntitlementsClient(f"127.0.0.1:{port}", tls=tls, api_key="k-tls") as client:
            assert (await client.check_entitlement("player-1", "sku-1")).active
        assert ("authorization", "Bearer k-tls") in servicer.metadata[0]
        assert "PRIVATE KEY" not in repr(tls)
    finally:
        await server.stop(grace=None)


def test_tls_config_needs_key_and_chain_together() -> None:
    """A client key without its certificate chain (or the reverse) is refused."""
    with pytest.raises(ValueError, match="together"):
        TLSConfig(private_key=b"key")


async def test_check_entitlements_sends_the_pairs_in_order_and_is_retried(
    transport_server: _Server, make_async_client: Callable[..., AsyncEntitlementsClient]
) -> None:
    """check_entitlements: the pairs in their order, the client's project, one answer per pair; a read, so gRPC's
    retry policy resends it on UNAVAILABLE."""
    client = make_async_client(project_id=12)
    transport_server.servicer.failures.append((grpc.StatusCode.UNAVAILABLE, "store timeout"))

    response = await client.check_entitlements([("p1", "sword"), ("p2", "gold"), ("p1", "sword")])

    assert [result.active for result in response.results] == [True, True, True]
    first, retried = transport_server.servicer.requests["CheckEntitlements"]
    assert first == retried
    assert first.project_id == 12
    assert [(check.user_id, check.sku) for check in first.checks] == [("p1", "sword"), ("p2", "gold"), ("p1", "sword")]
    with pytest.raises(TypeError, match=r"pairs\[1\] must be a \(user_id, sku\) pair"):
        await client.check_entitlements([("p1", "sword"), "p2"])  # type: ignore[list-item]


def test_check_entitlements_of_the_blocking_client(make_sync_client: Callable[..., EntitlementsClient]) -> None:
    """The blocking client's check_entitlements sends the same request and returns the same answers."""
    client = make_sync_client()

    response = client.check_entitlements([("p1", "sword")], project_id=4)

    assert len(response.results) == 1
    assert response.results[0].active
