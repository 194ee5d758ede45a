"""The stream half of an entitlement cache: opening WatchEntitlements, applying what it sends, resuming it when it
breaks, and the cache's state (`CacheState`) and staleness clock. `_cache.AsyncEntitlementCache` adds the checks
and the public life cycle on top; the rules are in its module docstring.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import grpc
from grpc import aio

from entitlements.client._cache_state import MAX_PLAYERS_PER_MESSAGE, CacheContents
from entitlements.client._follow import FollowPolicy
from entitlements.errors import (
    CacheClosedError,
    DeadlineExceededError,
    EntitlementsError,
    ServerError,
    UnavailableError,
    translate_rpc_error,
)
from entitlements.v1 import entitlements_pb2 as pb

if TYPE_CHECKING:
    from entitlements.client._async_streams import _AsyncStreams

__all__ = ["CacheState"]

_log = logging.getLogger("entitlements.cache")

#: Stream errors that no reopening can cure: the cache stops and reports them.
_FATAL = frozenset(
    {
        grpc.StatusCode.UNAUTHENTICATED,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNIMPLEMENTED,
    }
)
#: The service's bounds of `heartbeat_interval`.
HEARTBEAT_MIN_S, HEARTBEAT_MAX_S = 1.0, 300.0


class CacheState(enum.Enum):
    """Where the cache's stream stands; `on_state` is called with each new one."""

    #: The stream is open and heard from within `max_staleness`: checks answer.
    CONNECTED = "connected"
    #: The stream is being opened (first opening, or after it broke): checks raise `StaleError`.
    RESUMING = "resuming"
    #: Nothing heard for `max_staleness`: checks raise `StaleError`; the stream is then opened again.
    STALE = "stale"
    #: Stopped on an error no reopening cures (see `failure`): checks raise it.
    FAILED = "failed"
    #: Closed by the caller: checks raise `CacheClosedError`.
    CLOSED = "closed"


class _CacheStream:
    """Runs the cache's WatchEntitlements stream and keeps `CacheContents` and the staleness clock current."""

    def __init__(
        self,
        client: _AsyncStreams,
        contents: CacheContents,
        *,
        project_id: int,
        max_staleness: float,
        on_state: Callable[[CacheState], None] | None,
        policy: FollowPolicy,
        timeout_s: float,
    ) -> None:
        self._contents = contents
        self.counters = contents.counters
        # Checks read these two directly: the fast path is a flag and two dictionary lookups, no clock reading.
        self._ready = contents.ready
        # Whether checks may answer: set by each message of a live stream, cleared when the stream breaks, or by
        # the freshness guard once nothing was heard for max_staleness (see `_guard_freshness`).
        self._fresh = False
        self._wake_guard = threading.Event()
        self._client = client
        self._project_id = project_id
        self._max_staleness = float(max_staleness)
        self._heartbeat_s = min(max(HEARTBEAT_MIN_S, max_staleness / 3), HEARTBEAT_MAX_S)
        self._on_state = on_state
        self._policy = policy
        self._timeout_s = timeout_s
        self._state = CacheState.RESUMING
        self._heard_at = time.monotonic()
        self._cursor = ""
        self._failure: EntitlementsError | None = None
        self._closed = False
        self._outbox: asyncio.Queue[pb.WatchEntitlementsRequest] | None = None
        self._silenced = False
        self._live = False  # the current stream has sent its first heartbeat (see `_receive`)
        self._progress = asyncio.Event()
        self._has_players = asyncio.Event()

    def staleness(self) -> float:
        """Seconds since the cache last heard from the service (a change, a snapshot or a heartbeat)."""
        return time.monotonic() - self._heard_at

    def _guard_freshness(self) -> None:
        """Clears `_fresh` once nothing was heard for max_staleness; runs in a thread of its own until closed.

        A thread rather than a clock reading in every check: reading the clock costs as much as the rest of a check
        (more on some virtual machines), and a thread, unlike a timer of the event loop, still runs when the loop
        is kept busy (it gets the GIL within the interpreter's switch interval, 5 ms), so a loop that runs checks
        without yielding cannot make the cache answer from a state older than max_staleness. A message that arrives
        while it clears the flag may be taken as late: the cache then refuses until the next message (at most a
        heartbeat interval), never the other way round.
        """
        while not self._closed:
            if not self._fresh:
                self._wake_guard.wait()
                self._wake_guard.clear()
                continue
            left = self._heard_at + self._max_staleness - time.monotonic()
            if left > 0:
                self._wake_guard.wait(left)
                self._wake_guard.clear()
                continue
            self._fresh = False

    # -- the stream ---------------------------------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._follow()
        except Exception as exc:
            # A fault of the cache itself: stop and say so, rather than leave it silently stale.
            _log.exception("entitlement cache: internal error")
            self._fail(ServerError(f"the entitlement cache stopped on an internal error: {exc!r}"))

    async def _follow(self) -> None:
        delays = self._policy.delays()
        opened = False
        while not self._closed:
            await self._has_players.wait()
            if opened:
                self.counters.reopenings += 1
            opened = True
            self._set_state(CacheState.RESUMING)
            heard_before = self._heard_at
            error = await self._stream_once()
            self._fresh = False
            if self._closed:
                return
            if error.code in _FATAL or isinstance(error, CacheClosedError):
                self._fail(error)
                return
            if self._heard_at != heard_before:
                delays = self._policy.delays()  # the stream worked: start the backoff again from its shortest wait
            self._set_state(CacheState.RESUMING)
            if error.code is grpc.StatusCode.OUT_OF_RANGE and self._cursor:
                # The history kept no longer reaches the cursor: read every player again, from now.
                _log.warning("entitlement cache: %s; reading every player again", error)
                self._cursor = ""
                self._contents.read_all_again()
                continue
            _log.info("entitlement cache: stream broken (%s); reopening", error)
            await asyncio.sleep(next(delays))

    async def _stream_once(self) -> EntitlementsError:
        """Runs one stream until it breaks; returns why (a translated error)."""
        try:
            stub = self._client._get_stub()
        except RuntimeError:
            return CacheClosedError("the client of the cache was closed")
        # No request iterator: the messages are written as they come (see `_write`).
        call = stub.WatchEntitlements(metadata=self._client._metadata)  # type: ignore[call-arg]  # grpc-stubs: the iterator may be left out, then write()
        outbox: asyncio.Queue[pb.WatchEntitlementsRequest] = asyncio.Queue()
        for message in self._opening():
            outbox.put_nowait(message)
        self._outbox, self._silenced, self._live = outbox, False, False
        writer = asyncio.get_running_loop().create_task(self._write(call, outbox))
        watchdog = asyncio.get_running_loop().create_task(self._watch_silence(call))
        try:
            while True:
                # read() returns grpc.aio.EOF, which the stubs type as object, once the server ends the stream.
                received: object = await call.read()
                if not isinstance(received, pb.WatchEntitlementsResponse):
                    return UnavailableError("the service ended the stream", code=grpc.StatusCode.UNAVAILABLE)
                self._receive(received)
        except grpc.RpcError as exc:
            return translate_rpc_error(exc)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed or task is None or task.cancelling():
                raise
            # Cancelled by the silence watchdog, or by the client being closed under the cache.
            if self._silenced:
                return UnavailableError(f"nothing heard for {self.staleness():.1f} s", code=grpc.StatusCode.UNAVAILABLE)
            return CacheClosedError("the client of the cache was closed")
        finally:
            self._outbox = None
            call.cancel()
            writer.cancel()
            watchdog.cancel()

    def _opening(self) -> list[pb.WatchEntitlementsRequest]:
        """The messages that open a stream: the cursor and the players held (without snapshots when resuming), then
        the players whose snapshot is awaited (with), at most 10,000 per message."""
        if not self._cursor:
            self._contents.read_all_again()
        self._contents.new_stream()
        awaiting = set(self._contents.awaiting())
        held = [user_id for user_id in self._contents.players if user_id not in awaiting]
        messages = [
            *batches(held, snapshot=False),
            *batches(list(awaiting), snapshot=True),
        ] or [pb.WatchEntitlementsRequest()]
        first = messages[0]
        first.project_id = self._project_id
        first.cursor = self._cursor
        first.heartbeat_interval.FromNanoseconds(int(self._heartbeat_s * 1e9))
        return messages

    async def _write(
        self,
        call: aio.StreamStreamCall[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse],
        outbox: asyncio.Queue[pb.WatchEntitlementsRequest],
    ) -> None:
        # A failed write means the stream broke: the reader sees why, and the next stream asks again for whatever
        # this one had not answered yet.
        if not await accepted(call):
            return
        try:
            while True:
                await call.write(await outbox.get())
        except (grpc.RpcError, asyncio.InvalidStateError):
            return

    async def _watch_silence(
        self, call: aio.StreamStreamCall[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse]
    ) -> None:
        """Marks the cache stale once nothing was heard for `max_staleness` (three heartbeats missed), and cancels
        the stream, which is then opened again: the connection is presumed dead."""
        opened_at = time.monotonic()
        while True:
            now = time.monotonic()
            deadline = max(self._heard_at, opened_at) + self._max_staleness
            if now < deadline:
                await asyncio.sleep(deadline - now)
                continue
            if self._state is CacheState.CONNECTED:
                self._set_state(CacheState.STALE)
            self._silenced = True
            call.cancel()
            return

    def _receive(self, message: pb.WatchEntitlementsResponse) -> None:
        self._heard_at = time.monotonic()
        event = message.WhichOneof("event")
        # A new stream is live from its first heartbeat, which the service sends as soon as the opening players'
        # snapshots are out: what comes before it (snapshots, or on a stream resumed from a cursor the changes it
        # may be catching up on) does not yet say that the cache holds everything up to now.
        if event == "heartbeat":
            self._live = True
        if self._live:
            if not self._fresh:
                self._fresh = True
                self._wake_guard.set()
            if self._state is not CacheState.CONNECTED:
                self._set_state(CacheState.CONNECTED)
        if event == "change":
            if self._contents.apply_change(message.change) == "gap":
                _log.warning("entitlement cache: player %r skipped a version; reading it again", message.change.user_id)
                self._put(pb.WatchEntitlementsRequest(add_user_ids=[message.change.user_id], snapshot=True))
        elif event == "snapshot":
            self._contents.apply_snapshot(message.snapshot)
            self._notify()
        if message.cursor:
            self._cursor = message.cursor

    def _send(self, user_ids: list[str], *, snapshot: bool) -> None:
        for message in batches(user_ids, snapshot=snapshot):
            self._put(message)

    def _put(self, message: pb.WatchEntitlementsRequest) -> None:
        # No stream open: the next one's opening messages carry the players as they then are.
        if self._outbox is not None:
            self._outbox.put_nowait(message)

    # -- state and waiting ------------------------------------------------------------------------------------------

    def _set_state(self, state: CacheState) -> None:
        # FAILED and CLOSED are final (a failed cache may still be closed).
        if state is self._state or self._state is CacheState.CLOSED:
            return
        if self._state is CacheState.FAILED and state is not CacheState.CLOSED:
            return
        self._state = state
        self._notify()
        if self._on_state is not None:
            try:
                self._on_state(state)
            except Exception:
                _log.exception("entitlement cache: on_state raised")

    def _fail(self, error: EntitlementsError) -> None:
        _log.error("entitlement cache stopped: %s", error)
        self._failure = error
        self._fresh = False
        self._set_state(CacheState.FAILED)
        self._notify()

    def _notify(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    def _raise_if_stopped(self) -> None:
        if self._closed:
            raise CacheClosedError("the cache is closed")
        if self._failure is not None:
            raise self._failed()

    def _failed(self) -> EntitlementsError:
        """A new instance of the error that stopped the cache, caused by it: raising the one instance again and again,
        from several threads, would grow and share its traceback."""
        failure = self._failure
        assert failure is not None
        error = type(failure)(failure.details, code=failure.code)
        error.__cause__ = failure
        return error

    async def _wait_for(self, predicate: Callable[[], bool], timeout_s: float | None) -> None:
        limit = self._timeout_s if timeout_s is None else timeout_s
        try:
            async with asyncio.timeout(limit):
                while True:
                    self._raise_if_stopped()
                    if predicate():
                        return
                    await self._progress.wait()
        except TimeoutError:
            missing = len(self._contents.players) - len(self._ready)
            raise DeadlineExceededError(
                f"the cache was not ready within {limit:g} s (stream {self._state.value}, {missing} players "
                "without their snapshot)",
                code=grpc.StatusCode.DEADLINE_EXCEEDED,
            ) from None


#: How long a stream's first write waits for the service to accept the stream (see `accepted`).
ACCEPT_WAIT_S = 2.0


async def accepted(call: aio.StreamStreamCall[pb.WatchEntitlementsRequest, pb.WatchEntitlementsResponse]) -> bool:
    """Waits until the service has accepted the stream, before its first message is written; False when the service
    ended the call instead (a refused key: the call's status says why).

    The service sends its response headers as soon as it has checked the API key. A message written after the service
    ended the call makes grpc.aio report INTERNAL "Internal error from Core" in place of the service's status
    (grpc/grpc#36066), which would make a refused key look like a transient failure. A service that sends its
    headers only with its first answer (an older one) is written to anyway after `ACCEPT_WAIT_S`.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(ACCEPT_WAIT_S):
            await call.initial_metadata()
    return not call.done()


def batches(user_ids: list[str], *, snapshot: bool) -> list[pb.WatchEntitlementsRequest]:
    return [
        pb.WatchEntitlementsRequest(add_user_ids=user_ids[start : start + MAX_PLAYERS_PER_MESSAGE], snapshot=snapshot)
        for start in range(0, len(user_ids), MAX_PLAYERS_PER_MESSAGE)
    ]
