"""`AsyncEntitlementCache`: a game server's copy of its players' entitlements, kept current by WatchEntitlements.

The cache opens one WatchEntitlements stream with a snapshot of every player it holds, applies each change whose
version is the player's next one, and answers checks from memory. It refuses rather than answers stale: when it
has not heard from the service for `max_staleness` (a change, a snapshot or a heartbeat, which it asks for every
third of that), or its stream is down, a check raises `StaleError`. A stale "owned" after a refund gives away what
was paid back; a stale "not owned" after a purchase takes from a player what they just paid for. Either is worse
than the caller asking the service (CheckEntitlement) or waiting, which `StaleError` lets it do.

Resuming follows conformance/PROTOCOL.md, like the Go client's cache: a broken stream (UNAVAILABLE, a dropped
connection, CANCELLED by a stopping server, silence past `max_staleness`) is opened again after a backoff with the
last cursor and the players held, without snapshots; OUT_OF_RANGE (the history is gone) opens it without a cursor
and reads every player again; UNAUTHENTICATED, PERMISSION_DENIED, INVALID_ARGUMENT and UNIMPLEMENTED stop the cache,
and every later check raises that error.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, NoReturn, Self

from entitlements.client._cache_state import (
    MAX_PLAYERS,
    MAX_PLAYERS_PER_MESSAGE,
    NOT_HELD,
    CacheContents,
    CacheCounters,
    CachedCheck,
    check_players,
)
from entitlements.client._cache_stream import HEARTBEAT_MAX_S, HEARTBEAT_MIN_S, CacheState, _CacheStream
from entitlements.client._follow import FollowPolicy
from entitlements.errors import CacheClosedError, EntitlementsError, InvalidArgumentError, NotCachedError, StaleError
from entitlements.v1 import entitlements_pb2 as pb

if TYPE_CHECKING:
    from entitlements.client._async_streams import _AsyncStreams

__all__ = ["AsyncEntitlementCache", "CacheState"]

_time = time.time


class AsyncEntitlementCache(_CacheStream):
    """An in-process copy of some players' entitlements; made by `AsyncEntitlementsClient.entitlement_cache`.

    Start it with `async with` (or `await start()`, then `await close()`); checks (`check`, `entitlements`) are
    plain method calls with no I/O. Belongs to the event loop it was started in.

    Attributes:
        counters: What the cache has done (changes applied, snapshots, reopenings, gaps, duplicates).
    """

    def __init__(
        self,
        client: _AsyncStreams,
        players: Iterable[str],
        *,
        project_id: int,
        max_staleness: float,
        on_state: Callable[[CacheState], None] | None,
        policy: FollowPolicy,
        wait: bool,
        timeout_s: float,
    ) -> None:
        """See `AsyncEntitlementsClient.entitlement_cache`."""
        if isinstance(max_staleness, bool) or not isinstance(max_staleness, int | float):
            raise TypeError(f"max_staleness must be a number of seconds, not {type(max_staleness).__name__}")
        # At least twice the shortest heartbeat interval, so that a quiet, healthy stream is never taken as stale
        # between two heartbeats; at most three times the longest.
        if not 2 * HEARTBEAT_MIN_S <= max_staleness <= 3 * HEARTBEAT_MAX_S:
            raise ValueError("max_staleness must be 2..900 s (the service sends heartbeats every 1 s to 5 minutes)")
        initial = check_players("players", players)
        _check_count(len(set(initial)))
        super().__init__(
            client,
            CacheContents(CacheCounters()),
            project_id=project_id,
            max_staleness=max_staleness,
            on_state=on_state,
            policy=policy,
            timeout_s=timeout_s,
        )
        self._contents.add(initial)
        self._wait = wait
        self._task: asyncio.Task[None] | None = None

    # -- checks: no I/O, no await ---------------------------------------------------------------------------------

    def check(self, user_id: str, sku: str) -> CachedCheck:
        """Tells whether a player holds an item now, as CheckEntitlement would, from memory.

        A time-limited item stops being active at its `expires_at` by the local clock, with no change needed.

        Raises:
            NotCachedError: The player is not in the cache, or its first snapshot has not arrived.
            StaleError: The cache cannot vouch for the player now (see the module docstring).
            CacheClosedError: The cache was closed.
            EntitlementsError: The error that stopped the cache (`AuthenticationError`, ...).
        """
        # The hot path of a game server: a flag, two lookups, and a clock reading for time-limited items only.
        if not self._fresh:
            self._refuse(user_id)
        try:
            items = self._ready[user_id]  # a subscript, cheaper than .get() (try costs nothing when not raising)
        except KeyError:
            self._refuse(user_id)
        answer = items.get(sku, NOT_HELD)
        expires_at = answer._expires_at
        if expires_at is None or _time() < expires_at:
            return answer
        return answer._expired  # type: ignore[return-value]  # set whenever _expires_at is

    def entitlements(self, user_id: str) -> list[pb.Entitlement]:
        """Everything the player holds, in sku order, with `active` as of now (expired items included, inactive).

        Raises:
            As `check`. The entitlements are shared: read them, do not modify them.
        """
        if not self._fresh:
            self._refuse(user_id)
        items = self._ready.get(user_id)
        if items is None:
            self._refuse(user_id)
        return self._contents.entitlements(items)

    @property
    def state(self) -> CacheState:
        """Where the stream stands (see `CacheState`)."""
        return self._state

    @property
    def failure(self) -> EntitlementsError | None:
        """The error that stopped the cache, if one did."""
        return self._failure

    @property
    def players(self) -> frozenset[str]:
        """The players held, whether or not their snapshot has arrived."""
        return frozenset(self._contents.players)

    def _refuse(self, user_id: str) -> NoReturn:
        if self._closed:
            raise CacheClosedError("the cache is closed")
        if self._failure is not None:
            raise self._failed()
        player = self._contents.players.get(user_id)
        if player is None:
            raise NotCachedError(f"player {user_id!r} is not in the cache: add it, or ask the service")
        if player.awaiting == "add":
            raise NotCachedError(f"player {user_id!r}: its snapshot has not arrived yet")
        staleness = self.staleness()
        if player.awaiting == "again":
            raise StaleError(f"player {user_id!r} is being read again after a missed change", staleness_s=staleness)
        if self._state is CacheState.CONNECTED:
            reason = f"nothing heard from the service for {staleness:.1f} s (max_staleness {self._max_staleness:g} s)"
        else:
            reason = f"the stream is {self._state.value}; last heard from the service {staleness:.1f} s ago"
        raise StaleError(f"the cache is stale: {reason}", staleness_s=staleness)

    # -- players ----------------------------------------------------------------------------------------------------

    async def add_players(self, user_ids: Iterable[str], *, wait: bool = False, timeout_s: float | None = None) -> None:
        """Starts holding these players: their snapshots are asked for; until each arrives, checks on the player
        raise `NotCachedError`. Players already held are left as they are.

        Args:
            user_ids: Player ids, 1..256 bytes of UTF-8 each; the cache holds at most 100,000.
            wait: Return only once every one of them has its snapshot.
            timeout_s: How long `wait` may take; the client's `timeout_s` when None.

        Raises:
            InvalidArgumentError: A bad id (named) or too many players; nothing is changed.
            DeadlineExceededError: `wait` took longer than `timeout_s` (the players stay added).
            CacheClosedError, EntitlementsError: The cache is closed or stopped.
        """
        checked = check_players("user_ids", user_ids)
        _check_count(len(self._contents.players.keys() | set(checked)))
        self._raise_if_stopped()
        added = self._contents.add(checked)
        if added:
            self._has_players.set()
            self._send(added, snapshot=True)
        if wait:
            await self._wait_for(
                lambda: all(u in self._ready for u in checked if u in self._contents.players), timeout_s
            )

    def remove_players(self, user_ids: Iterable[str]) -> None:
        """Stops holding these players, at once: checks on them raise `NotCachedError`. Unknown ids are ignored.

        Raises:
            InvalidArgumentError: A bad id (named); nothing is changed.
        """
        checked = check_players("user_ids", user_ids)
        held = [user_id for user_id in checked if user_id in self._contents.players]
        self._contents.remove(held)
        for start in range(0, len(held), MAX_PLAYERS_PER_MESSAGE):
            self._put(pb.WatchEntitlementsRequest(remove_user_ids=held[start : start + MAX_PLAYERS_PER_MESSAGE]))

    # -- life cycle -------------------------------------------------------------------------------------------------

    async def start(self, *, wait: bool = True) -> Self:
        """Opens the stream; with `wait`, returns once every player's snapshot has arrived (see `wait_ready`).

        Raises:
            As `wait_ready`; the cache is then closed.
        """
        if self._task is not None:
            raise RuntimeError("the cache has already been started")
        self._raise_if_stopped()
        if self._contents.players:
            self._has_players.set()
        self._task = asyncio.get_running_loop().create_task(self._run(), name="entitlements-cache")
        threading.Thread(target=self._guard_freshness, name="entitlements-cache-freshness", daemon=True).start()
        if wait:
            try:
                await self.wait_ready()
            except BaseException:
                await self.close()
                raise
        return self

    async def wait_ready(self, timeout_s: float | None = None) -> None:
        """Returns once every player held has its snapshot and the stream is live.

        Raises:
            DeadlineExceededError: Not ready within `timeout_s` (the client's `timeout_s` when None).
            CacheClosedError, EntitlementsError: The cache was closed, or stopped on that error.
        """
        await self._wait_for(self._is_ready, timeout_s)

    def _is_ready(self) -> bool:
        players = len(self._contents.players)
        return players == 0 or (self._state is CacheState.CONNECTED and len(self._ready) == players)

    async def close(self) -> None:
        """Cancels the stream; later checks raise `CacheClosedError`. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._fresh = False
        self._wake_guard.set()
        self._set_state(CacheState.CLOSED)
        self._notify()
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def __aenter__(self) -> Self:
        return await self.start(wait=self._wait)

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        return f"AsyncEntitlementCache(players={len(self._contents.players)}, state={self._state.value})"


def _check_count(count: int) -> None:
    if count > MAX_PLAYERS:
        raise InvalidArgumentError(f"players: a cache holds at most {MAX_PLAYERS:,} players, {count:,} asked for")
