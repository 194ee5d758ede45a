"""What provider-neutral webhook events are and say, for the fulfillment: their type labels (metrics, logs), who
sent them, what applying one did (`Applied`), and the store's view of their payloads (a subscription's change, a
transaction's ledger entry, an order's lines)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from google.protobuf.timestamp_pb2 import Timestamp

from entitlements.v1 import events_pb2
from server import validation
from server.errors import InvalidArgument, InvalidEvent
from server.status_channel import OrderState
from server.store import OrderOutcome, SubscriptionChange, compact_json

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
SUBSCRIPTION_ACTIONS = {
    ET.EVENT_TYPE_SUBSCRIPTION_CREATED: "created",
    ET.EVENT_TYPE_SUBSCRIPTION_UPDATED: "updated",
    ET.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING: "non_renewing",
    ET.EVENT_TYPE_SUBSCRIPTION_CANCELED: "canceled",
}
TRANSACTION_OPS = {
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
        outcome: for order events, what the order's write replied (which order_paid granted it, and when).
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
    outcome: OrderOutcome | None = None

    @property
    def replayed(self) -> bool:
        return self.result == "replayed"


def totals(lines: object) -> dict[str, int]:
    """The units per sku an order's recorded lines grant (bundle lines left out: their contents are lines too)."""
    totals: dict[str, int] = {}
    for line in lines if isinstance(lines, list) else ():
        if isinstance(line, dict) and line.get("type") != BUNDLE:
            sku, quantity = str(line.get("sku", "")), line.get("quantity")
            totals[sku] = totals.get(sku, 0) + (quantity if isinstance(quantity, int) else 0)
    return totals


def _ms(timestamp: Timestamp) -> int:
    return timestamp.seconds * 1000 + timestamp.nanos // 1_000_000


def identifier(name: str, value: str) -> str:
    try:
        return validation.identifier(name, value)
    except InvalidArgument as exc:
        raise InvalidEvent(str(exc)) from None


def transaction_fields(event: events_pb2.WebhookEvent, event_id: str, actor: str) -> dict[str, str]:
    """The ledger entry of a payment, refund or partial refund."""
    op = TRANSACTION_OPS[event.type]
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
    return fields


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
