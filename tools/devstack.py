"""`make run`: the service and the webhook gateway in one process, on one embedded Redis.

The service starts first (with its embedded Valkey when REDIS_URL is unset); the gateway then shares its Redis
client and Prometheus registry, so `/metrics` on the service's port shows both. Each can also run on its own:
`python -m server` and `python -m webhook_gateway`.
"""

from __future__ import annotations

import asyncio
import sys
from dataclasses import replace

import structlog

from core import logs
from core.errors import ConfigError
from core.lifecycle import wait_for_stop_signal
from providers import xsolla
from server.__main__ import load_settings
from server.app import Service
from server.config import Settings
from webhook_gateway.app import Gateway
from webhook_gateway.config import GatewaySettings

log = structlog.get_logger("devstack")


async def run(
    settings: Settings,
    gateway_settings: GatewaySettings,
    xsolla_orders: xsolla.OrderSettings,
    xsolla_webhooks: xsolla.WebhookSettings,
    xsolla_catalog: xsolla.CatalogSettings,
) -> None:
    """Runs both until SIGTERM or SIGINT, then stops the gateway first (no new events), then the service."""
    if settings.insecure_dev_mode:
        log.warning("INSECURE_DEV_MODE", message="no API keys are checked. Never run this in production.")
    service = Service(settings, xsolla_orders, xsolla_catalog=xsolla_catalog)
    await service.start()
    gateway = Gateway(gateway_settings, xsolla_webhooks, redis=service.redis, registry=service.registry)
    try:
        await gateway.start()
    except BaseException:
        await service.stop()
        raise
    log.info("devstack_ready", webhook_url=gateway.url, grpc_port=service.endpoints and service.endpoints.grpc_port)
    await wait_for_stop_signal()
    await gateway.stop()
    await service.stop()


def main() -> int:
    try:
        settings, xsolla_orders = load_settings()
        settings.check_servable()
        # The gateway's metrics are served by the service's endpoint (shared registry).
        gateway_settings = replace(GatewaySettings.from_env(named_networks=xsolla.NAMED_NETWORKS), metrics_port=None)
        xsolla_webhooks = xsolla.WebhookSettings.from_env()
        xsolla_catalog = xsolla.CatalogSettings.from_env()
    except ConfigError as exc:
        print(f"configuration error: {exc}", file=sys.stderr)
        return 2
    logs.configure(settings.log_level, settings.log_json)
    asyncio.run(run(settings, gateway_settings, xsolla_orders, xsolla_webhooks, xsolla_catalog))
    return 0


if __name__ == "__main__":
    sys.exit(main())
