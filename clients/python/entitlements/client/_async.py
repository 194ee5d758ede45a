"""The asyncio client: `AsyncEntitlementsClient` and its order-status stream."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from types import TracebackType
from typing import Self

from grpc import aio

from entitlements import _requests
from entitlements.client._async_streams import _AsyncStreams
from entitlements.client._base import _translated_errors
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc


class AsyncEntitlementsClient(_AsyncStreams):
    """Asyncio client of the entitlement service.

    Use one client for the life of the process (it holds one HTTP/2 connection that all calls share), inside
    `async with`, or call `close()` at shutdown. The channel is opened on first use, inside the running event
    loop, and the client then belongs to that loop.

    Every method raises a subclass of `entitlements.errors.EntitlementsError` when the call fails, and
    `RuntimeError` when the client is closed or used from another event loop.

    Args:
        target: The service's address, `host:port` or any gRPC target (`dns:///...`, `unix:...`).
        api_key: Sent as `authorization: Bearer <api_key>` with every call; None sends no key (for a server
            in insecure development mode). Over a channel without TLS the key travels in clear.
        tls: A `TLSConfig`; True for TLS with the default root certificates; None or False for a plaintext
            channel.
        timeout_s: The deadline of each unary call, in seconds, unless the call passes its own.
        retry_policy: Which failures gRPC retries by itself (see `RetryPolicy`); None turns this off, leaving
            only gRPC's transparent retries of requests that never reached the server.
        channel_options: Extra gRPC channel options; they replace the client's own of the same name.
        project_id: The Xsolla project of the calls that leave their own `project_id` at 0. When both are 0,
            the service picks: the project the API key is bound to when it is bound to one, else its default
            project (else the call is InvalidArgumentError naming `project_id`).

    Raises:
        ValueError: `timeout_s` is not positive.
        TypeError: `project_id` is not an int.

    Example:
        async with AsyncEntitlementsClient("entitlements:50051", api_key=key, tls=True) as client:
            if (await client.check_entitlement(player_id, "vip_pass")).active:
                ...
    """

    _channel: aio.Channel | None = None
    _stub: pb_grpc.EntitlementServiceAsyncStub | None = None
    _loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> Self:
        self._get_stub()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self, *, grace_s: float | None = None) -> None:
        """Closes the channel. Idempotent.

        Args:
            grace_s: How long calls in flight may still run, in seconds; None cancels them at once.
        """
        self._closed = True
        channel, self._channel, self._stub = self._channel, None, None
        if channel is not None:
            await channel.close(grace_s)

    def _get_stub(self) -> pb_grpc.EntitlementServiceAsyncStub:
        if self._closed:
            raise RuntimeError("the client has been closed")
        # Raises RuntimeError outside a coroutine, rather than letting grpc.aio pick or create a loop.
        loop = asyncio.get_running_loop()
        if self._stub is None:
            # grpc.aio channels are bound to the loop they are created in, hence here and not in __init__:
            # the client can be built at import time or in synchronous setup code.
            if self._credentials is None:
                self._channel = aio.insecure_channel(self._target, options=self._options)
            else:
                self._channel = aio.secure_channel(self._target, self._credentials, options=self._options)
            self._stub = pb_grpc.EntitlementServiceStub(self._channel)
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("the client is bound to the event loop it was first used in")
        return self._stub

    async def grant(
        self,
        user_id: str,
        sku: str,
        *,
        project_id: int = 0,
        quantity: int | None = None,
        duration: timedelta | None = None,
        kind: int | None = None,
        idempotency_key: str | None = None,
        reason: str = "",
        metadata: Mapping[str, str] | None = None,
        timeout_s: float | None = None,
    ) -> pb.GrantResponse:
        """Grants an item: adds to a consumable, owns a permanent item, extends a time-limited one.

        Args:
            user_id: The player id used with Xsolla.
            sku: The Xsolla item SKU.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            quantity: Units (or periods, for time-limited items) to grant; the server's default 1 when None.
            duration: One period of a time-limited item; setting it makes the grant TIME_LIMITED.
            kind: An `EntitlementKind` value; None lets the server infer it (see the proto).
            idempotency_key: Identifies this logical grant, e.g. "order-123:line-1". Replaying a key returns
                the first response with `replayed` set. None generates a fresh UUID, which covers the client's
                own retries of this call but not a second call made after an error: pass a key derived
                from your data when you may call again.
            reason: Why, for the audit ledger.
            metadata: Free-form context for the audit ledger.
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            The entitlement after the grant, and whether the call was a replay.

        Raises:
            InvalidArgumentError: A field is missing or out of range, or the project is not one the service
                serves.
            ConflictError: The key was used for a different request, or the sku is held as another kind.
            AuthenticationError, PermissionDeniedError: The API key is unknown, lacks the `write` scope, or is
                not bound to the project.
            RetryableError: Unavailable or too slow after the retry policy ran out; call again with the
                same idempotency key.
        """
        request = _requests.grant(
            user_id,
            sku,
            project_id=self._project(project_id),
            quantity=quantity,
            duration=duration,
            kind=kind,
            idempotency_key=idempotency_key,
            reason=reason,
            metadata=metadata,
        )
        with _translated_errors():
            return await self._get_stub().Grant(request, timeout=self._deadline(timeout_s), metadata=self._metadata)

    async def revoke(
        self,
        user_id: str,
        sku: str,
        *,
        project_id: int = 0,
        idempotency_key: str | None = None,
        reason: str = "",
        timeout_s: float | None = None,
    ) -> pb.RevokeResponse:
        """Removes an item from a player completely, whatever its kind or quantity.

        Args:
            user_id: The player id used with Xsolla.
            sku: The Xsolla item SKU.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            idempotency_key: Identifies this logical revoke; see `grant`.
            reason: Why, for the audit ledger.
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            Whether anything was removed (revoking an item not held is not an error), what the player
            held before, and whether the call was a replay.

        Raises:
            InvalidArgumentError, ConflictError, AuthenticationError, PermissionDeniedError, RetryableError:
                As for `grant`.
        """
        request = _requests.revoke(
            user_id, sku, project_id=self._project(project_id), idempotency_key=idempotency_key, reason=reason
        )
        with _translated_errors():
            return await self._get_stub().Revoke(request, timeout=self._deadline(timeout_s), metadata=self._metadata)

    async def check_entitlement(
        self, user_id: str, sku: str, *, project_id: int = 0, timeout_s: float | None = None
    ) -> pb.CheckEntitlementResponse:
        """Tells whether a player holds an item now.

        Args:
            user_id: The player id used with Xsolla.
            sku: The Xsolla item SKU.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            `active`, and the stored entitlement when there is one (also when it has expired).

        Raises:
            InvalidArgumentError, AuthenticationError, PermissionDeniedError, RetryableError: See the errors
                module.
        """
        request = _requests.check_entitlement(user_id, sku, project_id=self._project(project_id))
        with _translated_errors():
            return await self._get_stub().CheckEntitlement(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    async def check_entitlements(
        self, pairs: Iterable[tuple[str, str]], *, project_id: int = 0, timeout_s: float | None = None
    ) -> pb.CheckEntitlementsResponse:
        """Checks up to 1,000 (player, sku) pairs in one call, as `check_entitlement` would check each.

        Args:
            pairs: (user_id, sku) pairs; they may repeat and name up to 1,000 players.
            project_id: The Xsolla project of every pair; 0 for the client's `project_id` (see the constructor).
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            `results[i]` answers `pairs[i]`, each as of one moment of its player.

        Raises:
            InvalidArgumentError: No pair, more than 1,000, or a bad pair (named, e.g. `checks[3].sku`); nothing is
                answered.
            AuthenticationError, PermissionDeniedError, RetryableError: See the errors module.
        """
        request = _requests.check_entitlements(pairs, project_id=self._project(project_id))
        with _translated_errors():
            return await self._get_stub().CheckEntitlements(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    async def list_entitlements(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        include_expired: bool = False,
        timeout_s: float | None = None,
    ) -> pb.ListEntitlementsResponse:
        """Returns one page of a player's entitlements, in sku order.

        Args:
            user_id: The player id used with Xsolla.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            page_size: Entitlements per page, 1..500; 0 for the server's default (50).
            page_token: `next_page_token` of the previous page; empty for the first.
            include_expired: Also list time-limited items whose period has ended.
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            The page and the token of the next one (empty on the last page). A page may hold fewer than
            `page_size` entitlements, even none, while more follow (the server skips a bounded number of
            expired items per call): only an empty `next_page_token` ends the listing.

        Raises:
            InvalidArgumentError: A field is out of range or the token belongs to another request.
            AuthenticationError, PermissionDeniedError, RetryableError: See the errors module.
        """
        request = _requests.list_entitlements(
            user_id,
            project_id=self._project(project_id),
            page_size=page_size,
            page_token=page_token,
            include_expired=include_expired,
        )
        with _translated_errors():
            return await self._get_stub().ListEntitlements(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    async def iter_entitlements(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        include_expired: bool = False,
        timeout_s: float | None = None,
    ) -> AsyncIterator[pb.Entitlement]:
        """Yields all of a player's entitlements, fetching page after page as the iteration goes.

        Arguments and errors are those of `list_entitlements`; `timeout_s` applies to each page. No call is
        open between pages, so stopping early leaves nothing to clean up.
        """
        page_token = ""
        while True:
            page = await self.list_entitlements(
                user_id,
                project_id=project_id,
                page_size=page_size,
                page_token=page_token,
                include_expired=include_expired,
                timeout_s=timeout_s,
            )
            for entitlement in page.entitlements:
                yield entitlement
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    async def list_subscriptions(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        limit: int = 0,
        offset: int = 0,
        locale: str = "",
        include_inactive: bool = False,
        timeout_s: float | None = None,
    ) -> pb.ListSubscriptionsResponse:
        """Returns a player's subscriptions in the shape of Xsolla's user subscriptions API.

        Args:
            user_id: The player id used with Xsolla.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            limit: Subscriptions per page, 1..100; 0 for the server's default (15).
            offset: How many subscriptions to skip.
            locale: ISO 639-1 language code; empty for English.
            include_inactive: Also list canceled and expired subscriptions.
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            Recurring subscriptions first, then non-renewing ones, and whether more follow.

        Raises:
            InvalidArgumentError, AuthenticationError, PermissionDeniedError, RetryableError: See the errors
                module.
        """
        request = _requests.list_subscriptions(
            user_id,
            project_id=self._project(project_id),
            limit=limit,
            offset=offset,
            locale=locale,
            include_inactive=include_inactive,
        )
        with _translated_errors():
            return await self._get_stub().ListSubscriptions(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    async def list_ledger(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListLedgerResponse:
        """Returns one page of a player's audit ledger, newest first: each change with who made it, why, the
        quantity and expiry before and after, and a one-sentence summary.

        Args:
            user_id: The player id used with Xsolla.
            project_id: The Xsolla project; 0 for the client's `project_id` (see the constructor).
            page_size: Entries per page, 1..500; 0 for the server's default (50).
            page_token: `next_page_token` of the previous page; empty for the newest entries.
            timeout_s: This call's deadline in seconds; the client's `timeout_s` when None.

        Returns:
            The page and the token of the next (older) one, empty on the last page. A player with no ledger has an
            empty page.

        Raises:
            InvalidArgumentError: A field is out of range or the token belongs to another player or project.
            AuthenticationError, PermissionDeniedError, RetryableError: See the errors module.
        """
        request = _requests.list_ledger(
            user_id, project_id=self._project(project_id), page_size=page_size, page_token=page_token
        )
        with _translated_errors():
            return await self._get_stub().ListLedger(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )
