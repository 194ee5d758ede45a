"""The HTTP control API's routes for webhooks and subscriptions (the rest is in `xsolla_simulator.control`).

    GET    /_sim/webhooks                                                           -> [webhook]
    POST   /_sim/webhooks/hold              {"types"?, "project_id"?, "times"?}     -> {"held": [webhook ids]}
    DELETE /_sim/webhooks/hold                                                      -> {}
    POST   /_sim/webhooks/{webhook_id}/release                                      -> first attempt
    POST   /_sim/webhooks/{webhook_id}/resend                                       -> first attempt | null (held)
    POST   /_sim/webhooks/drop              {"share"?, "types"?, "project_id"?, "seed"?} -> {}
    DELETE /_sim/webhooks/drop                                                      -> {}
    GET    /_sim/webhooks/dropped                                                   -> [webhook]
    POST   /_sim/webhooks/dropped/deliver   {"project_id"?}                         -> [first attempt]
    POST   /_sim/subscriptions              {"user_id", "plan_id"?, "project_id"?, "product_id"?, "date_create"?,
                                             "date_next_charge"?, "period_days"?, "amount"?, "currency"?,
                                             "trial_days"?, "is_gift"?, "tags"?}    -> subscription
    GET    /_sim/subscriptions                                                      -> [subscription]
    GET    /_sim/subscriptions/{id}                                                 -> subscription
    POST   /_sim/subscriptions/{id}/renew   {"date_next_charge"?}                   -> subscription
    POST   /_sim/subscriptions/{id}/non-renewing                                    -> subscription
    POST   /_sim/subscriptions/{id}/cancel  {"date_end"?}                           -> subscription

Dates are ISO 8601 strings with an offset ("2026-05-01T10:00:00+00:00"). A webhook's `body` is shown as text.
"""

from __future__ import annotations

from datetime import timedelta
from typing import TYPE_CHECKING, Any

from aiohttp import web

from xsolla_simulator.control import date as _date
from xsolla_simulator.control import delivery_view as _delivery_view
from xsolla_simulator.control import guard, integer, project_of, read_body, text
from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.subscriptions import SimSubscription
from xsolla_simulator.webhooks import Webhook

if TYPE_CHECKING:
    # For annotations only: the simulator imports this module to add these routes when it starts.
    from xsolla_simulator.simulator import XsollaSimulator


def add_webhook_control_routes(app: web.Application, sim: XsollaSimulator) -> None:
    """Adds the `/_sim/webhooks` and `/_sim/subscriptions` routes, acting on `sim`, to `app`."""
    routes = _Routes(sim)
    router = app.router
    router.add_get("/_sim/webhooks", guard(routes.list_webhooks))
    router.add_post("/_sim/webhooks/hold", guard(routes.hold))
    router.add_delete("/_sim/webhooks/hold", guard(routes.stop_holding))
    router.add_post("/_sim/webhooks/drop", guard(routes.drop))
    router.add_delete("/_sim/webhooks/drop", guard(routes.stop_dropping))
    router.add_get("/_sim/webhooks/dropped", guard(routes.list_dropped))
    router.add_post("/_sim/webhooks/dropped/deliver", guard(routes.deliver_dropped))
    router.add_post("/_sim/webhooks/{webhook_id}/release", guard(routes.release))
    router.add_post("/_sim/webhooks/{webhook_id}/resend", guard(routes.resend))
    router.add_post("/_sim/subscriptions", guard(routes.create_subscription))
    router.add_get("/_sim/subscriptions", guard(routes.list_subscriptions))
    router.add_get("/_sim/subscriptions/{subscription_id}", guard(routes.get_subscription))
    router.add_post("/_sim/subscriptions/{subscription_id}/renew", guard(routes.renew))
    router.add_post("/_sim/subscriptions/{subscription_id}/non-renewing", guard(routes.set_non_renewing))
    router.add_post("/_sim/subscriptions/{subscription_id}/cancel", guard(routes.cancel))


def webhook_view(webhook: Webhook, *, held: bool, dropped: bool = False) -> dict[str, Any]:
    """A webhook as the control API shows it (`held`, `dropped`: not sent yet)."""
    return {
        "webhook_id": webhook.webhook_id,
        "project_id": webhook.project_id,
        "type": webhook.type,
        "order_id": webhook.order_id,
        "subscription_id": webhook.subscription_id,
        "url": webhook.url,
        "held": held,
        "dropped": dropped,
        "body": webhook.body.decode(),
    }


def subscription_view(subscription: SimSubscription) -> dict[str, Any]:
    """A subscription as the control API shows it."""
    return {
        "subscription_id": subscription.subscription_id,
        "project_id": subscription.project_id,
        "user_id": subscription.user_id,
        "plan_id": subscription.plan_id,
        "product_id": subscription.product_id,
        "status": subscription.status,
        "date_create": subscription.date_create.isoformat(),
        "date_next_charge": subscription.date_next_charge.isoformat(),
        "date_end": subscription.date_end.isoformat() if subscription.date_end else None,
        "amount": str(subscription.amount),
        "currency": subscription.currency,
    }


class _Routes:
    def __init__(self, sim: XsollaSimulator) -> None:
        self._sim = sim

    async def list_webhooks(self, request: web.Request) -> web.Response:
        held = {webhook.webhook_id for webhook in self._sim.held_webhooks}
        dropped = {webhook.webhook_id for webhook in self._sim.dropped()}
        views = [
            webhook_view(w, held=w.webhook_id in held, dropped=w.webhook_id in dropped) for w in self._sim.webhooks
        ]
        return web.json_response(views)

    async def drop(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        share = body.get("share", 1.0)
        if not isinstance(share, int | float) or isinstance(share, bool):
            raise InvalidRequest("share must be a number from 0 to 1")
        self._sim.drop_webhooks(float(share), _types(body), project_id=project_of(body), seed=integer(body, "seed", 0))
        return web.json_response({})

    async def stop_dropping(self, request: web.Request) -> web.Response:
        self._sim.stop_dropping()
        return web.json_response({})

    async def list_dropped(self, request: web.Request) -> web.Response:
        return web.json_response([webhook_view(w, held=False, dropped=True) for w in self._sim.dropped()])

    async def deliver_dropped(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        deliveries = await self._sim.deliver_dropped(project_id=project_of(body))
        return web.json_response([_delivery_view(delivery) for delivery in deliveries])

    async def hold(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        types = _types(body)
        times = body.get("times")
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise InvalidRequest("times must be an integer or null")
        self._sim.hold_webhooks(*types, project_id=project_of(body), times=times)
        return web.json_response({"held": [webhook.webhook_id for webhook in self._sim.held_webhooks]})

    async def stop_holding(self, request: web.Request) -> web.Response:
        self._sim.stop_holding_webhooks()
        return web.json_response({})

    async def release(self, request: web.Request) -> web.Response:
        return web.json_response(_delivery_view(await self._sim.release_webhook(_webhook_id(request))))

    async def resend(self, request: web.Request) -> web.Response:
        return web.json_response(_delivery_view(await self._sim.resend_webhook(_webhook_id(request))))

    async def create_subscription(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        tags = body.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(tag, str) for tag in tags):
            raise InvalidRequest("tags must be a list of strings")
        product_id, trial_days = body.get("product_id"), body.get("trial_days")
        subscription = await self._sim.subscriptions.create(
            text(body, "user_id"),
            str(body.get("plan_id", "plan-monthly")),
            project_id=project_of(body),
            product_id=product_id if isinstance(product_id, str) else None,
            date_create=_date(body, "date_create"),
            date_next_charge=_date(body, "date_next_charge"),
            period=timedelta(days=integer(body, "period_days", 30)),
            amount=str(body.get("amount", "9.99")),
            currency=str(body.get("currency", "USD")),
            trial_days=integer(body, "trial_days", 0) if trial_days is not None else None,
            is_gift=bool(body.get("is_gift", False)),
            tags=tags,
        )
        return web.json_response(subscription_view(subscription), status=201)

    async def list_subscriptions(self, request: web.Request) -> web.Response:
        return web.json_response([subscription_view(s) for s in self._sim.subscriptions])

    async def get_subscription(self, request: web.Request) -> web.Response:
        return web.json_response(subscription_view(self._sim.subscriptions.get(_subscription_id(request))))

    async def renew(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        renewed = await self._sim.subscriptions.renew(
            _subscription_id(request), date_next_charge=_date(body, "date_next_charge")
        )
        return web.json_response(subscription_view(renewed))

    async def set_non_renewing(self, request: web.Request) -> web.Response:
        return web.json_response(
            subscription_view(await self._sim.subscriptions.set_non_renewing(_subscription_id(request)))
        )

    async def cancel(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        canceled = await self._sim.subscriptions.cancel(_subscription_id(request), date_end=_date(body, "date_end"))
        return web.json_response(subscription_view(canceled))


def _webhook_id(request: web.Request) -> int:
    value = request.match_info["webhook_id"]
    if not value.isdigit():
        raise InvalidRequest("webhook_id must be a number")
    return int(value)


def _subscription_id(request: web.Request) -> str:
    return request.match_info["subscription_id"]


def _types(body: dict[str, Any]) -> list[str]:
    types = body.get("types", [])
    if not isinstance(types, list) or not all(isinstance(t, str) for t in types):
        raise InvalidRequest("types must be a list of strings")
    return types
