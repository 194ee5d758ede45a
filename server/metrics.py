"""Every Prometheus metric of the service process, on a registry the composition root owns.

Labels are bounded (method, code, operation): never a player, sku or order id.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest

_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class ServiceMetrics:
    """The service's metrics, registered on `registry`."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
        self.rpc_requests = Counter(
            "entitlements_rpc_requests_total",
            "RPCs handled, by method and gRPC status code.",
            ["method", "code"],
            registry=registry,
        )
        self.rpc_duration = Histogram(
            "entitlements_rpc_duration_seconds",
            "RPC handling time, by method and gRPC status code.",
            ["method", "code"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.rpc_in_flight = Gauge(
            "entitlements_rpc_in_flight",
            "RPCs being handled now.",
            ["method"],
            registry=registry,
        )
        self.store_unavailable = Counter(
            "entitlements_store_unavailable_total",
            "Calls answered UNAVAILABLE because Redis could not be reached in time.",
            ["method"],
            registry=registry,
        )
        self.writes = Counter(
            "entitlements_writes_total",
            "Grant and Revoke calls that reached the store, by operation and outcome.",
            ["operation", "outcome"],
            registry=registry,
        )


class MetricsEndpoint:
    """Serves `registry` at GET /metrics on the running event loop (no extra thread, stops at once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening and returns the bound port (useful with port 0)."""
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
