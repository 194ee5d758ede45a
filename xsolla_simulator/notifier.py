"""What the simulator sends when something happens: each project's webhooks, in its delivery mode.

    order paid          combined: order_paid (payment in `billing`)   separate: payment, then order_paid once the
                                                                                payment was acknowledged (2xx)
    order canceled      combined: order_canceled (refund in `billing`) separate: refund, then order_canceled once
                                                                                the refund was acknowledged
    partial refund      partial_refund (both modes: no order webhook carries one)
    subscription step   its subscription webhook (both modes)

A project without a webhook URL gets nothing.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from decimal import Decimal
from typing import Any

from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.notifications import (
    NOTIFICATION_FOR_STATUS,
    TRANSACTION_BEFORE,
    order_notification,
    transaction_notification,
)
from xsolla_simulator.orders import SimOrder
from xsolla_simulator.projects import ProjectBook, SimProject
from xsolla_simulator.subscriptions import SimSubscription
from xsolla_simulator.webhooks import Webhook, WebhookDelivery, WebhookSender

#: The webhooks `Notifier.resend_order_webhook` can send for an order.
ORDER_WEBHOOKS = ("order_paid", "order_canceled", "payment", "refund")


class Notifier:
    """Sends every project's webhooks through one sender."""

    def __init__(self, projects: ProjectBook, sender: WebhookSender) -> None:
        self._projects = projects
        self._sender = sender

    async def order_status(self, order: SimOrder, status: str) -> WebhookDelivery | None:
        """The webhooks of an order reaching `status` (none for `new`, `done`, `expired`).

        Returns:
            The first attempt of the first webhook (in separate mode, the `payment` or `refund`); None when
            nothing was sent (no webhook for the status, no URL) or the first webhook is held.
        """
        notification_type = NOTIFICATION_FOR_STATUS.get(status)
        project = self._projects.get(order.project_id)
        if notification_type is None or project.webhook_url is None:
            return None
        order_body = _encode(order_notification(order, notification_type, project=project))
        send_order = functools.partial(
            self._sender.send, project, notification_type, order_body, order_id=order.order_id
        )
        if not project.separate:
            return await send_order()
        first = TRANSACTION_BEFORE[notification_type]
        body = _encode(transaction_notification(order, first, project=project))
        return await self._sender.send(project, first, body, order_id=order.order_id, then=send_order)

    async def order_webhook(self, order: SimOrder, notification_type: str) -> WebhookDelivery | None:
        """One webhook of an order, alone (no follow-up): the same bytes as the last one of that type sent for
        the order (a duplicate, as Xsolla's retries are), or a new body when none was sent yet.

        Raises:
            InvalidRequest: not one of `ORDER_WEBHOOKS`, or the order's project has no webhook URL.
        """
        if notification_type not in ORDER_WEBHOOKS:
            raise InvalidRequest(f"no order webhook {notification_type!r}; choose from {', '.join(ORDER_WEBHOOKS)}")
        project = self._url_project(order.project_id)
        sent = [w for w in self._sender.webhooks if w.order_id == order.order_id and w.type == notification_type]
        if sent:
            body = sent[-1].body
        elif notification_type in TRANSACTION_BEFORE:
            body = _encode(order_notification(order, notification_type, project=project))
        else:
            body = _encode(transaction_notification(order, notification_type, project=project))
        return await self._sender.send(project, notification_type, body, order_id=order.order_id)

    async def partial_refund(self, order: SimOrder, amount: Decimal, refund: tuple[int, str]) -> WebhookDelivery | None:
        """A `partial_refund` of `amount` for the order's transaction.

        Raises:
            InvalidRequest: the order's project has no webhook URL.
        """
        project = self._url_project(order.project_id)
        document = transaction_notification(order, "partial_refund", project=project, amount=amount, refund=refund)
        return await self._sender.send(project, "partial_refund", _encode(document), order_id=order.order_id)

    async def subscription(
        self, project: SimProject, subscription: SimSubscription, notification_type: str, body: dict[str, Any]
    ) -> WebhookDelivery | None:
        """A subscription webhook (nothing when the project has no webhook URL)."""
        if project.webhook_url is None:
            return None
        return await self._sender.send(
            project, notification_type, _encode(body), subscription_id=subscription.subscription_id
        )

    def _url_project(self, project_id: int) -> SimProject:
        project = self._projects.get(project_id)
        if project.webhook_url is None:
            raise InvalidRequest(f"project {project_id} has no webhook_url")
        return project


def _encode(document: dict[str, Any]) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode()


class WebhookControls:
    """Holding, releasing, dropping and resending webhooks, and what was sent (a base of `XsollaSimulator`)."""

    _sender: WebhookSender | None
    _stopped: bool

    def hold_webhooks(self, *types: str, project_id: int | None = None, times: int | None = None) -> None:
        """Holds the next `times` webhooks (None: all until `stop_holding_webhooks`) of `types` (none named: any)
        of a project (None: any): they are made and recorded (`webhooks`, `held_webhooks`) but not sent until
        `release_webhook`. A held `payment` or `refund` holds its order webhook back too (separate mode)."""
        self._ready_sender().hold(types, project_id=project_id, times=times)

    def stop_holding_webhooks(self) -> None:
        """Holds no more webhooks (those held stay held until released)."""
        self._ready_sender().clear_holds()

    @property
    def held_webhooks(self) -> list[Webhook]:
        """Webhooks held and not yet released, oldest first."""
        return self._sender.held if self._sender is not None else []

    async def release_webhook(self, webhook_id: int) -> WebhookDelivery:
        """Sends a held webhook now: late, after whatever was sent meanwhile. Returns its first attempt.

        Raises:
            InvalidRequest: no webhook with that id is held.
        """
        return await self._ready_sender().release(webhook_id)

    async def resend_webhook(self, webhook_id: int) -> WebhookDelivery | None:
        """Sends any webhook again with the same bytes and signature, as a new webhook (a late duplicate).

        Returns:
            Its first attempt; None when it is held.

        Raises:
            InvalidRequest: no webhook has that id.
        """
        return await self._ready_sender().resend(webhook_id)

    def drop_webhooks(
        self, share: float = 1.0, types: Iterable[str] = (), *, project_id: int | None = None, seed: int = 0
    ) -> None:
        """Loses webhooks on the way, as when every delivery fails or the URL is wrong: `share` (0..1) of those
        made from now on of `types` (none named: any) of a project (None: any) are recorded (`webhooks`,
        `dropped()`) and never sent, until `deliver_dropped`. Which ones is drawn with `seed`, so a test repeats.
        Replaces the drops set before. A dropped `payment` or `refund` takes its order webhook with it (separate
        mode), until delivered late.

        Raises:
            InvalidRequest: `share` not in 0..1.
        """
        self._ready_sender().drop(share, types, project_id=project_id, seed=seed)

    def stop_dropping(self) -> None:
        """Drops no more webhooks (those dropped stay undelivered until `deliver_dropped`)."""
        self._ready_sender().clear_drops()

    def dropped(self) -> list[Webhook]:
        """The webhooks dropped and not yet delivered late, oldest first."""
        return self._sender.dropped if self._sender is not None else []

    async def deliver_dropped(self, *, project_id: int | None = None) -> list[WebhookDelivery]:
        """Sends the dropped webhooks (of one project, or all) late, oldest first, as they were made (same bytes,
        signed with the project's secret). Drops still set apply to their follow-ups: `stop_dropping` first.

        Returns:
            Their first attempts, in order; retries go on in the background.
        """
        return await self._ready_sender().deliver_dropped(project_id=project_id)

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook delivery attempt so far, in the order they finished."""
        return list(self._sender.deliveries) if self._sender is not None else []

    @property
    def webhooks(self) -> list[Webhook]:
        """Every webhook made (its exact body), in the order they were made, held ones included."""
        return list(self._sender.webhooks) if self._sender is not None else []

    async def wait_webhooks_settled(self, timeout_s: float = 10.0) -> None:
        """Waits until no webhook is being delivered or waiting for a retry (held ones are neither).

        Raises:
            TimeoutError: some still were after `timeout_s`.
        """
        if self._sender is not None:
            await self._sender.settled(timeout_s)

    def _ready_sender(self) -> WebhookSender:
        if self._sender is None or self._stopped:
            raise RuntimeError("webhooks are sent between start() and stop()")
        return self._sender
