"""The Prometheus metrics of Xsolla's APIs (Get order, the order-status WebSocket, the admin catalog and order
search), on the service's registry. Labels are bounded (operation, result, reason): never a player, token or
order id."""

from __future__ import annotations

import weakref

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from core.metrics import LATENCY_BUCKETS


class XsollaMetrics:
    """Xsolla's metrics, registered on `registry` (the service's). `XsollaMetrics.on(registry)` gives the one
    instance of a registry, shared by the order APIs and the catalog API."""

    @classmethod
    def on(cls, registry: CollectorRegistry) -> XsollaMetrics:
        """The registry's instance, made on first use (a metric registers once per registry)."""
        metrics = _BY_REGISTRY.get(registry)
        if metrics is None:
            metrics = _BY_REGISTRY[registry] = cls(registry)
        return metrics

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "entitlements_xsolla_requests_total",
            "Requests to Xsolla's APIs, by operation and result (ok, 401, 403, 404, 429, 4xx, 5xx, network, "
            "unreadable).",
            ["operation", "result"],
            registry=registry,
        )
        self.request_duration = Histogram(
            "entitlements_xsolla_request_seconds",
            "Time of requests to Xsolla's APIs, by operation.",
            ["operation"],
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self.sockets = Gauge(
            "entitlements_order_sockets",
            "Connections to Xsolla's order-status WebSocket open now (one per player with orders followed).",
            registry=registry,
        )
        self.socket_failures = Counter(
            "entitlements_order_socket_failures_total",
            "Xsolla WebSocket connections given up, by reason (connect_timeout, connect_error, closed, broken).",
            ["reason"],
            registry=registry,
        )


_BY_REGISTRY: weakref.WeakKeyDictionary[CollectorRegistry, XsollaMetrics] = weakref.WeakKeyDictionary()
