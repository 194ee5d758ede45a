"""Exceptions raised by the entitlements client.

Every failed call raises a subclass of `EntitlementsError`; a raw `grpc.RpcError` never escapes the client.
The original error stays available as `__cause__`. The tree, with the gRPC status codes behind each class:

    EntitlementsError
    ├── InvalidArgumentError        INVALID_ARGUMENT: a field is missing or out of range. Fix the request.
    ├── AuthenticationError         UNAUTHENTICATED: no API key, or an unknown one.
    ├── PermissionDeniedError       PERMISSION_DENIED: the API key lacks the scope the RPC needs.
    ├── NotFoundError               NOT_FOUND
    ├── ConflictError               ALREADY_EXISTS: an idempotency key reused with a different request;
    │                               FAILED_PRECONDITION: e.g. a sku granted as another kind than it is held.
    ├── CallCancelledError          CANCELLED: the server or a proxy cancelled the call, or the client
    │                               was closed while the call was running.
    ├── UnimplementedError          UNIMPLEMENTED: the server does not offer this RPC (yet).
    ├── ServerError                 INTERNAL, UNKNOWN, DATA_LOSS and any other code.
    ├── CacheError                  An entitlement cache cannot answer a check (no call was made):
    │   ├── NotCachedError          the player is not in the cache, or its snapshot has not arrived yet;
    │   ├── StaleError              the cache cannot vouch for what it holds (its stream is down or silent);
    │   └── CacheClosedError        the cache was closed.
    └── RetryableError              Worth retrying later with the *same* idempotency key.
        ├── UnavailableError        UNAVAILABLE: the server or its store could not be reached in time.
        ├── DeadlineExceededError   DEADLINE_EXCEEDED: the call's deadline passed first.
        └── ResourceExhaustedError  RESOURCE_EXHAUSTED: a quota or rate limit was hit.

`CallCancelledError` is not named `CancelledError` so that it never shadows `asyncio.CancelledError`, which
keeps its usual meaning: the caller's own task was cancelled.
"""

from __future__ import annotations

import grpc

__all__ = [
    "AuthenticationError",
    "CacheClosedError",
    "CacheError",
    "CallCancelledError",
    "ConflictError",
    "DeadlineExceededError",
    "EntitlementsError",
    "InvalidArgumentError",
    "NotCachedError",
    "NotFoundError",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryableError",
    "ServerError",
    "StaleError",
    "UnavailableError",
    "UnimplementedError",
    "translate_rpc_error",
]


class EntitlementsError(Exception):
    """Base class of every error the client raises.

    Attributes:
        code: The gRPC status code the call ended with; None when the failure carried no status.
        details: The server's message, unchanged (empty when it sent none).
    """

    def __init__(self, details: str, *, code: grpc.StatusCode | None = None) -> None:
        super().__init__(f"{code.name}: {details}" if code is not None else details)
        self.code = code
        self.details = details

    @property
    def retryable(self) -> bool:
        """Whether calling again with the same idempotency key may succeed (see `RetryableError`)."""
        return isinstance(self, RetryableError)


class InvalidArgumentError(EntitlementsError):
    """INVALID_ARGUMENT: a field is missing or out of range; the message names it. Do not retry as is."""


class AuthenticationError(EntitlementsError):
    """UNAUTHENTICATED: the call carried no API key, or one the server does not know."""


class PermissionDeniedError(EntitlementsError):
    """PERMISSION_DENIED: the API key lacks the scope (`read` or `write`) the RPC needs."""


class NotFoundError(EntitlementsError):
    """NOT_FOUND: the thing the call refers to does not exist."""


class ConflictError(EntitlementsError):
    """ALREADY_EXISTS or FAILED_PRECONDITION: the request conflicts with what the server has stored.

    ALREADY_EXISTS: the idempotency key was already used for a different request. FAILED_PRECONDITION: the
    request cannot apply to the current state, e.g. granting a sku with a kind other than the one the player
    holds it as, or a grant that would overflow a consumable's total. Retrying the same call will not help.
    """


class CallCancelledError(EntitlementsError):
    """CANCELLED: the server or a proxy in between cancelled the call, or the client was closed under it.

    Cancelling a call yourself by closing an order-status stream ends its iteration instead, and cancelling
    the task that awaits a call raises `asyncio.CancelledError` as usual.
    """


class UnimplementedError(EntitlementsError):
    """UNIMPLEMENTED: the server does not implement this RPC (GetOrderStatus in the first versions)."""


class ServerError(EntitlementsError):
    """INTERNAL, UNKNOWN, DATA_LOSS or any other code without a class of its own: a server-side fault."""


class CacheError(EntitlementsError):
    """An entitlement cache cannot answer a check from what it holds; no call was made (`code` is None)."""


class NotCachedError(CacheError):
    """The player is not in the cache, or its first snapshot has not arrived yet: ask the service instead (or add
    the player and wait)."""


class StaleError(CacheError):
    """The cache cannot vouch for what it holds: it has not heard from the service for longer than its
    `max_staleness`, its stream is down and not yet resumed, or this player is being read again after a missed
    change. It answers again as soon as the stream is back; meanwhile ask the service.

    Attributes:
        staleness_s: How long, in seconds, since the cache last heard from the service.
    """

    def __init__(self, details: str, *, staleness_s: float) -> None:
        super().__init__(details)
        self.staleness_s = staleness_s


class CacheClosedError(CacheError):
    """The cache was closed; it answers no more checks."""


class RetryableError(EntitlementsError):
    """A transient failure: the same call, with the same idempotency key, may succeed later.

    The client already retries UNAVAILABLE by its `RetryPolicy`; seeing this error means those attempts ran
    out, or the code is not in the policy.
    """


class UnavailableError(RetryableError):
    """UNAVAILABLE: the server, or the store behind it, could not be reached in time."""


class DeadlineExceededError(RetryableError):
    """DEADLINE_EXCEEDED: the deadline passed before the call finished; a write may have applied or not."""


class ResourceExhaustedError(RetryableError):
    """RESOURCE_EXHAUSTED: a quota, rate limit or message size limit was hit."""


_ERROR_CLASSES: dict[grpc.StatusCode, type[EntitlementsError]] = {
    grpc.StatusCode.INVALID_ARGUMENT: InvalidArgumentError,
    grpc.StatusCode.UNAUTHENTICATED: AuthenticationError,
    grpc.StatusCode.PERMISSION_DENIED: PermissionDeniedError,
    grpc.StatusCode.NOT_FOUND: NotFoundError,
    grpc.StatusCode.ALREADY_EXISTS: ConflictError,
    grpc.StatusCode.FAILED_PRECONDITION: ConflictError,
    grpc.StatusCode.CANCELLED: CallCancelledError,
    grpc.StatusCode.UNIMPLEMENTED: UnimplementedError,
    grpc.StatusCode.UNAVAILABLE: UnavailableError,
    grpc.StatusCode.DEADLINE_EXCEEDED: DeadlineExceededError,
    grpc.StatusCode.RESOURCE_EXHAUSTED: ResourceExhaustedError,
}


def translate_rpc_error(exc: grpc.RpcError) -> EntitlementsError:
    """Returns the `EntitlementsError` subclass instance that stands for a failed gRPC call.

    Callers raise the result with `raise translate_rpc_error(exc) from exc`, so the gRPC error stays
    reachable as `__cause__`.

    Args:
        exc: An error raised by a sync (`grpc.Call`) or asyncio (`grpc.aio.AioRpcError`) call.

    Returns:
        An instance of the class the error's status code maps to (see the module docstring); `ServerError`
        for codes without a class of their own and for errors that carry no status at all.
    """
    # The base grpc.RpcError has no code()/details() at run time (the stubs claim otherwise); the errors
    # raised by calls (sync rendezvous objects, AioRpcError) do.
    code_method = getattr(exc, "code", None)
    details_method = getattr(exc, "details", None)
    code = code_method() if callable(code_method) else None
    details = details_method() if callable(details_method) else None
    if not isinstance(code, grpc.StatusCode):
        return ServerError(str(details or exc))
    error_class = _ERROR_CLASSES.get(code, ServerError)
    return error_class(str(details or ""), code=code)
