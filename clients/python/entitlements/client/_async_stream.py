"""`AsyncOrderStatusStream`: the updates of one `AsyncEntitlementsClient.get_order_status` call."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from types import TracebackType
from typing import Self

import grpc
from grpc import aio

from entitlements.client._base import _closed_under_call, _task_is_cancelling
from entitlements.errors import translate_rpc_error
from entitlements.v1 import entitlements_pb2 as pb


class AsyncOrderStatusStream(AsyncIterator[pb.OrderStatusUpdate]):
    """The updates of one `get_order_status` call, as an async iterator that can be closed early.

    Iteration raises `EntitlementsError` subclasses for failed calls. After `aclose()` (or leaving
    `async with`) the call is cancelled and iteration simply stops.
    """

    def __init__(self, call: aio.UnaryStreamCall[pb.GetOrderStatusRequest, pb.OrderStatusUpdate]) -> None:
        self._call = call
        self._closed = False

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> pb.OrderStatusUpdate:
        if self._closed:
            raise StopAsyncIteration
        try:
            message = await self._call.read()
        except grpc.RpcError as exc:
            self._closed = True
            raise translate_rpc_error(exc) from exc
        except asyncio.CancelledError:
            # grpc.aio raises CancelledError for every locally cancelled call. Only a cancellation of the
            # reading task itself propagates as such; cancel()/aclose() from another task ends the stream;
            # closing the client under it is an error, as in the sync client.
            was_closed, self._closed = self._closed, True
            if _task_is_cancelling():
                raise
            if was_closed:
                raise StopAsyncIteration from None
            raise _closed_under_call() from None
        # read() returns grpc.aio.EOF, which the stubs type as object, once the server ends the stream.
        if not isinstance(message, pb.OrderStatusUpdate):
            self._closed = True
            raise StopAsyncIteration
        return message

    def cancel(self) -> None:
        """Cancels the call, if still running; iteration then stops. Idempotent."""
        self._closed = True
        self._call.cancel()

    async def aclose(self) -> None:
        """Same as `cancel()`, for `contextlib.aclosing` and symmetry with async generators."""
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cancel()
