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
because `update_subscription` has no id of its own and is sent again on every renewal and plan change. An id
longer than an identifier may be (256 bytes, `core.limits`: long plan ids, long non-ASCII order ids) keeps its
first three parts and replaces the rest by its SHA-256 (`bounded_event_id`).

Every identifier the service will store (player, order, sku, transaction, subscription) and every quantity is
checked here against the service's own limits (`core.limits`), so an event the gateway acknowledges is one the
service can apply; one it never could is refused with INVALID_PARAMETER naming the field (Xsolla then refunds
the order) instead of being acknowledged and dead-lettered.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from core.limits import MAX_CONSUMABLE_TOTAL, MAX_ID_BYTES
from core.webhooks import Action, FoundUser, InvalidParameter, InvalidSignature, Notification, UserQuery, Verified
from entitlements.v1 import events_pb2 as ev
from providers.xsolla import answers, fields
from providers.xsolla.settings import PROVIDER, WebhookSecret, WebhookSettings
from providers.xsolla.signature import BodyHash, given_digest

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


class XsollaWebhooks:
    """Xsolla's webhook protocol (implements `core.webhooks.WebhookProvider`).

    Args:
        settings: the secrets, each with the projects it belongs to, and the default project.

    Raises:
        ConfigError: no secret is configured at all (a gateway that could verify nothing must not start).
    """

    name = PROVIDER

    def __init__(self, settings: WebhookSettings) -> None:
        settings.check()
        self._settings = settings

    def authentication(self, headers: Mapping[str, str], route_project: str | None) -> SignedBody:
        """Begins verifying `Authorization: Signature ...` from the headers alone, before the body is read.

        On `<path>/<project_id>` (Xsolla's webhook URL is set per project) only the secrets of that project are
        candidates. On the bare path every configured secret is one, and the one that signed the body decides
        which projects the webhook may be from (`SignedBody.verify`): the body is never parsed to choose a
        secret.

        Raises:
            InvalidSignature: the header is missing or malformed, or no secret is configured for the URL's
                project.
        """
        given = given_digest(headers)
        if route_project is None:
            return SignedBody(given, self._settings.secrets, None, self._settings)
        project = int(route_project)
        secrets = self._settings.secrets_for(project)
        if not secrets:
            # Tell the operator why, not the sender.
            raise InvalidSignature("Invalid signature", detail=f"no secret is configured for project {project}")
        return SignedBody(given, secrets, project, self._settings)

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
        fields.check_unicode(notification_type, "notification_type")
        _check_named_projects(doc)
        project = verified.project_id or 0
        label = type_label(notification_type)

        action = _USER_TYPES.get(notification_type)
        if action is not None:
            # A question stores nothing: it is answered even when the signature decided no project (then 0).
            return Notification(action, notification_type, label, project, query=_user_query(doc, action, project))
        if not project:
            raise InvalidParameter(
                "settings.project_id",
                "is required: the secret that signed this webhook is not one project's alone; "
                "post it to the project's own webhook URL, ending in /<project id>",
            )

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
        event.event_id = bounded_event_id(event.event_id)
        return Notification(Action.STORE, notification_type, label, project, event=event, known=known)

    def type_label(self, verified: Verified) -> str:
        """The metric label of a verified body's type: a documented name, "other", or "none"."""
        doc = verified.document
        value = doc.get("notification_type") if doc is not None else None
        return type_label(value) if isinstance(value, str) else "none"

    def error_body(self, status: int, result: str, message: str) -> bytes:
        """Xsolla's error body (`providers.xsolla.answers`)."""
        return answers.error_body(status, result, message)

    def user_answer(self, found: FoundUser) -> bytes:
        """Xsolla's `user_search` answer."""
        return answers.user_answer(found)

    def describe(self) -> Mapping[str, object]:
        """How many projects and secrets are configured, and where from (never a secret)."""
        return self._settings.describe()

    def warnings(self) -> Mapping[str, str]:
        """What the operator should fix in the secrets' configuration (`WebhookSettings.warnings`)."""
        return self._settings.warnings()


class SignedBody:
    """One request's signature check (implements `core.webhooks.Authentication`): the body is hashed as it
    arrives, then finished with each candidate secret.

    Args:
        given: the signature the request carries (40 lower-case hex digits).
        candidates: the secrets that may have signed it, each once.
        route_project: the URL's project; None on the bare path.
        settings: what each secret signs for.
    """

    def __init__(
        self,
        given: bytes,
        candidates: tuple[WebhookSecret, ...],
        route_project: int | None,
        settings: WebhookSettings,
    ) -> None:
        self._given = given
        self._candidates = candidates
        self._route_project = route_project
        self._settings = settings
        self._hash = BodyHash()

    def update(self, chunk: bytes) -> None:
        """Hashes the next part of the body."""
        self._hash.update(chunk)

    def verify(self, raw: bytes) -> Verified:
        """Checks the signature over the body (every chunk given to `update`, which is `raw`), then parses it and
        decides the webhook's project from what signed it.

        The project is the URL's, on `<path>/<project id>`; on the bare path, the one the body names, which
        the secret must sign for, or, when the body names none, the one the secret implies
        (`WebhookSettings.implied_project`; None when it implies none).

        Raises:
            InvalidSignature: no candidate secret signed the body; or the body names a project other than the
                URL's; or, on the bare path, one the secret that signed it does not sign for.
        """
        matched = self._hash.matching(self._given, [secret.value for secret in self._candidates])
        if not matched:
            raise InvalidSignature("Invalid signature")
        # Every configured value is one secret, so one matched (two would be a SHA-1 collision).
        secret = next(secret for secret in self._candidates if secret.value in matched)
        # A configured secret signed the body: its sender holds a secret, so the body may be parsed now.
        document = fields.parse_body(raw)
        named = sorted({project for project in _named_projects(document).values() if project is not None})
        route = self._route_project
        if route is not None:
            for project in named:
                if project != route:
                    raise InvalidSignature(
                        "Invalid signature", detail=f"the body names project {project}, posted to project {route}'s URL"
                    )
            return Verified(raw, document, route)
        for project in named:
            if not self._settings.signs_for(secret, project):
                raise InvalidSignature(
                    "Invalid signature", detail=f"signed with a secret that is not one for project {project}"
                )
        if named:
            # Two different projects (settings and billing.settings): `interpret` refuses the body.
            return Verified(raw, document, named[0] if len(named) == 1 else None)
        return Verified(raw, document, self._settings.implied_project(secret))


def type_label(notification_type: str) -> str:
    """`notification_type` when Xsolla documents it, otherwise "other" (bounded metric labels)."""
    return notification_type if notification_type in DOCUMENTED_TYPES else "other"


def bounded_event_id(event_id: str) -> str:
    """`event_id`, or when it is longer than an identifier may be (`core.limits`), its first three parts (provider,
    project, family) and a SHA-256 of the whole: the same notification still gets the same id, and the event can
    still be applied."""
    if len(event_id.encode()) <= MAX_ID_BYTES:
        return event_id
    family = ":".join(event_id.split(":", 3)[:3])
    return f"{family}:sha256={hashlib.sha256(event_id.encode()).hexdigest()}"


# --- projects ---------------------------------------------------------------------------------------------------


def _named_projects(doc: dict[str, Any] | None) -> dict[str, int | None]:
    """The projects a body names, by field (`settings.project_id`, `billing.settings.project_id`): the id, or None
    when the field holds something that is not one. Absent, null and 0 (Xsolla's "none", as in `user_search`)
    are left out."""
    named: dict[str, int | None] = {}
    if doc is None:
        return named
    for path, holder in (("settings", doc), ("billing.settings", fields.section(doc, "billing"))):
        value = fields.section(holder, "settings").get("project_id")
        if value is not None:
            project = fields.integer(value, 0, fields.INT64_MAX)
            if project != 0:
                named[f"{path}.project_id"] = project
    return named


def _check_named_projects(doc: dict[str, Any]) -> None:
    """Refuses a body whose project fields are malformed or name two different projects."""
    named = _named_projects(doc)
    for path, project in named.items():
        if project is None:
            raise InvalidParameter(path, "must be a non-negative integer")
    if len(set(named.values())) > 1:
        raise InvalidParameter("billing.settings.project_id", "names another project than settings.project_id")


# --- event builders ---------------------------------------------------------------------------------------------


def _fill_order(event: ev.WebhookEvent, doc: dict[str, Any], suffix: str) -> None:
    order = fields.required_section(doc, "order")
    user = fields.required_section(doc, "user")
    order_id = fields.required_id(order.get("id"), "order.id")
    event.user_id = fields.required_id(user.get("external_id"), "user.external_id")
    items = doc.get("items")
    if not isinstance(items, list):
        raise InvalidParameter("items", "is required (a list)")
    # Combined mode: the payment rides along in `billing`. Separate mode has none (the `payment` webhook
    # carried it); a project with "add order object" on may put `transaction` at the top level.
    billing = fields.section(doc, "billing")
    transaction = fields.section(billing, "transaction") or fields.section(doc, "transaction")
    event.sandbox = order.get("mode") == "sandbox" or fields.flag(transaction.get("dry_run"))
    event.order.CopyFrom(
        ev.OrderEvent(
            order_id=order_id,
            status=fields.text(order.get("status")),
            currency=fields.text(order.get("currency")),
            amount=fields.decimal(order.get("amount")),
            invoice_id=fields.text(order.get("invoice_id")),
            transaction_id=fields.text(transaction.get("id")),
            lines=[_order_line(item, f"items[{number}]") for number, item in enumerate(items)],
        )
    )
    event.event_id = f"{PROVIDER}:{event.project_id}:order:{fields.key(order_id)}:{suffix}"


def _order_line(item: Any, path: str) -> ev.OrderLine:
    if not isinstance(item, dict):
        raise InvalidParameter(path, "must be an object")
    quantity = fields.integer(item.get("quantity"), 1, MAX_CONSUMABLE_TOTAL)
    if quantity is None:
        raise InvalidParameter(f"{path}.quantity", f"must be an integer between 1 and {MAX_CONSUMABLE_TOTAL:,}")
    return ev.OrderLine(
        sku=fields.required_id(item.get("sku"), f"{path}.sku"),
        type=fields.text(item.get("type")),
        quantity=quantity,
        amount=fields.decimal(item.get("amount")),
        is_pre_order=fields.flag(item.get("is_pre_order")),
        is_free=fields.flag(item.get("is_free")),
        is_bonus=fields.flag(item.get("is_bonus")),
        is_bundle_content=fields.flag(item.get("is_bundle_content")),
    )


def _fill_transaction(event: ev.WebhookEvent, doc: dict[str, Any], raw: bytes) -> None:
    transaction = fields.required_section(doc, "transaction")
    user = fields.required_section(doc, "user")
    transaction_id = fields.required_id(transaction.get("id"), "transaction.id")
    event.user_id = fields.required_id(user.get("id"), "user.id")
    event.sandbox = fields.flag(transaction.get("dry_run"))
    purchase = fields.section(doc, "purchase")
    total = fields.section(purchase, "total") or fields.section(purchase, "checkout")
    refund = fields.section(doc, "refund_details")
    # Informational only (grants come from order events): malformed lines are skipped, not refused.
    lines = []
    items = fields.section(purchase, "virtual_items").get("items")
    for item in items if isinstance(items, list) else ():
        if isinstance(item, dict):
            sku, quantity = fields.text(item.get("sku")), fields.integer(item.get("amount"), 1, fields.INT64_MAX)
            if sku and quantity is not None:
                lines.append(ev.OrderLine(sku=sku, type="virtual_good", quantity=quantity))
    event.transaction.CopyFrom(
        ev.TransactionEvent(
            transaction_id=transaction_id,
            external_id=fields.text(transaction.get("external_id")),
            amount=fields.decimal(total.get("amount")),
            currency=fields.text(total.get("currency")),
            refund_code=fields.integer(refund.get("code"), 0, fields.INT32_MAX) or 0,
            refund_reason=fields.text(refund.get("reason")),
            order_id=fields.text(fields.section(doc, "order").get("id")),
            lines=lines,
            subscription_id=fields.text(fields.section(purchase, "subscription").get("subscription_id")),
        )
    )
    event.event_id = f"{PROVIDER}:{event.project_id}:txn:{fields.key(transaction_id)}:{event.notification_type}"
    if event.type == ev.EVENT_TYPE_PARTIAL_REFUND:
        event.event_id += ":" + hashlib.sha256(raw).hexdigest()[:16]


def _fill_subscription(event: ev.WebhookEvent, doc: dict[str, Any]) -> None:
    subscription = fields.required_section(doc, "subscription")
    user = fields.required_section(doc, "user")
    subscription_id = fields.required_id(subscription.get("subscription_id"), "subscription.subscription_id")
    event.user_id = fields.required_id(user.get("id"), "user.id")
    payload = ev.SubscriptionEvent(
        subscription_id=subscription_id,
        plan_id=fields.text(subscription.get("plan_id")),
        product_id=fields.text(subscription.get("product_id")),
        amount=fields.decimal(subscription.get("amount")),
        currency=fields.text(subscription.get("currency")),
        is_gift=fields.flag(subscription.get("is_gift")),
    )
    tags = subscription.get("tags")
    payload.tags.extend(tag for tag in (fields.text(t) for t in (tags if isinstance(tags, list) else ())) if tag)
    trial = fields.section(subscription, "trial")
    payload.trial_value = fields.integer(trial.get("value"), 0, fields.INT32_MAX) or 0
    payload.trial_unit = fields.text(trial.get("type"))
    id_parts = [f"plan={fields.key(payload.plan_id)}"]
    for name in _SUBSCRIPTION_DATES:
        moment = fields.date(subscription.get(name), f"subscription.{name}")
        if moment is not None:
            getattr(payload, name).FromDatetime(moment)
            id_parts.append(f"{name}={fields.utc_text(moment)}")
    event.subscription.CopyFrom(payload)
    event.event_id = ":".join(
        (PROVIDER, str(event.project_id), "sub", fields.key(subscription_id), event.notification_type, *id_parts)
    )


def _fill_unknown(event: ev.WebhookEvent, doc: dict[str, Any], raw: bytes) -> None:
    # Stored for audit, never applied; the player (when one is named) only chooses the partition.
    user = fields.section(doc, "user")
    event.user_id = fields.text(user.get("id")) or fields.text(user.get("external_id"))
    event.sandbox = fields.flag(fields.section(doc, "transaction").get("dry_run"))
    event.event_id = f"{PROVIDER}:{event.project_id}:raw:{hashlib.sha256(raw).hexdigest()}"


def _user_query(doc: dict[str, Any], action: Action, project: int) -> UserQuery:
    user = fields.required_section(doc, "user")
    if action is Action.VALIDATE_USER:
        return UserQuery(PROVIDER, project, user_id=fields.required_id(user.get("id"), "user.id"), user=user)
    public_id = fields.required_id(user.get("public_id"), "user.public_id")
    return UserQuery(PROVIDER, project, user_id=fields.text(user.get("id")), public_id=public_id, user=user)
