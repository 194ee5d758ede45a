"""The clients game servers use: `AsyncEntitlementsClient` (asyncio) and `EntitlementsClient` (blocking).

Both build their requests with the same builders (`_requests`), send the same metadata and channel options
(`_config`) and translate every `grpc.RpcError` into `entitlements.errors`; each method is a thin call.
"""

from entitlements.client._async import AsyncEntitlementsClient
from entitlements.client._async_stream import AsyncOrderStatusStream
from entitlements.client._async_watch import AsyncWatchStream
from entitlements.client._base import DEFAULT_RETRY_POLICY, DEFAULT_TIMEOUT_S
from entitlements.client._cache import AsyncEntitlementCache
from entitlements.client._cache_blocking import EntitlementCache
from entitlements.client._cache_state import CacheCounters, CachedCheck
from entitlements.client._cache_stream import CacheState
from entitlements.client._follow import AsyncOrderFollower, FollowPolicy, OrderFollower
from entitlements.client._sync import EntitlementsClient, OrderStatusStream

__all__ = [
    "DEFAULT_RETRY_POLICY",
    "DEFAULT_TIMEOUT_S",
    "AsyncEntitlementCache",
    "AsyncEntitlementsClient",
    "AsyncOrderFollower",
    "AsyncOrderStatusStream",
    "AsyncWatchStream",
    "CacheCounters",
    "CacheState",
    "CachedCheck",
    "EntitlementCache",
    "EntitlementsClient",
    "FollowPolicy",
    "OrderFollower",
    "OrderStatusStream",
]
