"""`AsyncWatchStream`: one raw WatchEntitlements call, for callers the cache does not fit (every player of a
project, an audit or analytics consumer). It is not reopened when it breaks: the caller reopens it with the last
cursor it received, as the entitlement cache does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from types import TracebackType
from typing import Self

import grpc
from grpc import aio

from entitlements.client._base import _closed_under_call, _task_is_cancelling
from entitlements.client._cache_state import MAX_PLAYERS_PER_MESSAGE
from entitlements.client._cache_stream import accepted, batches
from entitlements.errors import EntitlementsError, translate_rpc_error
from entitlements.v1 import entitlements_pb2 as pb

__all__ = ["AsyncWatchStream"]

_Call = aio.StreamStreamCall[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse]


class AsyncWatchStream:
    """The messages of one `watch_entitlements` call, as an async iterator: changes (each with the cursor after
    it), snapshots and heartbeats (with the current cursor). `add_players` and `remove_players` change the players
    watched while it is open.

    Iteration raises `EntitlementsError` subclasses when the call fails: `UnavailableError` (reopen with the last
    cursor), `ServerError` with code OUT_OF_RANGE (the cursor is older than the history kept: read the players
    again and watch without a cursor), and the errors of every RPC. It ends when the service ends the call, and after
    `aclose()` (or leaving `async with`), which cancels it.
    """

    def __init__(self, call: _Call, opening: list[pb.WatchEntitlementsRequest]) -> None:
        self._call = call
        self._closed = False
        self._writing = asyncio.Lock()
        # Written in the background: the caller may start reading at once. A failed write shows as the call's error.
        self._opening = asyncio.get_running_loop().create_task(self._open(opening))

    async def _open(self, opening: list[pb.WatchEntitlementsRequest]) -> None:
        if not await accepted(self._call):
            return  # refused: iteration raises the call's error
        with contextlib.suppress(EntitlementsError):
            for message in opening:
                await self._write(message)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> pb.WatchEntitlementsResponse:
        if self._closed:
            raise StopAsyncIteration
        try:
            message: object = await self._call.read()
        except grpc.RpcError as exc:
            self._closed = True
            raise translate_rpc_error(exc) from exc
        except asyncio.CancelledError:
            was_closed, self._closed = self._closed, True
            if _task_is_cancelling():
                raise
            if was_closed:
                raise StopAsyncIteration from None
            raise _closed_under_call() from None
        # read() returns grpc.aio.EOF, which the stubs type as object, once the service ends the call.
        if not isinstance(message, pb.WatchEntitlementsResponse):
            self._closed = True
            raise StopAsyncIteration
        return message

    async def add_players(self, user_ids: Iterable[str], *, snapshot: bool = False) -> None:
        """Starts watching these players (10,000 per message at most: more are split); with `snapshot`, the service
        answers with one PlayerSnapshot per player.

        Raises:
            EntitlementsError: The call has failed (iteration raises why, too).
        """
        for message in batches(list(user_ids), snapshot=snapshot):
            await self._send(message)

    async def remove_players(self, user_ids: Iterable[str]) -> None:
        """Stops watching these players.

        Raises:
            EntitlementsError: The call has failed (iteration raises why, too).
        """
        ids = list(user_ids)
        for start in range(0, len(ids), MAX_PLAYERS_PER_MESSAGE):
            await self._send(pb.WatchEntitlementsRequest(remove_user_ids=ids[start : start + MAX_PLAYERS_PER_MESSAGE]))

    async def _send(self, message: pb.WatchEntitlementsRequest) -> None:
        await asyncio.wait({self._opening})  # the opening messages go first
        async with self._writing:
            await self._write(message)

    async def _write(self, message: pb.WatchEntitlementsRequest) -> None:
        try:
            await self._call.write(message)
        except grpc.RpcError as exc:
            raise translate_rpc_error(exc) from exc
        except asyncio.InvalidStateError:
            # The call has ended (or was half-closed): its status says why.
            code, details = await self._call.code(), await self._call.details()
            ended = aio.AioRpcError(code, aio.Metadata(), aio.Metadata(), details, None)
            raise translate_rpc_error(ended) from None

    def cancel(self) -> None:
        """Cancels the call, if still running; iteration then stops. Idempotent."""
        self._closed = True
        self._call.cancel()
        self._opening.cancel()

    async def aclose(self) -> None:
        """Same as `cancel()`."""
        self.cancel()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.cancel()
