"""A scripted WatchEntitlements server: each stream a client opens is handed to the test, which reads what the
client wrote and decides what the server sends and how the stream ends. For testing the clients' cache against
every turn a real service can take (a break, a lost history, a gap), on demand."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
from google.protobuf import timestamp_pb2
from grpc import aio

from entitlements.v1 import entitlements_pb2 as pb

_END = object()


class ScriptedStream:
    """One WatchEntitlements call as the server sees it."""

    def __init__(self) -> None:
        self.requests: asyncio.Queue[pb.WatchEntitlementsRequest] = asyncio.Queue()
        self.outgoing: asyncio.Queue[pb.WatchEntitlementsResponse | grpc.StatusCode | object] = asyncio.Queue()
        self.ended = asyncio.Event()
        self.metadata: dict[str, str] = {}

    async def request(self, timeout_s: float = 20.0) -> pb.WatchEntitlementsRequest:
        """The next message the client wrote."""
        async with asyncio.timeout(timeout_s):
            return await self.requests.get()

    def send(self, *messages: pb.WatchEntitlementsResponse) -> None:
        for message in messages:
            self.outgoing.put_nowait(message)

    def fail(self, code: grpc.StatusCode) -> None:
        """Ends the call with `code`, after what was sent before."""
        self.outgoing.put_nowait(code)

    def finish(self) -> None:
        """Ends the call OK, after what was sent before."""
        self.outgoing.put_nowait(_END)


class WatchScript:
    """The servicer: hands each new stream to the test through `next_stream()`. Like the service, it sends its
    response headers as soon as a stream opens; with `early_headers=False`, only with its first message (as a
    service of an earlier version did)."""

    def __init__(self, *, early_headers: bool = True) -> None:
        self.streams: asyncio.Queue[ScriptedStream] = asyncio.Queue()
        self.opened = 0
        self._early_headers = early_headers

    async def next_stream(self, timeout_s: float = 20.0) -> ScriptedStream:
        async with asyncio.timeout(timeout_s):
            return await self.streams.get()

    async def WatchEntitlements(
        self, requests: AsyncIterator[pb.WatchEntitlementsRequest], context: aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchEntitlementsResponse]:
        stream = ScriptedStream()
        stream.metadata = dict(context.invocation_metadata() or ())
        self.opened += 1
        if self._early_headers:
            await context.send_initial_metadata(())

        async def pump() -> None:
            async for request in requests:
                stream.requests.put_nowait(request)

        reader = asyncio.create_task(pump())
        self.streams.put_nowait(stream)
        try:
            while True:
                item = await stream.outgoing.get()
                if item is _END:
                    return
                if isinstance(item, grpc.StatusCode):
                    await context.abort(item, f"scripted {item.name}")
                assert isinstance(item, pb.WatchEntitlementsResponse)
                yield item
        finally:
            stream.ended.set()
            reader.cancel()


@contextlib.asynccontextmanager
async def scripted_server(script: WatchScript) -> AsyncIterator[str]:
    """Serves `script` on a free port; yields the target."""
    server = aio.server()
    handler = grpc.stream_stream_rpc_method_handler(
        script.WatchEntitlements,
        request_deserializer=pb.WatchEntitlementsRequest.FromString,
        response_serializer=pb.WatchEntitlementsResponse.SerializeToString,
    )
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("entitlements.v1.EntitlementService", {"WatchEntitlements": handler})]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        await server.stop(None)


def timestamp(unix_s: float) -> timestamp_pb2.Timestamp:
    stamp = timestamp_pb2.Timestamp()
    stamp.FromNanoseconds(int(unix_s * 1e9))
    return stamp


def entitlement(user_id: str, sku: str, quantity: int = 1, *, expires_in_s: float | None = None) -> pb.Entitlement:
    """An entitlement as the service sends it: permanent, or time-limited when `expires_in_s` is given."""
    item = pb.Entitlement(user_id=user_id, sku=sku, quantity=quantity, active=quantity > 0)
    if expires_in_s is None:
        item.kind = pb.ENTITLEMENT_KIND_PERMANENT
    else:
        item.kind = pb.ENTITLEMENT_KIND_TIME_LIMITED
        item.expires_at.CopyFrom(timestamp(time.time() + expires_in_s))
    return item


def snapshot(user_id: str, version: int, *items: pb.Entitlement) -> pb.WatchEntitlementsResponse:
    return pb.WatchEntitlementsResponse(
        snapshot=pb.PlayerSnapshot(user_id=user_id, version=version, entitlements=list(items))
    )


def change(
    user_id: str, sku: str, version: int, cursor: str, item: pb.Entitlement | None = None
) -> pb.WatchEntitlementsResponse:
    """A change; `item` None means the player no longer holds the sku."""
    message = pb.EntitlementChange(user_id=user_id, sku=sku, version=version, operation="grant")
    if item is not None:
        message.entitlement.CopyFrom(item)
    return pb.WatchEntitlementsResponse(change=message, cursor=cursor)


def heartbeat(cursor: str) -> pb.WatchEntitlementsResponse:
    return pb.WatchEntitlementsResponse(heartbeat=pb.Heartbeat(sent_at=timestamp(time.time())), cursor=cursor)
