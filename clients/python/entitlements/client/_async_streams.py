"""The asyncio client's streams: following an order (`get_order_status`, `follow_order`) and keeping a cache of
players' entitlements (`entitlement_cache`). `AsyncEntitlementsClient` inherits them."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from datetime import timedelta

from entitlements import _requests
from entitlements.client._async_stream import AsyncOrderStatusStream
from entitlements.client._async_watch import AsyncWatchStream
from entitlements.client._base import _BaseClient
from entitlements.client._cache import AsyncEntitlementCache
from entitlements.client._cache_state import MAX_PLAYERS_PER_MESSAGE
from entitlements.client._cache_stream import CacheState, batches
from entitlements.client._follow import AsyncOrderFollower, FollowPolicy
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc


class _AsyncStreams(_BaseClient):
    """The streaming methods of `AsyncEntitlementsClient` (see there)."""

    def _get_stub(self) -> pb_grpc.EntitlementServiceAsyncStub:
        raise NotImplementedError

    def get_order_status(
        self,
        order_id: str,
        user_id: str,
        *,
        project_id: int = 0,
        token: str = "",
        max_wait: timedelta | None = None,
        timeout_s: float | None = None,
    ) -> AsyncOrderStatusStream:
        """Follows one order: yields its stored state, then each status change, until it is done.

        The call starts at once; iterate the result with `async for`. It ends after a terminal status
        (DONE, CANCELED, EXPIRED) or, once `max_wait` has passed, after a message with `timed_out` set.
        Close it early with `async with` or `aclose()`, which cancels the call.

        Each update's `source` (`OrderStatusSource`) says who saw it: STORED (the state stored when the
        stream opened), WEBHOOK (an order webhook applied), WEBSOCKET and POLLING (Xsolla's order-status
        socket and Get order), RECONCILIATION (no webhook came: the service applied the order from Xsolla's
        own record of it). `entitlements_granted` says whether the items are in the inventory.

        Args:
            order_id: Xsolla's order id.
            user_id: The player who placed the order.
            project_id: The Xsolla project of the order; 0 for the client's `project_id` (see the constructor).
            token: The player's Xsolla Login JWT or Pay Station token, so the service can watch the order
                at Xsolla, not only through webhooks. Never logged by the service.
            max_wait: How long the server follows the order (up to 1 hour); its default (10 minutes) when
                None.
            timeout_s: A deadline for the whole stream, in seconds; None for none (the client's `timeout_s`
                does not apply: `max_wait` bounds the stream).

        Returns:
            An async iterator of updates; errors while iterating are `EntitlementsError` subclasses
            (`UnimplementedError` from servers without this RPC).
        """
        request = _requests.get_order_status(
            order_id, user_id, project_id=self._project(project_id), token=token, max_wait=max_wait
        )
        call = self._get_stub().GetOrderStatus(request, timeout=timeout_s, metadata=self._metadata)
        return AsyncOrderStatusStream(call)

    def follow_order(
        self,
        order_id: str,
        user_id: str,
        *,
        project_id: int = 0,
        token: str = "",
        max_wait: timedelta | None = None,
        policy: FollowPolicy | None = None,
    ) -> AsyncOrderFollower:
        """Follows one order like `get_order_status`, opening the stream again when it breaks.

        When a stream fails with `UNAVAILABLE` (the replica shut down, the connection dropped), the follower
        opens a new one after a backoff (`policy`), asking for what is left of `max_wait`, and skips what the
        caller has already seen: each status is delivered once, and once more only when
        `entitlements_granted` turns true. `opens` on the result counts the streams opened.

        Args:
            order_id: Xsolla's order id.
            user_id: The player who placed the order.
            project_id: The Xsolla project of the order; 0 for the client's.
            token: The player's Xsolla Login JWT or Pay Station token (see `get_order_status`).
            max_wait: How long to follow the order in all, across reopenings; the service's default (10 minutes)
                when None.
            policy: The backoff between openings; `FollowPolicy()` when None.

        Returns:
            An async iterator of updates that ends after a terminal status or `timed_out`; it raises the
            error of a stream that fails otherwise, or with `UNAVAILABLE` once `max_wait` has passed.
        """

        def open_stream(wait: timedelta | None) -> AsyncOrderStatusStream:
            return self.get_order_status(order_id, user_id, project_id=project_id, token=token, max_wait=wait)

        return AsyncOrderFollower(open_stream, max_wait, policy or FollowPolicy())

    def watch_entitlements(
        self,
        *,
        project_id: int = 0,
        cursor: str = "",
        all_players: bool = False,
        user_ids: Iterable[str] = (),
        snapshot: bool = False,
        heartbeat_interval: timedelta | None = None,
    ) -> AsyncWatchStream:
        """Opens one raw WatchEntitlements stream: the changes of every player (`all_players`) or of those named,
        as the service commits them. Most game servers want `entitlement_cache`, which holds the players, resumes
        and refuses when stale; this is the stream it is built on, for other uses.

        The call starts at once and has no deadline; iterate it with `async for`, close it with `async with` or
        `aclose()`. It is not reopened when it breaks: reopen with the last `cursor` received (see the proto).

        Args:
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            cursor: A cursor received earlier: resume right after it. Empty: from now.
            all_players: Watch every player of the project (then no `user_ids`, no snapshots).
            user_ids: The first players to watch (more with `add_players`); the first 10,000 go in the first
                message, the rest right after it.
            snapshot: Answer with a PlayerSnapshot of each of `user_ids`.
            heartbeat_interval: How long the stream may stay silent before a heartbeat, 1 s..5 minutes; the
                service's default (15 s) when None.

        Returns:
            The stream. Errors about the request (a bad cursor, OUT_OF_RANGE, a key without the read scope) are
            raised by the first iteration.
        """
        ids = list(user_ids)
        head, rest = ids[:MAX_PLAYERS_PER_MESSAGE], ids[MAX_PLAYERS_PER_MESSAGE:]
        first = pb.WatchEntitlementsRequest(
            project_id=self._project(project_id),
            cursor=cursor,
            all_players=all_players,
            add_user_ids=head,
            snapshot=snapshot and bool(head),
        )
        if heartbeat_interval is not None:
            first.heartbeat_interval.FromTimedelta(heartbeat_interval)
        call = self._get_stub().WatchEntitlements(metadata=self._metadata)  # type: ignore[call-arg]  # grpc-stubs: the iterator may be left out, then write()
        return AsyncWatchStream(call, [first, *batches(rest, snapshot=snapshot)])

    def entitlement_cache(
        self,
        players: Iterable[str] = (),
        *,
        project_id: int = 0,
        max_staleness: float = 5.0,
        wait_ready: bool = True,
        on_state: Callable[[CacheState], None] | None = None,
        policy: FollowPolicy | None = None,
        timeout_s: float | None = None,
    ) -> AsyncEntitlementCache:
        """A local cache of these players' entitlements, kept current by WatchEntitlements; use `async with`.

        Entering it opens the stream with a snapshot of every player and, with `wait_ready`, returns once they have
        all arrived. Checks (`cache.check(user_id, sku)`, `cache.entitlements(user_id)`) then answer from memory,
        and raise `StaleError` rather than answer from a copy the cache cannot vouch for: see
        `AsyncEntitlementCache` for the rules, and the README for how a game server uses it.

        Args:
            players: The players to hold at first (1..256 bytes each, up to 100,000); more can be added later.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            max_staleness: Seconds without hearing from the service after which checks raise `StaleError`, 2..900.
                The cache asks for a heartbeat every third of it (at least every second).
            wait_ready: Entering waits for every player's snapshot.
            on_state: Called, in the event loop, with each new `CacheState` (connected, resuming, stale, ...).
            policy: The backoff between reopenings of a broken stream; `FollowPolicy()` (100 ms doubling to 2 s,
                with jitter) when None.
            timeout_s: How long waiting for snapshots may take; the client's `timeout_s` when None.

        Raises:
            InvalidArgumentError: A bad player id (named) or more than 100,000 players.
            ValueError, TypeError: `max_staleness` is out of range or not a number.
        """
        return AsyncEntitlementCache(
            self,
            players,
            project_id=self._project(project_id),
            max_staleness=max_staleness,
            on_state=on_state,
            policy=policy or FollowPolicy(),
            wait=wait_ready,
            timeout_s=self._deadline(timeout_s),
        )
