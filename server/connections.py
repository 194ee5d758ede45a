"""Builds the Redis client from the settings: standalone or Cluster, with timeouts and a retry policy.

Every command has a socket timeout, a burst beyond the pool size queues for a connection (within the timeout),
and connection errors are retried a few times with exponential backoff (the policy object below), all inside the
store's own overall timeout: a call never hangs on a dead Redis.
Retrying a write script is safe because each one carries its idempotency key.
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff
from redis.exceptions import BusyLoadingError, ConnectionError, TimeoutError

from server.store import RedisClient


def retry_policy() -> Retry:
    """Up to 3 retries of a command on connection errors, 20 ms doubling to at most 250 ms, with jitter."""
    return Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries=3)


def connect(url: str, *, cluster: bool, timeout_s: float, max_connections: int) -> RedisClient:
    """Returns a client for `url` (`redis://`, `rediss://` or `unix://`); connections open lazily."""
    errors: list[type[Exception]] = [ConnectionError, TimeoutError, BusyLoadingError]
    options: dict[str, Any] = {
        "socket_timeout": timeout_s,
        "socket_connect_timeout": timeout_s,
        "retry": retry_policy(),
        "retry_on_error": errors,
        "max_connections": max_connections,
    }
    if cluster:
        return RedisCluster.from_url(url, **options)
    # A blocking pool makes a burst of calls wait for a free connection (within the timeout) instead of failing
    # at once with MaxConnectionsError, as the default pool does when it is exhausted.
    pool = aioredis.BlockingConnectionPool.from_url(url, timeout=timeout_s, health_check_interval=30, **options)
    return aioredis.Redis.from_pool(pool)
