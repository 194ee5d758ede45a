"""Recurring subscriptions (Xsolla's Subscriptions product) and their webhooks.

A test creates a subscription with chosen dates, renews it (`date_next_charge` moves on), sets it non-renewing,
or cancels it; each step sends the webhook Xsolla sends for it, with the payloads of Xsolla's docs:

    create          create_subscription        settings, user.id, subscription {plan_id, subscription_id,
                                                product_id, date_create, date_next_charge, trial?, is_gift?, tags?}
    renew           update_subscription        settings, user.id, subscription {plan_id, subscription_id,
                                                product_id, date_next_charge}
    set_non_renewing non_renewal_subscription  settings, user.id, subscription {plan_id, subscription_id,
                                                date_create, date_next_charge, currency, amount}
    cancel          cancel_subscription        settings, user.id, subscription {plan_id, subscription_id,
                                                product_id, date_create, date_end}

Subscription webhooks are the same in both delivery modes (the modes differ only in payment and order webhooks).
Dates are written as Xsolla writes them, ISO 8601 with an offset ("2015-01-22T19:25:25+00:00"). Any move is
allowed (a canceled subscription can be renewed), so tests can replay odd sequences.
"""

from __future__ import annotations

import itertools
from collections.abc import Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, Final

from xsolla_simulator.errors import InvalidRequest, UnknownSubscription
from xsolla_simulator.projects import ProjectBook, SimProject
from xsolla_simulator.webhooks import WebhookDelivery

#: The statuses a subscription moves through (Xsolla's: `active`, `non_renewing`, `canceled`).
SUBSCRIPTION_STATUSES: Final = ("active", "non_renewing", "canceled")

#: The subscription webhooks, in the order of a subscription's life.
SUBSCRIPTION_NOTIFICATIONS: Final = (
    "create_subscription",
    "update_subscription",
    "non_renewal_subscription",
    "cancel_subscription",
)

#: Sends a subscription webhook: (project, subscription, notification type, body) -> its first attempt, or None
#: when none was sent (no webhook URL, or held).
SendWebhook = Callable[[SimProject, "SimSubscription", str, dict[str, Any]], Awaitable[WebhookDelivery | None]]


@dataclass(eq=False)
class SimSubscription:
    """A subscription on the simulator: a live view, updated by each step.

    Attributes:
        subscription_id: Xsolla's id (a numeric string, as its examples send it), unique across projects.
        period: how far a renewal moves `date_next_charge` unless told where to.
        date_end: when it was canceled; None until then.
    """

    subscription_id: str
    project_id: int
    user_id: str
    plan_id: str
    product_id: str | None
    date_create: datetime
    date_next_charge: datetime
    period: timedelta
    amount: Decimal
    currency: str
    trial_days: int | None = None
    is_gift: bool = False
    tags: tuple[str, ...] = ()
    status: str = "active"
    date_end: datetime | None = None


class Subscriptions:
    """Every subscription of one simulator, and the steps that move them (each sends its webhook).

    Args:
        projects: the simulator's projects.
        send: sends a subscription webhook.
    """

    def __init__(self, projects: ProjectBook, send: SendWebhook) -> None:
        self._projects = projects
        self._send = send
        self._subscriptions: dict[str, SimSubscription] = {}
        self._ids = itertools.count(50_000_001)

    async def create(
        self,
        user_id: str,
        plan_id: str = "plan-monthly",
        *,
        project_id: int | None = None,
        product_id: str | None = None,
        date_create: datetime | None = None,
        date_next_charge: datetime | None = None,
        period: timedelta = timedelta(days=30),
        amount: Decimal | str = "9.99",
        currency: str = "USD",
        trial_days: int | None = None,
        is_gift: bool = False,
        tags: Iterable[str] = (),
    ) -> SimSubscription:
        """A new active subscription; sends `create_subscription`.

        Args:
            project_id: its project (the simulator's first by default).
            date_create: now by default (whole seconds).
            date_next_charge: `date_create + period` (after the trial, if any) by default.

        Raises:
            InvalidRequest: an unknown project, an empty id, a naive date, a period or amount out of range.
        """
        project = self._projects.get(project_id)
        if not user_id or not plan_id:
            raise InvalidRequest("user_id and plan_id must be non-empty strings")
        if period <= timedelta(0):
            raise InvalidRequest("period must be positive")
        if trial_days is not None and trial_days < 1:
            raise InvalidRequest("trial_days must be >= 1")
        created = _moment(date_create, "date_create")
        trial = timedelta(days=trial_days or 0)
        subscription = SimSubscription(
            subscription_id=str(next(self._ids)),
            project_id=project.project_id,
            user_id=user_id,
            plan_id=plan_id,
            product_id=product_id,
            date_create=created,
            date_next_charge=_moment(date_next_charge, "date_next_charge", default=created + trial + period),
            period=period,
            amount=_amount(amount),
            currency=currency,
            trial_days=trial_days,
            is_gift=is_gift,
            tags=tuple(tags),
        )
        self._subscriptions[subscription.subscription_id] = subscription
        await self._notify(subscription, "create_subscription")
        return subscription

    async def renew(self, subscription_id: str, *, date_next_charge: datetime | None = None) -> SimSubscription:
        """A renewal: `date_next_charge` moves on (by one period by default), the status is `active`; sends
        `update_subscription`.

        Raises:
            UnknownSubscription: no such subscription.
            InvalidRequest: a naive date.
        """
        subscription = self.get(subscription_id)
        default = subscription.date_next_charge + subscription.period
        subscription.date_next_charge = _moment(date_next_charge, "date_next_charge", default=default)
        subscription.status = "active"
        await self._notify(subscription, "update_subscription")
        return subscription

    async def set_non_renewing(self, subscription_id: str) -> SimSubscription:
        """Auto-renewal turned off: status `non_renewing`, in force until `date_next_charge`; sends
        `non_renewal_subscription`.

        Raises:
            UnknownSubscription: no such subscription.
        """
        subscription = self.get(subscription_id)
        subscription.status = "non_renewing"
        await self._notify(subscription, "non_renewal_subscription")
        return subscription

    async def cancel(self, subscription_id: str, *, date_end: datetime | None = None) -> SimSubscription:
        """A cancellation: status `canceled`, `date_end` now (whole seconds) by default; sends
        `cancel_subscription`.

        Raises:
            UnknownSubscription: no such subscription.
            InvalidRequest: a naive date.
        """
        subscription = self.get(subscription_id)
        subscription.date_end = _moment(date_end, "date_end")
        subscription.status = "canceled"
        await self._notify(subscription, "cancel_subscription")
        return subscription

    def get(self, subscription_id: str) -> SimSubscription:
        """The subscription with that id.

        Raises:
            UnknownSubscription: there is none.
        """
        try:
            return self._subscriptions[subscription_id]
        except KeyError:
            raise UnknownSubscription(subscription_id) from None

    def __iter__(self) -> Iterator[SimSubscription]:
        return iter(self._subscriptions.values())

    def __len__(self) -> int:
        return len(self._subscriptions)

    async def _notify(self, subscription: SimSubscription, notification_type: str) -> None:
        project = self._projects.get(subscription.project_id)
        body = subscription_notification(subscription, notification_type, project)
        await self._send(project, subscription, notification_type, body)


def subscription_notification(
    subscription: SimSubscription, notification_type: str, project: SimProject
) -> dict[str, Any]:
    """The body of a subscription webhook (one of `SUBSCRIPTION_NOTIFICATIONS`) for `subscription` as it is now.

    Raises:
        ValueError: `notification_type` is not a subscription webhook.
    """
    if notification_type not in SUBSCRIPTION_NOTIFICATIONS:
        raise ValueError(f"not a subscription notification type: {notification_type!r}")
    sub: dict[str, Any] = {"plan_id": subscription.plan_id, "subscription_id": subscription.subscription_id}
    if subscription.product_id is not None and notification_type != "non_renewal_subscription":
        sub["product_id"] = subscription.product_id
    if notification_type != "update_subscription":
        sub["date_create"] = _text(subscription.date_create)
    if notification_type == "cancel_subscription":
        sub["date_end"] = _text(subscription.date_end or datetime.now(UTC).replace(microsecond=0))
    else:
        sub["date_next_charge"] = _text(subscription.date_next_charge)
    if notification_type == "create_subscription":
        if subscription.trial_days:
            sub["trial"] = {"value": subscription.trial_days, "type": "day"}
        if subscription.is_gift:
            sub["is_gift"] = True  # sent only when true
        if subscription.tags:
            sub["tags"] = list(subscription.tags)
    if notification_type == "non_renewal_subscription":
        sub.update(currency=subscription.currency, amount=float(subscription.amount))
    return {
        "notification_type": notification_type,
        "settings": {"project_id": project.project_id, "merchant_id": project.merchant_id},
        "user": {"id": subscription.user_id},
        "subscription": sub,
    }


def _moment(value: datetime | None, name: str, *, default: datetime | None = None) -> datetime:
    if value is None:
        return default if default is not None else datetime.now(UTC).replace(microsecond=0)
    if value.tzinfo is None:
        raise InvalidRequest(f"{name} must be timezone-aware")
    return value


def _amount(value: Decimal | str) -> Decimal:
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        raise InvalidRequest("amount must be a decimal number") from None
    if not amount.is_finite() or amount < 0:
        raise InvalidRequest("amount must be a non-negative number")
    return amount


def _text(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")
