"""Xsolla as a webhook provider: its signature, its project ids, and what each notification type means.

Every Xsolla notification becomes one of three things (see `Action`): an event to store (order, transaction,
subscription and every type this version does not interpret), a user validation, or a user search. The parsing
is liberal where Xsolla's own examples disagree (ids as integers or strings, `plan_id` either way, `dry_run`
absent or 1, amounts written as "[null]") and strict only about what an event cannot exist without, naming the
field when it is missing.

Event ids (the dedup key and the idempotency key of what the event causes), free-form parts percent-encoded:

    order_paid / order_canceled     xsolla:<project>:order:<order.id>:paid | :canceled
    payment / refund                xsolla:<project>:txn:<transaction.id>:payment | :refund
    partial_refund                  xsolla:<project>:txn:<transaction.id>:partial_refund:<body hash, 16 hex>
    subscription events             xsolla:<project>:sub:<subscription_id>:<type>:plan=<plan_id>[:<date>=<UTC>...]
    anything else                   xsolla:<project>:raw:<sha256 of the body>

A transaction can be partially refunded more than once and nothing in the notification identifies one partial
refund, so its id carries a hash of the body: a retry (same body) is a duplicate, a second partial refund is not.
Subscription ids carry the plan and every date present (`date_create`, `date_next_charge`, `date_end`),
because `update_subscription` has no id of its own and is sent again on every renewal and plan change.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NoReturn
from urllib.parse import quote

from entitlements.v1 import events_pb2 as ev
from webhook_gateway.errors import InvalidParameter, InvalidSignature
from webhook_gateway.notifications import Action, Notification, UserQuery, Verified
from webhook_gateway.signature import verify

PROVIDER = "xsolla"

_ORDER_TYPES: dict[str, tuple[ev.EventType.ValueType, str]] = {
    "order_paid": (ev.EVENT_TYPE_ORDER_PAID, "paid"),
    "order_canceled": (ev.EVENT_TYPE_ORDER_CANCELED, "canceled"),
}
_TRANSACTION_TYPES: dict[str, ev.EventType.ValueType] = {
    "payment": ev.EVENT_TYPE_PAYMENT,
    "refund": ev.EVENT_TYPE_REFUND,
    "partial_refund": ev.EVENT_TYPE_PARTIAL_REFUND,
}
_SUBSCRIPTION_TYPES: dict[str, ev.EventType.ValueType] = {
    "create_subscription": ev.EVENT_TYPE_SUBSCRIPTION_CREATED,
    "update_subscription": ev.EVENT_TYPE_SUBSCRIPTION_UPDATED,
    "non_renewal_subscription": ev.EVENT_TYPE_SUBSCRIPTION_NON_RENEWING,
    "cancel_subscription": ev.EVENT_TYPE_SUBSCRIPTION_CANCELED,
}
_USER_TYPES = {"user_validation": Action.VALIDATE_USER, "user_search": Action.SEARCH_USER}

#: Every type Xsolla documents (PHP SDK dictionary, webhook docs, opt-in events). Metric labels use these
#: names; anything else is labelled "other", so a sender cannot grow the label set.
DOCUMENTED_TYPES = frozenset(
    {
        *_ORDER_TYPES,
        *_TRANSACTION_TYPES,
        *_SUBSCRIPTION_TYPES,
        *_USER_TYPES,
        "user_balance_operation",
        "payment_account_add",
        "payment_account_remove",
        "partner_side_catalog",
        "redeem_key",
        "get_pincode",
        "afs_reject",
        "afs_black_list",
        "ps_declined",
        "dispute",
        "upgrade_refund",
        "keys_availability",
    }
)

_SUBSCRIPTION_DATES = ("date_create", "date_next_charge", "date_end")
_MAX_ID_CHARS = 512
_INT64_MAX = 2**63 - 1
_INT32_MAX = 2**31 - 1


class XsollaProvider:
    """Xsolla's webhook protocol (implements `webhook_gateway.notifications.Provider`).

    Args:
        secrets_for: the secrets a project's webhooks may be signed with; called with None when neither the
            URL nor the body names a project (then only a default secret can verify).
    """

    name = PROVIDER

    def __init__(self, secrets_for: Callable[[int | None], tuple[str, ...]]) -> None:
        self._secrets_for = secrets_for

    def authenticate(self, raw: bytes, headers: Mapping[str, str], route_project: str | None) -> Verified:
        """Verifies `Authorization: Signature ...` over `raw` with the secret of the request's project.

        The project comes from the URL (`<path>/<project_id>`, since Xsolla's webhook URL is set per project),
        failing that from the body's `settings.project_id` (`billing.settings.project_id` in combined-mode
        order webhooks, which have no top-level `settings`). The body is parsed here only to find that hint;
        nothing in it is trusted before the signature checks out.

        Raises:
            InvalidSignature: missing, malformed or wrong signature, or no secret for the project.
        """
        document = parse_body(raw)
        if route_project is not None:
            project: int | None = int(route_project)
        else:
            project = _project_hint(document)
        secrets = self._secrets_for(project)
        if not secrets:
            # Only when there is no default secret: tell the operator why, not the sender.
            which = f"project {project}" if project is not None else "webhooks that name no project"
            raise InvalidSignature("Invalid signature", detail=f"no secret is configured for {which}")
        verify(raw, headers.get("Authorization"), secrets)
        return Verified(raw, document, project)

    def interpret(self, verified: Verified, received_at_ns: int) -> Notification:
        """Turns a verified body into what the gateway must do with it.

        Raises:
            InvalidParameter: not a JSON object, or a required field is missing or malformed.
        """
        doc = verified.document
        if doc is None:
            raise InvalidParameter("", "The body is not a JSON object")
        notification_type = doc.get("notification_type")
        if not isinstance(notification_type, str) or not notification_type:
            raise InvalidParameter("notification_type", "is required (a string)")
        _check_unicode(notification_type, "notification_type")
        project = verified.project_id if verified.project_id is not None else _body_project(doc)
        label = type_label(notification_type)

        action = _USER_TYPES.get(notification_type)
        if action is not None:
            return Notification(action, notification_type, label, project, query=_user_query(doc, action, project))

        event = ev.WebhookEvent(provider=PROVIDER, project_id=project, notification_type=notification_type)
        event.received_at.FromNanoseconds(received_at_ns)
        known = True
        if notification_type in _ORDER_TYPES:
            event.type, suffix = _ORDER_TYPES[notification_type]
            _fill_order(event, doc, suffix)
        elif notification_type in _TRANSACTION_TYPES:
            event.type = _TRANSACTION_TYPES[notification_type]
            _fill_transaction(event, doc, verified.raw)
        elif notification_type in _SUBSCRIPTION_TYPES:
            event.type = _SUBSCRIPTION_TYPES[notification_type]
            _fill_subscription(event, doc)
        else:
            known = False
            event.type = ev.EVENT_TYPE_UNKNOWN
            _fill_unknown(event, doc, verified.raw)
        return Notification(Action.STORE, notification_type, label, project, event=event, known=known)

    def type_label(self, verified: Verified) -> str:
        """The metric label of a verified body's type: a documented name, "other", or "none"."""
        doc = verified.document
        value = doc.get("notification_type") if doc is not None else None
        return type_label(value) if isinstance(value, str) else "none"


def type_label(notification_type: str) -> str:
    """`notification_type` when Xsolla documents it, otherwise "other" (bounded metric labels)."""
    return notification_type if notification_type in DOCUMENTED_TYPES else "other"


def parse_body(raw: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None when it is not one (bad UTF-8, bad JSON, not an object).

    Decimals are kept exact (`Decimal`), so amounts travel as the provider wrote them; JSON's non-standard
    NaN and Infinity literals are refused.
    """
    try:
        value = json.loads(raw.decode("utf-8"), parse_float=Decimal, parse_constant=_refuse_constant)
    except (ValueError, RecursionError):  # RecursionError: nesting deeper than the parser's stack
        return None
    return value if isinstance(value, dict) else None


def _refuse_constant(name: str) -> NoReturn:
    raise ValueError(f"{name} is not JSON")


# --- projects ---------------------------------------------------------------------------------------------------


def _project_hint(doc: dict[str, Any] | None) -> int | None:
    """The project named in an unverified body, for choosing a secret; None when absent or malformed."""
    if doc is None:
        return None
    for holder in (doc, _section(doc, "billing")):
        value = _section(holder, "settings").get("project_id")
        project = _integer(value, 0, _INT64_MAX)
        if project is not None:
            return project
    return None


def _body_project(doc: dict[str, Any]) -> int:
    """The project named in a verified body (0 when none); a malformed one is an error."""
    for path, holder in (("settings", doc), ("billing.settings", _section(doc, "billing"))):
        settings = _section(holder, "settings")
        if "project_id" in settings and settings["project_id"] is not None:
            project = _integer(settings["project_id"], 0, _INT64_MAX)
            if project is None:
                raise InvalidParameter(f"{path}.project_id", "must be a non-negative integer")
            return project
    return 0


# --- event builders ---------------------------------------------------------------------------------------------


def _fill_order(event: ev.WebhookEvent, doc: dict[str, Any], suffix: str) -> None:
    order = _required_section(doc, "order")
    user = _required_section(doc, "user")
    order_id = _required_id(order.get("id"), "order.id")
    event.user_id = _required_id(user.get("external_id"), "user.external_id")
    items = doc.get("items")
    if not isinstance(items, list):
        raise InvalidParameter("items", "is required (a list)")
    # Combined mode: the payment rides along in `billing`. Separate mode has none (the `payment` webhook
    # carried it); a project with "add order object" on may put `transaction` at the top level.
    billing = _section(doc, "billing")
    transaction = _section(billing, "transaction") or _section(doc, "transaction")
    event.sandbox = order.get("mode") == "sandbox" or _flag(transaction.get("dry_run"))
    event.order.CopyFrom(
        ev.OrderEvent(
            order_id=order_id,
            status=_text(order.get("status")),
            currency=_text(order.get("currency")),
            amount=_decimal(order.get("amount")),
            invoice_id=_text(order.get("invoice_id")),
            transaction_id=_text(transaction.get("id")),
            lines=[_order_line(item, f"items[{number}]") for number, item in enumerate(items)],
        )
    )
    event.event_id = f"{PROVIDER}:{event.project_id}:order:{_key(order_id)}:{suffix}"


def _order_line(item: Any, path: str) -> ev.OrderLine:
    if not isinstance(item, dict):
        raise InvalidParameter(path, "must be an object")
    quantity = _integer(item.get("quantity"), 1, _INT64_MAX)
    if quantity is None:
        raise InvalidParameter(f"{path}.quantity", "must be an integer >= 1")
    return ev.OrderLine(
        sku=_required_id(item.get("sku"), f"{path}.sku"),
        type=_text(item.get("type")),
        quantity=quantity,
        amount=_decimal(item.get("amount")),
        is_pre_order=_flag(item.get("is_pre_order")),
        is_free=_flag(item.get("is_free")),
        is_bonus=_flag(item.get("is_bonus")),
        is_bundle_content=_flag(item.get("is_bundle_content")),
    )


def _fill_transaction(event: ev.WebhookEvent, doc: dict[str, Any], raw: bytes) -> None:
    transaction = _required_section(doc, "transaction")
    user = _required_section(doc, "user")
    transaction_id = _required_id(transaction.get("id"), "transaction.id")
    event.user_id = _required_id(user.get("id"), "user.id")
    event.sandbox = _flag(transaction.get("dry_run"))
    purchase = _section(doc, "purchase")
    total = _section(purchase, "total") or _section(purchase, "checkout")
    refund = _section(doc, "refund_details")
    # Informational only (grants come from order events): malformed lines are skipped, not refused.
    lines = []
    items = _section(purchase, "virtual_items").get("items")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            sku, quantity = _text(item.get("sku")), _integer(item.get("amount"), 1, _INT64_MAX)
            if sku and quantity is not None:
                lines.append(ev.OrderLine(sku=sku, type="virtual_good", quantity=quantity))
    event.transaction.CopyFrom(
        ev.TransactionEvent(
            transaction_id=transaction_id,
            external_id=_text(transaction.get("external_id")),
            amount=_decimal(total.get("amount")),
            currency=_text(total.get("currency")),
            refund_code=_integer(refund.get("code"), 0, _INT32_MAX) or 0,
            refund_reason=_text(refund.get("reason")),
            order_id=_text(_section(doc, "order").get("id")),
            lines=lines,
            subscription_id=_text(_section(purchase, "subscription").get("subscription_id")),
        )
    )
    event.event_id = f"{PROVIDER}:{event.project_id}:txn:{_key(transaction_id)}:{event.notification_type}"
    if event.type == ev.EVENT_TYPE_PARTIAL_REFUND:
        event.event_id += ":" + hashlib.sha256(raw).hexdigest()[:16]


def _fill_subscription(event: ev.WebhookEvent, doc: dict[str, Any]) -> None:
    subscription = _required_section(doc, "subscription")
    user = _required_section(doc, "user")
    subscription_id = _required_id(subscription.get("subscription_id"), "subscription.subscription_id")
    event.user_id = _required_id(user.get("id"), "user.id")
    payload = ev.SubscriptionEvent(
        subscription_id=subscription_id,
        plan_id=_text(subscription.get("plan_id")),
        product_id=_text(subscription.get("product_id")),
        amount=_decimal(subscription.get("amount")),
        currency=_text(subscription.get("currency")),
        is_gift=_flag(subscription.get("is_gift")),
    )
    tags = subscription.get("tags")
    payload.tags.extend(tag for tag in (_text(t) for t in (tags if isinstance(tags, list) else ())) if tag)
    trial = _section(subscription, "trial")
    payload.trial_value = _integer(trial.get("value"), 0, _INT32_MAX) or 0
    payload.trial_unit = _text(trial.get("type"))
    id_parts = [f"plan={_key(payload.plan_id)}"]
    for name in _SUBSCRIPTION_DATES:
        moment = _date(subscription.get(name), f"subscription.{name}")
        if moment is not None:
            getattr(payload, name).FromDatetime(moment)
            id_parts.append(f"{name}={_utc_text(moment)}")
    event.subscription.CopyFrom(payload)
    event.event_id = ":".join(
        (PROVIDER, str(event.project_id), "sub", _key(subscription_id), event.notification_type, *id_parts)
    )


def _fill_unknown(event: ev.WebhookEvent, doc: dict[str, Any], raw: bytes) -> None:
    # Stored for audit, never applied; the player (when one is named) only chooses the partition.
    user = _section(doc, "user")
    event.user_id = _text(user.get("id")) or _text(user.get("external_id"))
    event.sandbox = _flag(_section(doc, "transaction").get("dry_run"))
    event.event_id = f"{PROVIDER}:{event.project_id}:raw:{hashlib.sha256(raw).hexdigest()}"


def _user_query(doc: dict[str, Any], action: Action, project: int) -> UserQuery:
    user = _required_section(doc, "user")
    if action is Action.VALIDATE_USER:
        return UserQuery(PROVIDER, project, user_id=_required_id(user.get("id"), "user.id"), user=user)
    public_id = _required_id(user.get("public_id"), "user.public_id")
    return UserQuery(PROVIDER, project, user_id=_text(user.get("id")), public_id=public_id, user=user)


# --- field readers ----------------------------------------------------------------------------------------------


def _section(holder: Mapping[str, Any], key: str) -> dict[str, Any]:
    """An optional nested object; anything that is not an object counts as absent."""
    value = holder.get(key)
    return value if isinstance(value, dict) else {}


def _required_section(holder: Mapping[str, Any], key: str) -> dict[str, Any]:
    value = holder.get(key)
    if not isinstance(value, dict):
        raise InvalidParameter(key, "is required (an object)")
    return value


def _required_id(value: Any, path: str) -> str:
    """An identifier: a non-empty string or a non-negative integer (Xsolla sends both), as a string."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return str(value)
    if isinstance(value, str) and value.strip():
        _check_unicode(value, path)
        if len(value) > _MAX_ID_CHARS:
            raise InvalidParameter(path, f"is longer than {_MAX_ID_CHARS} characters")
        return value
    raise InvalidParameter(path, "is required (a non-empty string or an integer)")


def _text(value: Any) -> str:
    """An optional informational string; numbers are written out, anything else is empty."""
    if isinstance(value, str):
        # Lone surrogates (from "\\ud800"-style escapes) cannot be stored as protobuf strings.
        return value.encode("utf-8", "replace").decode("utf-8")
    if isinstance(value, int | Decimal) and not isinstance(value, bool):
        return str(value)
    return ""


def _decimal(value: Any) -> str:
    """An amount as the provider wrote it; Xsolla's "[null]" and non-numbers become empty."""
    text = _text(value)
    return "" if text == "[null]" else text


def _flag(value: Any) -> bool:
    """True for true, 1 or "1"/"true" (Xsolla writes `dry_run: 1` and booleans)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int | Decimal):
        return value == 1
    return isinstance(value, str) and value.strip().lower() in ("1", "true")


def _integer(value: Any, minimum: int, maximum: int) -> int | None:
    """An integer within [minimum, maximum] from an int, an integral decimal or a digit string; else None."""
    number: int | None = None
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        number = value
    elif isinstance(value, Decimal) and value.is_finite() and value == value.to_integral_value():
        number = int(value) if abs(value.adjusted()) < 20 else None
    elif isinstance(value, str) and value.isascii() and value.strip().isdigit() and len(value) < 20:
        number = int(value)
    if number is None or not minimum <= number <= maximum:
        return None
    return number


def _date(value: Any, path: str) -> datetime | None:
    """An ISO-8601 date with or without offset (UTC when without); None when absent."""
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise InvalidParameter(path, "must be an ISO-8601 date")
    try:
        moment = datetime.fromisoformat(value.strip())
    except ValueError:
        raise InvalidParameter(path, "must be an ISO-8601 date") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    try:
        return moment.astimezone(UTC)
    except OverflowError:  # a year-1 date with a positive offset, or year 9999 with a negative one
        raise InvalidParameter(path, "is out of range") from None


def _utc_text(moment: datetime) -> str:
    """A UTC moment as ISO-8601 with a Z, to the second (to the microsecond when it has any)."""
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ" if moment.microsecond else "%Y-%m-%dT%H:%M:%SZ")


def _check_unicode(value: str, path: str) -> None:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise InvalidParameter(path, "is not valid Unicode") from None


def _key(part: str) -> str:
    """A free-form id made safe inside an event id (no ':' or other separators)."""
    return quote(part, safe="-._~@+")
