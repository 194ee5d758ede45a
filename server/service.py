"""The EntitlementService servicer: validates each request, calls the store (or the order trackers), and shapes
the response.

Authentication, the request's project, status mapping, logging and metrics are applied by `server.rpc.RpcRuntime`:
each method runs in the project it is given, which its caller is bound to and the service serves.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator, AsyncIterator
from typing import TYPE_CHECKING, Any

import grpc
from google.protobuf.timestamp_pb2 import Timestamp

from core.clock import now_ms
from entitlements.v1 import entitlements_pb2 as pb
from server import validation
from server.auth import Principal
from server.catalog import Catalogs
from server.duplex import duplex_rpc
from server.ledger_view import LedgerLine, ledger_page
from server.metrics import ServiceMetrics
from server.rpc import STREAM_ACCEPTED, RpcRuntime, announces_acceptance, rpc, stream_rpc
from server.store import EntitlementRecord, EntitlementStore, RecurringSubscription, StoredFields
from server.tracking import OrderTracking
from server.tracking.settings import MAX_ORDER_WAIT_S

if TYPE_CHECKING:
    from server.watch import Watches

Context = grpc.aio.ServicerContext[Any, Any]


def _timestamp(ms: int) -> Timestamp:
    return Timestamp(seconds=ms // 1000, nanos=(ms % 1000) * 1_000_000)


def fill_entitlement(message: pb.Entitlement, user_id: str, sku: str, stored: StoredFields, now_ms: int) -> bool:
    """Sets `message` (empty) to the protobuf form of a stored entitlement, with `active` evaluated at `now_ms`, in
    place: the read paths fill the response's own sub-messages instead of building and copying new ones.

    Returns:
        `active`.
    """
    kind, quantity, granted_at, updated_at, expires_at, period_ms, _ = stored
    message.user_id = user_id
    message.sku = sku
    message.kind = kind  # type: ignore[assignment]  # stored kinds are the enum's values
    message.quantity = quantity
    # Each access of a sub-message builds a Python object for it (upb): one per timestamp, its two fields set on it
    # (CheckEntitlements fills 100 or more of these per call).
    at = message.granted_at
    at.seconds, at.nanos = granted_at // 1000, granted_at % 1000 * 1_000_000
    at = message.updated_at
    at.seconds, at.nanos = updated_at // 1000, updated_at % 1000 * 1_000_000
    if expires_at is not None:
        at = message.expires_at
        at.seconds, at.nanos = expires_at // 1000, expires_at % 1000 * 1_000_000
    if period_ms is not None:
        period = message.period
        period.seconds, period.nanos = period_ms // 1000, period_ms % 1000 * 1_000_000
    active = quantity > 0 and (expires_at is None or now_ms < expires_at)  # as EntitlementRecord.active
    message.active = active
    return active


def _stored(record: EntitlementRecord) -> StoredFields:
    return (
        record.kind,
        record.quantity,
        record.granted_at_ms,
        record.updated_at_ms,
        record.expires_at_ms,
        record.period_ms,
        record.period_months,
    )


def entitlement_message(record: EntitlementRecord, now_ms: int) -> pb.Entitlement:
    """The protobuf form of a stored entitlement, with `active` evaluated at `now_ms`."""
    message = pb.Entitlement()
    fill_entitlement(message, record.user_id, record.sku, _stored(record), now_ms)
    return message


def check_response(record: EntitlementRecord | None, now_ms: int) -> pb.CheckEntitlementResponse:
    """CheckEntitlement's answer for a stored entitlement (or None: never held, or revoked) at `now_ms`."""
    response = pb.CheckEntitlementResponse()
    if record is not None:
        response.active = fill_entitlement(response.entitlement, record.user_id, record.sku, _stored(record), now_ms)
    return response


def check_responses(
    pairs: list[tuple[str, str]], stored: list[StoredFields | None], now_ms: int
) -> pb.CheckEntitlementsResponse:
    """CheckEntitlements' answer: for each (user_id, sku) pair and what is stored of it, in order, what
    `check_response` answers, built in place."""
    response = pb.CheckEntitlementsResponse()
    add = response.results.add
    for (user_id, sku), fields in zip(pairs, stored, strict=True):
        result = add()
        if fields is not None:
            result.active = fill_entitlement(result.entitlement, user_id, sku, fields, now_ms)
    return response


_PERIOD_UNITS = ((86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"))


def _period(period_ms: int) -> pb.Period:
    for unit_ms, unit in _PERIOD_UNITS:
        if period_ms % unit_ms == 0:
            return pb.Period(value=period_ms // unit_ms, unit=unit)
    return pb.Period(value=max(1, period_ms // 1000), unit="second")


def non_renewing_subscription(record: EntitlementRecord, now_ms: int) -> pb.Subscription:
    """A time-limited item presented as a non-renewing subscription."""
    subscription = pb.Subscription(
        id=record.sku,
        plan_external_id=record.sku,
        status="active" if record.active(now_ms) else "expired",
        date_create=_timestamp(record.granted_at_ms),
        date_last_charge=_timestamp(record.updated_at_ms),
        kind=pb.SUBSCRIPTION_KIND_NON_RENEWING,
    )
    if record.expires_at_ms is not None:
        subscription.date_next_charge.CopyFrom(_timestamp(record.expires_at_ms))
    if record.period_ms:
        subscription.period.CopyFrom(_period(record.period_ms))
    elif record.period_months:
        subscription.period.CopyFrom(pb.Period(value=record.period_months, unit="month"))
    return subscription


def recurring_subscription(record: RecurringSubscription) -> pb.Subscription:
    """The protobuf form of a recurring subscription recorded from the provider's webhooks."""
    subscription = pb.Subscription(
        id=record.id,
        plan_id=record.plan_id,
        plan_external_id=record.plan_external_id,
        plan_name=record.plan_name,
        plan_description=record.plan_description,
        product_id=record.product_id,
        product_external_id=record.product_external_id,
        product_name=record.product_name,
        product_description=record.product_description,
        status=record.status,
        kind=pb.SUBSCRIPTION_KIND_RECURRING,
    )
    if record.date_create_ms is not None:
        subscription.date_create.CopyFrom(_timestamp(record.date_create_ms))
    if record.date_next_charge_ms is not None:
        subscription.date_next_charge.CopyFrom(_timestamp(record.date_next_charge_ms))
    if record.date_last_charge_ms is not None:
        subscription.date_last_charge.CopyFrom(_timestamp(record.date_last_charge_ms))
    if record.charge_currency:
        subscription.charge.CopyFrom(pb.Charge(amount=record.charge_amount, currency=record.charge_currency))
    if record.period_unit:
        subscription.period.CopyFrom(pb.Period(value=record.period_value, unit=record.period_unit))
    return subscription


def ledger_message(line: LedgerLine) -> pb.LedgerEntry:
    """The protobuf form of a ledger line (`server.ledger_view`)."""
    message = pb.LedgerEntry(
        entry_id=line.entry_id,
        at=_timestamp(line.at_ms),
        operation=line.operation,
        sku=line.sku,
        kind=line.kind,  # type: ignore[arg-type]  # the view's kinds are the enum's values
        actor=line.actor,
        reason=line.reason,
        idempotency_key=line.idempotency_key,
        order_id=line.order_id,
        summary=line.summary,
        details=line.details,
    )
    if line.quantity_before is not None:
        message.quantity_before = line.quantity_before
    if line.quantity_after is not None:
        message.quantity_after = line.quantity_after
    if line.expires_before_ms is not None:
        message.expires_before.CopyFrom(_timestamp(line.expires_before_ms))
    if line.expires_after_ms is not None:
        message.expires_after.CopyFrom(_timestamp(line.expires_after_ms))
    return message


class EntitlementServicer:
    """Implements entitlements.v1.EntitlementService over an EntitlementStore (registered by `server.rpc.add_service`;
    each method takes the request's bytes, and its body gets them decoded once the caller is authorized)."""

    def __init__(
        self,
        store: EntitlementStore,
        runtime: RpcRuntime,
        metrics: ServiceMetrics,
        tracking: OrderTracking,
        catalogs: Catalogs,
        watches: Watches,
    ) -> None:
        self._store = store
        self._watches = watches
        self._metrics = metrics
        # The write counters' children, bound once: a `labels()` lookup per call costs a lock and a dict lookup.
        self._grants = {
            replayed: metrics.writes.labels("grant", "replayed" if replayed else "applied")
            for replayed in (False, True)
        }
        self._revokes = {
            outcome: metrics.writes.labels("revoke", outcome) for outcome in ("replayed", "applied", "nothing_held")
        }
        self._tracking = tracking
        self._catalogs = catalogs
        self.runtime = runtime

    @rpc("Grant", "write")
    async def Grant(
        self, request: pb.GrantRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.GrantResponse:
        command = validation.grant_command(request, project_id)
        if validation.takes_catalog_period(command):
            # A time-limited sku the project's catalog knows may come without a duration: its period is used.
            item = await self._catalogs.known(project_id, command.sku)
            command = validation.with_catalog_period(command, item)
        result = await self._store.grant(command, principal.name)
        self._grants[result.replayed].inc()
        response = pb.GrantResponse(replayed=result.replayed, project_id=project_id)
        record = result.entitlement
        fill_entitlement(response.entitlement, record.user_id, record.sku, _stored(record), now_ms())
        return response

    @rpc("Revoke", "write")
    async def Revoke(
        self, request: pb.RevokeRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.RevokeResponse:
        command = validation.revoke_command(request, project_id)
        result = await self._store.revoke(command, principal.name)
        outcome = "replayed" if result.replayed else ("applied" if result.previous else "nothing_held")
        self._revokes[outcome].inc()
        response = pb.RevokeResponse(
            revoked=result.previous is not None, replayed=result.replayed, project_id=project_id
        )
        if result.previous is not None:
            previous = result.previous
            fill_entitlement(response.previous, previous.user_id, previous.sku, _stored(previous), now_ms())
        return response

    @rpc("CheckEntitlement", "read")
    async def CheckEntitlement(
        self, request: pb.CheckEntitlementRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.CheckEntitlementResponse:
        user_id = validation.identifier("user_id", request.user_id)
        sku = validation.identifier("sku", request.sku)
        return check_response(await self._store.get(project_id, user_id, sku), now_ms())

    @rpc("ListEntitlements", "read")
    async def ListEntitlements(
        self, request: pb.ListEntitlementsRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.ListEntitlementsResponse:
        query = validation.page_query(request, project_id)
        page = await self._store.list_page(
            project_id, query.user_id, query.after_sku, query.page_size, include_expired=query.include_expired
        )
        now = now_ms()
        # The store skipped what had expired by the Redis server's clock; this host's may be a little ahead.
        selected = [r for r in page.records if query.include_expired or r.active(now)]
        token = ""
        if page.next_after is not None:
            token = validation.encode_page_token(project_id, query.user_id, page.next_after, query.include_expired)
        return pb.ListEntitlementsResponse(
            entitlements=[entitlement_message(r, now) for r in selected], next_page_token=token
        )

    @rpc("ListSubscriptions", "read")
    async def ListSubscriptions(
        self, request: pb.ListSubscriptionsRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.ListSubscriptionsResponse:
        query = validation.subscription_query(request, project_id)
        page = await self._store.subscriptions_page(
            project_id, query.user_id, query.offset, query.limit, include_inactive=query.include_inactive
        )
        now = now_ms()
        subscriptions = [recurring_subscription(s) for s in page.recurring] + [
            non_renewing_subscription(r, now) for r in page.timed
        ]
        return pb.ListSubscriptionsResponse(
            subscriptions=subscriptions, has_more=query.offset + query.limit < page.total
        )

    @rpc("ListLedger", "read")
    async def ListLedger(
        self, request: pb.ListLedgerRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.ListLedgerResponse:
        query = validation.ledger_query(request, project_id)
        lines, token = await ledger_page(self._store, project_id, query.user_id, query.page_size, query.page_token)
        return pb.ListLedgerResponse(entries=[ledger_message(line) for line in lines], next_page_token=token)

    @stream_rpc("GetOrderStatus", "read")
    async def GetOrderStatus(
        self, request: pb.GetOrderStatusRequest, context: Context, principal: Principal, project_id: int
    ) -> AsyncGenerator[pb.OrderStatusUpdate, None]:
        tracking = self._tracking
        # The tracker follows (project, player, order): the provider's lookups and socket are the project's, and
        # only that project's order-status channel feeds it.
        watch = validation.order_watch(
            request,
            project_id,
            default_max_wait_s=tracking.settings.max_wait_s,
            max_wait_limit_s=MAX_ORDER_WAIT_S,
        )
        deadline = asyncio.get_running_loop().time() + watch.max_wait_s
        watcher = self._tracking.watch(watch, principal.name, project_id=project_id)
        # However the call ends (even while a message is being written), the tracker forgets this stream.
        context.add_done_callback(lambda _: watcher.close())  # type: ignore[arg-type]  # grpc-stubs: a class
        try:
            if announces_acceptance(context):
                # Accepted: said now, not with the first update (which may be minutes away), so that an HTTP caller
                # gets its 200 and event stream at once, and a refusal before this point as a plain error.
                await context.send_initial_metadata((STREAM_ACCEPTED,))
            while True:
                try:
                    async with asyncio.timeout_at(deadline):
                        update = await watcher.next()
                except TimeoutError:
                    latest = watcher.latest
                    if latest is None:
                        yield pb.OrderStatusUpdate(order_id=watch.order_id, timed_out=True)
                    else:
                        yield latest.to_message(watch.order_id, timed_out=True)
                    return
                if update is None:
                    return
                yield update.to_message(watch.order_id)
        finally:
            watcher.close()

    @rpc("CheckEntitlements", "read")
    async def CheckEntitlements(
        self, request: pb.CheckEntitlementsRequest, context: Context, principal: Principal, project_id: int
    ) -> pb.CheckEntitlementsResponse:
        pairs = validation.check_pairs(request)
        stored = await self._store.get_many(project_id, pairs)
        now = now_ms()  # one moment for the whole answer: `active` is evaluated once per call
        return check_responses(pairs, stored, now)

    @duplex_rpc("WatchEntitlements", "read")
    async def WatchEntitlements(
        self,
        request: pb.WatchEntitlementsRequest,
        requests: AsyncIterator[pb.WatchEntitlementsRequest],
        context: Context,
        principal: Principal,
        project_id: int,
    ) -> AsyncGenerator[pb.WatchEntitlementsResponse, None]:
        async with contextlib.aclosing(self._watches.serve(project_id, request, requests)) as messages:  # type: ignore[type-var]
            async for message in messages:
                yield message
