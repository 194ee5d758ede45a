"""Fulfillment: what each provider-neutral webhook event does to a player, applied once.

- `order_paid`: grants every line except `bundle` lines (a bundle's contents arrive as lines of their own), with
  the kind and period the project's catalog gives the sku (`server.catalog`); the order hash remembers what each
  line changed. A sku the catalog does not know, even after a refresh, fails the event (`SkuNotInCatalog`: retried,
  then dead-lettered), unless the project has no catalog (then it is a plain item) or the line is a virtual
  currency (a consumable by nature).
- `order_canceled`: undoes exactly what that order granted; a cancel that comes first makes the late
  `order_paid` grant nothing.
- Subscription events: create or update the player's recurring subscription (shown by ListSubscriptions), in the
  order the provider's dates place them (`server.store.subscriptions`): a late older event changes nothing.
- `payment`, `refund`, `partial_refund`: one entry on the player's ledger; no grants.

Test payments (`event.sandbox`: a sandbox order, a dry-run transaction) follow the project's sandbox policy
(`core.projects`): "ignore", the default, records a sandbox `order_paid` as paid with nothing granted (the order
hash says `withheld` = "sandbox", the ledger lists its lines), so its `order_canceled` has nothing to undo;
"grant" treats it as a live order. A live order never depends on the policy. Either way test payments are
counted by type and policy (`entitlements_sandbox_events_total`).
- Anything else: ignored (acknowledged and counted by the consumer).

Every event is applied in its project's namespace (`event.project_id`, which the gateway set from what verified
the notification's signature). Each write carries the event id as its idempotency key, so a redelivered event
changes nothing. Applied order events publish the order's state (`server.status_channel`) on the project's
channel, replays included, so a publication lost to a crash before the acknowledgement is made good on
redelivery.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from core.limits import MAX_CONSUMABLE_TOTAL, quantity_problem
from core.projects import SANDBOX_GRANT, SANDBOX_IGNORE, Projects
from entitlements.v1 import events_pb2
from server import validation
from server.catalog import Catalogs
from server.errors import InvalidArgument, InvalidEvent
from server.reconcile.index import AUTHORITATIVE, CLAIM, OrderIndex
from server.status_channel import RECONCILIATION_SOURCE, WEBHOOK_SOURCE, OrderState, OrderStatusPublisher
from server.store import (
    EntitlementStore,
    OrderLine,
    OrderOutcome,
    SubscriptionChange,
    compact_json,
)

ET = events_pb2.EventType
_TYPE_LABELS: dict[int, str] = {
    ET.EVENT_TYPE_ORDER_PAID: "order_paid",
    ET.EVENT_TYPE_ORDER_CANCELED: "order_canceled",
    ET.EVENT_TYPE_PAYMENT: "payment",
    ET.EVENT_TYPE_REFUND: "refund",
    ET.EVENT_TYPE_PARTIAL_REFUND: "partial_refund",
    ET.EVENT_TYPE_SUBSCRIPTION_CREATED: "subscription_created",
    ET.EVENT_TYPE_SUBSCRIPTION_UPDATED: "subscription_updated",
    ET.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING: "subscription_non_renewing",
    ET.EVENT_TYPE_SUBSCRIPTION_CANCELED: "subscription_canceled",
}
_SUBSCRIPTION_ACTIONS = {
    ET.EVENT_TYPE_SUBSCRIPTION_CREATED: "created",
    ET.EVENT_TYPE_SUBSCRIPTION_UPDATED: "updated",
    ET.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING: "non_renewing",
    ET.EVENT_TYPE_SUBSCRIPTION_CANCELED: "canceled",
}
_TRANSACTION_OPS = {
    ET.EVENT_TYPE_PAYMENT: "payment",
    ET.EVENT_TYPE_REFUND: "refund",
    ET.EVENT_TYPE_PARTIAL_REFUND: "partial_refund",
}
_LABEL_BY_NAME = {name: _TYPE_LABELS.get(int(value), "unknown") for name, value in ET.items()}
BUNDLE = "bundle"
VIRTUAL_CURRENCY = "virtual_currency"
PROVIDER = events_pb2.EventOrigin.EVENT_ORIGIN_PROVIDER
#: The ledger's actor of reconciled order events (`server.reconcile`).
RECONCILER = "reconciler"
#: Who applied an order event, as the order hash records it (`granted_by`, `canceled_by`).
ORIGIN_NAMES: dict[int, str] = {
    PROVIDER: "webhook",
    events_pb2.EventOrigin.EVENT_ORIGIN_TRACKER: "tracker",
    events_pb2.EventOrigin.EVENT_ORIGIN_SWEEPER: "sweeper",
}


def type_label(event_type: int) -> str:
    """The metric/log label of an event type: "order_paid", ..., or "unknown" for anything not applied."""
    return _TYPE_LABELS.get(int(event_type), "unknown")


def label_of_entry(fields: Mapping[bytes, bytes]) -> str:
    """The type label of a raw stream entry, from its `type` field, without trusting it to be well formed."""
    raw = fields.get(b"type", b"")
    return _LABEL_BY_NAME.get(raw.decode(errors="replace"), "invalid")


@dataclass(frozen=True)
class Applied:
    """What applying one event did.

    Attributes:
        type: the event's type label (see `type_label`).
        result: "applied", "replayed", "ignored", "stale", "withheld" or "canceled_before_paid".
        order: for order events, the order's state afterwards (as published).
        lines_changed: order lines granted (order_paid) or undone (order_canceled) by this delivery.
        kind_conflicts: order lines granted as the kind the player held rather than the catalog's.
        sandbox_policy: for a test payment, the project's sandbox policy that applied ("ignore", "grant");
            "" for a live event.
        note: why the event changed nothing, when the store says (a stale subscription event).
        reconciled_by, reconciled_difference: for the late webhook of an order reconciliation applied ("tracker",
            "sweeper") with other lines than the webhook's (bonus items Get order left out): who applied it and how
            the lines differ; "" otherwise.
    """

    type: str
    result: str
    order: OrderState | None = None
    lines_changed: int = 0
    kind_conflicts: int = 0
    sandbox_policy: str = ""
    note: str = ""
    reconciled_by: str = ""
    reconciled_difference: str = ""

    @property
    def replayed(self) -> bool:
        return self.result == "replayed"


def _totals(lines: object) -> dict[str, int]:
    """The units per sku an order's recorded lines grant (bundle lines left out: their contents are lines too)."""
    totals: dict[str, int] = {}
    for line in lines if isinstance(lines, list) else ():
        if isinstance(line, dict) and line.get("type") != BUNDLE:
            sku, quantity = str(line.get("sku", "")), line.get("quantity")
            totals[sku] = totals.get(sku, 0) + (quantity if isinstance(quantity, int) else 0)
    return totals


def _ms(timestamp: Timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def _identifier(name: str, value: str) -> str:
    try:
        return validation.identifier(name, value)
    except InvalidArgument as exc:
        raise InvalidEvent(str(exc)) from None


class Fulfillment:
    """Applies events to the store.

    Args:
        store: the entitlement store.
        catalogs: each project's catalog (sku -> kind and period).
        projects: the projects served, for their sandbox policy (a project it does not know: "ignore").
        publisher: where order states are announced; None publishes nothing (tools, benchmarks).
        index: where each applied order's player and application are recorded for reconciliation
            (`server.reconcile.index`); None records nothing (tools, benchmarks).
    """

    def __init__(
        self,
        store: EntitlementStore,
        catalogs: Catalogs,
        projects: Projects,
        publisher: OrderStatusPublisher | None,
        index: OrderIndex | None = None,
    ) -> None:
        self._index = index
        self._store = store
        self._catalogs = catalogs
        self._projects = projects
        self._publisher = publisher

    def _sandbox_policy(self, event: events_pb2.WebhookEvent) -> str:
        """The sandbox policy that applies to `event`: "" for a live event, else its project's policy."""
        if not event.sandbox:
            return ""
        project = self._projects.get(event.project_id)
        return project.sandbox if project is not None else SANDBOX_IGNORE

    async def apply(self, event: events_pb2.WebhookEvent) -> Applied:
        """Applies one event in its project, once per event id.

        Raises:
            InvalidEvent: the event lacks what applying it needs (project, event id, player, order or subscription
                id) or carries an invalid order line.
            SkuNotInCatalog: an order line's sku is unknown to the project's catalog, even after a refresh.
            FailedPrecondition: an order line would pass the store's quantity or expiry limit.
            StoreUnavailable: Redis did not answer in time (the event may be retried).
        """
        label = type_label(event.type)
        if label == "unknown":
            return Applied(label, "ignored")
        event_id = _identifier("event_id", event.event_id)
        if event.project_id <= 0:
            raise InvalidEvent(f"event {event_id} names no project")
        user_id = _identifier("user_id", event.user_id)
        actor = f"{event.provider or 'provider'}-webhook" if event.origin == PROVIDER else RECONCILER
        if event.type in (ET.EVENT_TYPE_ORDER_PAID, ET.EVENT_TYPE_ORDER_CANCELED):
            return await self._apply_order(label, event, event_id, user_id, actor)
        if event.type in _SUBSCRIPTION_ACTIONS:
            return await self._apply_subscription(label, event, event_id, user_id, actor)
        return await self._apply_transaction(label, event, event_id, user_id, actor)

    async def _apply_order(
        self, label: str, event: events_pb2.WebhookEvent, event_id: str, user_id: str, actor: str
    ) -> Applied:
        project_id = event.project_id
        if event.WhichOneof("payload") != "order":
            raise InvalidEvent(f"{label} event {event_id} carries no order")
        order = event.order
        order_id = _identifier("order.order_id", order.order_id)
        lines = [
            {"sku": line.sku, "type": line.type, "quantity": line.quantity, "amount": line.amount}
            for line in order.lines
        ]
        record = {
            "user_id": user_id,
            "provider": event.provider,
            "project_id": str(event.project_id),
            "sandbox": "1" if event.sandbox else "0",
            "currency": order.currency,
            "amount": order.amount,
            "invoice_id": order.invoice_id,
            "transaction_id": order.transaction_id,
        }
        record["granted_by" if event.type == ET.EVENT_TYPE_ORDER_PAID else "canceled_by"] = ORIGIN_NAMES.get(
            event.origin, "webhook"
        )
        outcome: OrderOutcome
        policy = self._sandbox_policy(event)
        if event.type == ET.EVENT_TYPE_ORDER_PAID and policy not in ("", SANDBOX_GRANT):
            # A test payment the project does not grant: recorded, lines listed, nothing granted.
            record["lines"] = compact_json(lines)
            reason = (
                f"order_paid {order_id}: sandbox order, nothing granted "
                f"(the sandbox policy of project {event.project_id} is {policy!r})"
            )
            outcome = await self._store.apply_order_paid(
                project_id, user_id, order_id, event_id, actor, [], record, withheld="sandbox", withheld_reason=reason
            )
        elif event.type == ET.EVENT_TYPE_ORDER_PAID:
            record["lines"] = compact_json(lines)
            outcome = await self._store.apply_order_paid(
                project_id,
                user_id,
                order_id,
                event_id,
                actor,
                await self._grantable_lines(project_id, order),
                record,
            )
        else:
            record["canceled_lines"] = compact_json(lines)
            outcome = await self._store.apply_order_canceled(project_id, user_id, order_id, event_id, actor, record)
        differs = ("", "")
        if event.type == ET.EVENT_TYPE_ORDER_PAID and event.origin == PROVIDER and outcome.result == "replayed":
            differs = await self._reconciled_differently(project_id, user_id, order_id, lines)
        state = OrderState(
            project_id=project_id,
            order_id=order_id,
            user_id=user_id,
            status=outcome.status,
            entitlements_granted=outcome.entitlements_granted,
            observed_at_ms=outcome.updated_at_ms,
            source=WEBHOOK_SOURCE if event.origin == PROVIDER else RECONCILIATION_SOURCE,
            withheld=outcome.withheld,
        )
        # Both after the commit, concurrently (one round trip's wait, not two); a failure of either fails the event,
        # which is delivered again and replays (the index write is idempotent, a publication repeated is harmless).
        after: list[Awaitable[object]] = []
        if self._index is not None:
            # Whose order this is (a signed webhook says so with authority), and whether its order_paid is applied.
            after.append(
                self._index.record(
                    project_id,
                    order_id,
                    user_id,
                    authority=AUTHORITATIVE if event.origin == PROVIDER else CLAIM,
                    applied=event.type == ET.EVENT_TYPE_ORDER_PAID and outcome.status == "paid",
                    now_ms=outcome.updated_at_ms,
                )
            )
        if self._publisher is not None:
            after.append(self._publisher.publish(state))
        for result in await asyncio.gather(*after, return_exceptions=True):
            if isinstance(result, BaseException):
                raise result
        return Applied(
            label, outcome.result, state, outcome.lines_changed, outcome.kind_conflicts, policy, "", *differs
        )

    async def _reconciled_differently(
        self, project_id: int, user_id: str, order_id: str, lines: list[dict[str, object]]
    ) -> tuple[str, str]:
        """For the late webhook of an order reconciliation applied: (who applied it, how the webhook's lines differ
        from what was applied), or ("", "") when they agree or the order was not reconciled. The provider's record
        may leave out lines its webhook lists (bonus items): nothing more is granted, the operator is told."""
        stored = await self._store.order(project_id, user_id, order_id) or {}
        by = stored.get("granted_by", "")
        if by not in ORIGIN_NAMES.values() or by == ORIGIN_NAMES[PROVIDER]:
            return "", ""
        try:
            applied = _totals(json.loads(stored.get("lines", "[]")))
        except (ValueError, TypeError, AttributeError):
            applied = {}
        webhook = _totals(lines)
        if applied == webhook:
            return "", ""
        return by, f"applied {applied or 'nothing'}; the webhook lists {webhook}"

    async def _grantable_lines(self, project_id: int, order: events_pb2.OrderEvent) -> list[OrderLine]:
        lines: list[OrderLine] = []
        for index, line in enumerate(order.lines):
            if line.type == BUNDLE:
                continue  # recorded, not granted: its contents are lines of their own
            sku = _identifier(f"order.lines[{index}].sku", line.sku)
            problem = quantity_problem(line.quantity, MAX_CONSUMABLE_TOTAL)
            if problem is not None:
                raise InvalidEvent(f"order.lines[{index}].quantity {problem}")
            if line.type == VIRTUAL_CURRENCY:
                item = await self._catalogs.known(project_id, sku)
            else:
                item = await self._catalogs.for_order(project_id, sku)
            if item is None:
                lines.append(OrderLine(sku, 0, 0, line.quantity))
            else:
                lines.append(OrderLine(sku, item.kind, item.period_ms, line.quantity, item.period_months))
        return lines

    async def _apply_subscription(
        self, label: str, event: events_pb2.WebhookEvent, event_id: str, user_id: str, actor: str
    ) -> Applied:
        if event.WhichOneof("payload") != "subscription":
            raise InvalidEvent(f"{label} event {event_id} carries no subscription")
        sub = event.subscription
        _identifier("subscription.subscription_id", sub.subscription_id)
        outcome = await self._store.record_subscription_event(
            event.project_id, user_id, event_id, actor, _SUBSCRIPTION_ACTIONS[event.type], subscription_change(sub)
        )
        return Applied(label, outcome.result, sandbox_policy=self._sandbox_policy(event), note=outcome.why)

    async def _apply_transaction(
        self, label: str, event: events_pb2.WebhookEvent, event_id: str, user_id: str, actor: str
    ) -> Applied:
        op = _TRANSACTION_OPS[event.type]
        txn = event.transaction
        fields = {
            "op": op,
            "sku": "",
            "idempotency_key": event_id,
            "actor": actor,
            "reason": f"{op} {txn.transaction_id}".strip(),
            "before": "",
            "after": "",
            "transaction_id": txn.transaction_id,
            "external_id": txn.external_id,
            "amount": txn.amount,
            "currency": txn.currency,
            "order_id": txn.order_id,
            "subscription_id": txn.subscription_id,
            "sandbox": "1" if event.sandbox else "0",
        }
        if event.type != ET.EVENT_TYPE_PAYMENT:
            fields["refund_code"] = str(txn.refund_code)
            fields["refund_reason"] = txn.refund_reason
        if txn.lines:
            fields["items"] = compact_json([{"sku": line.sku, "quantity": line.quantity} for line in txn.lines])
        applied = await self._store.record_event(event.project_id, user_id, event_id, fields)
        return Applied(label, "applied" if applied else "replayed", sandbox_policy=self._sandbox_policy(event))


def subscription_change(sub: events_pb2.SubscriptionEvent) -> SubscriptionChange:
    """What a subscription event says about the player's recurring subscription (`server.store.subscriptions`)."""
    # Xsolla sends plan and product ids as numbers or as external ids (strings); keep both forms readable.
    ids = {
        name: int(value) if value.isdigit() and int(value) < 2**63 else None
        for name, value in (("plan", sub.plan_id), ("product", sub.product_id))
    }
    return SubscriptionChange(
        id=sub.subscription_id,
        plan_external_id=sub.plan_id,
        plan_id=ids["plan"],
        product_external_id=sub.product_id,
        product_id=ids["product"],
        date_create_ms=_ms(sub.date_create) if sub.HasField("date_create") else None,
        date_next_charge_ms=_ms(sub.date_next_charge) if sub.HasField("date_next_charge") else None,
        date_end_ms=_ms(sub.date_end) if sub.HasField("date_end") else None,
        charge_amount=sub.amount,
        charge_currency=sub.currency,
        tags=tuple(sub.tags),
        is_gift=sub.is_gift,
        trial_value=sub.trial_value,
        trial_unit=sub.trial_unit,
    )
