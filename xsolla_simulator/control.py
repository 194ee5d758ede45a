"""The simulator's HTTP control API, for demos and tests in other processes: the Python API over JSON.

Nothing here is Xsolla's; it lives under `/_sim` on the simulator's loopback port, without authentication.
Webhooks and subscriptions have their routes in `xsolla_simulator.control_webhooks`. `project_id` is optional
wherever it appears (the first project by default).

    POST   /_sim/projects                     {"project_id", "webhook_url"?, "webhook_secret"?, "webhook_mode"?,
                                               "merchant_id"?}                     -> project
    GET    /_sim/projects                                                          -> [project]
    POST   /_sim/tokens                       {"user_id", "project_id"?}           -> {"token"}
    POST   /_sim/orders                       {"user_id", "items", "currency"?, "sandbox"?, "project_id"?,
                                               "created_at"?}                      -> order
    GET    /_sim/orders                                                            -> [order]
    GET    /_sim/orders/{order_id}                                                 -> order
    POST   /_sim/orders/{order_id}/status     {"status", "channels"?}              -> announcement
    POST   /_sim/orders/{order_id}/refund     {"code"?, "reason"?, "channels"?}    -> announcement
    POST   /_sim/orders/{order_id}/partial-refund {"amount", "code"?, "reason"?}   -> first attempt | null (held)
    POST   /_sim/orders/{order_id}/publish    {"status"}                           -> {"offset"}
    POST   /_sim/orders/{order_id}/webhook    {"type"?}                            -> first attempt | null (held)
    POST   /_sim/websockets/break             {"code"?, "reason"?, "refuse_for_s"?, "user_id"?} -> {"closed"}
    POST   /_sim/silence                      {"channels", "silent"?}              -> {"silenced"}
    POST   /_sim/get-order/faults             {"times"?, "status"?, "delay_s"?, "order_id"?} -> {}
    DELETE /_sim/get-order/faults                                                  -> {}
    GET    /_sim/stats                                                             -> counters

Errors: 400 `{"error": ...}` for a malformed request, 404 for an unknown order or subscription. Dates are ISO
8601 strings with an offset ("2026-05-01T10:00:00+00:00").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from aiohttp import web

from xsolla_simulator.announcements import Announcement
from xsolla_simulator.errors import InvalidRequest, UnknownOrder, UnknownSubscription
from xsolla_simulator.orders import SimOrder, plain
from xsolla_simulator.projects import SimProject
from xsolla_simulator.webhooks import WebhookDelivery

if TYPE_CHECKING:
    # For annotations only: the simulator imports this module to add these routes when it starts.
    from xsolla_simulator.simulator import XsollaSimulator

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def add_control_routes(app: web.Application, sim: XsollaSimulator) -> None:
    """Adds the `/_sim` routes, acting on `sim`, to `app`."""
    routes = _Routes(sim)
    router = app.router
    router.add_post("/_sim/projects", guard(routes.add_project))
    router.add_get("/_sim/projects", guard(routes.list_projects))
    router.add_post("/_sim/tokens", guard(routes.issue_token))
    router.add_post("/_sim/orders", guard(routes.create_order))
    router.add_get("/_sim/orders", guard(routes.list_orders))
    router.add_get("/_sim/orders/{order_id}", guard(routes.get_order))
    router.add_post("/_sim/orders/{order_id}/status", guard(routes.set_status))
    router.add_post("/_sim/orders/{order_id}/refund", guard(routes.refund))
    router.add_post("/_sim/orders/{order_id}/partial-refund", guard(routes.partial_refund))
    router.add_post("/_sim/orders/{order_id}/publish", guard(routes.publish_status))
    router.add_post("/_sim/orders/{order_id}/webhook", guard(routes.send_webhook))
    router.add_post("/_sim/websockets/break", guard(routes.break_websockets))
    router.add_post("/_sim/silence", guard(routes.silence))
    router.add_post("/_sim/get-order/faults", guard(routes.fail_get_order))
    router.add_delete("/_sim/get-order/faults", guard(routes.clear_get_order_faults))
    router.add_get("/_sim/stats", guard(routes.stats))


def order_view(sim: XsollaSimulator, order: SimOrder) -> dict[str, Any]:
    """An order as the control API shows it."""
    return {
        "order_id": order.order_id,
        "project_id": order.project_id,
        "user_id": order.user_id,
        "status": order.status,
        "polling_status": order.polling_status,
        "invoice_id": order.invoice_id,
        "currency": order.currency,
        "amount": plain(order.amount),
        "sandbox": order.sandbox,
        "created_at": order.created_at.isoformat(),
        "items": [
            {"sku": i.sku, "quantity": i.quantity, "type": i.type, "price": plain(i.price), "is_free": i.is_free}
            for i in order.items
        ],
        "changes": [{"status": c.status, "channels": list(c.channels), "at": c.at.isoformat()} for c in order.changes],
        "get_order_requests": sim.get_order_requests(order.order_id),
        "webhook_deliveries": [delivery_view(d) for d in sim.webhook_deliveries if d.order_id == order.order_id],
    }


def delivery_view(delivery: WebhookDelivery | None) -> dict[str, Any] | None:
    """A webhook delivery attempt as the control API shows it (None, for a held webhook, stays None)."""
    return dataclasses.asdict(delivery) if delivery is not None else None


def project_view(project: SimProject) -> dict[str, Any]:
    """A project as the control API shows it (without its secret)."""
    return {
        "project_id": project.project_id,
        "webhook_url": project.webhook_url,
        "webhook_mode": project.webhook_mode,
        "merchant_id": project.merchant_id,
    }


class _Routes:
    def __init__(self, sim: XsollaSimulator) -> None:
        self._sim = sim

    async def add_project(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        url = body.get("webhook_url")
        if url is not None and not isinstance(url, str):
            raise InvalidRequest("webhook_url must be a string")
        project = self._sim.add_project(
            integer(body, "project_id", 0),
            webhook_url=url,
            webhook_secret=text(body, "webhook_secret") if "webhook_secret" in body else "secret",
            webhook_mode=text(body, "webhook_mode") if "webhook_mode" in body else "combined",
            merchant_id=integer(body, "merchant_id", 100001),
        )
        return web.json_response(project_view(project), status=201)

    async def list_projects(self, request: web.Request) -> web.Response:
        return web.json_response([project_view(project) for project in self._sim.projects])

    async def issue_token(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        token = self._sim.issue_token(text(body, "user_id"), project_id=project_of(body))
        return web.json_response({"token": token})

    async def create_order(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        items = body.get("items")
        if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
            raise InvalidRequest("items must be a list of objects")
        order = self._sim.create_order(
            text(body, "user_id"),
            items,
            currency=str(body.get("currency", "USD")),
            sandbox=bool(body.get("sandbox", False)),
            project_id=project_of(body),
            created_at=date(body, "created_at"),
        )
        return web.json_response(order_view(self._sim, order), status=201)

    async def list_orders(self, request: web.Request) -> web.Response:
        return web.json_response([order_view(self._sim, order) for order in self._sim.orders])

    async def get_order(self, request: web.Request) -> web.Response:
        return web.json_response(order_view(self._sim, self._sim.order(_order_id(request))))

    async def set_status(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        channels = _channels(body)
        order_id, status = _order_id(request), text(body, "status")
        if channels is None:
            announcement = await self._sim.set_status(order_id, status)
        else:
            announcement = await self._sim.set_status(order_id, status, channels)
        return web.json_response(_announcement_view(announcement))

    async def refund(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        reason = body.get("reason")
        announcement = await self._sim.refund(
            _order_id(request),
            code=integer(body, "code", 1),
            reason=reason if isinstance(reason, str) else None,
            channels=_channels(body) or ("websocket", "webhook", "polling"),
        )
        return web.json_response(_announcement_view(announcement))

    async def partial_refund(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        amount, reason = body.get("amount"), body.get("reason")
        if not isinstance(amount, str | int | float) or isinstance(amount, bool):
            raise InvalidRequest("amount must be a number or a decimal string")
        delivery = await self._sim.partial_refund(
            _order_id(request),
            str(amount),
            code=integer(body, "code", 1),
            reason=reason if isinstance(reason, str) else None,
        )
        return web.json_response(delivery_view(delivery))

    async def publish_status(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        publication = await self._sim.publish_status(_order_id(request), text(body, "status"))
        return web.json_response({"offset": publication.offset})

    async def send_webhook(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        chosen = body.get("type")
        delivery = await self._sim.send_webhook(_order_id(request), chosen if isinstance(chosen, str) else None)
        return web.json_response(delivery_view(delivery))

    async def break_websockets(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        user_id = body.get("user_id")
        closed = await self._sim.break_websockets(
            integer(body, "code", 3001),
            str(body.get("reason", "shutdown")),
            _float(body, "refuse_for_s", 0.0),
            user_id=user_id if isinstance(user_id, str) else None,
        )
        return web.json_response({"closed": closed})

    async def silence(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        channels = body.get("channels", [])
        if not isinstance(channels, list) or not all(isinstance(c, str) for c in channels):
            raise InvalidRequest("channels must be a list of strings")
        if body.get("silent", True):
            self._sim.silence(*channels)
        else:
            self._sim.unsilence(*channels)
        return web.json_response({"silenced": sorted(self._sim.silenced)})

    async def fail_get_order(self, request: web.Request) -> web.Response:
        body = await read_body(request)
        times = body.get("times", 1)
        if times is not None and (not isinstance(times, int) or isinstance(times, bool)):
            raise InvalidRequest("times must be an integer or null")
        order_id = body.get("order_id")
        if order_id is not None and (not isinstance(order_id, int) or isinstance(order_id, bool)):
            raise InvalidRequest("order_id must be an integer")
        status = body.get("status")
        if status is None and "delay_s" in body:
            self._sim.delay_get_order(_float(body, "delay_s", 0.0), times=times, order_id=order_id)
        else:
            self._sim.fail_get_order(
                times, integer(body, "status", 503), delay_s=_float(body, "delay_s", 0.0), order_id=order_id
            )
        return web.json_response({})

    async def clear_get_order_faults(self, request: web.Request) -> web.Response:
        self._sim.clear_get_order_faults()
        return web.json_response({})

    async def stats(self, request: web.Request) -> web.Response:
        sim = self._sim
        return web.json_response(
            {
                "websocket": {"connections": sim.websocket_connections, **dataclasses.asdict(sim.websocket_stats)},
                "get_order_requests_total": sim.get_order_requests_total,
                "webhook_attempts_total": len(sim.webhook_deliveries),
                "orders_total": len(sim.orders),
                "silenced": sorted(sim.silenced),
            }
        )


def guard(handler: Handler) -> Handler:
    """Turns the control API's errors into 400/404 answers."""

    async def guarded(request: web.Request) -> web.StreamResponse:
        try:
            return await handler(request)
        except (UnknownOrder, UnknownSubscription) as exc:
            return web.json_response({"error": str(exc)}, status=404)
        except InvalidRequest as exc:
            return web.json_response({"error": str(exc)}, status=400)

    return guarded


def _announcement_view(announcement: Announcement) -> dict[str, Any]:
    return {
        "order_id": announcement.order_id,
        "status": announcement.status,
        "channels": list(announcement.channels),
        "offset": announcement.publication.offset if announcement.publication else None,
        "sockets": announcement.sockets,
        "webhook": delivery_view(announcement.webhook) if announcement.webhook else None,
    }


async def read_body(request: web.Request) -> dict[str, Any]:
    """The request's JSON object ({} for an empty body).

    Raises:
        InvalidRequest: the body is not a JSON object.
    """
    raw = await request.read()
    if not raw:
        return {}
    try:
        body = json.loads(raw)
    except ValueError:
        raise InvalidRequest("the body must be JSON") from None
    if not isinstance(body, dict):
        raise InvalidRequest("the body must be a JSON object")
    return body


def _order_id(request: web.Request) -> int:
    text = request.match_info["order_id"]
    if not text.isdigit():
        raise InvalidRequest("order_id must be a number")
    return int(text)


def text(body: dict[str, Any], key: str) -> str:
    """`body[key]`, a non-empty string.

    Raises:
        InvalidRequest: it is not one.
    """
    value = body.get(key)
    if not isinstance(value, str) or not value:
        raise InvalidRequest(f"{key} must be a non-empty string")
    return value


def integer(body: dict[str, Any], key: str, default: int) -> int:
    """`body[key]` (or `default`), an integer.

    Raises:
        InvalidRequest: it is not one.
    """
    value = body.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be an integer")
    return value


def date(body: dict[str, Any], key: str) -> datetime | None:
    """`body[key]` when given, an ISO 8601 date-time with an offset, else None.

    Raises:
        InvalidRequest: it is not one.
    """
    value = body.get(key)
    if value is None:
        return None
    try:
        moment = datetime.fromisoformat(value) if isinstance(value, str) else None
    except ValueError:
        moment = None
    if moment is None or moment.tzinfo is None:
        raise InvalidRequest(f"{key} must be an ISO 8601 date-time string with a UTC offset")
    return moment


def project_of(body: dict[str, Any]) -> int | None:
    """`body["project_id"]` when given (an integer), else None.

    Raises:
        InvalidRequest: it is not an integer.
    """
    if body.get("project_id") is None:
        return None
    return integer(body, "project_id", 0)


def _channels(body: dict[str, Any]) -> list[str] | None:
    channels = body.get("channels")
    if channels is not None and not (isinstance(channels, list) and all(isinstance(c, str) for c in channels)):
        raise InvalidRequest("channels must be a list of strings")
    return channels


def _float(body: dict[str, Any], key: str, default: float) -> float:
    value = body.get(key, default)
    if not isinstance(value, int | float) or isinstance(value, bool):
        raise InvalidRequest(f"{key} must be a number")
    return float(value)
