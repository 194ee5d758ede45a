"""A gRPC proxy in front of the service that loses chosen responses, for the retry scenarios.

It forwards every unary call to the service as bytes. Told to lose the next N responses of a method, it forwards
each such call (the service applies it) and then answers `UNAVAILABLE` in place of the service's answer, as if the
response had been lost on its way back: a client that retries must send the same idempotency key, so that the
service replays the first answer instead of applying the write twice. It answers before sending any header, so
gRPC's retry policies may retry (a call is committed once headers arrive).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import grpc
from grpc import aio

#: Request metadata passed on to the service (the API key; gRPC sets its own headers itself).
_FORWARDED = ("authorization",)


class FlakyProxy:
    """Listens on `target`; `lose_responses(method, n)` arms the fault; `forwarded` counts calls per method."""

    def __init__(self, upstream: str) -> None:
        self.upstream = upstream
        self.forwarded: Counter[str] = Counter()
        self.requests: list[tuple[str, bytes]] = []
        self._to_lose: Counter[str] = Counter()
        self._server: aio.Server | None = None
        self._channel: aio.Channel | None = None
        self.port = 0

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def lose_responses(self, method: str, times: int) -> None:
        """The next `times` calls of `method` (e.g. "Grant") are applied by the service but answered UNAVAILABLE."""
        self._to_lose[method] = times

    def reset(self) -> None:
        self._to_lose.clear()
        self.forwarded.clear()
        self.requests.clear()

    async def start(self) -> None:
        self._channel = aio.insecure_channel(self.upstream)
        self._server = aio.server()
        self._server.add_generic_rpc_handlers([_Forwarder(self)])
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        await self._server.start()

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=None)
        if self._channel is not None:
            await self._channel.close(None)

    async def forward(self, method: str, request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
        assert self._channel is not None
        name = method.rsplit("/", 1)[-1]
        metadata = [(key, value) for key, value in context.invocation_metadata() or () if key in _FORWARDED]
        self.forwarded[name] += 1
        self.requests.append((name, request))
        try:
            # No serializers: the request and response pass through as the bytes they are.
            call = self._channel.unary_unary(method, request_serializer=None, response_deserializer=None)
            response: bytes = await call(request, metadata=metadata, timeout=context.time_remaining())
        except aio.AioRpcError as exc:
            await context.abort(exc.code(), exc.details() or "")
        if self._to_lose[name] > 0:
            self._to_lose[name] -= 1
            await context.abort(grpc.StatusCode.UNAVAILABLE, "conformance proxy: the response was lost on its way")
        return response


class _Forwarder(grpc.GenericRpcHandler):  # type: ignore[type-arg]
    def __init__(self, proxy: FlakyProxy) -> None:
        self._proxy = proxy

    def service(self, handler_call_details: grpc.HandlerCallDetails) -> Any:
        method: str = handler_call_details.method

        async def unary(request: bytes, context: aio.ServicerContext[bytes, bytes]) -> bytes:
            return await self._proxy.forward(method, request, context)

        return grpc.unary_unary_rpc_method_handler(unary)
