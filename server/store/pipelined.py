"""Single-entitlement reads on one pipelined connection to a single Redis server (`PipelinedReads`).

redis-py's asyncio client spends several event-loop turns and a few hundred Python calls on each command (a task
per socket timeout, the pool's condition and timeout, observability hooks): on the benchmark machine about ten
times the CPU of the round trip itself. CheckEntitlement's `HGET` is the service's hottest command, so on a single
server it goes out on a connection of its own: every read writes its packed command (the reads of one event-loop
turn in one write) and awaits a future, and the connection's protocol hands each reply, parsed by hiredis, to the
oldest future waiting (Redis answers in order). No task, no lock, one timer per read.

The connection is one of the client's pool, taken out of it while in use: redis-py opened it (credentials,
database, client name), and the client's `aclose` closes it with the others. On a Redis Cluster, with TLS, or with
RESP3, reads use `server.store.batcher.ReadBatcher` instead (`single_reads`).
"""

from __future__ import annotations

import asyncio
import collections
from typing import Any

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from core.connections import RedisClient
from server.store.batcher import ReadBatcher


class _Replies(asyncio.Protocol):
    """The connection's protocol while it carries pipelined reads: replies go to the waiting futures, in order.

    The protocol it replaced (redis-py's stream protocol) still hears about the end of the connection, so that
    redis-py's own close of the connection completes as usual.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._replaced: Any = transport.get_protocol()
        self._reader = hiredis.Reader(replyError=redis_errors.ResponseError, protocolError=redis_errors.InvalidResponse)
        self.waiting: collections.deque[asyncio.Future[Any]] = collections.deque()
        self.outbox: list[bytes] = []
        self.lost = False

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                future = self.waiting.popleft()
                if future.done():  # its caller gave up (deadline, cancellation)
                    continue
                if isinstance(reply, Exception):
                    future.set_exception(reply)
                else:
                    future.set_result(reply)
        except (redis_errors.InvalidResponse, IndexError) as exc:  # not RESP, or a reply nobody asked for
            self.fail(redis_errors.ConnectionError(f"unexpected data from Redis ({type(exc).__name__})"))

    def eof_received(self) -> bool | None:
        result: bool | None = self._replaced.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis_errors.ConnectionError("connection to Redis lost"))
        self._replaced.connection_lost(exc)

    def fail(self, error: Exception) -> None:
        """Ends the connection's use: every read still waiting fails with `error`, and the connection closes."""
        self.lost = True
        self.outbox.clear()
        while self.waiting:
            future = self.waiting.popleft()
            if not future.done():
                future.set_exception(error)
        self.transport.close()

    def flush(self) -> None:
        if self.outbox and not self.lost:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()


class PipelinedReads:
    """`HGET`s pipelined on one connection taken from `redis`'s pool (see the module docstring).

    Every read runs under `timeout_s`, connecting included. A read that times out ends the connection (Redis did
    not answer in time: what is still owed on it is not waited for), failing the reads queued behind it; the next
    read takes a fresh connection.
    """

    def __init__(self, redis: aioredis.Redis, timeout_s: float) -> None:
        self._pool = redis.connection_pool
        self._timeout_s = timeout_s
        self._connection: Any = None
        self._replies: _Replies | None = None
        self._opening = asyncio.Lock()

    async def hget(self, key: str, field_name: str) -> bytes | None:
        """The value of `field_name` in hash `key`, or None.

        Raises:
            TimeoutError: no answer within `timeout_s`.
            redis.exceptions.RedisError: Redis failed the read, or the connection.
        """
        replies = self._replies
        try:
            async with asyncio.timeout(self._timeout_s):
                if replies is None or replies.lost:
                    replies = await self._open()
                loop = asyncio.get_running_loop()
                future: asyncio.Future[Any] = loop.create_future()
                replies.waiting.append(future)
                if not replies.outbox:  # the first read of this event-loop turn: one write for all of them
                    loop.call_soon(replies.flush)
                replies.outbox.append(hiredis.pack_command(("HGET", key, field_name)))  # type: ignore[arg-type]  # its stub takes 1-tuples
                result: bytes | None = await future
                return result
        except TimeoutError:
            if replies is not None:
                replies.fail(redis_errors.TimeoutError("Redis did not answer in time"))
            raise

    async def _open(self) -> _Replies:
        async with self._opening:
            if self._replies is not None and not self._replies.lost:
                return self._replies
            if self._connection is not None:
                connection, self._connection, self._replies = self._connection, None, None
                await connection.disconnect(nowait=True)
                await self._pool.release(connection)
            connection = await self._pool.get_connection()  # type: ignore[no-untyped-call]  # redis-py: untyped
            try:
                transport = connection._writer.transport  # redis-py opened it: credentials, database, name
                replies = _Replies(transport)
                transport.set_protocol(replies)
            except BaseException:
                await self._pool.release(connection)
                raise
            self._connection, self._replies = connection, replies
            return replies


def single_reads(redis: RedisClient, timeout_s: float) -> PipelinedReads | ReadBatcher:
    """How the store reads single entitlements: `PipelinedReads` on a single server reached over a plain TCP or
    unix socket with RESP2, `ReadBatcher` otherwise (a cluster, TLS, RESP3)."""
    if isinstance(redis, aioredis.Redis):
        pool = redis.connection_pool
        plain = issubclass(pool.connection_class, (Connection, UnixDomainSocketConnection))
        tls = issubclass(pool.connection_class, SSLConnection)
        if plain and not tls and str(pool.connection_kwargs.get("protocol") or 2) == "2":
            return PipelinedReads(redis, timeout_s)
    return ReadBatcher(redis, timeout_s)
