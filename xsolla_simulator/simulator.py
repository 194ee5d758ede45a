"""`XsollaSimulator`: Xsolla's surfaces for one or more projects on one loopback port, and the control over them.

One aiohttp server hosts the order-status WebSocket (`/connection/websocket`, Centrifuge protocol v2 JSON), the
Store API's Get order (`/api/v2/project/{project_id}/order/{order_id}`), the admin catalog (`.catalog`,
`xsolla_simulator.catalog_api`), the admin order search (`.order_search`, `xsolla_simulator.order_search`) and,
optionally, an HTTP control API (`/_sim/...`); `_route_tables` is the one
place where route tables are added. Webhooks go out to each project's URL, signed with its secret, in its
delivery mode (combined or separate). A status change can be announced on any of three channels:

* `websocket`: a publication `{"order_id", "status"}` on the player's order channel in the order's project;
* `webhook`: the webhooks of `paid` and `canceled` (see `xsolla_simulator.notifier`); other statuses have none;
* `polling`: Get order answers the new status.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import aiohttp
import structlog
from aiohttp import web

from xsolla_simulator.admin_api import AdminAuth
from xsolla_simulator.announcements import CHANNELS, Announcement, check_channels
from xsolla_simulator.catalog_api import CatalogApi
from xsolla_simulator.connections import WEBSOCKET_PATH, SocketHub
from xsolla_simulator.control import add_control_routes
from xsolla_simulator.control_webhooks import add_webhook_control_routes
from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.faults import FaultInjection
from xsolla_simulator.notifications import PARTIAL_REFUND_CODES, REFUND_REASONS
from xsolla_simulator.notifier import Notifier, WebhookControls
from xsolla_simulator.order_search import OrderSearchApi
from xsolla_simulator.orders import OrderBook, OrderItem, SimOrder, StatusChange, check_status
from xsolla_simulator.projects import ProjectBook, SimProject
from xsolla_simulator.store_api import StoreApi
from xsolla_simulator.streams import Publication, order_channel
from xsolla_simulator.subscriptions import SimSubscription, Subscriptions
from xsolla_simulator.tokens import TokenIssuer
from xsolla_simulator.webhooks import ORDER_RETRY_SCHEDULE, RetrySchedule, WebhookDelivery, WebhookSender

#: Adds one surface's routes to the simulator's app.
RouteTable = Callable[[web.Application], None]

_log = structlog.get_logger("xsolla_simulator")


class XsollaSimulator(FaultInjection, WebhookControls):
    """Plays Xsolla on loopback for one or more projects, speaking the real protocols.

    Create it anywhere; `start()` (inside the running loop) binds the server, `stop()` closes every connection
    and background task. `async with XsollaSimulator(...) as sim:` does both. The first arguments describe the
    first project (the default of every method that takes `project_id=`); `projects=` and `add_project` add more.

    Args:
        project_id: the first project.
        webhook_url: where to send the first project's webhooks; None sends none.
        webhook_secret: the first project's webhook secret key (signs every body of it).
        time_scale: multiplies the waits between webhook retries (0.001: 5 minutes become 0.3 s).
        ws_ping_interval_s: how often the WebSocket pings each session; 0 disables pings (not advertised).
        webhook_mode: the first project's delivery mode, `combined` or `separate`.
        merchant_id: written in the first project's webhooks (`settings.merchant_id`).
        webhook_timeout_s: how long one delivery attempt may take before it counts as failed (not scaled).
        retry_schedule: the waits between webhook attempts before scaling (Xsolla's order schedule by default).
        auto_refund: when an `order_paid` webhook is rejected (a 4xx of the documented list) or given up on,
            cancel the order, as Xsolla does with auto-refund enabled.
        history_size: how many publications each order channel keeps (None: all).
        control_api: serve the HTTP control API under `/_sim`.
        host, port: where to listen (port 0: a free port).
        projects: more projects.
    """

    def __init__(
        self,
        project_id: int = 12345,
        webhook_url: str | None = None,
        webhook_secret: str = "secret",  # noqa: S107 - a test double's default, as in the documented API
        time_scale: float = 1.0,
        ws_ping_interval_s: float = 25.0,
        *,
        webhook_mode: str = "combined",
        merchant_id: int = 100001,
        webhook_timeout_s: float = 10.0,
        retry_schedule: RetrySchedule = ORDER_RETRY_SCHEDULE,
        auto_refund: bool = False,
        history_size: int | None = None,
        control_api: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
        projects: Iterable[SimProject] = (),
    ) -> None:
        if time_scale < 0 or ws_ping_interval_s < 0 or webhook_timeout_s <= 0:
            raise InvalidRequest("time_scale and ws_ping_interval_s must be >= 0, webhook_timeout_s > 0")
        self._projects = ProjectBook()
        first = SimProject(project_id, webhook_url, webhook_secret, webhook_mode, merchant_id)
        for project in (first, *projects):
            self._projects.add(project)
        self.auto_refund = auto_refund
        self._time_scale = time_scale
        self._webhook_timeout_s = webhook_timeout_s
        self._retry_schedule = retry_schedule
        self._control_api = control_api
        self._host, self._port = host, port
        self._tokens = TokenIssuer(project_id, serves=self._projects.serves)
        self._orders = OrderBook()
        self._hub = SocketHub(
            authenticate=self._tokens.authenticate, ping_interval_s=ws_ping_interval_s, history_size=history_size
        )
        self._store = StoreApi(orders=self._orders, tokens=self._tokens)
        self.subscriptions = Subscriptions(self._projects, self._send_subscription_webhook)
        self.admin_auth = AdminAuth(merchant_id=merchant_id)
        self.catalog = CatalogApi(self.admin_auth)
        self.order_search = OrderSearchApi(self._orders, self.admin_auth)
        self._silenced: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sender: WebhookSender | None = None
        self._notifier: Notifier | None = None
        self._base_url: str | None = None
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds the server (and opens the webhook client). Call once, inside the running loop."""
        if self._runner is not None or self._stopped:
            raise RuntimeError("a simulator starts once: make a new one")
        app = web.Application()
        for add_routes in self._route_tables():
            add_routes(app)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        self._base_url = f"http://{self._host}:{int(runner.addresses[0][1])}"
        self._http = aiohttp.ClientSession()
        self._sender = WebhookSender(
            self._http,
            schedule=self._retry_schedule,
            time_scale=self._time_scale,
            timeout_s=self._webhook_timeout_s,
            on_final=self._webhook_final,
        )
        self._notifier = Notifier(self._projects, self._sender)
        _log.info("simulator_started", base_url=self._base_url, projects=[p.project_id for p in self._projects])

    def _route_tables(self) -> list[RouteTable]:
        """Every surface's routes: a new Xsolla API served by the simulator adds its table here."""
        tables: list[RouteTable] = [self._hub.add_routes, self._store.add_routes]
        tables.append(lambda app: self.catalog.add_routes(app, control=self._control_api))
        tables.append(lambda app: self.order_search.add_routes(app, control=self._control_api))
        if self._control_api:
            tables.append(lambda app: add_control_routes(app, self))
            tables.append(lambda app: add_webhook_control_routes(app, self))
        return tables

    async def stop(self) -> None:
        """Closes every WebSocket (3001 "shutdown"), stops webhook retries, and closes the server and client.

        Safe to call more than once, or without `start()`.
        """
        self._stopped = True
        if self._sender is not None:
            await self._sender.close()  # kept: its records stay readable after stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self._hub.close()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> XsollaSimulator:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    # --- addresses ------------------------------------------------------------------------------------------

    @property
    def base_url(self) -> str:
        """`http://127.0.0.1:<port>`."""
        if self._base_url is None:
            raise RuntimeError("the simulator is not started")
        return self._base_url

    @property
    def ws_url(self) -> str:
        """The order-status WebSocket: `ws://127.0.0.1:<port>/connection/websocket`."""
        return "ws" + self.base_url.removeprefix("http") + WEBSOCKET_PATH

    @property
    def store_api_url(self) -> str:
        """The Store API base: `http://127.0.0.1:<port>/api` (Get order is `{base}/v2/project/{p}/order/{o}`)."""
        return self.base_url + "/api"

    @property
    def control_url(self) -> str:
        """The HTTP control API: `http://127.0.0.1:<port>/_sim`."""
        return self.base_url + "/_sim"

    # --- projects -------------------------------------------------------------------------------------------

    @property
    def project_id(self) -> int:
        """The first project's id."""
        return self._projects.default.project_id

    @property
    def projects(self) -> list[SimProject]:
        """Every project served, the first one first."""
        return list(self._projects)

    def project(self, project_id: int | None = None) -> SimProject:
        """A project served (the first by default).

        Raises:
            InvalidRequest: it is not served.
        """
        return self._projects.get(project_id)

    def add_project(
        self,
        project_id: int,
        *,
        webhook_url: str | None = None,
        webhook_secret: str = "secret",  # noqa: S107 - a test double's default, as in the documented API
        webhook_mode: str = "combined",
        merchant_id: int = 100001,
    ) -> SimProject:
        """Serves one more project (before or after `start()`), with its own secret, URL and delivery mode.

        Raises:
            InvalidRequest: the project is already served, or an argument is malformed.
        """
        project = SimProject(project_id, webhook_url, webhook_secret, webhook_mode, merchant_id)
        return self._projects.add(project)

    # --- players and orders ---------------------------------------------------------------------------------

    def issue_token(self, user_id: str, *, project_id: int | None = None) -> str:
        """A token for `user_id` in a project (the first by default), valid for the WebSocket's `auth` and as
        Get order's Bearer token of that project only. A project the simulator does not serve may be named: its
        tokens are refused everywhere."""
        return self._tokens.issue(user_id, project_id=project_id)

    def revoke_token(self, token: str) -> None:
        """Makes a token invalid (sessions already connected with it stay open; break them for that)."""
        self._tokens.revoke(token)

    def channel_for(self, user_id: str, *, project_id: int | None = None) -> str:
        """The name of a player's order channel in a project (`orders:<project_id>:<user_id>`)."""
        return order_channel(self._projects.get(project_id).project_id, user_id)

    def create_order(
        self,
        user_id: str,
        items: Iterable[OrderItem | Mapping[str, Any]],
        *,
        currency: str = "USD",
        sandbox: bool = False,
        project_id: int | None = None,
        created_at: datetime | None = None,
    ) -> SimOrder:
        """A new order in status `new` (announced nowhere: Xsolla publishes nothing when an order is created).

        Args:
            items: `{"sku", "quantity", "type"?, "price"?, "is_free"?}` mappings or `OrderItem`s; `type` is one of
                the webhook item types (default `virtual_good`), `price` the unit price (default 1.99).
            sandbox: a test payment: `order.mode: sandbox` and `transaction.dry_run: 1` in its webhooks.
            project_id: its project (the first by default).
            created_at: its creation time (timezone-aware; now by default), to backdate it for the order search.

        Raises:
            InvalidRequest: no items, a malformed one, a project the simulator does not serve, a naive `created_at`.
        """
        project = self._projects.get(project_id)
        return self._orders.create(
            user_id, items, project_id=project.project_id, currency=currency, sandbox=sandbox, created_at=created_at
        )

    def order(self, order_id: int) -> SimOrder:
        """The order with that id (a live view).

        Raises:
            UnknownOrder: there is none.
        """
        return self._orders.get(order_id)

    @property
    def orders(self) -> list[SimOrder]:
        """Every order of every project, oldest first."""
        return list(self._orders)

    async def set_status(self, order_id: int, status: str, channels: Iterable[str] = CHANNELS) -> Announcement:
        """Moves an order to `status` and announces it on `channels` (minus silenced ones).

        Any move is allowed (the simulator does not police Xsolla's state machine), so tests can replay odd
        sequences. In order: Get order starts answering it (`polling`), the publication is written to every
        connected session of the player in the order's project (`websocket`), the first webhook's first attempt
        is made (`webhook`, for `paid` and `canceled` only, when the project has a webhook URL). Returns when all
        that is done; retries and the separate mode's second webhook follow in the background.

        Raises:
            UnknownOrder: no such order.
            InvalidRequest: unknown status or channel.
        """
        order = self._orders.get(order_id)
        check_status(status)
        active = tuple(channel for channel in check_channels(channels) if channel not in self._silenced)
        order.status = status
        order.changes.append(StatusChange(status, active, datetime.now(UTC)))
        announcement = Announcement(order_id, status, active)
        if "polling" in active:
            order.polling_status = status
        if "websocket" in active:
            data = {"order_id": order_id, "status": status}
            publication, sockets = await self._hub.publish(order.project_id, order.user_id, data)
            announcement = replace(announcement, publication=publication, sockets=sockets)
        if "webhook" in active and self._notifier is not None:  # before start() nothing is sent
            announcement = replace(announcement, webhook=await self._ready().order_status(order, status))
        _log.debug("order_status_set", order_id=order_id, status=status, channels=active)
        return announcement

    async def refund(
        self, order_id: int, *, code: int = 1, reason: str | None = None, channels: Iterable[str] = CHANNELS
    ) -> Announcement:
        """Refunds an order: it is canceled with that refund code (`refund_details`), announced as `set_status`
        does (combined: `order_canceled`; separate: `refund`, then `order_canceled`).

        Raises:
            UnknownOrder: no such order.
            InvalidRequest: a refund code Xsolla does not list, or an unknown channel.
        """
        order = self._orders.get(order_id)
        order.refund_code, order.refund_reason = _refund(code, reason, REFUND_REASONS)
        return await self.set_status(order_id, "canceled", channels)

    async def partial_refund(
        self, order_id: int, amount: Decimal | str, *, code: int = 1, reason: str | None = None
    ) -> WebhookDelivery | None:
        """Sends a `partial_refund` of `amount` for the order's transaction (its status is unchanged).

        Returns:
            The webhook's first attempt; None when it is held.

        Raises:
            UnknownOrder: no such order.
            InvalidRequest: an amount not between 0 and the order's total (exclusive), a code a partial refund
                cannot have, or no webhook URL.
        """
        order = self._orders.get(order_id)
        try:
            refunded = Decimal(str(amount))
        except InvalidOperation:
            raise InvalidRequest("amount must be a decimal number") from None
        if not refunded.is_finite() or not 0 < refunded < order.amount:
            raise InvalidRequest(f"a partial refund is between 0 and the order's total {order.amount}, exclusive")
        allowed = {c: r for c, r in REFUND_REASONS.items() if c in PARTIAL_REFUND_CODES}
        return await self._ready().partial_refund(order, refunded, _refund(code, reason, allowed))

    async def publish_status(self, order_id: int, status: str) -> Publication:
        """Publishes `{"order_id", "status"}` on the player's channel only, changing nothing else.

        For stale, duplicate or out-of-order statuses: the order keeps its status, Get order and webhooks are
        untouched, and silencing does not apply. The status is not checked against `STATUSES` either.

        Raises:
            UnknownOrder: no such order.
        """
        order = self._orders.get(order_id)
        data = {"order_id": order_id, "status": status}
        publication, _ = await self._hub.publish(order.project_id, order.user_id, data)
        return publication

    # --- webhooks -------------------------------------------------------------------------------------------

    async def send_webhook(self, order_id: int, notification_type: str | None = None) -> WebhookDelivery | None:
        """Sends one webhook of an order again: the same bytes as the last one of that type for the order (a
        duplicate, as Xsolla's retries are), or a new body when none was sent yet. No follow-up is sent.

        Args:
            notification_type: `order_paid`, `order_canceled`, `payment` or `refund`; by default the order
                webhook of the order's status.

        Returns:
            Its first delivery attempt (retries go on in the background); None when it is held.

        Raises:
            UnknownOrder: no such order.
            InvalidRequest: no webhook URL, or no such webhook for the order.
        """
        order = self._orders.get(order_id)
        chosen = notification_type or {"paid": "order_paid", "canceled": "order_canceled"}.get(order.status)
        if chosen is None:
            raise InvalidRequest(f"no order webhook for {order.status!r}")
        return await self._ready().order_webhook(order, chosen)

    # --- internals ------------------------------------------------------------------------------------------

    def _ready(self) -> Notifier:
        if self._notifier is None or self._stopped:
            raise RuntimeError("webhooks are sent between start() and stop()")
        return self._notifier

    async def _send_subscription_webhook(
        self, project: SimProject, subscription: SimSubscription, notification_type: str, body: dict[str, Any]
    ) -> WebhookDelivery | None:
        if self._notifier is None:  # before start() nothing is sent
            return None
        return await self._ready().subscription(project, subscription, notification_type, body)

    async def _webhook_final(self, delivery: WebhookDelivery) -> None:
        """Auto-refund: an `order_paid` the game rejected or never acknowledged cancels the order."""
        if not self.auto_refund or delivery.type != "order_paid" or delivery.order_id is None:
            return
        order = self._orders.get(delivery.order_id)
        if order.status != "canceled":
            _log.info("order_auto_refunded", order_id=order.order_id, outcome=delivery.outcome)
            await self.set_status(order.order_id, "canceled")


def _refund(code: int, reason: str | None, allowed: Mapping[int, str]) -> tuple[int, str]:
    if isinstance(code, bool) or code not in allowed:
        raise InvalidRequest(f"refund code must be one of {', '.join(map(str, allowed))}")
    return code, reason or allowed[code]
