"""The blocking client: `EntitlementsClient` and its order-status stream."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from datetime import timedelta
from types import TracebackType
from typing import Any, Self

import grpc

from entitlements import _requests
from entitlements._config import RetryPolicy, TLSConfig
from entitlements.client._base import DEFAULT_RETRY_POLICY, DEFAULT_TIMEOUT_S, _BaseClient, _translated_errors
from entitlements.client._cache_blocking import EntitlementCache
from entitlements.client._cache_stream import CacheState
from entitlements.client._follow import FollowPolicy, OrderFollower
from entitlements.errors import translate_rpc_error
from entitlements.v1 import entitlements_pb2 as pb
from entitlements.v1 import entitlements_pb2_grpc as pb_grpc


class EntitlementsClient(_BaseClient):
    """Blocking client of the entitlement service, safe to share between threads.

    Same constructor arguments, methods, return values and errors as `AsyncEntitlementsClient`, without
    `await`; `get_order_status` returns an `OrderStatusStream`. Use it inside `with`, or call `close()`.
    The channel is created with the client; it connects on the first call.
    """

    def __init__(
        self,
        target: str,
        *,
        api_key: str | None = None,
        tls: TLSConfig | bool | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        retry_policy: RetryPolicy | None = DEFAULT_RETRY_POLICY,
        channel_options: Sequence[tuple[str, Any]] = (),
        project_id: int = 0,
    ) -> None:
        """Creates the channel; see `AsyncEntitlementsClient` for the arguments."""
        super().__init__(
            target,
            api_key=api_key,
            tls=tls,
            timeout_s=timeout_s,
            retry_policy=retry_policy,
            channel_options=channel_options,
            project_id=project_id,
        )
        if self._credentials is None:
            self._channel = grpc.insecure_channel(self._target, options=self._options)
        else:
            self._channel = grpc.secure_channel(self._target, self._credentials, options=self._options)
        self._stub = pb_grpc.EntitlementServiceStub(self._channel)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Closes the channel, cancelling calls in flight. Idempotent."""
        self._closed = True
        self._channel.close()

    def _get_stub(self) -> pb_grpc.EntitlementServiceStub:
        # A closed sync channel fails calls with a bare ValueError; say what happened instead.
        if self._closed:
            raise RuntimeError("the client has been closed")
        return self._stub

    def grant(
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
        """Grants an item to a player; see `AsyncEntitlementsClient.grant`."""
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
            return self._get_stub().Grant(request, timeout=self._deadline(timeout_s), metadata=self._metadata)

    def revoke(
        self,
        user_id: str,
        sku: str,
        *,
        project_id: int = 0,
        idempotency_key: str | None = None,
        reason: str = "",
        timeout_s: float | None = None,
    ) -> pb.RevokeResponse:
        """Removes an item from a player; see `AsyncEntitlementsClient.revoke`."""
        request = _requests.revoke(
            user_id, sku, project_id=self._project(project_id), idempotency_key=idempotency_key, reason=reason
        )
        with _translated_errors():
            return self._get_stub().Revoke(request, timeout=self._deadline(timeout_s), metadata=self._metadata)

    def check_entitlement(
        self, user_id: str, sku: str, *, project_id: int = 0, timeout_s: float | None = None
    ) -> pb.CheckEntitlementResponse:
        """Tells whether a player holds an item now; see `AsyncEntitlementsClient.check_entitlement`."""
        request = _requests.check_entitlement(user_id, sku, project_id=self._project(project_id))
        with _translated_errors():
            return self._get_stub().CheckEntitlement(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    def check_entitlements(
        self, pairs: Iterable[tuple[str, str]], *, project_id: int = 0, timeout_s: float | None = None
    ) -> pb.CheckEntitlementsResponse:
        """Checks up to 1,000 (player, sku) pairs in one call; see `AsyncEntitlementsClient.check_entitlements`."""
        request = _requests.check_entitlements(pairs, project_id=self._project(project_id))
        with _translated_errors():
            return self._get_stub().CheckEntitlements(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    def list_entitlements(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        include_expired: bool = False,
        timeout_s: float | None = None,
    ) -> pb.ListEntitlementsResponse:
        """Returns one page of a player's entitlements; see `AsyncEntitlementsClient.list_entitlements`."""
        request = _requests.list_entitlements(
            user_id,
            project_id=self._project(project_id),
            page_size=page_size,
            page_token=page_token,
            include_expired=include_expired,
        )
        with _translated_errors():
            return self._get_stub().ListEntitlements(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    def iter_entitlements(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        include_expired: bool = False,
        timeout_s: float | None = None,
    ) -> Iterator[pb.Entitlement]:
        """Yields all of a player's entitlements; see `AsyncEntitlementsClient.iter_entitlements`."""
        page_token = ""
        while True:
            page = self.list_entitlements(
                user_id,
                project_id=project_id,
                page_size=page_size,
                page_token=page_token,
                include_expired=include_expired,
                timeout_s=timeout_s,
            )
            yield from page.entitlements
            if not page.next_page_token:
                return
            page_token = page.next_page_token

    def list_subscriptions(
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
        """Returns a player's subscriptions; see `AsyncEntitlementsClient.list_subscriptions`."""
        request = _requests.list_subscriptions(
            user_id,
            project_id=self._project(project_id),
            limit=limit,
            offset=offset,
            locale=locale,
            include_inactive=include_inactive,
        )
        with _translated_errors():
            return self._get_stub().ListSubscriptions(
                request, timeout=self._deadline(timeout_s), metadata=self._metadata
            )

    def list_ledger(
        self,
        user_id: str,
        *,
        project_id: int = 0,
        page_size: int = 0,
        page_token: str = "",
        timeout_s: float | None = None,
    ) -> pb.ListLedgerResponse:
        """Returns one page of a player's audit ledger, newest first; see `AsyncEntitlementsClient.list_ledger`."""
        request = _requests.list_ledger(
            user_id, project_id=self._project(project_id), page_size=page_size, page_token=page_token
        )
        with _translated_errors():
            return self._get_stub().ListLedger(request, timeout=self._deadline(timeout_s), metadata=self._metadata)

    def get_order_status(
        self,
        order_id: str,
        user_id: str,
        *,
        project_id: int = 0,
        token: str = "",
        max_wait: timedelta | None = None,
        timeout_s: float | None = None,
    ) -> OrderStatusStream:
        """Follows one order; see `AsyncEntitlementsClient.get_order_status`. Close the stream with `with`."""
        request = _requests.get_order_status(
            order_id, user_id, project_id=self._project(project_id), token=token, max_wait=max_wait
        )
        call = self._get_stub().GetOrderStatus(request, timeout=timeout_s, metadata=self._metadata)
        return OrderStatusStream(call)

    def follow_order(
        self,
        order_id: str,
        user_id: str,
        *,
        project_id: int = 0,
        token: str = "",
        max_wait: timedelta | None = None,
        policy: FollowPolicy | None = None,
    ) -> OrderFollower:
        """Follows one order, opening the stream again when it breaks; see `AsyncEntitlementsClient.follow_order`."""

        def open_stream(wait: timedelta | None) -> OrderStatusStream:
            return self.get_order_status(order_id, user_id, project_id=project_id, token=token, max_wait=wait)

        return OrderFollower(open_stream, max_wait, policy or FollowPolicy())

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
    ) -> EntitlementCache:
        """A local cache of these players' entitlements; see `AsyncEntitlementsClient.entitlement_cache`.

        The cache runs its stream on a thread of its own (with its own connection); use it inside `with`. Checks
        may be called from any thread; `on_state` is called on the cache's thread.
        """
        return EntitlementCache(
            self,
            players,
            project_id=self._project(project_id),
            max_staleness=max_staleness,
            on_state=on_state,
            policy=policy or FollowPolicy(),
            wait=wait_ready,
            timeout_s=self._deadline(timeout_s),
        )


class OrderStatusStream(Iterator[pb.OrderStatusUpdate]):
    """The updates of one blocking `get_order_status` call, as an iterator that can be closed early.

    Iteration raises `EntitlementsError` subclasses for failed calls. After `close()` (or leaving `with`),
    from any thread, the call is cancelled and iteration simply stops.
    """

    def __init__(self, call: grpc.CallIterator[pb.OrderStatusUpdate]) -> None:
        self._call = call
        self._messages = iter(call)
        self._closed = False

    def __iter__(self) -> Self:
        return self

    def __next__(self) -> pb.OrderStatusUpdate:
        if self._closed:
            raise StopIteration
        try:
            return next(self._messages)
        except grpc.RpcError as exc:
            # A call we cancelled ourselves (close() from another thread) ends as an RpcError with CANCELLED.
            if self._closed:
                raise StopIteration from None
            self._closed = True
            raise translate_rpc_error(exc) from exc

    def close(self) -> None:
        """Cancels the call, if still running; iteration then stops. Idempotent."""
        self._closed = True
        self._call.cancel()  # type: ignore[no-untyped-call]  # grpc-stubs leaves RpcContext.cancel unannotated

    cancel = close

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
