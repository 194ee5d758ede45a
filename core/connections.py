"""The Redis client both processes use, and the one place Redis failures become `StoreUnavailable`.

`connect` builds a standalone or Cluster client from a URL: every command has a socket timeout, a burst beyond
the pool size queues for a connection (within the timeout; on a Cluster, `BlockingCluster` below does what
redis-py's asyncio cluster client does not), and connection errors are retried a few times with
exponential backoff (redis-py's retry policy object below), all inside the caller's own overall timeout, which
`bounded` enforces: a call never hangs on a dead Redis. Retrying a write script is safe because each one carries
its idempotency key (or, for the event log, its event id). Commands are packed by hiredis (`HiredisPacking`).
"""

from __future__ import annotations

import asyncio
import asyncio.selector_events
import asyncio.streams
import contextlib
import contextvars
from collections.abc import AsyncIterator, Awaitable, Iterator
from typing import Any, TypeVar, cast
from urllib.parse import urlsplit

import hiredis
import redis.asyncio as aioredis
import redis.asyncio.connection
import redis.exceptions as redis_errors
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialWithJitterBackoff

from core.errors import ConfigError, StoreUnavailable

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
    """Returns a client for `url` (`redis://`, `rediss://` or `unix://`); connections open lazily.

    For a Cluster, `url` may name several seed nodes, comma-separated (`redis://:pw@10.0.0.1:6379,10.0.0.2:6379`):
    the client discovers the cluster from the first that answers, so a process can start while one seed is down.
    The first is a full URL (scheme, credentials, TLS, options); the others give host and port (`host:port`, or a
    URL whose host and port are taken), and share the first one's settings.

    Raises:
        ConfigError: a malformed URL (named as `REDIS_URL`), or several seeds without `cluster`.
    """
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
    first, *others = [part.strip() for part in url.split(",")]
    if others and not cluster:
        raise ConfigError(
            "REDIS_URL names several comma-separated seeds, which only a Redis Cluster has: set "
            "REDIS_CLUSTER=true, or give one URL"
        )
    try:
        if cluster:
            # Each node's own limit leaves room for the pub/sub connections, which hold no permit.
            options["max_connections"] = max_connections + PUBSUB_HEADROOM
            if others:
                options["startup_nodes"] = [ClusterNode(*seed_address(seed)) for seed in others]
            client = cast("BlockingCluster", BlockingCluster.from_url(first, **options))
            client.limit_calls(max_connections, wait_s=timeout_s)
            client.pack_with_hiredis()
            return client
        # A blocking pool makes a burst of calls wait for a free connection (within the timeout) instead of
        # failing at once with MaxConnectionsError, as the default pool does when it is exhausted.
        pool = aioredis.BlockingConnectionPool.from_url(url, timeout=timeout_s, health_check_interval=30, **options)
        pool.connection_class = hiredis_packed(pool.connection_class)  # no connection is open yet
    except ValueError as exc:  # redis-py's word for a URL it cannot use
        raise ConfigError(f"REDIS_URL is not usable: {exc}") from None
    return aioredis.Redis.from_pool(pool)


class HiredisPacking:
    """Packs commands with hiredis, as redis-py's synchronous client does when hiredis is installed.

    redis-py's asyncio connections pack in Python, joining the growing buffer once per argument: fine for a
    handful of arguments, quadratic in their number (about 1.4 ms for the 200 arguments of a CheckEntitlements
    script of 100 pairs on the benchmark machine, where hiredis takes about 0.1 ms), and a few µs on every Grant.
    The bytes are the same (the client's encoding is redis-py's default, UTF-8); a first argument with spaces
    ("CLIENT SETNAME") is split as redis-py does, and an argument of a type Redis cannot take (None, a bool) is
    redis-py's `DataError`.
    """

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise redis_errors.DataError(f"Invalid input of type: {exc}") from exc


_PACKED: dict[type[Any], type[Any]] = {}


def hiredis_packed(connection_class: type[Any]) -> type[Any]:
    """`connection_class` (a redis-py asyncio connection class) with `HiredisPacking`."""
    if issubclass(connection_class, HiredisPacking):
        return connection_class
    packed = _PACKED.get(connection_class)
    if packed is None:
        packed = _PACKED[connection_class] = type(
            f"HiredisPacked{connection_class.__name__}", (HiredisPacking, connection_class), {}
        )
    return packed


def seed_address(seed: str) -> tuple[str, int]:
    """(host, port) of one more seed of a Cluster: `host:port`, or a `redis://`/`rediss://` URL.

    Raises:
        ValueError: neither, or no port.
    """
    parsed = urlsplit(seed if "://" in seed else f"redis://{seed}")
    if parsed.scheme not in ("redis", "rediss") or not parsed.hostname:
        raise ValueError(f"a Redis Cluster seed must be host:port or a redis:// URL, not {seed!r}")
    try:
        port = parsed.port or 6379
    except ValueError:
        raise ValueError(f"a Redis Cluster seed has a bad port: {seed!r}") from None
    return parsed.hostname, port


#: Connections per Cluster node beyond `max_connections`, for the pub/sub subscriptions (a sharded subscription
#: holds one connection on each node it listens to, outside the calls' permits).
PUBSUB_HEADROOM = 8

#: Set in a task while it holds one of a `BlockingCluster`'s permits: a pipeline that falls back to single
#: commands after a redirection must not wait for a second permit while holding the first.
_holding_permit: contextvars.ContextVar[bool] = contextvars.ContextVar("holding_redis_permit", default=False)


class BlockingCluster(RedisCluster):
    """redis-py's asyncio `RedisCluster`, whose calls wait for a free connection instead of failing.

    redis-py's asyncio cluster client raises `MaxConnectionsError` at once when a node's pool is full (its
    standalone client has `BlockingConnectionPool`; the cluster client has no such pool: redis-py#2522, #3135).
    Here every command and every pipeline first takes one of `max_connections` permits, waiting for one at most
    the Redis timeout, then raises redis-py's `ConnectionError("No connection available.")`, as the standalone
    blocking pool does; `bounded` turns that into `StoreUnavailable`. A call holds one connection per node it
    touches, so with as many permits as each node has connections no node's pool can be exhausted by calls.

    Every call also waits for the client's (re)discovery of the cluster's nodes (`initialize`, under redis-py's
    lock) before it runs: with redis-py 8.1, commands that start together on a client that has not discovered the
    cluster yet fail now and then with `AttributeError` from a connection another task is setting up.
    """

    _permits: asyncio.Semaphore | None = None
    _permit_wait_s: float = 1.0

    def pack_with_hiredis(self) -> None:
        """Makes every connection the client opens pack with hiredis (`HiredisPacking`): the nodes it knows now and
        those it discovers, which take the client's connection settings. Called before any connection opens."""
        settings = self.nodes_manager.connection_kwargs
        settings["connection_class"] = hiredis_packed(
            settings.get("connection_class", redis.asyncio.connection.Connection)
        )
        for node in self.nodes_manager.startup_nodes.values():
            node.connection_class = hiredis_packed(node.connection_class)

    def limit_calls(self, permits: int, *, wait_s: float) -> None:
        """At most `permits` calls in flight; a call waits at most `wait_s` for one."""
        self._permits = asyncio.Semaphore(permits)
        self._permit_wait_s = wait_s

    @contextlib.asynccontextmanager
    async def permit(self) -> AsyncIterator[None]:
        """Holds one permit (none when this task holds one already, or calls are not limited)."""
        if self._permits is None or _holding_permit.get():
            yield
            return
        try:
            async with asyncio.timeout(self._permit_wait_s):
                await self._permits.acquire()
        except TimeoutError:
            raise redis_errors.ConnectionError("No connection available.") from None
        token = _holding_permit.set(True)
        try:
            yield
        finally:
            _holding_permit.reset(token)
            self._permits.release()

    async def execute_command(self, *args: Any, **kwargs: Any) -> Any:
        async with self.permit():
            await self.initialize()
            with torn_connections_raised_as_connection_errors():
                return await super().execute_command(*args, **kwargs)

    async def rediscover(self) -> None:
        """Reads the cluster's nodes and slot map again now (redis-py does it by itself only after a command met a
        MOVED reply or a connection error; a pub/sub subscriber sends no such command)."""
        await self.initialize()
        await self.nodes_manager.initialize()

    def pipeline(self, transaction: Any | None = None, shard_hint: Any | None = None) -> ClusterPipeline:
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # refused by redis-py, as it says
        # Built as RedisCluster.pipeline builds its ClusterPipeline (whose typing leaves an attribute abstract).
        return _BlockingPipeline(self, transaction)  # type: ignore[abstract]


class _BlockingPipeline(ClusterPipeline):
    """A pipeline of a `BlockingCluster`: one permit for the whole of `execute`."""

    async def execute(self, raise_on_error: bool = True, allow_redirections: bool = True) -> list[Any]:
        client = self.cluster_client
        assert isinstance(client, BlockingCluster)
        async with client.permit():
            await client.initialize()
            with torn_connections_raised_as_connection_errors():
                return await super().execute(raise_on_error, allow_redirections)


#: Where an error raised on a connection closed under its user comes from: redis-py's connection, or the asyncio
#: stream and transport beneath it.
_CONNECTION_SOURCES = frozenset(
    {redis.asyncio.connection.__file__, asyncio.streams.__file__, asyncio.selector_events.__file__}
)


def torn_connection(exc: BaseException) -> bool:
    """Whether `exc` is how redis-py (8.1) fails a command on a connection that was closed while the command was
    being sent: an `AttributeError` (`'NoneType' object has no attribute 'writelines'`: another task disconnected
    it, as the cluster client does to a node's connections after a failure or a topology change) or a `TypeError`
    (the peer reset it: redis-py#4287), raised inside the connection code rather than as a `ConnectionError`.

    Seen when a Cluster primary is killed under load; left alone, the call would fail as a bug (`INTERNAL`)
    instead of `UNAVAILABLE`.
    """
    if not isinstance(exc, AttributeError | TypeError):
        return False
    frame, innermost = exc.__traceback__, None
    while frame is not None:
        innermost, frame = frame.tb_frame.f_code.co_filename, frame.tb_next
    return innermost in _CONNECTION_SOURCES


@contextlib.contextmanager
def torn_connections_raised_as_connection_errors() -> Iterator[None]:
    """Re-raises a `torn_connection` error as redis-py's `ConnectionError` (what it is), which every caller already
    handles as Redis being unavailable; nothing was sent on that connection, which reconnects on its next use."""
    try:
        yield
    except (AttributeError, TypeError) as exc:
        if not torn_connection(exc):
            raise
        raise redis_errors.ConnectionError(f"connection closed while in use ({type(exc).__name__}: {exc})") from exc


async def cluster_primaries(redis: RedisCluster) -> list[ClusterNode]:
    """The cluster's primaries, discovering the cluster first: before its first call a client knows no nodes, and
    `get_primaries()` alone would return none (a scan "of every node" would then see nothing)."""
    await redis.initialize()
    return list(redis.get_primaries())


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
        StoreUnavailable: no answer in time, a connection or cluster error (a connection closed under the
            command included: `torn_connection`), a transient error reply, or with `refused` any error reply.
        redis.exceptions.ResponseError: without `refused`, any other error reply (a script's own error, a wrong
            command), for the caller to translate.
    """
    try:
        # `torn_connections_raised_as_connection_errors`, inline: a generator-based context manager costs a few µs,
        # and every store call comes through here.
        try:
            if self_bounded:
                return await operation
            async with asyncio.timeout(timeout_s):
                return await operation
        except (AttributeError, TypeError) as exc:
            if not torn_connection(exc):
                raise
            raise redis_errors.ConnectionError(f"connection closed while in use ({type(exc).__name__}: {exc})") from exc
    except TimeoutError as exc:
        raise StoreUnavailable(f"Redis did not answer within {timeout_s:g} s") from exc
    except redis_errors.ResponseError as exc:
        code = reply_code(exc)
        if code in TRANSIENT_REPLIES:
            raise StoreUnavailable(f"Redis is unavailable: {code}") from exc
        if refused is not None:
            raise StoreUnavailable(f"Redis refused {refused}: {type(exc).__name__}") from exc
        raise
    except (redis_errors.RedisError, redis_errors.RedisClusterException, OSError) as exc:
        # ConnectionError, TimeoutError, BusyLoadingError, cluster errors (RedisClusterException, "cannot be
        # connected" while every seed is down, is not a RedisError): all transient from the caller's side.
        raise StoreUnavailable(f"Redis is unavailable: {type(exc).__name__}") from exc
