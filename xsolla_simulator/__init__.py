"""A local Xsolla for tests and demos: it plays Xsolla on loopback, speaking the real protocols.

* the order-status WebSocket, a Centrifuge protocol v2 (JSON) server that the real `centrifuge-python` client
  and Xsolla's SDKs connect to (`XsollaSimulator.ws_url`);
* the Store API's Get order, with the player's Bearer token (`XsollaSimulator.store_api_url`);
* `order_paid` / `order_canceled` webhooks, signed like Xsolla's and retried on its schedule (compressible);
* a control API (Python, and HTTP under `/_sim`) to issue tokens, create orders, move them through their
  statuses on chosen channels, and break things on purpose.

    async with XsollaSimulator(project_id=12345, webhook_url=url, webhook_secret="secret") as sim:
        token = sim.issue_token("player-1")
        order = sim.create_order("player-1", items=[{"sku": "gold", "quantity": 100, "type": "virtual_currency"}])
        await sim.set_status(order.order_id, "paid")

See docs/SIMULATOR.md for what is simulated and the choices made where Xsolla documents nothing.
"""

from xsolla_simulator.announcements import CHANNELS, Announcement
from xsolla_simulator.connections import SocketCounters
from xsolla_simulator.errors import InvalidRequest, SimulatorError, UnknownOrder, UnknownToken
from xsolla_simulator.orders import STATUSES, OrderItem, SimOrder, StatusChange
from xsolla_simulator.simulator import XsollaSimulator
from xsolla_simulator.store_api import GetOrderRequest
from xsolla_simulator.streams import Publication, order_channel
from xsolla_simulator.webhooks import ORDER_RETRY_SCHEDULE, RetrySchedule, Webhook, WebhookDelivery, signature

__all__ = [
    "CHANNELS",
    "ORDER_RETRY_SCHEDULE",
    "STATUSES",
    "Announcement",
    "GetOrderRequest",
    "InvalidRequest",
    "OrderItem",
    "Publication",
    "RetrySchedule",
    "SimOrder",
    "SimulatorError",
    "SocketCounters",
    "StatusChange",
    "UnknownOrder",
    "UnknownToken",
    "Webhook",
    "WebhookDelivery",
    "XsollaSimulator",
    "order_channel",
    "signature",
]
