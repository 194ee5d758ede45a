"""What every RPC goes through: authentication, the scope check, the status mapping, one log line and metrics.

`rpc` decorates a servicer method; the servicer's `runtime` (an RpcRuntime) does the work. Domain errors
(server.errors) become gRPC statuses here and only here; anything unexpected is logged with its traceback and
answered INTERNAL with no details on the wire.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol, TypeVar

import grpc
import structlog
from prometheus_client import Counter, Gauge, Histogram

from server.auth import Authenticator, Principal
from server.errors import FailedPrecondition, IdempotencyConflict, InvalidArgument, StoreUnavailable
from server.logs import user_ref
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


_STATUS_BY_ERROR: tuple[tuple[type[Exception], grpc.StatusCode], ...] = (
    (InvalidArgument, grpc.StatusCode.INVALID_ARGUMENT),
    (IdempotencyConflict, grpc.StatusCode.ALREADY_EXISTS),
    (FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (StoreUnavailable, grpc.StatusCode.UNAVAILABLE),
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
            principal = self._authorize(context, scope)
            principal_name = principal.name
            response = await invoke(principal)
        except asyncio.CancelledError:
            self._finish(method, "CANCELLED", started, user, principal_name)
            raise
        except Exception as exc:
            code, message = self._status_for(method, exc)
            self._finish(method, code.name, started, user, principal_name, error=message)
            await context.abort(code, message)
        finally:
            in_flight.dec()
        self._finish(method, "OK", started, user, principal_name)
        return response

    def _authorize(self, context: grpc.aio.ServicerContext[Any, Any], scope: str) -> Principal:
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

    def _status_for(self, method: str, exc: Exception) -> tuple[grpc.StatusCode, str]:
        if isinstance(exc, _Denied):
            return exc.code, str(exc)
        for error_type, code in _STATUS_BY_ERROR:
            if isinstance(exc, error_type):
                if code is grpc.StatusCode.UNAVAILABLE:
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
