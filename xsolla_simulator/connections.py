"""The order-status WebSocket: a Centrifuge protocol v2 (JSON) server, as Xsolla runs it at
`wss://ws-store.xsolla.com/connection/websocket`, reduced to what its clients use.

A client connects with `{"connect": {"data": {"auth": <token>, "project_id": <int>[, "user_external_id": ..]}}}`.
The server checks the token, then announces one server-side subscription, the player's order channel, in the
connect reply (recoverable and positioned, with its epoch and offset). Every status of every order of that player
is published there as `{"order_id": <int>, "status": <str>}`, so a client tracking one order filters by id. The
client may ask for the channel's history and, on reconnect, for the publications it missed (recovery). Channels
are per (project, player): a token of one project never sees another project's orders.

Sessions never raise into aiohttp: a peer that goes away mid-write, sends garbage or binary frames ends its own
session (with a close code where the protocol has one) and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from aiohttp import WSMsgType, web

from xsolla_simulator import protocol
from xsolla_simulator.streams import Publication, Stream, UnrecoverablePosition, order_channel
from xsolla_simulator.tokens import TokenClaims

SERVER_VERSION: Final = "xsolla-simulator"
WEBSOCKET_PATH: Final = "/connection/websocket"

#: Checks a connect command's `data`; returns who it is for, or None to refuse it.
Authenticate = Callable[[Any], TokenClaims | None]


@dataclass
class SocketCounters:
    """What happened on the order-status WebSocket since the simulator started."""

    handshakes_total: int = 0  # WebSocket upgrades accepted
    refused_total: int = 0  # upgrades answered 503 while refusing connections
    connects_total: int = 0  # connect commands accepted
    connect_errors_total: int = 0  # connect commands refused (bad token, project or player)
    pings_total: int = 0
    pongs_total: int = 0
    publications_total: int = 0  # publications appended to streams
    pushes_total: int = 0  # publication pushes written to sockets


class SocketHub:
    """Every open session of the order-status WebSocket, and the channel streams they read.

    Args:
        authenticate: checks a connect command's `data` (and so which projects' players may connect).
        ping_interval_s: how often to ping each session (`{}`); 0 disables pings. The connect reply advertises
            it rounded up to whole seconds, as the protocol counts them.
        close_timeout_s: how long closing a socket waits for the client's close frame.
        history_size: how many publications each channel keeps (None: all).
    """

    def __init__(
        self,
        *,
        authenticate: Authenticate,
        ping_interval_s: float = 25.0,
        close_timeout_s: float = 2.0,
        history_size: int | None = None,
    ) -> None:
        self.ping_interval_s = ping_interval_s
        self.counters = SocketCounters()
        self._authenticate = authenticate
        self._close_timeout_s = close_timeout_s
        self._history_size = history_size
        self._streams: dict[str, Stream] = {}
        self._sessions: set[Session] = set()
        self._by_user: dict[tuple[int, str], set[Session]] = {}
        self._refuse_all_until = 0.0
        self._refuse_user_until: dict[str, float] = {}
        self._closing = False

    # --- what the simulator asks ----------------------------------------------------------------------------

    @property
    def connections(self) -> int:
        """Sessions that completed a connect and are still open."""
        return sum(len(sessions) for sessions in self._by_user.values())

    def stream(self, project_id: int, user_id: str) -> Stream:
        """The stream of a player's order channel in a project (created empty on first use)."""
        channel = order_channel(project_id, user_id)
        stream = self._streams.get(channel)
        if stream is None:
            stream = self._streams[channel] = Stream(channel, max_size=self._history_size)
        return stream

    async def publish(self, project_id: int, user_id: str, data: Mapping[str, Any]) -> tuple[Publication, int]:
        """Appends `data` to the player's channel in a project and pushes it to each of their sessions there.

        Returns:
            The publication, and how many sessions it was written to (a session that closes meanwhile is not
            counted).
        """
        stream = self.stream(project_id, user_id)
        publication = stream.append(data)
        self.counters.publications_total += 1
        push = protocol.publication_push(stream.channel, publication.wire())
        # Enqueued synchronously after the append: a session connecting now either got this offset in its
        # connect reply's position, or gets the push after that reply, never both and never neither.
        writes = [session.send([push]) for session in self._by_user.get((project_id, user_id), ())]
        written = sum(await asyncio.gather(*writes)) if writes else 0
        self.counters.pushes_total += written
        return publication, written

    async def disconnect(
        self,
        code: int,
        reason: str,
        *,
        user_id: str | None = None,
        project_id: int | None = None,
        refuse_for_s: float = 0.0,
    ) -> int:
        """Closes sessions with a WebSocket close `code` and `reason`.

        Args:
            user_id: only that player's sessions (in any project); None for every open socket (connected or not).
            project_id: only sessions connected to that project.
            refuse_for_s: then refuse new connections for that long: every upgrade is answered 503 (for
                everyone), or that player's connect commands get a temporary error (for one player).

        Returns:
            How many sockets were closed.
        """
        loop = asyncio.get_running_loop()
        if refuse_for_s > 0:
            until = loop.time() + refuse_for_s
            if user_id is None:
                self._refuse_all_until = until
            else:
                self._refuse_user_until[user_id] = until
        targets = [s for s in self._sessions if user_id in (None, s.user_id) and project_id in (None, s.project_id)]
        await asyncio.gather(*(session.close(code, reason) for session in targets))
        return len(targets)

    async def close(self) -> None:
        """Closes every socket with 3001 "shutdown" (reconnectable, as a server restart) and refuses new ones."""
        self._closing = True
        await self.disconnect(protocol.CLOSE_SHUTDOWN, "shutdown")

    # --- the aiohttp side -----------------------------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        """Adds the WebSocket endpoint (`WEBSOCKET_PATH`) to `app`."""
        app.router.add_get(WEBSOCKET_PATH, self.handle)

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """The `/connection/websocket` handler."""
        if self._closing or asyncio.get_running_loop().time() < self._refuse_all_until:
            self.counters.refused_total += 1
            return web.Response(status=503, text="service unavailable")
        ws = web.WebSocketResponse(timeout=self._close_timeout_s, max_msg_size=1 << 20)
        if not ws.can_prepare(request).ok:
            return web.Response(status=400, text="expected a WebSocket upgrade")
        await ws.prepare(request)
        self.counters.handshakes_total += 1
        session = Session(self, ws)
        self._sessions.add(session)
        try:
            await session.run()
        finally:
            self.forget(session)
        return ws

    # --- what sessions ask ----------------------------------------------------------------------------------

    def authenticate(self, data: Any) -> TokenClaims | None:
        """Who a connect command's `data` speaks for; None to refuse it."""
        return self._authenticate(data)

    def refusing(self, user_id: str) -> bool:
        """Whether a player's connects are being refused."""
        until = self._refuse_user_until.get(user_id)
        return until is not None and asyncio.get_running_loop().time() < until

    def register(self, session: Session) -> None:
        """Adds a connected session to its player's (publications reach it from now on)."""
        assert session.user_id is not None
        assert session.project_id is not None
        self._by_user.setdefault((session.project_id, session.user_id), set()).add(session)

    def forget(self, session: Session) -> None:
        """Drops a session that is closing or closed."""
        self._sessions.discard(session)
        if session.user_id is not None and session.project_id is not None:
            key = (session.project_id, session.user_id)
            sessions = self._by_user.get(key)
            if sessions is not None:
                sessions.discard(session)
                if not sessions:
                    del self._by_user[key]


class Session:
    """One WebSocket connection: reads commands, answers them, and writes replies and pushes in order.

    Everything written goes through one queue and one writer task, so replies and pushes keep the order they
    were produced in, and whatever is queued together leaves as one newline-batched message.
    """

    def __init__(self, hub: SocketHub, ws: web.WebSocketResponse) -> None:
        self.client_id = str(uuid.uuid4())
        self.user_id: str | None = None
        self.project_id: int | None = None
        self.channel: str | None = None
        self._hub = hub
        self._ws = ws
        self._outbox: asyncio.Queue[tuple[str, asyncio.Future[bool]]] = asyncio.Queue()
        self._writer: asyncio.Task[None] | None = None
        self._pinger: asyncio.Task[None] | None = None
        self._awaiting_pong = False
        self._closed = False
        self._closing: asyncio.Task[None] | None = None

    def send(self, frames: list[dict[str, Any]]) -> asyncio.Future[bool]:
        """Queues `frames` for writing.

        Returns:
            A future: True once they were written, False if the socket closed first.
        """
        future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.set_result(False)
        else:
            self._outbox.put_nowait((protocol.encode(frames), future))
        return future

    async def close(self, code: int, reason: str) -> None:
        """Closes the socket with a close frame (`code`, `reason`) and waits for the close handshake.

        The first call decides the code; later calls wait for the same close. The close runs in its own task so
        that cancelling a caller (the pinger, when the session ends) cannot cut the handshake short.
        """
        self._closed = True
        self._hub.forget(self)
        if self._closing is None:
            self._closing = asyncio.create_task(self._close(code, reason), name=f"ws-close-{self.client_id}")
        await asyncio.shield(self._closing)

    async def _close(self, code: int, reason: str) -> None:
        with contextlib.suppress(ConnectionError):
            await self._ws.close(code=code, message=reason.encode())

    async def run(self) -> None:
        """Serves the session until the socket closes."""
        self._writer = asyncio.create_task(self._write_loop(), name=f"ws-writer-{self.client_id}")
        try:
            async for message in self._ws:
                if message.type is WSMsgType.TEXT:
                    if not await self._on_text(message.data):
                        break
                elif message.type is WSMsgType.BINARY:
                    # Protobuf is negotiated with a subprotocol this server does not offer.
                    await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
                    break
                else:  # ERROR: the transport failed under us
                    break
        finally:
            self._closed = True
            if self._closing is not None:
                await self._closing
            for task in (self._pinger, self._writer):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            self._fail_queued()

    # --- commands -------------------------------------------------------------------------------------------

    async def _on_text(self, text: str) -> bool:
        """Handles one message; False when the session was closed because of it."""
        try:
            commands = protocol.decode(text)
        except ValueError:
            await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
            return False
        for command in commands:
            if not isinstance(command, dict):
                await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
                return False
            command_id = command.get("id")
            if not command_id:
                if not command:  # a pong
                    self._hub.counters.pongs_total += 1
                    self._awaiting_pong = False
                continue  # a `send` (asynchronous message) needs no answer; nothing here consumes them
            if not isinstance(command_id, int) or isinstance(command_id, bool):
                await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
                return False
            if "connect" in command:
                if self.user_id is not None:  # already connected: Centrifuge disconnects such clients
                    await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
                    return False
                self._connect(command_id, command["connect"])
            elif self.user_id is None:  # every command but connect needs a connected session
                await self.close(protocol.CLOSE_BAD_REQUEST, "bad request")
                return False
            elif "history" in command:
                self._history(command_id, command["history"])
            else:
                self.send([protocol.error_reply(command_id, protocol.ERROR_METHOD_NOT_FOUND, "method not found")])
        return True

    def _connect(self, command_id: int, request: Any) -> None:
        counters = self._hub.counters
        claims = self._hub.authenticate(request.get("data") if isinstance(request, dict) else None)
        if claims is None:
            counters.connect_errors_total += 1
            # Not temporary: the client stops for good (DISCONNECTED with code 101).
            self.send([protocol.error_reply(command_id, protocol.ERROR_UNAUTHORIZED, "unauthorized")])
            return
        if self._hub.refusing(claims.user_id):
            counters.connect_errors_total += 1
            self.send([protocol.error_reply(command_id, protocol.ERROR_NOT_AVAILABLE, "not available", temporary=True)])
            return
        stream = self._hub.stream(claims.project_id, claims.user_id)
        subscription: dict[str, Any] = {
            "recoverable": True,
            "positioned": True,
            "epoch": stream.epoch,
            "offset": stream.top,
        }
        asked = request.get("subs")
        recovery = asked.get(stream.channel) if isinstance(asked, dict) else None
        if isinstance(recovery, dict) and recovery.get("recover"):
            subscription["was_recovering"] = True
            missed = _recover(stream, recovery)
            if missed is not None:
                subscription["recovered"] = True
                subscription["publications"] = [p.wire() for p in missed]
        result: dict[str, Any] = {
            "client": self.client_id,
            "version": SERVER_VERSION,
            "subs": {stream.channel: subscription},
        }
        if self._hub.ping_interval_s > 0:
            # The protocol counts whole seconds; pings may come more often than advertised, never less.
            result["ping"] = max(1, math.ceil(self._hub.ping_interval_s))
            result["pong"] = True
        self.user_id, self.project_id, self.channel = claims.user_id, claims.project_id, stream.channel
        counters.connects_total += 1
        # The reply is queued and the session registered with no await in between: see SocketHub.publish.
        self.send([{"id": command_id, "connect": result}])
        self._hub.register(self)
        if self._hub.ping_interval_s > 0:
            self._pinger = asyncio.create_task(self._ping_loop(), name=f"ws-ping-{self.client_id}")

    def _history(self, command_id: int, request: Any) -> None:
        if not isinstance(request, dict):
            self.send([protocol.error_reply(command_id, protocol.ERROR_BAD_REQUEST, "bad request")])
            return
        channel = request.get("channel")
        if not isinstance(channel, str) or not channel:
            self.send([protocol.error_reply(command_id, protocol.ERROR_BAD_REQUEST, "bad request")])
            return
        if channel != self.channel:
            # Only the player's own channel: another player's orders are none of their business.
            self.send([protocol.error_reply(command_id, protocol.ERROR_PERMISSION_DENIED, "permission denied")])
            return
        limit, since, reverse = request.get("limit", 0), request.get("since"), request.get("reverse", False)
        position: tuple[int, str] | None = None
        if isinstance(since, dict):
            offset, epoch = since.get("offset", 0), since.get("epoch", "")
            if isinstance(offset, int) and isinstance(epoch, str):
                position = (offset, epoch)
            else:
                limit = None  # marks the request malformed below
        if not isinstance(limit, int) or isinstance(limit, bool) or limit < -1 or not isinstance(reverse, bool):
            self.send([protocol.error_reply(command_id, protocol.ERROR_BAD_REQUEST, "bad request")])
            return
        assert self.user_id is not None
        assert self.project_id is not None
        stream = self._hub.stream(self.project_id, self.user_id)
        try:
            publications = stream.history(limit=limit, since=position, reverse=reverse)
        except UnrecoverablePosition:
            self.send(
                [protocol.error_reply(command_id, protocol.ERROR_UNRECOVERABLE_POSITION, "unrecoverable position")]
            )
            return
        history = {"publications": [p.wire() for p in publications], "epoch": stream.epoch, "offset": stream.top}
        self.send([{"id": command_id, "history": history}])

    # --- background tasks -----------------------------------------------------------------------------------

    async def _ping_loop(self) -> None:
        while True:
            await asyncio.sleep(self._hub.ping_interval_s)
            if self._awaiting_pong:
                # The client promised pongs (the reply said `pong: true`) and skipped one: what Centrifuge
                # does after its pong timeout, which here is one ping interval.
                await self.close(protocol.CLOSE_NO_PONG, "no pong")
                return
            self._awaiting_pong = True
            self._hub.counters.pings_total += 1
            self.send([{}])

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._outbox.get()]
            while not self._outbox.empty():
                batch.append(self._outbox.get_nowait())
            try:
                await self._ws.send_str("\n".join(text for text, _ in batch))
                written = True
            except (ConnectionError, RuntimeError):  # the peer went away; RuntimeError: socket already closed
                written = False
            for _, future in batch:
                if not future.done():
                    future.set_result(written)
            if not written:
                self._closed = True
                return

    def _fail_queued(self) -> None:
        while not self._outbox.empty():
            _, future = self._outbox.get_nowait()
            if not future.done():
                future.set_result(False)


def _recover(stream: Stream, position: dict[str, Any]) -> list[Publication] | None:
    offset, epoch = position.get("offset", 0), position.get("epoch", "")
    if not isinstance(offset, int) or not isinstance(epoch, str):
        return None
    return stream.recover(offset, epoch)
