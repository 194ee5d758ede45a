"""The service's exceptions. Each domain error becomes one gRPC status in one place (`server.rpc`).

StoreUnavailable (core.errors)  UNAVAILABLE: Redis could not be reached or answered too slowly
PortInUse (core.errors)         a port the service would listen on is taken; the process refuses to start
EntitlementsError
├── ConfigError                 bad settings; the process refuses to start (also a core.errors.ConfigError)
├── InvalidArgument             INVALID_ARGUMENT: a request field is wrong; `field` names it
├── PermissionDenied            PERMISSION_DENIED: the API key may not act on the request's project
├── IdempotencyConflict         ALREADY_EXISTS: the key was used for a different request
├── FailedPrecondition          FAILED_PRECONDITION: valid request, but the stored state forbids it
├── ServiceStopping             UNAVAILABLE: this replica is shutting down; the call may be retried on another
├── NotFound                    NOT_FOUND: the payment provider does not know the object (an order)
├── TokenRejected               UNAUTHENTICATED: the payment provider rejected the player's token
├── CapacityExceeded            RESOURCE_EXHAUSTED: a per-replica limit was reached (order trackers)
├── OutOfRange                  OUT_OF_RANGE: a watch cursor older than the history kept, or of another store
├── FellBehind                  UNAVAILABLE: a watch stream's caller read too slowly; it resumes with its cursor
├── InvalidEvent                an event-stream entry cannot be applied as it is (the consumer dead-letters it)
└── SkuNotInCatalog             an order line's sku is unknown to its project's catalog, even after a refresh (the
                                consumer retries the event, then dead-letters it)
"""

from __future__ import annotations

from core import errors as core_errors
from core.errors import PortInUse, StoreUnavailable

__all__ = [
    "CapacityExceeded",
    "ConfigError",
    "EntitlementsError",
    "FailedPrecondition",
    "FellBehind",
    "IdempotencyConflict",
    "InvalidArgument",
    "InvalidEvent",
    "NotFound",
    "OutOfRange",
    "PermissionDenied",
    "PortInUse",
    "ServiceStopping",
    "SkuNotInCatalog",
    "StoreUnavailable",
    "TokenRejected",
]


class EntitlementsError(Exception):
    """Base class of every error the service raises on purpose."""


class ConfigError(EntitlementsError, core_errors.ConfigError):
    """The configuration is invalid or unsafe."""


class InvalidArgument(EntitlementsError):
    """A request argument is invalid; nothing was written."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class PermissionDenied(EntitlementsError):
    """The caller's API key is valid but may not act on what the request names (another project)."""


class IdempotencyConflict(EntitlementsError):
    """An idempotency key was replayed with a request that differs from the first one."""


class FailedPrecondition(EntitlementsError):
    """The request is well-formed but conflicts with what is stored (e.g. a sku held as another kind)."""


class ServiceStopping(EntitlementsError):
    """The replica is shutting down; a long call it was serving may be reopened on another replica."""


class NotFound(EntitlementsError):
    """The payment provider does not know what the request names (an order in a project)."""


class TokenRejected(EntitlementsError):
    """The payment provider rejected the player token given in the request."""


class CapacityExceeded(EntitlementsError):
    """A limit of this replica was reached (for example the number of orders it tracks at once)."""


class OutOfRange(EntitlementsError):
    """A position the request names is outside what is kept (a watch cursor older than the feed's history, or
    issued by another store or project); nothing was read."""

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field


class FellBehind(EntitlementsError):
    """A stream's caller did not read its messages as fast as they came: the replica ended the stream rather than
    hold them without bound; reopening it with the last cursor received catches up."""


class InvalidEvent(EntitlementsError):
    """An event-stream entry is malformed or lacks what applying it needs; retrying cannot help."""


class SkuNotInCatalog(EntitlementsError):
    """An order line names a sku its project's catalog does not know, even after a refresh: never granted as a
    guess. Retrying can help (the catalog may learn it), so the consumer retries, then dead-letters the event."""

    def __init__(self, sku: str) -> None:
        super().__init__(f"sku not in catalog: {sku}")
        self.sku = sku
