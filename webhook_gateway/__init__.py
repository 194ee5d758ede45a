"""The webhook gateway: the HTTP edge that turns verified webhooks into events in a Redis stream.

A payment provider's notifications (Xsolla's today, `providers.xsolla`) are verified by the provider (signature
over the raw body, per-project secrets), translated into provider-neutral `entitlements.v1.WebhookEvent`s, and
appended with their raw body to the event log (`core.eventlog`) in one atomic dedup-and-XADD step, before the
sender is answered 204. The service's consumer applies them. The gateway knows the provider only through
`core.webhooks.WebhookProvider`. See docs/WEBHOOKS.md.

Modules:
    app             composition root (`Gateway`, which chooses the provider) and the aiohttp application
    __main__        `python -m webhook_gateway`: reads the settings, runs the gateway
    config          `GatewaySettings.from_env()`
    receiver        the webhook endpoint: checks in order, one answer, one log line, metrics
    users           the user directory for user validation and search (allow_all, http)
    sources         the optional allow-list of sender networks and the trusted proxy header
    metrics         every Prometheus metric of the gateway
    errors          the exception tree and its HTTP answers (in the provider's shape)
"""

from webhook_gateway.app import Gateway, create_app
from webhook_gateway.config import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "create_app"]
