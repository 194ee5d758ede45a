"""The Xsolla simulator's order-status WebSocket, Get order and control API, over real sockets.

The WebSocket is driven by the real centrifuge-python client (what the service's order tracker uses) and, for
protocol details a client library hides, by a raw WebSocket speaking the JSON protocol by hand.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from centrifuge import (
    Client,
    ClientEventHandler,
    ClientState,
    ReplyError,
    StreamPosition,
)
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosedError

from tests.helpers.waiting import eventually
from xsolla_simulator import InvalidRequest, SimOrder, XsollaSimulator
from xsolla_simulator.testing import SimulatorFactory, simulator_factory_context

PROJECT = 12345
ITEMS = [{"sku": "gold", "quantity": 100, "type": "virtual_currency", "price": "0.05"}]


#: How long a test waits for the simulator or a client to react: everything is on loopback.
WAIT_S = 3.0


class Recorder(ClientEventHandler):  # type: ignore[misc]  # the base class is untyped (see the import)
    """Records a client's events. With `fetch_history`, asks for the channel's whole history on every
    subscription, from a task (awaiting SDK calls inside a handler would block the client's read loop)."""

    def __init__(self, *, fetch_history: bool = False) -> None:
        self.client: Any = None
        self.fetch_history = fetch_history
        self.subscribed: list[Any] = []  # ServerSubscribedContext
        self.publications: list[tuple[int, dict[str, Any]]] = []  # (offset, data)
        self.connecting: list[tuple[int, str]] = []
        self.disconnected: list[tuple[int, str]] = []
        self.histories: list[Any] = []  # HistoryResult
        self._tasks: set[asyncio.Task[None]] = set()

    async def on_connecting(self, ctx: Any) -> None:
        self.connecting.append((ctx.code, ctx.reason))

    async def on_disconnected(self, ctx: Any) -> None:
        self.disconnected.append((ctx.code, ctx.reason))

    async def on_subscribed(self, ctx: Any) -> None:
        self.subscribed.append(ctx)
        if self.fetch_history:
            task = asyncio.create_task(self._history(ctx.channel))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def on_publication(self, ctx: Any) -> None:
        self.publications.append((ctx.pub.offset, ctx.pub.data))

    async def _history(self, channel: str) -> None:
        result = await self.client.history(channel, limit=-1, since=StreamPosition(offset=0, epoch=""))
        self.histories.append(result)

    async def drain(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


Connect = Callable[..., Awaitable[tuple[Any, Recorder]]]


@pytest.fixture
async def sim_factory() -> AsyncIterator[SimulatorFactory]:
    """Starts simulators (project 12345 unless told otherwise); stops them all at the end."""
    async with simulator_factory_context() as make:

        async def start(**kwargs: Any) -> XsollaSimulator:
            kwargs.setdefault("project_id", PROJECT)
            return await make(**kwargs)

        yield start


@pytest.fixture
async def sim(sim_factory: SimulatorFactory) -> XsollaSimulator:
    """A simulator with default settings."""
    return await sim_factory()


@pytest.fixture
async def connect() -> AsyncIterator[Connect]:
    """Connects centrifuge-python clients to a simulator as Xsolla's SDKs do; disconnects them at the end.

    `connect(sim, token, user_id=..., project_id=..., fetch_history=..., ready=True, **client_kwargs)`; without
    `user_id` the connect data leaves `user_external_id` out, as current SDKs do.
    """
    made: list[tuple[Any, Recorder]] = []

    async def make(
        sim: XsollaSimulator,
        token: str,
        *,
        user_id: str | None = None,
        project_id: int | None = None,
        fetch_history: bool = False,
        ready: bool = True,
        **kwargs: Any,
    ) -> tuple[Any, Recorder]:
        recorder = Recorder(fetch_history=fetch_history)
        data: dict[str, Any] = {"auth": token, "project_id": sim.project_id if project_id is None else project_id}
        if user_id is not None:
            data["user_external_id"] = user_id
        client = Client(
            sim.ws_url,
            events=recorder,
            data=data,
            proxy=None,
            min_reconnect_delay=0.05,
            max_reconnect_delay=0.2,
            timeout=2,
            **kwargs,
        )
        recorder.client = client
        made.append((client, recorder))
        await client.connect()
        if ready:
            await client.ready(timeout=2)
        return client, recorder

    yield make
    for client, recorder in made:
        await client.disconnect()
        await recorder.drain()


def new_order(sim: XsollaSimulator, user_id: str = "player-1") -> SimOrder:
    return sim.create_order(user_id, items=ITEMS)


# --- the order-status WebSocket, through centrifuge-python -----------------------------------------------------


@pytest.mark.parametrize("send_user_id", [True, False], ids=["with-user_external_id", "sdk-style"])
async def test_connect_announces_the_players_order_channel(
    sim: XsollaSimulator, connect: Connect, send_user_id: bool
) -> None:
    """A good token connects, and the connect reply announces the player's recoverable, positioned channel."""
    token = sim.issue_token("player-1")
    client, recorder = await connect(sim, token, user_id="player-1" if send_user_id else None)

    assert client.state == ClientState.CONNECTED
    await eventually(lambda: len(recorder.subscribed) == 1, timeout_s=WAIT_S, what="the server-side subscription")
    subscribed = recorder.subscribed[0]
    assert subscribed.channel == sim.channel_for("player-1") == f"orders:{PROJECT}:player-1"
    assert subscribed.recoverable
    assert subscribed.positioned
    assert subscribed.stream_position.offset == 0
    assert subscribed.stream_position.epoch
    assert sim.websocket_connections == 1
    assert sim.websocket_connects_total == 1


async def test_every_order_of_the_player_is_published_with_increasing_offsets(
    sim: XsollaSimulator, connect: Connect
) -> None:
    """Each status change of each of the player's orders arrives once, in order, offsets counting up from 1."""
    _, recorder = await connect(sim, sim.issue_token("player-1"))
    first, second = new_order(sim), new_order(sim)
    other_player = new_order(sim, "player-2")

    paid = await sim.set_status(first.order_id, "paid")
    await sim.set_status(second.order_id, "paid")
    await sim.set_status(other_player.order_id, "paid")
    await sim.set_status(first.order_id, "done")

    assert paid.publication is not None
    assert paid.publication.offset == 1
    assert paid.sockets == 1
    await eventually(lambda: len(recorder.publications) == 3, timeout_s=WAIT_S, what="the three publications")
    assert recorder.publications == [
        (1, {"order_id": first.order_id, "status": "paid"}),
        (2, {"order_id": second.order_id, "status": "paid"}),
        (3, {"order_id": first.order_id, "status": "done"}),
    ]
    assert first.status == "done"
    assert first.polling_status == "done"


async def test_history_since_offset_zero_with_limit_minus_one_returns_everything(
    sim: XsollaSimulator, connect: Connect
) -> None:
    """History (asked from a task spawned in on_subscribed) holds what was published before connecting."""
    order = new_order(sim)
    await sim.set_status(order.order_id, "paid")
    await sim.set_status(order.order_id, "done")
    client, recorder = await connect(sim, sim.issue_token("player-1"), fetch_history=True)

    await eventually(lambda: len(recorder.histories) == 1, timeout_s=WAIT_S, what="the history")
    history = recorder.histories[0]
    assert [(p.offset, p.data["status"]) for p in history.publications] == [(1, "paid"), (2, "done")]
    assert history.offset == 2
    assert history.epoch == recorder.subscribed[0].stream_position.epoch

    channel = sim.channel_for("player-1")
    top_only = await client.history(channel, limit=0)
    assert top_only.publications == []
    assert top_only.offset == 2
    newest = await client.history(channel, limit=1, reverse=True)
    assert [p.offset for p in newest.publications] == [2]
    after_first = await client.history(channel, limit=-1, since=StreamPosition(offset=1, epoch=history.epoch))
    assert [p.offset for p in after_first.publications] == [2]


async def test_history_of_another_players_channel_is_denied(sim: XsollaSimulator, connect: Connect) -> None:
    """A player may read only their own channel's history (103 permission denied)."""
    client, _ = await connect(sim, sim.issue_token("player-1"))

    with pytest.raises(ReplyError) as denied:
        await client.history(sim.channel_for("player-2"), limit=-1)
    assert denied.value.code == 103


@pytest.mark.parametrize("case", ["unknown-token", "other-project-token", "wrong-project-id", "wrong-user_external_id"])
async def test_bad_credentials_end_the_client_disconnected_with_101(
    sim: XsollaSimulator, connect: Connect, case: str
) -> None:
    """A connect the simulator refuses is final for the client: DISCONNECTED with code 101, no retries."""
    token = {
        "unknown-token": "not-a-token",
        "other-project-token": sim.issue_token("player-1", project_id=PROJECT + 1),
    }.get(case) or sim.issue_token("player-1")
    client, recorder = await connect(
        sim,
        token,
        project_id=PROJECT + 1 if case == "wrong-project-id" else None,
        user_id="player-2" if case == "wrong-user_external_id" else None,
        ready=False,
    )

    await eventually(lambda: client.state == ClientState.DISCONNECTED, timeout_s=WAIT_S, what="the client to give up")
    assert recorder.disconnected == [(101, "unauthorized")]
    # No handshake after the refusal. (One before it is the client's own retry of a connect that outlived its
    # 2 s timeout on a stalled machine, which is not what this test is about.)
    refused_at = sim.websocket_stats.handshakes_total
    await asyncio.sleep(0.3)  # longer than the client's reconnect delays
    assert sim.websocket_stats.handshakes_total == refused_at
    assert sim.websocket_stats.connect_errors_total == 1
    assert sim.websocket_stats.connect_errors_total == 1
    assert sim.websocket_connections == 0


async def test_reconnectable_break_reconnects_and_recovers_what_was_missed(
    sim: XsollaSimulator, connect: Connect
) -> None:
    """After a 3001 close (and a while refused), the client reconnects, recovers the missed publication from
    its position, and a history replay holds everything."""
    order = new_order(sim)
    client, recorder = await connect(sim, sim.issue_token("player-1"), fetch_history=True)
    await sim.set_status(order.order_id, "paid")
    await eventually(lambda: len(recorder.publications) == 1, timeout_s=WAIT_S, what="the publication")

    closed = await sim.break_websockets(3001, "shutdown", refuse_for_s=0.3)
    missed = await sim.set_status(order.order_id, "done")

    assert closed == 1
    assert missed.sockets == 0
    await eventually(lambda: sim.websocket_connects_total == 2, timeout_s=WAIT_S, what="the reconnect")
    await eventually(
        lambda: len(recorder.publications) == 2, timeout_s=WAIT_S, what="the missed publication, recovered"
    )
    assert recorder.connecting[-1] == (3001, "shutdown")
    assert sim.websocket_stats.refused_total >= 1
    assert [offset for offset, _ in recorder.publications] == [1, 2]
    assert recorder.publications[1][1] == {"order_id": order.order_id, "status": "done"}
    again = recorder.subscribed[-1]
    assert again.was_recovering
    assert again.recovered
    await eventually(lambda: len(recorder.histories) == 2, timeout_s=WAIT_S, what="the history after the reconnect")
    assert [p.data["status"] for p in recorder.histories[-1].publications] == ["paid", "done"]
    assert client.state == ClientState.CONNECTED


async def test_recovery_from_a_lost_epoch_is_reported_unrecovered(sim: XsollaSimulator, connect: Connect) -> None:
    """When the channel's history was lost (new epoch), the reconnecting client is told `recovered: false`."""
    order = new_order(sim)
    _, recorder = await connect(sim, sim.issue_token("player-1"))
    await sim.set_status(order.order_id, "paid")
    await eventually(lambda: len(recorder.publications) == 1, timeout_s=WAIT_S, what="the publication")

    sim.reset_history("player-1")
    await sim.break_websockets(3001, "shutdown")

    await eventually(lambda: len(recorder.subscribed) == 2, timeout_s=WAIT_S, what="the resubscription")
    again = recorder.subscribed[-1]
    assert again.was_recovering
    assert not again.recovered
    assert again.stream_position.epoch != recorder.subscribed[0].stream_position.epoch


async def test_terminal_break_leaves_the_client_disconnected(sim: XsollaSimulator, connect: Connect) -> None:
    """A 3500-range close is final: the client ends DISCONNECTED with that code and never reconnects."""
    client, recorder = await connect(sim, sim.issue_token("player-1"))

    await sim.break_websockets(3500, "invalid token")

    await eventually(lambda: client.state == ClientState.DISCONNECTED, timeout_s=WAIT_S, what="the client to stop")
    assert recorder.disconnected == [(3500, "invalid token")]
    await asyncio.sleep(0.3)
    assert sim.websocket_connects_total == 1
    assert sim.websocket_connections == 0


async def test_break_for_one_player_leaves_the_others_connected(sim: XsollaSimulator, connect: Connect) -> None:
    """Breaking one player's sessions closes only theirs."""
    first, _ = await connect(sim, sim.issue_token("player-1"))
    second, _ = await connect(sim, sim.issue_token("player-2"))

    closed = await sim.break_websockets(3500, "force disconnect", user_id="player-1")

    assert closed == 1
    await eventually(
        lambda: first.state == ClientState.DISCONNECTED, timeout_s=WAIT_S, what="the first client to be disconnected"
    )
    assert second.state == ClientState.CONNECTED
    assert sim.websocket_connections == 1


async def test_refusing_one_player_answers_their_connects_with_a_temporary_error(
    sim: XsollaSimulator, connect: Connect
) -> None:
    """While one player is refused, their connects get temporary error 108 and the client retries until it
    gets in; other players connect meanwhile."""
    client, recorder = await connect(sim, sim.issue_token("player-1"))

    await sim.break_websockets(3001, "shutdown", refuse_for_s=0.3, user_id="player-1")
    other, _ = await connect(sim, sim.issue_token("player-2"))

    await eventually(lambda: sim.websocket_stats.connect_errors_total >= 1, timeout_s=WAIT_S, what="a refused connect")
    assert client.state != ClientState.CONNECTED
    await eventually(lambda: client.state == ClientState.CONNECTED, timeout_s=WAIT_S, what="the client to get in")
    assert recorder.disconnected == []
    assert other.state == ClientState.CONNECTED


async def test_pings_are_advertised_sent_and_answered(sim_factory: SimulatorFactory, connect: Connect) -> None:
    """With pings on, the connect reply asks for pongs, `{}` pings arrive and the client answers each one."""
    sim = await sim_factory(ws_ping_interval_s=0.1)
    # max_server_ping_delay is the client's slack past the advertised interval (1 s, whole seconds)
    client, recorder = await connect(sim, sim.issue_token("player-1"), max_server_ping_delay=0.5)

    await eventually(lambda: sim.websocket_stats.pongs_total >= 5, timeout_s=WAIT_S, what="five pongs")
    assert sim.websocket_stats.pings_total >= sim.websocket_stats.pongs_total
    assert client.state == ClientState.CONNECTED
    assert recorder.connecting == [(0, "connect called")]


async def test_unknown_commands_get_method_not_found(sim: XsollaSimulator, connect: Connect) -> None:
    """Commands the order socket does not serve (rpc, publish) get reply error 104; the session lives on."""
    client, _ = await connect(sim, sim.issue_token("player-1"))

    for call in (client.rpc("anything", {}), client.publish(sim.channel_for("player-1"), {"status": "done"})):
        with pytest.raises(ReplyError) as error:
            await call
        assert error.value.code == 104
    assert client.state == ClientState.CONNECTED


async def test_silenced_websocket_publishes_nothing(sim: XsollaSimulator, connect: Connect) -> None:
    """A silenced WebSocket announces no status change, while Get order still follows them."""
    _, recorder = await connect(sim, sim.issue_token("player-1"))
    order = new_order(sim)

    sim.silence("websocket")
    announcement = await sim.set_status(order.order_id, "paid")
    sim.unsilence()
    await sim.set_status(order.order_id, "done")

    assert announcement.channels == ("webhook", "polling")
    assert announcement.publication is None
    await eventually(lambda: len(recorder.publications) == 1, timeout_s=WAIT_S, what="the publication")
    assert recorder.publications == [(1, {"order_id": order.order_id, "status": "done"})]
    assert order.changes[1].channels == ("webhook", "polling")


async def test_publish_status_sends_a_raw_stale_publication(sim: XsollaSimulator, connect: Connect) -> None:
    """publish_status puts any status on the socket without changing the order (for forward-only tests)."""
    _, recorder = await connect(sim, sim.issue_token("player-1"))
    order = new_order(sim)
    await sim.set_status(order.order_id, "done")

    await sim.publish_status(order.order_id, "new")
    await sim.publish_status(order.order_id, "done")

    await eventually(lambda: len(recorder.publications) == 3, timeout_s=WAIT_S, what="the three publications")
    assert [data["status"] for _, data in recorder.publications] == ["done", "new", "done"]
    assert order.status == order.polling_status == "done"


# --- the order-status WebSocket, by hand -------------------------------------------------------------------


async def read_frames(ws: Any, wanted: int) -> list[dict[str, Any]]:
    """Reads text messages until `wanted` JSON objects arrived (messages may batch several, newline-separated)."""
    frames: list[dict[str, Any]] = []
    async with asyncio.timeout(2):
        while len(frames) < wanted:
            message = await ws.recv()
            assert isinstance(message, str)  # JSON goes in text frames
            frames.extend(json.loads(line) for line in message.split("\n"))
    return frames


def connect_command(token: str, command_id: int = 1) -> str:
    """A connect command as Xsolla's SDKs send it (no user_external_id)."""
    return json.dumps({"id": command_id, "connect": {"data": {"auth": token, "project_id": PROJECT}}})


async def test_raw_protocol_batches_replies_and_reports_errors(sim: XsollaSimulator) -> None:
    """Commands batched in one message are answered in order; other channels, lost epochs and unknown
    methods get their reply errors (103, 112, 104)."""
    token = sim.issue_token("player-1")
    channel = sim.channel_for("player-1")
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        await ws.send(
            connect_command(token) + "\n" + json.dumps({"id": 2, "history": {"channel": channel, "limit": -1}})
        )
        connected, history = await read_frames(ws, 2)
        assert connected["id"] == 1
        assert channel in connected["connect"]["subs"]
        assert connected["connect"]["ping"] == 25
        assert connected["connect"]["pong"] is True
        epoch = history["history"]["epoch"]
        assert history == {"id": 2, "history": {"publications": [], "epoch": epoch, "offset": 0}}

        await ws.send(
            "\n".join(
                json.dumps(command)
                for command in (
                    {"id": 3, "history": {"channel": sim.channel_for("player-2"), "limit": -1}},
                    {"id": 4, "history": {"channel": channel, "limit": -1, "since": {"offset": 0, "epoch": "old"}}},
                    {"id": 5, "presence": {"channel": channel}},
                )
            )
        )
        errors = await read_frames(ws, 3)
        assert [(frame["id"], frame["error"]["code"]) for frame in errors] == [(3, 103), (4, 112), (5, 104)]


async def test_raw_protocol_closes_on_binary_frames_and_commands_before_connect(sim: XsollaSimulator) -> None:
    """A binary frame, or a command before connect, closes the socket with 3501 (bad request)."""
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        await ws.send(b'{"id":1,"connect":{}}')
        await ws.wait_closed()
        assert ws.close_code == 3501
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        await ws.send(json.dumps({"id": 1, "history": {"channel": "orders:1:x", "limit": -1}}))
        await ws.wait_closed()
        assert ws.close_code == 3501


async def test_a_client_that_skips_pongs_is_closed_with_3012(sim_factory: SimulatorFactory) -> None:
    """A client that was asked for pongs and sends none is disconnected with 3012 (no pong)."""
    sim = await sim_factory(ws_ping_interval_s=0.1)
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        await ws.send(connect_command(sim.issue_token("player-1")))
        await read_frames(ws, 1)
        assert await ws.recv() == "{}"  # a ping, left unanswered
        with pytest.raises(ConnectionClosedError):
            await ws.recv()
        assert ws.close_code == 3012


async def test_a_client_vanishing_mid_session_is_cleaned_up(sim: XsollaSimulator) -> None:
    """A peer that drops the TCP connection without a close frame leaves no session behind, and publishing to
    the player afterwards writes to nobody."""
    order = new_order(sim)
    async with ws_connect(sim.ws_url, proxy=None) as ws:
        await ws.send(connect_command(sim.issue_token("player-1")))
        await read_frames(ws, 1)
        assert sim.websocket_connections == 1
        ws.transport.abort()

    await eventually(lambda: sim.websocket_connections == 0, timeout_s=WAIT_S, what="the session to be forgotten")
    announcement = await sim.set_status(order.order_id, "paid")
    assert announcement.sockets == 0


async def test_refusing_connections_answers_the_upgrade_with_503(sim: XsollaSimulator) -> None:
    """While refusing, the WebSocket upgrade is answered HTTP 503; afterwards it succeeds again."""
    await sim.break_websockets(3001, "shutdown", refuse_for_s=0.2)
    with pytest.raises(Exception, match="503"):
        async with ws_connect(sim.ws_url, proxy=None):
            pass
    await asyncio.sleep(0.25)
    async with ws_connect(sim.ws_url, proxy=None):
        pass
    assert sim.websocket_stats.refused_total == 1


# --- Get order ------------------------------------------------------------------------------------------------


def get_order_url(sim: XsollaSimulator, order_id: int | str, project_id: int = PROJECT) -> str:
    return f"{sim.store_api_url}/v2/project/{project_id}/order/{order_id}"


async def get_order(http: aiohttp.ClientSession, url: str, token: str | None) -> tuple[int, dict[str, Any]]:
    headers = {"Authorization": f"Bearer {token}"} if token is not None else {}
    async with http.get(url, headers=headers) as answer:
        return answer.status, await answer.json()


async def test_get_order_answers_the_players_order(sim: XsollaSimulator, http: aiohttp.ClientSession) -> None:
    """Get order with the player's token answers 200 with the documented body."""
    order = new_order(sim)
    token = sim.issue_token("player-1")

    status, body = await get_order(http, get_order_url(sim, order.order_id), token)

    assert status == 200
    assert body == {
        "order_id": order.order_id,
        "status": "new",
        "content": {
            "price": {"amount": "5", "amount_without_discount": "5", "currency": "USD"},
            "virtual_price": None,
            "is_free": False,
            "items": [
                {
                    "sku": "gold",
                    "quantity": 100,
                    "is_free": False,
                    "price": {"amount": "0.05", "amount_without_discount": "0.05", "currency": "USD"},
                }
            ],
        },
    }
    await sim.set_status(order.order_id, "paid")
    assert (await get_order(http, get_order_url(sim, order.order_id), token))[1]["status"] == "paid"
    assert sim.get_order_requests(order.order_id) == 2


@pytest.mark.parametrize("authorization", [None, "Bearer not-a-token", "Basic dXNlcjpwYXNz", "Bearer "])
async def test_get_order_refuses_bad_tokens_with_401(
    sim: XsollaSimulator, http: aiohttp.ClientSession, authorization: str | None
) -> None:
    """A missing, unknown or non-Bearer token gets 401 with the Store API's error body."""
    order = new_order(sim)
    headers = {"Authorization": authorization} if authorization is not None else {}

    async with http.get(get_order_url(sim, order.order_id), headers=headers) as answer:
        status, body = answer.status, await answer.json()

    assert status == 401
    assert body["statusCode"] == 401
    assert body["errorCode"] == 1020
    assert body["errorMessage"] == "[0401-1020]: Error in Authentication method occurred"
    assert isinstance(body["transactionId"], str)
    assert body["transactionId"]


async def test_get_order_hides_what_the_player_cannot_see_as_404(
    sim: XsollaSimulator, http: aiohttp.ClientSession
) -> None:
    """Someone else's order, an unknown id, a non-numeric id and another project's path are all 404."""
    order = new_order(sim, "player-2")
    token = sim.issue_token("player-1")
    own = new_order(sim, "player-1")

    for url in (
        get_order_url(sim, order.order_id),
        get_order_url(sim, 999),
        get_order_url(sim, "abc"),
        get_order_url(sim, own.order_id, project_id=PROJECT + 1),
    ):
        status, body = await get_order(http, url, token)
        assert status == 404, url
        assert body["statusCode"] == 404
        assert "Order not found. Make sure the project_id and the order_id are correct." in body["errorMessage"]
    assert sim.get_order_requests(order.order_id) == 1


async def test_injected_failures_are_answered_then_normal_service_resumes(
    sim: XsollaSimulator, http: aiohttp.ClientSession
) -> None:
    """fail_get_order(times=2, status=503) fails the next two requests; each one is still counted."""
    order = new_order(sim)
    other = new_order(sim)
    token = sim.issue_token("player-1")
    sim.fail_get_order(times=2, status=503, order_id=order.order_id)

    assert (await get_order(http, get_order_url(sim, other.order_id), token))[0] == 200
    answers = [await get_order(http, get_order_url(sim, order.order_id), token) for _ in range(3)]

    assert [status for status, _ in answers] == [503, 503, 200]
    assert answers[0][1]["statusCode"] == 503
    assert sim.get_order_requests(order.order_id) == 3
    assert [r.status for r in sim.get_order_requests_for(order.order_id)] == [503, 503, 200]


async def test_delayed_get_order_times_the_caller_out(sim: XsollaSimulator, http: aiohttp.ClientSession) -> None:
    """delay_get_order holds the answer back, so a caller's timeout fires; the next request is prompt."""
    order = new_order(sim)
    token = sim.issue_token("player-1")
    sim.delay_get_order(0.3, times=1)

    with pytest.raises(TimeoutError):
        async with http.get(
            get_order_url(sim, order.order_id),
            headers={"Authorization": f"Bearer {token}"},
            timeout=aiohttp.ClientTimeout(total=0.1),
        ):
            pass
    assert (await get_order(http, get_order_url(sim, order.order_id), token))[0] == 200


async def test_polling_channel_decides_what_get_order_answers(
    sim: XsollaSimulator, http: aiohttp.ClientSession
) -> None:
    """A status announced without `polling` is not visible to Get order until one is announced with it."""
    order = new_order(sim)
    token = sim.issue_token("player-1")

    await sim.set_status(order.order_id, "paid", channels=("websocket",))
    lagging = await get_order(http, get_order_url(sim, order.order_id), token)
    await sim.set_status(order.order_id, "done", channels=("polling",))
    caught_up = await get_order(http, get_order_url(sim, order.order_id), token)

    assert lagging[1]["status"] == "new"
    assert caught_up[1]["status"] == "done"


async def test_one_thousand_watchers_are_counted_per_order(sim: XsollaSimulator, http: aiohttp.ClientSession) -> None:
    """Concurrent Get order requests for a thousand orders are each answered and counted once."""
    token = sim.issue_token("player-1")
    orders = [new_order(sim) for _ in range(1000)]

    statuses = await asyncio.gather(*(get_order(http, get_order_url(sim, o.order_id), token) for o in orders))

    assert {status for status, _ in statuses} == {200}
    assert all(sim.get_order_requests(o.order_id) == 1 for o in orders)
    assert sim.get_order_requests_total == 1000


# --- control ------------------------------------------------------------------------------------------------


async def test_control_api_drives_an_order_over_http(sim: XsollaSimulator, http: aiohttp.ClientSession) -> None:
    """The /_sim HTTP API issues tokens, creates orders, moves them and reports counters."""
    async with http.post(f"{sim.control_url}/tokens", json={"user_id": "player-1"}) as answer:
        token = (await answer.json())["token"]
    async with http.post(f"{sim.control_url}/orders", json={"user_id": "player-1", "items": ITEMS}) as answer:
        assert answer.status == 201
        order_id = (await answer.json())["order_id"]
    async with http.post(f"{sim.control_url}/orders/{order_id}/status", json={"status": "paid"}) as answer:
        assert (await answer.json())["offset"] == 1
    async with http.post(f"{sim.control_url}/orders/{order_id}/status", json={"status": "bogus"}) as answer:
        assert answer.status == 400
    async with http.get(f"{sim.control_url}/orders/424242") as answer:
        assert answer.status == 404

    assert (await get_order(http, get_order_url(sim, order_id), token))[1]["status"] == "paid"
    async with http.get(f"{sim.control_url}/orders/{order_id}") as answer:
        view = await answer.json()
    assert [change["status"] for change in view["changes"]] == ["new", "paid"]
    assert view["get_order_requests"] == 1
    async with http.get(f"{sim.control_url}/stats") as answer:
        assert (await answer.json())["orders_total"] == 1


async def test_control_errors_are_raised_as_simulator_errors(sim: XsollaSimulator) -> None:
    """Unknown statuses, channels and malformed items raise InvalidRequest; the order is left as it was."""
    order = new_order(sim)

    with pytest.raises(InvalidRequest):
        await sim.set_status(order.order_id, "refunded")
    with pytest.raises(InvalidRequest):
        await sim.set_status(order.order_id, "paid", channels=("email",))
    with pytest.raises(InvalidRequest):
        sim.create_order("player-1", items=[{"sku": "gold", "quantity": 0}])
    with pytest.raises(LookupError):
        await sim.set_status(424242, "paid")
    assert order.status == "new"
    assert len(order.changes) == 1
