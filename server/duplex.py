"""What a bidirectional RPC goes through (`duplex_rpc`), as `server.rpc.rpc` and `stream_rpc` do for the others.

The API key and its scope are checked from the call's metadata before any message is read: a caller without them
learns nothing about how its bytes parse. A caller that has them gets the response headers at once, before any
message is read (the Python client waits for them before its first write: `entitlements.client._cache_stream.
accepted`). Then the first message is read and decoded (bytes that are not the
method's request type are INVALID_ARGUMENT, "request: is not a valid ..."), and its `project_id` resolved
(`server.validation.resolve_project`). The handler gets the first request decoded, the caller's later messages as
an async iterator of decoded requests (one that does not decode raises InvalidArgument, which ends the stream
INVALID_ARGUMENT), and the resolved project. The stream gets one log line and its metrics when it ends, and its
domain errors become statuses as every RPC's do (`RpcRuntime.status_for`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any, TypeVar, cast

import grpc
from google.protobuf.message import Message

from server.auth import Principal
from server.errors import InvalidArgument
from server.rpc import HasRuntime, RpcRuntime

Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")
S = TypeVar("S", bound=HasRuntime)
Context = grpc.aio.ServicerContext[Any, Any]

DuplexHandler = Callable[[S, Req, AsyncIterator[Req], Context, Principal, int], AsyncGenerator[Resp, None]]


async def _decoded(runtime: RpcRuntime, method: str, requests: AsyncIterator[bytes]) -> AsyncIterator[Message]:
    """The caller's later messages, decoded; InvalidArgument at the first that is not a request of `method`."""
    async for raw in requests:
        yield runtime.decode(method, raw)


def duplex_rpc(
    method: str, scope: str
) -> Callable[[DuplexHandler[S, Req, Resp]], Callable[[S, AsyncIterator[bytes], Context], AsyncIterator[Resp]]]:
    """Makes the async generator `handler(self, first, later, context, principal, project_id)` the bidirectional
    gRPC method `method`, requiring `scope`.

    `first` is the caller's first message decoded, `later` an async iterator of its next ones (decoded), and
    `project_id` the first message's project, resolved. A caller that closes its side before sending a message is
    INVALID_ARGUMENT naming `request`.
    """

    def decorate(
        handler: DuplexHandler[S, Req, Resp],
    ) -> Callable[[S, AsyncIterator[bytes], Context], AsyncIterator[Resp]]:
        @functools.wraps(handler)
        async def wrapper(servicer: S, requests: AsyncIterator[bytes], context: Context) -> AsyncIterator[Resp]:
            runtime = servicer.runtime
            call = runtime.open_stream(method)
            try:
                principal = runtime.authorize(context, scope)
                call.principal = principal.name
                # The response headers now tell the caller its key is accepted: a client may wait for them before
                # writing, since grpc.aio reports a write that crossed the service's refusal as INTERNAL in place of
                # the refusal (grpc/grpc#36066).
                await context.send_initial_metadata(())
                raw = await anext(aiter(requests), None)
                if raw is None:
                    raise InvalidArgument("request", "the stream was closed before its first message")
                first = cast(Req, runtime.decode(method, raw))
                call.request = first
                call.project_id = runtime.project_of(first, principal)
                later = cast(AsyncIterator[Req], _decoded(runtime, method, requests))
                stream = handler(servicer, first, later, context, principal, call.project_id)
                async with contextlib.aclosing(stream) as messages:
                    async for message in messages:
                        call.sent()
                        yield message
            except (asyncio.CancelledError, GeneratorExit):
                # The caller cancelled or went away (GeneratorExit: closed while a message was being sent).
                call.close("CANCELLED")
                raise
            except Exception as exc:
                code, details = runtime.status_for(method, exc)
                call.close(code.name, error=details)
                await context.abort(code, details)
            else:
                call.close("OK")

        return wrapper

    return decorate
