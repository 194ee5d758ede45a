"""Every Prometheus metric of the webhook gateway, on a registry its owner passes in.

Labels are bounded: `type` is a notification type the provider documents, "other" for any other name, "none"
when the body had none, or "unverified" when the request was refused before its signature was checked (the
sender's claims are not worth a label then). `result` is one of `RESULTS`. Never a player, order or project id.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

from core.metrics import LATENCY_BUCKETS

#: The durability wait's buckets (s): a group commit under `appendfsync everysec` waits up to a second.
DURABILITY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.5, 5.0)

#: Every value of the `result` label, and what it means.
RESULTS = {
    "stored": "a new event was appended to the event log (answered 204)",
    "duplicate": "the event id had been stored before; nothing added (answered 204)",
    "answered": "a user validation or search was answered (204 or 200)",
    "invalid_signature": "Authorization missing, malformed or wrong (400)",
    "invalid_parameter": "correctly signed but unusable body (400)",
    "invalid_user": "the user directory does not know the player (400)",
    "forbidden": "sender outside the allowed networks (403)",
    "timeout": "the body did not arrive in time (408)",
    "too_large": "the body is over the limit (413)",
    "unavailable": "Redis or the user directory could not answer in time (503; the sender retries)",
    "not_durable": "stored, but not durable as GATEWAY_DURABILITY asks within its timeout (503; the sender retries)",
    "error": "an unexpected error (500; logged with its traceback)",
}

UNVERIFIED = "unverified"


class GatewayMetrics:
    """The gateway's metrics, registered on `registry` (which may be shared with the service's)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.webhooks = Counter(
            "gateway_webhooks_total",
            "Webhook requests handled, by notification type and result.",
            ["type", "result"],
            registry=registry,
        )
        self.duration = Histogram(
            "gateway_webhook_duration_seconds",
            "Time from the request's arrival to its answer, by notification type.",
            ["type"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.unknown_types = Counter(
            "gateway_unknown_types_total",
            "Notifications of a type this version stores without interpreting (EVENT_TYPE_UNKNOWN), by type.",
            ["type"],
            registry=registry,
        )

        self.durability_wait = Histogram(
            "gateway_durability_wait_seconds",
            "Time of an event's append and its durability wait (one round trip), by durability mode; "
            "failed waits included.",
            ["mode"],
            buckets=DURABILITY_BUCKETS,
            registry=registry,
        )

    def observe(self, type_label: str, result: str, duration_s: float) -> None:
        """Counts one handled webhook."""
        self.webhooks.labels(type_label, result).inc()
        self.duration.labels(type_label).observe(duration_s)
