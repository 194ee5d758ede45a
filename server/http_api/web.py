"""The HTTP/JSON API's aiohttp application and its lifecycle on its own port (`HttpApi`).

Every request passes one middleware, which turns whatever goes wrong into a JSON `google.rpc.Status`: a refusal
of the HTTP layer (`HttpError`), aiohttp's own (a body past the size cap: 413), and anything unexpected (logged
with its traceback, answered 500 INTERNAL without details), and counts the answer. One handler takes every path
and method: the fixed routes (`GET /healthz`, `GET /openapi.yaml`, both without authentication), then the RPCs'
routes (`server.http_api.routes`), whose requests are transcoded (`server.http_api.transcoding`) and sent to the
service's gRPC server (`server.http_api.upstream`); GetOrderStatus answers as Server-Sent Events
(`server.http_api.sse`).
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import structlog
from aiohttp import web
from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2

from server.config import HttpSettings, TLSSettings
from server.http_api.errors import (
    JSON_CONTENT_TYPE,
    HttpError,
    http_error_response,
    rpc_error_response,
    status_response,
)
from server.http_api.routes import Route, Router, service_routes
from server.http_api.sse import serve_stream
from server.http_api.transcoding import FieldPath, request_message, response_json
from server.http_api.upstream import Upstream, call_metadata, deadline_s
from server.metrics import ServiceMetrics
from server.rpc import ANNOUNCE_ACCEPTANCE

log = structlog.get_logger("server.http_api")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

#: The OpenAPI document of the API (a symlink to openapi/entitlements.v1.yaml in the source tree), served as it is.
OPENAPI_FILE = Path(__file__).with_name("openapi.yaml")
#: How long /healthz waits for the gRPC health service.
HEALTH_TIMEOUT_S = 2.0
#: The request's route, for the metrics: set as soon as it is known.
_ROUTE = web.RequestKey("route", str)
INVALID = grpc.StatusCode.INVALID_ARGUMENT
_HTTP_STATUS_CODES = {
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    408: grpc.StatusCode.DEADLINE_EXCEEDED,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class Api:
    """What the handler stands on: the routes, the way to the gRPC server, the settings and the metrics."""

    def __init__(
        self, service: ServiceDescriptor, upstream: Upstream, settings: HttpSettings, metrics: ServiceMetrics
    ) -> None:
        self.router = Router(service_routes(service))
        self.upstream = upstream
        self.settings = settings
        self.metrics = metrics
        self._openapi: bytes | None = None

    def openapi(self) -> bytes | None:
        """The OpenAPI document, read once it exists (a dangling symlink is read again on the next request)."""
        if self._openapi is None:
            try:
                self._openapi = OPENAPI_FILE.read_bytes()
            except FileNotFoundError:
                return None
        return self._openapi


def application(api: Api) -> web.Application:
    """The API's aiohttp application: one handler for every method and path, behind the error middleware."""

    @web.middleware
    async def answer_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
        request[_ROUTE] = "none"
        try:
            response = await handler(request)
        except HttpError as exc:
            _refused(request, exc.status, exc.message)
            response = http_error_response(exc)
        except web.HTTPException as exc:
            # aiohttp's own refusals: the body past the cap (413) while it is read.
            code = _HTTP_STATUS_CODES.get(exc.status, grpc.StatusCode.INVALID_ARGUMENT)
            message = exc.text if exc.text and exc.status != 413 else _reason(exc, api.settings)
            _refused(request, exc.status, message)
            response = status_response(code, message, http_status=exc.status)
        except Exception as exc:
            log.error("http_internal_error", method=request.method, path=request.path[:256], exc_info=exc)
            response = status_response(grpc.StatusCode.INTERNAL, "internal error; the service logged the details")
        api.metrics.http_requests.labels(request[_ROUTE], str(response.status)).inc()
        return response

    async def dispatch(request: web.Request) -> web.StreamResponse:
        path = request.rel_url.raw_path
        if path in ("/healthz", "/openapi.yaml"):
            return await _fixed(api, request, path)
        route, path_values = api.router.resolve(request.method, path)
        request[_ROUTE] = route.method.name
        return await _rpc(api, request, route, path_values)

    app = web.Application(middlewares=[answer_errors], client_max_size=api.settings.max_body_bytes)
    app.router.add_route("*", "/{tail:.*}", dispatch)
    return app


async def _fixed(api: Api, request: web.Request, path: str) -> web.StreamResponse:
    if request.method not in ("GET", "HEAD"):
        raise HttpError(405, grpc.StatusCode.UNIMPLEMENTED, f"{path} takes GET", headers={"Allow": "GET, HEAD"})
    if path == "/openapi.yaml":
        request[_ROUTE] = "openapi"
        document = api.openapi()
        if document is None:
            raise HttpError(404, grpc.StatusCode.NOT_FOUND, "this build of the service has no OpenAPI document")
        return web.Response(body=document, content_type="application/yaml", charset="utf-8")
    request[_ROUTE] = "healthz"
    service = request.rel_url.query.get("service", "")
    try:
        status = await api.upstream.health(service, HEALTH_TIMEOUT_S)
    except grpc.aio.AioRpcError as exc:
        if exc.code() == grpc.StatusCode.NOT_FOUND:
            return rpc_error_response(exc)
        status = health_pb2.HealthCheckResponse.NOT_SERVING
    name = health_pb2.HealthCheckResponse.ServingStatus.Name(status)
    return web.json_response({"status": name}, status=200 if status == health_pb2.HealthCheckResponse.SERVING else 503)


async def _rpc(api: Api, request: web.Request, route: Route, path_values: dict[FieldPath, str]) -> web.StreamResponse:
    body = b""
    if request.body_exists:
        body = await request.read()
    metadata = call_metadata(request.headers)
    try:
        if body and route.body:
            _check_json(request)
        message = request_message(route, path_values, list(request.rel_url.query.items()), body)
        timeout = deadline_s(request.headers)
    except HttpError:
        # Without a valid key and scope the caller learns only that, as over gRPC.
        refused = await api.upstream.refused_key(route.method, metadata)
        if refused is not None:
            return rpc_error_response(refused)
        raise
    if route.streaming:
        metadata = (*metadata, ANNOUNCE_ACCEPTANCE)
        call = api.upstream.streaming(route.method)(message, metadata=metadata, timeout=timeout)
        api.metrics.http_event_streams.inc()
        try:
            return await serve_stream(request, call, api.settings.sse_heartbeat_s)
        finally:
            api.metrics.http_event_streams.dec()
    try:
        response = await api.upstream.unary(route.method)(message, metadata=metadata, timeout=timeout)
    except grpc.aio.AioRpcError as exc:
        return rpc_error_response(exc)
    return web.Response(body=response_json(response), content_type=JSON_CONTENT_TYPE)


def _check_json(request: web.Request) -> None:
    """A body must be declared JSON (`application/json`, or a `+json` type), in UTF-8."""
    content_type = request.content_type
    charset = request.charset
    if content_type != JSON_CONTENT_TYPE and not content_type.endswith("+json"):
        sent = request.headers.get("Content-Type", "(none)")[:64]
        raise HttpError(415, INVALID, f"Content-Type: the body must be application/json, not {sent}")
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise HttpError(415, INVALID, f"Content-Type: charset must be utf-8, not {charset[:32]}")


def _refused(request: web.Request, status: int, message: str) -> None:
    log.info("http_refused", method=request.method[:16], path=request.path[:256], status=status, error=message)


def _reason(exc: web.HTTPException, settings: HttpSettings) -> str:
    if exc.status == 413:
        return f"request body: larger than {settings.max_body_bytes} bytes"
    return exc.reason


def server_tls(tls: TLSSettings) -> ssl.SSLContext:
    """The HTTP port's TLS: the gRPC port's certificate, and client certificates required when a client CA is set."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(tls.cert_file, tls.key_file)
    if tls.client_ca_file is not None:
        context.load_verify_locations(cafile=tls.client_ca_file)
        context.verify_mode = ssl.CERT_REQUIRED
    context.set_alpn_protocols(["http/1.1"])
    return context


class HttpApi:
    """The HTTP/JSON API on its own port, calling the gRPC server at `target`. Build it inside the running loop.

    Args:
        settings: the port, limits and heartbeat.
        tls: the service's TLS settings (the same as the gRPC port's), or None for plain HTTP.
        service: the gRPC service whose `google.api.http` rules are served.
        target: the gRPC server's private socket (`server.grpc_api.PrivateSocket.target`).
        metrics: where the answers are counted.
        shutdown_grace_s: how long `stop` lets requests in flight finish.

    Raises:
        RuleError: a rule of the service cannot be served (at construction, so the service does not start).
    """

    def __init__(
        self,
        settings: HttpSettings,
        tls: TLSSettings | None,
        service: ServiceDescriptor,
        target: str,
        metrics: ServiceMetrics,
        *,
        shutdown_grace_s: float,
    ) -> None:
        self._settings = settings
        self._grace_s = shutdown_grace_s
        self._tls = server_tls(tls) if tls is not None else None
        self._upstream = Upstream(target)
        self._api = Api(service, self._upstream, settings, metrics)
        self._runner: web.AppRunner | None = None
        self.port: int | None = None

    async def start(self) -> int:
        """Listens on the API's host and port; returns the port (the one chosen when it is 0)."""
        settings = self._settings
        self._runner = web.AppRunner(
            application(self._api),
            access_log=None,
            handle_signals=False,
            # A caller that goes away cancels its handler, and so its gRPC call (an event stream's watcher).
            handler_cancellation=True,
            keepalive_timeout=settings.keepalive_timeout_s,
            shutdown_timeout=self._grace_s,
        )
        await self._runner.setup()
        site = web.TCPSite(
            # A group's workers share the port (SO_REUSEPORT; `server.group` holds it against other processes).
            self._runner,
            settings.host,
            settings.port,
            ssl_context=self._tls,
            reuse_port=settings.reuse_port or None,
        )
        await site.start()
        self.port = int(self._runner.addresses[0][1])
        log.info("http_api_started", address=f"{settings.host}:{self.port}", tls=self._tls is not None)
        return self.port

    async def stop(self) -> None:
        """Stops listening, lets requests in flight finish within the grace period (event streams end as their RPCs
        do), then closes the channel to the gRPC server."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self._upstream.close()
