"""`EntitlementCache`: the blocking client's entitlement cache, an `AsyncEntitlementCache` run on a thread.

The cache's stream runs on an event loop in a thread of its own, with an asyncio client connected as the blocking
client is (same target, key, TLS and options). Checks do not cross threads: they read the cache's dictionaries
directly, which the loop thread replaces or updates one entry at a time (each step atomic in CPython), so a check
sees a player's items before or after a change, never half of one.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable, Coroutine, Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

from entitlements.client._async import AsyncEntitlementsClient
from entitlements.client._cache import AsyncEntitlementCache
from entitlements.client._cache_state import CacheCounters, CachedCheck
from entitlements.client._cache_stream import CacheState
from entitlements.client._follow import FollowPolicy
from entitlements.errors import EntitlementsError
from entitlements.v1 import entitlements_pb2 as pb

if TYPE_CHECKING:
    from entitlements.client._sync import EntitlementsClient

__all__ = ["EntitlementCache"]

_T = TypeVar("_T")


class EntitlementCache:
    """The blocking twin of `AsyncEntitlementCache`, made by `EntitlementsClient.entitlement_cache`; use `with`.

    Same checks, errors and rules. `check` and `entitlements` may be called from any thread; `on_state` is called
    on the cache's own thread.
    """

    def __init__(
        self,
        client: EntitlementsClient,
        players: Iterable[str],
        *,
        project_id: int,
        max_staleness: float,
        on_state: Callable[[CacheState], None] | None,
        policy: FollowPolicy,
        wait: bool,
        timeout_s: float,
    ) -> None:
        """See `EntitlementsClient.entitlement_cache`."""
        self._client = AsyncEntitlementsClient.__new__(AsyncEntitlementsClient)
        self._client.__dict__.update(client._settings())
        self._client._closed = False
        self._cache = AsyncEntitlementCache(
            self._client,
            players,
            project_id=project_id,
            max_staleness=max_staleness,
            on_state=on_state,
            policy=policy,
            wait=wait,
            timeout_s=timeout_s,
        )
        self._wait = wait
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        # The checks themselves: no thread hop, no lock.
        self.check: Callable[[str, str], CachedCheck] = self._cache.check
        self.entitlements: Callable[[str], list[pb.Entitlement]] = self._cache.entitlements

    def start(self, *, wait: bool = True) -> Self:
        """Starts the cache's thread and stream; with `wait`, returns once every player's snapshot has arrived.

        Raises:
            As `AsyncEntitlementCache.start`; the cache is then closed.
        """
        if self._thread is not None:
            raise RuntimeError("the cache has already been started")
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="entitlements-cache", daemon=True)
        self._thread.start()
        try:
            self._run(self._cache.start(wait=wait))
        except BaseException:
            self.close()
            raise
        return self

    def wait_ready(self, timeout_s: float | None = None) -> None:
        """See `AsyncEntitlementCache.wait_ready`."""
        self._run(self._cache.wait_ready(timeout_s))

    def add_players(self, user_ids: Iterable[str], *, wait: bool = False, timeout_s: float | None = None) -> None:
        """See `AsyncEntitlementCache.add_players`."""
        self._run(self._cache.add_players(list(user_ids), wait=wait, timeout_s=timeout_s))

    def remove_players(self, user_ids: Iterable[str]) -> None:
        """See `AsyncEntitlementCache.remove_players`."""
        ids = list(user_ids)

        async def remove() -> None:
            self._cache.remove_players(ids)

        self._run(remove())

    def staleness(self) -> float:
        """Seconds since the cache last heard from the service."""
        return self._cache.staleness()

    @property
    def state(self) -> CacheState:
        return self._cache.state

    @property
    def failure(self) -> EntitlementsError | None:
        return self._cache.failure

    @property
    def players(self) -> frozenset[str]:
        return self._cache.players

    @property
    def counters(self) -> CacheCounters:
        return self._cache.counters

    def close(self) -> None:
        """Cancels the stream and stops the cache's thread; later checks raise `CacheClosedError`. Idempotent."""
        loop, thread, self._loop, self._thread = self._loop, self._thread, None, None
        if loop is None or thread is None:
            return
        if loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), loop).result()
            loop.call_soon_threadsafe(loop.stop)
        thread.join()
        loop.close()

    async def _shutdown(self) -> None:
        await self._cache.close()
        await self._client.close()

    def _run(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        if self._loop is None:
            coroutine.close()
            raise RuntimeError("the cache is not running: start it first (or use `with`)")
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    def __enter__(self) -> Self:
        return self.start(wait=self._wait)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"EntitlementCache(players={len(self._cache.players)}, state={self._cache.state.value})"
