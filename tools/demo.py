"""`make demo`: one purchase, end to end, on loopback.

Starts the embedded Redis, the service, the webhook gateway and the Xsolla simulator (all on free ports, data in a
temporary directory). Both processes are configured as a deployment would be: one projects file (the project's
webhook secret and API key) and the environment variables of `python -m server` / `python -m webhook_gateway`, with
the simulator's URLs in place of Xsolla's. The service reads the project's catalog from the simulator's admin
catalog API. The demo creates an order in the simulator, opens a GetOrderStatus stream with the project's Python
client, pays the order, and prints what each part saw: the stream's updates with their sources, the webhook's
delivery, and the player's entitlements at the end (the time-limited pass with the period the catalog gives it).
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
from server.config import ConsumerSettings, TrackingSettings
from server.embedded import EmbeddedRedis
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.catalog_api import admin_item

PROJECT_ID = 300_001
PLAYER = "player-42"
SECRET = "demo-webhook-secret"  # noqa: S105 - the simulator and gateway of the demo share it
API_KEY = "demo-api-key"
VIP_SKU = "vip_pass_30d"
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
        }
        settings, order_settings = load_settings(env)
        settings = replace(
            settings,
            grpc_port=0,
            metrics_port=0,
            consumer=ConsumerSettings(block_ms=100),
            tracking=TrackingSettings(poll_interval_s=1.0),
        )
        service = Service(settings, order_settings, xsolla_catalog=xsolla.CatalogSettings.from_env(env))
        endpoints = await service.start()
        say("setup", f"embedded Redis at {redis.url}")
        say("setup", f"service on 127.0.0.1:{endpoints.grpc_port}, gateway at {webhook_url}")
        say("setup", f"Xsolla simulator at {sim.base_url} (WebSocket {sim.ws_url})")
        say("setup", f"projects file {projects_file}: project {PROJECT_ID}, catalog from Xsolla's admin API")

        token = sim.issue_token(PLAYER)
        lines = [
            {"sku": "gold_100", "quantity": 1, "type": "virtual_currency"},
            {"sku": VIP_SKU, "quantity": 1, "type": "virtual_good"},
        ]
        order = sim.create_order(PLAYER, items=lines)
        say("xsolla", f"order {order.order_id} created for {PLAYER}: 1 x gold_100, 1 x {VIP_SKU} (status new)")

        async with AsyncEntitlementsClient(f"127.0.0.1:{endpoints.grpc_port}") as client:
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
            say(
                "inventory",
                f"{PLAYER} holds gold_100: active={check.active}, quantity={check.entitlement.quantity}",
            )
            vip = await client.check_entitlement(PLAYER, VIP_SKU)
            expires = vip.entitlement.expires_at.ToDatetime()
            days = (expires - vip.entitlement.granted_at.ToDatetime()).total_seconds() / 86_400
            say("inventory", f"{PLAYER} holds {VIP_SKU}: active={vip.active}, expires {expires:%Y-%m-%d %H:%M} UTC")
            say("catalog", f"the period came from Xsolla's catalog (expiration_period 30 days): {days:.0f} days")
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
