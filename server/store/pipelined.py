"""The store's hottest commands on pipelined connections to a single Redis server: single-entitlement reads and
CheckEntitlements' script (`PipelinedReads`), and the write scripts with their durability wait (`PipelinedWrites`).

redis-py's asyncio client spends several event-loop turns and a few hundred Python calls on each command or
pipeline (a task per socket timeout, the pool's condition and timeout, retry and observability hooks): on the
benchmark machine about ten times the CPU of the round trip itself. Here a caller writes its packed commands (the
callers of one event-loop turn in one write) and awaits a future, and the connection's protocol hands each reply,
parsed by hiredis, to the oldest caller owed one (Redis answers in order). No task, no lock, one timer per call.
Error replies are redis-py's exception classes (`NoScriptError`, `BusyLoadingError`, ...), as its pipelines return
them.

Each connection is one of the client's pool, taken out of it while in use: redis-py opened it (credentials,
database, client name), and the client's `aclose` closes it with the others. A call that times out ends its
connection (Redis did not answer in time: what is still owed on it is not waited for), failing the calls queued on
it; the next call opens another. A write that fails so may or may not have been applied, as with any client: its
retry carries the same idempotency key. On a Redis Cluster, with TLS, or with RESP3, the store uses redis-py
(`single_reads`, `pipelined_writes`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Sequence
from typing import Any, TypeGuard

import hiredis
import redis.asyncio as aioredis
import redis.exceptions as redis_errors
from redis._parsers.base import BaseParser
from redis.asyncio.connection import Connection, SSLConnection, UnixDomainSocketConnection

from core.connections import RedisClient
from server.store.batcher import ReadBatcher


class _Group:
    """The replies owed to one caller of several commands, collected in order; its future gets them all."""

    __slots__ = ("future", "owed", "replies")

    def __init__(self, future: asyncio.Future[list[Any]], owed: int) -> None:
        self.future = future
        self.owed = owed
        self.replies: list[Any] = []

    def take(self, reply: Any) -> None:
        self.replies.append(reply)  # an error reply stays an exception object, as in a pipeline's replies
        if len(self.replies) == self.owed and not self.future.done():
            self.future.set_result(self.replies)


class _Replies(asyncio.Protocol):
    """A connection's protocol while it is pipelined: each reply goes to the caller owed the oldest one.

    `waiting` holds, per reply owed, a future (a single command's caller) or the `_Group` of a caller of several.
    The protocol it replaced (redis-py's stream protocol) still hears about the end of the connection, so that
    redis-py's own close of the connection completes as usual.
    """

    def __init__(self, transport: asyncio.Transport) -> None:
        self.transport = transport
        self._replaced: Any = transport.get_protocol()
        self._reader = hiredis.Reader(replyError=BaseParser.parse_error, protocolError=redis_errors.InvalidResponse)
        self.waiting: collections.deque[asyncio.Future[Any] | _Group] = collections.deque()
        self.outbox: list[bytes] = []
        self.lost = False
        self.waits = 0  # callers whose commands end with a durability wait, not answered yet (PipelinedWrites)

    def data_received(self, data: bytes) -> None:
        self._reader.feed(data)
        try:
            while (reply := self._reader.gets()) is not False:
                owed = self.waiting.popleft()
                if isinstance(owed, _Group):
                    owed.take(reply)
                elif owed.done():  # its caller gave up (deadline, cancellation)
                    continue
                elif isinstance(reply, Exception):
                    owed.set_exception(reply)
                else:
                    owed.set_result(reply)
        except (redis_errors.InvalidResponse, IndexError) as exc:  # not RESP, or a reply nobody asked for
            self.fail(redis_errors.ConnectionError(f"unexpected data from Redis ({type(exc).__name__})"))

    def eof_received(self) -> bool | None:
        result: bool | None = self._replaced.eof_received()
        return result

    def connection_lost(self, exc: Exception | None) -> None:
        self.fail(redis_errors.ConnectionError("connection to Redis lost"))
        # The callers heard the error; redis-py's protocol hears of a close, so that its close future holds no
        # exception nobody retrieves (asyncio would log "Future exception was never retrieved" for a reset peer).
        self._replaced.connection_lost(None)

    def fail(self, error: Exception) -> None:
        """Ends the connection's use: every caller still owed a reply fails with `error`, and the connection closes."""
        self.lost = True
        self.outbox.clear()
        while self.waiting:
            owed = self.waiting.popleft()
            future = owed.future if isinstance(owed, _Group) else owed
            if not future.done():
                future.set_exception(error)
        self.transport.close()

    def send(self, packed: bytes) -> None:
        """Queues `packed` for this event-loop turn's one write."""
        if not self.outbox:
            asyncio.get_running_loop().call_soon(self.flush)
        self.outbox.append(packed)

    def flush(self) -> None:
        if self.outbox and not self.lost:
            self.transport.write(b"".join(self.outbox))
        self.outbox.clear()


async def _take_connection(pool: Any) -> tuple[Any, _Replies]:
    """A connection of `pool`, opened by redis-py (credentials, database, name), with `_Replies` as its protocol."""
    connection = await pool.get_connection()
    try:
        transport = connection._writer.transport
        replies = _Replies(transport)
        transport.set_protocol(replies)
    except BaseException:
        await pool.release(connection)
        raise
    return connection, replies


async def _give_back(pool: Any, connection: Any) -> None:
    """Returns a connection whose use ended (lost or failed) to `pool`, closed: the pool reconnects it on reuse."""
    await connection.disconnect(nowait=True)
    await pool.release(connection)


class PipelinedReads:
    """Reads pipelined on one connection taken from `redis`'s pool (see the module docstring).

    Every read runs under `timeout_s`, connecting included. A read that times out ends the connection, failing the
    reads queued behind it; the next read takes a fresh connection.
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
        result: bytes | None = await self.command(("HGET", key, field_name))
        return result

    async def command(self, command: tuple[Any, ...]) -> Any:
        """The reply of one read-only command (its arguments as redis-py takes them: str, bytes, int, float).

        Raises:
            TimeoutError: no answer within `timeout_s`.
            redis.exceptions.RedisError: Redis failed the command (redis-py's class for its error reply, e.g.
                `NoScriptError`), or the connection.
        """
        replies = self._replies
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                if replies is None or replies.lost:
                    replies = await self._open()
                    _check(deadline)
                future: asyncio.Future[Any] = loop.create_future()
                replies.waiting.append(future)
                replies.send(hiredis.pack_command(command))
                return await future
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
                await _give_back(self._pool, connection)
            self._connection, self._replies = await _take_connection(self._pool)
            return self._replies


class PipelinedWrites:
    """Groups of commands (write scripts, then their durability wait), each group on one connection taken from
    `redis`'s pool, in one write, in order (see the module docstring).

    WAIT and WAITAOF block their connection until answered: a group sent behind a wait on the same connection
    would run only once that wait is over, then wait in turn. So a group that ends with a wait goes to a connection
    with no wait in flight, opening one when every open one has a wait in flight, up to `max_connections`; past
    that, to the one with the fewest. Groups without a wait share the first connection with none in flight. The
    connections stay open between calls.

    Args:
        redis: the store's client (a single server, plain TCP or unix socket, RESP2: `pipelined_writes`).
        max_connections: how many connections the writes may hold at once, out of the pool's.
    """

    def __init__(self, redis: aioredis.Redis, *, max_connections: int) -> None:
        self._pool = redis.connection_pool
        self._max_connections = max(1, max_connections)
        self._open: list[tuple[Any, _Replies]] = []
        self._opening = asyncio.Lock()

    async def send(self, commands: Sequence[tuple[Any, ...]], *, waits: bool, timeout_s: float) -> list[Any]:
        """Sends `commands` in order on one connection, in one write; `waits`: the last one is a durability wait.

        Returns:
            Each command's reply in order; an error reply as its exception object (redis-py's class), not raised.

        Raises:
            TimeoutError: not every reply came within `timeout_s` (connecting included): the connection is closed,
                and whatever of the group Redis ran stays run.
            redis.exceptions.RedisError: the connection failed (the caller bounds and translates); `DataError`
                for an argument Redis cannot take (None, a bool), as redis-py's packing says.
        """
        try:
            packed = b"".join([hiredis.pack_command(command) for command in commands])
        except TypeError as exc:
            raise redis_errors.DataError(f"Invalid input of type: {exc}") from exc
        replies: _Replies | None = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        try:
            async with asyncio.timeout_at(deadline):
                replies = self._free()
                if replies is None:
                    replies = await self._another()
                    _check(deadline)
                group = _Group(loop.create_future(), len(commands))
                replies.waiting.extend([group] * len(commands))
                replies.send(packed)
                if waits:
                    replies.waits += 1
                try:
                    return await group.future
                finally:
                    if waits:
                        replies.waits -= 1
        except TimeoutError:
            if replies is not None:
                replies.fail(redis_errors.TimeoutError("Redis did not answer in time"))
            raise

    def _free(self) -> _Replies | None:
        """An open connection with no wait in flight, or None."""
        for _, replies in self._open:
            if not replies.lost and replies.waits == 0:
                return replies
        return None

    async def _another(self) -> _Replies:
        """A connection for a group when none is free: a new one, or at the limit the least busy. While another
        caller is opening one, the least busy open one: one caller at a time waits for a connect (which a Redis that
        does not answer makes last its whole timeout)."""
        if self._opening.locked() and any(not replies.lost for _, replies in self._open):
            return self._least_busy()
        async with self._opening:
            lost = [entry for entry in self._open if entry[1].lost]
            if lost:
                self._open = [entry for entry in self._open if not entry[1].lost]
                for connection, _ in lost:
                    await _give_back(self._pool, connection)
            free = self._free()
            if free is not None:
                return free
            if len(self._open) < self._max_connections:
                entry = await _take_connection(self._pool)
                self._open.append(entry)
                return entry[1]
            return self._least_busy()

    def _least_busy(self) -> _Replies:
        return min((replies for _, replies in self._open if not replies.lost), key=lambda replies: replies.waits)


def _check(deadline: float) -> None:
    """Raises TimeoutError when `deadline` (the loop's clock) has passed. After a connect: redis-py connects under
    Python 3.11's `asyncio.wait_for`, which can swallow the cancellation of an enclosing timeout, and the call would
    then wait for its reply with no deadline left."""
    if asyncio.get_running_loop().time() >= deadline:
        raise TimeoutError


def _plain(redis: RedisClient) -> TypeGuard[aioredis.Redis]:
    """Whether `redis` is a single server over a plain TCP or unix socket with RESP2 (what `_Replies` speaks)."""
    if not isinstance(redis, aioredis.Redis):
        return False
    pool = redis.connection_pool
    plain = issubclass(pool.connection_class, (Connection, UnixDomainSocketConnection))
    tls = issubclass(pool.connection_class, SSLConnection)
    return plain and not tls and str(pool.connection_kwargs.get("protocol") or 2) == "2"


def single_reads(redis: RedisClient, timeout_s: float) -> PipelinedReads | ReadBatcher:
    """How the store reads single entitlements: `PipelinedReads` on a single server reached over a plain TCP or
    unix socket with RESP2, `ReadBatcher` otherwise (a cluster, TLS, RESP3)."""
    if _plain(redis):
        return PipelinedReads(redis, timeout_s)
    return ReadBatcher(redis, timeout_s)


def pipelined_writes(redis: RedisClient) -> PipelinedWrites | None:
    """How the store's writes go out: `PipelinedWrites` where `single_reads` pipelines, holding at most half of the
    pool's connections (at least one); None elsewhere (redis-py's pipelines: `core.durability`)."""
    if not _plain(redis):
        return None
    pool_size = getattr(redis.connection_pool, "max_connections", 4) or 4
    return PipelinedWrites(redis, max_connections=max(1, pool_size // 2))
