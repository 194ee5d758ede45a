"""The Xsolla webhook gateway: the HTTP edge that turns verified webhooks into events in a Redis stream.

Xsolla's notifications are verified (signature over the raw body, per-project secrets), translated into
provider-neutral `entitlements.v1.WebhookEvent`s, and appended with their raw body to the event log
(`core.eventlog`) in one atomic dedup-and-XADD step, before Xsolla is answered 204. The service's consumer
applies them. See docs/WEBHOOKS.md.

Modules:
    app             composition root (`Gateway`) and the aiohttp application factory (`create_app`)
    config          `GatewaySettings.from_env()`
    receiver        the webhook endpoint: checks in order, one answer, one log line, metrics
    xsolla          the Xsolla provider: signature and project, notification types -> WebhookEvent
    notifications   the provider-neutral interface (`Provider`, `Notification`, `UserQuery`)
    signature       Xsolla's `Authorization: Signature` scheme
    users           the user directory for user_validation / user_search (allow_all, http)
    sources         the optional allow-list of sender networks and the trusted proxy header
    metrics         every Prometheus metric of the gateway
    errors          the exception tree and its HTTP answers in Xsolla's error shape
    testing         helpers for tests that drive a real gateway (sign and post, read the streams back)
"""

from webhook_gateway.app import Gateway, create_app
from webhook_gateway.config import GatewaySettings

__all__ = ["Gateway", "GatewaySettings", "create_app"]
