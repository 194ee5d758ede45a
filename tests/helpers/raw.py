"""Calls to the service with the request's bytes exactly as given, as a client other than ours could send them."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

import grpc

from entitlements.v1 import entitlements_pb2 as pb
from server.app import Service

SERVICE = pb.DESCRIPTOR.services_by_name["EntitlementService"]
METHODS = tuple(method.name for method in SERVICE.methods)

Metadata = Sequence[tuple[str, str]]


def bearer(key: str) -> Metadata:
    """The metadata carrying `key` as the caller's API key."""
    return (("authorization", f"Bearer {key}"),)


@dataclass(frozen=True)
class Outcome:
    """How a call ended: its status, and for a stream whether a first message came (then the call was cancelled:
    the request had been accepted)."""

    code: grpc.StatusCode
    details: str
    streamed: bool = False


class RawChannel:
    """A channel to a service whose calls take and return bytes (identity serializers)."""

    def __init__(self, target: str) -> None:
        self._channel = grpc.aio.insecure_channel(target)

    async def call(self, method: str, payload: bytes, metadata: Metadata, *, timeout_s: float = 10.0) -> Outcome:
        """Sends `payload` as the request of `method`; a stream is cancelled once its first message arrived."""
        path = f"/{SERVICE.full_name}/{method}"
        try:
            if not SERVICE.methods_by_name[method].server_streaming:
                unary = self._channel.unary_unary(path, request_serializer=None, response_deserializer=None)
                await unary(payload, metadata=metadata, timeout=timeout_s)
                return Outcome(grpc.StatusCode.OK, "")
            call: grpc.aio.Call
            if SERVICE.methods_by_name[method].client_streaming:
                # A bidirectional stream (WatchEntitlements): `payload` is its first message, and the caller's half
                # stays open as a real watcher's does.
                bidi = self._channel.stream_stream(path, request_serializer=None, response_deserializer=None)
                call = bidi(metadata=metadata, timeout=timeout_s)  # type: ignore[call-arg]  # grpc-stubs: the iterator may be left out, then write()
                # As the Python client does: written once the service accepted the key, or a refusal crossing the
                # write would read INTERNAL (grpc/grpc#36066).
                await call.initial_metadata()
                if call.done():
                    return Outcome(await call.code(), await call.details() or "")
                await call.write(payload)
            else:
                stream = self._channel.unary_stream(path, request_serializer=None, response_deserializer=None)
                call = stream(payload, metadata=metadata, timeout=timeout_s)
            async for _ in call:
                call.cancel()
                return Outcome(grpc.StatusCode.OK, "", streamed=True)
            return Outcome(await call.code(), await call.details() or "")
        except grpc.aio.AioRpcError as error:
            return Outcome(error.code(), error.details() or "")

    async def close(self) -> None:
        await self._channel.close(None)


@contextlib.asynccontextmanager
async def raw_channel(service: Service) -> AsyncIterator[RawChannel]:
    """A RawChannel to `service`, closed on exit."""
    assert service.endpoints is not None
    channel = RawChannel(f"127.0.0.1:{service.endpoints.grpc_port}")
    try:
        yield channel
    finally:
        await channel.close()
