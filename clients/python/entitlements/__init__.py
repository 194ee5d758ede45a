"""Python client of the Xsolla entitlement service.

    from entitlements import AsyncEntitlementsClient

    async with AsyncEntitlementsClient("entitlements:50051", api_key=key, tls=True) as client:
        response = await client.grant(player_id, "gold_pack", quantity=100, idempotency_key="order-42:1")

`EntitlementsClient` is the blocking twin. Errors are in `entitlements.errors`; the response messages and
enums are re-exported here from the generated `entitlements.v1.entitlements_pb2`.
"""

from entitlements._config import RetryPolicy, TLSConfig
from entitlements.client import (
    AsyncEntitlementsClient,
    AsyncOrderFollower,
    AsyncOrderStatusStream,
    EntitlementsClient,
    FollowPolicy,
    OrderFollower,
    OrderStatusStream,
)
from entitlements.errors import (
    AuthenticationError,
    CallCancelledError,
    ConflictError,
    DeadlineExceededError,
    EntitlementsError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    RetryableError,
    ServerError,
    UnavailableError,
    UnimplementedError,
)
from entitlements.v1.entitlements_pb2 import (
    Charge,
    CheckEntitlementResponse,
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
    "AsyncEntitlementsClient",
    "AsyncOrderFollower",
    "AsyncOrderStatusStream",
    "AuthenticationError",
    "CallCancelledError",
    "Charge",
    "CheckEntitlementResponse",
    "ConflictError",
    "DeadlineExceededError",
    "Entitlement",
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
    "Subscription",
    "SubscriptionKind",
    "TLSConfig",
    "UnavailableError",
    "UnimplementedError",
]
