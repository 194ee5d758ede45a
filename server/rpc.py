"""What every RPC goes through: authentication, the scope check, decoding the request, resolving its project, the
status mapping, one log line and metrics.

`rpc` decorates a unary servicer method and `stream_rpc` a server-streaming one (an async generator); the
servicer's `runtime` (an RpcRuntime) does the work, and `add_service` registers the servicer on a grpc.aio server.
The request reaches the decorated method as the bytes that arrived, and is decoded only once the caller is
authorized: a caller without a valid key learns nothing about how its bytes parse, and bytes that do not decode are
INVALID_ARGUMENT, logged and counted like any other answer (grpc's own decoding would answer UNKNOWN with the
parser's message before the key is checked, and log a plain-text traceback outside the metrics).

Every request carries `project_id`; the runtime resolves it (`server.validation.resolve_project`: 0 is the key's or
the default project; a project the key is not bound to is PERMISSION_DENIED) before the handler runs, so no RPC
touches Redis for a project its caller may not use. The handler receives the resolved project, and the RPC's log
line names it (never a metric label: the number of projects is the operator's, not bounded by the code).

Domain errors (server.errors) become gRPC statuses here and only here; anything unexpected is logged with its
traceback and answered INTERNAL with no details on the wire. A stream gets one log line when it ends, with the
number of messages sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar, cast

import grpc
from google.protobuf.descriptor import ServiceDescriptor
from google.protobuf.message import DecodeError, Message
from google.protobuf.message_factory import GetMessageClass
from prometheus_client import Counter, Gauge, Histogram

from core import logs
from core.logs import user_ref
from core.projects import Projects
from server.auth import Authenticator, Principal
from server.config import Settings
from server.errors import (
    CapacityExceeded,
    FailedPrecondition,
    FellBehind,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    OutOfRange,
    PermissionDenied,
    ServiceStopping,
    StoreUnavailable,
    TokenRejected,
)
from server.metrics import ServiceMetrics
from server.validation import resolve_project

log = logs.get_logger("server.rpc")

#: Request metadata of a caller that wants to know when its stream is accepted (the HTTP/JSON API), and the initial
#: metadata a server-streaming handler then sends once it has accepted the request (caller authorized, request
#: valid, stream admitted), before its first message: the HTTP/JSON API answers 200 and starts its event stream
#: then, and a refusal before it as a plain JSON error (`server.http_api.sse`). Other callers get the initial
#: metadata with the first message, as before: a gRPC client's retry policy may then still retry a stream that
#: received nothing (headers commit a call).
ANNOUNCE_ACCEPTANCE = ("entitlements-stream", "announce-acceptance")
STREAM_ACCEPTED = ("entitlements-stream", "accepted")


def announces_acceptance(context: grpc.aio.ServicerContext[Any, Any]) -> bool:
    """Whether the caller asked to be told when its stream is accepted (`ANNOUNCE_ACCEPTANCE`)."""
    key, value = ANNOUNCE_ACCEPTANCE
    return any(k == key and v == value for k, v in context.invocation_metadata() or ())


Req = TypeVar("Req", bound=Message)
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class HasRuntime(Protocol):
    """A servicer whose methods are decorated with `rpc`."""

    runtime: RpcRuntime


S = TypeVar("S", bound=HasRuntime)


Handler = Callable[[S, Req, Context, Principal, int], Awaitable[Resp]]


def rpc(method: str, scope: str) -> Callable[[Handler[S, Req, Resp]], Callable[[S, bytes, Context], Awaitable[Resp]]]:
    """Makes `handler(self, request, context, principal, project_id)` the gRPC method `method`, requiring `scope`.

    The decorated method takes the request's bytes; `handler` gets them decoded as the method's request type, and
    the request's resolved project.
    """

    def decorate(handler: Handler[S, Req, Resp]) -> Callable[[S, bytes, Context], Awaitable[Resp]]:
        @functools.wraps(handler)
        async def wrapper(servicer: S, request: bytes, context: Context) -> Resp:
            return await servicer.runtime.call(
                method,
                scope,
                lambda decoded, principal, project_id: handler(
                    servicer, cast(Req, decoded), context, principal, project_id
                ),
                request,
                context,
            )

        return wrapper

    return decorate


StreamHandler = Callable[[S, Req, Context, Principal, int], AsyncGenerator[Resp, None]]


def stream_rpc(
    method: str, scope: str
) -> Callable[[StreamHandler[S, Req, Resp]], Callable[[S, bytes, Context], AsyncIterator[Resp]]]:
    """Makes the async generator `handler(self, request, context, principal, project_id)` the server-streaming gRPC
    method `method`, requiring `scope`.

    The decorated method takes the request's bytes; `handler` gets them decoded as the method's request type, and
    the request's resolved project.
    """

    def decorate(
        handler: StreamHandler[S, Req, Resp],
    ) -> Callable[[S, bytes, Context], AsyncIterator[Resp]]:
        @functools.wraps(handler)
        async def wrapper(servicer: S, raw: bytes, context: Context) -> AsyncIterator[Resp]:
            runtime = servicer.runtime
            call = runtime.open_stream(method)
            try:
                principal = runtime.authorize(context, scope)
                call.principal = principal.name
                request = cast(Req, runtime.decode(method, raw))
                call.request = request
                call.project_id = runtime.project_of(request, principal)
                stream = handler(servicer, request, context, principal, call.project_id)
                async with contextlib.aclosing(stream) as messages:
                    async for message in messages:
                        call.sent()
                        yield message
            except (asyncio.CancelledError, GeneratorExit):
                # The caller cancelled or went away (GeneratorExit: closed while a message was being sent).
                call.close("CANCELLED")
                raise
            except Exception as exc:
                code, details = runtime.status_for(method, exc)
                call.close(code.name, error=details)
                await context.abort(code, details)
            else:
                call.close("OK")

        return wrapper

    return decorate


_STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ServiceStopping, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (TokenRejected, grpc.StatusCode.UNAUTHENTICATED),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (OutOfRange, grpc.StatusCode.OUT_OF_RANGE),
    (FellBehind, grpc.StatusCode.UNAVAILABLE),
)


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def add_service(server: grpc.aio.Server, servicer: HasRuntime) -> None:
    """Registers `servicer` on `server` for every method of its runtime's service, with no request deserializer.

    The servicer's methods (decorated with `rpc` or `stream_rpc`) receive the request's bytes and decode them after
    authorizing the caller. This replaces the generated `add_..._to_server`, which has grpc decode first.

    Raises:
        TypeError: the service has a client-streaming method (none is decorated for it), or the servicer lacks one.
    """
    service = servicer.runtime.service
    handlers: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
    for method in service.methods:
        behaviour = getattr(servicer, method.name, None)
        if behaviour is None:
            raise TypeError(f"{type(servicer).__name__} does not implement {method.full_name}")
        serialize = GetMessageClass(method.output_type).SerializeToString
        if method.client_streaming and method.server_streaming:
            make = grpc.stream_stream_rpc_method_handler
        elif method.client_streaming:
            raise TypeError(f"{method.full_name} is client-streaming only; no such method is served")
        elif method.server_streaming:
            make = grpc.unary_stream_rpc_method_handler
        else:
            make = grpc.unary_unary_rpc_method_handler
        handlers[method.name] = make(behaviour, request_deserializer=None, response_serializer=serialize)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(service.full_name, handlers),))
    # Registered methods are matched by gRPC core without the generic lookup, as the generated code does too.
    # grpc-stubs predates the method.
    server.add_registered_method_handlers(service.full_name, handlers)  # type: ignore[attr-defined]


class RpcRuntime:
    """The cross-cutting part of every RPC of `service`, shared by the servicer's methods.

    Args:
        authenticator: the API keys.
        metrics: where the RPCs are counted.
        service: the gRPC service the servicer implements; its methods' request types decode the requests.
        projects: the projects the service serves, and its default project.

    Raises:
        TypeError: a request type of the service has no `project_id` field.
    """

    def __init__(
        self, authenticator: Authenticator, metrics: ServiceMetrics, service: ServiceDescriptor, projects: Projects
    ) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        self._projects = projects
        self.service = service
        self._request_types: dict[str, type[Message]] = {
            method.name: GetMessageClass(method.input_type) for method in service.methods
        }
        for method in service.methods:
            if "project_id" not in method.input_type.fields_by_name:
                raise TypeError(f"{method.input_type.full_name} has no project_id field")
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._in_flight: dict[str, Gauge] = {}

    async def call(
        self,
        method: str,
        scope: str,
        invoke: Callable[[Message, Principal, int], Awaitable[Resp]],
        raw: bytes,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Resp:
        """Authorizes the caller for `scope`, decodes `raw`, resolves its project, runs `invoke(request, principal,
        project_id)`, and maps, logs and counts the outcome."""
        started = time.perf_counter()
        user = ""
        principal_name = ""
        project_id = 0
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self._metrics.rpc_in_flight.labels(method)
        in_flight.inc()
        try:
            principal = self.authorize(context, scope)
            principal_name = principal.name
            request = self.decode(method, raw)
            user = getattr(request, "user_id", "")
            project_id = self.project_of(request, principal)
            response = await invoke(request, principal, project_id)
        except asyncio.CancelledError:
            self._finish(method, "CANCELLED", started, user, principal_name, project_id)
            raise
        except Exception as exc:
            code, message = self.status_for(method, exc)
            self._finish(method, code.name, started, user, principal_name, project_id, error=message)
            await context.abort(code, message)
        finally:
            in_flight.dec()
        self._finish(method, "OK", started, user, principal_name, project_id)
        return response

    def project_of(self, request: Message, principal: Principal) -> int:
        """The project `request` acts on, resolved for `principal` (see `server.validation.resolve_project`)."""
        requested: int = getattr(request, "project_id", 0)  # every request type has it (checked in __init__)
        return resolve_project(requested, principal, self._projects)

    def decode(self, method: str, raw: bytes) -> Message:
        """`raw` decoded as `method`'s request type; InvalidArgument when it is not one (malformed protobuf, a
        string field that is not UTF-8, nesting past the parser's limit)."""
        request_type = self._request_types[method]
        try:
            return request_type.FromString(raw)
        except DecodeError:
            name = request_type.DESCRIPTOR.full_name
            raise InvalidArgument(
                "request", f"is not a valid {name} (malformed protobuf, or a string field that is not UTF-8)"
            ) from None

    def open_stream(self, method: str) -> StreamCall:
        """Starts the bookkeeping of one server-streaming call (in-flight gauge, clock); the caller sets its
        `request` once decoded."""
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self._metrics.rpc_in_flight.labels(method)
        return StreamCall(self, method, in_flight)

    def _close_stream(self, call: StreamCall, code: str, error: str | None) -> None:
        elapsed = time.perf_counter() - call.started
        self._metrics.rpc_requests.labels(call.method, code).inc()
        self._metrics.stream_duration.labels(call.method, code).observe(elapsed)
        if call.messages:
            self._metrics.stream_messages.labels(call.method).inc(call.messages)
        fields: dict[str, Any] = {
            "method": call.method,
            "code": code,
            "duration_ms": round(elapsed * 1000, 3),
            "messages": call.messages,
        }
        user = getattr(call.request, "user_id", "")
        if user:
            fields["user"] = user_ref(user)
        order_id = getattr(call.request, "order_id", "")
        if order_id:
            fields["order_id"] = order_id[:256]
        if call.project_id:
            fields["project_id"] = call.project_id
        if call.principal:
            fields["principal"] = call.principal
        if error is not None:
            fields["error"] = error
        log.info("rpc", **fields)

    def authorize(self, context: grpc.aio.ServicerContext[Any, Any], scope: str) -> Principal:
        """The caller's principal, if its API key has `scope`; raises what the caller should be answered."""
        authorization = None
        for key, value in context.invocation_metadata() or ():
            if key == "authorization":
                authorization = value if isinstance(value, str) else value.decode(errors="replace")
                break
        principal = self._authenticator.authenticate(authorization)
        if principal is None:
            message = "missing API key" if authorization is None else "unknown or malformed API key"
            raise _Denied(grpc.StatusCode.UNAUTHENTICATED, f"{message}: send 'authorization: Bearer <key>'")
        if scope not in principal.scopes:
            raise _Denied(grpc.StatusCode.PERMISSION_DENIED, f"API key '{principal.name}' lacks the '{scope}' scope")
        return principal

    def status_for(self, method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
        """The gRPC status and message for an exception raised by a handler (logged when unexpected)."""
        if isinstance(exc, _Denied):
            return exc.code, str(exc)
        for error_type, code in _STATUS_BY_ERROR:
            if isinstance(exc, error_type):
                if isinstance(exc, StoreUnavailable):
                    self._metrics.store_unavailable.labels(method).inc()
                    log.warning("store_unavailable", method=method, error=str(exc))
                return code, str(exc)
        log.error("rpc_internal_error", method=method, exc_info=exc)
        return grpc.StatusCode.INTERNAL, "internal error; the service logged the details"

    def _finish(
        self,
        method: str,
        code: str,
        started: float,
        user: str,
        principal: str,
        project_id: int,
        error: str | None = None,
    ) -> None:
        elapsed = time.perf_counter() - started
        children = self._children.get((method, code))
        if children is None:
            children = (
                self._metrics.rpc_requests.labels(method, code),
                self._metrics.rpc_duration.labels(method, code),
            )
            self._children[(method, code)] = children
        children[0].inc()
        children[1].observe(elapsed)
        fields: dict[str, Any] = {"method": method, "code": code, "duration_ms": round(elapsed * 1000, 3)}
        if user:
            fields["user"] = user_ref(user)
        if project_id:
            fields["project_id"] = project_id
        if principal:
            fields["principal"] = principal
        if error is not None:
            fields["error"] = error
        log.info("rpc", **fields)


class StreamCall:
    """One server-streaming call's bookkeeping: counted in flight from `RpcRuntime.open_stream` to `close`."""

    __slots__ = (
        "_closed",
        "_in_flight",
        "_runtime",
        "messages",
        "method",
        "principal",
        "project_id",
        "request",
        "started",
    )

    def __init__(self, runtime: RpcRuntime, method: str, in_flight: Gauge) -> None:
        self._runtime = runtime
        self.method = method
        self.request: object = None
        self.principal = ""
        self.project_id = 0
        self.messages = 0
        self.started = time.perf_counter()
        self._in_flight = in_flight
        self._closed = False
        in_flight.inc()

    def sent(self) -> None:
        self.messages += 1

    def close(self, code: str, *, error: str | None = None) -> None:
        """Records the outcome once: metrics and the stream's log line."""
        if self._closed:
            return
        self._closed = True
        self._in_flight.dec()
        self._runtime._close_stream(self, code, error)


def grpc_server_options(settings: Settings) -> list[tuple[str, int]]:
    """The gRPC server's channel arguments.

    `grpc.server.max_pending_requests` and `..._hard_limit` bound gRPC core's backlog of calls that arrived but
    that the server's loop has not picked up yet (`src/core/server/server.h`, defaults 1000 and 3000): past the
    first, new calls are refused at random ("Too many pending requests for this server"), and all past the
    second. grpc.aio picks up one call per loop turn, so a reconnect storm of thousands of GetOrderStatus streams
    fills that backlog within milliseconds; the defaults would refuse part of it.

    `grpc.so_reuseport` (SO_REUSEPORT, on by default in gRPC core) is off, so that a second service started on the
    port by mistake fails to bind instead of silently taking half its connections; it is on only for the workers of
    a group (`server.group`), whose parent holds the port so that no other process can join it.
    """
    return [
        ("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0),
        ("grpc.server.max_pending_requests", settings.grpc_max_pending_requests),
        ("grpc.server.max_pending_requests_hard_limit", settings.grpc_max_pending_requests_hard_limit),
    ]
