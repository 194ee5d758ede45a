"""Breaking the simulator's surfaces on purpose, and counting what reached them: the part of `XsollaSimulator`
that tests of the order tracker lean on (WebSocket breaks and refusals, silenced channels, Get order failures and
delays, lost history; request and connection counters)."""

from __future__ import annotations

from xsolla_simulator import protocol
from xsolla_simulator.announcements import CHANNELS, check_channels
from xsolla_simulator.connections import SocketCounters, SocketHub
from xsolla_simulator.errors import InvalidRequest
from xsolla_simulator.projects import ProjectBook
from xsolla_simulator.store_api import GetOrderRequest, StoreApi


class FaultInjection:
    """Faults and counters over the simulator's WebSocket hub and Store API (a base of `XsollaSimulator`)."""

    _hub: SocketHub
    _store: StoreApi
    _projects: ProjectBook
    _silenced: set[str]

    # --- faults ---------------------------------------------------------------------------------------------

    async def break_websockets(
        self,
        code: int = protocol.CLOSE_SHUTDOWN,
        reason: str = "shutdown",
        refuse_for_s: float = 0.0,
        *,
        user_id: str | None = None,
        project_id: int | None = None,
    ) -> int:
        """Closes WebSocket connections with a close code: 3000-3499 and 4000-4499 make clients reconnect,
        3500-3999 and 4500-4999 stop them for good.

        Args:
            refuse_for_s: then refuse new connections for that long: upgrades are answered HTTP 503 (all
                players), or the player's connect commands get a temporary error 108 (one player).
            user_id: only that player's sessions; None for every open socket.
            project_id: only sessions connected to that project.

        Returns:
            How many sockets were closed.
        """
        if not 1000 <= code <= 4999 or len(reason.encode()) > 123:
            raise InvalidRequest("code must be a WebSocket close code; reason at most 123 bytes")
        return await self._hub.disconnect(
            code, reason, user_id=user_id, project_id=project_id, refuse_for_s=refuse_for_s
        )

    def silence(self, *channels: str) -> None:
        """Makes channels say nothing from now on: status changes skip them (publish_status still publishes).

        A silent `websocket` publishes nothing (pings go on, history has nothing new); a silent `polling`
        keeps Get order answering the last status it announced; a silent `webhook` sends nothing.
        """
        self._silenced.update(check_channels(channels))

    def unsilence(self, *channels: str) -> None:
        """Lets channels (all when none are named) announce status changes again; what they missed stays missed."""
        self._silenced.difference_update(check_channels(channels) if channels else CHANNELS)

    @property
    def silenced(self) -> frozenset[str]:
        return frozenset(self._silenced)

    def fail_get_order(
        self, times: int | None = 1, status: int = 503, *, delay_s: float = 0.0, order_id: int | None = None
    ) -> None:
        """Answers the next `times` Get order requests (None: all until cleared) with `status`, after `delay_s`.

        Args:
            order_id: only requests for that order.
        """
        self._store.fail(times, status, delay_s=delay_s, order_id=order_id)

    def delay_get_order(self, delay_s: float, *, times: int | None = None, order_id: int | None = None) -> None:
        """Delays the next `times` Get order requests (None: all until cleared); they are answered normally."""
        self._store.delay(delay_s, times=times, order_id=order_id)

    def clear_get_order_faults(self) -> None:
        """Forgets every Get order failure and delay not yet consumed."""
        self._store.clear_faults()

    def reset_history(self, user_id: str, *, project_id: int | None = None) -> None:
        """Empties a player's order channel under a new epoch, as a Centrifugo restart without persistence does:
        clients recovering from the old position get `recovered: false`, history since it fails with 112.

        Args:
            project_id: the project of the channel (the first project by default).
        """
        self._hub.stream(self._projects.get(project_id).project_id, user_id).reset()

    # --- observations ---------------------------------------------------------------------------------------

    def get_order_requests(self, order_id: int) -> int:
        """Get order requests seen for an order, however they were answered."""
        return self._store.requests(order_id)

    def get_order_requests_for(self, order_id: int) -> list[GetOrderRequest]:
        """Every Get order request seen for an order (arrival time, status answered), oldest first."""
        return self._store.requests_for(order_id)

    @property
    def get_order_requests_total(self) -> int:
        return len(self._store.log)

    @property
    def websocket_connections(self) -> int:
        """WebSocket sessions connected (connect accepted) and still open."""
        return self._hub.connections

    @property
    def websocket_connects_total(self) -> int:
        """Connect commands accepted since start."""
        return self._hub.counters.connects_total

    @property
    def websocket_stats(self) -> SocketCounters:
        """Every WebSocket counter (handshakes, refusals, connects, connect errors, pings, pongs, pushes)."""
        return self._hub.counters
