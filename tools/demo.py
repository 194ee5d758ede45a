"""`make demo`: one purchase, end to end, on loopback.

Starts the embedded Redis, the service, the webhook gateway and the Xsolla simulator (all on free ports, data in a
temporary directory). Both processes are configured as a deployment would be: one projects file (the project's
webhook secret and API key) and the environment variables of `python -m server` / `python -m webhook_gateway`, with
the simulator's URLs in place of Xsolla's. The service reads the project's catalog from the simulator's admin
catalog API. Two purchases, each followed with a GetOrderStatus stream from the project's Python client:

1. The webhook path: the order is paid, its `order_paid` webhook delivered; the demo prints what each part saw
   (the stream's updates with their sources, the webhook's delivery, the player's entitlements, among them the
   time-limited pass with the period the catalog gives it).
2. A lost webhook: the simulator drops the order's `order_paid`. The stream's tracker saw the order paid on Xsolla's
   WebSocket; after the grace (3 s here, `ENTITLEMENTS_RECONCILE_GRACE_S`; 60 s by default) no webhook has been
   applied. Get order cannot say whether an order is a test one, and the project (like most) grants nothing for test
   orders and has admin API credentials, so the tracker asks the sweeper to sweep the project now: Xsolla's admin
   order search gives the order with its mode, and the sweeper applies it (docs/RECONCILIATION.md). The stream
   reports the grant with the source RECONCILIATION.
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from core import logs
from entitlements import AsyncEntitlementsClient, OrderStatus, OrderStatusSource, OrderStatusUpdate
from providers import xsolla
from server.__main__ import load_settings
from server.app import Service
from server.config import ConsumerSettings
from server.embedded import EmbeddedRedis
from server.tracking.settings import TrackingSettings
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.catalog_api import admin_item

PROJECT_ID = 300_001
PLAYER = "player-42"
SECRET = "demo-webhook-secret"  # noqa: S105 - the simulator and gateway of the demo share it
API_KEY = "demo-api-key"
VIP_SKU = "vip_pass_30d"
#: The demo's grace before the tracker's reconciliation applies an order whose webhook did not come (default 60 s).
GRACE_S = 3
PROJECTS_FILE = f"""
# One project; the service and the gateway read this same file (ENTITLEMENTS_PROJECTS_FILE).
[projects.{PROJECT_ID}]
name = "demo"
catalog = "xsolla"            # read from the admin catalog API, with the API key below

  [projects.{PROJECT_ID}.xsolla]
  webhook_secrets = ["{SECRET}"]
  api_key = "{API_KEY}"
"""
_started = time.monotonic()


def say(who: str, text: str) -> None:
    """One line of the demo's story, with the time since the start."""
    print(f"{time.monotonic() - _started:6.2f}s  {who:<10} {text}", flush=True)


def describe(update: OrderStatusUpdate) -> str:
    status = OrderStatus.Name(update.status).removeprefix("ORDER_STATUS_")
    source = OrderStatusSource.Name(update.source).removeprefix("ORDER_STATUS_SOURCE_").lower()
    granted = "items granted" if update.entitlements_granted else "items not granted yet"
    suffix = " (timed out)" if update.timed_out else ""
    return f"{status:<9} from {source:<9} {granted}{suffix}"


async def follow(client: AsyncEntitlementsClient, order_id: int, token: str, opened: asyncio.Event) -> None:
    """Prints every update of the order's GetOrderStatus stream until it ends."""
    stream = client.get_order_status(str(order_id), PLAYER, project_id=PROJECT_ID, token=token)
    opened.set()
    async for update in stream:
        say("stream", describe(update))
    say("stream", "ended")


async def webhook_path(sim: XsollaSimulator, client: AsyncEntitlementsClient) -> None:
    """The first purchase: paid, its webhook delivered."""
    token = sim.issue_token(PLAYER)
    lines = [
        {"sku": "gold_100", "quantity": 1, "type": "virtual_currency"},
        {"sku": VIP_SKU, "quantity": 1, "type": "virtual_good"},
    ]
    order = sim.create_order(PLAYER, items=lines)
    say("xsolla", f"order {order.order_id} created for {PLAYER}: 1 x gold_100, 1 x {VIP_SKU} (status new)")
    opened = asyncio.Event()
    following = asyncio.create_task(follow(client, order.order_id, token, opened))
    await opened.wait()
    await asyncio.sleep(1.0)  # the player is on the payment page

    say("xsolla", "player pays: status paid (WebSocket publication + order_paid webhook)")
    await sim.set_status(order.order_id, "paid")
    await asyncio.sleep(1.0)
    say("xsolla", "Xsolla delivers the order: status done")
    await sim.set_status(order.order_id, "done")
    await asyncio.wait_for(following, timeout=30)

    for delivery in sim.webhook_deliveries:
        say("webhook", f"{delivery.type} attempt {delivery.attempt}: HTTP {delivery.status}")
    check = await client.check_entitlement(PLAYER, "gold_100")
    say("inventory", f"{PLAYER} holds gold_100: active={check.active}, quantity={check.entitlement.quantity}")
    vip = await client.check_entitlement(PLAYER, VIP_SKU)
    expires = vip.entitlement.expires_at.ToDatetime()
    days = (expires - vip.entitlement.granted_at.ToDatetime()).total_seconds() / 86_400
    say("inventory", f"{PLAYER} holds {VIP_SKU}: active={vip.active}, expires {expires:%Y-%m-%d %H:%M} UTC")
    say("catalog", f"the period came from Xsolla's catalog (expiration_period 30 days): {days:.0f} days")


async def lost_webhook_path(sim: XsollaSimulator, client: AsyncEntitlementsClient, service: Service) -> None:
    """The second purchase: its order_paid webhook is lost; the tracker hands it to a sweep, which grants it."""
    token = sim.issue_token(PLAYER)
    order = sim.create_order(PLAYER, items=[{"sku": "gold_100", "quantity": 5, "type": "virtual_currency"}])
    say("xsolla", f"order {order.order_id} created for {PLAYER}: 5 x gold_100 (status new)")
    sim.drop_webhooks(types=("order_paid",))
    say("xsolla", "this order's order_paid webhook will be lost (the simulator drops it)")
    opened = asyncio.Event()
    following = asyncio.create_task(follow(client, order.order_id, token, opened))
    await opened.wait()
    await asyncio.sleep(1.0)

    say("xsolla", "player pays: status paid (WebSocket publication; no webhook reaches the gateway)")
    await sim.set_status(order.order_id, "paid")
    await asyncio.sleep(1.0)
    say("xsolla", "Xsolla delivers the order: status done")
    await sim.set_status(order.order_id, "done")
    say(
        "service",
        f"waits {GRACE_S} s for the webhook, then asks the sweeper: Xsolla's order search says the order is live, "
        "and the sweeper applies it",
    )
    await asyncio.wait_for(following, timeout=30)
    sim.stop_dropping()

    delivered = [d for d in sim.webhook_deliveries if d.order_id == order.order_id]
    say("webhook", f"order_paid of order {order.order_id}: {len(delivered)} deliveries")
    check = await client.check_entitlement(PLAYER, "gold_100")
    say("inventory", f"{PLAYER} holds gold_100: active={check.active}, quantity={check.entitlement.quantity}")
    assert service.store is not None
    newest = (await service.store.ledger(PROJECT_ID, PLAYER, count=1))[0].fields
    say("ledger", f"{newest.get('reason')}: {newest.get('sku')} +{newest.get('quantity')} by {newest.get('actor')}")
    stored = await service.store.order(PROJECT_ID, PLAYER, str(order.order_id)) or {}
    say("order", f"order {order.order_id} granted by the {stored.get('granted_by')} (its hash's granted_by)")


async def run(workdir: Path) -> None:
    redis = EmbeddedRedis(workdir / "var")
    await redis.start()
    projects_file = workdir / "projects.toml"
    projects_file.write_text(PROJECTS_FILE, encoding="utf-8")
    env = {"REDIS_URL": redis.url, "ENTITLEMENTS_PROJECTS_FILE": str(projects_file)}
    gateway = Gateway(
        replace(GatewaySettings.from_env(env), port=0, metrics_port=None), xsolla.WebhookSettings.from_env(env)
    )
    sim: XsollaSimulator | None = None
    service: Service | None = None
    try:
        await gateway.start()
        webhook_url = f"{gateway.url}/{PROJECT_ID}"
        sim = XsollaSimulator(project_id=PROJECT_ID, webhook_url=webhook_url, webhook_secret=SECRET)
        sim.catalog.set_project(
            PROJECT_ID,
            api_key=API_KEY,
            items=[admin_item("gold_100", item_type="virtual_currency"), admin_item(VIP_SKU, expiration=("day", 30))],
        )
        await sim.start()
        # The real Xsolla's URLs are the defaults; only these three change for the simulator.
        env |= {
            "ENTITLEMENTS_XSOLLA_STORE_API": sim.store_api_url,
            "ENTITLEMENTS_XSOLLA_ADMIN_API": sim.store_api_url,
            "ENTITLEMENTS_XSOLLA_WS_URL": sim.ws_url,
            "ENTITLEMENTS_INSECURE_DEV_MODE": "1",
            "ENTITLEMENTS_RECONCILE_GRACE_S": str(GRACE_S),
        }
        settings, order_settings = load_settings(env)
        settings = replace(
            settings,
            grpc_port=0,
            metrics_port=0,
            console=replace(settings.console, port=0),
            http=replace(settings.http, port=0),
            consumer=ConsumerSettings(block_ms=100),
            tracking=TrackingSettings(poll_interval_s=1.0),
        )
        service = Service(settings, order_settings, xsolla_catalog=xsolla.CatalogSettings.from_env(env))
        endpoints = await service.start()
        say("setup", f"embedded Redis at {redis.url}")
        say("setup", f"service on 127.0.0.1:{endpoints.grpc_port}, gateway at {webhook_url}")
        say("setup", f"Xsolla simulator at {sim.base_url} (WebSocket {sim.ws_url})")
        say("setup", f"projects file {projects_file}: project {PROJECT_ID}, catalog from Xsolla's admin API")

        async with AsyncEntitlementsClient(f"127.0.0.1:{endpoints.grpc_port}") as client:
            print("\n1. A purchase whose order_paid webhook arrives", flush=True)
            await webhook_path(sim, client)
            print("\n2. A purchase whose order_paid webhook is lost: reconciliation", flush=True)
            await lost_webhook_path(sim, client, service)
    finally:
        if service is not None:
            await service.stop()
        await gateway.stop()
        if sim is not None:
            await sim.stop()
        await redis.stop()


def main() -> int:
    logs.configure("warning", json=False)
    with tempfile.TemporaryDirectory(prefix="entitlements-demo-") as workdir:
        asyncio.run(run(Path(workdir)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
