"""What every RPC goes through: authentication, the scope check, the status mapping, one log line and metrics.

`rpc` decorates a unary servicer method and `stream_rpc` a server-streaming one (an async generator); the
servicer's `runtime` (an RpcRuntime) does the work. Domain errors (server.errors) become gRPC statuses here and
only here; anything unexpected is logged with its traceback and answered INTERNAL with no details on the wire.
A stream gets one log line when it ends, with the number of messages sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from core.logs import user_ref
from server.auth import Authenticator, Principal
from server.errors import (
    CapacityExceeded,
    FailedPrecondition,
    IdempotencyConflict,
    InvalidArgument,
    NotFound,
    ServiceStopping,
    StoreUnavailable,
    TokenRejected,
)
from server.metrics import ServiceMetrics

log = structlog.get_logger("server.rpc")

Req = TypeVar("Req")
Resp = TypeVar("Resp")
Context = grpc.aio.ServicerContext[Any, Any]


class HasRuntime(Protocol):
    """A servicer whose methods are decorated with `rpc`."""

    runtime: RpcRuntime


S = TypeVar("S", bound=HasRuntime)


def rpc(
    method: str, scope: str
) -> Callable[[Callable[[S, Req, Context, Principal], Awaitable[Resp]]], Callable[[S, Req, Context], Awaitable[Resp]]]:
    """Makes `handler(self, request, context, principal)` the gRPC method `method`, requiring `scope`."""

    def decorate(
        handler: Callable[[S, Req, Context, Principal], Awaitable[Resp]],
    ) -> Callable[[S, Req, Context], Awaitable[Resp]]:
        @functools.wraps(handler)
        async def wrapper(servicer: S, request: Req, context: Context) -> Resp:
            return await servicer.runtime.call(
                method, scope, lambda principal: handler(servicer, request, context, principal), request, context
            )

        return wrapper

    return decorate


StreamHandler = Callable[[S, Req, Context, Principal], AsyncGenerator[Resp, None]]


def stream_rpc(
    method: str, scope: str
) -> Callable[[StreamHandler[S, Req, Resp]], Callable[[S, Req, Context], AsyncIterator[Resp]]]:
    """Makes the async generator `handler(self, request, context, principal)` the server-streaming gRPC method
    `method`, requiring `scope`."""

    def decorate(
        handler: StreamHandler[S, Req, Resp],
    ) -> Callable[[S, Req, Context], AsyncIterator[Resp]]:
        @functools.wraps(handler)
        async def wrapper(servicer: S, request: Req, context: Context) -> AsyncIterator[Resp]:
            runtime = servicer.runtime
            call = runtime.open_stream(method, request)
            try:
                principal = runtime.authorize(context, scope)
                call.principal = principal.name
                async with contextlib.aclosing(handler(servicer, request, context, principal)) as messages:
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
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
    (ServiceStopping, grpc.StatusCode.UNAVAILABLE),
    (NotFound, grpc.StatusCode.NOT_FOUND),
    (TokenRejected, grpc.StatusCode.UNAUTHENTICATED),
    (CapacityExceeded, grpc.StatusCode.RESOURCE_EXHAUSTED),
)


class _Denied(Exception):
    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


class RpcRuntime:
    """The cross-cutting part of every RPC, shared by the servicer's methods."""

    def __init__(self, authenticator: Authenticator, metrics: ServiceMetrics) -> None:
        self._authenticator = authenticator
        self._metrics = metrics
        self._children: dict[tuple[str, str], tuple[Counter, Histogram]] = {}
        self._in_flight: dict[str, Gauge] = {}

    async def call(
        self,
        method: str,
        scope: str,
        invoke: Callable[[Principal], Awaitable[Resp]],
        request: object,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Resp:
        """Authorizes the caller for `scope`, runs `invoke(principal)`, and maps, logs and counts the outcome."""
        started = time.perf_counter()
        user = getattr(request, "user_id", "")
        principal_name = ""
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self._metrics.rpc_in_flight.labels(method)
        in_flight.inc()
        try:
            principal = self.authorize(context, scope)
            principal_name = principal.name
            response = await invoke(principal)
        except asyncio.CancelledError:
            self._finish(method, "CANCELLED", started, user, principal_name)
            raise
        except Exception as exc:
            code, message = self.status_for(method, exc)
            self._finish(method, code.name, started, user, principal_name, error=message)
            await context.abort(code, message)
        finally:
            in_flight.dec()
        self._finish(method, "OK", started, user, principal_name)
        return response

    def open_stream(self, method: str, request: object) -> StreamCall:
        """Starts the bookkeeping of one server-streaming call (in-flight gauge, clock)."""
        in_flight = self._in_flight.get(method)
        if in_flight is None:
            in_flight = self._in_flight[method] = self._metrics.rpc_in_flight.labels(method)
        return StreamCall(self, method, request, in_flight)

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
        self, method: str, code: str, started: float, user: str, principal: str, error: str | None = None
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
        if principal:
            fields["principal"] = principal
        if error is not None:
            fields["error"] = error
        log.info("rpc", **fields)


class StreamCall:
    """One server-streaming call's bookkeeping: counted in flight from `RpcRuntime.open_stream` to `close`."""

    __slots__ = ("_closed", "_in_flight", "_runtime", "messages", "method", "principal", "request", "started")

    def __init__(self, runtime: RpcRuntime, method: str, request: object, in_flight: Gauge) -> None:
        self._runtime = runtime
        self.method = method
        self.request = request
        self.principal = ""
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
