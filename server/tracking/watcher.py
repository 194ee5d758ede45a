"""One stream's view of an order's tracker (`server.tracking.tracker.OrderTracker`): the updates not yet sent to
it, then how it ends."""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

from server.errors import EntitlementsError
from server.tracking.status import Observation

if TYPE_CHECKING:
    from server.tracking.tracker import OrderTracker


class Watcher:
    """One stream's view of a tracker: the updates not yet sent, then how the stream ends.

    `next()` returns the updates in order, then None once the tracker has finished (the order reached its end),
    or raises the error the tracker ended this stream with. `close()` leaves the tracker and runs the `on_close`
    callback given to `release_with`; it is idempotent.
    """

    __slots__ = ("_ended", "_error", "_items", "_on_close", "_tracker", "_waiter", "last", "token")

    def __init__(self, tracker: OrderTracker, token: str) -> None:
        self._tracker: OrderTracker | None = tracker
        self._on_close: Callable[[], None] | None = None
        self._items: deque[Observation] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._error: EntitlementsError | None = None
        self.token = token
        #: The last update `next()` returned.
        self.last: Observation | None = None

    @property
    def latest(self) -> Observation | None:
        """The best state known for the order: the tracker's, or the last one delivered once it is gone."""
        tracker = self._tracker
        if tracker is not None and tracker.progress.current is not None:
            return tracker.progress.current
        return self._items[-1] if self._items else self.last

    def push(self, observation: Observation) -> None:
        self._items.append(observation)
        self._wake()

    def end(self, error: EntitlementsError | None = None) -> None:
        """Ends the stream after the updates already queued, normally or with `error`."""
        if not self._ended:
            self._ended, self._error = True, error
            self._wake()

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    async def next(self) -> Observation | None:
        """The next update, or None when the stream is over.

        Raises:
            NotFound, TokenRejected, ServiceStopping: the tracker ended this stream with an error.
        """
        while not self._items:
            if self._ended:
                if self._error is not None:
                    raise self._error
                return None
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None
        self.last = self._items.popleft()
        return self.last

    def release_with(self, on_close: Callable[[], None]) -> None:
        """Has `close()` call `on_close` once (what the stream holds beyond its place in the tracker)."""
        self._on_close = on_close

    def close(self) -> None:
        tracker, self._tracker = self._tracker, None
        if tracker is not None:
            tracker.leave(self)
        on_close, self._on_close = self._on_close, None
        if on_close is not None:
            on_close()


__all__: Final = ["Watcher"]
