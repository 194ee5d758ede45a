"""The gateway's composition root: settings -> Redis client -> event log -> user directory -> HTTP server.

The composition root chooses the webhook provider: Xsolla's (`providers.xsolla`), built from its settings,
unless a caller hands in another `core.webhooks.WebhookProvider`. `Gateway` runs the whole gateway on the
current event loop, either as its own process (`python -m webhook_gateway`) or inside another one (the
service's `make run`, end-to-end tests), where the caller may hand it an existing Redis client and Prometheus
registry. `create_app` builds the aiohttp application alone, for
callers that bring their own runner.

Routes on the main port:

    POST <path>                 a webhook; the project is found in the body (or a default secret is used)
    POST <path>/<project_id>    a webhook for that project of the provider (its secret verifies the signature)
    GET  /healthz               200 while the process runs
    GET  /readyz                200 while Redis answers PING, 503 otherwise and during shutdown

`/metrics` is served on its own port (`GATEWAY_METRICS_PORT`, loopback by default), so that exposing the webhook
port to Xsolla does not expose the metrics.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import redis.exceptions as redis_errors
import structlog
from aiohttp import web
from aiohttp.typedefs import Middleware
from prometheus_client import CollectorRegistry

from core import connections
from core.connections import RedisClient, bounded
from core.errors import StoreUnavailable
from core.eventlog import EventLog
from core.layout import LayoutGate
from core.metrics import MetricsEndpoint
from core.webhooks import WebhookProvider
from providers import xsolla as xsolla_provider
from webhook_gateway.bodies import BodyReader
from webhook_gateway.config import GatewaySettings
from webhook_gateway.durability import DurabilityDecider
from webhook_gateway.errors import ConfigError, ErrorBody, http_error_answer, internal_error_answer
from webhook_gateway.metrics import GatewayMetrics
from webhook_gateway.receiver import EventSink, WebhookReceiver
from webhook_gateway.sources import SourceFilter
from webhook_gateway.users import UserDirectory, build_directory

log = structlog.get_logger("webhook_gateway")

Readiness = Callable[[], Awaitable[bool]]

# aiohttp's buffer of unread body per connection (its default is 64 KiB); see `Gateway.start`.
_READ_BUFFER_BYTES = 16 * 1024
# The host values that mean "every interface", for which the URL names loopback instead.
_ALL_INTERFACES = ("", "0.0.0.0", "::")  # noqa: S104  # compared with, never bound to


def create_app(
    receiver: WebhookReceiver, *, path: str, readiness: Readiness, max_body_bytes: int, error_body: ErrorBody
) -> web.Application:
    """The aiohttp application: the webhook routes under `path`, /healthz and /readyz.

    Args:
        receiver: handles the webhooks.
        path: the webhook path, e.g. "/webhooks/xsolla" (no trailing slash).
        readiness: answers whether the gateway can store events now (for /readyz).
        max_body_bytes: aiohttp's own body limit, a second fence behind the receiver's.
        error_body: the provider's error body, for the router's own errors (404, 405, ...).
    """
    app = web.Application(middlewares=[_http_errors(error_body)], client_max_size=max_body_bytes)
    app.router.add_post(path, receiver.handle)
    # A provider's webhook URL is set per project (Xsolla's is), so the URL can say which project's secret applies.
    app.router.add_post(path + "/{project_id:[0-9]{1,18}}", receiver.handle)

    async def healthz(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def readyz(request: web.Request) -> web.Response:
        if await readiness():
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "unavailable"}, status=503)

    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _http_errors(error_body: ErrorBody) -> Middleware:
    """A middleware answering router errors (404, 405, ...) in the provider's error shape, and a failing handler
    with a bare 500, never a traceback."""

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        try:
            return await handler(request)
        except web.HTTPException as exc:
            if exc.status < 400:
                raise
            headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
            return web.Response(
                status=exc.status,
                body=http_error_answer(exc.status, exc.reason, error_body),
                content_type="application/json",
                headers=headers,
            )
        except Exception:
            log.exception("http_handler_failed", path=request.path, method=request.method)
            answer = internal_error_answer(error_body)
            return web.Response(status=answer.status, body=answer.body, content_type="application/json")

    return middleware


class Gateway:
    """One webhook gateway: build it inside the running event loop, then `await start()` and `await stop()`.

    Args:
        settings: the configuration (`GatewaySettings.from_env()`, or built by hand).
        xsolla: Xsolla's webhook settings (its secrets), when the provider is Xsolla's (the default).
        provider: another webhook provider, instead of Xsolla's.
        redis: a Redis client to use, owned by the caller (not closed by `stop`). None: connect to
            `settings.redis_url` and close that client on `stop`.
        registry: the Prometheus registry for the gateway's metrics (e.g. the service's, when embedded).
            None: a registry of its own.
        user_directory: overrides the directory named by `settings.user_directory`.
        event_sink: overrides the event log built on `redis` (tests inject failures through it).

    Attributes (set by `start`):
        port: the bound webhook port. metrics_port: the bound metrics port (None when not served).
        event_log: the event log the gateway appends to. provider: the webhook provider.
        durability: what its 204 waits for (None with an injected event sink); `durability.decided` once known.
    """

    def __init__(
        self,
        settings: GatewaySettings,
        xsolla: xsolla_provider.WebhookSettings | None = None,
        *,
        provider: WebhookProvider | None = None,
        redis: RedisClient | None = None,
        registry: CollectorRegistry | None = None,
        user_directory: UserDirectory | None = None,
        event_sink: EventSink | None = None,
    ) -> None:
        self.settings = settings
        self._xsolla = xsolla
        self.provider = provider
        self._path = settings.path
        self.registry = CollectorRegistry() if registry is None else registry
        self.metrics = GatewayMetrics(self.registry)
        self.redis = redis
        self._owns_redis = redis is None
        self._event_sink = event_sink
        self.event_log: EventLog | None = None
        self.durability: DurabilityDecider | None = None
        self._user_directory = user_directory
        self.users: UserDirectory | None = None
        self._runner: web.AppRunner | None = None
        self._metrics_http = MetricsEndpoint(self.registry) if settings.metrics_port is not None else None
        self._accepting = False
        self.port: int | None = None
        self.metrics_port: int | None = None

    @property
    def path(self) -> str:
        """The webhook path: `settings.path`, or `/webhooks/<provider name>` (known once started)."""
        if self._path is None:
            raise RuntimeError("the gateway is not started")
        return self._path

    @property
    def url(self) -> str:
        """The webhook URL of the started gateway (loopback form when bound to all interfaces)."""
        if self.port is None:
            raise RuntimeError("the gateway is not started")
        host = self.settings.host if self.settings.host not in _ALL_INTERFACES else "127.0.0.1"
        host = f"[{host}]" if ":" in host else host
        return f"http://{host}:{self.port}{self.path}"

    async def start(self) -> int:
        """Connects, starts serving and returns the bound webhook port (useful with port 0).

        On failure, stops what was started and re-raises.

        Raises:
            ConfigError: the settings are unusable (no secret; no Redis client and no REDIS_URL; a durability the
                store cannot give; ...).
        """
        settings = self.settings
        settings.check()
        if self.provider is None:
            self.provider = xsolla_provider.webhook_provider(self._xsolla or xsolla_provider.WebhookSettings())
        provider = self.provider
        for code, message in provider.warnings().items():
            log.warning(code, provider=provider.name, message=message)
        self._path = settings.path or f"/webhooks/{provider.name}"
        if self.redis is None and settings.redis_url is None and self._event_sink is None:
            raise ConfigError("REDIS_URL is not set (the gateway stores events in Redis)")
        try:
            if self.redis is None and settings.redis_url is not None:
                self.redis = connections.connect(
                    settings.redis_url,
                    cluster=settings.redis_cluster,
                    timeout_s=settings.redis_timeout_s,
                    max_connections=settings.redis_max_connections,
                )
            sink = self._event_sink
            if sink is None:
                assert self.redis is not None
                # Before anything is appended: a store of another key layout is refused (`core.layout`). With
                # Redis down, the gateway starts anyway and the event log checks before its first append.
                layout = LayoutGate(self.redis)
                try:
                    await bounded(layout.ensure(), settings.redis_timeout_s * 4)
                except StoreUnavailable as exc:
                    log.warning("store_layout_unchecked", error=str(exc), note="checked before the first append")
                # What a 204 waits for (`webhook_gateway.durability`): decided now, refused now (ConfigError) when
                # the store cannot give it, or, with Redis down, decided before the first append.
                self.durability = DurabilityDecider(self.redis, settings)
                if layout.passed:
                    try:
                        await self.durability.decide()
                    except StoreUnavailable as exc:
                        log.warning("durability_undecided", error=str(exc), note="decided before the first append")
                self.event_log = EventLog(
                    self.redis,
                    partitions=settings.event_partitions,
                    dedup_ttl_s=settings.dedup_ttl_s,
                    timeout_s=settings.redis_timeout_s,
                    layout=layout,
                    durability=self.durability.current,
                )
                sink = self.event_log
            self.users = self._user_directory or build_directory(
                settings.user_directory,
                url=settings.user_directory_url,
                timeout_s=settings.user_directory_timeout_s,
                token=settings.user_directory_token,
            )
            await self.users.start()
            receiver = WebhookReceiver(
                provider=provider,
                sink=sink,
                users=self.users,
                metrics=self.metrics,
                sources=SourceFilter(
                    settings.allowed_networks, settings.trusted_proxy_header, settings.trusted_proxy_hops
                ),
                bodies=BodyReader(settings.max_body_bytes),
                request_timeout_s=settings.request_timeout_s,
                # One connection stays free for /readyz's PING during a burst.
                max_concurrent_stores=max(1, settings.redis_max_connections - 1),
            )
            app = create_app(
                receiver,
                path=self.path,
                readiness=self.ready,
                max_body_bytes=settings.max_body_bytes,
                error_body=provider.error_body,
            )
            # Handlers are not cancelled when the sender hangs up: an event being stored is stored, and
            # the sender's retry then finds it a duplicate. A request answered before its body was read to the
            # end (a refused signature header, 413, 408, 403, 404, 405) has its connection closed as soon as the
            # answer is written: no lingering close, in which aiohttp would read and discard what keeps arriving,
            # as fast as it arrives, for up to a second per connection, which a crowd of senders without a
            # secret would turn into the event loop's whole time. A sender still sending may then see a reset
            # rather than the answer; a provider's webhooks are a few KiB, sent whole before any answer.
            # aiohttp stops reading a connection once `_READ_BUFFER_BYTES` x 2 of its body wait unread: small,
            # so that a request refused from its headers costs one read from the socket, not several.
            # Bodies are not decompressed: the signature covers the bytes as sent (Xsolla does not compress),
            # and a compressed body cannot inflate past the size limit.
            self._runner = web.AppRunner(
                app,
                access_log=None,
                shutdown_timeout=settings.shutdown_grace_s,
                lingering_time=0,
                read_bufsize=_READ_BUFFER_BYTES,
                auto_decompress=False,
            )
            await self._runner.setup()
            await web.TCPSite(self._runner, settings.host, settings.port).start()
            self.port = int(self._runner.addresses[0][1])
            if self._metrics_http is not None and settings.metrics_port is not None:
                self.metrics_port = await self._metrics_http.start(settings.metrics_host, settings.metrics_port)
        except BaseException:
            await self.stop()
            raise
        self._accepting = True
        log.info(
            "gateway_started",
            host=settings.host,
            port=self.port,
            path=self.path,
            metrics_port=self.metrics_port,
            redis="shared" if not self._owns_redis else ("cluster" if settings.redis_cluster else "standalone"),
            partitions=settings.event_partitions,
            dedup_ttl_h=settings.dedup_ttl_h,
            durability=self._durability_label(),
            provider=provider.name,
            **provider.describe(),
            user_directory=self.users.name,
            allow_list=len(settings.allowed_networks) > 0,
        )
        return self.port

    def _durability_label(self) -> str:
        if self.durability is None:
            return "sink"
        return "undecided" if self.durability.decided is None else self.durability.decided.mode

    async def ready(self) -> bool:
        """True while the gateway takes webhooks and Redis answers PING within the Redis timeout."""
        if not self._accepting:
            return False
        if self.redis is None:
            return True  # an injected event sink: nothing to ping
        try:
            async with asyncio.timeout(self.settings.redis_timeout_s):
                await self.redis.ping()
        except (TimeoutError, redis_errors.RedisError, OSError):
            return False
        return True

    async def stop(self) -> None:
        """Stops gracefully: /readyz turns 503, in-flight webhooks finish (up to the shutdown grace), then
        the HTTP server, the user directory and the Redis client (when owned) close."""
        self._accepting = False
        was_serving = self._runner is not None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.users is not None:
            await self.users.close()
        if self.redis is not None and self._owns_redis:
            await self.redis.aclose()
            self.redis = None
        if self._metrics_http is not None:
            await self._metrics_http.stop()
        if was_serving:
            log.info("gateway_stopped", port=self.port)
