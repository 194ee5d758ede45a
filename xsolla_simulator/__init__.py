"""A local Xsolla for tests and demos: it plays Xsolla on loopback for one or more projects, speaking the real
protocols.

* the order-status WebSocket, a Centrifuge protocol v2 (JSON) server that the real `centrifuge-python` client
  and Xsolla's SDKs connect to (`XsollaSimulator.ws_url`);
* the Store API's Get order, with the player's Bearer token (`XsollaSimulator.store_api_url`);
* the admin catalog API (virtual items, bundles) with Basic auth, under the same base (`XsollaSimulator.catalog`);
* the admin order search with the same Basic auth, rate-limited on demand (`XsollaSimulator.order_search`);
* webhooks, signed with each project's secret and sent to its URL in its delivery mode (combined: `order_paid` /
  `order_canceled`; separate: `payment` / `refund` first), plus `partial_refund` and the subscription webhooks,
  retried on Xsolla's schedule (compressible), and held, released, dropped (lost, then delivered late) or resent
  on demand;
* a control API (Python, and HTTP under `/_sim`) to add projects, issue tokens, create orders (sandbox ones
  too), move them through their statuses on chosen channels, refund them, drive subscriptions, and break things
  on purpose.

    async with XsollaSimulator(project_id=12345, webhook_url=url, webhook_secret="secret") as sim:
        token = sim.issue_token("player-1")
        order = sim.create_order("player-1", items=[{"sku": "gold", "quantity": 100, "type": "virtual_currency"}])
        await sim.set_status(order.order_id, "paid")

See docs/SIMULATOR.md for what is simulated and the choices made where Xsolla documents nothing.
"""

from xsolla_simulator.admin_api import AdminAuth
from xsolla_simulator.announcements import CHANNELS, Announcement
from xsolla_simulator.catalog_api import CatalogApi, CatalogCall, admin_bundle, admin_item
from xsolla_simulator.connections import SocketCounters
from xsolla_simulator.errors import InvalidRequest, SimulatorError, UnknownOrder, UnknownSubscription, UnknownToken
from xsolla_simulator.order_search import OrderSearchApi, SearchCall, search_order_body
from xsolla_simulator.orders import STATUSES, OrderItem, SimOrder, StatusChange
from xsolla_simulator.projects import WEBHOOK_MODES, SimProject
from xsolla_simulator.simulator import XsollaSimulator
from xsolla_simulator.store_api import GetOrderRequest
from xsolla_simulator.streams import Publication, order_channel
from xsolla_simulator.subscriptions import SUBSCRIPTION_NOTIFICATIONS, SimSubscription, Subscriptions
from xsolla_simulator.webhooks import ORDER_RETRY_SCHEDULE, RetrySchedule, Webhook, WebhookDelivery, signature

__all__ = [
    "CHANNELS",
    "ORDER_RETRY_SCHEDULE",
    "STATUSES",
    "SUBSCRIPTION_NOTIFICATIONS",
    "WEBHOOK_MODES",
    "AdminAuth",
    "Announcement",
    "CatalogApi",
    "CatalogCall",
    "GetOrderRequest",
    "InvalidRequest",
    "OrderItem",
    "OrderSearchApi",
    "Publication",
    "RetrySchedule",
    "SearchCall",
    "SimOrder",
    "SimProject",
    "SimSubscription",
    "SimulatorError",
    "SocketCounters",
    "StatusChange",
    "Subscriptions",
    "UnknownOrder",
    "UnknownSubscription",
    "UnknownToken",
    "Webhook",
    "WebhookDelivery",
    "XsollaSimulator",
    "admin_bundle",
    "admin_item",
    "order_channel",
    "search_order_body",
    "signature",
]
