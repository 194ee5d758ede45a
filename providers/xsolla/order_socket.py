"""Xsolla's order-status WebSocket (a Centrifugo server), through the `centrifuge-python` client.

Xsolla's socket is per player: the connect data carries the player's token (`auth`), the project and the
player's id; the server subscribes the connection to the player's channels itself (server-side subscriptions)
and publishes `{"order_id": 59614241, "status": "paid"}` on them. One `centrifuge.Client` per (project, token)
is shared by every order followed for that player, and disconnected when the last of them lets go.

The client's quirks shape this module (docs/ORDER_STATUS.md has the details):

- Event handlers run on the client's read loop. They never await SDK calls (awaiting `history` there would wait
  for a reply the blocked loop cannot read): the history of each subscribed channel is fetched in a task of its
  own, kept here and cancelled on close.
- A handler that raises stops the client for good, so every handler catches everything.
- History replays what live publications already delivered (and every reconnect replays it again), so
  publications are deduplicated by (channel, offset).
- Publications for the player's other orders arrive too: they are filtered by order id (compared as strings),
  and remembered, so an order followed later on the same socket first gets what the socket already saw.

A socket that cannot connect within the timeout, that the server closes for good (an unauthorized token
included), or whose connection breaks after it was established, fails: every order on it falls back to polling,
and the socket is closed once they have let go. An order opened later for the same player tries a new socket.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import structlog
from centrifuge import Client, StreamPosition

from core.logs import user_ref
from core.order_sources import Player, ReportedStatus, SocketListener
from providers.xsolla.metrics import XsollaMetrics
from providers.xsolla.status import reported

log = structlog.get_logger("providers.xsolla.socket")

# Bounds on what one socket remembers: publications are tiny and a player has few orders in flight.
_MAX_SEEN = 4096
_MAX_STATUSES_PER_ORDER = 16
_MAX_ORDERS_REMEMBERED = 1024
# centrifuge-python's own timeout for the handshake, the connect reply and each command (history).
_COMMAND_TIMEOUT_S = 5.0
_CLOSE_TIMEOUT_S = 2.0


class XsollaSockets:
    """One Centrifugo connection per (project, token), shared by that player's orders (a `SocketPool`).

    Args:
        url: the WebSocket endpoint, e.g. "wss://ws-store.xsolla.com/connection/websocket".
        connect_timeout_s: a socket not connected this long after it was opened fails.
        metrics: the open-socket gauge and failure counter live there.
    """

    def __init__(self, url: str, *, connect_timeout_s: float, metrics: XsollaMetrics) -> None:
        self._url = url
        self._connect_timeout_s = connect_timeout_s
        self._metrics = metrics
        self._sockets: dict[tuple[int, str], _PlayerSocket] = {}
        self._closing: set[asyncio.Task[None]] = set()

    def __len__(self) -> int:
        return len(self._sockets)

    def acquire(self, player: Player, order_id: str, listener: SocketListener) -> _Lease:
        """Delivers the statuses of `order_id` seen on the player's socket to `listener` (opening the socket if
        needed), those already seen first."""
        key = (player.project_id, player.token)
        socket = self._sockets.get(key)
        if socket is None:
            socket = _PlayerSocket(self, key, player, self._url, self._connect_timeout_s)
            self._sockets[key] = socket
            self._metrics.sockets.inc()
            socket.open()
        return socket.register(order_id, listener)

    def _forget(self, socket: _PlayerSocket) -> None:
        """Takes a failed socket out of the pool: orders opened from now on get a new one."""
        if self._sockets.get(socket.key) is socket:
            del self._sockets[socket.key]

    def _retire(self, socket: _PlayerSocket) -> None:
        """Closes a socket no order uses any more, in the background."""
        self._forget(socket)
        task = asyncio.get_running_loop().create_task(socket.close())
        self._closing.add(task)
        task.add_done_callback(self._closing.discard)

    async def close(self) -> None:
        """Closes every socket (the orders on them should have let go already)."""
        for socket in list(self._sockets.values()):
            self._retire(socket)
        while self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)


class _Lease:
    """One order's registration on a player socket."""

    __slots__ = ("_listener", "_order_id", "_socket")

    def __init__(self, socket: _PlayerSocket, order_id: str, listener: SocketListener) -> None:
        self._socket: _PlayerSocket | None = socket
        self._order_id = order_id
        self._listener = listener

    def release(self) -> None:
        socket, self._socket = self._socket, None
        if socket is not None:
            socket.unregister(self._order_id, self._listener)


class _PlayerSocket:
    """One player's Centrifugo client and the orders listening to it. Also the client's event handler."""

    def __init__(
        self, pool: XsollaSockets, key: tuple[int, str], player: Player, url: str, connect_timeout_s: float
    ) -> None:
        self.key = key
        self._pool = pool
        self._project_id = player.project_id
        self._user = user_ref(player.user_id)
        self._connect_timeout_s = connect_timeout_s
        self._listeners: dict[str, list[SocketListener]] = {}
        self._seen: set[tuple[str, int]] = set()
        self._statuses: dict[str, list[ReportedStatus]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._connected = asyncio.Event()
        self._was_connected = False
        self._failed = False
        self._closing = False
        self._client = Client(
            url,
            events=self,
            data={"auth": player.token, "project_id": player.project_id, "user_external_id": player.user_id},
            timeout=min(_COMMAND_TIMEOUT_S, max(connect_timeout_s, 0.1)),
            min_reconnect_delay=0.2,
            max_reconnect_delay=10.0,
            # Connect directly: a proxy from the environment must not capture the socket (nor local tests').
            proxy=None,
        )

    # --- the pool's side -------------------------------------------------------------------------------------

    def open(self) -> None:
        self._spawn(self._connect())

    def register(self, order_id: str, listener: SocketListener) -> _Lease:
        self._listeners.setdefault(order_id, []).append(listener)
        for status in self._statuses.get(order_id, ()):
            listener.socket_status(status)
        return _Lease(self, order_id, listener)

    def unregister(self, order_id: str, listener: SocketListener) -> None:
        listeners = self._listeners.get(order_id)
        if listeners is not None:
            with contextlib.suppress(ValueError):
                listeners.remove(listener)
            if not listeners:
                del self._listeners[order_id]
        if not self._listeners and not self._closing:
            self._pool._retire(self)

    async def close(self) -> None:
        self._closing = True
        current = asyncio.current_task()
        for task in list(self._tasks):
            if task is not current:
                task.cancel()
        try:
            async with asyncio.timeout(_CLOSE_TIMEOUT_S):
                await self._client.disconnect()
        except Exception as exc:  # closing must not fail the caller
            log.debug("order_socket_close_failed", error=repr(exc))
        finally:
            if self._tasks:
                await asyncio.gather(*self._tasks, return_exceptions=True)
            self._pool._metrics.sockets.dec()

    # --- connection ------------------------------------------------------------------------------------------

    def _spawn(self, coroutine: Any) -> None:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _connect(self) -> None:
        try:
            await self._client.connect()
            async with asyncio.timeout(self._connect_timeout_s):
                await self._connected.wait()
        except TimeoutError:
            self._fail("connect_timeout", f"not connected within {self._connect_timeout_s:g} s")
        except Exception as exc:  # any failure to connect means polling
            self._fail("connect_error", f"{type(exc).__name__}: {exc}")

    def _fail(self, reason: str, detail: str) -> None:
        if self._failed or self._closing:
            return
        self._failed = True
        self._pool._forget(self)
        self._pool._metrics.socket_failures.labels(reason).inc()
        log.info(
            "order_socket_failed",
            project_id=self._project_id,
            user=self._user,
            reason=reason,
            detail=detail,
            orders=len(self._listeners),
        )
        for listeners in list(self._listeners.values()):
            for listener in list(listeners):
                listener.socket_failed(reason)

    # --- centrifuge-python event handlers: run on the client's read loop; never raise, never await the SDK ---

    async def on_connecting(self, ctx: Any) -> None:
        if self._was_connected:
            self._guard(self._fail, "broken", f"{ctx.code} {ctx.reason}")

    async def on_connected(self, ctx: Any) -> None:
        self._was_connected = True
        self._connected.set()

    async def on_disconnected(self, ctx: Any) -> None:
        # Also after our own disconnect() (code 0), which `_fail` ignores while closing.
        self._guard(self._fail, "closed", f"{ctx.code} {ctx.reason}")

    async def on_error(self, ctx: Any) -> None:
        log.debug("order_socket_error", project_id=self._project_id, user=self._user, code=getattr(ctx, "code", None))

    async def on_subscribed(self, ctx: Any) -> None:
        # Replays what the channel holds (limit -1 since offset 0), as Xsolla's documented client does on every
        # `subscribed`; in a task, because the read loop cannot read the reply while this handler runs.
        self._guard(self._spawn, self._replay(str(ctx.channel)))

    async def on_subscribing(self, ctx: Any) -> None:
        return None

    async def on_unsubscribed(self, ctx: Any) -> None:
        return None

    async def on_publication(self, ctx: Any) -> None:
        self._guard(self._deliver, str(ctx.channel), ctx.pub.offset, ctx.pub.data)

    async def on_join(self, ctx: Any) -> None:
        return None

    async def on_leave(self, ctx: Any) -> None:
        return None

    def _guard(self, function: Any, *args: Any) -> None:
        try:
            function(*args)
        except Exception:  # an exception escaping a handler would stop the client for good
            log.exception("order_socket_handler_failed", project_id=self._project_id, user=self._user)

    async def _replay(self, channel: str) -> None:
        try:
            result = await self._client.history(
                channel, limit=-1, since=StreamPosition(offset=0, epoch=""), reverse=False
            )
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # live publications still arrive; the silence timer covers the rest
            log.info("order_socket_history_failed", project_id=self._project_id, user=self._user, error=repr(exc))
            return
        for publication in result.publications:
            self._guard(self._deliver, channel, publication.offset, publication.data)

    def _deliver(self, channel: str, offset: Any, data: Any) -> None:
        if isinstance(offset, int) and offset > 0:
            # Offset 0 means the channel keeps no positions: nothing to deduplicate by, and trackers drop
            # repeated statuses anyway.
            position = (channel, offset)
            if position in self._seen:
                return
            if len(self._seen) >= _MAX_SEEN:
                self._seen.clear()
            self._seen.add(position)
        if not isinstance(data, dict):
            return
        order_id, word = data.get("order_id"), data.get("status")
        if order_id is None or isinstance(order_id, (dict, list)) or not isinstance(word, str):
            return
        key = str(order_id)
        status = reported(word)
        statuses = self._statuses.get(key)
        if statuses is None and len(self._statuses) < _MAX_ORDERS_REMEMBERED:
            statuses = self._statuses[key] = []
        if statuses is not None and len(statuses) < _MAX_STATUSES_PER_ORDER:
            statuses.append(status)
        for listener in list(self._listeners.get(key, ())):
            listener.socket_status(status)
