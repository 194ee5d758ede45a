"""What the sweeper's tests share: the swept project, a simulator whose webhooks reach a real gateway, fast
reconciliation settings, paying orders and reading what was granted."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import replace
from types import MappingProxyType
from typing import Any

from core.projects import CATALOG_FILE, Project, Projects
from entitlements import AsyncEntitlementsClient
from providers.xsolla import WebhookSettings
from server.app import Service
from server.reconcile.settings import ReconcileSettings
from tests.helpers.events import PARTITIONS
from tests.helpers.gateway import gateway_settings, running_gateway
from tests.helpers.services import PROJECT, sample
from xsolla_simulator import XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory

API_KEY = "sweeper-admin-api-key-0123456789"
SECRET = "sweeper-webhook-secret-0123456789"
GOLD = ({"sku": "gold", "quantity": 10, "type": "virtual_currency"},)
#: The tests' project with the test catalog, and admin API credentials: the sweeper searches it.
SWEPT = Projects.single(
    PROJECT, Project(0, catalog_source=CATALOG_FILE, provider=MappingProxyType({"api_key": API_KEY}))
)


def reconcile(**overrides: Any) -> ReconcileSettings:
    """Sweeps every second, fast requests, no tracker reconciliation. The lease (5 s, renewed every 1.7 s) outlasts
    the stalls of a loaded machine: a renewal held up past a shorter one restarts the sweep, which some tests count
    (the lease's loss is tested on its own, in test_sweeper and test_sweeper_operations)."""
    settings = ReconcileSettings(sweep_interval_s=1.0, requests_per_s=200.0, lease_s=5.0, tracker_enabled=False)
    return replace(settings, **overrides)


@contextlib.asynccontextmanager
async def shop_context(redis_url: str, simulators: SimulatorFactory) -> AsyncIterator[XsollaSimulator]:
    """The simulator for PROJECT, its webhooks sent to a real gateway on `redis_url`, its admin API open with
    API_KEY, `user.id` in its search results."""
    settings = gateway_settings(redis_url=redis_url, event_partitions=PARTITIONS)
    async with running_gateway(settings, WebhookSettings(default_secret=SECRET)) as gateway:
        sim = await simulators(project_id=PROJECT, webhook_url=gateway.url, webhook_secret=SECRET)
        sim.admin_auth.set_api_key(PROJECT, API_KEY)
        sim.order_search.include_user_id = True
        yield sim


async def pay(sim: XsollaSimulator, user: str, items: tuple[dict[str, Any], ...] = GOLD) -> str:
    """A new order of `user` moved to paid at the simulator; returns its id."""
    order = sim.create_order(user, items)
    await sim.set_status(order.order_id, "paid")
    return str(order.order_id)


async def quantity(client: AsyncEntitlementsClient, user: str, sku: str = "gold") -> int:
    """The quantity of `sku` the player holds (0 when none)."""
    check = await client.check_entitlement(user, sku)
    return check.entitlement.quantity if check.HasField("entitlement") else 0


def swept(service: Service, result: str = "ok") -> float:
    """The service's sweeps of PROJECT with `result`."""
    return sample(service, "entitlements_reconcile_sweeps_total", project=str(PROJECT), result=result)


def orders(service: Service, result: str) -> float:
    """The orders of PROJECT the service's sweeps counted with `result`."""
    return sample(service, "entitlements_reconcile_orders_total", project=str(PROJECT), source="sweeper", result=result)
