"""Xsolla as a payment provider: everything the project knows about Xsolla, behind `core.webhooks` and
`core.order_sources`. The composition roots build it with `webhook_provider` (the gateway) and `order_sources`
(the service); nothing else imports this package.

Modules:
    settings        `WebhookSettings` (webhook secrets) and `OrderSettings` (Store API, WebSocket), from the env
    webhooks        `XsollaWebhooks`: signature and project, notification types -> WebhookEvent, user questions
    fields          readers of the fields of Xsolla's notification bodies
    signature       Xsolla's `Authorization: Signature` scheme
    answers         Xsolla's error body and `user_search` answer
    networks        the networks Xsolla sends webhooks from (the allow-list's `xsolla`)
    order_api       Get order (the polling half of order tracking)
    order_socket    the order-status WebSocket (Centrifugo), one connection per player
    status          Xsolla's status words as the service's order statuses
    metrics         the metrics of Xsolla's order APIs
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from core.order_sources import OrderSources
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.networks import NAMED_NETWORKS
from providers.xsolla.order_api import XsollaOrders
from providers.xsolla.order_socket import XsollaSockets
from providers.xsolla.settings import OrderSettings, WebhookSettings
from providers.xsolla.webhooks import XsollaWebhooks

#: Xsolla's name as players and operators know it (error messages).
NAME = "Xsolla"

__all__ = [
    "NAME",
    "NAMED_NETWORKS",
    "OrderSettings",
    "WebhookSettings",
    "XsollaOrders",
    "XsollaSockets",
    "XsollaWebhooks",
    "order_sources",
    "webhook_provider",
]


def webhook_provider(settings: WebhookSettings) -> XsollaWebhooks:
    """Xsolla's webhooks, verified with `settings`' secrets.

    Raises:
        core.errors.ConfigError: no secret is configured.
    """
    return XsollaWebhooks(settings)


def order_sources(settings: OrderSettings, registry: CollectorRegistry) -> OrderSources:
    """Get order and (unless turned off) the order-status WebSocket, with their metrics on `registry`."""
    metrics = XsollaMetrics(registry)
    lookup = XsollaOrders(settings.store_api, timeout_s=settings.http_timeout_s, metrics=metrics)
    sockets = (
        XsollaSockets(settings.ws_url, connect_timeout_s=settings.ws_connect_timeout_s, metrics=metrics)
        if settings.ws_enabled
        else None
    )
    return OrderSources(NAME, lookup, sockets, settings.project_id)
