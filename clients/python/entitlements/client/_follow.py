"""Following an order across broken streams: `follow_order` of both clients.

`GetOrderStatus` is one server stream; it breaks when the replica serving it shuts down or the connection drops
(`UNAVAILABLE`, or `CANCELLED` for a call that reached a server while it stopped). The followers here open it
again after a backoff, with `max_wait` reduced by the time already spent, and deliver only what the caller has not
seen: a reopened stream starts with the stored state, which is usually a repeat. Every client of this project
follows the same rules (conformance/PROTOCOL.md).
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Generator, Iterator
from dataclasses import dataclass
from datetime import timedelta
from types import TracebackType
from typing import Protocol, Self, TypeVar

from entitlements.client._async_stream import AsyncOrderStatusStream
from entitlements.errors import CallCancelledError, EntitlementsError, UnavailableError
from entitlements.v1 import entitlements_pb2 as pb

#: How long a follower keeps reopening when the caller set no `max_wait`: the service's default `max_wait`.
DEFAULT_FOLLOW_S = 600.0
#: The shortest `max_wait` worth opening a stream for; the service refuses 0.
_MIN_WAIT_S = 0.001


@dataclass(frozen=True)
class FollowPolicy:
    """When to open a broken order stream again: exponential backoff with jitter, reset by every update.

    Attributes:
        initial_backoff_s: The wait before the first reopening.
        max_backoff_s: The longest wait between two openings.
        multiplier: How much the wait grows after each failed opening.
    """

    initial_backoff_s: float = 0.1
    max_backoff_s: float = 2.0
    multiplier: float = 2.0

    def __post_init__(self) -> None:
        if not 0 < self.initial_backoff_s <= self.max_backoff_s or self.multiplier < 1:
            raise ValueError("FollowPolicy needs 0 < initial_backoff_s <= max_backoff_s and multiplier >= 1")

    def delays(self) -> Iterator[float]:
        """The waits before successive reopenings, each between half and all of the current backoff."""
        backoff = self.initial_backoff_s
        while True:
            yield backoff * random.uniform(0.5, 1.0)
            backoff = min(backoff * self.multiplier, self.max_backoff_s)


class _Progress:
    """What the caller has been given; decides whether an update is new (statuses only move forward)."""

    def __init__(self) -> None:
        self.status = pb.ORDER_STATUS_UNSPECIFIED
        self.granted = False

    def admit(self, update: pb.OrderStatusUpdate) -> bool:
        if update.timed_out:
            return True
        moved = update.status > self.status
        granted_now = update.status == self.status and update.entitlements_granted and not self.granted
        if not (moved or granted_now):
            return False
        self.status = update.status
        self.granted = self.granted or update.entitlements_granted
        return True


class _Clock:
    """The follower's overall `max_wait`, and what is left of it for the next opening."""

    def __init__(self, max_wait: timedelta | None) -> None:
        self.requested = max_wait
        total = DEFAULT_FOLLOW_S if max_wait is None else max_wait.total_seconds()
        self._deadline = time.monotonic() + total

    def left_s(self) -> float:
        return self._deadline - time.monotonic()

    def max_wait(self, first: bool) -> timedelta | None:
        """What to ask the server for: the caller's own value on the first opening, what is left afterwards."""
        if first:
            return self.requested
        return timedelta(seconds=max(self.left_s(), _MIN_WAIT_S))


_Stream = TypeVar("_Stream")


def _reopen(
    open_stream: Callable[[timedelta | None], _Stream], max_wait: timedelta | None, broken: EntitlementsError | None
) -> _Stream:
    """Opens a stream; a client closed since the last one broke (RuntimeError) ends with that stream's error."""
    try:
        return open_stream(max_wait)
    except RuntimeError:
        if broken is not None:
            raise broken from None
        raise


OpenAsync = Callable[[timedelta | None], AsyncOrderStatusStream]


class AsyncOrderFollower(AsyncIterator[pb.OrderStatusUpdate]):
    """The updates of one order, across as many `GetOrderStatus` streams as it takes; `opens` counts them.

    Iteration ends when a stream ends normally (a terminal status, or `timed_out`), and raises the error of a
    stream that fails with anything but `UNAVAILABLE` or a `CANCELLED` the follower did not cause, or with one of
    those once `max_wait` has passed.
    """

    def __init__(self, open_stream: OpenAsync, max_wait: timedelta | None, policy: FollowPolicy) -> None:
        self.opens = 0
        self._open = open_stream
        self._clock = _Clock(max_wait)
        self._policy = policy
        self._stream: AsyncOrderStatusStream | None = None
        self._closed = False
        self._updates = self._follow()

    async def _follow(self) -> AsyncGenerator[pb.OrderStatusUpdate, None]:
        progress = _Progress()
        delays = self._policy.delays()
        broken: EntitlementsError | None = None
        while not self._closed:
            self._stream = _reopen(self._open, self._clock.max_wait(first=self.opens == 0), broken)
            self.opens += 1
            try:
                async for update in self._stream:
                    delays = self._policy.delays()
                    if progress.admit(update):
                        yield update
                return
            except (UnavailableError, CallCancelledError) as exc:
                # CANCELLED that this follower did not cause: a stopping server cancels the calls reaching it.
                broken = exc
                delay = next(delays)
                if self._closed or self._clock.left_s() <= delay + _MIN_WAIT_S:
                    raise
            finally:
                self._stream.cancel()
            await asyncio.sleep(delay)

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> pb.OrderStatusUpdate:
        return await anext(self._updates)

    def cancel(self) -> None:
        """Stops following: cancels the open stream, if any; iteration then stops. Idempotent."""
        self._closed = True
        if self._stream is not None:
            self._stream.cancel()

    async def aclose(self) -> None:
        """Same as `cancel()`, and finishes the iteration."""
        self.cancel()
        await self._updates.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


class _SyncStream(Protocol):
    """What `OrderFollower` needs of the blocking client's `OrderStatusStream` (kept apart to avoid a cycle)."""

    def __iter__(self) -> Iterator[pb.OrderStatusUpdate]: ...

    def __next__(self) -> pb.OrderStatusUpdate: ...

    def close(self) -> None: ...


OpenSync = Callable[[timedelta | None], _SyncStream]


class OrderFollower(Iterator[pb.OrderStatusUpdate]):
    """The blocking twin of `AsyncOrderFollower`; `close()` may be called from another thread."""

    def __init__(self, open_stream: OpenSync, max_wait: timedelta | None, policy: FollowPolicy) -> None:
        self.opens = 0
        self._open = open_stream
        self._clock = _Clock(max_wait)
        self._policy = policy
        self._stream: _SyncStream | None = None
        self._closed = threading.Event()
        self._updates = self._follow()

    def _follow(self) -> Generator[pb.OrderStatusUpdate, None, None]:
        progress = _Progress()
        delays = self._policy.delays()
        broken: EntitlementsError | None = None
        while not self._closed.is_set():
            self._stream = _reopen(self._open, self._clock.max_wait(first=self.opens == 0), broken)
            self.opens += 1
            try:
                for update in self._stream:
                    delays = self._policy.delays()
                    if progress.admit(update):
                        yield update
                return
            except (UnavailableError, CallCancelledError) as exc:
                broken = exc
                delay = next(delays)
                if self._closed.is_set() or self._clock.left_s() <= delay + _MIN_WAIT_S:
                    raise
            finally:
                self._stream.close()
            self._closed.wait(delay)

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> pb.OrderStatusUpdate:
        return next(self._updates)

    def close(self) -> None:
        """Stops following: closes the open stream, if any; iteration then stops. Idempotent, thread-safe."""
        self._closed.set()
        if self._stream is not None:
            self._stream.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
