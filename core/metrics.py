"""The Prometheus endpoint both processes serve, and the histogram buckets they share.

Each process keeps its metrics in a module of its own (`server.metrics`, `webhook_gateway.metrics`, the
provider's), registered on a registry its composition root owns; this module only serves one.
"""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from core.errors import PortInUse

#: Buckets of request and apply latencies (seconds): half a millisecond to ten seconds.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class MetricsEndpoint:
    """Serves `registry` at GET /metrics on the running event loop (no extra thread, stops at once)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._registry = registry
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self, host: str, port: int) -> int:
        """Starts listening and returns the bound port (useful with port 0).

        Raises:
            PortInUse: the port is taken (or the address is not one of this host's).
        """
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        try:
            await site.start()
        except OSError as exc:
            await self.stop()
            raise PortInUse(f"the metrics endpoint cannot listen on {host}:{port} ({exc.strerror})") from None
        self.port = int(self._runner.addresses[0][1])
        return self.port

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _metrics(self, request: web.Request) -> web.Response:
        body = generate_latest(self._registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})
