"""Xsolla as a payment provider: everything the project knows about Xsolla, behind `core.webhooks`,
`core.order_sources`, `core.catalogs` and `core.reconciliation`. The composition roots build it with
`webhook_provider` (the gateway), `order_sources`, `catalog_source` and `order_search` (the service); nothing else
imports this package.

Modules:
    settings        `WebhookSettings` (webhook secrets, from the projects file or the env) and `OrderSettings`
                    (Store API, WebSocket)
    webhooks        `XsollaWebhooks`: signature and project, notification types -> WebhookEvent, user questions
    fields          readers of the fields of Xsolla's notification bodies
    signature       Xsolla's `Authorization: Signature` scheme
    answers         Xsolla's error body and `user_search` answer
    networks        the networks Xsolla sends webhooks from (the allow-list's `xsolla`)
    order_api       Get order (the polling half of order tracking)
    admin           what the admin APIs share: the project's Basic credentials, `Retry-After`
    catalog         the admin catalog API (items and bundles), the service's catalog source
    order_search    the admin order search (a project's orders by creation date), for reconciliation
    order_socket    the order-status WebSocket (Centrifugo), one connection per player
    status          Xsolla's status words as the service's order statuses
    metrics         the metrics of Xsolla's APIs
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client import CollectorRegistry

from core.order_sources import OrderSources
from core.projects import Projects
from providers.xsolla.catalog import CatalogSettings, XsollaCatalog, with_env_credentials
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.networks import NAMED_NETWORKS
from providers.xsolla.order_api import XsollaOrders
from providers.xsolla.order_search import XsollaOrderSearch
from providers.xsolla.order_socket import XsollaSockets
from providers.xsolla.settings import PROVIDER, OrderSettings, WebhookSettings, check_projects
from providers.xsolla.webhooks import XsollaWebhooks

#: Xsolla's name as players and operators know it (error messages).
NAME = "Xsolla"

__all__ = [
    "NAME",
    "NAMED_NETWORKS",
    "PROVIDER",
    "CatalogSettings",
    "OrderSettings",
    "WebhookSettings",
    "XsollaCatalog",
    "XsollaOrderSearch",
    "XsollaOrders",
    "XsollaSockets",
    "XsollaWebhooks",
    "catalog_source",
    "check_projects",
    "load_projects",
    "order_search",
    "order_sources",
    "webhook_provider",
    "with_env_credentials",
]


def load_projects(path: Path) -> Projects:
    """The projects file (`ENTITLEMENTS_PROJECTS_FILE`), with its Xsolla tables checked.

    Raises:
        core.errors.ConfigError: the file cannot be read, or an entry is invalid (named, never a secret).
    """
    projects = Projects.load(path, PROVIDER)
    check_projects(projects)
    return projects


def webhook_provider(settings: WebhookSettings) -> XsollaWebhooks:
    """Xsolla's webhooks, verified with `settings`' secrets.

    Raises:
        core.errors.ConfigError: no secret is configured.
    """
    return XsollaWebhooks(settings)


def order_sources(settings: OrderSettings, registry: CollectorRegistry) -> OrderSources:
    """Get order and (unless turned off) the order-status WebSocket, with their metrics on `registry`."""
    metrics = XsollaMetrics.on(registry)
    lookup = XsollaOrders(settings.store_api, timeout_s=settings.http_timeout_s, metrics=metrics)
    sockets = (
        XsollaSockets(settings.ws_url, connect_timeout_s=settings.ws_connect_timeout_s, metrics=metrics)
        if settings.ws_enabled
        else None
    )
    return OrderSources(NAME, lookup, sockets, settings.project_id)


def catalog_source(settings: CatalogSettings, registry: CollectorRegistry) -> XsollaCatalog:
    """The admin catalog API (a `core.catalogs.CatalogSource`), with its metrics on `registry`."""
    return XsollaCatalog(settings, XsollaMetrics.on(registry))


def order_search(settings: CatalogSettings, registry: CollectorRegistry) -> XsollaOrderSearch:
    """The admin order search (a `core.reconciliation.OrderSearch`), on the catalog's admin API settings
    (`ENTITLEMENTS_XSOLLA_ADMIN_API`, `ENTITLEMENTS_XSOLLA_HTTP_TIMEOUT_S`), with its metrics on `registry`."""
    return XsollaOrderSearch(settings, XsollaMetrics.on(registry))
