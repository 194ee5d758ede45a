"""`XsollaSimulator`: Xsolla's order-status surfaces on one loopback port, and the control over them.

One aiohttp server hosts the order-status WebSocket (`/connection/websocket`, Centrifuge protocol v2 JSON), the
Store API's Get order (`/api/v2/project/{project_id}/order/{order_id}`) and, optionally, an HTTP control API
(`/_sim/...`). Webhooks go out to `webhook_url` with an aiohttp client. A status change can be announced on any
of three channels:

* `websocket`: a publication `{"order_id", "status"}` on the player's order channel;
* `webhook`: `order_paid` (for `paid`) or `order_canceled` (for `canceled`); other statuses have no webhook;
* `polling`: Get order answers the new status.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, Final

import aiohttp
import structlog
from aiohttp import web

from xsolla_simulator import protocol
from xsolla_simulator.announcements import CHANNELS, Announcement, check_channels
from xsolla_simulator.connections import SocketCounters, SocketHub
from xsolla_simulator.control import add_control_routes
from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.notifications import NOTIFICATION_FOR_STATUS, order_notification
from xsolla_simulator.orders import OrderBook, OrderItem, SimOrder, StatusChange, check_status
from xsolla_simulator.store_api import GetOrderRequest, StoreApi
from xsolla_simulator.streams import Publication, order_channel
from xsolla_simulator.tokens import TokenIssuer
from xsolla_simulator.webhooks import (
    ORDER_RETRY_SCHEDULE,
    RetrySchedule,
    Webhook,
    WebhookDelivery,
    WebhookSender,
)

WEBSOCKET_PATH: Final = "/connection/websocket"

_log = structlog.get_logger("xsolla_simulator")


class XsollaSimulator:
    """Plays Xsolla on loopback for one project, speaking the real protocols.

    Create it anywhere; `start()` (inside the running loop) binds the server, `stop()` closes every connection
    and background task. `async with XsollaSimulator(...) as sim:` does both.

    Args:
        project_id: the project whose players, orders and webhooks these are.
        webhook_url: where to send order webhooks; None sends none.
        webhook_secret: the project's webhook secret key (signs every body).
        time_scale: multiplies the waits between webhook retries (0.001: 5 minutes become 0.3 s).
        ws_ping_interval_s: how often the WebSocket pings each session; 0 disables pings (not advertised).
        merchant_id: written in webhooks' `billing.settings`.
        webhook_timeout_s: how long one delivery attempt may take before it counts as failed (not scaled).
        retry_schedule: the waits between webhook attempts before scaling (Xsolla's order schedule by default).
        auto_refund: when an `order_paid` webhook is rejected (a 4xx of the documented list) or given up on,
            cancel the order, as Xsolla does with auto-refund enabled.
        history_size: how many publications each order channel keeps (None: all).
        control_api: serve the HTTP control API under `/_sim`.
        host, port: where to listen (port 0: a free port).
    """

    def __init__(
        self,
        project_id: int = 12345,
        webhook_url: str | None = None,
        webhook_secret: str = "secret",  # noqa: S107 - a test double's default, as in the documented API
        time_scale: float = 1.0,
        ws_ping_interval_s: float = 25.0,
        *,
        merchant_id: int = 100001,
        webhook_timeout_s: float = 10.0,
        retry_schedule: RetrySchedule = ORDER_RETRY_SCHEDULE,
        auto_refund: bool = False,
        history_size: int | None = None,
        control_api: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        if time_scale < 0 or ws_ping_interval_s < 0 or webhook_timeout_s <= 0:
            raise InvalidRequest("time_scale and ws_ping_interval_s must be >= 0, webhook_timeout_s > 0")
        self.project_id = project_id
        self.webhook_url = webhook_url
        self.merchant_id = merchant_id
        self.auto_refund = auto_refund
        self._webhook_secret = webhook_secret
        self._time_scale = time_scale
        self._webhook_timeout_s = webhook_timeout_s
        self._retry_schedule = retry_schedule
        self._control_api = control_api
        self._host, self._port = host, port
        self._tokens = TokenIssuer(project_id)
        self._orders = OrderBook()
        self._hub = SocketHub(
            project_id=project_id,
            authenticate=self._tokens.authenticate,
            ping_interval_s=ws_ping_interval_s,
            history_size=history_size,
        )
        self._store = StoreApi(project_id=project_id, orders=self._orders, tokens=self._tokens)
        self._silenced: set[str] = set()
        self._runner: web.AppRunner | None = None
        self._http: aiohttp.ClientSession | None = None
        self._sender: WebhookSender | None = None
        self._base_url: str | None = None
        self._stopped = False

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Binds the server (and opens the webhook client). Call once, inside the running loop."""
        if self._runner is not None or self._stopped:
            raise RuntimeError("a simulator starts once: make a new one")
        app = web.Application()
        app.router.add_get(WEBSOCKET_PATH, self._hub.handle)
        self._store.add_routes(app)
        if self._control_api:
            add_control_routes(app, self)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=5.0)
        await runner.setup()
        try:
            await web.TCPSite(runner, self._host, self._port).start()
        except BaseException:
            await runner.cleanup()
            raise
        self._runner = runner
        port = int(runner.addresses[0][1])
        self._base_url = f"http://{self._host}:{port}"
        if self.webhook_url is not None:
            self._http = aiohttp.ClientSession()
            self._sender = WebhookSender(
                self._http,
                self.webhook_url,
                self._webhook_secret,
                schedule=self._retry_schedule,
                time_scale=self._time_scale,
                timeout_s=self._webhook_timeout_s,
                on_final=self._webhook_final,
            )
        _log.info("simulator_started", base_url=self._base_url, project_id=self.project_id)

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

    # --- players and orders ---------------------------------------------------------------------------------

    def issue_token(self, user_id: str, *, project_id: int | None = None) -> str:
        """A token for `user_id`, valid for the WebSocket's `auth` and as Get order's Bearer token.

        Args:
            project_id: issue it for another project (which this simulator then refuses).
        """
        return self._tokens.issue(user_id, project_id=project_id)

    def revoke_token(self, token: str) -> None:
        """Makes a token invalid (sessions already connected with it stay open; break them for that)."""
        self._tokens.revoke(token)

    def channel_for(self, user_id: str) -> str:
        """The name of a player's order channel (`orders:<project_id>:<user_id>`)."""
        return order_channel(self.project_id, user_id)

    def create_order(
        self,
        user_id: str,
        items: Iterable[OrderItem | Mapping[str, Any]],
        *,
        currency: str = "USD",
        sandbox: bool = False,
    ) -> SimOrder:
        """A new order in status `new` (announced nowhere: Xsolla publishes nothing when an order is created).

        Args:
            items: `{"sku", "quantity", "type"?, "price"?, "is_free"?}` mappings or `OrderItem`s; `type` is one of
                the webhook item types (default `virtual_good`), `price` the unit price (default 1.99).
            sandbox: mark it a test payment (`order.mode: sandbox`, `dry_run: 1` in webhooks).

        Raises:
            InvalidRequest: no items, or a malformed one.
        """
        return self._orders.create(user_id, items, currency=currency, sandbox=sandbox)

    def order(self, order_id: int) -> SimOrder:
        """The order with that id (a live view).

        Raises:
            UnknownOrder: there is none.
        """
        return self._orders.get(order_id)

    @property
    def orders(self) -> list[SimOrder]:
        """Every order, oldest first."""
        return list(self._orders)

    async def set_status(self, order_id: int, status: str, channels: Iterable[str] = CHANNELS) -> Announcement:
        """Moves an order to `status` and announces it on `channels` (minus silenced ones).

        Any move is allowed (the simulator does not police Xsolla's state machine), so tests can replay odd
        sequences. In order: Get order starts answering it (`polling`), the publication is written to every
        connected session of the player (`websocket`), the webhook's first attempt is made (`webhook`, for
        `paid` and `canceled` only, when a webhook URL is set). Returns when all that is done; webhook retries
        go on in the background.

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
            publication, sockets = await self._hub.publish(order.user_id, {"order_id": order_id, "status": status})
            announcement = replace(announcement, publication=publication, sockets=sockets)
        notification_type = NOTIFICATION_FOR_STATUS.get(status)
        if "webhook" in active and notification_type is not None and self._sender is not None:
            delivery = await self._send_notification(order, notification_type)
            announcement = replace(announcement, webhook=delivery)
        _log.debug("order_status_set", order_id=order_id, status=status, channels=active)
        return announcement

    async def publish_status(self, order_id: int, status: str) -> Publication:
        """Publishes `{"order_id", "status"}` on the player's channel only, changing nothing else.

        For stale, duplicate or out-of-order statuses: the order keeps its status, Get order and webhooks are
        untouched, and silencing does not apply. The status is not checked against `STATUSES` either.

        Raises:
            UnknownOrder: no such order.
        """
        order = self._orders.get(order_id)
        publication, _ = await self._hub.publish(order.user_id, {"order_id": order_id, "status": status})
        return publication

    async def send_webhook(self, order_id: int, notification_type: str | None = None) -> WebhookDelivery:
        """Sends an order webhook again: the same bytes as the last one of that type for the order (a duplicate,
        as Xsolla's retries are), or a new body when none was sent yet.

        Args:
            notification_type: `order_paid` or `order_canceled`; by default the one of the order's status.

        Returns:
            Its first delivery attempt; retries go on in the background.

        Raises:
            UnknownOrder: no such order.
            InvalidRequest: no webhook URL, or no webhook for the order's status.
        """
        order = self._orders.get(order_id)
        if self._sender is None:
            raise InvalidRequest("the simulator has no webhook_url")
        chosen = notification_type or NOTIFICATION_FOR_STATUS.get(order.status)
        if chosen not in ("order_paid", "order_canceled"):
            raise InvalidRequest(f"no order webhook for {notification_type or order.status!r}")
        sent = [w for w in self._sender.webhooks if w.order_id == order_id and w.type == chosen]
        return await self._send_notification(order, chosen, body=sent[-1].body if sent else None)

    # --- faults ---------------------------------------------------------------------------------------------

    async def break_websockets(
        self,
        code: int = protocol.CLOSE_SHUTDOWN,
        reason: str = "shutdown",
        refuse_for_s: float = 0.0,
        *,
        user_id: str | None = None,
    ) -> int:
        """Closes WebSocket connections with a close code: 3000-3499 and 4000-4499 make clients reconnect,
        3500-3999 and 4500-4999 stop them for good.

        Args:
            refuse_for_s: then refuse new connections for that long: upgrades are answered HTTP 503 (all
                players), or the player's connect commands get a temporary error 108 (one player).
            user_id: only that player's sessions; None for every open socket.

        Returns:
            How many sockets were closed.
        """
        if not 1000 <= code <= 4999 or len(reason.encode()) > 123:
            raise InvalidRequest("code must be a WebSocket close code; reason at most 123 bytes")
        return await self._hub.disconnect(code, reason, user_id=user_id, refuse_for_s=refuse_for_s)

    def silence(self, *channels: str) -> None:
        """Makes channels say nothing from now on: status changes skip them (publish_status still publishes).

        A silent `websocket` publishes nothing (pings go on, history has nothing new); a silent `polling`
        keeps Get order answering the last status it announced; a silent `webhook` sends nothing.
        """
        self._silenced.update(check_channels(channels))

    def unsilence(self, *channels: str) -> None:
        """Lets channels (all when none are named) announce status changes again; what they missed stays missed."""
        self._silenced.difference_update(check_channels(channels) if channels else CHANNELS)

    @property
    def silenced(self) -> frozenset[str]:
        return frozenset(self._silenced)

    def fail_get_order(
        self, times: int | None = 1, status: int = 503, *, delay_s: float = 0.0, order_id: int | None = None
    ) -> None:
        """Answers the next `times` Get order requests (None: all until cleared) with `status`, after `delay_s`.

        Args:
            order_id: only requests for that order.
        """
        self._store.fail(times, status, delay_s=delay_s, order_id=order_id)

    def delay_get_order(self, delay_s: float, *, times: int | None = None, order_id: int | None = None) -> None:
        """Delays the next `times` Get order requests (None: all until cleared); they are answered normally."""
        self._store.delay(delay_s, times=times, order_id=order_id)

    def clear_get_order_faults(self) -> None:
        """Forgets every Get order failure and delay not yet consumed."""
        self._store.clear_faults()

    def reset_history(self, user_id: str) -> None:
        """Empties a player's order channel under a new epoch, as a Centrifugo restart without persistence does:
        clients recovering from the old position get `recovered: false`, history since it fails with 112."""
        self._hub.stream(user_id).reset()

    # --- observations ---------------------------------------------------------------------------------------

    def get_order_requests(self, order_id: int) -> int:
        """Get order requests seen for an order, however they were answered."""
        return self._store.requests(order_id)

    def get_order_requests_for(self, order_id: int) -> list[GetOrderRequest]:
        """Every Get order request seen for an order (arrival time, status answered), oldest first."""
        return self._store.requests_for(order_id)

    @property
    def get_order_requests_total(self) -> int:
        return len(self._store.log)

    @property
    def websocket_connections(self) -> int:
        """WebSocket sessions connected (connect accepted) and still open."""
        return self._hub.connections

    @property
    def websocket_connects_total(self) -> int:
        """Connect commands accepted since start."""
        return self._hub.counters.connects_total

    @property
    def websocket_stats(self) -> SocketCounters:
        """Every WebSocket counter (handshakes, refusals, connects, connect errors, pings, pongs, pushes)."""
        return self._hub.counters

    @property
    def webhook_deliveries(self) -> list[WebhookDelivery]:
        """Every webhook delivery attempt so far, in the order they finished."""
        return list(self._sender.deliveries) if self._sender is not None else []

    @property
    def webhooks(self) -> list[Webhook]:
        """Every webhook sent (its exact body), in the order they were first sent."""
        return list(self._sender.webhooks) if self._sender is not None else []

    async def wait_webhooks_settled(self, timeout_s: float = 10.0) -> None:
        """Waits until no webhook is being delivered or waiting for a retry.

        Raises:
            TimeoutError: some still were after `timeout_s`.
        """
        if self._sender is not None:
            await self._sender.settled(timeout_s)

    # --- internals ------------------------------------------------------------------------------------------

    async def _send_notification(
        self, order: SimOrder, notification_type: str, *, body: bytes | None = None
    ) -> WebhookDelivery:
        assert self._sender is not None
        if self._stopped:
            raise RuntimeError("the simulator is stopped")
        if body is None:
            document = order_notification(
                order, notification_type, project_id=self.project_id, merchant_id=self.merchant_id
            )
            body = json.dumps(document, separators=(",", ":")).encode()
        return await self._sender.send(order.order_id, notification_type, body)

    async def _webhook_final(self, delivery: WebhookDelivery) -> None:
        """Auto-refund: an `order_paid` the game rejected or never acknowledged cancels the order."""
        if not self.auto_refund or delivery.type != "order_paid":
            return
        order = self._orders.get(delivery.order_id)
        if order.status != "canceled":
            _log.info("order_auto_refunded", order_id=order.order_id, outcome=delivery.outcome)
            await self.set_status(order.order_id, "canceled")
