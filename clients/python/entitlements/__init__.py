"""Python client of the Xsolla entitlement service.

    from entitlements import AsyncEntitlementsClient

    async with AsyncEntitlementsClient("entitlements:50051", api_key=key, tls=True) as client:
        response = await client.grant(player_id, "gold_pack", quantity=100, idempotency_key="order-42:1")

`EntitlementsClient` is the blocking twin. `client.entitlement_cache(players)` keeps an in-process copy of some
players' entitlements, current through the service's WatchEntitlements stream (see `AsyncEntitlementCache`). Errors
are in `entitlements.errors`; the response messages and enums are re-exported here from the generated
`entitlements.v1.entitlements_pb2`.
"""

from entitlements._config import RetryPolicy, TLSConfig
from entitlements.client import (
    AsyncEntitlementCache,
    AsyncEntitlementsClient,
    AsyncOrderFollower,
    AsyncOrderStatusStream,
    CacheCounters,
    CachedCheck,
    CacheState,
    EntitlementCache,
    EntitlementsClient,
    FollowPolicy,
    OrderFollower,
    OrderStatusStream,
)
from entitlements.errors import (
    AuthenticationError,
    CacheClosedError,
    CacheError,
    CallCancelledError,
    ConflictError,
    DeadlineExceededError,
    EntitlementsError,
    InvalidArgumentError,
    NotCachedError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryableError,
    ServerError,
    StaleError,
    UnavailableError,
    UnimplementedError,
)
from entitlements.v1.entitlements_pb2 import (
    Charge,
    CheckEntitlementResponse,
    CheckEntitlementsResponse,
    Entitlement,
    EntitlementKind,
    GrantResponse,
    LedgerEntry,
    ListEntitlementsResponse,
    ListLedgerResponse,
    ListSubscriptionsResponse,
    OrderStatus,
    OrderStatusSource,
    OrderStatusUpdate,
    Period,
    RevokeResponse,
    Subscription,
    SubscriptionKind,
)

__all__ = [
    "AsyncEntitlementCache",
    "AsyncEntitlementsClient",
    "AsyncOrderFollower",
    "AsyncOrderStatusStream",
    "AuthenticationError",
    "CacheClosedError",
    "CacheCounters",
    "CacheError",
    "CacheState",
    "CachedCheck",
    "CallCancelledError",
    "Charge",
    "CheckEntitlementResponse",
    "CheckEntitlementsResponse",
    "ConflictError",
    "DeadlineExceededError",
    "Entitlement",
    "EntitlementCache",
    "EntitlementKind",
    "EntitlementsClient",
    "EntitlementsError",
    "FollowPolicy",
    "GrantResponse",
    "InvalidArgumentError",
    "LedgerEntry",
    "ListEntitlementsResponse",
    "ListLedgerResponse",
    "ListSubscriptionsResponse",
    "NotCachedError",
    "NotFoundError",
    "OrderFollower",
    "OrderStatus",
    "OrderStatusSource",
    "OrderStatusStream",
    "OrderStatusUpdate",
    "Period",
    "PermissionDeniedError",
    "ResourceExhaustedError",
    "RetryPolicy",
    "RetryableError",
    "RevokeResponse",
    "ServerError",
    "StaleError",
    "Subscription",
    "SubscriptionKind",
    "TLSConfig",
    "UnavailableError",
    "UnimplementedError",
]
