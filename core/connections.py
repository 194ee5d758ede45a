"""The Redis client both processes use, and the one place Redis failures become `StoreUnavailable`.

`connect` builds a standalone or Cluster client from a URL: every command has a socket timeout, a burst beyond
the pool size queues for a connection (within the timeout), and connection errors are retried a few times with
exponential backoff (redis-py's retry policy object below), all inside the caller's own overall timeout, which
`bounded` enforces: a call never hangs on a dead Redis. Retrying a write script is safe because each one carries
its idempotency key (or, for the event log, its event id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, TypeVar

import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from core.errors import StoreUnavailable

T = TypeVar("T")

#: A connected client: standalone or Cluster. Owned by the composition root that made it.
RedisClient = aioredis.Redis | RedisCluster

#: Error replies that say Redis cannot serve now (loading, busy script, failover, resharding), not that the
#: command was wrong: the caller may retry.
TRANSIENT_REPLIES = frozenset({"LOADING", "BUSY", "MASTERDOWN", "TRYAGAIN", "CLUSTERDOWN", "READONLY"})


def retry_policy() -> Retry:
    """Up to 3 retries of a command on connection errors, 20 ms doubling to at most 250 ms, with jitter."""
    return Retry(ExponentialWithJitterBackoff(base=0.02, cap=0.25), retries=3)


def connect(url: str, *, cluster: bool, timeout_s: float, max_connections: int) -> RedisClient:
    """Returns a client for `url` (`redis://`, `rediss://` or `unix://`); connections open lazily."""
    errors: list[type[Exception]] = [
        redis_errors.ConnectionError,
        redis_errors.TimeoutError,
        redis_errors.BusyLoadingError,
    ]
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


def reply_text(value: bytes | str, errors: str = "strict") -> str:
    """A Redis reply (or one of its fields) as text: the clients do not decode responses, so it is bytes, or str
    where a caller passed text through.

    Args:
        errors: how undecodable bytes are handled, as in `bytes.decode` ("replace" for fields a client wrote).

    Raises:
        UnicodeDecodeError: the bytes are not UTF-8 and `errors` is "strict".
    """
    return value.decode(errors=errors) if isinstance(value, bytes) else str(value)


def reply_code(exc: redis_errors.ResponseError) -> str:
    """The first word of an error reply (`NOGROUP`, `BUSYGROUP`, a script's own code, ...)."""
    words = str(exc).split(maxsplit=1)
    return words[0] if words else ""


async def bounded(
    operation: Awaitable[T], timeout_s: float, *, self_bounded: bool = False, refused: str | None = None
) -> T:
    """Awaits a Redis operation within `timeout_s`, turning every failure that is Redis's rather than the
    command's into `StoreUnavailable`.

    `self_bounded`: the operation enforces `timeout_s` itself and raises TimeoutError past it (a read batcher
    does, once per round trip rather than once per read).
    `refused`: what the operation is ("the append"), for a caller to which every error reply means the same as
    Redis being unavailable (out of memory, a replica that refuses writes): nothing was done, try later. Such a
    reply then becomes `StoreUnavailable("Redis refused <refused>: <error class>")`.

    Raises:
        StoreUnavailable: no answer in time, a connection or cluster error, a transient error reply, or with
            `refused` any error reply.
        redis.exceptions.ResponseError: without `refused`, any other error reply (a script's own error, a wrong
            command), for the caller to translate.
    """
    try:
        if self_bounded:
            return await operation
        async with asyncio.timeout(timeout_s):
            return await operation
    except TimeoutError as exc:
        raise StoreUnavailable(f"Redis did not answer within {timeout_s:g} s") from exc
    except redis_errors.ResponseError as exc:
        code = reply_code(exc)
        if code in TRANSIENT_REPLIES:
            raise StoreUnavailable(f"Redis is unavailable: {code}") from exc
        if refused is not None:
            raise StoreUnavailable(f"Redis refused {refused}: {type(exc).__name__}") from exc
        raise
    except (redis_errors.RedisError, OSError) as exc:
        # ConnectionError, TimeoutError, BusyLoadingError, cluster errors: all transient from the caller's side.
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc
